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
