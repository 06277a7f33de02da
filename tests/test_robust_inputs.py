"""Inputs that used to pass silently or fail with a raw error (issue 14, items 2, 8 and 9)."""

import io
import warnings

import numpy as np
import pytest

import fastcnn

from fastcnn import layers as L
from fastcnn.errors import FastCNNError, NonFiniteInputError
from fastcnn.model import Sequential
from fastcnn.optim import SGD


def small_net(seed=0):
    model = Sequential([L.Conv2D(4, 3, stride=2), L.ReLU(), L.Flatten(), L.Dense(10)],
                       input_shape=(28, 28, 1), seed=seed)
    return model.compile(SGD(lr=0.05))


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


# -- item 2: non-finite inputs ----------------------------------------------------------------
@pytest.mark.parametrize("value, kind", [(np.nan, "1 NaN"), (np.inf, "1 inf"), (-np.inf, "1 inf")])
@pytest.mark.parametrize("call", ["predict", "evaluate", "validation_data"])
def test_non_finite_inputs_are_refused_naming_the_first_sample(call, value, kind):
    model = small_net()
    x, y = images(40), np.arange(40) % 10
    x[17, 5, 6, 0] = value
    x[30, 0, 0, 0] = 0.5  # finite
    before = model.get_weights()
    what = "validation_data" if call == "validation_data" else "x"
    match = rf"{what} holds non-finite values \({kind}\); the first is in sample 17 \({what}\[17\]\)"
    with pytest.raises(NonFiniteInputError, match=match) as info:
        if call == "predict":
            model.predict(x)
        elif call == "evaluate":
            model.evaluate(x, y)
        else:
            model.fit(images(8), np.arange(8), validation_data=(x, y), verbose=0)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FastCNNError)
    assert fastcnn.NonFiniteInputError is NonFiniteInputError
    assert all(np.array_equal(a, b) for a, b in zip(before.values(), model.get_weights().values()))


def test_non_finite_message_counts_both_kinds_and_float64_input_is_checked_too():
    x = images(5).astype(np.float64)
    x[3, 0, 0, 0], x[4, 1, 1, 0], x[4, 2, 2, 0] = np.inf, np.nan, np.nan
    with pytest.raises(NonFiniteInputError, match=r"\(2 NaN, 1 inf\); the first is in sample 3"):
        small_net().predict(x)


def test_validation_split_samples_are_checked():
    x, y = images(20), np.arange(20) % 10
    x[18, 0, 0, 0] = np.nan  # in the last 10%: the validation samples
    with pytest.raises(NonFiniteInputError, match=r"the validation_split samples of x holds .* sample 0"):
        small_net().fit(x, y, validation_split=0.1, verbose=0)


def test_huge_finite_inputs_whose_sum_overflows_are_accepted():
    x = np.full((3, 28, 28, 1), 3e38, dtype=np.float32)  # the sum overflows to inf; every value is finite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert small_net().predict(x).shape == (3, 10)


# -- item 8: set_weights ----------------------------------------------------------------------
def test_set_weights_refuses_nan_int_and_wrong_shapes_before_changing_anything():
    model = small_net()
    good = model.get_weights()
    for key, bad, error, match in [
        ("layers.0.bias", np.full(4, np.nan, np.float32), ValueError, r"'layers.0.bias' holds NaN or infinite"),
        ("layers.3.weight", good["layers.3.weight"].astype(np.int64), TypeError,
         r"'layers.3.weight' must be a float array \(float32\), received dtype int64"),
        ("layers.3.bias", np.zeros(9, np.float32), ValueError, r"'layers.3.bias' has shape \(10,\), received \(9,\)"),
        ("layers.3.bias", 0.5, TypeError, r"'layers.3.bias' must be an array of shape \(10,\)"),
    ]:
        weights = dict(good, **{"layers.0.weight": good["layers.0.weight"] + 1, key: bad})
        with pytest.raises(error, match=match):
            model.set_weights(weights)
        assert all(np.array_equal(good[k], v) for k, v in model.get_weights().items())


def test_set_weights_takes_a_keras_style_list_in_get_weights_order():
    source, target = small_net(seed=1), small_net(seed=2)
    target.set_weights(list(source.get_weights().values()))
    assert all(np.array_equal(a, b) for a, b in zip(source.get_weights().values(), target.get_weights().values()))
    with pytest.raises(ValueError, match=r"the model has 4 weight arrays \(layers.0.weight, .*\), received a "
                                         r"list of 3"):
        target.set_weights(list(source.get_weights().values())[:3])
    with pytest.raises(TypeError, match=r"expected a dict \{name: array\} .* or a list of arrays"):
        target.set_weights(np.zeros(3))


def test_float64_weights_are_cast_to_a_float32_model():
    model = small_net()
    weights = {k: v.astype(np.float64) for k, v in model.get_weights().items()}
    model.set_weights(weights)
    assert all(p.dtype == np.float32 for _, p, _ in model.params())


# -- item 9: smaller ones -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 28)])
def test_a_single_image_gets_a_hint_to_add_the_batch_axis(shape):
    with pytest.raises(ValueError, match=r"received shape \(28, 28(, 1)?\). It looks like a single image: "
                                         r"pass a batch of one, x\[None\]"):
        small_net().predict(np.zeros(shape, np.float32))


def test_float_inputs_in_0_255_warn_once_per_model():
    model = small_net()
    x = images(4) * 255
    with pytest.warns(UserWarning, match=r"x is float with values up to 25\d.*divide by 255"):
        model.predict(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x)  # once per model
        small_net().predict(images(4) * 5)  # standardized-like values do not warn
    with pytest.warns(UserWarning, match=r"x is float with values up to"):
        small_net().fit(images(8) * 255, np.arange(8), verbose=0)


def test_shuffle_batch_is_refused_instead_of_meaning_true():
    model = small_net()
    with pytest.raises(ValueError, match=r"shuffle='batch' .* is not supported; pass shuffle=True or shuffle=False"):
        model.fit(images(8), np.arange(8), shuffle="batch", verbose=0)
    with pytest.raises(ValueError, match=r"`shuffle` must be True or False, received 1"):
        model.fit(images(8), np.arange(8), shuffle=1, verbose=0)
    assert model.optimizer.iterations == 0


def test_a_ragged_list_gets_a_clear_error():
    ragged = [np.zeros((28, 28, 1), np.float32), np.zeros((27, 28, 1), np.float32)]
    with pytest.raises(ValueError, match=r"x must be an array, or a list of images of one shape; received a ragged "
                                         r"list of 2 samples \(sample shapes \[\(27, 28, 1\), \(28, 28, 1\)\]\)"):
        small_net().predict(ragged)


def test_evaluate_shows_a_bar_at_verbose_1_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("fastcnn.progress.EvaluationProgbar.__init__.__defaults__", (0.0, 30))
    model = small_net()
    logs = model.evaluate(images(100), np.arange(100) % 10, batch_size=10, verbose=1)
    text = out.getvalue()
    assert "\r 90/100 [===========================>..] - ETA: 0s" in text
    assert text.rstrip().endswith(f"loss: {logs['loss']:.4f} - accuracy: {logs['accuracy']:.4f}")
    out.truncate(0)
    model.evaluate(images(100), np.arange(100) % 10, batch_size=10, verbose=2)
    assert "[" not in out.getvalue()  # verbose 2: the metrics line only


def bn_model(seed=0):
    import fastcnn as fc

    x = fc.Input((6, 6, 1))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(3, 3, padding="same")(x)))
    y = L.Dense(10)(L.Flatten()(L.Add()([a, L.Conv2D(3, 1)(x)])))
    return fc.Model(x, y, seed=seed).compile(fastcnn.optim.Adam(1e-2))


def test_set_weights_checks_the_moving_statistics_too_before_changing_anything():
    model = bn_model()
    good = model.get_weights()
    assert "layers.1.moving_variance" in good  # get_weights holds the non-trainable state
    for key, bad, error, match in [
        ("layers.1.moving_variance", np.full(3, np.inf, np.float32), ValueError,
         r"'layers.1.moving_variance' holds NaN or infinite"),
        ("layers.1.moving_mean", np.zeros(4, np.float32), ValueError,
         r"'layers.1.moving_mean' has shape \(3,\), received \(4,\)"),
        ("layers.1.moving_mean", np.zeros(3, np.int32), TypeError,
         r"'layers.1.moving_mean' must be a float array \(float32\), received dtype int32"),
    ]:
        weights = dict(good, **{"layers.0.weight": good["layers.0.weight"] + 1, key: bad})
        with pytest.raises(error, match=match):
            model.set_weights(weights)
        assert all(np.array_equal(good[k], v) for k, v in model.get_weights().items())


def test_set_weights_keras_list_covers_parameters_then_state():
    source, target = bn_model(seed=1), bn_model(seed=2)
    source.fit(*[np.random.default_rng(0).random((8, 6, 6, 1), dtype=np.float32), np.arange(8)], verbose=0)
    values = list(source.get_weights().values())
    target.set_weights(values)
    assert all(np.array_equal(a, b) for a, b in zip(values, target.get_weights().values()))
    assert not np.array_equal(target.get_weights()["layers.1.moving_mean"], np.zeros(3))
    with pytest.raises(ValueError, match=rf"the model has {len(values)} weight arrays \(layers.0.weight, .*"
                                         rf"layers.1.moving_variance\), received a list of {len(values) - 2}"):
        target.set_weights(values[:-2])
