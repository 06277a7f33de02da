"""The Numba implementation (``impl="numba"``): ``@njit`` kernels under thin wrappers.

Only ops whose kernel beats the NumPy path at the mnist_cnn shapes (batch 64)
are registered; see each module's docstring for what its kernels fuse. The
GEMMs are BLAS's, called single-threaded from inside the kernels
(:mod:`fastcnn.kernels._blas`), so BLAS never runs a thread pool of its own
beside Numba's. Left to NumPy on purpose: ``flatten`` (a reshape), ``tanh``
(NumPy's SIMD tanh wins) and ``global_avg_pool2d`` (not in the mnist_cnn
profile; no kernel written yet).

:func:`warmup` (exposed as ``fastcnn.warmup``) compiles or loads every kernel
up front; :mod:`fastcnn.parallel` sizes the Numba and BLAS thread pools.
"""

from fastcnn.kernels import _blas, activations, batchnorm, conv, conv_pool, dense, loss, optim, pooling
from fastcnn.kernels._warmup import warmup
from fastcnn.registry import register

__all__ = ["warmup"]

register("conv2d", "numba", conv.conv2d_forward, conv.conv2d_backward)
if _blas.AVAILABLE:
    register("conv2d_relu", "numba", conv.conv2d_relu_forward, conv.conv2d_relu_backward)
    register("dense", "numba", dense.dense_forward, dense.dense_backward)
    for _op in ("conv2d_maxpool2d", "conv2d_relu_maxpool2d"):
        register(_op, "numba", getattr(conv_pool, _op + "_forward"), getattr(conv_pool, _op + "_backward"))
register("max_pool2d", "numba", pooling.max_pool2d_forward, pooling.max_pool2d_backward)
register("avg_pool2d", "numba", pooling.avg_pool2d_forward, pooling.avg_pool2d_backward)
for _op in ("relu", "leaky_relu", "sigmoid", "softmax", "dropout"):
    register(_op, "numba", getattr(activations, _op + "_forward"), getattr(activations, _op + "_backward"))
register("softmax_cross_entropy", "numba", loss.softmax_cross_entropy)
register("batch_norm", "numba", batchnorm.batch_norm_forward, batchnorm.batch_norm_backward)
for _op in optim.__all__:  # optimizer updates: in place, no backward
    register(_op, "numba", getattr(optim, _op))
