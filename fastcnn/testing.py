"""Tolerance-aware comparison and finite-difference gradient checks.

Shared by the tests and the benchmarks so both judge agreement the same way.

Error measure: ``max|actual - desired| / max|desired|`` (norm-wise relative
error). It is well defined for outputs with zeros in them, which element-wise
relative error is not; an all-zero ``desired`` requires an exactly zero
``actual``.
"""

import numpy as np

__all__ = ["RTOL", "max_rel_error", "assert_close", "numerical_grad", "gradcheck"]

#: Documented agreement tolerance per dtype of the implementation under test.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def max_rel_error(actual, desired):
    """Norm-wise relative error of ``actual`` against ``desired`` (float64 math)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    if actual.shape != desired.shape:
        raise AssertionError(f"shape mismatch: {actual.shape} vs {desired.shape}")
    if actual.size == 0:
        return 0.0
    diff = np.max(np.abs(actual - desired))
    if not np.isfinite(diff):
        same = np.array_equal(actual, desired, equal_nan=True)
        return 0.0 if same else float("inf")
    scale = np.max(np.abs(desired))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return float(diff / scale)


def assert_close(actual, desired, *, dtype=None, rtol=None, name="array"):
    """Assert ``actual`` agrees with ``desired`` to the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual.dtype``; ``rtol`` overrides the table.
    """
    if actual is None or desired is None:
        if actual is None and desired is None:
            return
        raise AssertionError(f"{name}: one side is None ({actual is None}, {desired is None})")
    dtype = np.dtype(dtype if dtype is not None else np.asarray(actual).dtype)
    tol = RTOL.get(dtype, 1e-4) if rtol is None else rtol
    err = max_rel_error(actual, desired)
    if not err <= tol:
        raise AssertionError(f"{name}: max relative error {err:.3e} > {tol:.1e} (dtype {dtype})")


def numerical_grad(f, x, eps=1e-6):
    """Central finite-difference gradient of scalar ``f()`` w.r.t. array ``x`` (in place)."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x must be contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_grad needs a contiguous array")
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(forward, backward, inputs, *, seed=0, eps=1e-6, rtol=1e-6):
    """Check ``backward`` against central differences of ``forward`` in float64.

    ``forward(*inputs) -> (y, cache)``; ``backward(dy, cache) -> grad`` or a tuple
    of grads, one per entry of ``inputs`` (``None`` entries skipped). The scalar
    checked is ``sum(y * g)`` for a fixed random ``g``. Raises ``AssertionError``
    naming the input whose gradient disagrees.
    """
    rng = np.random.default_rng(seed)
    inputs = [None if a is None else np.ascontiguousarray(a, dtype=np.float64) for a in inputs]
    y, cache = forward(*inputs)
    g = rng.standard_normal(np.shape(y))
    grads = backward(g, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)

    def scalar():
        out, _ = forward(*inputs)
        return float(np.sum(out * g))

    for index, (a, analytic) in enumerate(zip(inputs, grads)):
        if a is None:
            continue
        numeric = numerical_grad(scalar, a, eps)
        err = max_rel_error(analytic, numeric)
        if not err <= rtol:
            raise AssertionError(f"gradient of input {index}: relative error {err:.3e} > {rtol:.1e}")
