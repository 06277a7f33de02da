"""Augmentation: each layer's training forward per implementation, and its cost in a training step.

- ``test_augment_layer``: one group per layer, ``layer.forward`` on a batch of
  28x28x1 images in training mode (the per-batch draws included), one row per
  implementation. Checked: the op on the same draws is bit-equal to the reference.
- ``test_train_step_augmented``: mnist_cnn's ``train_on_batch`` behind the usual
  augmentation front (ZeroPadding2D(2), RandomCrop(28, 28), RandomFlip,
  RandomTranslation(0.1, 0.1)); read it beside the group "mnist_cnn
  train_on_batch, batch N" of benchmarks/test_bench_models.py: the difference is
  what augmentation adds to a step. Checked: the step's loss and gradients agree
  with the NumPy implementation's on the same draws.
"""

import numpy as np
import pytest

from fastcnn import layers as L, models, registry
from fastcnn.testing import assert_close, max_rel_error

from benchmarks import _presets
from benchmarks._common import BATCH, IMPL_ORDER, PRESET_LAYERS, model_gflop, run_info, warm_up

LAYERS = {
    "RandomFlip": lambda impl: L.RandomFlip("horizontal_and_vertical", impl=impl),
    "RandomTranslation": lambda impl: L.RandomTranslation(0.1, 0.1, impl=impl),
    "RandomRotation": lambda impl: L.RandomRotation(0.05, impl=impl),
    "RandomCrop": lambda impl: L.RandomCrop(24, 24, impl=impl),
    "ZeroPadding2D": lambda impl: L.ZeroPadding2D(2, impl=impl),
}


def layer_params():
    out = []
    for name, make in LAYERS.items():
        for impl in sorted(registry.implementations(make("auto").op), key=IMPL_ORDER.index):
            out.append(pytest.param(name, impl, id=f"{name}-{impl}"))
    return out


@pytest.mark.parametrize("name,impl", layer_params())
def test_augment_layer(benchmark, name, impl):
    x, _ = _presets.batch(BATCH)
    layer = LAYERS[name](impl).build(x.shape[1:], x.dtype, rng=np.random.default_rng(0))
    benchmark.group = f"{name} training forward, batch {BATCH}: {x.shape}"
    benchmark.extra_info.update(run_info(impl))
    benchmark.extra_info.update(kind="op", op=layer.op, direction="forward", dtype="float32", gflop=0.0,
                                gemm_like=False)
    if impl == "reference":
        benchmark.pedantic(layer.forward, args=(x,), rounds=1, iterations=1)
    else:
        layer.forward(x)  # warm up
        benchmark(layer.forward, x)

    draws = layer.draw(BATCH) if hasattr(layer, "draw") else {"padding": layer.padding}
    y, _ = registry.get(layer.op, impl).forward(x, **draws)
    truth, _ = registry.get(layer.op, "reference").forward(x, **draws)
    np.testing.assert_array_equal(y, truth)
    benchmark.extra_info["check"] = "the reference on the same draws: bit-equal"


def augmented(impl):
    front = [L.ZeroPadding2D(2, impl=impl), L.RandomCrop(28, 28, impl=impl), L.RandomFlip("horizontal", impl=impl),
             L.RandomTranslation(0.1, 0.1, impl=impl)]
    base = models.mnist_cnn(seed=0, impl=impl)
    model = type(base)(front + base.layers, input_shape=(28, 28, 1), seed=0)
    return model.compile(base.optimizer, base.loss, loss_impl=impl)


def test_train_step_augmented(benchmark):
    x, y = _presets.batch(BATCH)
    model = augmented("numba")
    warm_up(lambda: model.train_on_batch(x, y))
    benchmark.group = f"mnist_cnn train_on_batch + augmentation, batch {BATCH}"
    benchmark.extra_info.update(run_info("numba"))
    benchmark.extra_info.update(kind="model", preset="mnist_cnn", batch=BATCH, task="train_on_batch",
                                gflop=model_gflop(PRESET_LAYERS["mnist_cnn"], BATCH, training=True),
                                gemm_like=True, dtype="float32")
    benchmark.pedantic(model.train_on_batch, args=(x, y), rounds=10, iterations=1)

    fast, slow = augmented("numba"), augmented("numpy")  # same seed: same weights and draws
    losses = [m.train_on_batch(x, y) for m in (fast, slow)]
    assert_close(np.float64(losses[0]), np.float64(losses[1]), dtype=np.float32, name="loss")
    worst = 0.0
    for (name, _, g), (_, _, h) in zip(fast.params(), slow.params()):
        assert_close(g, h, dtype=np.float32, name=f"gradient {name}")
        worst = max(worst, max_rel_error(g, h))
    benchmark.extra_info["check"] = f"the NumPy step on the same draws: max rel error {worst:.1e}"
