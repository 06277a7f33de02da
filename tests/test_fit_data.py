"""fit/evaluate data: iterables and generators of batches, sample_weight and class_weight,
and the weighted softmax_cross_entropy op behind them."""

import itertools

import numpy as np
import pytest

import fastcnn as fc
from fastcnn import layers as L, registry
from fastcnn.testing import assert_close, gradcheck

DTYPES = [np.float64, np.float32]


# -- the weighted loss op -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("impl", registry.implementations("softmax_cross_entropy"))
def test_weighted_loss_is_the_sum_over_batch_size(impl, dtype):
    rng = np.random.default_rng(0)
    logits, labels = 3 * rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    w = np.array([0.0, 1.0, 2.5, 0.5, 3.0, 1.0])
    ref = registry.get("softmax_cross_entropy", "reference").forward
    per_row = [ref(logits[n:n + 1], labels[n:n + 1]) for n in range(6)]  # (loss_n, dlogits_n * 1)
    loss, d = registry.get("softmax_cross_entropy", impl).forward(logits.astype(dtype), labels, sample_weight=w)
    want_loss = sum(wn * ln for wn, (ln, _) in zip(w, per_row)) / 6
    want_d = np.concatenate([wn * dn / 6 for wn, (_, dn) in zip(w, per_row)])
    assert d.dtype == dtype
    assert abs(loss - want_loss) <= (1e-10 if dtype == np.float64 else 1e-5) * abs(want_loss)
    assert_close(d, want_d, dtype=dtype, name=f"{impl} weighted dlogits")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("impl", registry.implementations("softmax_cross_entropy"))
def test_unit_weights_give_the_unweighted_bits(impl, dtype):
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((5, 3)).astype(dtype), rng.integers(0, 3, 5)
    fn = registry.get("softmax_cross_entropy", impl).forward
    loss, d = fn(logits, labels)
    loss1, d1 = fn(logits, labels, sample_weight=np.ones(5))
    assert loss1 == loss
    np.testing.assert_array_equal(d1, d)


def test_weighted_reference_gradcheck():
    rng = np.random.default_rng(3)
    labels, w = rng.integers(0, 4, 5), np.array([0.5, 0.0, 2.0, 1.0, 3.0])
    ref = registry.get("softmax_cross_entropy", "reference").forward

    def forward(z):
        loss, dlogits = ref(z, labels, sample_weight=w)
        return np.array(loss), dlogits

    gradcheck(forward, lambda g, dlogits: g * dlogits, [rng.standard_normal((5, 4))])


def test_public_loss_validates_weights():
    logits = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"sample_weight must have one weight per sample, shape \(3,\); "
                                         r"received shape \(2,\)"):
        fc.losses.softmax_cross_entropy(logits, [0, 1, 0], sample_weight=[1.0, 2.0])
    loss, _ = fc.losses.softmax_cross_entropy(logits, [0, 1, 0], sample_weight=[2.0, 0.0, 1.0])
    assert loss == pytest.approx(np.log(2) * 3 / 3)


# -- fit --------------------------------------------------------------------------------------
def model(seed=0):
    m = fc.Sequential([L.Flatten(), L.Dense(3)], input_shape=(4, 4, 1), seed=seed)
    return m.compile(fc.optim.SGD(0.1))


def data(N=20, seed=2):
    rng = np.random.default_rng(seed)
    return rng.random((N, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, N)


def weights_of(m):
    return [p.copy() for _, p, _ in m.params()]


def assert_same_weights(a, b):
    for p, q in zip(weights_of(a), weights_of(b)):
        np.testing.assert_array_equal(p, q)


def batches_of(x, y, size, w=None):
    for start in range(0, len(x), size):
        stop = start + size
        yield (x[start:stop], y[start:stop]) if w is None else (x[start:stop], y[start:stop], w[start:stop])


def test_generator_equals_arrays_without_shuffle():
    x, y = data()
    a, b, c = model(), model(), model()
    ha = a.fit(x, y, epochs=2, batch_size=6, shuffle=False, verbose=0)
    # an endless generator, two epochs of ceil(20 / 6) = 4 batches
    endless = itertools.chain.from_iterable(batches_of(x, y, 6) for _ in itertools.count())
    hb = b.fit(endless, epochs=2, steps_per_epoch=4, verbose=0)
    hc = c.fit(list(batches_of(x, y, 6)), epochs=2, verbose=0)  # re-iterable: each epoch runs it to the end
    assert_same_weights(a, b)
    assert_same_weights(a, c)
    assert ha.history["loss"] == hb.history["loss"] == hc.history["loss"]
    assert len(ha.history["loss"]) == 2


def test_class_weight_equals_sample_weight_and_unit_weights_equal_none():
    x, y = data()
    table = {0: 2.0, 2: 0.5}  # class 1 unlisted: weight 1
    w = np.array([table.get(int(k), 1.0) for k in y])
    a, b = model(), model()
    ha = a.fit(x, y, epochs=2, batch_size=8, class_weight=table, verbose=0)
    hb = b.fit(x, y, epochs=2, batch_size=8, sample_weight=w, verbose=0)
    assert_same_weights(a, b)
    assert ha.history == hb.history
    c, d = model(), model()
    c.fit(x, y, epochs=1, batch_size=8, sample_weight=np.ones(20), verbose=0)
    d.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert_same_weights(c, d)
    e = model()
    e.fit(x, y, epochs=1, batch_size=8, sample_weight=2 * w, verbose=0)
    assert not np.array_equal(weights_of(e)[0], weights_of(a)[0])


def test_generator_with_sample_weights_and_class_weight_on_batches():
    x, y = data()
    w = np.linspace(0.0, 2.0, 20)
    a, b = model(), model()
    a.fit(x, y, epochs=1, batch_size=5, shuffle=False, sample_weight=w, verbose=0)
    b.fit(batches_of(x, y, 5, w), epochs=1, verbose=0)
    assert_same_weights(a, b)
    c, d = model(), model()
    c.fit(x, y, epochs=1, batch_size=5, shuffle=False, class_weight={1: 3.0}, verbose=0)
    d.fit(batches_of(x, y, 5), epochs=1, class_weight={1: 3.0}, verbose=0)
    assert_same_weights(c, d)


def test_train_on_batch_takes_weights():
    x, y = data(6)
    a, b = model(), model()
    la = a.train_on_batch(x, y, class_weight={0: 0.0})
    lb = b.train_on_batch(x, y, sample_weight=(y != 0).astype(float))
    assert la == lb
    assert_same_weights(a, b)


def test_a_used_up_generator_stops_training_with_a_warning():
    x, y = data()
    m = model()
    with pytest.warns(UserWarning, match=r"fit: your input ran out of data; interrupting training \(a generator "
                                         r"is used up by one epoch"):
        history = m.fit(batches_of(x, y, 8), epochs=3, verbose=0)
    assert len(history.history["loss"]) == 1
    m = model()
    with pytest.warns(UserWarning, match=r"at least steps_per_epoch \* epochs = 2 \* 3 batches"):
        history = m.fit(batches_of(x, y, 4), epochs=3, steps_per_epoch=2, verbose=0)  # 5 batches: 2, 2, 1
    assert len(history.history["loss"]) == 3


def test_validation_generator_and_validation_steps():
    x, y = data()
    xv, yv = data(12, seed=3)
    a, b = model(), model()
    ha = a.fit(x, y, epochs=2, batch_size=8, validation_data=(xv[:8], yv[:8]), verbose=0)
    # a list restarts at each evaluation: its first two batches every epoch
    hb = b.fit(x, y, epochs=2, batch_size=8, validation_data=list(batches_of(xv, yv, 4)), validation_steps=2,
               verbose=0)
    assert ha.history["val_loss"] == hb.history["val_loss"]
    hl = model().fit(x, y, epochs=2, batch_size=8, validation_data=[xv[:8], yv[:8]], verbose=0)  # a list pair
    assert hl.history["val_loss"] == ha.history["val_loss"]
    wv = np.linspace(0.5, 1.5, 12)
    c = model()
    hc = c.fit(x, y, epochs=1, batch_size=8, validation_data=(xv, yv, wv), verbose=0)
    assert hc.history["val_loss"] == [c.evaluate(xv, yv, sample_weight=wv)["loss"]]
    assert hc.history["val_loss"] != [c.evaluate(xv, yv)["loss"]]


def test_evaluate_with_weights_and_generators():
    x, y = data(10)
    m = model()
    m.fit(x, y, epochs=1, verbose=0)
    w = np.linspace(0.0, 2.0, 10)
    probs = m.predict(x).astype(np.float64)
    per_sample = -np.log(probs[np.arange(10), y])
    logs = m.evaluate(x, y, batch_size=4, sample_weight=w)
    assert logs["loss"] == pytest.approx(np.sum(w * per_sample) / 10, rel=1e-5)
    assert logs["accuracy"] == m.evaluate(x, y)["accuracy"]  # metrics are unweighted
    gen = m.evaluate(batches_of(x, y, 4, w))
    assert gen["loss"] == pytest.approx(logs["loss"], rel=1e-12)
    assert m.evaluate(list(batches_of(x, y, 4)), steps=1)["loss"] == pytest.approx(
        m.evaluate(x[:4], y[:4])["loss"], rel=1e-12)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sample_weight=np.ones(19)), ValueError,
     r"sample_weight must have one weight per sample, shape \(20,\); received shape \(19,\)"),
    (dict(sample_weight=-np.ones(20)), ValueError, r"sample_weight must be non-negative; received -1.0 at index 0"),
    (dict(sample_weight=np.full(20, np.nan)), ValueError, r"sample_weight must be finite"),
    (dict(sample_weight=np.array(["a"] * 20)), TypeError, r"sample_weight must be real numbers, received dtype <U1"),
    (dict(class_weight={0: 1.0, 3: 2.0, 7: 1.0}), ValueError,
     r"class_weight names classes \[3, 7\] outside \[0, 3\) \(the model outputs 3 classes\)"),
    (dict(class_weight={0: -1.0}), ValueError, r"class_weight\[0\] must be a finite non-negative number"),
    (dict(class_weight=[1.0, 2.0]), TypeError, r"class_weight must be a dict \{class index: weight\}, received list"),
    (dict(class_weight={0: 2.0}, sample_weight=np.ones(20)), ValueError,
     r"pass either sample_weight or class_weight, not both"),
    (dict(steps_per_epoch=0), ValueError, r"fit: `steps_per_epoch` must be a positive int, received 0"),
    (dict(validation_data=(1, 2, 3, 4)), ValueError, r"fit: validation_data must be a tuple \(x_val, y_val\) or"),
])
def test_fit_rejects_bad_weights_and_arguments(kwargs, error, match):
    x, y = data()
    with pytest.raises(error, match=match):
        model().fit(x, y, verbose=0, **kwargs)


@pytest.mark.parametrize("batches,error,match", [
    ([np.zeros((2, 4, 4, 1))], TypeError,
     r"fit: batch 0 of the data must be a tuple \(x, y\) or \(x, y, sample_weight\); received a ndarray"),
    ([(np.zeros((2, 4, 4, 1), np.float32),)], TypeError, r"received a tuple of length 1"),
    ([(np.zeros((2, 5, 4, 1), np.float32), np.zeros(2, int))], ValueError,
     r"fit: batch 0 of the data must have shape \(None, 4, 4, 1\) \(NHWC\); received shape \(2, 5, 4, 1\)"),
    ([(np.zeros((2, 4, 4, 1), np.float32), np.zeros(3, int))], ValueError,
     r"fit: batch 0 of the data labels has 3 entries but the inputs have 2 samples"),
    ([(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, int), np.ones(3))], ValueError,
     r"fit: batch 0 of the data: sample_weight must have one weight per sample, shape \(2,\)"),
    ([], ValueError, r"fit: the data yielded no batches"),
])
def test_bad_generator_batches_are_reported(batches, error, match):
    with pytest.raises(error, match=match):
        model().fit(iter(batches), verbose=0)


def test_generator_input_errors():
    x, y = data()
    with pytest.raises(ValueError, match=r"fit: `y` is required when `x` is an array"):
        model().fit(x, verbose=0)
    with pytest.raises(ValueError, match=r"fit: with a generator or iterable of batches, yield \(x, y, "
                                         r"sample_weight\) batches"):
        model().fit(batches_of(x, y, 4), sample_weight=np.ones(20), verbose=0)
    with pytest.raises(ValueError, match=r"class_weight cannot be used as well"):
        model().fit(batches_of(x, y, 4, np.ones(20)), class_weight={0: 1.0}, verbose=0)
    m = model()
    gen = batches_of(x, y, 4)
    m.evaluate(gen)
    with pytest.raises(ValueError, match=r"evaluate yielded no batches \(a generator is used up after one pass"):
        m.evaluate(gen)


def test_progress_bar_with_unknown_steps(capsys):
    x, y = data()
    model().fit(batches_of(x, y, 8), epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert out.startswith("Epoch 1/1 - 3/3 - ") and "steps/s" in out


def functional(seed=0):
    """A graph with BatchNormalization (non-trainable state, folded at inference) and an Add."""
    x = fc.Input((4, 4, 1))
    h = L.Conv2D(2, 3, padding="same")(x)
    h = L.Add()([L.BatchNormalization()(h), L.Conv2D(2, 1)(x)])
    return fc.Model(x, L.Dense(3)(L.Flatten()(h)), seed=seed).compile(fc.optim.SGD(0.1))


def test_functional_model_fits_generators_with_weights():
    x, y = data()
    w = np.linspace(0.0, 2.0, 20)
    a, b = functional(), functional()
    ha = a.fit(x, y, epochs=2, batch_size=5, shuffle=False, sample_weight=w, verbose=0)
    endless = itertools.chain.from_iterable(batches_of(x, y, 5, w) for _ in itertools.count())
    hb = b.fit(endless, epochs=2, steps_per_epoch=4, verbose=0)
    assert ha.history["loss"] == hb.history["loss"]
    assert_same_weights(a, b)
    for (name, s), (_, t) in zip(a.states(), b.states()):
        np.testing.assert_array_equal(s, t, err_msg=name)
    c, d = functional(), functional()
    c.train_on_batch(x, y, class_weight={2: 0.0})
    d.train_on_batch(x, y, sample_weight=(y != 2).astype(float))
    assert_same_weights(c, d)
    logs = a.evaluate(list(batches_of(x, y, 6, w)), fold=False)
    # the same batches of 6 (the BLAS may round a row differently in a GEMM of another height)
    assert logs["loss"] == pytest.approx(a.evaluate(x, y, sample_weight=w, batch_size=6, fold=False)["loss"], rel=1e-12)
    assert a.evaluate(x, y, sample_weight=w)["loss"] == pytest.approx(logs["loss"], rel=1e-5)  # folded


def test_distributed_fit_and_evaluate_refuse_weights_and_steps():
    x, y = data()
    with pytest.raises(ValueError, match=r"fit: sample_weight, steps_per_epoch cannot be used with a distributed "
                                         r"fit yet \(it takes arrays \(x, y\) only\)"):
        model().fit(x, y, distributed=True, sample_weight=np.ones(20), steps_per_epoch=2, verbose=0)
    with pytest.raises(ValueError, match=r"evaluate: steps cannot be used with a distributed evaluate yet"):
        model().evaluate(x, y, distributed=True, steps=1)
    a, b = model(), model()  # one process: the sharded batches are the whole batches
    assert a.fit(x, y, epochs=2, batch_size=6, distributed=True, verbose=0).history == \
        b.fit(x, y, epochs=2, batch_size=6, verbose=0).history
    assert_same_weights(a, b)
