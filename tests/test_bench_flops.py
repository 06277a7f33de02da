"""The FLOP counts behind the benchmarks' GFLOP/s and % of matmul peak (benchmarks/_common.py)."""

import pytest

from fastcnn import layers as L
from fastcnn import models

from benchmarks import _common, test_bench_ops


def gemm_layers(model):
    """``("conv", OH, OW, KH, KW, C, F)`` / ``("dense", IN, OUT)`` read off a built model's layers."""
    specs = []
    for layer in model.layers:
        if isinstance(layer, L.Conv2D):
            OH, OW, F = layer.output_shape
            specs.append(("conv", OH, OW, *layer.kernel_size, layer.input_shape[2], F))
        elif isinstance(layer, L.Dense):
            specs.append(("dense", layer.input_shape[0], layer.units))
    return specs


@pytest.mark.parametrize("preset", list(models.PRESETS))
def test_preset_layer_table_matches_the_presets(preset):
    assert _common.PRESET_LAYERS[preset] == gemm_layers(models.PRESETS[preset](seed=0))


def test_model_gflop_counts_2_flops_per_multiply_add_and_training_as_3_forwards():
    # mnist_cnn at batch 1: 2*OH*OW*KH*KW*C*F per conv, 2*IN*OUT per dense.
    forward = (2 * 26 * 26 * 9 * 1 * 32 + 2 * 24 * 24 * 9 * 32 * 64 + 2 * 9216 * 128 + 2 * 128 * 10) / 1e9
    layers = _common.PRESET_LAYERS["mnist_cnn"]
    assert _common.model_gflop(layers, 1, training=False) == pytest.approx(forward)
    assert _common.model_gflop(layers, 64, training=False) == pytest.approx(64 * forward)
    assert _common.model_gflop(layers, 64, training=True) == pytest.approx(3 * 64 * forward)


def test_op_benchmark_gemm_flops():
    cases = {(c.op, c.direction, c.where): c for c in test_bench_ops.conv_cases(64)}
    conv2 = 2 * 64 * 24 * 24 * 3 * 3 * 32 * 64  # mnist_cnn conv2, batch 64
    assert cases["conv2d", "forward", "mnist_cnn conv2"].gflop == pytest.approx(conv2 / 1e9)
    assert cases["conv2d", "backward", "mnist_cnn conv2"].gflop == pytest.approx(2 * conv2 / 1e9)  # dx and dw
    same = 2 * 64 * 28 * 28 * 3 * 3 * 32 * 32  # vgg_mini conv2, "same" keeps 28x28
    assert cases["conv2d", "forward", "vgg_mini conv2"].gflop == pytest.approx(same / 1e9)
    dense = {(c.direction, c.where): c for c in test_bench_ops.dense_cases(64)}
    assert dense["forward", "mnist_cnn dense1"].gflop == pytest.approx(2 * 64 * 9216 * 128 / 1e9)
    assert dense["backward", "mnist_cnn dense1"].gflop == pytest.approx(4 * 64 * 9216 * 128 / 1e9)


def test_the_train_check_takes_the_float32_relu_signs_where_they_differ(monkeypatch):
    """``_presets.train_truth_for``: with every sign as float64's it is the plain truth; where a
    float32 step's ReLU input fell on the other side of zero (faked here: one sign flipped),
    the float64 step follows the float32 sign, and that one element alone moves the gradients
    by more than the 1e-4 tolerance."""
    import numpy as np

    from benchmarks import _presets
    from fastcnn.testing import max_rel_error

    x, _ = _presets.batch(8)
    model = _presets.build("mnist_cnn", "numpy")  # float32
    impl, loss, grads, flips = _presets.train_truth_for(model, "mnist_cnn", 8)
    assert flips == 0 and (impl, loss) == _presets.train_truth("mnist_cnn", 8)[:2]

    real = _presets.relu_signs
    t, mask = max(real(model, x).items(), key=lambda kv: kv[1].size)
    flipped = mask.copy()
    flipped.flat[np.flatnonzero(mask)[0]] = False  # one positive input read as negative

    def signs(m, xx):
        out = real(m, xx)
        if m.dtype == np.float32:
            out[t] = flipped
        return out

    monkeypatch.setattr(_presets, "relu_signs", signs)
    _, loss2, grads2, flips = _presets.train_truth_for(model, "mnist_cnn", 8)
    assert flips == 1
    assert max(max_rel_error(g, grads[k]) for k, g in grads2.items()) > 1e-4
    model.train_on_batch(*_presets.batch(8))  # the float32 step itself still agrees with the plain truth
    assert max(max_rel_error(g, grads[k]) for k, g in _presets.grads(model).items()) < 1e-4
