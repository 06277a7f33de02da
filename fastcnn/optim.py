"""Optimizers: SGD (momentum, Nesterov, weight decay) and Adam (bias-corrected).

An optimizer updates parameter arrays **in place** from a mapping of stable names
(``"layers.0.weight"``) to ``(param, grad)``. Its state is keyed by the same names,
so it can be saved beside the weights and restored exactly. Arithmetic stays in
the parameter's dtype: constants are cast, nothing promotes float32. When the
run uses Numba (``FASTCNN_IMPL`` unset or ``numba``), Adam's update is one
fused kernel per parameter (:mod:`fastcnn.kernels.optim`), else NumPy.
"""

import numbers

import numpy as np

from fastcnn import registry

__all__ = ["Optimizer", "SGD", "Adam", "get"]


def _check_float(value, name, owner, *, low=0.0, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise TypeError(f"{owner}: `{name}` must be a finite float, received {value!r}")
    bad_low = value <= low if low_open else value < low
    if bad_low or (high is not None and value >= high):
        bound = f"({low}, " if low_open else f"[{low}, "
        bound += f"{high})" if high is not None else "inf)"
        raise ValueError(f"{owner}: `{name}` must be in {bound}, received {value!r}")
    return float(value)


class Optimizer:
    """Base class. Subclasses implement :meth:`_update` for one parameter."""

    def __init__(self, lr):
        self.lr = _check_float(lr, "lr", type(self).__name__, low=0.0, low_open=True)
        self.iterations = 0
        self.state = {}  # name -> dict of arrays

    def step(self, params_and_grads):
        """Apply one update. ``params_and_grads``: iterable of ``(name, param, grad)``."""
        self.iterations += 1
        for name, p, g in params_and_grads:
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(
                    f"{type(self).__name__}: gradient for {name!r} has shape {g.shape} dtype {g.dtype}, "
                    f"expected shape {p.shape} dtype {p.dtype}"
                )
            self._update(name, p, g, self.state.setdefault(name, {}))

    def _update(self, name, p, g, state):
        raise NotImplementedError

    def get_config(self):
        return {"lr": self.lr}

    def state_arrays(self):
        """Flat ``{"<param name>/<slot>": array}`` of the optimizer state, plus the step count."""
        arrays = {f"{name}/{slot}": a for name, slots in self.state.items() for slot, a in slots.items()}
        arrays["iterations"] = np.array(self.iterations, dtype=np.int64)
        return arrays

    def load_state_arrays(self, arrays):
        """Inverse of :meth:`state_arrays` (arrays are copied)."""
        self.state = {}
        self.iterations = int(arrays.get("iterations", 0))
        for key, a in arrays.items():
            if key == "iterations":
                continue
            name, slot = key.rsplit("/", 1)
            self.state.setdefault(name, {})[slot] = np.array(a, copy=True)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch semantics.

    ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + g`` and
    the step uses ``buf`` (or ``g + momentum * buf`` with ``nesterov=True``);
    ``p -= lr * step``.
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = _check_float(momentum, "momentum", "SGD", high=1.0)
        self.weight_decay = _check_float(weight_decay, "weight_decay", "SGD")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, state):
        t = p.dtype.type
        if self.weight_decay:
            g = g + t(self.weight_decay) * p
        if self.momentum:
            buf = state.get("momentum")
            if buf is None:
                buf = state["momentum"] = g.copy()
            else:
                buf *= t(self.momentum)
                buf += g
            g = g + t(self.momentum) * buf if self.nesterov else buf
        p -= t(self.lr) * g

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), PyTorch semantics.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``;
    ``weight_decay`` adds ``weight_decay * p`` to ``g`` (L2, not AdamW).
    """

    def __init__(self, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
        super().__init__(lr)
        self.beta_1 = _check_float(beta_1, "beta_1", "Adam", high=1.0)
        self.beta_2 = _check_float(beta_2, "beta_2", "Adam", high=1.0)
        self.epsilon = _check_float(epsilon, "epsilon", "Adam", low=0.0, low_open=True)
        self.weight_decay = _check_float(weight_decay, "weight_decay", "Adam")

    def _update(self, name, p, g, state):
        t = p.dtype.type
        if "m" not in state:
            state["m"] = np.zeros_like(p)
            state["v"] = np.zeros_like(p)
        m, v = state["m"], state["v"]
        step = self.iterations
        kernel = _adam_kernel()
        if kernel is not None and all(a.flags.c_contiguous for a in (p, g, m, v)):
            kernel(p, g, m, v, beta_1=self.beta_1, beta_2=self.beta_2, lr=self.lr,
                   bias_correction_1=1.0 - self.beta_1 ** step, bias_correction_2=1.0 - self.beta_2 ** step,
                   epsilon=self.epsilon, weight_decay=self.weight_decay)
            return
        if self.weight_decay:
            g = g + t(self.weight_decay) * p
        m *= t(self.beta_1)
        m += t(1.0 - self.beta_1) * g
        v *= t(self.beta_2)
        v += t(1.0 - self.beta_2) * (g * g)
        bc1 = 1.0 - self.beta_1 ** step
        bc2 = 1.0 - self.beta_2 ** step
        denom = np.sqrt(v)
        denom /= t(np.sqrt(bc2))
        denom += t(self.epsilon)
        p -= t(self.lr / bc1) * (m / denom)

    def get_config(self):
        return {"lr": self.lr, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay}


def _adam_kernel():
    """The Numba Adam update (:mod:`fastcnn.kernels.optim`) when the run uses Numba, else None."""
    if registry.default_impl() != "numba":
        return None
    try:
        from fastcnn.kernels.optim import adam_update
    except ImportError:  # numba missing
        return None
    return adam_update


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get(identifier, **kwargs):
    """An optimizer from a name (``"sgd"``, ``"adam"``) or an instance (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {identifier!r}; expected one of {sorted(OPTIMIZERS)} or an Optimizer")
