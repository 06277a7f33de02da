"""Every registered implementation of every op agrees with the reference.

Forward output and every gradient, float64 to 1e-10 and float32 (against a
float64 reference on the same values) to 1e-4, over a parametrized grid plus
hypothesis-drawn configurations for every op. The implementations come from the
registry, so a newly registered variant is tested here without editing this file;
a newly registered op fails ``test_every_registered_op_is_compared`` until it has cases.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastcnn import registry
from fastcnn.geometry import output_hw, resolve_padding
from fastcnn.testing import assert_close


def fast_impls(op):
    return [name for name in registry.implementations(op) if name != "reference"]


def fast_variants(op):
    """:func:`fast_impls` without the ``"numba"`` dispatcher where the op has variants."""
    return [name for name in fast_impls(op) if name != "numba" or not registry.variants(op)]


def impl_params(*op_names):
    """(op, impl) pairs for every non-reference implementation of the ops."""
    return [pytest.param(op, impl, id=f"{op}-{impl}") for op in op_names for impl in fast_impls(op)]


def applicable_impls(op, args, kwargs, names=None):
    """The non-reference implementations (default ``names``) whose predicate holds for this call."""
    return registry.applicable(op, args, kwargs, fast_impls(op) if names is None else names)


def conv_case_params(op_names, grid, pool=False, impls=fast_impls, dispatch=None, kinds=None):
    """(op, impl, case) for every case of ``grid`` each implementation applies to (a variant
    only where its predicate holds: Winograd at 3x3 stride 1, for example).

    ``dispatch``: the cases the ``"numba"`` entry runs (None: all). Where an op has variants
    that entry only hands the call to one of them (the planner's choice), and every variant
    runs the whole grid under its own name. ``kinds``: ``impl -> input kinds``; the params are
    then ``(op, impl, case, kind)``.
    """
    params = []
    for op in op_names:
        for case in grid:
            args, kwargs = conv_case(np.random.default_rng(0), *case)
            if pool:
                kwargs["pool_size"] = pool_of(args, kwargs)
            for impl in registry.applicable(op, args, kwargs, impls(op)):
                if impl == "numba" and dispatch is not None and registry.variants(op) and case not in dispatch:
                    continue
                if kinds is None:
                    params.append(pytest.param(op, impl, case, id=f"{op}-{impl}-{case}"))
                else:
                    params += [pytest.param(op, impl, case, kind, id=f"{op}-{impl}-{case}-{kind}")
                               for kind in kinds(impl)]
    return params


def pool_of(args, kwargs):
    """The pool of the fused conv + pool tests: windows that leave rows/columns uncovered where the shape allows."""
    OH, OW = output_hw(args[0].shape[1:3], args[1].shape[:2], kwargs["stride"], kwargs["padding"])
    return (min(2, OH), min(3, OW))


def make_input(rng, shape, kind="normal", contiguous=True):
    """float64 test data; ``contiguous=False`` returns a strided view with the same values."""
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "ties":
        x = rng.integers(0, 3, size=shape).astype(np.float64)
    elif kind == "zeros":
        x = np.zeros(shape)
    else:
        raise ValueError(kind)
    return x if contiguous else strided_copy(x)


def strided_copy(x, dtype=None):
    """A non-contiguous view with the values of ``x`` (cast to ``dtype``): the last axis's stride doubled."""
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=dtype or x.dtype)
    big[..., ::2] = x
    return big[..., ::2]


def cast_like(a, dtype):
    """``a`` cast to ``dtype``, keeping a non-contiguous layout non-contiguous (``astype`` would not)."""
    if not isinstance(a, np.ndarray):
        return a
    if a.dtype == dtype or a.ndim == 0 or a.flags.c_contiguous:
        return a.astype(dtype, copy=False)
    return strided_copy(a, dtype)


_REFERENCE_RESULTS = {}


def reference_results(ref, args64, kwargs, seed):
    """The float64 reference's ``(y, dy, gradients)``, computed once per distinct call: every
    implementation, variant and dtype of a grid case is compared with the same numbers."""
    key = None
    if "rng" not in kwargs:
        key = (ref.op, seed, repr(sorted(kwargs.items())),
               tuple((a.shape, a.tobytes()) if isinstance(a, np.ndarray) else repr(a) for a in args64))
        if key in _REFERENCE_RESULTS:
            return _REFERENCE_RESULTS[key]
    y_ref, cache_ref = ref.forward(*args64, **kwargs)
    dy64 = np.random.default_rng(seed + 1).standard_normal(y_ref.shape)
    g_ref = ref.backward(dy64.copy(), cache_ref)
    result = y_ref, dy64, (g_ref if isinstance(g_ref, tuple) else (g_ref,))
    if key is not None:
        if len(_REFERENCE_RESULTS) > 2048:
            _REFERENCE_RESULTS.clear()
        _REFERENCE_RESULTS[key] = result
    return result


def compare(op, impl, args, kwargs, dtype, seed=0):
    """Run forward+backward in ``impl`` (at ``dtype``) and in the reference (float64); compare all."""
    ref = registry.get(op, "reference")
    fast = registry.get(op, impl)
    args64 = [a if not isinstance(a, np.ndarray) else a.astype(np.float64, copy=False) for a in args]
    args_t = [cast_like(a, dtype) for a in args]  # non-contiguous inputs stay non-contiguous
    kw_ref = dict(kwargs)
    kw_fast = dict(kwargs)
    if "rng" in kwargs:
        kw_ref["rng"] = np.random.default_rng(seed)
        kw_fast["rng"] = np.random.default_rng(seed)
    y_ref, dy64, g_ref = reference_results(ref, args64, kw_ref, seed)
    y, cache = fast.forward(*args_t, **kw_fast)
    assert y.dtype == dtype, f"{op}/{impl}: forward returned {y.dtype} for {np.dtype(dtype)} input"
    assert_close(y, y_ref, dtype=dtype, name=f"{op}/{impl} forward")
    g = fast.backward(dy64.astype(dtype), cache)
    g = g if isinstance(g, tuple) else (g,)
    assert len(g) == len(g_ref)
    for k, (a, b) in enumerate(zip(g, g_ref)):
        if a is not None:
            assert a.dtype == dtype, f"{op}/{impl}: gradient {k} is {a.dtype}"
        assert_close(a, b, dtype=dtype, name=f"{op}/{impl} gradient {k}")


DTYPES = [np.float64, np.float32]

#: conv2d and the fused ops with its signature (conv2d_relu: a Conv2D and a ReLU as one op).
CONV_OPS = ("conv2d", "conv2d_relu")
#: Fused ops that end in a max pool (stride = pool size, no padding): conv2d's arguments plus pool_size.
CONV_POOL_OPS = ("conv2d_maxpool2d", "conv2d_relu_maxpool2d")

# (N, H, W, C, F, kernel, stride, padding, bias)
CONV_GRID = [
    (1, 5, 5, 1, 1, 3, 1, "valid", True),
    (2, 7, 9, 3, 4, 3, 1, "same", True),
    (2, 7, 7, 2, 3, 1, 1, "valid", False),
    (3, 8, 6, 2, 2, 2, 2, "same", True),
    (2, 9, 9, 3, 2, 5, 1, "same", False),
    (2, 9, 7, 2, 3, (2, 3), (1, 2), "valid", True),
    (1, 11, 10, 1, 2, 3, 3, "same", True),
    (2, 8, 8, 3, 2, 3, 2, 1, True),
    (2, 6, 7, 2, 2, (3, 2), (2, 1), (2, 1), True),
    (2, 5, 5, 4, 5, 5, 1, "valid", True),
]


#: The cases the ``"numba"`` dispatcher of the conv ops runs (see :func:`conv_case_params`):
#: 3x3 'same' at stride 1 (odd width), stride 2 'same', explicit asymmetric padding with a
#: non-square kernel and stride.
DISPATCH_CASES = [CONV_GRID[1], CONV_GRID[3], CONV_GRID[8]]


def pool_kinds(impl):
    """Input kinds of the fused conv + pool grid: the families and ``numba:im2col`` (the
    variant every geometry can run) get all-zero inputs too; the other variants normal
    values and ties (their max-pool tie-breaking), all-zero inputs being one more tie."""
    return ["normal", "ties", "zeros"] if impl in ("numpy", "numba", "numba:im2col") else ["normal", "ties"]


def conv_case(rng, N, H, W, C, F, kernel, stride, padding, bias, kind="normal", contiguous=True):
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    pads = resolve_padding(padding, (H, W), kernel, stride)
    x = make_input(rng, (N, H, W, C), kind, contiguous)
    w = rng.standard_normal(kernel + (C, F))
    b = rng.standard_normal(F) if bias else None
    return (x, w, b), {"stride": stride, "padding": pads}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("op,impl,case", conv_case_params(CONV_OPS, CONV_GRID, dispatch=DISPATCH_CASES))
def test_conv2d_agrees(op, impl, case, contiguous, dtype):
    rng = np.random.default_rng(0)
    args, kwargs = conv_case(rng, *case, contiguous=contiguous)
    compare(op, impl, args, kwargs, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl,case,kind", conv_case_params(CONV_POOL_OPS, CONV_GRID, pool=True,
                                                              dispatch=DISPATCH_CASES, kinds=pool_kinds))
def test_conv2d_maxpool2d_agrees(op, impl, case, kind, dtype):
    """Fused convolution (+ ReLU) + max pool against the reference layers; ties go to the first maximum."""
    args, kwargs = conv_case(np.random.default_rng(4), *case, kind=kind)
    if kind == "ties":
        args = (args[0], np.round(args[1]), args[2])  # integer inputs and weights: many equal outputs
    compare(op, impl, args, dict(kwargs, pool_size=pool_of(args, kwargs)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl,case,kind", conv_case_params(CONV_POOL_OPS, CONV_GRID, pool=True,
                                                              impls=registry.variants,
                                                              kinds=lambda impl: ["normal", "ties"]))
def test_conv2d_maxpool2d_inference_agrees(op, impl, case, kind, dtype):
    """The inference forward (``need_cache=False``: no backward follows) of every variant of the
    fused convolution + max pool against the reference, ties included. ``numba:winograd4`` runs
    F(4x4, 3x3) only here (with a cache it runs F(2x2, 3x3), which the grid above checks)."""
    args, kwargs = conv_case(np.random.default_rng(4), *case, kind=kind)
    if kind == "ties":
        args = (args[0], np.round(args[1]), args[2])
    kwargs = dict(kwargs, pool_size=pool_of(args, kwargs))
    y_ref, _ = registry.get(op, "reference").forward(*args, **kwargs)
    y, _ = registry.get(op, impl).forward(*[cast_like(a, dtype) for a in args], **kwargs, need_cache=False)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype=dtype, name=f"{op}/{impl} inference forward ({kind})")


#: Cases with as many filters as real layers have (CONV_GRID's 1-5 filters are below what
#: ``numba:microkernel`` computes per tile): every tile shape, its last tile overlapping the one
#: before it (output widths not a multiple of the tile's pixels), stride 2 across, explicit
#: padding wider than the kernel needs, kernel rows on the padding (skipped), one input channel.
WIDE_CONV_GRID = [
    (2, 7, 9, 3, 32, 3, 1, "same", True),
    (1, 8, 10, 1, 16, 3, 1, "valid", False),
    (2, 9, 13, 2, 32, (2, 3), (1, 2), "valid", True),
    (2, 6, 7, 2, 64, (3, 2), (2, 1), (2, 1), True),
    (2, 5, 6, 4, 48, 5, 1, "same", True),
    (1, 6, 11, 3, 64, 3, 1, (0, 2), False),
]


def wide_conv_params():
    """(op, impl, case, tile): every variant on :data:`WIDE_CONV_GRID` where it applies, and
    ``numba:microkernel`` once per tile shape that applies (tile None for the others)."""
    from fastcnn.kernels import microkernel

    params = []
    for param in conv_case_params(CONV_OPS, WIDE_CONV_GRID, impls=registry.variants):
        op, impl, case = param.values
        tiles = [None]
        if impl == "numba:microkernel":
            args, kwargs = conv_case(np.random.default_rng(0), *case)
            OW = output_hw(args[0].shape[1:3], args[1].shape[:2], kwargs["stride"], kwargs["padding"])[1]
            tiles = [t for t in microkernel.TILES if microkernel.tile_applies(t, case[4], OW)]
        params += [pytest.param(op, impl, case, tile, id=f"{op}-{impl}-{case}" + ("" if tile is None else f"-{tile}"))
                   for tile in tiles]
    return params


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl,case,tile", wide_conv_params())
def test_conv2d_wide_agrees(monkeypatch, op, impl, case, tile, dtype):
    """Each variant, and each tile shape of ``numba:microkernel``, against the reference."""
    from fastcnn.kernels import microkernel

    if tile is not None:
        monkeypatch.setattr(microkernel, "tile_for", lambda geometry, run: tile)
    args, kwargs = conv_case(np.random.default_rng(5), *case)
    compare(op, impl, args, kwargs, dtype)


def test_microkernel_tiles_compute_the_same_numbers():
    """The tile shape only regroups the work: every tile gives the same float32 outputs bit for bit
    (each output is its bias plus its products in one order), so the planner's choice of tile can
    never change a model's weights."""
    from fastcnn.kernels import microkernel

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 14, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 32)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    outputs = [microkernel.direct_conv(x, w, b, (1, 1), ((1, 1), (1, 1)), True, tile) for tile in microkernel.TILES]
    assert len(outputs) == 4 and (outputs[0] > 0).any() and (outputs[0] == 0).any()
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])


def test_microkernel_refuses_what_it_cannot_compute():
    from fastcnn.kernels import microkernel

    x, w = np.zeros((1, 6, 6, 1), np.float32), np.zeros((3, 3, 1, 24), np.float32)
    with pytest.raises(ValueError, match=r"needs F % 32 == 0 with at least 4 output columns or F % 16 == 0 with at "
                                         r"least 6 output columns; received weights \(3, 3, 1, 24\)"):
        registry.get("conv2d", "numba:microkernel").forward(x, w, None, stride=(1, 1), padding=((0, 0), (0, 0)))
    fn = registry.get("conv2d", "numba:microkernel")
    w32 = np.ones((3, 3, 1, 32), np.float32)
    x8 = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    y, _ = fn.forward(x8, w32, None, stride=(1, 1), padding=((1, 1), (1, 1)))
    listed, _ = fn.forward(x8, w32, None, stride=[1, 1], padding=[[1, 1], [1, 1]])  # unhashable: checked each call
    np.testing.assert_array_equal(listed, y)
    assert y[0, 0, 0, 0] == 0 + 1 + 8 + 9 and y[0, 3, 3, 5] == sum(range(18, 21)) + sum(range(26, 29)) + sum(range(34, 37))
    with pytest.raises(ValueError, match=r"tile \(6, 2, 16\) does not apply to 32 filters and 4 output columns"):
        microkernel.direct_conv(x, np.zeros((3, 3, 1, 32), np.float32), None, (1, 1), ((0, 0), (0, 0)), False,
                                (6, 2, 16))


#: The stride-1 cases of CONV_GRID: where a first layer's weight gradient may run planar.
STRIDE_ONE_GRID = [case for case in CONV_GRID if case[6] == 1]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("path", ["planar", "gemm"])
@pytest.mark.parametrize("op,impl,case,kind", conv_case_params(CONV_POOL_OPS, STRIDE_ONE_GRID, pool=True,
                                                              impls=registry.variants,
                                                              kinds=lambda impl: ["normal", "ties"]))
def test_conv2d_maxpool2d_weight_gradient_alone_agrees(monkeypatch, op, impl, case, kind, path, dtype):
    """A first layer's backward (``need_dx=False``: the weight gradient alone) by each of its two
    paths, after each variant's forward (whose window indices it reads), against the reference:
    the planar passes of :mod:`fastcnn.kernels._planar` and the im2col GEMMs. Pools of 2x3
    windows leave columns (and rows) no window covers: their gradient must stay zero."""
    from fastcnn.kernels import _planar

    monkeypatch.setattr(_planar, "use_planar", lambda geometry, planar, gemm: path == "planar")
    args, kwargs = conv_case(np.random.default_rng(4), *case, kind=kind)
    if kind == "ties":
        args = (args[0], np.round(args[1]), args[2])
    kwargs = dict(kwargs, pool_size=pool_of(args, kwargs))
    _, dy64, (_, dw_ref, db_ref) = reference_results(registry.get(op, "reference"),
                                                      [a if a is None else a.astype(np.float64) for a in args],
                                                      kwargs, 0)
    y, cache = registry.get(op, impl).forward(*[cast_like(a, dtype) for a in args], **kwargs)
    dx, dw, db = registry.get(op, impl).backward(dy64.astype(dtype), cache, need_dx=False)
    assert dx is None and dw.dtype == dtype
    assert_close(dw, dw_ref, dtype=dtype, name=f"{op}/{impl} weight gradient alone ({path}, {kind})")
    if db_ref is None:
        assert db is None
    else:
        assert db.dtype == dtype
        assert_close(db, db_ref, dtype=dtype, name=f"{op}/{impl} bias gradient alone ({path}, {kind})")


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("op", CONV_POOL_OPS)
def test_conv2d_maxpool2d_weight_gradient_alone_with_a_non_finite_input_takes_the_gemm_path(monkeypatch, op, bad):
    """The planar passes also multiply the columns past each output row by a zero gradient, which
    is exact only for finite inputs (``inf * 0`` is NaN): with a non-finite input the backward
    takes the im2col path even where the planar one is chosen, and gives its result bit for bit
    (NaN exactly where the windows that read the bad pixel put it)."""
    from fastcnn.kernels import _planar, conv_pool

    monkeypatch.setattr(_planar, "use_planar", lambda geometry, planar, gemm: True)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 9, 1))
    x[1, 3, 8, 0] = bad  # the last column: read by fewer taps than the planar passes reach
    w, b = rng.standard_normal((3, 3, 1, 4)), rng.standard_normal(4)
    kwargs = dict(stride=(1, 1), padding=((0, 0), (0, 0)), pool_size=(2, 2))
    fn = registry.get(op, "numba:direct")
    y, cache = fn.forward(x, w, b, **kwargs)
    dy = rng.standard_normal(y.shape)
    _, dw, db = fn.backward(dy, cache, need_dx=False)
    _, dw_gemm, db_gemm = conv_pool._gemm_backward(dy.reshape(cache[1].shape), cache, False)
    np.testing.assert_array_equal(dw, dw_gemm)
    np.testing.assert_array_equal(db, db_gemm)
    assert np.isnan(dw).any() and np.isfinite(dw[:, 0]).all()  # tap column 0 never reads column 8
    x[1, 3, 8, 0] = 0.5  # finite again: the planar passes run, and agree
    y, cache = fn.forward(x, w, b, **kwargs)
    _, dw, _ = fn.backward(dy, cache, need_dx=False)
    _, dw_gemm, _ = conv_pool._gemm_backward(dy.reshape(cache[1].shape), cache, False)
    assert not np.array_equal(dw, dw_gemm)  # another order of summation: the planar path ran
    assert_close(dw, dw_gemm, dtype=np.float64, name=f"{op} planar weight gradient")


@pytest.mark.parametrize("op,impl,case", conv_case_params(CONV_OPS, [(2, 7, 7, 2, 3, 3, 2, "same", True),
                                                                     (2, 7, 7, 2, 3, 3, 1, "same", True)],
                                                         impls=registry.implementations))
def test_conv2d_without_dx_gives_the_same_weight_gradients(op, impl, case):
    fn = registry.get(op, impl)
    args, kwargs = conv_case(np.random.default_rng(9), *case)
    y, cache = fn.forward(*args, **kwargs)
    dy = np.random.default_rng(10).standard_normal(y.shape)
    dx, dw, db = fn.backward(dy, cache)
    y2, cache2 = fn.forward(*args, **kwargs)
    none, dw2, db2 = fn.backward(dy, cache2, need_dx=False)
    assert none is None and dx is not None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl,case", conv_case_params(CONV_OPS, [CONV_GRID[1], CONV_GRID[3], CONV_GRID[8]],
                                                         impls=registry.implementations))
def test_conv2d_workspace_and_inference_hints(monkeypatch, op, impl, case, dtype):
    """Reused scratch buffers and the chunked no-cache forward change no result."""
    import fastcnn.kernels._blockgemm
    import fastcnn.kernels.conv_im2col
    import fastcnn.kernels.winograd
    import fastcnn.kernels.winograd4

    monkeypatch.setattr(fastcnn.kernels.conv_im2col, "INFERENCE_CHUNK_ROWS", 7)  # many small chunks
    monkeypatch.setattr(fastcnn.kernels._blockgemm, "BLOCK_BYTES", 7 * 8)  # blocks of a few rows
    monkeypatch.setattr(fastcnn.kernels.winograd, "BLOCK_BYTES", 16 * 7 * 8)  # blocks of a few tiles
    monkeypatch.setattr(fastcnn.kernels.winograd4, "BLOCK_BYTES", 4096)  # blocks of one or a few tiles
    fn = registry.get(op, impl)
    rng = np.random.default_rng(11)
    workspace = {}
    for step in range(2):  # the second step reuses the first step's buffers
        (x, w, b), kwargs = conv_case(rng, *case)
        x, w = x.astype(dtype), w.astype(dtype)
        b = None if b is None else b.astype(dtype)
        y_ref, cache_ref = fn.forward(x, w, b, **kwargs)
        y, cache = fn.forward(x, w, b, **kwargs, workspace=workspace)
        y_inf, _ = fn.forward(x, w, b, **kwargs, workspace=workspace, need_cache=False)
        np.testing.assert_array_equal(y, y_ref)
        assert_close(y_inf, y_ref, dtype=dtype, name="inference forward")
        dy = rng.standard_normal(y.shape).astype(dtype)
        for got, want in zip(fn.backward(dy, cache), fn.backward(dy, cache_ref)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl,case", conv_case_params(CONV_OPS, [(2, 6, 6, 2, 3, 3, 1, "same", True)]))
def test_conv2d_all_zero_input(op, impl, case, dtype):
    args, kwargs = conv_case(np.random.default_rng(1), *case, kind="zeros")
    compare(op, impl, args, kwargs, dtype)


# (N, H, W, C, pool, stride, padding)
POOL_GRID = [
    (1, 4, 4, 1, 2, None, "valid"),
    (2, 7, 7, 3, 2, None, "valid"),
    (2, 7, 9, 2, 3, 2, "same"),
    (2, 6, 6, 2, (2, 3), (1, 2), "valid"),
    (3, 9, 8, 2, 3, 1, "same"),
    (2, 8, 8, 2, 2, 3, 1),
    (1, 5, 6, 2, 3, 3, "same"),
]


def pool_case(rng, N, H, W, C, pool, stride, padding, kind="normal", contiguous=True):
    pool = pool if isinstance(pool, tuple) else (pool, pool)
    stride = pool if stride is None else (stride if isinstance(stride, tuple) else (stride, stride))
    pads = resolve_padding(padding, (H, W), pool, stride)
    x = make_input(rng, (N, H, W, C), kind, contiguous)
    return (x,), {"pool_size": pool, "stride": stride, "padding": pads}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("case", POOL_GRID)
@pytest.mark.parametrize("op,impl", impl_params("max_pool2d", "avg_pool2d"))
def test_pool_agrees(op, impl, case, contiguous, kind, dtype):
    args, kwargs = pool_case(np.random.default_rng(2), *case, kind=kind, contiguous=contiguous)
    compare(op, impl, args, kwargs, dtype)


ELEMENTWISE = ["relu", "sigmoid", "tanh", "flatten", "global_avg_pool2d"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", [(1, 3, 3, 1), (4, 5, 7, 3)])
@pytest.mark.parametrize("op,impl", impl_params(*ELEMENTWISE))
def test_unary_agrees(op, impl, shape, contiguous, kind, dtype):
    x = make_input(np.random.default_rng(3), shape, kind, contiguous)
    compare(op, impl, (x,), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])  # ties and zeros: the slope at exactly 0
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("alpha", [0.01, 0.3])
@pytest.mark.parametrize("op,impl", impl_params("leaky_relu"))
def test_leaky_relu_agrees(op, impl, alpha, contiguous, kind, dtype):
    x = make_input(np.random.default_rng(4), (3, 4, 5, 2), kind, contiguous)
    compare(op, impl, (x,), {"alpha": alpha}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", [(1, 10), (7, 10), (5, 3)])
@pytest.mark.parametrize("op,impl", impl_params("softmax"))
def test_softmax_agrees(op, impl, shape, contiguous, kind, dtype):
    x = make_input(np.random.default_rng(5), shape, kind, contiguous)
    x *= 3  # in place: a strided view stays strided
    compare(op, impl, (x,), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("op,impl", impl_params("dropout"))
def test_dropout_agrees(op, impl, rate, contiguous, dtype):
    x = make_input(np.random.default_rng(6), (4, 6, 6, 3), contiguous=contiguous)
    compare(op, impl, (x,), {"rate": rate, "rng": None}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 3, 2), (8, 20, 10), (5, 7, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("op,impl", impl_params("dense"))
def test_dense_agrees(op, impl, shape, bias, dtype):
    rng = np.random.default_rng(7)
    N, IN, OUT = shape
    b = rng.standard_normal(OUT) if bias else None
    compare(op, impl, (rng.standard_normal((N, IN)), rng.standard_normal((IN, OUT)), b), {}, dtype)


def bn_case(rng, shape, mode, affine=True):
    """``(args, kwargs)`` for batch_norm: training (batch statistics) or inference (given statistics)."""
    C = shape[-1]
    x = 1.5 * rng.standard_normal(shape) + rng.standard_normal(C)  # per-channel offsets
    gamma, beta = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    args = (x, gamma, beta)
    if mode == "inference":
        args += (rng.standard_normal(C), rng.uniform(0.5, 2.0, C))
    return args, {"epsilon": 1e-3}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5, 6)], ids=["2d", "4d"])
@pytest.mark.parametrize("op,impl", impl_params("batch_norm"))
def test_batch_norm_agrees(op, impl, shape, mode, affine, dtype):
    """Forward, dx, dgamma, dbeta; and the batch statistics the layer updates its moving ones from."""
    args, kwargs = bn_case(np.random.default_rng(12), shape, mode, affine)
    compare(op, impl, args, kwargs, dtype)
    _, cache_ref = registry.get(op, "reference").forward(*args, **kwargs)
    _, cache = registry.get(op, impl).forward(*[cast_like(a, dtype) for a in args], **kwargs)
    for k, name in enumerate(("mean", "variance")):
        assert cache[k].dtype == dtype and cache[k].shape == (shape[-1],)
        assert_close(cache[k], cache_ref[k], dtype=dtype, name=f"batch_norm/{impl} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl", impl_params("batch_norm"))
def test_batch_norm_strided_and_many_rows_agree(op, impl, dtype):
    """A strided input, and more rows than one block of the Numba kernels' partial sums."""
    rng = np.random.default_rng(13)
    # 572 rows (three blocks of 256); channel means far from 0 relative to the spread, where
    # a variance computed as E[x^2] - E[x]^2 would cancel
    x = strided_copy(rng.standard_normal((4, 13, 11, 3)) + np.array([2.0, -50.0, 100.0]))
    compare(op, impl, (x, rng.standard_normal(3), rng.standard_normal(3)), {"epsilon": 1e-3}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n_inputs", [2, 3])
@pytest.mark.parametrize("op,impl", impl_params("add", "add_relu"))
def test_add_agrees(op, impl, n_inputs, dtype):
    rng = np.random.default_rng(14)
    compare(op, impl, tuple(rng.standard_normal((2, 3, 4, 2)) for _ in range(n_inputs)), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,impl", impl_params("add_relu"))
def test_add_relu_ties_agree(op, impl, dtype):
    """Small integers: many sums are exactly 0, where the gradient is 0 (as ReLU's)."""
    rng = np.random.default_rng(16)
    compare(op, impl, tuple(make_input(rng, (3, 4, 5, 2), "ties") - 1 for _ in range(2)), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shapes,axis", [([(2, 3, 3, 2), (2, 3, 3, 4)], 3), ([(2, 5), (2, 1), (2, 3)], 1),
                                         ([(2, 2, 3, 2), (2, 4, 3, 2)], 1)])
@pytest.mark.parametrize("op,impl", impl_params("concatenate"))
def test_concatenate_agrees(op, impl, shapes, axis, dtype):
    rng = np.random.default_rng(15)
    compare(op, impl, tuple(rng.standard_normal(shape) for shape in shapes), {"axis": axis}, dtype)


def compare_loss(impl, logits, labels, dtype):
    """The fused loss in ``impl`` (at ``dtype``) against the float64 reference: loss and dlogits."""
    loss_ref, d_ref = registry.get("softmax_cross_entropy", "reference").forward(
        logits.astype(np.float64, copy=False), labels)
    loss, d = registry.get("softmax_cross_entropy", impl).forward(cast_like(logits, dtype), labels)
    assert np.isfinite(loss) and isinstance(loss, float)
    assert d.dtype == dtype
    assert abs(loss - loss_ref) <= (1e-10 if dtype == np.float64 else 1e-4) * max(1.0, abs(loss_ref))
    assert_close(d, d_ref, dtype=dtype, name=f"softmax_cross_entropy/{impl} dlogits")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("impl", fast_impls("softmax_cross_entropy"))
def test_softmax_cross_entropy_agrees(impl, scale, dtype):
    rng = np.random.default_rng(8)
    logits = scale * rng.standard_normal((16, 10))
    compare_loss(impl, logits, rng.integers(0, 10, size=16), dtype)


# Confident rows only: every gradient is at most ~1e-5, so no large entry hides the error
# of the small ones in the norm-wise measure; computed as 1 - p or dy - sum(dy * y)
# they would be float32 rounding noise.
SATURATED = np.array([[0.0, -30.0, -40.0], [0.0, -20.0, -25.0], [3.0, -14.0, -9.0]])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("impl", fast_impls("softmax"))
def test_saturated_softmax_agrees(impl, dtype):
    compare("softmax", impl, (SATURATED,), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("impl", fast_impls("softmax_cross_entropy"))
def test_saturated_softmax_cross_entropy_agrees(impl, dtype):
    compare_loss(impl, SATURATED, np.array([0, 0, 0]), dtype)


# --- hypothesis-drawn configurations ------------------------------------------------


@st.composite
def conv_configs(draw):
    N = draw(st.integers(1, 3))
    C = draw(st.integers(1, 3))
    F = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same", 0, 1, 2, (1, 0), (0, 2)]))
    H = draw(st.integers(1, 9))
    W = draw(st.integers(1, 9))
    pads = resolve_padding(padding, (H, W), kernel, stride)
    if H + sum(pads[0]) < kernel[0] or W + sum(pads[1]) < kernel[1]:
        H, W = H + kernel[0], W + kernel[1]
    return N, H, W, C, F, kernel, stride, padding, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(config=conv_configs(), kind=st.sampled_from(["normal", "normal", "zeros"]),  # all-zero 1 in 3
       contiguous=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_conv2d_agrees_hypothesis(config, kind, contiguous, dtype, seed):
    args, kwargs = conv_case(np.random.default_rng(seed), *config, kind=kind, contiguous=contiguous)
    OH, OW = output_hw(args[0].shape[1:3], args[1].shape[:2], kwargs["stride"], kwargs["padding"])
    assert OH >= 1 and OW >= 1
    # Every family and variant where it applies, but not the "numba" dispatcher: it runs one of
    # the variants compared here (the grid tests run it on DISPATCH_CASES).
    for op in CONV_OPS:
        for impl in applicable_impls(op, args, kwargs, fast_variants(op)):
            compare(op, impl, args, kwargs, dtype, seed)
    pool = (1 + seed % min(OH, 3), 1 + seed // 3 % min(OW, 3))  # 1 to 3, at most the output size
    for op in CONV_POOL_OPS:
        pooled = dict(kwargs, pool_size=pool)
        for impl in applicable_impls(op, args, pooled, fast_variants(op)):
            compare(op, impl, args, pooled, dtype, seed)
        y_ref, _ = registry.get(op, "reference").forward(*args, **pooled)  # inference (numba:winograd4: F(4x4))
        for impl in applicable_impls(op, args, pooled, registry.variants(op)):
            y, _ = registry.get(op, impl).forward(*[cast_like(a, dtype) for a in args], **pooled, need_cache=False)
            assert_close(y, y_ref, dtype=dtype, name=f"{op}/{impl} inference forward")


@st.composite
def pool_configs(draw):
    pool = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    H = draw(st.integers(pool[0], 10))
    W = draw(st.integers(pool[1], 10))
    # Explicit padding at most half the pool, as the layers require (no all-padding window).
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same"]),
        st.integers(0, min(pool) // 2),
        st.tuples(st.integers(0, pool[0] // 2), st.integers(0, pool[1] // 2)),
    ))
    return draw(st.integers(1, 3)), H, W, draw(st.integers(1, 3)), pool, stride, padding


@settings(max_examples=60, deadline=None)
@given(config=pool_configs(), kind=st.sampled_from(["normal", "ties", "zeros"]), contiguous=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_pool_agrees_hypothesis(config, kind, contiguous, dtype, seed):
    args, kwargs = pool_case(np.random.default_rng(seed), *config, kind=kind, contiguous=contiguous)
    for op in ("max_pool2d", "avg_pool2d"):
        for impl in fast_impls(op):
            compare(op, impl, args, kwargs, dtype, seed)


@st.composite
def batch(draw, min_rank=2, max_rank=4, scales=(1.0, 5.0)):
    """A float64 input of drawn rank and shape (batch 1 or more), values, and layout."""
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    kind = draw(st.sampled_from(["normal", "ties", "zeros"]))
    x = make_input(np.random.default_rng(draw(st.integers(0, 99))), shape, kind, draw(st.booleans()))
    x *= draw(st.sampled_from(scales))  # in place: a strided view stays strided
    return x


@st.composite
def dense_case(draw):
    N, IN, OUT = (draw(st.integers(1, 6)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    x = make_input(rng, (N, IN), draw(st.sampled_from(["normal", "zeros"])), draw(st.booleans()))
    b = rng.standard_normal(OUT) if draw(st.booleans()) else None
    return (x, rng.standard_normal((IN, OUT)), b), {}


@st.composite
def augment_case(draw, op):
    """An NHWC batch and the op's draws (flips, shifts, crop offsets, angles), as the layers make them."""
    x = draw(batch(4, 4))
    N, H, W, _ = x.shape
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    fill = {"fill_mode": draw(st.sampled_from(["constant", "nearest", "reflect", "wrap"])), "fill_value": 0.5}
    if op == "flip2d":
        return (x,), {"flip": rng.random((N, 2)) < 0.5}
    if op == "translate2d":
        return (x,), {"shift": rng.integers(-2 * H, 2 * H + 1, size=(N, 2)), **fill}
    if op == "rotate2d":
        return (x,), {"angle": rng.uniform(-4.0, 4.0, N), **fill}
    if op == "crop2d":
        size = (draw(st.integers(1, H)), draw(st.integers(1, W)))
        return (x,), {"offset": rng.integers(0, (H - size[0] + 1, W - size[1] + 1), size=(N, 2)), "size": size}
    return (x,), {"padding": tuple(tuple(draw(st.integers(0, 2)) for _ in range(2)) for _ in range(2))}


#: op -> strategy drawing ``(args, kwargs)`` for :func:`compare`; conv and pooling have their own above.
DRAWN_CASES = {
    "relu": batch().map(lambda x: ((x,), {})),
    # sigmoid and tanh cache y: once every |x| in the array exceeds ~7 (sigmoid) or ~4
    # (tanh), 1 - y or 1 - y**2 is below float32's resolution of y and the float32
    # gradient cannot meet 1e-4; arrays with any unsaturated element are fine.
    "sigmoid": batch(scales=(1.0,)).map(lambda x: ((x,), {})),
    "tanh": batch(scales=(1.0,)).map(lambda x: ((x,), {})),
    "softmax": batch().map(lambda x: ((x,), {})),
    "flatten": batch().map(lambda x: ((x,), {})),
    "global_avg_pool2d": batch(4, 4).map(lambda x: ((x,), {})),
    "leaky_relu": st.tuples(batch(), st.sampled_from([0.0, 0.01, 0.3])).map(
        lambda xa: ((xa[0],), {"alpha": xa[1]})),
    "dropout": st.tuples(batch(), st.sampled_from([0.0, 0.1, 0.5, 0.9])).map(
        lambda xr: ((xr[0],), {"rate": xr[1], "rng": None})),
    "dense": dense_case(),
    # At least 4 samples per channel: with 2, training-mode dx is zero up to epsilon's effect,
    # and a norm-wise relative error of rounding noise means nothing.
    "batch_norm": st.tuples(st.sampled_from([(4, 3), (7, 1), (3, 2, 2, 2), (2, 3, 1, 4), (2, 1, 2, 5)]),
                            st.sampled_from(["training", "inference"]), st.booleans(), st.integers(0, 99)).map(
        lambda c: bn_case(np.random.default_rng(c[3]), *c[:3])),
    "add": st.tuples(batch(), st.integers(2, 3)).map(lambda xn: (tuple(xn[0] * (k + 1) for k in range(xn[1])), {})),
    # Rolled and negated copies: sums of both signs, exact zeros among ties.
    "add_relu": st.tuples(batch(), st.integers(2, 3)).map(
        lambda xn: ((xn[0], *(-(k + 1) * np.roll(xn[0], k + 1) for k in range(xn[1] - 1))), {})),
    "concatenate": batch().map(lambda x: ((x, 2 * x[..., :max(1, x.shape[-1] // 2)]), {"axis": x.ndim - 1})),
    **{op: augment_case(op) for op in ("flip2d", "translate2d", "crop2d", "zero_pad2d", "rotate2d")},
}


@pytest.mark.parametrize("op", sorted(DRAWN_CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_other_ops_agree_hypothesis(op, data, dtype, seed):
    args, kwargs = data.draw(DRAWN_CASES[op], label="case")
    for impl in applicable_impls(op, args, kwargs):
        compare(op, impl, args, kwargs, dtype, seed)


# Logit scales up to 10: much wider, a lone confident row's small probabilities
# underflow float32 (exp below -87). The grid covers 30 and 1e4 on 16 rows.
@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 8), K=st.integers(1, 12), scale=st.sampled_from([0.0, 1.0, 5.0, 10.0]),
       contiguous=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_softmax_cross_entropy_agrees_hypothesis(N, K, scale, contiguous, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = make_input(rng, (N, K), contiguous=contiguous)
    logits *= scale
    labels = rng.integers(0, K, size=N)
    for impl in fast_impls("softmax_cross_entropy"):
        compare_loss(impl, logits, labels, dtype)


#: Optimizer updates (in place, no backward): op -> (state arrays, hyperparameter sets).
UPDATE_CASES = {
    "sgd_update": (1, [dict(lr=0.1), dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, scale=0.5),
                       dict(lr=0.05, momentum=0.5, clip=0.3)]),
    "adam_update": (3, [dict(lr=1e-2, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3),
                        dict(lr=1e-2, beta_1=0.8, beta_2=0.99, epsilon=1e-6, step=2, weight_decay=0.1, scale=0.7),
                        dict(lr=1e-2, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=5, decoupled_weight_decay=0.004,
                             clip=0.2, amsgrad=True)]),
    "rmsprop_update": (3, [dict(lr=1e-2, rho=0.9, epsilon=1e-7),
                           dict(lr=1e-2, rho=0.8, epsilon=1e-6, momentum=0.9, centered=True, scale=0.5),
                           dict(lr=1e-2, rho=0.9, epsilon=1e-7, decoupled_weight_decay=0.1, clip=0.2,
                                centered=True)]),
}


def update_state(op, hyper, rng, shape):
    """Positional state arrays for ``op`` with ``hyper`` (None where the variant keeps no such slot)."""
    count = UPDATE_CASES[op][0]
    state = [rng.random(shape) for _ in range(count)]  # v and vmax must be >= 0
    hyper = dict(hyper)
    if op == "sgd_update" and not hyper.get("momentum"):
        state[0] = None
    if op == "adam_update" and not hyper.pop("amsgrad", False):
        state[2] = None
    if op == "rmsprop_update":
        if not hyper.get("momentum"):
            state[1] = None
        if hyper.pop("centered", False):
            state[0] = state[0] + state[2] ** 2  # v >= avg^2, as the running moments keep it
        else:
            state[2] = None
    return state, hyper


@pytest.mark.parametrize("op", sorted(UPDATE_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [7, 70_001])  # the serial and the parallel Numba twin
def test_update_ops_agree(op, dtype, size):
    """Every implementation of an optimizer update against the float64 reference: parameter and state."""
    rng = np.random.default_rng(size)
    for case, hyper in enumerate(UPDATE_CASES[op][1]):
        p, g = rng.standard_normal(size), rng.standard_normal(size)
        state, hyper = update_state(op, hyper, rng, size)
        want = [p.copy()] + [None if a is None else a.copy() for a in state]
        registry.get(op, "reference").forward(want[0], g, *want[1:], **hyper)
        for impl in fast_impls(op):
            got = [p.astype(dtype)] + [None if a is None else a.astype(dtype) for a in state]
            registry.get(op, impl).forward(got[0], g.astype(dtype), *got[1:], **hyper)
            for k, (a, b) in enumerate(zip(got, want)):
                if b is not None:
                    assert a.dtype == dtype
                    assert_close(a, b, dtype=dtype, name=f"{op}/{impl} case {case} array {k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "sparse_categorical_crossentropy"])
def test_losses_with_label_smoothing_and_sample_weights_agree(op, dtype):
    rng = np.random.default_rng(9)
    logits = 3.0 * rng.standard_normal((12, 7))
    outputs = logits if op == "softmax_cross_entropy" else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    outputs[0, :] = [1.0, 0, 0, 0, 0, 0, 0] if op != "softmax_cross_entropy" else outputs[0, :]  # clipped entries
    labels = rng.integers(0, 7, size=12)
    labels[0] = 1
    for kwargs in ({}, {"label_smoothing": 0.1}, {"sample_weight": rng.random(12)},
                   {"label_smoothing": 1.0, "sample_weight": rng.random(12)}):
        loss_ref, d_ref = registry.get(op, "reference").forward(outputs, labels, **kwargs)
        for impl in fast_impls(op):
            loss, d = registry.get(op, impl).forward(outputs.astype(dtype), labels, **kwargs)
            assert isinstance(loss, float) and d.dtype == dtype
            assert abs(loss - loss_ref) <= (1e-10 if dtype == np.float64 else 1e-4) * max(1.0, abs(loss_ref))
            assert_close(d, d_ref, dtype=dtype, name=f"{op}/{impl} {kwargs}")


def test_every_registered_op_is_compared():
    """A newly registered op fails here until it has agreement cases (grid and drawn) above."""
    drawn = set(DRAWN_CASES) | set(CONV_OPS) | set(CONV_POOL_OPS) | set(UPDATE_CASES) | {
        "max_pool2d", "avg_pool2d", "softmax_cross_entropy", "sparse_categorical_crossentropy"}
    assert set(registry.ops()) == drawn


def test_every_op_has_a_reference_and_numpy_entry():
    for op in registry.ops():
        assert {"reference", "numpy"} <= set(registry.implementations(op)), op
