"""The data-parallel training step: sharding, gradient buckets and their overlapped allreduce."""

import math
import os
import threading
import time

import numpy as np

import fastcnn

#: Gradient bucket size: a bucket (the last layers' first) starts its allreduce once this
#: many bytes of gradients are ready. Small enough that the dense layers' bucket of
#: mnist_cnn and vgg_mini starts before the convolutions' backward (PyTorch DDP's first
#: bucket is 1 MB too); a parameter is never split, so a bucket may be larger.
DEFAULT_BUCKET_BYTES = 1 << 20


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
        self.metric_fns = list(model._metric_fns)
        self._plan(bucket_bytes)
        # Non-trainable state (BatchNormalization's moving statistics): each rank updates it
        # from its slice in the forward; the step averages it over the ranks, weighted by the
        # slices' rows, so every rank holds the same state (see :meth:`begin_backward`).
        self._states = [a for _, a in model.states()]
        self._state_sums = np.zeros(sum(a.size for a in self._states), dtype=np.float64)  # (elements,)
        self._state_request = self.MPI.REQUEST_NULL
        self._sums = np.zeros(2 + len(self.metric_fns), dtype=np.float64)  # loss x rows, rows, each metric's count
        self._batch_rows = 0
        self.batch_counts = [0] * len(self.metric_fns)  # each metric's count in the last batch, all ranks
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
        """Start summing loss and correct counts over the ranks, and averaging the non-trainable
        state; returns the loss gradient scaled to this rank's share."""
        rows = y.shape[0]
        self._t0 = time.perf_counter()
        self._sums[0], self._sums[1] = loss * rows, rows
        for i, metric in enumerate(self.metric_fns):
            self._sums[2 + i] = metric.count(logits, y)
        self._sums_request = self.comm.Iallreduce(self.MPI.IN_PLACE, self._sums, op=self.MPI.SUM)
        self._start_state_sum(rows / self._batch_rows)
        if rows == self._batch_rows:
            return dlogits
        return dlogits * dlogits.dtype.type(rows / self._batch_rows)

    def _start_state_sum(self, share):
        """Start the sum over the ranks of every state array times this rank's share of the batch.

        Every rank held the same state before the forward, so the result is the state
        updated with the slices' batch statistics averaged by rows: for a moving mean this
        is exactly the update from the whole batch's mean. ``share`` 0 (an empty slice) adds nothing.
        """
        if not self._states:
            return
        offset = 0
        for a in self._states:
            self._state_sums[offset:offset + a.size] = a.ravel()
            offset += a.size
        self._state_sums *= share
        self._state_request = self.comm.Iallreduce(self.MPI.IN_PLACE, self._state_sums, op=self.MPI.SUM)

    def _finish_state_sum(self):
        offset = 0
        for a in self._states:
            a[...] = self._state_sums[offset:offset + a.size].reshape(a.shape)
            offset += a.size

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
        self.context.wait(pending + [self._sums_request, self._state_request], "the gradient allreduce")
        t_end = time.perf_counter()
        self._state_request = self.MPI.REQUEST_NULL
        self._finish_state_sum()
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
        loss_sum, rows = self._sums[0], self._sums[1]
        self.batch_counts = [int(round(c)) for c in self._sums[2:]]
        return float(loss_sum / rows) if rows else 0.0

    def empty_step(self, model):
        """This rank's slice is empty: draw the random layers' masks, add zero gradients, step."""
        for layer in self.random_layers:
            if layer.training:
                layer.forward(np.zeros((0,) + tuple(layer.input_shape), dtype=layer.dtype))
        self._t0 = time.perf_counter()
        self._sums[:] = 0.0
        self._sums_request = self.comm.Iallreduce(self.MPI.IN_PLACE, self._sums, op=self.MPI.SUM)
        self._start_state_sum(0.0)
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

    def evaluate_sums(self, model, x, y, batch_size, fold=None):
        """This rank's contiguous share of the batches, summed over the ranks: ``(loss x rows, [counts])``."""
        batches = -(-x.shape[0] // batch_size)
        lo = batches * self.rank // self.size * batch_size
        hi = min(batches * (self.rank + 1) // self.size * batch_size, x.shape[0])
        sums = np.zeros(1 + len(self.metric_fns), dtype=np.float64)  # loss x rows, each metric's count
        if hi > lo:
            total_loss, hits = model._evaluate_sums(x[lo:hi], y[lo:hi], batch_size, fold)
            sums[0], sums[1:] = total_loss, hits
        self.context.allreduce(sums, "sum", "the evaluation sums")
        return float(sums[0]), [int(round(c)) for c in sums[1:]]

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

