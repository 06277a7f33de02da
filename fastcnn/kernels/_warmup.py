"""Compile every kernel ahead of the first training step.

Kernels are ``cache=True``: the first process compiles them (seconds) and
writes the machine code next to the sources (or under ``NUMBA_CACHE_DIR``);
later processes load it (milliseconds). :func:`warmup` calls every public
wrapper on tiny arrays, so whichever of the two applies happens here rather than
inside the first step. The convolution and dense variants come from the
registry (every registered variant, where its predicate holds). Signatures match the ones training uses: C-contiguous
writable arrays, ``int8`` max-pool argmax, ``intp`` labels.
"""

import numpy as np

from fastcnn import registry
from fastcnn.kernels import (_shifted, activations, augment, batchnorm, conv_pool, loss, merge, microkernel, optim,
                             pooling)
from fastcnn.kernels._jit import PARALLEL_MIN_SIZE

__all__ = ["warmup"]


def _run_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 5, 3)).astype(dtype)  # (N, H, W, C)
    w = rng.standard_normal((3, 3, 3, 2)).astype(dtype)  # (KH, KW, C, F)
    b = np.zeros(2, dtype=dtype)  # (F,)
    geometry = dict(stride=(1, 1), padding=((1, 1), (1, 1)))
    x16 = rng.standard_normal((2, 5, 5, _shifted.MIN_CHANNELS)).astype(dtype)  # row-major im2col blocks
    w16 = rng.standard_normal((3, 3, _shifted.MIN_CHANNELS, 2)).astype(dtype)
    x1 = np.ascontiguousarray(x[..., :1])  # one channel: transposed im2col blocks
    w1 = np.ascontiguousarray(w[:, :, :1])
    # Every variant of every convolution op (from the registry), where its predicate holds.
    for op in registry.ops():
        if not op.startswith("conv2d"):
            continue
        extra = dict(pool_size=(2, 2)) if op.endswith("maxpool2d") else {}
        for xi, wi in ((x, w), (x1, w1), (x16, w16)):
            for name in registry.applicable(op, (xi, wi, b), dict(geometry, **extra), registry.variants(op)):
                entry = registry.get(op, name)
                y, cache = entry.forward(xi, wi, b, **geometry, **extra)
                entry.backward(np.ones_like(y), cache)
                if extra and xi is x1:  # a first layer's weight gradient alone (fastcnn.kernels._planar)
                    conv_pool.planar_backward(np.ones_like(y), cache)
                entry.forward(xi, wi, None, **geometry, **extra, need_cache=False)
    # numba:microkernel needs 16 or 32 filters: every tile shape, timed by the planner under measure.
    x6, w32 = rng.standard_normal((2, 3, 6, 3)).astype(dtype), rng.standard_normal((3, 3, 3, 32)).astype(dtype)
    for tile in microkernel.TILES:
        microkernel.direct_conv(x6, w32, None, (1, 1), ((1, 1), (1, 1)), True, tile)
    for shape in ((2, 3, 2), (2, 600, 300)):  # run whole, and split over the threads
        xd = rng.standard_normal(shape[:2]).astype(dtype)  # (N, IN)
        wd = rng.standard_normal(shape[1:]).astype(dtype)  # (IN, F)
        for name in registry.variants("dense"):
            y, cache = registry.get("dense", name).forward(xd, wd, np.zeros(shape[2], dtype))
            registry.get("dense", name).backward(np.ones_like(y), cache)

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
        merge.add_forward(a, a)
        y, cache = merge.add_relu_forward(a, a, a)  # a sum, then the fused last pair
        merge.add_relu_backward(np.ones_like(y), cache)
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
    augment.warmup(dtype)


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
