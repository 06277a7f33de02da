"""Optimizers against scalar, textbook loops written independently of fastcnn.optim."""

import math

import numpy as np
import pytest

from fastcnn import optim
from fastcnn.optim import SGD, Adam, get


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


@pytest.mark.parametrize("impl", ["numpy", "numba"])
@pytest.mark.parametrize("lr,b1,b2,eps,wd", [(1e-3, 0.9, 0.999, 1e-7, 0.0), (0.1, 0.8, 0.99, 1e-8, 0.0),
                                            (0.05, 0.9, 0.999, 1e-7, 0.1)])
def test_adam_matches_textbook(monkeypatch, impl, lr, b1, b2, eps, wd):
    """Both update paths: NumPy array operations and the fused Numba kernel (FASTCNN_IMPL picks)."""
    monkeypatch.setenv("FASTCNN_IMPL", impl)
    assert (optim._adam_kernel() is not None) == (impl == "numba")
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
    np.testing.assert_allclose(p, run(type(opt)(**opt.get_config()), P0, grad_fn, 1), rtol=1e-6)


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
    (lambda: SGD(0), ValueError, r"SGD: `lr` must be in \(0.0, inf\), received 0"),
    (lambda: SGD(-1e-3), ValueError, r"SGD: `lr` must be in"),
    (lambda: Adam("fast"), TypeError, r"Adam: `lr` must be a finite float, received 'fast'"),
    (lambda: SGD(0.1, momentum=1.0), ValueError, r"SGD: `momentum` must be in \[0.0, 1.0\), received 1.0"),
    (lambda: SGD(0.1, nesterov=True), ValueError, r"nesterov=True needs a momentum > 0"),
    (lambda: Adam(beta_1=1.2), ValueError, r"Adam: `beta_1` must be in \[0.0, 1.0\)"),
    (lambda: get("rmsprop"), ValueError, r"unknown optimizer 'rmsprop'; expected one of \['adam', 'sgd'\]"),
])
def test_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_get_by_name():
    assert isinstance(get("adam", lr=0.01), Adam) and get("SGD").lr == 0.01
