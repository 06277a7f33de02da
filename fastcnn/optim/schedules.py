"""Learning-rate schedules: ``step -> learning rate``, Keras 3 formulas and names.

An optimizer given a schedule as its ``learning_rate`` evaluates it once per
update at the optimizer's step count **before** the update (0 for the first
update), as Keras does. Schedules are plain Python floats in and out and
serialize to JSON (:meth:`LearningRateSchedule.get_config`,
:func:`serialize` / :func:`deserialize`), so a saved model resumes on the
same curve: the step is the optimizer's ``iterations``, saved with it.

Any callable ``step -> float`` is accepted wherever a learning rate is, but
only the schedules registered in :data:`SCHEDULES` can be saved (a
:class:`LearningRateSchedule` subclass of your own is saved once added there,
``SCHEDULES["MySchedule"] = MySchedule``: loading never imports a class by name).
"""

import math
import numbers

__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay", "SCHEDULES",
           "serialize", "deserialize"]


def _number(value, name, owner, *, positive=False, integral=False):
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        what = "an int" if integral else "a finite float"
        raise TypeError(f"{owner}: `{name}` must be {what}, received {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: `{name}` must be {bound}, received {value!r}")
    return int(value) if integral else float(value)


class LearningRateSchedule:
    """Base class: subclasses implement ``__call__(step) -> float`` and ``get_config()``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase=True``
    the exponent is ``floor(step / decay_steps)`` (a step function)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = _number(decay_steps, "decay_steps", owner, positive=True)
        self.decay_rate = _number(decay_rate, "decay_rate", owner)
        self.staircase = bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary.

    ``boundaries`` must increase strictly; ``len(values) == len(boundaries) + 1``.
    """

    def __init__(self, boundaries, values):
        owner = "PiecewiseConstantDecay"
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"{owner}: `values` must have one more entry than `boundaries`; received "
                f"{len(boundaries)} boundaries and {len(values)} values"
            )
        self.boundaries = [_number(b, "boundaries", owner) for b in boundaries]
        self.values = [_number(v, "values", owner) for v in values]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{owner}: `boundaries` must increase strictly, received {boundaries}")

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


class CosineDecay(LearningRateSchedule):
    """Cosine decay (SGDR, Loshchilov & Hutter) with an optional linear warmup.

    Without warmup (``warmup_target=None``): with ``s = min(step, decay_steps)``,
    ``lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)``.
    With ``warmup_target``: for ``step < warmup_steps`` the rate rises linearly
    from ``initial_learning_rate`` to ``warmup_target``; then it decays from
    ``warmup_target`` as above over ``step - warmup_steps``.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = _number(decay_steps, "decay_steps", owner, positive=True)
        self.alpha = _number(alpha, "alpha", owner)
        self.warmup_target = None if warmup_target is None else _number(warmup_target, "warmup_target", owner)
        self.warmup_steps = _number(warmup_steps, "warmup_steps", owner)

    def _decay(self, step, decay_from):
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step / self.decay_steps)))
        return decay_from * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            fraction = step / self.warmup_steps
            return (self.warmup_target - self.initial_learning_rate) * fraction + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


#: Schedules a saved model may name (the allow-list :func:`deserialize` uses).
SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    """``{"class": name, "config": {...}}`` for a schedule in :data:`SCHEDULES`.

    Raises
    ------
    TypeError
        For any other callable: it cannot be rebuilt from a file.
    """
    name = type(schedule).__name__
    if SCHEDULES.get(name) is not type(schedule):
        raise TypeError(
            f"the learning rate is {schedule!r}, which cannot be saved: only the schedules in "
            f"fastcnn.optim.schedules ({', '.join(sorted(SCHEDULES))}) and float learning rates "
            f"are stored in model files. Use one of those, or save the weights before switching"
        )
    return {"class": name, "config": schedule.get_config()}


def deserialize(spec):
    """The schedule :func:`serialize` described; ``ValueError`` for anything else."""
    if not isinstance(spec, dict) or set(spec) != {"class", "config"} or not isinstance(spec["config"], dict):
        raise ValueError(f"a schedule is described as {{'class': ..., 'config': {{...}}}}, received {spec!r}")
    cls = SCHEDULES.get(spec["class"])
    if cls is None:
        raise ValueError(f"unknown schedule {spec['class']!r}; expected one of {sorted(SCHEDULES)}")
    return cls.from_config(spec["config"])
