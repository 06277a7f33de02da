"""Weight initializers. Each draws in float64 from a numpy Generator, then casts,
so a float32 and a float64 model built from the same seed hold the same values
up to rounding."""

import numpy as np

__all__ = ["INITIALIZERS", "initialize"]


def _fans(shape):
    """(fan_in, fan_out) of a dense (IN, OUT) or HWIO conv (KH, KW, C, F) weight."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(rng, shape):
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(rng, shape):
    fan_in, fan_out = _fans(shape)
    return rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))


def he_uniform(rng, shape):
    limit = np.sqrt(6.0 / _fans(shape)[0])
    return rng.uniform(-limit, limit, size=shape)


def he_normal(rng, shape):
    return rng.standard_normal(shape) * np.sqrt(2.0 / _fans(shape)[0])


def zeros(rng, shape):
    return np.zeros(shape, dtype=np.float64)


INITIALIZERS = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_uniform, he_normal, zeros)}


def initialize(name, rng, shape, dtype):
    """Draw a ``shape`` array from initializer ``name`` and cast it to ``dtype``."""
    return np.ascontiguousarray(INITIALIZERS[name](rng, shape), dtype=dtype)


def check_initializer(name, owner):
    if name not in INITIALIZERS:
        raise ValueError(f"{owner}: unknown initializer {name!r}; expected one of {sorted(INITIALIZERS)}")
    return name
