"""The presets on a busy machine: a training step and a batch prediction while other processes
keep every core busy.

The load is this module's own: one process per usable core spinning in a
Python loop, started before the first benchmark here and killed after the last
(a module fixture; each spinner also stops by itself after
:data:`LOAD_MAX_S`). Each cell is run three ways, back to back under the same
load: fastcnn's default (the adaptive thread count of
:func:`fastcnn.parallel.adaptive`), fastcnn fixed to one thread, fastcnn fixed
to ``THREADS`` threads (the default before the adaptive policy), and PyTorch
with ``THREADS`` threads (skipped when PyTorch is not installed).

The default is warmed up with as many untimed calls as its tuner needs for its
first trials of each count (the first steps of any ``fit``); its timed rounds
include the re-checks the tuner makes. Checks as in
benchmarks/test_bench_models.py: after timing, one more training step from the
state S1 must agree with a float64 step from S1, and predictions with a float64
model holding the same weights.
"""

import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from fastcnn import parallel
from fastcnn.testing import assert_close, max_rel_error

from benchmarks import _presets
from benchmarks._common import BATCH, PRESET_LAYERS, PRESETS, SMALL, THREADS, model_gflop, run_info

#: Timed rounds per row.
ROUNDS = 2 if SMALL else 15
#: The smoke run (FASTCNN_BENCH_SMALL) keeps to the smallest preset: it only proves the machinery.
CELL_PRESETS = ("tutorial_cnn",) if SMALL else PRESETS
#: Background processes: one per usable core.
LOAD_PROCESSES = len(os.sched_getaffinity(0))
#: No spinner outlives this many seconds, whatever happens to this process.
LOAD_MAX_S = 60 if SMALL else 1800
#: Rows of each cell, in the order they run.
VARIANTS = ("default", "one-thread", "all-threads", "torch")
IMPL_OF = {"default": "numba", "one-thread": "numba-1", "all-threads": "numba-all", "torch": "torch"}

_SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@pytest.fixture(scope="module")
def background_load():
    """``LOAD_PROCESSES`` spinning processes for the duration of this module; always killed."""
    procs = []
    try:
        for _ in range(LOAD_PROCESSES):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(LOAD_MAX_S)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        time.sleep(0.2)  # let them start spinning
        assert all(p.poll() is None for p in procs), "a background load process exited at once"
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def group(preset, task, n):
    return f"{preset} {task}, batch {n}, {LOAD_PROCESSES} busy processes"


def record(benchmark, preset, task, n, variant, torch=False):
    benchmark.group = group(preset, task, n)
    benchmark.extra_info.update(run_info(IMPL_OF[variant], torch=torch))
    benchmark.extra_info.update(
        kind="contention", preset=preset, batch=n, task=task, variant=variant, load_processes=LOAD_PROCESSES,
        gflop=model_gflop(PRESET_LAYERS[preset], n, training=task == "train_on_batch"), gemm_like=True,
        dtype="float32", thread_policy="%s %d" % parallel.thread_policy(),
    )


@pytest.fixture
def policy(request):
    """The thread policy a row runs under; the default policy is back after it."""
    variant = request.param
    before = numba.get_num_threads()
    parallel.reset_num_threads()
    if variant == "one-thread":
        parallel.set_num_threads(1)
    elif variant == "all-threads":
        parallel.set_num_threads(min(THREADS, parallel.max_num_threads()))
    yield variant
    parallel.set_num_threads(before)  # Numba and BLAS as the session set them
    parallel.reset_num_threads()


def cells():
    out = []
    for preset in CELL_PRESETS:
        for task in ("train_on_batch", "predict"):
            for variant in VARIANTS:
                out.append(pytest.param(preset, task, variant, id=f"{preset}-{task}-{variant}"))
    return out


def warmup_calls(variant):
    """Untimed calls before timing: compilation and buffers, and the tuner's first trials."""
    return 1 + 2 * parallel.SAMPLES if variant == "default" else 1


@pytest.mark.parametrize("preset,task,policy", cells(), indirect=["policy"])
def test_under_load(benchmark, background_load, preset, task, policy):
    if policy == "torch":
        return torch_under_load(benchmark, preset, task)
    n = BATCH
    x, y = _presets.batch(n)
    model = _presets.build(preset, "numba")
    record(benchmark, preset, task, n, policy)
    if task == "predict":
        model.set_weights(_presets.initial_weights(preset))
        for _ in range(warmup_calls(policy)):
            model.predict(x, batch_size=n)
        probs = benchmark.pedantic(model.predict, args=(x,), kwargs={"batch_size": n}, rounds=ROUNDS, iterations=1)
        truth_impl, truth = _presets.predict_truth(preset, n)
        assert probs.dtype == np.float32 and probs.shape == (n, 10)
        assert_close(probs, truth, dtype=np.float32, name=f"{preset}/{policy} predict under load")
        benchmark.extra_info["check"] = f"float64 {truth_impl}, same weights: max rel error " \
                                        f"{max_rel_error(probs, truth):.1e}"
        return
    state = _presets.state_after_one_step(preset, n)
    for _ in range(warmup_calls(policy)):
        model.train_on_batch(x, y)
    _presets.restore(model, state)
    benchmark.pedantic(model.train_on_batch, args=(x, y), rounds=ROUNDS, iterations=1)
    _presets.restore(model, state)
    loss = model.train_on_batch(x, y)
    truth_impl, truth_loss, truth_grads = _presets.train_truth(preset, n)
    got = _presets.grads(model)
    assert_close(np.float64(loss), truth_loss, dtype=np.float32, name=f"{preset}/{policy} loss under load")
    for name, g in got.items():
        assert_close(g, truth_grads[name], dtype=np.float32, name=f"{preset}/{policy} gradient {name} under load")
    worst = max(max_rel_error(g, truth_grads[k]) for k, g in got.items())
    benchmark.extra_info["check"] = f"float64 {truth_impl} step from the same state: max rel error {worst:.1e}"


def torch_under_load(benchmark, preset, task):
    torch = pytest.importorskip("torch")
    from benchmarks import test_bench_torch as peer_module

    n = BATCH
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        model, net, _, _ = peer_module.peer(preset)
        x, y = _presets.batch(n)
        xt, yt = peer_module.nchw(x), torch.from_numpy(y)
        if task == "predict":
            net.eval()

            def call():
                with torch.inference_mode():
                    return torch.softmax(net(xt), dim=1).numpy()
        else:
            net.train()
            optimizer = peer_module.torch_optimizer(model, net)
            loss_fn = torch.nn.CrossEntropyLoss()

            def call():
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(xt), yt)
                loss.backward()
                optimizer.step()
                return loss.item()

        call()  # warm up
        record(benchmark, preset, task, n, "torch", torch=True)
        out = benchmark.pedantic(call, rounds=ROUNDS, iterations=1)
        if task == "predict":
            truth_impl, truth = _presets.predict_truth(preset, n)
            assert_close(out, truth, dtype=np.float32, name=f"{preset}/torch predict under load")
            benchmark.extra_info["check"] = f"float64 fastcnn {truth_impl}, same weights: max rel error " \
                                            f"{max_rel_error(out, truth):.1e}"
        else:
            assert np.isfinite(out)
            benchmark.extra_info["check"] = "finite loss (the step itself is checked in test_bench_torch.py)"
    finally:
        torch.set_num_threads(before)
