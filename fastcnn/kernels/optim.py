"""Optimizer updates as one pass over each parameter (the ``numba`` entries of
``sgd_update``, ``adam_update`` and ``rmsprop_update``).

NumPy's Adam update is ten array operations with five temporaries: for
mnist_cnn's 1.2 M parameters that is ~5 ms a step of memory traffic. Each
kernel reads ``p``, ``g`` and the state once and writes ``p`` and the state
once, in parallel over disjoint chunks (see :func:`fastcnn.kernels._jit.twins`).
Gradient clipping rides along: ``clipnorm``/``global_clipnorm`` arrive as a
``scale`` on the gradient (computed by the caller, which needs the norm
first), ``clipvalue`` as a bound applied in the same pass. Float32 stays
float32: the wrappers cast every constant to the parameter dtype.

The signatures are the registry's (see :mod:`fastcnn.reference.optim`, the
formulas written out plainly).
"""

import numpy as np
from numba import prange

from fastcnn.kernels._jit import pick, twins

__all__ = ["sgd_update", "adam_update", "rmsprop_update"]


def _sgd(p, g, buf, lr, scale, clip, decay, momentum, has_momentum, nesterov):
    # p, buf: (size,) in/out; g: (size,). Scalars p.dtype; has_momentum, nesterov: bool.
    for i in prange(p.shape[0]):
        gi = g[i] * scale
        if gi > clip:
            gi = clip
        elif gi < -clip:
            gi = -clip
        gi = gi + decay * p[i]
        if has_momentum:
            b = momentum * buf[i] + gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


def _adam(p, g, m, v, vmax, b1, b2, c1, c2, lr_t, inv_sqrt_bc2, eps, scale, clip, decay, wd_lr, amsgrad):
    # p, m, v, vmax: (size,) in/out (vmax is v itself when amsgrad is False); g: (size,).
    # b1, b2: betas; c1, c2: 1 - betas; lr_t: lr / (1 - beta_1^t); inv_sqrt_bc2: 1 / sqrt(1 - beta_2^t);
    # decay: L2 coefficient added to the gradient; wd_lr: decoupled decay * lr. All p.dtype.
    for i in prange(p.shape[0]):
        gi = g[i] * scale
        if gi > clip:
            gi = clip
        elif gi < -clip:
            gi = -clip
        pi = p[i]
        pi = pi - pi * wd_lr
        gi = gi + decay * pi
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        if amsgrad:
            if vmax[i] > vi:
                vi = vmax[i]
            vmax[i] = vi
        p[i] = pi - lr_t * (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps))


def _rmsprop(p, g, v, mom, avg, lr, rho, c, eps, momentum, scale, clip, wd_lr, has_momentum, centered):
    # p, v: (size,) in/out; mom (has_momentum) and avg (centered): (size,) in/out, else any array
    # (unused); g: (size,). c: 1 - rho; wd_lr: decoupled decay * lr. All p.dtype.
    for i in prange(p.shape[0]):
        gi = g[i] * scale
        if gi > clip:
            gi = clip
        elif gi < -clip:
            gi = -clip
        pi = p[i]
        pi = pi - pi * wd_lr
        vi = rho * v[i] + c * (gi * gi)
        v[i] = vi
        if centered:
            ai = rho * avg[i] + c * gi
            avg[i] = ai
            denominator = vi - ai * ai + eps
        else:
            denominator = vi + eps
        increment = lr * gi / np.sqrt(denominator)
        if has_momentum:
            mi = momentum * mom[i] + increment
            mom[i] = mi
            increment = mi
        p[i] = pi - increment


_sgd_pair = twins(_sgd)
_adam_pair = twins(_adam)
_rmsprop_pair = twins(_rmsprop)


def _flat(*arrays):
    return tuple(a.reshape(-1) for a in arrays)


def sgd_update(p, g, buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0, scale=1.0, clip=np.inf):
    """One SGD step on C-contiguous ``p`` (and ``buf`` when ``momentum > 0``), in place."""
    t = p.dtype.type
    has_momentum = momentum > 0
    flat = _flat(p, g, buf if has_momentum else p)
    pick(_sgd_pair, p.size)(*flat, t(lr), t(scale), t(clip), t(weight_decay), t(momentum), has_momentum,
                            bool(nesterov))


def adam_update(p, g, m, v, vmax=None, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0,
                decoupled_weight_decay=0.0, scale=1.0, clip=np.inf):
    """One Adam step (step number ``step`` >= 1) on C-contiguous ``p``, ``m``, ``v`` (and ``vmax``
    for AMSGrad), in place."""
    t = p.dtype.type
    bc1 = 1.0 - beta_1 ** step
    bc2 = 1.0 - beta_2 ** step
    amsgrad = vmax is not None
    flat = _flat(p, g, m, v, vmax if amsgrad else v)
    pick(_adam_pair, p.size)(*flat, t(beta_1), t(beta_2), t(1.0 - beta_1), t(1.0 - beta_2), t(lr / bc1),
                             t(1.0 / np.sqrt(bc2)), t(epsilon), t(scale), t(clip), t(weight_decay),
                             t(decoupled_weight_decay * lr), amsgrad)


def rmsprop_update(p, g, v, mom=None, avg=None, *, lr, rho, epsilon, momentum=0.0, decoupled_weight_decay=0.0,
                   scale=1.0, clip=np.inf):
    """One RMSprop step (Keras semantics) on C-contiguous ``p``, ``v`` (and ``mom`` with
    momentum, ``avg`` when centered), in place."""
    t = p.dtype.type
    flat = _flat(p, g, v, p if mom is None else mom, p if avg is None else avg)
    pick(_rmsprop_pair, p.size)(*flat, t(lr), t(rho), t(1.0 - rho), t(epsilon), t(momentum), t(scale), t(clip),
                                t(decoupled_weight_decay * lr), mom is not None, avg is not None)
