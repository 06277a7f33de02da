"""The MPI world of a process: rank, size, ranks on this machine, waits with a deadline, abort."""

import contextlib
import os
import sys
import time

import numpy as np

import fastcnn

#: Seconds a rank waits for the others before it decides one of them died and aborts.
DEFAULT_TIMEOUT = 300.0

#: Seconds between a failing rank's message and its MPI_Abort: MPICH's launcher reads each
#: rank's stderr through a pipe and, once aborted, kills the ranks and drops what it has not
#: forwarded yet (the message was lost in about half of the runs of the fault tests without it).
ABORT_GRACE_S = 0.5


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
        time.sleep(ABORT_GRACE_S)  # for the launcher to forward the message before the abort kills its pipes
        self.world.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return before the launcher ends this process

    def __repr__(self):
        return f"Context(rank={self.rank}, size={self.size}, local_size={self.local_size}, timeout={self.timeout:g})"

