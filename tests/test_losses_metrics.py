"""Losses (from_logits, label smoothing, sample weights), metrics ("acc", top-k) and their use in compile/fit."""

import math

import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn import losses, metrics, reference as ref
from fastcnn.model import Sequential
from fastcnn.optim import SGD
from fastcnn.testing import assert_close, numerical_grad


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# -- values by hand ---------------------------------------------------------------------------------------
def test_label_smoothing_values_by_hand():
    # K = 4, ls = 0.2: target 0.05 on every class, 0.85 on the label (Keras: one-hot * 0.8 + 0.2 / 4).
    logits = np.array([[2.0, 0.5, -1.0, 0.0]])
    p = softmax(logits)[0]
    target = np.array([0.05, 0.85, 0.05, 0.05])
    loss, d = ref.softmax_cross_entropy(logits, np.array([1]), label_smoothing=0.2)
    assert loss == pytest.approx(-float(np.dot(target, np.log(p))), rel=1e-14)
    assert_close(d[0], p - target, rtol=1e-14)
    # the same target on probabilities
    loss, _ = ref.sparse_categorical_crossentropy(p[None], np.array([1]), label_smoothing=0.2)
    assert loss == pytest.approx(-float(np.dot(target, np.log(p))), rel=1e-12)
    # sample weights: sum(w * loss_n) / N, rows scaled
    two = np.array([[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss_w, d_w = ref.softmax_cross_entropy(two, np.array([1, 3]), sample_weight=np.array([0.5, 2.0]))
    assert loss_w == pytest.approx((0.5 * -math.log(p[1]) + 2.0 * math.log(4)) / 2, rel=1e-14)
    assert_close(d_w[1], 2.0 * (np.full(4, 0.25) - [0, 0, 0, 1]) / 2, rtol=1e-14)


def test_probability_loss_clips_like_keras():
    # q = [1, 0, 0]: the label's probability 0 is clipped to 1e-7 and passes no gradient there.
    loss, d = ref.sparse_categorical_crossentropy(np.array([[1.0, 0.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(-math.log(1e-7), rel=1e-12)
    np.testing.assert_array_equal(d, np.zeros((1, 3)))
    # unnormalized rows are normalized first, as Keras does
    loss, _ = ref.sparse_categorical_crossentropy(np.array([[2.0, 6.0]]), np.array([1]))
    assert loss == pytest.approx(-math.log(0.75), rel=1e-14)


# -- finite differences -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.3}, {"label_smoothing": 0.1, "sample_weight": "w"}])
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "sparse_categorical_crossentropy"])
def test_reference_gradients_match_finite_differences(op, kwargs):
    rng = np.random.default_rng(3)
    x = 2.0 * rng.standard_normal((4, 5))
    if op == "sparse_categorical_crossentropy":
        x = softmax(x / 4) * rng.uniform(0.5, 2.0, size=(4, 1))  # unnormalized rows, none near the clip
    labels = np.array([0, 4, 2, 2])
    if kwargs.get("sample_weight") == "w":
        kwargs = {**kwargs, "sample_weight": rng.random(4)}
    fn = getattr(ref, op)
    _, d = fn(x, labels, **kwargs)
    assert_close(d, numerical_grad(lambda: fn(x, labels, **kwargs)[0], x), rtol=1e-7)


# -- loss objects and compile ------------------------------------------------------------------------------
def test_loss_objects_and_names():
    assert losses.get("sparse_categorical_crossentropy").from_logits is False  # Keras's default
    assert losses.get("softmax_cross_entropy").from_logits is True
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    assert losses.get(losses.serialize(loss)).get_config() == loss.get_config()
    with pytest.raises(ValueError, match=r"`label_smoothing` must be a float in \[0, 1\], received 1.5"):
        losses.SparseCategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"unknown loss 'mse'; expected one of \['softmax_cross_entropy', "
                                         r"'sparse_categorical_crossentropy'\]"):
        losses.get("mse")


def net(head, seed=0):
    return Sequential([L.Flatten(), L.Dense(12), L.ReLU(), *head], input_shape=(6, 6, 1), seed=seed)


def test_probabilities_with_a_softmax_head_train_like_logits():
    """from_logits=False on a model ending in Softmax (or activation="softmax") equals from_logits=True on
    the same model without it: the softmax is folded into the fused path, in training and evaluation."""
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, size=40)
    results = []
    for head, loss in (([L.Dense(4)], losses.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)),
                       ([L.Dense(4), L.Softmax()], losses.SparseCategoricalCrossentropy(label_smoothing=0.1)),
                       ([L.Dense(4, activation="softmax")], losses.SparseCategoricalCrossentropy(label_smoothing=0.1))):
        model = net(head).compile(SGD(0.1), loss=loss, metrics=["acc", "top_k_accuracy"])
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        results.append((history.history, model.evaluate(x, y), model.predict(x[:5]), model.get_weights()))
    for other in results[1:]:
        assert other[0] == results[0][0] and other[1] == results[0][1]
        np.testing.assert_array_equal(other[2], results[0][2])
        for key, w in results[0][3].items():
            np.testing.assert_array_equal(other[3][key], w)
    assert set(results[0][0]) == {"loss", "acc", "top_k_accuracy", "learning_rate"}
    assert results[0][0]["top_k_accuracy"] == [1.0, 1.0]  # 4 classes, k = 5


def test_compile_warns_when_outputs_do_not_match_from_logits():
    with pytest.warns(UserWarning, match=r"the loss expects probabilities \(from_logits=False\) but the last "
                                         r"layer outputs no softmax"):
        net([L.Dense(4)]).compile(SGD(0.1), loss="sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match=r"the last layer applies a softmax, but the loss expects logits"):
        net([L.Dense(4, activation="softmax")]).compile(SGD(0.1), loss="softmax_cross_entropy")


def test_probability_loss_without_a_softmax_head_runs_the_probability_op():
    rng = np.random.default_rng(1)
    x, y = rng.random((8, 6, 6, 1)), rng.integers(0, 4, size=8)
    model = Sequential([L.Flatten(), L.Dense(4), L.Sigmoid()], input_shape=(6, 6, 1), seed=0, dtype=np.float64)
    with pytest.warns(UserWarning):
        model.compile(SGD(0.1), loss="sparse_categorical_crossentropy")
    out = model(x)
    expected, _ = ref.sparse_categorical_crossentropy(out, y)
    assert model.evaluate(x, y)["loss"] == pytest.approx(expected, rel=1e-12)


# -- metrics --------------------------------------------------------------------------------------------
def test_top_k_counts_ties_and_nan_like_in_top_k():
    scores = np.array([[0.1, 0.5, 0.2, 0.2],   # label 2 ties with 3 at the 2nd place: in the top 2
                       [0.4, 0.3, 0.2, 0.1],   # label 3 is last: out
                       [0.3, 0.3, 0.3, 0.3],   # all tied: in
                       [np.nan, 0.1, 0.2, 0.3]])  # NaN label score: out
    labels = np.array([2, 3, 1, 0])
    assert metrics.count_top_k(scores, labels, 2) == 2
    assert metrics.top_k_accuracy(scores, labels, k=4) == 0.75
    assert metrics.count_top_k(scores, labels, 1) == 1  # only the all-tied row
    assert metrics.SparseTopKCategoricalAccuracy(k=2).count(scores, labels) == 2


def test_metric_names_and_errors():
    assert [metrics.get(m).name for m in ("acc", "accuracy", "top_k_accuracy")] == ["acc", "accuracy",
                                                                                 "top_k_accuracy"]
    assert metrics.get("sparse_top_k_categorical_accuracy").k == 5
    topk = metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")
    assert metrics.get(metrics.serialize(topk)).get_config() == {"k": 3, "name": "top3"}
    with pytest.raises(ValueError, match=r"`k` must be a positive int, received 0"):
        metrics.SparseTopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match=r"unknown metric 'f1'"):
        metrics.check_metrics(["f1"])
    with pytest.raises(ValueError, match=r"metrics must not repeat a name, received \['acc', 'acc'\]"):
        metrics.check_metrics(["acc", metrics.Accuracy("acc")])
