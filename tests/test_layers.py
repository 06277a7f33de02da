"""The layer protocol, dtype preservation, validation messages, impl selection."""

import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn import registry
from fastcnn.testing import assert_close, gradcheck

LAYERS = [
    (lambda: L.Conv2D(4, 3), (2, 7, 7, 3)),
    (lambda: L.Conv2D(3, (2, 3), stride=2, padding="same", use_bias=False), (2, 7, 8, 2)),
    (lambda: L.MaxPool2D(2), (2, 6, 6, 3)),
    (lambda: L.MaxPool2D(3, stride=2, padding="same"), (2, 7, 7, 3)),
    (lambda: L.AvgPool2D(2, padding="same"), (2, 5, 5, 3)),
    (lambda: L.GlobalAvgPool2D(), (2, 5, 5, 3)),
    (lambda: L.Dense(5), (3, 7)),
    (lambda: L.Dense(5, use_bias=False), (3, 7)),
    (lambda: L.ReLU(), (2, 4, 4, 3)),
    (lambda: L.LeakyReLU(0.1), (2, 4, 4, 3)),
    (lambda: L.Sigmoid(), (3, 5)),
    (lambda: L.Tanh(), (3, 5)),
    (lambda: L.Softmax(), (3, 5)),
    (lambda: L.Dropout(0.5, seed=0), (2, 4, 4, 3)),
    (lambda: L.Flatten(), (2, 4, 4, 3)),
]
IDS = [repr(make()) for make, _ in LAYERS]


@pytest.mark.parametrize("impl", registry.IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_layer_protocol_and_dtype(make, shape, dtype, impl):
    layer = make()
    layer.impl = impl
    assert not layer.built and layer.params == {} and layer.output_shape is None  # lazy
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    y = layer(x)
    assert layer.built and layer.input_shape == shape[1:]
    assert layer.resolved_impl == registry.resolve(layer.op, impl)
    assert y.dtype == dtype
    assert y.shape[1:] == layer.output_shape
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == dtype and dx.shape == x.shape
    assert layer.params.keys() == layer.grads.keys()
    for key, p in layer.params.items():
        assert layer.grads[key].shape == p.shape and layer.grads[key].dtype == p.dtype == dtype
    assert layer.count_params() == sum(p.size for p in layer.params.values())


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_eval_mode_gives_the_training_forward(make, shape):
    """eval() changes only Dropout (to the identity); Conv2D's cache-free inference path agrees."""
    layer = make()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y_train = layer(x)
    assert layer.eval() is layer and not layer.training
    y_eval = layer(x)
    if isinstance(layer, L.Dropout):
        assert y_eval is x
    else:
        assert_close(y_eval, y_train, rtol=1e-6)
    assert layer.train() is layer and layer.training


def test_param_names_and_shapes():
    conv = L.Conv2D(8, (3, 2)).build((28, 28, 3))
    assert {k: v.shape for k, v in conv.params.items()} == {"weight": (3, 2, 3, 8), "bias": (8,)}
    dense = L.Dense(10, use_bias=False).build((20,))
    assert {k: v.shape for k, v in dense.params.items()} == {"weight": (20, 10)}
    assert conv.count_params() == 3 * 2 * 3 * 8 + 8


def test_reset_parameters_is_seeded_and_glorot_scaled():
    a = L.Conv2D(16, 3).build((8, 8, 4), rng=np.random.default_rng(1))
    b = L.Conv2D(16, 3).build((8, 8, 4), rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    limit = np.sqrt(6.0 / (9 * 4 + 9 * 16))
    assert np.abs(a.params["weight"]).max() <= limit
    assert np.abs(a.params["weight"]).max() > 0.9 * limit
    np.testing.assert_array_equal(a.params["bias"], 0)
    a(np.ones((1, 8, 8, 4), dtype=np.float32))
    a.backward(np.ones((1, 6, 6, 16), dtype=np.float32))
    assert np.abs(a.grads["weight"]).max() > 0
    a.reset_parameters(np.random.default_rng(2))
    assert not np.array_equal(a.params["weight"], b.params["weight"])
    assert all(not g.any() for g in a.grads.values())  # gradients zeroed too


# fan_in, fan_out of a (3, 3, 8, 32) conv weight: 3*3*8 = 72 and 3*3*32 = 288.
@pytest.mark.parametrize("name,kind,scale", [
    ("glorot_uniform", "uniform", np.sqrt(6.0 / (72 + 288))),
    ("glorot_normal", "normal", np.sqrt(2.0 / (72 + 288))),
    ("he_uniform", "uniform", np.sqrt(6.0 / 72)),
    ("he_normal", "normal", np.sqrt(2.0 / 72)),
])
def test_initializers_draw_at_the_he_and_glorot_scales(name, kind, scale):
    conv = L.Conv2D(32, 3, kernel_initializer=name).build((9, 9, 8), rng=np.random.default_rng(4))
    w = conv.params["weight"]  # 2304 draws
    assert w.dtype == np.float32 and w.shape == (3, 3, 8, 32)
    if kind == "uniform":  # the limit is the scale
        assert 0.98 * scale < np.abs(w).max() <= scale
    else:  # the standard deviation is the scale
        assert abs(w.std() / scale - 1) < 0.05
    assert abs(w.mean()) < 0.1 * scale


@pytest.mark.parametrize("impl", registry.IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_layer_sobel_tutorial_example(impl, dtype):
    """The tutorial's worked example through the layer, in every implementation: 29."""
    layer = L.Conv2D(1, 3, use_bias=False, impl=impl).build((3, 3, 1), dtype)
    layer.params["weight"][:, :, 0, 0] = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]  # vertical Sobel, HWIO
    patch = np.array([[0, 50, 0], [0, 80, 31], [33, 90, 0]], dtype=dtype).reshape(1, 3, 3, 1)
    y = layer(patch)
    assert y.shape == (1, 1, 1, 1) and y.dtype == dtype
    assert y[0, 0, 0, 0] == 29


def test_conv_layer_gradcheck_through_reference():
    layer = L.Conv2D(3, 3, stride=2, padding="same", impl="reference")
    x = np.random.default_rng(3).standard_normal((2, 5, 6, 2))
    layer(x)

    def forward(x, w, b):
        layer.params.update(weight=w, bias=b)
        return layer.forward(x), None

    def backward(dy, _):
        dx = layer.backward(dy)
        return dx, layer.grads["weight"], layer.grads["bias"]

    gradcheck(forward, backward, [x, layer.params["weight"].copy(), layer.params["bias"] + 0.1])


def test_dropout_train_eval_and_scale():
    layer = L.Dropout(0.25, seed=0)
    x = np.ones((64, 8, 8, 4), dtype=np.float32)
    y = layer(x)
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(layer.backward(x), y)
    layer.eval()
    assert layer(x) is x


@pytest.mark.parametrize("impl", ["numpy", "reference"])
def test_fastcnn_impl_environment_variable(monkeypatch, impl):
    monkeypatch.setenv("FASTCNN_IMPL", impl)
    layer = L.MaxPool2D(2)
    layer(np.zeros((1, 4, 4, 1), dtype=np.float32))
    assert layer.resolved_impl == impl


def test_explicit_impl_beats_environment(monkeypatch):
    monkeypatch.setenv("FASTCNN_IMPL", "reference")
    layer = L.ReLU(impl="numpy")
    layer(np.zeros((1, 2), dtype=np.float32))
    assert layer.resolved_impl == "numpy"


def test_bad_environment_impl(monkeypatch):
    monkeypatch.setenv("FASTCNN_IMPL", "cuda")
    with pytest.raises(ValueError, match=r"FASTCNN_IMPL='cuda' is not one of"):
        L.ReLU()(np.zeros((1, 2), dtype=np.float32))


@pytest.mark.parametrize("make,expected", [
    (lambda: L.Conv2D(32, 3), "Conv2D(32, kernel_size=(3, 3))"),
    (lambda: L.Conv2D(8, 3, stride=2, padding="same", use_bias=False),
     "Conv2D(8, kernel_size=(3, 3), stride=(2, 2), padding='same', use_bias=False)"),
    (lambda: L.MaxPool2D(2), "MaxPool2D(pool_size=(2, 2))"),
    (lambda: L.MaxPool2D(3, stride=1), "MaxPool2D(pool_size=(3, 3), stride=(1, 1))"),
    (lambda: L.Dense(10, impl="numpy"), "Dense(10, impl='numpy')"),
    (lambda: L.Dropout(0.5), "Dropout(0.5)"),
    (lambda: L.ReLU(), "ReLU()"),
    (lambda: L.LeakyReLU(), "LeakyReLU()"),
    (lambda: L.LeakyReLU(0.2), "LeakyReLU(alpha=0.2)"),
])
def test_repr_shows_non_defaults(make, expected):
    assert repr(make()) == expected


# --- validation: typed errors that name the layer, what was expected and what was received ---

def test_three_d_input():
    with pytest.raises(ValueError, match=r"Conv2D expects a 4-D input \(N, H, W, C\), received a 3-D array "
                                         r"of shape \(28, 28, 1\); a batch of one image needs a leading axis"):
        L.Conv2D(4, 3)(np.zeros((28, 28, 1), dtype=np.float32))


def test_nchw_input_to_built_conv():
    layer = L.Conv2D(4, 3)
    layer(np.zeros((2, 28, 28, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Conv2D was built for inputs with 3 channels \(N, H, W, 3\); "
                                         r"received shape \(2, 3, 28, 28\) with 28 channels\. It looks like NCHW"):
        layer(np.zeros((2, 3, 28, 28), dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, object, bool])
def test_non_float_dtype(dtype):
    x = np.zeros((1, 5, 5, 1), dtype=dtype)
    with pytest.raises(TypeError, match=rf"Conv2D expects a float32 or float64 array, received dtype "
                                        rf"{np.dtype(dtype)} with shape \(1, 5, 5, 1\)"):
        L.Conv2D(4, 3)(x)


def test_not_an_array():
    with pytest.raises(TypeError, match=r"ReLU expects a numpy array, received list"):
        L.ReLU()([1.0, 2.0])


def test_dtype_differs_from_build():
    layer = L.Dense(3)
    layer(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"Dense was built for float32 inputs, received float64"):
        layer(np.zeros((2, 4)))


def test_dense_wants_flatten():
    with pytest.raises(ValueError, match=r"Dense expects a 2-D input \(N, features\), received a 4-D array of "
                                         r"shape \(2, 3, 3, 1\); add a Flatten\(\) layer before it"):
        L.Dense(3)(np.zeros((2, 3, 3, 1), dtype=np.float32))


def test_dense_wrong_feature_count():
    layer = L.Dense(3)
    layer(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Dense was built for 4 input features; received shape \(2, 5\)"):
        layer(np.zeros((2, 5), dtype=np.float32))


@pytest.mark.parametrize("layer,shape,match", [
    (L.Conv2D(2, 5), (1, 3, 4, 1),
     r"Conv2D: kernel \(5, 5\) is larger than the padded input \(3, 4\) \(input H, W = \(3, 4\), padding 'valid'\)"),
    (L.Conv2D(2, 5, padding=1), (1, 2, 2, 1), r"Conv2D: kernel \(5, 5\) is larger than the padded input \(4, 4\)"),
    (L.MaxPool2D(4), (1, 3, 3, 1), r"MaxPool2D: pool_size \(4, 4\) is larger than the padded input \(3, 3\)"),
])
def test_window_larger_than_input(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("make,error,match", [
    (lambda: L.Conv2D(0, 3), ValueError, r"Conv2D: `filters` must be a positive int, received 0"),
    (lambda: L.Conv2D(-4, 3), ValueError, r"`filters` must be a positive int, received -4"),
    (lambda: L.Conv2D(2.5, 3), TypeError, r"`filters` must be a positive int, received 2.5"),
    (lambda: L.Conv2D(4, 0), ValueError, r"Conv2D: `kernel_size` must be >= 1, received 0"),
    (lambda: L.Conv2D(4, 3, stride=0), ValueError, r"Conv2D: `stride` must be >= 1, received 0"),
    (lambda: L.Conv2D(4, 3, stride=(1, -2)), ValueError, r"`stride` must be >= 1, received \(1, -2\)"),
    (lambda: L.Conv2D(4, 3, padding="full"), ValueError,
     r"Conv2D: unknown padding 'full'; expected 'valid', 'same', an int or a pair of ints"),
    (lambda: L.Conv2D(4, 3, padding=-1), ValueError, r"`padding` must be >= 0, received -1"),
    (lambda: L.MaxPool2D(0), ValueError, r"MaxPool2D: `pool_size` must be >= 1, received 0"),
    (lambda: L.MaxPool2D(2, stride=-1), ValueError, r"MaxPool2D: `stride` must be >= 1, received -1"),
    (lambda: L.AvgPool2D(2, padding="circular"), ValueError, r"AvgPool2D: unknown padding 'circular'"),
    (lambda: L.MaxPool2D(2, padding=2), ValueError, r"explicit padding \(2, 2\) must be at most half the pool"),
    (lambda: L.Dense(0), ValueError, r"Dense: `units` must be a positive int, received 0"),
    (lambda: L.Dropout(1.0), ValueError, r"Dropout: `rate` must be in \[0, 1\), received 1.0"),
    (lambda: L.Dropout("half"), TypeError, r"Dropout: `rate` must be a float in \[0, 1\), received 'half'"),
    (lambda: L.LeakyReLU(-1), ValueError, r"LeakyReLU: `alpha` must be a non-negative float"),
    (lambda: L.Conv2D(4, 3, impl="cuda"), ValueError, r"Conv2D: unknown impl 'cuda'; expected 'auto' or one of"),
    (lambda: L.Conv2D(4, 3, kernel_initializer="magic"), ValueError, r"Conv2D: unknown initializer 'magic'"),
])
def test_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()
