"""Data-parallel training on MPI: the same script on one process or on many.

    mpiexec -n 4 python train.py         # train.py calls model.fit(..., distributed=True)
    mpiexec -n 4 fastcnn train ...       # the command sees it runs under mpiexec

Needs the ``[mpi]`` extra (``pip install 'fastcnn[mpi]'``: mpi4py and MPICH,
whose ``mpiexec`` lands in the virtual environment). Importing fastcnn never
imports mpi4py; this module imports it on the first :func:`init`.

What a distributed ``fit`` does (after Horovod, ChainerMN and PyTorch DDP):

- ``batch_size`` is the **global** batch. Every rank holds the same ``x`` and
  ``y`` and the same shuffle permutation (the model's Generator state is
  broadcast from rank 0 at start-up, so even ``seed=None`` agrees); rank ``r``
  of ``R`` trains on rows ``[n r / R, n (r + 1) / R)`` of each batch of ``n``.
- Rank 0's weights, optimizer state and Generator states are broadcast to all
  ranks at start-up (``Ibcast`` on the arrays themselves, never pickles), so a
  checkpoint loaded on rank 0 alone, or written by a one-process run, resumes.
- Each rank's loss gradient is scaled by its share ``n_r / n`` of the batch, so
  the **sum** over ranks of the gradients is the one-process gradient of the
  whole batch. Gradients are packed, in reverse layer order, into flat buckets
  of about ``bucket_bytes``; when backward has produced every gradient of a
  bucket, a non-blocking ``Iallreduce`` of it starts and runs while backward
  goes on through the earlier layers. MPICH moves a collective forward only
  inside MPI calls, so a progress thread tests the requests in flight every
  0.2 ms while the (GIL-releasing) kernels compute. The optimizer step waits
  for the buckets; the time spent in that wait is the communication that was
  not hidden (``model.distributed_stats``, which also holds the last step's
  bucket timeline).
- Dropout draws its mask for the whole global batch from its Generator (the
  same on every rank) and keeps this rank's rows (``Dropout.batch_rows``), so
  N ranks reproduce the one-process run: the same weights after an epoch up to
  float32 rounding (the sums are grouped differently).
- Batch and epoch logs are global (loss and correct counts are summed over the
  ranks with the gradients), so callbacks decide the same on every rank;
  ``stop_training`` is agreed after every batch and epoch anyway. Validation
  and :func:`evaluate` split the batches between the ranks and add up.
- Only rank 0 prints (other ranks run with ``verbose=0`` and their standard
  output discarded during ``fit``) and only rank 0 runs the callbacks that
  write files (:class:`~fastcnn.callbacks.ModelCheckpoint`, or any callback
  with ``rank_zero_only = True``).
- Threads: each rank uses ``cores / ranks on this machine`` threads unless told
  otherwise (``init(threads=...)``, ``fastcnn train --threads``).

Faults: an exception on any rank inside :func:`fit` / :func:`evaluate` (or
uncaught anywhere, once :func:`init` has installed its ``sys.excepthook``)
prints ``fastcnn.distributed: rank r/R failed: ...`` and calls ``MPI_Abort``,
which ends every rank at once. Every wait on the other ranks polls with a
deadline (``timeout``, default :data:`DEFAULT_TIMEOUT` seconds or
``$FASTCNN_MPI_TIMEOUT``): a rank that stops answering (killed, hung) makes the
others abort after at most that long. (Under MPICH's ``mpiexec`` a rank killed
by a signal ends the whole job within well under a second anyway; see
README.md.) A model that differs between ranks (layers, settings, dtype,
optimizer, loss or fastcnn version) or different training data is detected
at start-up by comparing digests (one ``Allgather``), with an error naming the
ranks.

Randomness in other layers: a layer that draws per-sample random numbers
follows the same protocol as Dropout: an attribute ``batch_rows`` (``None`` or
``(start, total_rows)``) set before each training forward, drawing for the
whole batch and keeping its rows.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
import traceback

import numpy as np

import fastcnn
from fastcnn import metrics as metrics_lib
from fastcnn.callbacks import Callback, ModelCheckpoint, check_callbacks
from fastcnn.errors import FastCNNError

__all__ = [
    "DistributedError", "DEFAULT_BUCKET_BYTES", "DEFAULT_TIMEOUT", "launched", "init", "rank", "size",
    "is_root", "fit", "evaluate", "measure_allreduce", "abort_on_error",
]

#: Gradient bucket size: a bucket (the last layers' first) starts its allreduce once this
#: many bytes of gradients are ready. Small enough that the dense layers' bucket of
#: mnist_cnn and vgg_mini starts before the convolutions' backward (PyTorch DDP's first
#: bucket is 1 MB too); a parameter is never split, so a bucket may be larger.
DEFAULT_BUCKET_BYTES = 1 << 20
#: Seconds a rank waits for the others before it decides one of them died and aborts.
DEFAULT_TIMEOUT = 300.0
#: Variables by which launchers announce the number of processes (MPICH/Hydra and
#: Intel MPI, Open MPI, MVAPICH).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: Callback classes that write files: run on rank 0 only.
RANK_ZERO_CALLBACKS = ("ModelCheckpoint", "CSVLogger", "BackupAndRestore", "TensorBoard")

_context = None


class DistributedError(FastCNNError):
    """The ranks of a data-parallel run disagree (model, data, weights) or stopped answering."""


def launched():
    """Whether this process was started by an MPI launcher with more than one process.

    Reads the launcher's environment only (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``,
    ``MV2_COMM_WORLD_SIZE``); imports nothing.
    """
    for name in SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            f"distributed training needs mpi4py and an MPI library: pip install 'fastcnn[mpi]' "
            f"(mpi4py and mpich); the import failed with: {error}"
        ) from error
    return MPI


def _default_threads(local_size):
    """Cores available to this process, shared between the ranks on this machine."""
    from fastcnn import parallel

    cores = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = cores
    # A launcher that binds each rank to its own cores gives the affinity; otherwise split them.
    share = affinity if affinity < cores else cores // local_size
    return max(1, min(parallel.max_num_threads(), share))


class Context:
    """The MPI world of this process: rank, size, ranks on this machine, polled waits.

    Created by :func:`init`. ``comm`` is a duplicate of ``COMM_WORLD`` reserved to
    fastcnn, so a user's own messages never mix with the gradients.
    """

    def __init__(self, timeout, threads):
        MPI = _import_mpi()
        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.comm = self.world.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.timeout = DEFAULT_TIMEOUT
        self.configure(timeout, threads if threads is not None else _default_threads(self.local_size))

    def configure(self, timeout=None, threads=None):
        if timeout is None:
            timeout = os.environ.get("FASTCNN_MPI_TIMEOUT")
        if timeout is not None:
            try:
                timeout = float(timeout)
            except ValueError:
                raise ValueError(f"distributed: `timeout` must be seconds > 0, received {timeout!r}") from None
            if not timeout > 0:
                raise ValueError(f"distributed: `timeout` must be seconds > 0, received {timeout!r}")
            self.timeout = timeout
        if threads is not None:
            fastcnn.set_num_threads(threads)

    @property
    def label(self):
        return f"rank {self.rank}/{self.size}"

    # -- waiting with a deadline ------------------------------------------------------
    def wait(self, requests, what):
        """Complete ``requests``, polling; abort every rank after ``timeout`` seconds without an answer."""
        Testall = self.MPI.Request.Testall
        if Testall(requests):
            return
        deadline = time.monotonic() + self.timeout
        polls = 0
        while not Testall(requests):
            polls += 1
            if polls % 64 == 0:
                if time.monotonic() > deadline:
                    self.abort(
                        f"no answer from the other ranks for {self.timeout:g} s while waiting for {what}: "
                        f"a rank died or hangs (raise the limit with init(timeout=...) or FASTCNN_MPI_TIMEOUT)"
                    )
                os.sched_yield()  # let a rank sharing this core compute (oversubscribed runs)

    def bcast(self, array, what):
        self.wait([self.comm.Ibcast(array, root=0)], what)

    def allreduce(self, array, op, what):
        """In-place allreduce of ``array`` (``op``: "sum" or "max")."""
        mpi_op = {"sum": self.MPI.SUM, "max": self.MPI.MAX}[op]
        self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=mpi_op)], what)

    def allgather(self, array, what):
        """``(size, *array.shape)`` gathered from every rank."""
        out = np.empty((self.size,) + array.shape, dtype=array.dtype)
        self.wait([self.comm.Iallgather(array, out)], what)
        return out

    # -- ending ----------------------------------------------------------------------
    def abort(self, message, code=1):
        """Print ``message`` naming this rank and end every rank (``MPI_Abort``)."""
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stderr.write(f"fastcnn.distributed: {self.label} failed: {message}; ending all ranks (MPI_Abort)\n")
        sys.stderr.flush()
        self.world.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return before the launcher ends this process

    def __repr__(self):
        return f"Context(rank={self.rank}, size={self.size}, local_size={self.local_size}, timeout={self.timeout:g})"


def init(timeout=None, threads=None):
    """Initialize MPI (once) and return the :class:`Context`.

    Parameters
    ----------
    timeout : float, optional
        Seconds a rank waits for the others before aborting the run. Default
        ``$FASTCNN_MPI_TIMEOUT``, else :data:`DEFAULT_TIMEOUT`.
    threads : int, optional
        Threads per rank. Default (first call): the cores of this machine divided
        by the ranks on it (or the cores the launcher bound this rank to).

    With more than one rank, installs a ``sys.excepthook`` that aborts every rank
    when any rank has an uncaught exception.
    """
    global _context
    if _context is None:
        _context = Context(timeout, threads)
        if _context.size > 1:
            _install_excepthook(_context)
    else:
        _context.configure(timeout, threads)
    return _context


def rank():
    """This process's rank (0 without MPI initialized)."""
    return 0 if _context is None else _context.rank


def size():
    """The number of ranks (1 without MPI initialized)."""
    return 1 if _context is None else _context.size


def is_root():
    """Whether this process is rank 0, the one that prints and writes files."""
    return rank() == 0


def _install_excepthook(context):
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        context.abort(f"uncaught {kind.__name__}: {value}")

    sys.excepthook = hook


@contextlib.contextmanager
def abort_on_error(brief=(FastCNNError, KeyboardInterrupt)):
    """End every rank when the block raises on this one (``MPI_Abort``), naming rank and error.

    Exceptions of the ``brief`` types print their message only; others their
    traceback first. With one rank (or MPI not initialized) the exception
    propagates as usual. ``SystemExit(0)`` always propagates.
    """
    try:
        yield
    except BaseException as error:
        if isinstance(error, SystemExit) and error.code in (None, 0):
            raise
        if _context is None or _context.size == 1:
            raise
        if not isinstance(error, brief):
            traceback.print_exc()
        _context.abort(f"{type(error).__name__}: {error}")


# -- start-up checks and broadcast ----------------------------------------------------------
_RECORD = 80  # bytes: model digest 32, data digest 16, parameter count 8, fastcnn version 24


def _model_digest(model):
    """sha256 of the model's description without its seed and state, and the fastcnn version."""
    from fastcnn.saving import describe

    desc = describe(model)
    arch = {k: v for k, v in desc["model"].items() if k != "seed"}
    text = json.dumps({"fastcnn": fastcnn.__version__, "model": arch, "compile": desc["compile"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).digest()


def _data_digest(x, y):
    """16 bytes that differ when ``x`` or ``y`` differ: shapes, dtypes, every label, 64 spread rows of x."""
    x, y = np.asarray(x), np.asarray(y)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((x.shape, x.dtype.str, y.shape, y.dtype.str)).encode())
    h.update(np.ascontiguousarray(y).tobytes())
    if x.shape[0]:
        h.update(np.ascontiguousarray(x[:: max(1, x.shape[0] // 64)]).tobytes())
    return h.digest()


def check_same(context, model, x, y):
    """Raise :class:`DistributedError` when the model or the data differ between ranks."""
    record = np.zeros(_RECORD, dtype=np.uint8)
    record[:32] = np.frombuffer(_model_digest(model), dtype=np.uint8)
    record[32:48] = np.frombuffer(_data_digest(x, y), dtype=np.uint8)
    record[48:56] = np.frombuffer(np.int64(model.count_params()).tobytes(), dtype=np.uint8)
    version = fastcnn.__version__.encode()[:24]
    record[56:56 + len(version)] = np.frombuffer(version, dtype=np.uint8)
    records = context.allgather(record, "the start-up check of the model")

    def describe_rank(r):
        rec = records[r]
        params = int(np.frombuffer(rec[48:56].tobytes(), dtype=np.int64)[0])
        ver = rec[56:].tobytes().rstrip(b"\0").decode(errors="replace")
        return f"rank {r}: fastcnn {ver}, {params:,} parameters, description sha256 {rec[:4].tobytes().hex()}"

    models_differ = [r for r in range(context.size) if not np.array_equal(records[r, :32], records[0, :32])]
    if models_differ:
        raise DistributedError(
            f"the model differs between ranks ({'; '.join(describe_rank(r) for r in [0] + models_differ)}): "
            f"every rank must build the same model (layers, settings, dtype, optimizer, loss) with the "
            f"same fastcnn version"
        )
    data_differ = [r for r in range(context.size) if not np.array_equal(records[r, 32:48], records[0, 32:48])]
    if data_differ:
        raise DistributedError(
            f"the training data of rank(s) {data_differ} differs from rank 0's: every rank must load "
            f"the same x and y (each takes its slice of every batch itself)"
        )


def _generators(model):
    """``{"model": Generator, "<layer index>": Generator, ...}`` of every random stream."""
    gens = {"model": model.rng}
    for i, layer in enumerate(model.layers):
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            gens[str(i)] = layer.rng
    return gens


def _json_int(value):
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot broadcast {type(value).__name__}")


def broadcast_state(context, model):
    """Make every rank's weights, optimizer state and Generator states rank 0's."""
    optimizer = model.optimizer
    header = None
    if context.rank == 0:
        meta = {
            "rng": {k: g.bit_generator.state for k, g in _generators(model).items()},
            "iterations": optimizer.iterations,
            "slots": [[name, slot, list(a.shape), a.dtype.str] for name, slots in sorted(optimizer.state.items())
                      for slot, a in sorted(slots.items())],
        }
        header = np.frombuffer(json.dumps(meta, default=_json_int).encode(), dtype=np.uint8)
    length = np.array([0 if header is None else header.size], dtype=np.int64)
    context.bcast(length, "the model state from rank 0")
    if header is None:
        header = np.empty(int(length[0]), dtype=np.uint8)
    else:
        header = header.copy()
    context.bcast(header, "the model state from rank 0")
    meta = json.loads(header.tobytes())
    if context.rank != 0:
        for key, gen in _generators(model).items():
            gen.bit_generator.state = meta["rng"][key]
        optimizer.iterations = int(meta["iterations"])
        optimizer.state = {}
        for name, slot, shape, dtype in meta["slots"]:
            optimizer.state.setdefault(name, {})[slot] = np.empty(tuple(shape), dtype=np.dtype(dtype))
    for _, p, _ in model.params():
        context.bcast(p, "the weights from rank 0")
    for name, slot, _, _ in meta["slots"]:
        context.bcast(optimizer.state[name][slot], "the optimizer state from rank 0")


def _weights_digest(model):
    h = hashlib.blake2b(digest_size=16)
    for _, p, _ in model.params():
        h.update(p.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def check_weights_agree(context, model):
    """Raise :class:`DistributedError` unless every rank holds bit-identical weights."""
    digests = context.allgather(_weights_digest(model), "the weight check")
    differ = [r for r in range(context.size) if not np.array_equal(digests[r], digests[0])]
    if differ:
        raise DistributedError(f"the weights of rank(s) {differ} diverged from rank 0's")


# -- the data-parallel step -----------------------------------------------------------------
class DataParallel:
    """What ``model._dist`` holds during a distributed fit: sharding, gradient buckets, statistics.

    The model calls :meth:`shard` for each batch, then in its training step
    :meth:`begin_backward` (scale the loss gradient, start the loss/metric sum),
    :meth:`on_backward` after each step's backward (pack the gradients; start a
    bucket's allreduce once complete) and :meth:`end_backward` before the
    optimizer step (wait). A rank whose slice is empty runs :meth:`empty_step`.
    """

    def __init__(self, context, model, bucket_bytes=DEFAULT_BUCKET_BYTES, progress_thread=None):
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"distributed: `bucket_bytes` must be a positive int, received {bucket_bytes!r}")
        self.context = context
        self.comm = context.comm
        self.MPI = context.MPI
        self.model = model
        self.rank, self.size = context.rank, context.size
        self.random_layers = [layer for layer in model.layers if hasattr(layer, "batch_rows")]
        self.track_accuracy = "accuracy" in model.metrics
        self._plan(bucket_bytes)
        self._sums = np.zeros(3, dtype=np.float64)  # loss x rows, correct, rows of this step
        self._batch_rows = 0
        self.batch_correct = 0
        self.steps = 0
        self.exposed_seconds = 0.0  # in the wait before the optimizer step
        self.in_flight_seconds = 0.0  # bucket allreduces, start to observed completion, summed
        self.backward_seconds = 0.0
        self.last_step = None
        self._exposed = []  # seconds per step
        if progress_thread is None:
            progress_thread = os.environ.get("FASTCNN_MPI_PROGRESS_THREAD", "1") != "0"
        multiple = self.MPI.Query_thread() == self.MPI.THREAD_MULTIPLE
        self.progress_thread = bool(progress_thread and multiple and self.size > 1)
        self._progress = _ProgressThread(self.comm, self.MPI) if self.progress_thread else None

    def _plan(self, bucket_bytes):
        """Buckets of gradients in reverse layer order; which backward step fills and starts which."""
        model = self.model
        self.buckets, sizes = [], []  # flat buffers; elements each
        self._fills = {}  # id(step) -> [(layer, key, view)]
        self._starts = {}  # id(step) -> [bucket index]
        entries, offset, last_step = [], 0, None
        itemsize = model.dtype.itemsize

        def close():
            nonlocal entries, offset
            buffer = np.zeros(offset, dtype=model.dtype)  # (elements,) one bucket
            for step, layer, key, start, shape in entries:
                view = buffer[start:start + int(np.prod(shape))].reshape(shape)
                self._fills.setdefault(id(step), []).append((layer, key, view))
            self._starts.setdefault(id(last_step), []).append(len(self.buckets))
            self.buckets.append(buffer)
            sizes.append(offset)
            entries, offset = [], 0

        for step in reversed(model.steps):
            layers = getattr(step, "layers", (step,))
            for layer in reversed(layers):
                for key, p in layer.params.items():
                    entries.append((step, layer, key, offset, p.shape))
                    offset += p.size
                    last_step = step
            if offset * itemsize >= bucket_bytes:
                close()
        if offset:
            close()
        self.bucket_bytes = [n * itemsize for n in sizes]
        self._requests = [self.MPI.REQUEST_NULL] * len(self.buckets)
        self._started = [0.0] * len(self.buckets)
        self._done = [0.0] * len(self.buckets)

    # -- called by the model -----------------------------------------------------------
    def shard(self, start, stop):
        """This rank's rows ``[lo, hi)`` of the batch ``[start, stop)``; tells the random layers."""
        n = stop - start
        lo = start + n * self.rank // self.size
        hi = start + n * (self.rank + 1) // self.size
        self._batch_rows = n
        for layer in self.random_layers:
            layer.batch_rows = (lo - start, n)
        return lo, hi

    def begin_backward(self, loss, dlogits, logits, y):
        """Start summing loss and correct counts over the ranks; the loss gradient scaled to this rank's share."""
        rows = y.shape[0]
        self._t0 = time.perf_counter()
        correct = metrics_lib.count_correct(logits, y) if self.track_accuracy else 0
        self._sums[:] = (loss * rows, correct, rows)
        self._sums_request = self.comm.Iallreduce(self.MPI.IN_PLACE, self._sums, op=self.MPI.SUM)
        if rows == self._batch_rows:
            return dlogits
        return dlogits * dlogits.dtype.type(rows / self._batch_rows)

    def on_backward(self, step):
        """Pack this step's gradients into their buckets; start each bucket now complete."""
        for layer, key, view in self._fills.get(id(step), ()):
            grad = layer.grads[key]
            if grad is not view:
                np.copyto(view, grad)
                layer.grads[key] = view  # after the allreduce it holds the sum over the ranks
        for b in self._starts.get(id(step), ()):
            self._started[b] = time.perf_counter()
            self._done[b] = 0.0
            request = self.comm.Iallreduce(self.MPI.IN_PLACE, self.buckets[b], op=self.MPI.SUM)
            if self._progress is not None:
                self._progress.add(b, request)  # the thread tests it from now until end_backward
            else:
                self._requests[b] = request
        if self._progress is None:
            self._poll()

    def _poll(self):
        """Test the buckets in flight: MPICH progresses non-blocking collectives only inside MPI calls."""
        for b, request in enumerate(self._requests):
            if not self._done[b] and request.Test():
                self._done[b] = time.perf_counter()

    def end_backward(self):
        """Wait for every bucket and the loss sum; returns the batch's loss (over all ranks)."""
        t_wait = time.perf_counter()
        if self._progress is not None:
            pending, done = self._progress.take()
            for b, t in done.items():
                self._done[b] = t
            for b, request in pending.items():
                self._requests[b] = request
        self._poll()
        pending = [self._requests[b] for b in range(len(self.buckets)) if not self._done[b]]
        self.context.wait(pending + [self._sums_request], "the gradient allreduce")
        t_end = time.perf_counter()
        for b in range(len(self.buckets)):
            if not self._done[b]:
                self._done[b] = t_end
        self.steps += 1
        self.exposed_seconds += t_end - t_wait
        self._exposed.append(t_end - t_wait)
        self.backward_seconds += t_wait - self._t0
        self.in_flight_seconds += sum(d - s for s, d in zip(self._started, self._done))
        self.last_step = {
            "backward_ms": 1e3 * (t_wait - self._t0),
            "wait_ms": 1e3 * (t_end - t_wait),
            "buckets": [{"bytes": nbytes, "start_ms": 1e3 * (s - self._t0), "done_ms": 1e3 * (d - self._t0)}
                        for nbytes, s, d in zip(self.bucket_bytes, self._started, self._done)],
        }
        loss_sum, correct, rows = self._sums
        self.batch_correct = int(round(correct))
        return float(loss_sum / rows) if rows else 0.0

    def empty_step(self, model):
        """This rank's slice is empty: draw the random layers' masks, add zero gradients, step."""
        for layer in self.random_layers:
            if layer.training:
                layer.forward(np.zeros((0,) + tuple(layer.input_shape), dtype=layer.dtype))
        self._t0 = time.perf_counter()
        self._sums[:] = 0.0
        self._sums_request = self.comm.Iallreduce(self.MPI.IN_PLACE, self._sums, op=self.MPI.SUM)
        for buffer in self.buckets:
            buffer.fill(0)
        for fills in self._fills.values():
            for layer, key, view in fills:
                layer.grads[key] = view
        for step in reversed(model.steps):  # the buckets start in the same order on every rank
            self.on_backward(step)
        loss = self.end_backward()
        if math.isfinite(loss):
            model.optimizer.step(model.params())
        return loss, np.zeros((0,) + tuple(model.output_shape), dtype=model.dtype)

    def evaluate_sums(self, model, x, y, batch_size):
        """This rank's contiguous share of the batches, summed over the ranks: ``(loss x rows, correct)``."""
        batches = -(-x.shape[0] // batch_size)
        lo = batches * self.rank // self.size * batch_size
        hi = min(batches * (self.rank + 1) // self.size * batch_size, x.shape[0])
        sums = np.zeros(2, dtype=np.float64)
        if hi > lo:
            sums[:] = model._evaluate_sums(x[lo:hi], y[lo:hi], batch_size)
        self.context.allreduce(sums, "sum", "the evaluation sums")
        return float(sums[0]), int(round(sums[1]))

    # -- reporting ---------------------------------------------------------------------
    def measure_allreduce(self, repeats=5):
        """Median seconds of the buckets' allreduces run back to back with nothing to hide behind."""
        times = []
        for _ in range(repeats):
            self.context.allreduce(np.zeros(1, dtype=np.float64), "sum", "a barrier")
            start = time.perf_counter()
            buffers = [b.copy() for b in self.buckets]  # referenced until the requests complete
            requests = [self.comm.Iallreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM) for b in buffers]
            self.context.wait(requests, "the allreduce measurement")
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def close(self):
        """Stop the progress thread."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def summary(self):
        """Communication statistics of the fit so far (``model.distributed_stats``)."""
        steps = max(self.steps, 1)
        exposed = self.exposed_seconds / steps
        in_flight = self.in_flight_seconds / steps
        return {
            "ranks": self.size,
            "local_ranks": self.context.local_size,
            "threads": fastcnn.get_num_threads(),
            "buckets": len(self.buckets),
            "bucket_bytes": list(self.bucket_bytes),
            "allreduce_bytes_per_step": int(sum(self.bucket_bytes)),
            "steps": self.steps,
            "backward_ms_per_step": 1e3 * self.backward_seconds / steps,
            "allreduce_in_flight_ms_per_step": 1e3 * in_flight,
            "exposed_ms_per_step": 1e3 * exposed,
            "exposed_ms_median": 1e3 * float(np.median(self._exposed)) if self._exposed else 0.0,
            "progress_thread": self.progress_thread,
            "last_step": self.last_step,
        }

    def __repr__(self):
        return f"DataParallel(rank={self.rank}, size={self.size}, buckets={self.bucket_bytes})"


class _ProgressThread:
    """Tests the buckets in flight while backward computes, as Horovod's background thread does.

    MPICH moves a non-blocking collective forward only inside MPI calls, and a
    large bucket needs many of them; one backward step (a convolution's) can
    last milliseconds without any. From a bucket's start until
    :meth:`DataParallel.end_backward` takes them back, this thread owns the
    requests and tests them every :attr:`interval` seconds: the Numba kernels
    release the GIL, so it runs while they compute, and it records when each
    bucket completed. Needs ``MPI_THREAD_MULTIPLE`` (mpi4py's default); disable
    with ``FASTCNN_MPI_PROGRESS_THREAD=0`` (the hook then polls between steps).
    """

    interval = 200e-6

    def __init__(self, comm, MPI):
        import threading

        self.comm, self.MPI = comm, MPI
        self.lock = threading.Lock()
        self.active = threading.Event()
        self.pending = {}  # bucket index -> request
        self.done = {}  # bucket index -> perf_counter() when seen complete
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fastcnn-mpi-progress", daemon=True)
        self._thread.start()

    def add(self, bucket, request):
        with self.lock:
            self.pending[bucket] = request
        self.active.set()

    def take(self):
        """Stop testing; ``(requests still pending, completion times)``, both by bucket."""
        self.active.clear()
        with self.lock:  # once held, the thread is not testing and finds nothing left
            pending, done = self.pending, self.done
            self.pending, self.done = {}, {}
        return pending, done

    def _run(self):
        while True:
            self.active.wait()
            if self._closed:
                return
            with self.lock:
                for bucket, request in list(self.pending.items()):
                    if request.Test():
                        self.done[bucket] = time.perf_counter()
                        del self.pending[bucket]
            time.sleep(self.interval)

    def stop(self):
        self._closed = True
        self.active.set()
        self._thread.join()


class _AgreeOnStop(Callback):
    """Last callback of a distributed fit: ``stop_training`` is set on every rank if on any."""

    rank_zero_only = False

    def __init__(self, context, check_weights):
        super().__init__()
        self.context = context
        self.check_weights = check_weights

    def _agree(self):
        flag = np.array([int(bool(self.model.stop_training))], dtype=np.int32)
        self.context.allreduce(flag, "max", "the stop_training flag")
        self.model.stop_training = bool(flag[0])

    def on_train_batch_end(self, batch, logs=None):
        self._agree()

    def on_epoch_end(self, epoch, logs=None):
        self._agree()
        if self.check_weights:
            check_weights_agree(self.context, self.model)


def _writes_files(callback):
    flag = getattr(callback, "rank_zero_only", None)
    if flag is not None:
        return bool(flag)
    return isinstance(callback, ModelCheckpoint) or type(callback).__name__ in RANK_ZERO_CALLBACKS


def _prepare(model, x, what):
    """Build the model from ``x`` if needed (every rank) and check it is compiled."""
    if not isinstance(x, (np.ndarray, list, tuple)):
        raise TypeError(
            f"distributed {what}: x must be an array that every rank holds in full (each rank takes its "
            f"slice of every batch); received {type(x).__name__}"
        )
    model._check_compiled(what)
    if not model.built:
        model._prepare_x(np.asarray(x)[:1])


@contextlib.contextmanager
def _attached(model, dp, record_stats):
    model._dist = dp
    try:
        yield
    finally:
        model._dist = None
        dp.close()
        for layer in dp.random_layers:
            layer.batch_rows = None
        if record_stats:
            model.distributed_stats = dp.summary()


def fit(model, x, y, epochs=1, batch_size=32, *, callbacks=None, verbose="auto", bucket_bytes=DEFAULT_BUCKET_BYTES,
        timeout=None, check_weights=True, **kwargs):
    """Train ``model`` data-parallel on every MPI process; returns the ``History`` (the same on every rank).

    Call it on every rank with the same model (same seed or not: rank 0's weights
    and random state win) and the same data. Takes the arguments of
    :meth:`fastcnn.Sequential.fit` (``batch_size`` is the global batch), and:

    Parameters
    ----------
    bucket_bytes : int, default :data:`DEFAULT_BUCKET_BYTES`
        Gradient bytes per allreduce bucket.
    timeout : float, optional
        Seconds to wait for the other ranks before aborting (see :func:`init`).
    check_weights : bool, default True
        Compare a digest of the weights across ranks after every epoch (raises
        :class:`DistributedError` if they diverged).

    After the call, ``model.distributed_stats`` holds the communication
    statistics (allreduce bytes, time in flight and exposed per step).
    Under plain ``python`` this runs as one rank.
    """
    context = init(timeout=timeout)
    with abort_on_error():
        _prepare(model, x, "fit")
        check_same(context, model, x, y)
        broadcast_state(context, model)
        user_callbacks = check_callbacks(callbacks)
        root = context.rank == 0
        if not root:
            user_callbacks = [cb for cb in user_callbacks if not _writes_files(cb)]
            verbose = 0
        user_callbacks.append(_AgreeOnStop(context, check_weights and context.size > 1))
        dp = DataParallel(context, model, bucket_bytes)
        quiet = contextlib.nullcontext() if root else contextlib.redirect_stdout(io.StringIO())
        with _attached(model, dp, True), quiet:
            return model.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=user_callbacks,
                             verbose=verbose, **kwargs)


def measure_allreduce(model, repeats=5, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """Median seconds of one step's gradient allreduces with nothing to overlap them with
    (the buckets back to back); call on every rank. The exposed time of a fit
    (``model.distributed_stats``) is the part of this that backward did not hide."""
    context = init()
    with abort_on_error():
        dp = DataParallel(context, model, bucket_bytes, progress_thread=False)
        return dp.measure_allreduce(repeats)


def evaluate(model, x, y, batch_size=None, verbose=0, *, timeout=None):
    """:meth:`fastcnn.Sequential.evaluate` with the batches shared between the MPI ranks.

    Every rank gets the totals: the same numbers as one process (the loss up to the
    order of a float64 sum).
    """
    context = init(timeout=timeout)
    with abort_on_error():
        _prepare(model, x, "evaluate")
        check_same(context, model, x, y)
        broadcast_state(context, model)
        dp = DataParallel(context, model, progress_thread=False)
        with _attached(model, dp, False):
            return model.evaluate(x, y, batch_size=batch_size, verbose=verbose if context.rank == 0 else 0)
