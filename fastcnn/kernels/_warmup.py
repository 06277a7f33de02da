"""Compile every kernel ahead of the first training step.

Kernels are ``cache=True``: the first process compiles them (seconds) and
writes the machine code next to the sources (or under ``NUMBA_CACHE_DIR``);
later processes load it (milliseconds). :func:`warmup` calls every public
wrapper on tiny arrays, so whichever of the two applies happens here rather than
inside the first step. Signatures match the ones training uses: C-contiguous
writable arrays, ``int8`` max-pool argmax, ``intp`` labels.
"""

import numpy as np

from fastcnn.kernels import _shifted, activations, batchnorm, conv, conv_pool, dense, loss, optim, pooling
from fastcnn.kernels._jit import PARALLEL_MIN_SIZE

__all__ = ["warmup"]


def _run_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 5, 3)).astype(dtype)  # (N, H, W, C)
    w = rng.standard_normal((3, 3, 3, 2)).astype(dtype)  # (KH, KW, C, F)
    b = np.zeros(2, dtype=dtype)  # (F,)
    geometry = dict(stride=(1, 1), padding=((1, 1), (1, 1)))
    for forward, backward in ((conv.conv2d_forward, conv.conv2d_backward),
                              (conv.conv2d_relu_forward, conv.conv2d_relu_backward)):
        y, cache = forward(x, w, b, **geometry)
        backward(np.ones_like(y), cache)
        forward(x, w, None, **geometry, need_cache=False)

    x16 = rng.standard_normal((2, 5, 5, _shifted.MIN_CHANNELS)).astype(dtype)  # the shifted-GEMM forward
    w16 = rng.standard_normal((3, 3, _shifted.MIN_CHANNELS, 2)).astype(dtype)
    for w_ in (w, w[:, :, :1], w16):  # row-major and transposed im2col blocks, shifted GEMMs
        for forward, backward in ((conv_pool.conv2d_maxpool2d_forward, conv_pool.conv2d_maxpool2d_backward),
                                  (conv_pool.conv2d_relu_maxpool2d_forward,
                                   conv_pool.conv2d_relu_maxpool2d_backward)):
            xi = x16 if w_ is w16 else np.ascontiguousarray(x[..., :w_.shape[2]])
            y, cache = forward(xi, np.ascontiguousarray(w_), b, **geometry, pool_size=(2, 2))
            backward(np.ones_like(y), cache)
            forward(xi, np.ascontiguousarray(w_), None, **geometry, pool_size=(2, 2), need_cache=False)
    for shape in ((2, 3, 2), (2, 600, 300)):  # run whole, and split over the threads
        xd = rng.standard_normal(shape[:2]).astype(dtype)  # (N, IN)
        y, cache = dense.dense_forward(xd, rng.standard_normal(shape[1:]).astype(dtype), np.zeros(shape[2], dtype))
        dense.dense_backward(np.ones_like(y), cache)

    pool = dict(pool_size=(2, 2), stride=(2, 2), padding=((0, 1), (0, 1)))
    for forward, backward in (
        (pooling.max_pool2d_forward, pooling.max_pool2d_backward),
        (pooling.avg_pool2d_forward, pooling.avg_pool2d_backward),
    ):
        y, cache = forward(x, **pool)
        backward(np.ones_like(y), cache)

    # Element-wise kernels come in a serial and a parallel twin: run both.
    for shape in ((2, 3), (PARALLEL_MIN_SIZE,)):
        a = rng.standard_normal(shape).astype(dtype)
        for name in ("relu", "sigmoid"):
            y, cache = getattr(activations, name + "_forward")(a)
            getattr(activations, name + "_backward")(np.ones_like(y), cache)
        y, cache = activations.leaky_relu_forward(a, alpha=0.1)
        activations.leaky_relu_backward(np.ones_like(y), cache)
        y, cache = activations.dropout_forward(a, rate=0.5, rng=rng)
        activations.dropout_backward(np.ones_like(y), cache)
        optim.adam_update(a.copy(), a, np.zeros_like(a), np.zeros_like(a), lr=1e-3, beta_1=0.9, beta_2=0.999,
                          epsilon=1e-7, step=1)
        optim.sgd_update(a.copy(), a, np.zeros_like(a), lr=1e-3, momentum=0.9)
        optim.rmsprop_update(a.copy(), a, np.zeros_like(a), lr=1e-3, rho=0.9, epsilon=1e-7)

    gamma = np.ones(3, dtype=dtype)  # (C,)
    for stats in ((), (np.zeros(3, dtype=dtype), np.ones(3, dtype=dtype))):  # training, inference
        y, cache = batchnorm.batch_norm_forward(x, gamma, gamma, *stats, epsilon=1e-3)
        batchnorm.batch_norm_backward(np.ones_like(y), cache)

    logits = rng.standard_normal((4, 3)).astype(dtype)  # (N, K)
    y, cache = activations.softmax_forward(logits)
    activations.softmax_backward(np.ones_like(y), cache)
    loss.softmax_cross_entropy(logits, np.array([0, 1, 2, 0]))


def warmup(dtypes=(np.float32,)):
    """Compile (or load from the on-disk cache) every Numba kernel for each of ``dtypes``.

    Parameters
    ----------
    dtypes : iterable of dtype-likes
        Each must be ``float32`` or ``float64``; pass ``(np.float32, np.float64)``
        to prepare both.

    Raises
    ------
    ValueError
        A dtype other than float32/float64.
    """
    dtypes = [np.dtype(d) for d in dtypes]
    for dtype in dtypes:
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"warmup: dtypes must be float32 or float64, received {dtype}")
    for dtype in dtypes:
        _run_dtype(dtype)
