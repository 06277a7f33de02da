"""Keras argument spellings on layers: ``strides=`` and ``activation=`` (fused exactly like a separate layer)."""

import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn.layers.fused import ConvPool, ConvReLU, Core
from fastcnn.model import Sequential
from fastcnn.optim import Adam
from fastcnn.saving import load_model


def train(layers, like=None, loss="softmax_cross_entropy"):
    """Train ``layers`` two epochs; with ``like`` (a model), start from its initial weights, in order."""
    rng = np.random.default_rng(1)
    x, y = rng.random((24, 10, 10, 2)).astype(np.float32), rng.integers(0, 5, size=24)
    model = Sequential(layers, input_shape=(10, 10, 2), seed=0).compile(Adam(0.01), loss=loss)
    if like is not None:  # layer counts differ, so each layer's seed differs: copy the weights in order
        model.set_weights(dict(zip(model.get_weights(), like.initial)))
    model.initial = list(model.get_weights().values())
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model, history.history


def same_training(a, b):
    (ma, ha), (mb, hb) = a, b
    assert ha == hb
    wa, wb = list(ma.get_weights().values()), list(mb.get_weights().values())
    assert len(wa) == len(wb) and all(np.array_equal(p, q) for p, q in zip(wa, wb))


def test_activation_relu_fuses_and_trains_exactly_like_a_relu_layer():
    keras = [L.Conv2D(4, 3, activation="relu"), L.MaxPool2D(2), L.Conv2D(4, 3, strides=1, activation="relu"),
             L.Flatten(), L.Dense(8, activation="relu"), L.Dense(5)]
    plain = [L.Conv2D(4, 3), L.ReLU(), L.MaxPool2D(2), L.Conv2D(4, 3, stride=1), L.ReLU(), L.Flatten(),
             L.Dense(8), L.ReLU(), L.Dense(5)]
    a = train(keras)
    b = train(plain, like=a[0])
    assert [type(s) for s in a[0].steps] == [ConvPool, ConvReLU, L.Flatten, Core, L.ReLU, L.Dense]
    assert [type(s) for s in b[0].steps] == [ConvPool, ConvReLU, L.Flatten, L.Dense, L.ReLU, L.Dense]
    same_training(a, b)


@pytest.mark.parametrize("name,layer", [("sigmoid", L.Sigmoid), ("tanh", L.Tanh), ("leaky_relu", None)])
def test_other_activations_match_their_layers(name, layer):
    second = L.LeakyReLU(0.2) if layer is None else layer()
    a = train([L.Conv2D(3, 3, activation=name), L.Flatten(), L.Dense(5)])
    b = train([L.Conv2D(3, 3), second, L.Flatten(), L.Dense(5)], like=a[0])
    same_training(a, b)


def test_direct_calls_apply_the_activation():
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    dense = L.Dense(3, activation="softmax")
    y = dense(x)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    dx = dense.backward(np.ones_like(y))  # softmax backward of a constant is 0
    np.testing.assert_allclose(dx, 0.0, atol=1e-6)


def test_strides_spelling_on_conv_and_pooling():
    assert L.Conv2D(2, 3, strides=2).stride == (2, 2)
    assert L.MaxPool2D(3, strides=(1, 2)).stride == (1, 2) and L.AvgPool2D(2, strides=1).stride == (1, 1)
    assert L.MaxPool2D(2).stride == (2, 2) and L.Conv2D(2, 3).stride == (1, 1)
    with pytest.raises(ValueError, match=r"Conv2D: pass `strides` \(Keras's spelling\) or `stride`, not both; "
                                         r"received stride=1, strides=2"):
        L.Conv2D(2, 3, stride=1, strides=2)
    with pytest.raises(ValueError, match=r"MaxPool2D: pass `strides`"):
        L.MaxPool2D(2, stride=2, strides=2)
    with pytest.raises(ValueError, match=r"Dense: unknown activation 'gelu'; expected one of \['relu', 'sigmoid', "
                                         r"'tanh', 'softmax', 'leaky_relu', 'linear'\] or None"):
        L.Dense(3, activation="gelu")
    assert L.Dense(3, activation="linear").activation_layer is None


def test_activation_round_trips_through_a_saved_model(tmp_path):
    model, _ = train([L.Conv2D(3, 3, strides=2, activation="relu"), L.Flatten(), L.Dense(5, activation="softmax")],
                     loss="sparse_categorical_crossentropy")
    loaded = load_model(model.save(tmp_path / "m.npz"))
    assert [layer.activation for layer in loaded.layers] == ["relu", None, "softmax"]
    assert repr(loaded.layers[0]) == "Conv2D(3, kernel_size=(3, 3), stride=(2, 2), activation='relu')"
    x = np.random.default_rng(2).random((4, 10, 10, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_allclose(model.predict(x).sum(axis=1), 1.0, rtol=1e-6)  # the softmax is not applied twice


# -- functional models: activation= on layers called on symbolic tensors ------------------------

def functional(keras, softmax=False):
    """x -> conv3x3+relu (r); x -> conv1x1 (s); add -> conv3x3+relu -> maxpool -> flatten -> dense.

    ``keras``: activations given as ``activation=``, else as separate layers.
    ``softmax``: the head ends in a softmax (``activation="softmax"`` or ``Softmax()``).
    """
    import fastcnn as fc

    def conv(x, filters, k, activation=None):
        if keras:
            return L.Conv2D(filters, k, padding="same", activation=activation)(x)
        y = L.Conv2D(filters, k, padding="same")(x)
        return y if activation is None else L.ReLU()(y)

    x = fc.Input((6, 6, 2))
    a = L.Add()([conv(x, 3, 3, "relu"), conv(x, 3, 1)])
    f = L.Flatten()(L.MaxPool2D(2)(conv(a, 4, 3, "relu")))
    if keras and softmax:
        y = L.Dense(5, activation="softmax")(f)
    else:
        y = L.Dense(5)(f)
        y = L.Softmax()(y) if softmax else y
    return fc.Model(x, y, seed=0)


def fit_like(model, loss, like=None):
    rng = np.random.default_rng(4)
    x, y = rng.random((16, 6, 6, 2)).astype(np.float32), rng.integers(0, 5, size=16)
    model.compile(Adam(0.01), loss=loss)
    if like is not None:  # layer counts differ: copy the initial weights in order
        model.set_weights(dict(zip(model.get_weights(), like.initial)))
    model.initial = list(model.get_weights().values())
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model, history.history


def test_functional_activation_relu_fuses_and_trains_exactly_like_relu_layers():
    a = fit_like(functional(keras=True), "softmax_cross_entropy")
    b = fit_like(functional(keras=False), "softmax_cross_entropy", like=a[0])
    kinds = [type(s) for s in a[0].steps]
    assert kinds == [type(s) for s in b[0].steps]
    assert kinds.count(ConvReLU) == 1 and kinds.count(ConvPool) == 1 and Core not in kinds
    same_training(a, b)


def test_functional_softmax_activation_folds_into_a_loss_on_probabilities(tmp_path):
    a = fit_like(functional(keras=True, softmax=True), "sparse_categorical_crossentropy")
    b = fit_like(functional(keras=False), "softmax_cross_entropy", like=a[0])  # logits, the fused loss
    assert [type(s) for s in a[0].steps[-2:]] == [Core, L.Softmax]
    same_training(a, b)  # the softmax step is skipped in training: the loss runs on its input
    x = np.random.default_rng(5).random((3, 6, 6, 2)).astype(np.float32)
    y = np.array([0, 3, 4])
    np.testing.assert_array_equal(a[0].predict(x), b[0].predict(x))  # the softmax is not applied twice
    assert a[0].evaluate(x, y) == b[0].evaluate(x, y)
    loaded = load_model(a[0].save(tmp_path / "f.npz"))
    assert [layer.activation for layer in loaded.layers if isinstance(layer, (L.Conv2D, L.Dense))] == \
        [layer.activation for layer in a[0].layers if isinstance(layer, (L.Conv2D, L.Dense))]
    np.testing.assert_array_equal(loaded.predict(x), a[0].predict(x))


def test_batchnorm_after_an_activation_is_not_folded_into_the_layer():
    import fastcnn as fc

    x = fc.Input((5, 5, 2))
    h = L.BatchNormalization()(L.Conv2D(3, 3, activation="relu")(x))  # BN reads relu(conv): no folding
    model = fc.Model(x, L.Dense(4)(L.Flatten()(h)), seed=1, dtype=np.float64)
    model.compile(Adam(0.01))
    data = np.random.default_rng(6).random((8, 5, 5, 2))
    model.fit(data, np.arange(8) % 4, epochs=1, batch_size=4, verbose=0)
    kinds = [type(s) for s in model.inference_steps()]
    assert kinds == [ConvReLU, L.BatchNormalization, L.Flatten, L.Dense]
    np.testing.assert_array_equal(model.predict(data, fold=True), model.predict(data, fold=False))
