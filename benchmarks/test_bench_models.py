"""End to end: one training step and one inference pass of each preset, per implementation.

``impl=`` selects the implementation for every layer (ops without a Numba
kernel fall back to NumPy inside ``impl="numba"``). The reference runs only for
tutorial_cnn (a step takes seconds; for mnist_cnn and vgg_mini, minutes) and
not at batch 1000. Groups are named like the PyTorch peer benchmarks'
(benchmarks/test_bench_torch.py), so the table reads fastcnn against PyTorch.

Checks: training steps are timed back to back, as PyTorch's are in
benchmarks/test_bench_torch.py (restoring a state before each timed step
would leave the weights out of cache for fastcnn alone); then the model is
restored to the state S1 and the same ``train_on_batch`` takes one more step,
whose loss and every gradient must agree with a float64 step from S1 (see
benchmarks/_presets.py). Predictions must agree with a float64 model holding
the same weights. Both within ``fastcnn.testing.RTOL[float32]``.
"""

import numpy as np
import pytest

from fastcnn.testing import assert_close, max_rel_error

from benchmarks import _presets
from benchmarks._common import BATCH, BIG_BATCH, PRESET_LAYERS, PRESETS, model_gflop, run_info, warm_up

#: Timed rounds of a training step (each from the restored state S1).
TRAIN_ROUNDS = 20
IMPLS = ("reference", "numpy", "numba")


def train_group(preset, n):
    return f"{preset} train_on_batch, batch {n}"


def predict_group(preset, n):
    return f"{preset} predict, batch {n}"


def params(batches):
    out = []
    for preset in PRESETS:
        for n in batches:
            for impl in IMPLS:
                marks = ()
                if impl == "reference" and (preset not in _presets.REFERENCE_PRESETS or n > 64):
                    marks = pytest.mark.skip(reason="reference too slow: minutes per call")
                out.append(pytest.param(preset, n, impl, id=f"{preset}-batch{n}-{impl}", marks=marks))
    return out


def record(benchmark, group, preset, n, impl, training):
    benchmark.group = group
    benchmark.extra_info.update(run_info(impl))
    benchmark.extra_info.update(
        kind="model", preset=preset, batch=n, task="train_on_batch" if training else "predict",
        gflop=model_gflop(PRESET_LAYERS[preset], n, training=training), gemm_like=True,
        dtype="float32",
    )


@pytest.mark.parametrize("preset,n,impl", params([BATCH]))
def test_train_step(benchmark, preset, n, impl):
    x, y = _presets.batch(n)
    model = _presets.build(preset, impl)
    state = _presets.state_after_one_step(preset, n)
    if impl != "reference":
        warm_up(lambda: model.train_on_batch(x, y))  # JIT, buffers, optimizer slots, thread trials

    record(benchmark, train_group(preset, n), preset, n, impl, training=True)
    _presets.restore(model, state)
    benchmark.pedantic(model.train_on_batch, args=(x, y), rounds=1 if impl == "reference" else TRAIN_ROUNDS,
                       iterations=1)
    truth_impl, truth_loss, truth_grads, flips = _presets.train_truth_for(model, preset, n)  # leaves S1
    loss = model.train_on_batch(x, y)  # the step the check below is about: from S1
    got = _presets.grads(model)
    assert_close(np.float64(loss), truth_loss, dtype=np.float32, name=f"{preset}/{impl} loss")
    for name, g in got.items():
        assert g.dtype == np.float32
        assert_close(g, truth_grads[name], dtype=np.float32, name=f"{preset}/{impl} gradient {name}")
    worst = max(max_rel_error(g, truth_grads[k]) for k, g in got.items())
    signs = f", the float32 step's signs at {flips} ReLU input(s) within rounding of 0" if flips else ""
    benchmark.extra_info["check"] = f"float64 {truth_impl} step from the same state{signs}: max rel error {worst:.1e}"


PREDICT_BATCHES = [BATCH] + ([BIG_BATCH] if BIG_BATCH else [])


@pytest.mark.parametrize("preset,n,impl", params(PREDICT_BATCHES))
def test_predict(benchmark, preset, n, impl):
    x, _ = _presets.batch(n)
    model = _presets.build(preset, impl)
    model.set_weights(_presets.initial_weights(preset))

    record(benchmark, predict_group(preset, n), preset, n, impl, training=False)
    if impl == "reference":
        probs = benchmark.pedantic(model.predict, args=(x,), kwargs={"batch_size": n}, rounds=1, iterations=1)
    else:
        warm_up(lambda: model.predict(x, batch_size=n))
        probs = benchmark(model.predict, x, batch_size=n)

    truth_impl, truth = _presets.predict_truth(preset, n)
    assert probs.dtype == np.float32 and probs.shape == (n, 10)
    assert_close(probs, truth, dtype=np.float32, name=f"{preset}/{impl} predict")
    benchmark.extra_info["check"] = (
        f"float64 {truth_impl}, same weights: max rel error {max_rel_error(probs, truth):.1e}"
    )



@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_predict_batchnorm_folding(benchmark, fold):
    """resnet_mini prediction with BatchNormalization folded into the convolutions and without.

    From the state after one training step (moving statistics away from 0 and 1);
    the check: both ways agree to the float32 tolerance.
    """
    preset, n, impl = "resnet_mini", BATCH, "numba"
    x, _ = _presets.batch(n)
    model = _presets.build(preset, impl)
    _presets.restore(model, _presets.state_after_one_step(preset, n))
    other = model.predict(x, batch_size=n, fold=not fold)
    warm_up(lambda: model.predict(x, batch_size=n, fold=fold))

    record(benchmark, f"{preset} predict, batch {n}, BatchNormalization folding", preset, n, impl, training=False)
    benchmark.extra_info["fold"] = fold
    probs = benchmark(model.predict, x, batch_size=n, fold=fold)
    assert_close(probs, other, dtype=np.float32, name=f"{preset} predict fold={fold}")
    benchmark.extra_info["check"] = f"folded vs unfolded: max rel error {max_rel_error(probs, other):.1e}"
