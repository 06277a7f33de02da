"""Optimizers: SGD, Adam, AdamW and RMSprop, with gradient clipping and schedules.

An optimizer updates parameter arrays **in place** from ``(name, param, grad)``
triples with stable names (``"layers.0.weight"``). Its state is keyed by the
same names, so it can be saved beside the weights and restored exactly.

Each update is a registry op (``sgd_update``, ``adam_update``,
``rmsprop_update``: reference, NumPy and a fused one-pass Numba kernel),
resolved like every op: ``FASTCNN_IMPL`` if set, else the Numba kernel.
Arithmetic stays in the parameter's dtype: constants are cast, nothing
promotes float32.

Common arguments (Keras 3 names and semantics):

- ``learning_rate``: a positive float, a schedule from
  :mod:`fastcnn.optim.schedules`, or any callable ``step -> float`` (evaluated
  at the step count before each update, 0 first). ``lr=`` is the older
  spelling of the same argument. ``optimizer.learning_rate`` reads the current
  value and may be assigned a float (validated) when no schedule is in use.
- ``clipnorm``: rescale each gradient whose L2 norm exceeds it to that norm;
  ``global_clipnorm``: rescale all gradients together when their joint norm
  exceeds it; ``clipvalue``: clip every element to ``[-clipvalue, clipvalue]``.
  At most one of the three. Clipping happens before weight decay and the update.
"""

import math
import numbers

import numpy as np

from fastcnn import registry
from fastcnn.optim import schedules

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS", "get", "schedules"]


def _check_float(value, name, owner, *, low=0.0, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise TypeError(f"{owner}: `{name}` must be a finite float, received {value!r}")
    bad_low = value <= low if low_open else value < low
    if bad_low or (high is not None and value >= high):
        bound = f"({low}, " if low_open else f"[{low}, "
        bound += f"{high})" if high is not None else "inf)"
        raise ValueError(f"{owner}: `{name}` must be in {bound}, received {value!r}")
    return float(value)


def _check_clip(value, name, owner):
    if value is None:
        return None
    return _check_float(value, name, owner, low=0.0, low_open=True)


class Optimizer:
    """Base class: learning rate (or schedule), clipping, state, one registry op per update.

    Subclasses set ``update_op`` (a registry op name), list their state
    ``slots`` per parameter (:meth:`slots`) and pass their hyperparameters to
    the op (:meth:`_hyper`).
    """

    update_op = None
    default_learning_rate = 1e-3

    def __init__(self, learning_rate=None, *, lr=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        owner = type(self).__name__
        if learning_rate is not None and lr is not None:
            raise ValueError(f"{owner}: pass `learning_rate` or its older spelling `lr`, not both "
                             f"(received learning_rate={learning_rate!r}, lr={lr!r})")
        if learning_rate is None:
            learning_rate = self.default_learning_rate if lr is None else lr
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.clipnorm = _check_clip(clipnorm, "clipnorm", owner)
        self.clipvalue = _check_clip(clipvalue, "clipvalue", owner)
        self.global_clipnorm = _check_clip(global_clipnorm, "global_clipnorm", owner)
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                f"{owner}: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; received "
                f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}"
            )
        self.iterations = 0
        self.state = {}  # name -> dict of arrays

    # -- learning rate ------------------------------------------------------------------
    @property
    def learning_rate(self):
        """The learning rate the next update uses (a schedule is evaluated at ``iterations``)."""
        return self._rate_at(self.iterations)

    @learning_rate.setter
    def learning_rate(self, value):
        owner = type(self).__name__
        if callable(value):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            raise TypeError(
                f"{owner} was created with the schedule {self._learning_rate!r} as its learning rate, so the "
                f"learning rate cannot be set to {value!r}; create the optimizer with a float learning rate "
                f"(or assign another schedule)"
            )
        self._learning_rate = _check_float(value, "learning_rate", owner, low=0.0, low_open=True)

    #: The older spelling of :attr:`learning_rate`.
    lr = learning_rate

    @property
    def schedule(self):
        """The schedule or callable in use, or None for a constant learning rate."""
        return self._learning_rate if callable(self._learning_rate) else None

    def _rate_at(self, step):
        if not callable(self._learning_rate):
            return self._learning_rate
        value = self._learning_rate(step)
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{type(self).__name__}: the learning-rate schedule {self._learning_rate!r} returned {value!r} "
                f"at step {step}; it must return a finite float >= 0"
            )
        return float(value)

    # -- updates ------------------------------------------------------------------------
    def step(self, params_and_grads):
        """Apply one update. ``params_and_grads``: iterable of ``(name, param, grad)``."""
        items = list(params_and_grads)
        owner = type(self).__name__
        for name, p, g in items:
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(
                    f"{owner}: gradient for {name!r} has shape {g.shape} dtype {g.dtype}, "
                    f"expected shape {p.shape} dtype {p.dtype}"
                )
        lr = self._rate_at(self.iterations)
        self.iterations += 1
        fn = registry.get(self.update_op).forward
        global_scale = self._global_scale([g for _, _, g in items]) if self.global_clipnorm else 1.0
        clip = math.inf if self.clipvalue is None else self.clipvalue
        for name, p, g in items:
            scale = self._norm_scale(g) if self.clipnorm else global_scale
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = {slot: np.zeros_like(p) for slot in self.slots()}
            g = np.ascontiguousarray(g)
            # The kernels update a flat view; a strided parameter (never one of a model's) goes to NumPy.
            update = fn if p.flags.c_contiguous else registry.get(self.update_op, "numpy").forward
            self._apply(update, p, g, state, lr=lr, scale=scale, clip=clip)

    def _norm_scale(self, g):
        """``clipnorm / max(||g||, clipnorm)``: 1 unless the gradient's norm exceeds ``clipnorm``."""
        flat = g.reshape(-1)
        norm = math.sqrt(float(np.dot(flat, flat)))
        return self.clipnorm / max(norm, self.clipnorm)

    def _global_scale(self, grads):
        """``min(1, global_clipnorm / ||all gradients||)``; NaN when the norm is not finite (as Keras)."""
        total = math.fsum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads)
        norm = math.sqrt(total)
        if not math.isfinite(norm):
            return math.nan
        return self.global_clipnorm / max(norm, self.global_clipnorm)

    def slots(self):
        """Names of the state arrays kept per parameter (each shaped like the parameter)."""
        return ()

    def _apply(self, fn, p, g, state, **common):
        raise NotImplementedError

    # -- configuration and state --------------------------------------------------------
    def _config(self):
        """The hyperparameters besides the learning rate (subclasses extend)."""
        return {key: getattr(self, key) for key in ("clipnorm", "clipvalue", "global_clipnorm")
                if getattr(self, key) is not None}

    def get_config(self):
        """JSON-serializable constructor arguments; a schedule is stored as
        ``{"class": ..., "config": ...}`` (a plain callable cannot be: ``TypeError``)."""
        rate = self._learning_rate
        return {"learning_rate": schedules.serialize(rate) if callable(rate) else rate, **self._config()}

    @classmethod
    def from_config(cls, config):
        """Inverse of :meth:`get_config` (rebuilds a stored schedule)."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

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
        config = {"learning_rate": self._learning_rate, **self._config()}
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch semantics.

    ``g = grad + weight_decay * p`` (L2); with momentum ``buf = momentum * buf + g``
    and the step uses ``buf`` (or ``g + momentum * buf`` with ``nesterov=True``);
    ``p -= learning_rate * step``.
    """

    update_op = "sgd_update"
    default_learning_rate = 0.01

    def __init__(self, learning_rate=None, momentum=0.0, nesterov=False, weight_decay=0.0, *, lr=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, lr=lr, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm)
        self.momentum = _check_float(momentum, "momentum", "SGD", high=1.0)
        self.weight_decay = _check_float(weight_decay, "weight_decay", "SGD")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)

    def slots(self):
        return ("momentum",) if self.momentum else ()

    def _apply(self, fn, p, g, state, **common):
        fn(p, g, state.get("momentum"), momentum=self.momentum, nesterov=self.nesterov,
           weight_decay=self.weight_decay, **common)

    def _config(self):
        return {**super()._config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), PyTorch semantics.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``;
    ``weight_decay`` adds ``weight_decay * p`` to ``g`` (L2; for decoupled decay
    use :class:`AdamW`). ``amsgrad=True`` uses the running maximum of ``v``.
    """

    update_op = "adam_update"

    def __init__(self, learning_rate=None, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0,
                 amsgrad=False, *, lr=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, lr=lr, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm)
        owner = type(self).__name__
        self.beta_1 = _check_float(beta_1, "beta_1", owner, high=1.0)
        self.beta_2 = _check_float(beta_2, "beta_2", owner, high=1.0)
        self.epsilon = _check_float(epsilon, "epsilon", owner, low=0.0, low_open=True)
        self.weight_decay = _check_float(weight_decay, "weight_decay", owner)
        self.amsgrad = bool(amsgrad)

    def slots(self):
        return ("m", "v", "vmax") if self.amsgrad else ("m", "v")

    def _decay_arguments(self):
        return {"weight_decay": self.weight_decay}

    def _apply(self, fn, p, g, state, **common):
        fn(p, g, state["m"], state["v"], state.get("vmax"), beta_1=self.beta_1, beta_2=self.beta_2,
           epsilon=self.epsilon, step=self.iterations, **self._decay_arguments(), **common)

    def _config(self):
        config = {**super()._config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                  "epsilon": self.epsilon, "weight_decay": self.weight_decay}
        if self.amsgrad:
            config["amsgrad"] = True
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras 3 semantics.

    Before each update every parameter decays as ``p -= p * weight_decay * lr``
    (``lr`` the current learning rate), then the Adam step of :class:`Adam` runs
    on the (clipped) gradient, which carries no decay term.
    """

    def __init__(self, learning_rate=None, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, *, lr=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, weight_decay=weight_decay,
                         amsgrad=amsgrad, lr=lr, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm)

    def _decay_arguments(self):
        return {"decoupled_weight_decay": self.weight_decay}


class RMSprop(Optimizer):
    """RMSprop, Keras 3 semantics.

    ``v = rho v + (1 - rho) g^2``; ``increment = lr g / sqrt(v + epsilon)`` (with
    ``centered=True``, ``avg = rho avg + (1 - rho) g`` and ``sqrt(v - avg^2 + epsilon)``);
    with ``momentum > 0`` the step is ``mom = momentum * mom + increment``, else
    ``increment``. ``weight_decay`` is decoupled, as every Keras optimizer applies
    it: ``p -= p * weight_decay * lr`` before the update.
    """

    update_op = "rmsprop_update"

    def __init__(self, learning_rate=None, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=0.0,
                 *, lr=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, lr=lr, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm)
        self.rho = _check_float(rho, "rho", "RMSprop", high=1.0)
        self.momentum = _check_float(momentum, "momentum", "RMSprop", high=1.0)
        self.epsilon = _check_float(epsilon, "epsilon", "RMSprop", low=0.0, low_open=True)
        self.centered = bool(centered)
        self.weight_decay = _check_float(weight_decay, "weight_decay", "RMSprop")

    def slots(self):
        return ("velocity",) + (("momentum",) if self.momentum else ()) + (("average",) if self.centered else ())

    def _apply(self, fn, p, g, state, **common):
        fn(p, g, state["velocity"], state.get("momentum"), state.get("average"), rho=self.rho,
           epsilon=self.epsilon, momentum=self.momentum, decoupled_weight_decay=self.weight_decay, **common)

    def _config(self):
        return {**super()._config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered, "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier, **kwargs):
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``) or an instance
    (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {identifier!r}; expected one of {sorted(OPTIMIZERS)} or an Optimizer")
