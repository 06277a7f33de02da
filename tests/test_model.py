"""Sequential: fit/evaluate/predict semantics, input validation, progress output, reproducibility."""

import io
import math
import sys

import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn import losses, metrics, models
from fastcnn.callbacks import TerminateOnNaN
from fastcnn.errors import NonFiniteLossError
from fastcnn.model import Sequential
from fastcnn.optim import SGD


def small_net(seed=0, **kwargs):
    """A cheap conv net without dropout (tests of bookkeeping, not of learning)."""
    model = Sequential([L.Conv2D(4, 3, stride=2), L.ReLU(), L.Flatten(), L.Dense(10)],
                       input_shape=(28, 28, 1), seed=seed, **kwargs)
    return model.compile(SGD(lr=0.05))


def weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


# -- fit / evaluate / predict -------------------------------------------------------------
def test_fit_history_has_keras_keys(fashion_small):
    d = fashion_small
    model = small_net()
    history = model.fit(d.x_train[:200], d.y_train[:200], epochs=2, batch_size=50,
                        validation_data=(d.x_test[:100], d.y_test[:100]), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert all(len(v) == 2 for v in history.history.values())
    assert history.epoch == [0, 1]
    assert model.history is history
    assert model.optimizer.iterations == 8
    # validation runs with the weights at the end of the epoch: the last one equals evaluate()
    final = model.evaluate(d.x_test[:100], d.y_test[:100], batch_size=50)
    assert history.history["val_loss"][-1] == final["loss"]
    assert history.history["val_accuracy"][-1] == final["accuracy"]


def test_epoch_average_weights_the_last_partial_batch_by_its_size(fashion_small):
    d = fashion_small
    x, y = d.x_train[:100], d.y_train[:100]  # batches of 32, 32, 32 and 4
    model = small_net(seed=1)
    history = model.fit(x, y, batch_size=32, shuffle=False, verbose=0)
    twin = small_net(seed=1)
    step_losses = [(twin.train_on_batch(x[s:s + 32], y[s:s + 32]), len(y[s:s + 32])) for s in range(0, 100, 32)]
    expected = sum(loss * n for loss, n in step_losses) / 100
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(np.mean([loss for loss, _ in step_losses]), rel=1e-6)
    assert weights_equal(model, twin)


def test_validation_split_takes_the_last_samples_before_shuffling(fashion_small):
    d = fashion_small
    x, y = d.x_train[:100], d.y_train[:100]
    model = small_net()
    history = model.fit(x, y, batch_size=16, validation_split=0.2, verbose=0)
    assert model.optimizer.iterations == 5  # 80 training samples
    held_out = model.evaluate(x[80:], y[80:], batch_size=16)
    assert history.history["val_loss"] == [held_out["loss"]]


def test_predict_returns_probabilities(fashion_small):
    d = fashion_small
    model = small_net()
    probs = model.predict(d.x_test[:70], batch_size=32)
    assert probs.shape == (70, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    logits = model.eval()(d.x_test[:70]).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    result = model.evaluate(d.x_test[:70], d.y_test[:70])
    assert result["accuracy"] == metrics.accuracy(probs, d.y_test[:70])


def test_predict_does_not_apply_softmax_twice(fashion_small):
    x = fashion_small.x_test[:8]
    model = Sequential([L.Flatten(), L.Dense(10), L.Softmax()], input_shape=(28, 28, 1), seed=0)
    with pytest.warns(UserWarning, match="softmax is applied twice in training"):
        model.compile(SGD(lr=0.1))
    probs = model.predict(x)
    np.testing.assert_array_equal(probs, model(x))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_train_on_batch_takes_one_step_and_returns_the_loss(fashion_small):
    d = fashion_small
    model = small_net()
    before = model.get_weights()
    expected, _ = losses.softmax_cross_entropy(model.train()(d.x_train[:32]), d.y_train[:32])
    loss = model.train_on_batch(d.x_train[:32], d.y_train[:32])
    assert isinstance(loss, float) and loss == expected
    assert model.optimizer.iterations == 1
    assert not np.array_equal(before["layers.3.weight"], model.get_weights()["layers.3.weight"])


def test_float64_model_and_input_conversion(fashion_small):
    d = fashion_small
    model = models.tutorial_cnn(seed=0, dtype=np.float64)
    assert {p.dtype for _, p, _ in model.params()} == {np.dtype(np.float64)}
    model.fit(d.x_train[:64], d.y_train[:64], batch_size=32, verbose=0)  # float32 data, converted once
    assert model.predict(d.x_test[:4]).dtype == np.float64
    m32 = models.tutorial_cnn(seed=0)
    np.testing.assert_array_equal(m32.predict(d.x_test[:4].astype(np.float64)), m32.predict(d.x_test[:4]))


def test_uint8_images_straight_from_the_idx_files_are_accepted(fashion_small):
    d = fashion_small
    from_raw, from_float = models.mnist_cnn(seed=2), models.mnist_cnn(seed=2)
    h_raw = from_raw.fit(d.raw_train[:128], d.y_train[:128], batch_size=64, verbose=0)
    h_float = from_float.fit(d.x_train[:128], d.y_train[:128], batch_size=64, verbose=0)
    assert h_raw.history == h_float.history
    assert weights_equal(from_raw, from_float)
    np.testing.assert_array_equal(from_raw.predict(d.raw_test[:16]), from_float.predict(d.x_test[:16]))


# -- validation before training -----------------------------------------------------------
@pytest.mark.parametrize("make, error, match", [
    (lambda d: (d.x_train[:100], d.y_train[:99]), ValueError,
     r"y has 99 entries but the inputs have 100 samples; expected labels of shape \(100,\)"),
    (lambda d: (d.x_train[:100], np.where(np.arange(100) == 7, 10, d.y_train[:100])), ValueError,
     r"y must be in \[0, 10\) \(the model outputs 10 classes\); received labels from 0 to 10: "
     r"1 out of range, the first at index 7 \(10\)"),
    (lambda d: (d.x_train[:100], -d.y_train[:100] - 1), ValueError, r"y must be in \[0, 10\)"),
    (lambda d: (d.x_train[:100], d.y_train[:100].astype(np.float64)), TypeError,
     r"y must be integer class indices in \[0, 10\); received dtype float64 with shape \(100,\)"),
    (lambda d: (d.x_train[:100].transpose(0, 3, 1, 2), d.y_train[:100]), ValueError,
     r"x must have shape \(None, 28, 28, 1\) \(NHWC\); received shape \(100, 1, 28, 28\). "
     r"It looks like NCHW; fastcnn is NHWC: use x.transpose\(0, 2, 3, 1\)"),
    (lambda d: (d.x_train[:100, :20, :20], d.y_train[:100]), ValueError,
     r"x must have shape \(None, 28, 28, 1\) \(NHWC\); received shape \(100, 20, 20, 1\)$"),
    (lambda d: (d.raw_train[:100].astype(np.int64), d.y_train[:100]), TypeError,
     r"x must be float32/float64 images in \[0, 1\] or uint8 images in \[0, 255\]; "
     r"received dtype int64 with shape \(100, 28, 28\)"),
    (lambda d: (d.x_train[:100], np.eye(10, dtype=np.int64)[d.y_train[:100]]), ValueError,
     r"y must have shape \(N,\); received shape \(100, 10\); they look one-hot encoded"),
])
def test_fit_rejects_bad_inputs_before_training(fashion_small, make, error, match):
    model = small_net()
    before = model.get_weights()
    x, y = make(fashion_small)
    with pytest.raises(error, match=match):
        model.fit(x, y, epochs=1, verbose=0)
    assert model.optimizer.iterations == 0
    assert weights_equal_to(model, before)


def weights_equal_to(model, weights):
    now = model.get_weights()
    return all(np.array_equal(now[k], weights[k]) for k in weights)


def test_bad_validation_data_is_rejected_before_training(fashion_small):
    d = fashion_small
    model = small_net()
    with pytest.raises(ValueError, match=r"validation_data labels has 50 entries but the inputs have 100"):
        model.fit(d.x_train[:100], d.y_train[:100], validation_data=(d.x_test[:100], d.y_test[:50]), verbose=0)
    assert model.optimizer.iterations == 0


def test_fit_before_compile_and_bad_arguments():
    model = Sequential([L.Flatten(), L.Dense(10)], input_shape=(28, 28, 1))
    x, y = np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int64)
    with pytest.raises(RuntimeError, match=r"call model.compile\(optimizer=...\) before fit\(\)"):
        model.fit(x, y)
    model.compile("sgd")
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int, received 0"):
        model.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"`validation_split` must be a float in \[0, 1\), received 1.0"):
        model.fit(x, y, validation_split=1.0)
    with pytest.raises(ValueError, match=r"`verbose` must be 0, 1, 2 or 'auto', received 3"):
        model.fit(x, y, verbose=3)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        model.compile("sgd", loss="mse")


def test_losses_module_validates_labels():
    logits = np.zeros((3, 4), np.float32)
    loss, dlogits = losses.softmax_cross_entropy(logits, [0, 1, 3])
    assert loss == pytest.approx(math.log(4)) and dlogits.dtype == np.float32
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        losses.softmax_cross_entropy(logits, [0, 1, 4])
    with pytest.raises(ValueError, match=r"labels has 2 entries but the inputs have 3 samples"):
        losses.softmax_cross_entropy(logits, [0, 1])


# -- non-finite loss ----------------------------------------------------------------------
def test_nan_loss_raises_naming_epoch_and_batch(fashion_small):
    d = fashion_small
    x = d.x_train[:128].copy()
    x[70, 3, 3, 0] = np.nan  # in the third batch of 32
    model = small_net()
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at epoch 1/1, batch 3/4"):
        model.fit(x, d.y_train[:128], batch_size=32, shuffle=False, verbose=0)
    assert model.optimizer.iterations == 2  # the bad step was not applied
    assert all(np.isfinite(p).all() for _, p, _ in model.params())


def test_terminate_on_nan_stops_quietly(fashion_small, capsys):
    d = fashion_small
    x = d.x_train[:128].copy()
    x[70] = np.nan
    model = small_net()
    history = model.fit(x, d.y_train[:128], epochs=3, batch_size=32, shuffle=False, verbose=0,
                        callbacks=[TerminateOnNaN()])
    assert history.epoch == [0] and math.isnan(history.history["loss"][0])
    assert model.optimizer.iterations == 2
    assert "Batch 2: invalid loss nan, terminating training" in capsys.readouterr().out


def test_train_on_batch_nan_raises():
    model = small_net()
    x = np.full((4, 28, 28, 1), np.nan, np.float32)
    with pytest.raises(NonFiniteLossError, match="the loss is nan at optimizer step 1"):
        model.train_on_batch(x, np.zeros(4, np.int64))


# -- progress output ----------------------------------------------------------------------
def test_verbose_0_prints_nothing(fashion_small, capsys):
    d = fashion_small
    small_net().fit(d.x_train[:64], d.y_train[:64], epochs=2, batch_size=32, verbose=0,
                    validation_data=(d.x_test[:32], d.y_test[:32]))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("verbose", [2, 1, "auto"])  # 1 and "auto" on a non-terminal: also one line per epoch
def test_one_line_per_epoch_without_a_terminal(fashion_small, capsys, verbose):
    d = fashion_small
    small_net().fit(d.x_train[:96], d.y_train[:96], epochs=2, batch_size=32, verbose=verbose,
                    validation_data=(d.x_test[:32], d.y_test[:32]))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2 and "\r" not in out
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"Epoch {epoch}/2 - 3/3 - ")
        assert " img/s - loss: " in line and " - accuracy: " in line and " - val_accuracy: " in line


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_verbose_1_redraws_a_bar_on_a_terminal(fashion_small, monkeypatch):
    d = fashion_small
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    small_net().fit(d.x_train[:96], d.y_train[:96], epochs=1, batch_size=32, verbose=1)
    out = terminal.getvalue()
    assert out.startswith("Epoch 1/1\n\r1/3 [==========>...................] - ETA: ")
    final = out.rstrip("\n").split("\r")[-1]
    assert final.startswith("3/3 [==============================] - ") and "img/s - loss: " in final
    assert out.endswith("\n") and out.count("\n") == 2


# -- structure, modes, reproducibility ----------------------------------------------------
def test_params_names_modes_and_repr():
    model = models.mnist_cnn(seed=0)
    names = [name for name, _, _ in model.params()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
                     "layers.7.weight", "layers.7.bias", "layers.10.weight", "layers.10.bias"]
    assert all(p.shape == g.shape for _, p, g in model.params())
    assert model.eval() is model and not any(layer.training for layer in model.layers)
    assert all(layer.training for layer in model.train().layers)
    text = repr(model)
    assert text.startswith("Sequential(\n  (0): Conv2D(32, kernel_size=(3, 3))\n  (1): ReLU()\n")
    assert "(9): Dropout(0.5)" in text and "seed=0, optimizer=Adam(learning_rate=0.001" in text


def test_lazy_build_matches_eager_build(fashion_small):
    def net():
        return [L.Conv2D(4, 3), L.MaxPool2D(2), L.Dropout(0.3), L.Flatten(), L.Dense(10)]

    eager = Sequential(net(), input_shape=(28, 28, 1), seed=4).compile(SGD(lr=0.01))
    lazy = Sequential(net(), seed=4).compile(SGD(lr=0.01))
    assert not lazy.built
    lazy.fit(fashion_small.raw_train[:64], fashion_small.y_train[:64], verbose=0)
    eager.fit(fashion_small.x_train[:64], fashion_small.y_train[:64], verbose=0)
    assert lazy.input_shape == (28, 28, 1)
    assert weights_equal(lazy, eager)


def test_same_seed_is_bit_identical_and_another_seed_differs(fashion_small):
    d = fashion_small
    runs = []
    for seed in (7, 7, 8):
        model = models.mnist_cnn(seed=seed)  # dropout on, shuffle on
        history = model.fit(d.x_train[:192], d.y_train[:192], batch_size=64, verbose=0)
        runs.append((model, history.history))
    assert weights_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not weights_equal(runs[0][0], runs[2][0])


def test_summary_is_printed_and_available_as_text(capsys):
    model = models.tutorial_cnn()
    assert model.summary() is None
    out = capsys.readouterr().out
    assert out == model.summary_string() + "\n"
    assert "layers.3 (Dense)      (None, 10)          13,530" in out
    with pytest.raises(ValueError, match="not built yet"):
        Sequential([L.Dense(3)]).summary()


def test_first_layer_skips_its_input_gradient():
    from fastcnn import models

    model = models.mnist_cnn(seed=0)
    assert [layer.needs_input_grad for layer in model.layers[:3]] == [False, True, True]
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    model.train_on_batch(x, np.arange(4))
    assert model.layers[0].grads["weight"].shape == (3, 3, 1, 32)


def test_conv_relu_pool_runs_are_fused_and_the_plan_follows_fuse():
    model = models.vgg_mini(seed=0)
    kinds = [type(step).__name__ for step in model.steps]
    assert kinds == ["ConvReLU", "ConvPool", "Dropout", "ConvReLU", "ConvPool", "Dropout", "Flatten", "Dense",
                     "ReLU", "Dense"]
    assert model.steps[1].layers == tuple(model.layers[2:5])  # Conv2D, ReLU, MaxPool2D
    assert [type(s).__name__ for s in models.tutorial_cnn(seed=0).steps] == ["ConvPool", "Flatten", "Dense"]
    model.fuse = False
    assert model.steps == model.layers
    mixed = Sequential([L.Conv2D(2, 3, impl="numpy"), L.ReLU(impl="reference"), L.Flatten(), L.Dense(3)],
                       input_shape=(6, 6, 1))
    assert [type(s).__name__ for s in mixed.steps] == ["Conv2D", "ReLU", "Flatten", "Dense"]  # impls differ
    unfusable = Sequential([L.Conv2D(2, 3), L.MaxPool2D(2, stride=1), L.Conv2D(2, 2), L.MaxPool2D(2, padding="same"),
                            L.Flatten(), L.Dense(3)], input_shape=(9, 9, 1))
    assert [type(s).__name__ for s in unfusable.steps] == ["Conv2D", "MaxPool2D", "Conv2D", "MaxPool2D", "Flatten",
                                                           "Dense"]


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_fused_training_matches_layer_by_layer(fashion_small, impl):
    """Two steps of vgg_mini fused and unfused: the composed numpy op is exact, the Numba kernels close.

    The Numba kernels sum in another order fused (shifted GEMMs) than layer by layer
    (im2col), so their float32 gradients differ by rounding: they are compared at the
    float32 tolerance. Adam then divides each gradient by its own root mean square
    plus eps = 1e-7, which turns a rounding difference of 1e-9 in a gradient near eps
    into 1e-6 of a weight (6 of vgg_mini's 870,634 weights after two steps): weights are
    compared to within a hundredth of Adam's step (lr = 1e-3).
    """
    x, y = fashion_small.x_train[:16], fashion_small.y_train[:16]
    runs = []
    for fuse in (True, False):
        model = models.vgg_mini(seed=3, impl=impl)
        model.fuse = fuse
        losses_ = [model.train_on_batch(x, y)]
        grads = {name: g.copy() for name, _, g in model.params()}  # the first step's gradients
        losses_.append(model.train_on_batch(x, y))
        runs.append((losses_, grads, model.get_weights(), model.predict(x)))
    (l1, g1, w1, p1), (l2, g2, w2, p2) = runs
    if impl == "numpy":
        assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
        assert all(np.array_equal(w1[k], w2[k]) for k in w1) and np.array_equal(p1, p2)
    else:
        np.testing.assert_allclose(l1, l2, rtol=1e-5)
        for k in g1:
            np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6, err_msg=k)
        for k in w1:
            np.testing.assert_allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-6)


def test_large_batches_run_as_several_passes_with_the_same_results(fashion_small, monkeypatch):
    import fastcnn.model

    model = models.mnist_cnn(seed=1)
    x, y = fashion_small.x_test[:50], fashion_small.y_test[:50]
    whole = model.predict(x, batch_size=50)
    logs = model.evaluate(x, y, batch_size=50)
    monkeypatch.setattr(fastcnn.model, "INFERENCE_PASS_BYTES", 7 * 26 * 26 * 32 * 4)  # 7 samples a pass
    assert model._inference_pass() == 7
    np.testing.assert_allclose(model.predict(x, batch_size=50), whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.predict(x, batch_size=9), whole, rtol=1e-5, atol=1e-7)
    again = model.evaluate(x, y, batch_size=50)
    assert again["accuracy"] == logs["accuracy"]
    np.testing.assert_allclose(again["loss"], logs["loss"], rtol=1e-5)
