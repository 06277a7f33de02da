"""Every registered implementation of every hot op, on the shapes of the three presets.

One pytest-benchmark group per (op, direction, shape), one row per
implementation the registry holds, numba variants included where their
predicates hold (``numba`` itself is the planner's choice among them), so a
newly registered variant is timed here without editing this file. The
convolution rows count the direct convolution's FLOPs whatever the variant:
their "% of matmul peak" is an effective rate, above 100% possible for Winograd.
The reference runs only where one call is
estimated to take under ``REFERENCE_BUDGET_S`` seconds; elsewhere its row is
skipped with the estimate as the reason, ``extra_info["reference"]`` says so,
and the ground truth is the float64 NumPy path instead.

What is timed is checked: the output of the last timed call must agree with
the float64 truth on the same (float32-representable) values within
``fastcnn.testing.RTOL[float32]``.
"""

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from fastcnn import registry
from fastcnn.geometry import output_hw, resolve_padding
from fastcnn.testing import assert_close, max_rel_error

from benchmarks._common import BATCH, IMPL_ORDER, REFERENCE_BUDGET_S, float32_exact, run_info, shape_text

DTYPE = np.float32


@dataclass(frozen=True)
class OpCase:
    """One (op, direction, shape) group."""

    op: str
    direction: str  # "forward", "backward", or "fused" (softmax_cross_entropy)
    where: str  # the preset layer(s) this shape comes from
    shape: str  # human-readable geometry
    make: Callable  # rng -> (float64 positional args, keyword args)
    gflop: float  # per call, in 1e9 floating-point operations
    reference_seconds: float  # estimated duration of one reference call
    gemm_like: bool = False

    @property
    def group(self):
        return f"{self.op} {self.direction}, {self.where}: {self.shape}"

    @property
    def id(self):
        return f"{self.op}-{self.direction}-{self.where.split()[0]}.{self.where.split()[-1]}"

    @property
    def reference_runs(self):
        return self.reference_seconds <= REFERENCE_BUDGET_S


# Seconds per Python-level iteration of the reference loops, measured once at
# batch 64 float32 on a 2-core EPYC: only used to decide what is worth running.
REF_SECONDS = {
    ("conv2d", "forward"): 5.6e-6, ("conv2d", "backward"): 8.8e-6,  # per (n, i, j, f)
    ("max_pool2d", "forward"): 3.8e-6, ("max_pool2d", "backward"): 5.8e-6,  # per (n, i, j, c)
    ("avg_pool2d", "forward"): 7.9e-6, ("avg_pool2d", "backward"): 2.7e-6,
    ("relu", "forward"): 0.42e-6, ("relu", "backward"): 0.53e-6,  # per element
    ("dense", "forward"): 2e-6, ("dense", "backward"): 4e-6,  # per (n, out), plus per-input below
    ("softmax_cross_entropy", "fused"): 15e-6,  # per row
}

# (where, (H, W, C), F, kernel, padding, bias) of every conv in the presets.
CONVS = [
    ("tutorial_cnn conv", (28, 28, 1), 8, 3, "valid", False),
    ("mnist_cnn conv1", (28, 28, 1), 32, 3, "valid", True),
    ("mnist_cnn conv2", (26, 26, 32), 64, 3, "valid", True),
    ("vgg_mini conv1", (28, 28, 1), 32, 3, "same", True),
    ("vgg_mini conv2", (28, 28, 32), 32, 3, "same", True),
    ("vgg_mini conv3", (14, 14, 32), 64, 3, "same", True),
    ("vgg_mini conv4", (14, 14, 64), 64, 3, "same", True),
]
# (where, (H, W, C)) of every 2x2 pool; avg_pool2d is timed on the same shapes.
POOLS = [
    ("tutorial_cnn pool", (26, 26, 8)),
    ("mnist_cnn pool", (24, 24, 64)),
    ("vgg_mini pool1", (28, 28, 32)),
    ("vgg_mini pool2", (14, 14, 64)),
]
DENSES = [
    ("tutorial_cnn dense", 1352, 10),
    ("mnist_cnn dense1", 9216, 128),
    ("mnist_cnn dense2", 128, 10),
    ("vgg_mini dense1", 3136, 256),
    ("vgg_mini dense2", 256, 10),
]
RELUS = [
    ("mnist_cnn relu1", (26, 26, 32)),
    ("mnist_cnn relu2", (24, 24, 64)),
    ("vgg_mini relu2", (28, 28, 32)),
    ("vgg_mini relu4", (14, 14, 64)),
]
CLASSES = 10


def conv_cases(N):
    for where, (H, W, C), F, k, padding, bias in CONVS:
        pads = resolve_padding(padding, (H, W), (k, k), (1, 1))
        OH, OW = output_hw((H, W), (k, k), (1, 1), pads)

        def make(rng, H=H, W=W, C=C, F=F, k=k, pads=pads, bias=bias):
            x = float32_exact(rng, (N, H, W, C))
            w = float32_exact(rng, (k, k, C, F), scale=(k * k * C) ** -0.5)
            b = float32_exact(rng, (F,)) if bias else None
            return (x, w, b), {"stride": (1, 1), "padding": pads}

        shape = f"x{shape_text((N, H, W, C))} {k}x{k} {padding} F={F}" + ("" if bias else " no bias")
        gemm = 2 * N * OH * OW * k * k * C * F
        for direction, factor in (("forward", 1), ("backward", 2)):
            yield OpCase("conv2d", direction, where, shape, make, factor * gemm / 1e9,
                         N * OH * OW * F * REF_SECONDS["conv2d", direction], gemm_like=True)


#: The fused steps of the presets' plans (fastcnn.layers.fused): (op, index into CONVS, pool size or None).
FUSED = [
    ("conv2d_maxpool2d", 0, 2),
    ("conv2d_relu", 1, None),
    ("conv2d_relu_maxpool2d", 2, 2),
    ("conv2d_relu", 3, None),
    ("conv2d_relu_maxpool2d", 4, 2),
    ("conv2d_relu", 5, None),
    ("conv2d_relu_maxpool2d", 6, 2),
]


def fused_cases(N):
    """The fused convolution ops at the shapes where the presets run them; numpy is the composition."""
    convs = {case.where: case for case in conv_cases(N) if case.direction == "forward"}
    for op, index, pool in FUSED:
        where = CONVS[index][0]
        conv = convs[where]

        def make(rng, conv=conv, pool=pool):
            args, kwargs = conv.make(rng)
            return args, (dict(kwargs, pool_size=(pool, pool)) if pool else kwargs)

        shape = conv.shape + (f", {pool}x{pool} max pool" if pool else "")
        for direction, factor in (("forward", 1), ("backward", 2)):
            seconds = conv.reference_seconds * (REF_SECONDS["conv2d", direction] / REF_SECONDS["conv2d", "forward"])
            yield OpCase(op, direction, where, shape, make, factor * conv.gflop, seconds, gemm_like=True)


def pool_cases(N):
    for op in ("max_pool2d", "avg_pool2d"):
        for where, (H, W, C) in POOLS:
            def make(rng, H=H, W=W, C=C):
                x = float32_exact(rng, (N, H, W, C))
                return (x,), {"pool_size": (2, 2), "stride": (2, 2), "padding": ((0, 0), (0, 0))}

            windows = N * (H // 2) * (W // 2) * C
            shape = f"x{shape_text((N, H, W, C))} 2x2"
            # Forward: one compare (or add) per window element; backward: one
            # scatter per window (max) or one add per window element (avg).
            flops = {"forward": 4 * windows, "backward": windows if op == "max_pool2d" else 4 * windows}
            for direction in ("forward", "backward"):
                yield OpCase(op, direction, where, shape, make, flops[direction] / 1e9,
                             windows * REF_SECONDS[op, direction])


def dense_cases(N):
    for where, IN, OUT in DENSES:
        def make(rng, IN=IN, OUT=OUT):
            x = float32_exact(rng, (N, IN))
            w = float32_exact(rng, (IN, OUT), scale=IN ** -0.5)
            b = float32_exact(rng, (OUT,))
            return (x, w, b), {}

        shape = f"x{shape_text((N, IN))} -> {OUT}"
        for direction, factor in (("forward", 1), ("backward", 2)):
            per_row = REF_SECONDS["dense", direction] + factor * 3.2e-9 * IN
            yield OpCase("dense", direction, where, shape, make, factor * 2 * N * IN * OUT / 1e9,
                         N * OUT * per_row, gemm_like=True)


def relu_cases(N):
    for where, (H, W, C) in RELUS:
        def make(rng, H=H, W=W, C=C):
            return (float32_exact(rng, (N, H, W, C)),), {}

        size = N * H * W * C
        for direction in ("forward", "backward"):
            yield OpCase("relu", direction, where, f"x{shape_text((N, H, W, C))}", make, size / 1e9,
                         size * REF_SECONDS["relu", direction])


def loss_cases(N):
    def make(rng):
        logits = float32_exact(rng, (N, CLASSES), scale=3.0)
        labels = rng.integers(0, CLASSES, size=N)
        return (logits, labels), {}

    # max, subtract, exp, sum, log, divide, one-hot subtract: ~6 per logit.
    yield OpCase("softmax_cross_entropy", "fused", "every preset", f"logits{shape_text((N, CLASSES))}",
                 make, 6 * N * CLASSES / 1e9, N * REF_SECONDS["softmax_cross_entropy", "fused"])


#: The other element-wise ops, at the mnist_cnn shape where each would sit:
#: (op, where, per-sample shape, kwargs, reference seconds per element).
ELEMENTWISE = [
    ("leaky_relu", "mnist_cnn relu2 position", (24, 24, 64), {"alpha": 0.01}, 0.6e-6),
    ("sigmoid", "mnist_cnn relu2 position", (24, 24, 64), {}, 1.0e-6),
    ("tanh", "mnist_cnn relu2 position", (24, 24, 64), {}, 1.0e-6),
    ("dropout", "mnist_cnn dropout1 (rate 0.25)", (12, 12, 64), {"rate": 0.25, "rng": 0}, 0.6e-6),
    ("dropout", "mnist_cnn dropout2 (rate 0.5)", (128,), {"rate": 0.5, "rng": 0}, 0.6e-6),
    ("softmax", "every preset's output", (CLASSES,), {}, 2.0e-6),
]


def elementwise_cases(N):
    for op, where, shape, kw, seconds in ELEMENTWISE:
        def make(rng, shape=shape, kw=kw):
            return (float32_exact(rng, (N,) + shape),), dict(kw)

        size = N * int(np.prod(shape))
        for direction in ("forward", "backward"):
            yield OpCase(op, direction, where, f"x{shape_text((N,) + shape)}", make, size / 1e9, size * seconds)


def with_fresh_rng(kwargs):
    """Dropout draws its mask from ``rng``: every call gets a Generator seeded alike,
    so every implementation and every timed call drops the same elements."""
    if "rng" not in kwargs:
        return kwargs
    return {**kwargs, "rng": np.random.default_rng(kwargs["rng"] if isinstance(kwargs["rng"], int) else 0)}


CASES = [*conv_cases(BATCH), *fused_cases(BATCH), *pool_cases(BATCH), *dense_cases(BATCH), *relu_cases(BATCH), *loss_cases(BATCH),
         *elementwise_cases(BATCH)]


def impl_rank(impl):
    """Families in IMPL_ORDER, each family's variants right after it."""
    return IMPL_ORDER.index(registry.family(impl)), impl


def params():
    out = []
    for case in CASES:
        impls = registry.implementations(case.op)
        if registry.variants(case.op):  # each variant where its predicate holds
            impls = registry.applicable(case.op, *case.make(np.random.default_rng(0)), impls)
        for impl in sorted(impls, key=impl_rank):
            marks = ()
            if impl == "reference" and not case.reference_runs:
                marks = pytest.mark.skip(
                    reason=f"reference too slow here: about {case.reference_seconds:.2g} s per call"
                )
            out.append(pytest.param(case, impl, id=f"{case.id}-{impl}", marks=marks))
    return out


def cast(args, dtype):
    return tuple(a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args)


def outputs(case, result):
    """The arrays a call produced, as a tuple (``None`` kept for a missing bias gradient)."""
    if case.direction == "fused":
        loss, dlogits = result
        return np.asarray(loss), dlogits
    if case.direction == "forward":
        return (result[0],)
    return result if isinstance(result, tuple) else (result,)


@functools.lru_cache(maxsize=1)
def prepared(case):
    """Inputs (float64), upstream gradient and float64 ground truth of ``case``; cached per group."""
    rng = np.random.default_rng(0)
    args, kwargs = case.make(rng)
    truth_impl = "reference" if case.reference_runs else "numpy"
    fn = registry.get(case.op, truth_impl)
    result = fn.forward(*args, **with_fresh_rng(kwargs))
    dy = None
    if case.direction == "backward":
        dy = float32_exact(rng, result[0].shape)
        result = fn.backward(dy.copy(), result[1])
    return args, kwargs, dy, outputs(case, result), truth_impl


@pytest.mark.parametrize("case,impl", params())
def test_op(benchmark, case, impl):
    args64, kwargs, dy64, truth, truth_impl = prepared(case)
    fn = registry.get(case.op, impl)
    args = cast(args64, DTYPE)
    if case.direction == "backward":
        dy = dy64.astype(DTYPE)
        _, cache = fn.forward(*args, **with_fresh_rng(kwargs))
        call, call_args = fn.backward, (dy, cache)
    else:
        def call(*a):
            return fn.forward(*a, **with_fresh_rng(kwargs))
        call_args = args

    benchmark.group = case.group
    benchmark.extra_info.update(run_info(impl))
    benchmark.extra_info.update(
        kind="op", op=case.op, direction=case.direction, where=case.where, shape=case.shape,
        dtype=np.dtype(DTYPE).name, gflop=case.gflop, gemm_like=case.gemm_like,
        reference="ran" if case.reference_runs else
        f"skipped: about {case.reference_seconds:.2g} s per call",
    )
    if impl == "reference":
        # Seconds per call: one round is the measurement, no warm-up needed.
        result = benchmark.pedantic(call, args=call_args, rounds=1, iterations=1)
    else:
        call(*call_args)  # warm up: JIT compilation, first-touch allocation
        result = benchmark(call, *call_args)

    got = outputs(case, result)
    assert len(got) == len(truth)
    errors = []
    for k, (a, b) in enumerate(zip(got, truth)):
        if a is not None and a.ndim:  # the loss is a Python float
            assert a.dtype == DTYPE, f"{case.op}/{impl}: output {k} is {a.dtype}"
        assert_close(a, b, dtype=DTYPE, name=f"{case.group} [{impl}] output {k}")
        errors.append(0.0 if a is None else max_rel_error(a, b))
    benchmark.extra_info["check"] = f"float64 {truth_impl}: max rel error {max(errors):.1e}"
