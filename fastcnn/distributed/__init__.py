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
- Rank 0's weights, non-trainable state (BatchNormalization's moving
  statistics), optimizer state and Generator states are broadcast to all
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
  float32 rounding (the sums are grouped differently). The augmentation layers
  follow the same protocol (``batch_rows``): whole-batch draws, this rank's rows.
- Sequential and functional models alike: the hooks run on the model's
  training plan (``model.steps``), whatever its graph. BatchNormalization is
  not synchronized (PyTorch DDP's default): in training each rank normalizes
  its slice with the slice's statistics, so a model with BN does not
  reproduce the one-process run. Its moving statistics stay identical on
  every rank: after each forward they are averaged over the ranks, weighted
  by the slices' rows (started with the loss sum, waited for with the
  gradients), and the per-epoch digest covers them with the weights.
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
import io
import os
import sys
import traceback

import numpy as np

from fastcnn.callbacks import Callback, ModelCheckpoint, check_callbacks
from fastcnn.distributed._context import DEFAULT_TIMEOUT, Context, _default_threads  # noqa: F401
from fastcnn.distributed._state import DistributedError, broadcast_state, check_same, check_weights_agree
from fastcnn.distributed._step import DEFAULT_BUCKET_BYTES, DataParallel
from fastcnn.errors import FastCNNError

__all__ = [
    "DistributedError", "DEFAULT_BUCKET_BYTES", "DEFAULT_TIMEOUT", "launched", "init", "rank", "size",
    "is_root", "fit", "evaluate", "measure_allreduce", "abort_on_error",
]

#: Variables by which launchers announce the number of processes (MPICH/Hydra and
#: Intel MPI, Open MPI, MVAPICH).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: Callback classes that write files: run on rank 0 only.
RANK_ZERO_CALLBACKS = ("ModelCheckpoint", "CSVLogger", "BackupAndRestore", "TensorBoard")

_context = None


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
        _context.abort(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


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


def evaluate(model, x, y, batch_size=None, verbose=0, *, fold=None, timeout=None):
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
            return model.evaluate(x, y, batch_size=batch_size, verbose=verbose if context.rank == 0 else 0,
                                  fold=fold)
