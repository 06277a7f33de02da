"""Every registered implementation of every hot op, on the shapes of the three presets
(read off the preset models by :mod:`fastcnn._opcases`, as ``fastcnn bench`` reads them).

One pytest-benchmark group per (op, direction, shape) (the fused convolutions
also time ``inference``: the forward with ``need_cache=False``, where
``numba:winograd4`` pools F(4x4, 3x3) outputs), one row per
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
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from fastcnn import registry
from fastcnn._opcases import preset_op_calls
from fastcnn.testing import assert_close, max_rel_error

from benchmarks._common import BATCH, IMPL_ORDER, REFERENCE_BUDGET_S, float32_exact, run_info, shape_text

DTYPE = np.float32


@dataclass(frozen=True)
class OpCase:
    """One (op, direction, shape) group."""

    op: str
    direction: str  # "forward", "inference" (forward with need_cache=False), "backward", or "fused" (loss)
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

#: The presets whose ops are timed one by one (resnet_mini's only end to end).
PRESETS = ("tutorial_cnn", "mnist_cnn", "vgg_mini")
#: ``(preset, call)``: every op call of their layers (fastcnn._opcases), as the layers make them.
CALLS = [(preset, call) for preset in PRESETS for call in preset_op_calls(preset)]
#: The fused convolution steps of their training plans (fastcnn.layers.fused).
FUSED_CALLS = [(preset, call) for preset in PRESETS for call in preset_op_calls(preset, fused=True)
               if call.op.startswith("conv2d_")]
CLASSES = 10


def calls_of(op):
    """``(where, call)`` of every call of ``op`` in :data:`CALLS`, ``where`` as "mnist_cnn conv2"."""
    return [(f"{preset} {call.where}", call) for preset, call in CALLS if call.op == op]


def float64_arguments(call, N):
    """``make`` of an :class:`OpCase`: the call's arguments for a batch of ``N``, float32-exact float64."""
    return lambda rng: call.arguments(N, rng, np.float64)


def conv_cases(N):
    for where, call in calls_of("conv2d"):
        (H, W, C), ((KH, KW, _, F), bias) = call.inputs[0], call.params
        OH, OW, _ = call.layer.output_shape
        shape = f"x{shape_text((N, H, W, C))} {KH}x{KW} {call.layer.padding} F={F}" + ("" if bias else " no bias")
        gemm = 2 * N * OH * OW * KH * KW * C * F
        for direction, factor in (("forward", 1), ("backward", 2)):
            yield OpCase("conv2d", direction, where, shape, float64_arguments(call, N), factor * gemm / 1e9,
                         N * OH * OW * F * REF_SECONDS["conv2d", direction], gemm_like=True)


def fused_cases(N):
    """The fused convolution ops at the shapes where the presets run them; numpy is the composition."""
    convs = {case.where: case for case in conv_cases(N) if case.direction == "forward"}
    for preset, call in FUSED_CALLS:
        where = f"{preset} {call.where}"  # the convolution's
        conv = convs[where]
        pool = call.kwargs.get("pool_size")
        shape = conv.shape + (f", {pool[0]}x{pool[1]} max pool" if pool else "")
        for direction, factor in (("forward", 1), ("inference", 1), ("backward", 2)):
            ref = "forward" if direction == "inference" else direction
            seconds = conv.reference_seconds * (REF_SECONDS["conv2d", ref] / REF_SECONDS["conv2d", "forward"])
            yield OpCase(call.op, direction, where, shape, float64_arguments(call, N), factor * conv.gflop, seconds,
                         gemm_like=True)


def pool_cases(N):
    """Every max pool of the presets; avg_pool2d is timed on the same shapes."""
    for op in ("max_pool2d", "avg_pool2d"):
        for where, call in calls_of("max_pool2d"):
            (H, W, C), (PH, PW) = call.inputs[0], call.kwargs["pool_size"]
            OH, OW, _ = call.layer.output_shape
            windows = N * OH * OW * C
            shape = f"x{shape_text((N, H, W, C))} {PH}x{PW}"
            # Forward: one compare (or add) per window element; backward: one
            # scatter per window (max) or one add per window element (avg).
            flops = {"forward": PH * PW * windows,
                     "backward": windows if op == "max_pool2d" else PH * PW * windows}
            for direction in ("forward", "backward"):
                yield OpCase(op, direction, where, shape, float64_arguments(call, N), flops[direction] / 1e9,
                             windows * REF_SECONDS[op, direction])


def dense_cases(N):
    for where, call in calls_of("dense"):
        (IN, OUT) = call.params[0]
        shape = f"x{shape_text((N, IN))} -> {OUT}"
        for direction, factor in (("forward", 1), ("backward", 2)):
            per_row = REF_SECONDS["dense", direction] + factor * 3.2e-9 * IN
            yield OpCase("dense", direction, where, shape, float64_arguments(call, N),
                         factor * 2 * N * IN * OUT / 1e9, N * OUT * per_row, gemm_like=True)


def relu_cases(N):
    """The ReLUs on feature maps (N, H, W, C): in each preset, the last one of each shape."""
    last = {(where.split()[0], call.inputs): (where, call) for where, call in calls_of("relu")
            if len(call.inputs[0]) == 3}
    for where, call in last.values():
        size = N * math.prod(call.inputs[0])
        for direction in ("forward", "backward"):
            yield OpCase("relu", direction, where, f"x{shape_text((N, *call.inputs[0]))}",
                         float64_arguments(call, N), size / 1e9, size * REF_SECONDS["relu", direction])


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
    if case.direction in ("forward", "inference"):
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
        extra = {"need_cache": False} if case.direction == "inference" else {}  # no backward follows

        def call(*a):
            return fn.forward(*a, **with_fresh_rng(kwargs), **extra)
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


#: The two ways a first layer's weight gradient runs (``fastcnn.kernels._planar``), beside NumPy's.
FIRST_LAYER_PATHS = ("numpy", "numba:gemm", "numba:planar")


def first_layer_cases():
    """The presets' fused conv + pool backward cases whose input has one channel: first layers,
    whose input gradient no model asks for."""
    return [case for case in fused_cases(BATCH) if case.direction == "backward" and case.op.endswith("maxpool2d")
            and case.make(np.random.default_rng(0))[0][0].shape[-1] == 1]


@pytest.mark.parametrize("case,path", [pytest.param(case, path, id=f"{case.id}-nodx-{path}")
                                       for case in first_layer_cases() for path in FIRST_LAYER_PATHS])
def test_first_layer_weight_gradient(benchmark, monkeypatch, case, path):
    """A first layer's backward (``need_dx=False``: the weight and bias gradients alone) after the
    ``numba:direct`` forward, by each path: ``numba:gemm`` the im2col GEMMs every variant's backward
    runs, ``numba:planar`` the planar passes (the planner times the two per geometry; here each is
    forced), beside NumPy's backward. GFLOP: the weight gradient's, one forward's worth."""
    from fastcnn.kernels import _planar

    args64, kwargs, dy64, truth, truth_impl = prepared(case)
    if path != "numpy":
        monkeypatch.setattr(_planar, "use_planar", lambda geometry, planar, gemm: path == "numba:planar")
    fn = registry.get(case.op, "numpy" if path == "numpy" else "numba:direct")
    _, cache = fn.forward(*cast(args64, DTYPE), **kwargs)
    dy = dy64.astype(DTYPE)
    benchmark.group = f"{case.op} backward without dx (a first layer), {case.where}: {case.shape}"
    benchmark.extra_info.update(run_info(path))
    benchmark.extra_info.update(
        kind="op", op=case.op, direction="backward, no dx", where=case.where, shape=case.shape,
        dtype=np.dtype(DTYPE).name, gflop=case.gflop / 2, gemm_like=True, reference="not run",
    )
    fn.backward(dy, cache, need_dx=False)  # warm up
    dx, dw, db = benchmark(fn.backward, dy, cache, need_dx=False)
    assert dx is None and dw.dtype == DTYPE
    assert_close(dw, truth[1], dtype=DTYPE, name=f"{benchmark.group} [{path}] weight gradient")
    assert_close(db, truth[2], dtype=DTYPE, name=f"{benchmark.group} [{path}] bias gradient")
    benchmark.extra_info["check"] = (f"float64 {truth_impl}: max rel error "
                                     f"{max(max_rel_error(dw, truth[1]), max_rel_error(db, truth[2])):.1e}")


def microkernel_tile_params():
    """(case, tile): the presets' fused conv + ReLU forward cases ``numba:microkernel`` applies to,
    once per tile shape that applies."""
    from fastcnn.kernels import microkernel

    params = []
    for case in fused_cases(BATCH):
        if case.direction != "forward" or case.op not in ("conv2d", "conv2d_relu"):
            continue
        args, kwargs = case.make(np.random.default_rng(0))
        if not registry.applicable(case.op, args, kwargs, ["numba:microkernel"]):
            continue
        geometry = registry.geometry_of(case.op, args, kwargs)
        OW = microkernel._output_width(geometry)
        params += [pytest.param(case, tile, id=f"{case.id}-tile{'x'.join(map(str, tile))}")
                   for tile in microkernel.TILES if microkernel.tile_applies(tile, args[1].shape[-1], OW)]
    return params


@pytest.mark.parametrize("case,tile", microkernel_tile_params())
def test_microkernel_tile(benchmark, monkeypatch, case, tile):
    """``numba:microkernel``'s forward with each tile shape forced (the planner times them per
    geometry under ``FASTCNN_PLAN=measure`` and keeps the fastest): which one wins depends on the
    CPU's registers and caches. Every tile computes the same numbers."""
    from fastcnn.kernels import microkernel

    args64, kwargs, _, truth, truth_impl = prepared(case)
    monkeypatch.setattr(microkernel, "tile_for", lambda geometry, run: tile)
    fn = registry.get(case.op, "numba:microkernel")
    args = cast(args64, DTYPE)
    name = "numba:microkernel " + "x".join(map(str, tile))
    benchmark.group = f"{case.op} forward by tile (PB pixels x NV x W filters), {case.where}: {case.shape}"
    benchmark.extra_info.update(run_info(name))
    benchmark.extra_info.update(kind="op", op=case.op, direction="forward", where=case.where, shape=case.shape,
                                dtype=np.dtype(DTYPE).name, gflop=case.gflop, gemm_like=True, reference="not run")
    fn.forward(*args, **kwargs, need_cache=False)  # warm up
    y, _ = benchmark(fn.forward, *args, **kwargs, need_cache=False)
    assert y.dtype == DTYPE
    assert_close(y, truth[0], dtype=DTYPE, name=f"{benchmark.group} [{name}] forward")
    benchmark.extra_info["check"] = f"float64 {truth_impl}: max rel error {max_rel_error(y, truth[0]):.1e}"
