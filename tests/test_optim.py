"""Optimizers against scalar, textbook loops written independently of fastcnn.optim."""

import math

import numpy as np
import pytest

from fastcnn import optim, registry
from fastcnn.optim import SGD, Adam, AdamW, RMSprop, get
from fastcnn.optim.schedules import CosineDecay, ExponentialDecay, PiecewiseConstantDecay

IMPLS = ["reference", "numpy", "numba"]


def run(opt, p0, grad_fn, steps):
    p = p0.copy()
    for _ in range(steps):
        opt.step([("p", p, grad_fn(p))])
    return p


def grad_fn(p):
    return (2.0 * p - 1.0 + 0.3 * np.sin(p)).astype(p.dtype)  # gradient of a non-quadratic loss


def scalar_sgd(p, lr, momentum, nesterov, wd, steps):
    buf = None
    out = []
    for x in p:
        buf = None
        for _ in range(steps):
            g = 2.0 * x - 1.0 + 0.3 * math.sin(x) + wd * x
            if momentum:
                buf = g if buf is None else momentum * buf + g
                g = g + momentum * buf if nesterov else buf
            x = x - lr * g
        out.append(x)
    return np.array(out)


def scalar_adam(p, lr, b1, b2, eps, steps, wd=0.0):
    out = []
    for x in p:
        m = v = 0.0
        for t in range(1, steps + 1):
            g = 2.0 * x - 1.0 + 0.3 * math.sin(x) + wd * x
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x = x - lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        out.append(x)
    return np.array(out)


P0 = np.array([0.5, -1.5, 2.0, 0.0, 3.0])


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0),
                                                  (0.5, True, 0.01), (0.0, False, 0.1)])
def test_sgd_matches_textbook(momentum, nesterov, wd):
    got = run(SGD(0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd), P0, grad_fn, 7)
    np.testing.assert_allclose(got, scalar_sgd(P0, 0.05, momentum, nesterov, wd, 7), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lr,b1,b2,eps,wd", [(1e-3, 0.9, 0.999, 1e-7, 0.0), (0.1, 0.8, 0.99, 1e-8, 0.0),
                                            (0.05, 0.9, 0.999, 1e-7, 0.1)])
def test_adam_matches_textbook(monkeypatch, impl, lr, b1, b2, eps, wd):
    """Every registered update: the formula, NumPy array operations, the fused Numba kernel."""
    monkeypatch.setenv("FASTCNN_IMPL", impl)
    assert registry.get("adam_update").impl == impl
    got = run(Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps, weight_decay=wd), P0, grad_fn, 9)
    np.testing.assert_allclose(got, scalar_adam(P0, lr, b1, b2, eps, 9, wd), rtol=1e-12, atol=1e-12)


def test_adam_first_step_is_lr_times_the_gradient_sign():
    # Bias correction makes m_hat = g and v_hat = g**2 after one step, so the step is
    # lr * g / (|g| + eps) whatever the betas: without it, it would be lr * 0.1 / sqrt(0.001) ~ 3.2 lr.
    p = np.array([1.0, 1.0, 1.0])
    Adam(0.01, epsilon=1e-12).step([("p", p, np.array([3.0, -0.5, 1e-3]))])
    np.testing.assert_allclose(p, [0.99, 1.01, 0.99], rtol=1e-9)


def test_sgd_nesterov_two_steps_by_hand():
    # Constant gradient 1, lr 0.1, momentum 0.9. Step 1: buf = 1, step = 1 + 0.9 * 1 = 1.9.
    # Step 2: buf = 0.9 * 1 + 1 = 1.9, step = 1 + 0.9 * 1.9 = 2.71. Total 0.1 * 4.61.
    p = np.array([0.0])
    opt = SGD(0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        opt.step([("p", p, np.array([1.0]))])
    np.testing.assert_allclose(p, [-0.461], rtol=1e-12)
    np.testing.assert_allclose(opt.state["p"]["momentum"], [1.9], rtol=1e-12)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                 Adam(0.01, weight_decay=1e-3)], ids=repr)
def test_float32_stays_float32(opt):
    p = P0.astype(np.float32)
    opt.step([("p", p, grad_fn(p))])
    assert p.dtype == np.float32
    for slot in opt.state["p"].values():
        assert slot.dtype == np.float32
    np.testing.assert_allclose(p, run(type(opt).from_config(opt.get_config()), P0, grad_fn, 1), rtol=1e-6)


def test_state_round_trip_continues_exactly():
    a = Adam(0.05)
    p = run(a, P0, grad_fn, 3)
    b = Adam(0.05)
    b.load_state_arrays({k: v.copy() for k, v in a.state_arrays().items()})
    assert b.iterations == 3
    np.testing.assert_array_equal(run(a, p, grad_fn, 4), run(b, p, grad_fn, 4))


def test_mismatched_gradient():
    p = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"gradient for 'w' has shape \(4,\) dtype float32, expected shape \(3,\)"):
        SGD(0.1).step([("w", p, np.zeros(4, dtype=np.float32))])


@pytest.mark.parametrize("make,error,match", [
    (lambda: SGD(0), ValueError, r"SGD: `learning_rate` must be in \(0.0, inf\), received 0"),
    (lambda: SGD(lr=-1e-3), ValueError, r"SGD: `learning_rate` must be in"),
    (lambda: Adam("fast"), TypeError, r"Adam: `learning_rate` must be a finite float, received 'fast'"),
    (lambda: Adam(learning_rate=0.1, lr=0.1), ValueError, r"Adam: pass `learning_rate` or its older spelling `lr`"),
    (lambda: RMSprop(rho=1.0), ValueError, r"RMSprop: `rho` must be in \[0.0, 1.0\), received 1.0"),
    (lambda: AdamW(clipnorm=0), ValueError, r"AdamW: `clipnorm` must be in \(0.0, inf\), received 0"),
    (lambda: SGD(clipnorm=1.0, clipvalue=0.5), ValueError,
     r"SGD: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; received clipnorm=1.0, "
     r"clipvalue=0.5, global_clipnorm=None"),
    (lambda: SGD(0.1, momentum=1.0), ValueError, r"SGD: `momentum` must be in \[0.0, 1.0\), received 1.0"),
    (lambda: SGD(0.1, nesterov=True), ValueError, r"nesterov=True needs a momentum > 0"),
    (lambda: Adam(beta_1=1.2), ValueError, r"Adam: `beta_1` must be in \[0.0, 1.0\)"),
    (lambda: get("adagrad"), ValueError,
     r"unknown optimizer 'adagrad'; expected one of \['adam', 'adamw', 'rmsprop', 'sgd'\]"),
])
def test_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_get_by_name():
    assert isinstance(get("adam", lr=0.01), Adam) and get("SGD").lr == 0.01
    assert isinstance(get("rmsprop"), RMSprop) and get("AdamW", learning_rate=0.1).learning_rate == 0.1


# -- the newer optimizers and clipping, each against a scalar textbook loop over two steps ---------------
def keras_clip(grads, clipnorm=None, clipvalue=None, global_clipnorm=None):
    """Keras 3's ``_clip_gradients`` on lists of floats (one list per variable)."""
    if clipnorm:
        out = []
        for g in grads:
            norm = math.sqrt(sum(x * x for x in g))
            out.append([x * clipnorm / max(norm, clipnorm) for x in g])
        return out
    if global_clipnorm:
        norm = math.sqrt(sum(x * x for g in grads for x in g))
        scale = global_clipnorm * min(1.0 / norm, 1.0 / global_clipnorm)
        return [[x * scale for x in g] for g in grads]
    if clipvalue:
        return [[min(max(x, -clipvalue), clipvalue) for x in g] for g in grads]
    return grads


def textbook(update, init_state, params, steps, clip):
    """Run ``update(x, g, state, t) -> x`` element by element on lists of floats, clipping as Keras."""
    params = [[float(x) for x in np.ravel(p)] for p in params]
    states = [[init_state() for _ in p] for p in params]
    for t in range(1, steps + 1):
        grads = [[2.0 * x - 1.0 + 0.3 * math.sin(x) for x in p] for p in params]
        grads = keras_clip(grads, **clip)
        params = [[update(x, g, s, t) for x, g, s in zip(p, gs, ss)]
                  for p, gs, ss in zip(params, grads, states)]
    return [np.array(p) for p in params]


def rmsprop_scalar(lr, rho, momentum, eps, centered, wd):
    def update(x, g, s, t):
        x = x - x * wd * lr
        s["v"] = rho * s["v"] + (1 - rho) * g * g
        if centered:
            s["a"] = rho * s["a"] + (1 - rho) * g
            inc = lr * g / math.sqrt(s["v"] - s["a"] ** 2 + eps)
        else:
            inc = lr * g / math.sqrt(s["v"] + eps)
        if momentum:
            s["m"] = momentum * s["m"] + inc
            inc = s["m"]
        return x - inc
    return update


def adamw_scalar(lr, wd, b1, b2, eps, amsgrad):
    def update(x, g, s, t):
        x = x - x * wd * lr  # Keras: variable - variable * wd * lr, before the update
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        s["vmax"] = max(s["vmax"], s["v"])
        v = s["vmax"] if amsgrad else s["v"]
        return x - lr * (s["m"] / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
    return update


def sgd_scalar(lr, momentum, nesterov):
    def update(x, g, s, t):
        s["buf"] = g if t == 1 else momentum * s["buf"] + g
        return x - lr * ((g + momentum * s["buf"] if nesterov else s["buf"]) if momentum else g)
    return update


TWO_PARAMS = [np.array([0.5, -1.5, 2.0, 0.0, 3.0]), np.array([[4.0, -2.5], [0.25, 1.0]])]
CLIPS = [{}, {"clipnorm": 1.5}, {"clipvalue": 0.8}, {"global_clipnorm": 2.0}]
CLIP_IDS = ["no-clip", "clipnorm", "clipvalue", "global_clipnorm"]


def run_two(opt, dtype=np.float64, steps=2):
    params = [p.astype(dtype) for p in TWO_PARAMS]
    for _ in range(steps):
        opt.step([(f"p{i}", p, grad_fn(p)) for i, p in enumerate(params)])
    return params


def zeros_state():
    return {"v": 0.0, "a": 0.0, "m": 0.0, "vmax": 0.0, "buf": 0.0}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("momentum,centered,wd", [(0.0, False, 0.0), (0.5, True, 0.1)])
def test_rmsprop_matches_textbook(monkeypatch, impl, clip, momentum, centered, wd):
    monkeypatch.setenv("FASTCNN_IMPL", impl)
    got = run_two(RMSprop(0.05, rho=0.8, momentum=momentum, epsilon=1e-6, centered=centered, weight_decay=wd,
                          **clip))
    want = textbook(rmsprop_scalar(0.05, 0.8, momentum, 1e-6, centered, wd), zeros_state, TWO_PARAMS, 2, clip)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.ravel(), w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_matches_textbook(monkeypatch, impl, clip, amsgrad):
    monkeypatch.setenv("FASTCNN_IMPL", impl)
    got = run_two(AdamW(0.1, weight_decay=0.2, beta_1=0.8, beta_2=0.9, epsilon=1e-6, amsgrad=amsgrad, **clip),
                  steps=3)
    want = textbook(adamw_scalar(0.1, 0.2, 0.8, 0.9, 1e-6, amsgrad), zeros_state, TWO_PARAMS, 3, clip)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.ravel(), w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("clip", CLIPS[1:], ids=CLIP_IDS[1:])
def test_clipping_on_sgd_and_adam_matches_textbook(monkeypatch, impl, clip):
    monkeypatch.setenv("FASTCNN_IMPL", impl)
    got = run_two(SGD(0.1, momentum=0.9, nesterov=True, **clip))
    want = textbook(sgd_scalar(0.1, 0.9, True), zeros_state, TWO_PARAMS, 2, clip)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.ravel(), w, rtol=1e-12, atol=1e-14)
    got = run_two(Adam(0.1, **clip))
    want = textbook(adamw_scalar(0.1, 0.0, 0.9, 0.999, 1e-7, False), zeros_state, TWO_PARAMS, 2, clip)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.ravel(), w, rtol=1e-12, atol=1e-14)


def test_clipping_takes_effect_where_expected():
    # Gradients (3, 4) and (0, 0.5): norms 5 and 0.5, joint norm sqrt(25.25).
    def step(**clip):
        a, b = np.zeros(2), np.zeros(2)
        SGD(1.0, **clip).step([("a", a, np.array([3.0, 4.0])), ("b", b, np.array([0.0, 0.5]))])
        return -a, -b
    a, b = step(clipnorm=1.0)
    np.testing.assert_allclose(a, [0.6, 0.8], rtol=1e-15)
    np.testing.assert_allclose(b, [0.0, 0.5], rtol=1e-15)  # below the norm: untouched
    a, b = step(global_clipnorm=1.0)
    scale = 1.0 / math.sqrt(25.25)
    np.testing.assert_allclose(np.concatenate([a, b]), np.array([3.0, 4.0, 0.0, 0.5]) * scale, rtol=1e-15)
    a, b = step(clipvalue=0.6)
    np.testing.assert_array_equal(np.concatenate([a, b]), [0.6, 0.6, 0.0, 0.5])


@pytest.mark.parametrize("make", [lambda: RMSprop(0.01, momentum=0.9, centered=True, clipnorm=1.0),
                                  lambda: AdamW(0.01, amsgrad=True, global_clipnorm=1.0)], ids=["rmsprop", "adamw"])
def test_new_optimizers_float32_and_state_resume(make):
    p32 = run_two(make(), np.float32)
    assert all(p.dtype == np.float32 for p in p32)
    for got, want in zip(p32, run_two(make())):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    a = make()
    params = run_two(a, steps=2)
    b = make()
    b.load_state_arrays({k: v.copy() for k, v in a.state_arrays().items()})
    pa, pb = [p.copy() for p in params], [p.copy() for p in params]
    for _ in range(2):
        a.step([(f"p{i}", p, grad_fn(p)) for i, p in enumerate(pa)])
        b.step([(f"p{i}", p, grad_fn(p)) for i, p in enumerate(pb)])
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)


# -- learning rate: assignment, schedules, callables ----------------------------------------------------
def test_learning_rate_assignment_is_validated():
    opt = Adam(learning_rate=0.01)
    opt.learning_rate = 0.5
    assert opt.learning_rate == 0.5 and opt.lr == 0.5
    opt.lr = 0.25
    assert opt.learning_rate == 0.25 and opt.get_config()["learning_rate"] == 0.25
    with pytest.raises(ValueError, match=r"Adam: `learning_rate` must be in \(0.0, inf\), received -1"):
        opt.learning_rate = -1
    with pytest.raises(TypeError, match=r"Adam: `learning_rate` must be a finite float, received nan"):
        opt.learning_rate = float("nan")
    assert opt.learning_rate == 0.25
    scheduled = SGD(ExponentialDecay(0.1, 10, 0.5))
    with pytest.raises(TypeError, match=r"SGD was created with the schedule ExponentialDecay\(.*\) as its "
                                        r"learning rate, so the learning rate cannot be set to 0.1"):
        scheduled.learning_rate = 0.1


def test_schedule_is_evaluated_at_the_step_count_before_each_update():
    # Plain SGD moves p by lr * g: with g = 1 the steps taken are the learning rates used.
    schedule = PiecewiseConstantDecay([0, 1], [1.0, 0.5, 0.25])  # step 0 -> 1.0, step 1 -> 0.5, then 0.25
    for rate in (schedule, lambda step: [1.0, 0.5, 0.25][min(step, 2)]):
        opt, p, taken = SGD(rate), np.zeros(1), []
        for _ in range(3):
            before = p[0]
            opt.step([("p", p, np.ones(1))])
            taken.append(before - p[0])
        assert taken == [1.0, 0.5, 0.25]
        assert opt.learning_rate == 0.25 and opt.iterations == 3
    bad = SGD(lambda step: -1.0)
    with pytest.raises(ValueError, match=r"SGD: the learning-rate schedule .* returned -1.0 at step 0; it must "
                                         r"return a finite float >= 0"):
        bad.step([("p", np.zeros(1), np.ones(1))])


def test_adamw_decay_uses_the_scheduled_rate():
    # Zero gradient: Adam's step is 0 and only the decay moves p: p *= 1 - wd * lr(t).
    schedule = ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt, p = AdamW(schedule, weight_decay=0.5), np.array([2.0])
    for _ in range(2):
        opt.step([("p", p, np.zeros(1))])
    np.testing.assert_allclose(p, [2.0 * (1 - 0.5 * 0.1) * (1 - 0.5 * 0.05)], rtol=1e-15)


# -- schedules pinned against Keras's formulas --------------------------------------------------------
@pytest.mark.parametrize("schedule,expected", [
    # 0.1 * 0.5 ** (step / 4)
    (ExponentialDecay(0.1, 4, 0.5), {0: 0.1, 2: 0.1 * 0.5 ** 0.5, 4: 0.05, 10: 0.1 * 0.5 ** 2.5}),
    # staircase: 0.1 * 0.5 ** floor(step / 4)
    (ExponentialDecay(0.1, 4, 0.5, staircase=True), {0: 0.1, 3: 0.1, 4: 0.05, 11: 0.025, 12: 0.0125}),
    # values[0] up to and including boundaries[0], values[i] on (b[i-1], b[i]], values[-1] after
    (PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), {0: 1.0, 10: 1.0, 11: 0.5, 20: 0.5, 21: 0.1, 999: 0.1}),
    # 0.1 * ((1 - 0.1) * 0.5 * (1 + cos(pi * min(step, 100) / 100)) + 0.1)
    (CosineDecay(0.1, 100, alpha=0.1), {0: 0.1, 25: 0.1 * (0.9 * 0.5 * (1 + math.sqrt(0.5)) + 0.1),
                                       50: 0.1 * (0.45 + 0.1), 100: 0.01, 500: 0.01}),
    # warmup from 0 to 1.0 over 10 steps (linear), then cosine from 1.0 over 20 steps to alpha = 0
    (CosineDecay(0.0, 20, warmup_target=1.0, warmup_steps=10), {0: 0.0, 5: 0.5, 10: 1.0, 20: 0.5, 30: 0.0,
                                                                 40: 0.0}),
])
def test_schedule_values(schedule, expected):
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-12, abs=1e-15), step


def test_schedule_serialization_round_trip():
    for schedule in (ExponentialDecay(0.1, 4, 0.5, staircase=True), PiecewiseConstantDecay([10], [1.0, 0.5]),
                     CosineDecay(0.1, 100, alpha=0.1, warmup_target=0.5, warmup_steps=3)):
        spec = optim.schedules.serialize(schedule)
        again = optim.schedules.deserialize(spec)
        assert again == schedule and again is not schedule
        opt = RMSprop(schedule, clipnorm=2.0)
        assert RMSprop.from_config(opt.get_config()).get_config() == opt.get_config()
    with pytest.raises(TypeError, match=r"cannot be saved: only the schedules in fastcnn.optim.schedules"):
        SGD(lambda step: 0.1).get_config()
    with pytest.raises(ValueError, match=r"unknown schedule 'StepDecay'"):
        optim.schedules.deserialize({"class": "StepDecay", "config": {}})


@pytest.mark.parametrize("make,match", [
    (lambda: ExponentialDecay(0.1, 0, 0.5), r"ExponentialDecay: `decay_steps` must be > 0, received 0"),
    (lambda: PiecewiseConstantDecay([1, 2], [1.0]), r"`values` must have one more entry than `boundaries`"),
    (lambda: PiecewiseConstantDecay([2, 1], [1.0, 0.5, 0.1]), r"`boundaries` must increase strictly"),
    (lambda: CosineDecay(-0.1, 10), r"CosineDecay: `initial_learning_rate` must be >= 0, received -0.1"),
])
def test_bad_schedules(make, match):
    with pytest.raises(ValueError, match=match):
        make()
