"""The op registry: what ``impl="auto"`` resolves to, for single ops and for whole presets."""

import pytest

from fastcnn import models, registry

#: The ops issue 4 gave Numba kernels (a kernel stays only while it beats NumPy).
NUMBA_OPS = {"conv2d", "max_pool2d", "avg_pool2d", "relu", "softmax_cross_entropy"}


@pytest.fixture
def no_impl_override(monkeypatch):
    monkeypatch.delenv("FASTCNN_IMPL", raising=False)


def with_numba():
    return {op for op in registry.ops() if "numba" in registry.implementations(op)}


def test_auto_picks_numba_exactly_where_registered(no_impl_override):
    assert NUMBA_OPS <= with_numba()
    for op in registry.ops():
        expected = "numba" if op in with_numba() else "numpy"
        assert registry.resolve(op, "auto") == expected, op
        assert registry.get(op).impl == expected, op


def test_numba_falls_back_to_numpy_only_where_no_kernel_exists():
    for op in registry.ops():
        expected = "numba" if op in with_numba() else "numpy"
        assert registry.resolve(op, "numba") == expected, op


@pytest.mark.parametrize("preset", list(models.PRESETS))
def test_presets_built_with_auto_run_the_numba_kernels(no_impl_override, preset):
    model = models.PRESETS[preset](seed=0)
    used = {(layer.op, layer.resolved_impl) for layer in model.layers if getattr(layer, "op", None)}
    assert used, preset
    for op, impl in used:
        assert impl == ("numba" if op in with_numba() else "numpy"), (preset, op)
    assert any(impl == "numba" for _, impl in used)
    assert model._loss_op.impl == "numba"
