"""Data-parallel training on MPI (fastcnn.distributed).

The distributed runs are ``mpiexec -n 2`` / ``-n 3`` subprocesses of
``tests/_mpi_worker.py`` (one thread per rank; 3 ranks on 2 cores oversubscribe,
which is fine for correctness). The single-process runs they are compared with
run in this process first, which also fills Numba's on-disk cache the ranks load.

Tolerance: N ranks sum the same per-sample gradients grouped differently (each
rank's partial sum, then the allreduce) and scale the loss gradient by
``n_r / n`` instead of dividing by ``n``, so the weights after an epoch agree
with one process to float32 rounding: ``rtol=1e-4, atol=1e-6`` (the largest
difference seen is ~3e-7 on weights of magnitude ~0.5). The ranks themselves
hold bit-identical weights.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import _mpi_worker as worker
import fastcnn as fc
from fastcnn import registry

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("_mpi_worker.py")
RTOL, ATOL = 1e-4, 1e-6


def _mpiexec():
    """The ``mpiexec`` next to this Python (the venv's, from the ``mpich`` wheel), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _missing_mpi():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'fastcnn[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec next to the Python or on PATH (pip install mpich)"
    return None


@pytest.fixture(scope="module")
def mpi():
    reason = _missing_mpi()
    if reason:
        if os.environ.get("FASTCNN_REQUIRE_MPI") == "1":  # set by `make test`, so CI fails instead
            pytest.fail(reason)
        pytest.skip(reason)
    return _mpiexec()


def launch(mpiexec, n, scenario, cfg, *, timeout=120, env=None):
    """Run the worker on ``n`` ranks; returns ``(CompletedProcess, seconds)``."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKER.parent)]),
                       NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       FASTCNN_MPI_TIMEOUT="60")
    environment.update(env or {})
    start = time.monotonic()
    proc = subprocess.run([mpiexec, "-n", str(n), sys.executable, str(WORKER), scenario, json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT)
    return proc, time.monotonic() - start


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_weights_close(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=name)


def _fit(model, initial_epoch=0, callbacks=None):
    (x, y), (xv, yv) = worker.data()
    return model.fit(x, y, epochs=2, batch_size=worker.BATCH, validation_data=(xv, yv), verbose=0,
                     initial_epoch=initial_epoch, callbacks=callbacks)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Two epochs in one process (checkpoint after the first)."""
    directory = tmp_path_factory.mktemp("single")
    model = worker.model()
    history = _fit(model, callbacks=[fc.callbacks.ModelCheckpoint(directory / "ckpt-{epoch}.npz")])
    return SimpleNamespace(weights=model.get_weights(), history=history.history, ckpt1=directory / "ckpt-1.npz")


def _run_train(mpiexec, n, out, **cfg):
    proc, _ = launch(mpiexec, n, "train", {"out": str(out), "epochs": 2, **cfg})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((out / f"result-{r}.json").read_text()) for r in range(n)]
    weights = [_load(out / f"weights-{r}.npz") for r in range(n)]
    return SimpleNamespace(proc=proc, out=out, results=results, weights=weights)


@pytest.fixture(scope="module")
def two_ranks(mpi, single, tmp_path_factory):
    return _run_train(mpi, 2, tmp_path_factory.mktemp("two"))


@pytest.fixture(scope="module")
def three_ranks_resumed(mpi, single, tmp_path_factory):
    """3 ranks (the last batch of 44 splits 14/15/15) resuming the one-process checkpoint, loaded on rank 0 only."""
    return _run_train(mpi, 3, tmp_path_factory.mktemp("three"), resume=str(single.ckpt1), initial_epoch=1)


# -- without MPI ------------------------------------------------------------------------------
def test_importing_fastcnn_never_imports_mpi4py():
    code = "import sys, fastcnn, fastcnn.distributed; print('mpi4py' in sys.modules, fastcnn.distributed.size())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.split() == ["False", "1"]


@pytest.mark.parametrize("impl", registry.implementations("dropout"))
@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937])  # jumps over rows / draws them
def test_dropout_rows_take_their_slice_of_the_whole_batch_mask(impl, bit_generator):
    fn = registry.get("dropout", impl)
    x = np.random.default_rng(1).standard_normal((7, 3, 5)).astype(np.float32)

    def generator():
        return np.random.Generator(bit_generator(3))

    full, _ = fn.forward(x, rate=0.4, rng=generator())
    for start, stop in [(0, 3), (3, 7), (2, 2), (6, 7), (1, 4)]:  # even and odd offsets into the raw draws
        rng = generator()
        y, cache = fn.forward(x[start:stop], rate=0.4, rng=rng, rows=(start, 7))
        np.testing.assert_array_equal(y, full[start:stop])
        expected = generator()
        expected.bit_generator.random_raw((x.size + 1) // 2)  # the whole batch's draw was consumed
        np.testing.assert_array_equal(rng.bit_generator.random_raw(3), expected.bit_generator.random_raw(3))
        dy = np.ones_like(y)
        np.testing.assert_array_equal(fn.backward(dy, cache), (y != 0) * np.float32(1 / 0.6))
    with pytest.raises(ValueError, match=r"rows=\(5, 7\) cannot hold a batch of 3 rows"):
        fn.forward(x[:3], rate=0.4, rng=generator(), rows=(5, 7))


def test_launched_reads_the_launcher_environment(monkeypatch):
    for name in fc.distributed.SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not fc.distributed.launched()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not fc.distributed.launched()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert fc.distributed.launched()


def test_distributed_fit_under_plain_python_is_fit(mpi):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKER.parent)]),
                       NUMBA_NUM_THREADS="1")
    for name in fc.distributed.SIZE_VARIABLES:
        environment.pop(name, None)
    proc = subprocess.run([sys.executable, str(WORKER), "one_rank", "{}"], capture_output=True, text=True,
                          timeout=120, env=environment, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"size": 1, "identical": True}


@pytest.mark.parametrize("cores,affinity,limit,local,expected", [
    (8, 8, 8, 2, 4),  # 2 ranks share 8 cores
    (2, 2, 2, 3, 1),  # oversubscribed: at least 1
    (8, 2, 8, 4, 2),  # the launcher bound this rank to 2 cores
    (8, 8, 3, 2, 3),  # NUMBA_NUM_THREADS caps it
])
def test_threads_per_rank_default_to_the_cores_shared_by_the_local_ranks(monkeypatch, cores, affinity, limit,
                                                                         local, expected):
    from fastcnn import parallel

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(parallel, "max_num_threads", lambda: limit)
    assert fc.distributed._default_threads(local) == expected


# -- equivalence with one process -----------------------------------------------------------
def test_two_ranks_reproduce_the_single_process_run(two_ranks, single):
    w0, w1 = two_ranks.weights
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=f"ranks differ in {name}")
    _assert_weights_close(w0, single.weights)
    for r in range(2):
        history = two_ranks.results[r]["history"]
        assert sorted(history) == sorted(single.history)
        np.testing.assert_allclose(history["loss"], single.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(history["val_loss"], single.history["val_loss"], rtol=1e-5)
        for key in ("accuracy", "val_accuracy"):  # a prediction may flip on a rounding-level tie
            np.testing.assert_allclose(history[key], single.history[key], atol=1.01 / worker.N_VAL)
    assert two_ranks.results[0]["history"] == two_ranks.results[1]["history"]  # callbacks saw the same logs
    assert two_ranks.results[0]["threads"] == 1


def test_sharded_evaluate_equals_single_process_evaluate(two_ranks):
    model = worker.model()
    model.set_weights(two_ranks.weights[0])
    _, (xv, yv) = worker.data()
    expected = model.evaluate(xv, yv, batch_size=16)
    for result in two_ranks.results:
        assert result["evaluate"]["accuracy"] == expected["accuracy"]
        assert result["evaluate"]["loss"] == pytest.approx(expected["loss"], rel=1e-12)  # float64 sum order


def test_gradient_buckets_and_statistics(two_ranks):
    stats = two_ranks.results[0]["stats"]
    params = worker.model().count_params()
    assert stats["ranks"] == 2 and stats["steps"] == 10  # 2 epochs of 5 batches
    assert stats["allreduce_bytes_per_step"] == 4 * params
    assert sum(stats["bucket_bytes"]) == 4 * params
    assert 0 <= stats["exposed_ms_per_step"] <= stats["allreduce_in_flight_ms_per_step"] + 1e-6
    assert stats["progress_thread"]  # mpi4py initializes MPI_THREAD_MULTIPLE
    step = stats["last_step"]
    assert step["buckets"] and all(b["start_ms"] <= b["done_ms"] for b in step["buckets"])


def test_only_rank_zero_prints_and_writes(two_ranks):
    assert sorted(os.listdir(two_ranks.out / "rank0")) == ["ckpt-1.npz", "ckpt-2.npz"]
    assert os.listdir(two_ranks.out / "rank1") == []
    lines = two_ranks.proc.stdout.splitlines()
    assert [line.split(" - ")[0] for line in lines if line.startswith("Epoch")] == ["Epoch 1/2", "Epoch 2/2"]


def test_distributed_checkpoint_resumes_in_one_process(two_ranks, single):
    model = worker.model(seed=123)  # the checkpoint's weights and random state replace these
    model.load(two_ranks.out / "rank0" / "ckpt-1.npz")
    _fit(model, initial_epoch=1)
    _assert_weights_close(model.get_weights(), single.weights)


def test_three_ranks_resume_a_single_process_checkpoint(three_ranks_resumed, single):
    weights = three_ranks_resumed.weights
    for other in weights[1:]:
        for name in weights[0]:
            np.testing.assert_array_equal(other[name], weights[0][name], err_msg=name)
    _assert_weights_close(weights[0], single.weights)
    history = three_ranks_resumed.results[2]["history"]
    np.testing.assert_allclose(history["loss"], single.history["loss"][1:], rtol=1e-5)


def test_stop_training_on_one_rank_stops_every_rank_after_the_same_batch(mpi, tmp_path):
    proc, _ = launch(mpi, 2, "stop", {"out": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"stop-{r}.json").read_text()) for r in range(2)]
    assert results == [{"rank": 0, "steps": 3, "epochs": [0]}, {"rank": 1, "steps": 3, "epochs": [0]}]


def test_functional_model_with_batch_normalization_on_two_ranks(mpi, tmp_path):
    """Non-synchronized BN: each rank normalizes its slice; the moving statistics start as rank 0's
    and are averaged over the ranks each step, so both ranks hold the same weights and state."""
    proc, _ = launch(mpi, 2, "functional", {"out": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("step", "epoch"):
        w0, w1 = (_load(tmp_path / f"{stage}-{r}.npz") for r in range(2))
        assert sorted(w0) == sorted(w1)
        for name in w0:
            np.testing.assert_array_equal(w0[name], w1[name], err_msg=f"{stage}: ranks differ in {name}")
    # After one step on the first batch sorted by label (rows 0-31 on rank 0, 32-63 on rank 1), from rank 0's
    # initial state (moving mean 0, variance 1): the moving mean moved with the whole batch's
    # mean, the moving variance with the mean of the two slices' (biased) variances.
    model = worker.functional_model(seed=7)
    (x, y), (xv, yv) = worker.data()
    bn = next(i for i, layer in enumerate(model.layers) if isinstance(layer, fc.layers.BatchNormalization))
    conv = model.layers[model._inputs_of[bn][0] - 1]
    z = conv.forward(x[worker.first_batch_by_label()].astype(np.float64)).reshape(-1, 4)  # the BN's input, (N*H*W, C)
    halves = np.split(z, 2)
    step = _load(tmp_path / "step-0.npz")
    np.testing.assert_allclose(step[f"layers.{bn}.moving_mean"], 0.5 * z.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(step[f"layers.{bn}.moving_variance"],
                               0.5 + 0.5 * np.mean([h.var(axis=0) for h in halves], axis=0), rtol=1e-10)
    one_process = 0.5 + 0.5 * z.var(axis=0)  # the whole batch's variance: 1e-6..1e-5 away, far above rounding
    assert np.max(np.abs(step[f"layers.{bn}.moving_variance"] / one_process - 1)) > 1e-6
    # The sharded evaluate (folded BN) is one process's evaluate of those weights and state.
    model.set_weights(_load(tmp_path / "epoch-0.npz"))
    expected = model.evaluate(xv, yv, batch_size=16)
    for r in range(2):
        logs = json.loads((tmp_path / f"functional-{r}.json").read_text())
        assert logs["accuracy"] == expected["accuracy"]
        assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-12)


# -- faults -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_failing_rank_ends_every_rank(mpi, kind):
    proc, seconds = launch(mpi, 2, "fault", {"kind": kind}, timeout=60)
    assert proc.returncode != 0
    assert seconds < 30
    assert "finished" not in proc.stdout
    if kind == "raise":
        assert "fastcnn.distributed: rank 1/2 failed: ValueError: injected failure on rank 1" in proc.stderr


def test_a_rank_that_stops_answering_is_abandoned_after_the_timeout(mpi):
    proc, seconds = launch(mpi, 2, "fault", {"kind": "hang"}, timeout=60, env={"FASTCNN_MPI_TIMEOUT": "3"})
    assert proc.returncode != 0
    assert seconds < 30  # rank 1 sleeps 60 s
    assert "rank 0/2 failed: no answer from the other ranks for 3 s" in proc.stderr


def test_a_different_model_on_one_rank_is_refused_at_start_up(mpi):
    proc, seconds = launch(mpi, 2, "mismatch", {}, timeout=60)
    assert proc.returncode != 0
    assert "DistributedError: the model differs between ranks (rank 0: fastcnn" in proc.stderr
    assert "rank 1: fastcnn" in proc.stderr and "every rank must build the same model" in proc.stderr


# -- the command ------------------------------------------------------------------------------
def test_fastcnn_train_under_mpiexec_prints_once(mpi, tmp_path):
    data = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(data):
        if os.environ.get("FASTCNN_REQUIRE_DATA") == "1":
            pytest.fail(f"Fashion-MNIST is not installed at {data}")
        pytest.skip(f"Fashion-MNIST is not installed at {data}")
    environment = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="1", FASTCNN_MPI_TIMEOUT="60")
    proc = subprocess.run(
        [mpi, "-n", "2", sys.executable, "-m", "fastcnn", "train", "--data-dir", data, "--limit", "256",
         "--epochs", "1", "--verbose", "2", "--save", str(tmp_path / "m.npz")],
        capture_output=True, text=True, timeout=180, env=environment, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len([line for line in lines if line.startswith("Epoch 1/1 - 4/4")]) == 1
    final = [line for line in lines if line.startswith("test accuracy")]
    assert len(final) == 1 and final[0].endswith("1 thread x 2 ranks")
    assert os.listdir(tmp_path) == ["m.npz"]
    fc.load_model(tmp_path / "m.npz")  # rank 0's file, complete
