"""Optimizer updates with NumPy array operations, in place and with few temporaries.

Same signatures and formulas as :mod:`fastcnn.reference.optim`; the work is
arranged so each step allocates at most a couple of parameter-sized arrays.
"""

import math

import numpy as np

__all__ = ["sgd_update", "adam_update", "rmsprop_update"]


def _prepared(g, scale, clip):
    """The clipped gradient: ``g`` itself when nothing changes it, else a new array."""
    t = g.dtype.type
    if scale != 1.0:
        g = g * t(scale)
    if clip != math.inf:
        g = np.clip(g, t(-clip), t(clip))
    return g


def _decay(p, decoupled_weight_decay, lr):
    if decoupled_weight_decay:
        p -= p * p.dtype.type(decoupled_weight_decay * lr)


def sgd_update(p, g, buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0, scale=1.0, clip=math.inf):
    t = p.dtype.type
    g = _prepared(g, scale, clip)
    if weight_decay:
        g = g + t(weight_decay) * p
    if momentum > 0:
        buf *= t(momentum)
        buf += g
        g = g + t(momentum) * buf if nesterov else buf
    p -= t(lr) * g


def adam_update(p, g, m, v, vmax=None, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0,
                decoupled_weight_decay=0.0, scale=1.0, clip=math.inf):
    t = p.dtype.type
    _decay(p, decoupled_weight_decay, lr)
    g = _prepared(g, scale, clip)
    if weight_decay:
        g = g + t(weight_decay) * p
    m *= t(beta_1)
    m += t(1.0 - beta_1) * g
    v *= t(beta_2)
    v += t(1.0 - beta_2) * (g * g)
    second = v
    if vmax is not None:
        np.maximum(vmax, v, out=vmax)
        second = vmax
    denom = np.sqrt(second)
    denom *= t(1.0 / math.sqrt(1.0 - beta_2 ** step))
    denom += t(epsilon)
    p -= t(lr / (1.0 - beta_1 ** step)) * (m / denom)


def rmsprop_update(p, g, v, mom=None, avg=None, *, lr, rho, epsilon, momentum=0.0, decoupled_weight_decay=0.0,
                   scale=1.0, clip=math.inf):
    t = p.dtype.type
    _decay(p, decoupled_weight_decay, lr)
    g = _prepared(g, scale, clip)
    v *= t(rho)
    v += t(1.0 - rho) * (g * g)
    if avg is not None:
        avg *= t(rho)
        avg += t(1.0 - rho) * g
        denom = v - avg * avg
    else:
        denom = v.copy()
    denom += t(epsilon)
    np.sqrt(denom, out=denom)
    increment = t(lr) * g
    increment /= denom
    if mom is not None:
        mom *= t(momentum)
        mom += increment
        increment = mom
    p -= increment
