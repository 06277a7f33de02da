"""Reference optimizer updates: each formula written out as the papers and Keras state it.

Every function updates ``p`` and its state arrays **in place** from the
gradient ``g`` and has the signature the registry's ``*_update`` ops share:
``<name>_update(p, g, *state, *, lr, <hyperparameters>, scale=1.0, clip=inf)``.
``scale`` multiplies the gradient first (``clipnorm`` and ``global_clipnorm``
arrive as this factor, computed by :class:`fastcnn.optim.Optimizer`), then
``clip`` bounds each element to ``[-clip, clip]`` (``clipvalue``).
Arithmetic stays in ``p.dtype``: every constant is cast.

Nothing here imports the code it judges (``fastcnn.ops``, ``fastcnn.kernels``).
"""

import numpy as np

__all__ = ["sgd_update", "adam_update", "rmsprop_update"]


def _clipped(g, scale, clip):
    t = g.dtype.type
    return np.clip(g * t(scale), t(-clip), t(clip))


def sgd_update(p, g, buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0, scale=1.0, clip=np.inf):
    """SGD, PyTorch semantics: ``g += weight_decay * p``; ``buf = momentum * buf + g``;
    ``p -= lr * (g + momentum * buf if nesterov else buf)`` (``p -= lr * g`` without momentum).

    Shape: p, g, buf: any, all the same (``buf`` unused and may be None without momentum).
    """
    t = p.dtype.type
    g = _clipped(g, scale, clip) + t(weight_decay) * p
    if momentum > 0:
        buf[...] = t(momentum) * buf + g
        g = g + t(momentum) * buf if nesterov else buf
    p[...] = p - t(lr) * g


def adam_update(p, g, m, v, vmax=None, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0,
                decoupled_weight_decay=0.0, scale=1.0, clip=np.inf):
    """Adam at step ``step`` (1 for the first update), with bias correction.

    Decoupled decay first, as Keras's optimizers apply ``weight_decay``
    (``p -= p * decoupled_weight_decay * lr``, AdamW); then the gradient, with
    the L2 term ``weight_decay * p`` added (PyTorch's Adam); then
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, with AMSGrad
    (``vmax`` given) ``vmax = max(vmax, v)`` replacing ``v`` below, and
    ``p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``.
    """
    t = p.dtype.type
    p[...] = p - p * t(decoupled_weight_decay * lr)
    g = _clipped(g, scale, clip) + t(weight_decay) * p
    m[...] = t(beta_1) * m + t(1.0 - beta_1) * g
    v[...] = t(beta_2) * v + t(1.0 - beta_2) * (g * g)
    second = v
    if vmax is not None:
        vmax[...] = np.maximum(vmax, v)
        second = vmax
    m_hat_scale = t(lr / (1.0 - beta_1 ** step))
    v_hat_root = np.sqrt(second) * t(1.0 / np.sqrt(1.0 - beta_2 ** step))
    p[...] = p - m_hat_scale * (m / (v_hat_root + t(epsilon)))


def rmsprop_update(p, g, v, mom=None, avg=None, *, lr, rho, epsilon, momentum=0.0, decoupled_weight_decay=0.0,
                   scale=1.0, clip=np.inf):
    """RMSprop, Keras semantics (epsilon inside the square root).

    ``p -= p * decoupled_weight_decay * lr``; ``v = rho v + (1 - rho) g^2``;
    centered (``avg`` given): ``avg = rho avg + (1 - rho) g`` and the
    denominator is ``sqrt(v - avg^2 + eps)``, else ``sqrt(v + eps)``;
    ``increment = lr g / denominator``; with momentum (``mom`` given)
    ``mom = momentum * mom + increment`` is the step, else ``increment``.
    """
    t = p.dtype.type
    p[...] = p - p * t(decoupled_weight_decay * lr)
    g = _clipped(g, scale, clip)
    v[...] = t(rho) * v + t(1.0 - rho) * (g * g)
    if avg is not None:
        avg[...] = t(rho) * avg + t(1.0 - rho) * g
        denominator = v - avg * avg + t(epsilon)
    else:
        denominator = v + t(epsilon)
    increment = t(lr) * g / np.sqrt(denominator)
    if mom is not None:
        mom[...] = t(momentum) * mom + increment
        increment = mom
    p[...] = p - increment
