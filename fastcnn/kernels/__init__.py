"""The Numba implementation (``impl="numba"``): ``@njit`` kernels under thin wrappers.

Only ops whose kernel beats the NumPy path at the mnist_cnn shapes (batch 64)
are registered; see each module's docstring for what its kernels fuse. The
GEMMs are BLAS's, called single-threaded from inside the kernels
(:mod:`fastcnn.kernels._blas`), so BLAS never runs a thread pool of its own
beside Numba's. Left to NumPy on purpose: ``flatten`` (a reshape), ``tanh``
(NumPy's SIMD tanh wins) and ``global_avg_pool2d`` (not in the mnist_cnn
profile; no kernel written yet).

Where an op has several ways to run, each is a named variant with a predicate
(:mod:`fastcnn.registry`), and the op's ``"numba"`` entry is the planner's
choice among them (:mod:`fastcnn.planner`); the heuristic rules registered here
are the planner's reproducible fallback.

:func:`warmup` (exposed as ``fastcnn.warmup``) compiles or loads every kernel
up front; :mod:`fastcnn.parallel` sizes the Numba and BLAS thread pools.
"""

from fastcnn import planner
from fastcnn.kernels import (_blas, activations, augment, batchnorm, conv, conv_im2col, conv_pool, dense, loss, merge,
                             microkernel, optim, pooling, winograd, winograd4)
from fastcnn.kernels._warmup import warmup
from fastcnn.registry import register

__all__ = ["warmup"]

CONV_OPS = ("conv2d", "conv2d_relu")
CONV_POOL_OPS = ("conv2d_maxpool2d", "conv2d_relu_maxpool2d")

if _blas.AVAILABLE:
    register("conv2d", "numba:im2col", conv.conv2d_forward, conv.conv2d_backward)
    register("conv2d_relu", "numba:im2col", conv.conv2d_relu_forward, conv.conv2d_relu_backward)
    for (_op, _name), _forward in conv_pool.VARIANTS.items():
        _predicate = None if _name == "numba:im2col" else conv_pool.stride_one
        register(_op, _name, _forward, getattr(conv_pool, _op + "_backward"), applies=_predicate)
    for _op, (_forward, _backward) in winograd.VARIANTS.items():
        register(_op, "numba:winograd", _forward, _backward, applies=winograd.applies)
    for _op, (_forward, _backward) in winograd4.VARIANTS.items():
        # Planned for inference only: each op is within the float32 tolerance, but in a
        # training step of resnet_mini its larger rounding, carried back through the
        # BatchNormalization layers, left the stem's weight gradient 1.3e-3 away (rel.)
        # from float64 (F(2x2, 3x3): within 1e-4). A layer may still ask for it by name.
        register(_op, "numba:winograd4", _forward, _backward, applies=winograd4.applies, plan_training=False)
    for _op, (_forward, _backward) in microkernel.VARIANTS.items():
        register(_op, "numba:microkernel", _forward, _backward, applies=microkernel.applies)
    for _name, (_forward, _backward) in dense.VARIANTS.items():
        register("dense", _name, _forward, _backward)
    for _op in CONV_OPS:
        planner.HEURISTICS[_op] = lambda geometry: "numba:im2col"
    for _op in CONV_POOL_OPS:
        planner.HEURISTICS[_op] = conv_pool.heuristic
    planner.HEURISTICS["dense"] = dense.heuristic
else:  # pragma: no cover - NumPy without a BLAS we can bind: one im2col matrix, NumPy's GEMMs
    register("conv2d", "numba:im2col", conv_im2col.conv2d_forward, conv_im2col.conv2d_backward)
register("max_pool2d", "numba", pooling.max_pool2d_forward, pooling.max_pool2d_backward)
register("avg_pool2d", "numba", pooling.avg_pool2d_forward, pooling.avg_pool2d_backward)
for _op in ("relu", "leaky_relu", "sigmoid", "softmax", "dropout"):
    register(_op, "numba", getattr(activations, _op + "_forward"), getattr(activations, _op + "_backward"))
for _op in ("add", "add_relu"):
    register(_op, "numba", getattr(merge, _op + "_forward"), getattr(merge, _op + "_backward"))
register("softmax_cross_entropy", "numba", loss.softmax_cross_entropy)
register("batch_norm", "numba", batchnorm.batch_norm_forward, batchnorm.batch_norm_backward)
for _op in optim.__all__:  # optimizer updates: in place, no backward
    register(_op, "numba", getattr(optim, _op))
for _op in ("flip2d", "translate2d", "crop2d", "rotate2d"):  # zero_pad2d: NumPy's slice copy
    register(_op, "numba", getattr(augment, _op + "_forward"), getattr(augment, _op + "_backward"))
