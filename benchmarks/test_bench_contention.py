"""The presets' training step and batch prediction in turns with PyTorch, on a quiet machine and
while other processes keep every core busy.

Each cell runs once quiet (rows taking turns in blocks, see QUIET_BLOCK; with
prediction at batch 1000 too: the cells of the every-CPU issue's table, compared
in turns so that the machine's drift falls on every row alike), then once under
this module's own load: one process per usable core spinning in a Python loop,
started before the first loaded cell and killed after the last (a module
fixture; each spinner also stops by itself after :data:`LOAD_MAX_S`).
``FASTCNN_BENCH_LOAD=N`` runs only the cells under N spinning processes (0: only
the quiet ones). Each cell is run four ways, interleaved round by round
(in a shuffled order) under the same load (the load drifts over seconds, so rows timed one after the
other would compare different loads): fastcnn's default (the adaptive thread
count of :func:`fastcnn.parallel.adaptive`), fastcnn fixed to one thread,
fastcnn fixed to ``THREADS`` threads (the default before the adaptive policy),
and PyTorch with ``THREADS`` threads (left out when PyTorch is not installed).
pytest-benchmark times the default; the medians of the other three, timed in
the same rounds, are in the row's ``extra_info["interleaved"]``, which
``python -m fastcnn.benchreport`` puts beside it.

The default is warmed up with as many untimed calls as its tuner needs for its
first trials of each count (the first steps of any ``fit``); its timed rounds
include the re-checks the tuner makes. Checks as in
benchmarks/test_bench_models.py: after timing, one more training step from the
state S1 must agree with a float64 step from S1, and predictions with a float64
model holding the same weights.
"""

import math
import os
import random
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from fastcnn import parallel
from fastcnn.testing import assert_close, max_rel_error

from benchmarks import _presets
from benchmarks._common import (BATCH, BIG_BATCH, PRESET_LAYERS, PRESETS, SMALL, THREADS, model_gflop, run_info,
                               warm_up)

#: Timed rounds per row (at least).
ROUNDS = 2 if SMALL else 30
#: Under load, each row runs at least this many seconds of timed calls (more rounds for short
#: calls): a loaded row's times fall into two groups (a call fits in its time slice or waits out
#: a spinning process's whole one), and the mean of 30 calls of a few milliseconds is off by 10%
#: by chance alone (tutorial_cnn's training step under two spinners: 35% of calls about 2 ms, the
#: rest about 6.5 ms; simulated, the mean of 30 such calls is 10% above the true mean one time in
#: ten, of 600 calls 3%). The rows' standard errors are recorded (``extra_info["stderr"]``).
LOAD_ROW_S = 0.0 if SMALL else 4.0
#: The smoke run (FASTCNN_BENCH_SMALL) keeps to the smallest preset: it only proves the machinery.
CELL_PRESETS = ("tutorial_cnn",) if SMALL else PRESETS
#: The loads the cells run under, quiet first: no background process, then one per usable
#: core; ``FASTCNN_BENCH_LOAD=N`` runs only N (0: only the quiet cells).
LOADS = ((int(os.environ["FASTCNN_BENCH_LOAD"].strip()),) if os.environ.get("FASTCNN_BENCH_LOAD", "").strip()
         else (0, len(os.sched_getaffinity(0))))
#: Quiet cells (no load): rows take turns in blocks of QUIET_BLOCK timed calls, each block after
#: QUIET_SETTLE untimed calls, rather than call by call: interleaved call by call in one process,
#: fastcnn and PyTorch slow each other down (each one's idle workers spin for a while after its
#: call, and take the cores from the other's next call). Blocks still alternate every second
#: or so, so a drift of the machine's speed (seen on shared VMs: 5.6 ms and 9.5 ms for the same
#: prediction a minute apart) falls on every row alike. Loaded cells go call by call.
QUIET_BLOCK, QUIET_SETTLE = (2, 1) if SMALL else (10, 3)
#: Blocks per row in a quiet cell.
BLOCK_ROUNDS = 1 if SMALL else 6
#: No spinner outlives this many seconds, whatever happens to this process.
LOAD_MAX_S = 60 if SMALL else 1800
#: Rows of each cell (one round runs each once, in an order shuffled from round to round: a
#: call runs while the previous one's idle pool threads may still spin, so each row follows
#: each other row about equally often).
VARIANTS = ("default", "one-thread", "all-threads", "torch")
IMPL_OF = {"default": "numba", "one-thread": "numba-1", "all-threads": "numba-all", "torch": "torch"}

_SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


class _Spinners:
    """The background load: :meth:`run` keeps exactly ``n`` spinning processes alive."""

    def __init__(self):
        self.procs = []

    def run(self, n):
        if len(self.procs) == n and all(p.poll() is None for p in self.procs):
            return
        self.stop()
        for _ in range(n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(LOAD_MAX_S)],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        if self.procs:
            time.sleep(0.2)  # let them start spinning
        assert all(p.poll() is None for p in self.procs), "a background load process exited at once"

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


@pytest.fixture(scope="module")
def spinners():
    """The module's background load (none until a loaded cell asks); always killed at the end."""
    load = _Spinners()
    try:
        yield load
    finally:
        load.stop()


def group(preset, task, n, load):
    where = f"{load} busy processes" if load else "quiet, interleaved"
    return f"{preset} {task}, batch {n}, {where}"


def record(benchmark, preset, task, n, variant, load, torch=False):
    benchmark.group = group(preset, task, n, load)
    benchmark.extra_info.update(run_info(IMPL_OF[variant], torch=torch))
    benchmark.extra_info.update(
        kind="contention", preset=preset, batch=n, task=task, variant=variant, load_processes=load,
        gflop=model_gflop(PRESET_LAYERS[preset], n, training=task == "train_on_batch"), gemm_like=True,
        dtype="float32", thread_policy="%s %d" % parallel.thread_policy(),
    )


@pytest.fixture
def restore_policy():
    """The default thread policy, with Numba and BLAS as the session set them, after each cell."""
    before = numba.get_num_threads()
    parallel.reset_num_threads()
    yield
    parallel.set_num_threads(before)
    parallel.reset_num_threads()


def cells():
    """(load, preset, task, batch), quiet cells first: training and prediction at BATCH; quiet,
    also prediction at BIG_BATCH (the cells of the every-CPU issue's table)."""
    params = []
    for load in LOADS:
        tasks = [("train_on_batch", BATCH), ("predict", BATCH)]
        if not load and BIG_BATCH:
            tasks.append(("predict", BIG_BATCH))
        tag = f"load{load}" if load else "quiet"
        params += [pytest.param(load, preset, task, n, id=f"{tag}-{preset}-{task}-{n}")
                   for preset in CELL_PRESETS for task, n in tasks]
    return params


def fastcnn_call(preset, task, variant, n):
    """``(call, check)`` for one fastcnn row: ``call()`` runs one step or prediction under
    ``variant``'s thread policy; ``check()`` compares a step from S1 (or the predictions)
    with float64 afterwards and returns the worst relative error."""
    x, y = _presets.batch(n)
    model = _presets.build(preset, "numba")
    count = {"one-thread": 1, "all-threads": min(THREADS, parallel.max_num_threads())}.get(variant)

    def policy():
        if count is None:
            parallel.reset_num_threads()
        else:
            parallel.set_num_threads(count)

    if task == "predict":
        model.set_weights(_presets.initial_weights(preset))
        out = {}

        def call():
            policy()
            out["probs"] = model.predict(x, batch_size=n)

        def check():
            probs = out["probs"]
            truth_impl, truth = _presets.predict_truth(preset, n)
            assert probs.dtype == np.float32 and probs.shape == (n, 10)
            assert_close(probs, truth, dtype=np.float32, name=f"{preset}/{variant} predict under load")
            return max_rel_error(probs, truth)
    else:
        state = _presets.state_after_one_step(preset, n)

        def call():
            policy()
            model.train_on_batch(x, y)

        def check():
            policy()
            _, truth_loss, truth_grads, _ = _presets.train_truth_for(model, preset, n)  # leaves S1
            loss = model.train_on_batch(x, y)
            assert_close(np.float64(loss), truth_loss, dtype=np.float32, name=f"{preset}/{variant} loss under load")
            got = _presets.grads(model)
            for name, g in got.items():
                assert_close(g, truth_grads[name], dtype=np.float32,
                             name=f"{preset}/{variant} gradient {name} under load")
            return max(max_rel_error(g, truth_grads[k]) for k, g in got.items())
    warm_up(call)  # compilation and buffers, and the default's tuner's first trials
    if task != "predict":
        _presets.restore(model, state)
    return call, check


@pytest.mark.parametrize("load,preset,task,n", cells())
def test_under_load(benchmark, spinners, restore_policy, load, preset, task, n):
    """One cell: the default, one thread, all threads and PyTorch, interleaved round by round
    (the load drifts over seconds: rows timed one after the other compare different loads;
    on a quiet machine the rows take turns in blocks, see QUIET_BLOCK).
    pytest-benchmark times the default; the others' medians are in ``extra_info["interleaved"]``,
    and under load every row's mean in ``extra_info["means"]``."""
    spinners.run(load)
    block, settle = (1, 0) if load else (QUIET_BLOCK, QUIET_SETTLE)
    others = {variant: fastcnn_call(preset, task, variant, n) for variant in ("one-thread", "all-threads")}
    torch_pair = torch_call(preset, task, n)
    if torch_pair is not None:
        others["torch"] = torch_pair
    default_call, default_check = fastcnn_call(preset, task, "default", n)
    times = {variant: [] for variant in others}
    order = ["default", *others]  # shuffled every round (seeded): each row follows each other row
    shuffle = random.Random(0).shuffle  # about equally often (a rotation would keep the cyclic order)

    calls = {"default": 0}

    def run(variants):
        for variant in variants:
            for _ in range(settle):
                others[variant][0]()
            for _ in range(block):
                start = time.perf_counter()
                others[variant][0]()
                times[variant].append(time.perf_counter() - start)
        parallel.reset_num_threads()

    def before_default():  # pytest-benchmark's untimed setup and teardown around each timed default call
        if calls["default"] % block == 0:  # the default's block starts
            shuffle(order)
            run(order[:order.index("default")])
            for _ in range(settle):
                default_call()
        calls["default"] += 1

    def after_default():
        if calls["default"] % block == 0:  # the default's block is over
            run(order[order.index("default") + 1:])

    record(benchmark, preset, task, n, "default", load)
    rounds = block * BLOCK_ROUNDS
    if load:
        start = time.perf_counter()
        for _ in range(3):
            others["one-thread"][0]()
        rounds = max(ROUNDS, math.ceil(LOAD_ROW_S * 3 / (time.perf_counter() - start)))
        parallel.reset_num_threads()
    benchmark.extra_info["rounds"] = rounds
    benchmark.pedantic(default_call, setup=before_default, teardown=after_default, rounds=rounds, iterations=1)
    # (none under --benchmark-disable, which runs the default once without setup and teardown)
    benchmark.extra_info["interleaved"] = {IMPL_OF[v]: float(np.median(t)) for v, t in times.items() if t}
    if load and times["one-thread"] and benchmark.stats is not None:
        # Means too: under load each row's times fall into two groups (a call fits in its time slice
        # or waits out a spinner's whole one), a median of them lands in either, and the mean is what
        # a run of many calls costs (fastcnn.parallel._typical).
        means = {IMPL_OF[v]: float(np.mean(t)) for v, t in times.items() if t}
        benchmark.extra_info["means"] = {"numba": float(benchmark.stats.stats.mean), **means}
        stderr = {IMPL_OF[v]: float(np.std(t, ddof=1) / math.sqrt(len(t))) for v, t in times.items() if len(t) > 1}
        stats = benchmark.stats.stats
        if stats.rounds > 1:
            stderr["numba"] = float(stats.stddev / math.sqrt(stats.rounds))
        benchmark.extra_info["stderr"] = stderr  # of each row's mean
    checks = {variant: check() for variant, (_, check) in others.items()}
    checks["default"] = default_check()
    benchmark.extra_info["check"] = "; ".join(f"{v}: max rel error {e:.1e}" for v, e in checks.items())


def torch_call(preset, task, n):
    """``(call, check)`` for PyTorch on ``THREADS`` threads (set for each call), or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    from benchmarks import test_bench_torch as peer_module

    model, net, _, _ = peer_module.peer(preset)
    x, y = _presets.batch(n)
    xt, yt = peer_module.nchw(x), torch.from_numpy(y)
    out = {}
    if task == "predict":
        net.eval()

        def run():
            with torch.inference_mode():
                out["probs"] = torch.softmax(net(xt), dim=1).numpy()

        def check():
            _, truth = _presets.predict_truth(preset, n)
            assert_close(out["probs"], truth, dtype=np.float32, name=f"{preset}/torch predict under load")
            return max_rel_error(out["probs"], truth)
    else:
        net.train()
        optimizer = peer_module.torch_optimizer(model, net)
        loss_fn = torch.nn.CrossEntropyLoss()

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt), yt)
            loss.backward()
            optimizer.step()
            out["loss"] = loss.item()

        def check():  # the step itself is checked in test_bench_torch.py
            assert np.isfinite(out["loss"])
            return 0.0

    def call():
        before = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        try:
            run()
        finally:
            torch.set_num_threads(before)

    call()  # warm up
    return call, check
