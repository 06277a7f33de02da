"""One knob for both thread pools: Numba's kernels and the BLAS behind the GEMMs.

Numba's ``prange`` kernels and OpenBLAS/MKL each keep their own pool of
threads; on a small machine two pools of full size oversubscribe the cores
(an idle OpenBLAS worker keeps spinning for a while after each GEMM, slowing a
Numba kernel that starts right after it). :func:`set_num_threads` sets both.

BLAS is resized at run time through ``threadpoolctl``. Without it only Numba
changes, and BLAS keeps the size it read from ``OPENBLAS_NUM_THREADS`` /
``MKL_NUM_THREADS`` / ``OMP_NUM_THREADS`` when NumPy was first imported: those
variables are read once, at import, so they must be set before ``import
numpy`` to have any effect.

Threading layer: importing this module selects Numba's ``omp`` layer where
an OpenMP runtime is available, else ``workqueue`` (unless the user chose one
with ``NUMBA_THREADING_LAYER``), before any parallel kernel or
:func:`set_num_threads` starts Numba's pool. A training step launches a dozen
parallel kernels with Python in between; ``omp``'s workers spin briefly between
them where ``workqueue``'s go to sleep and must be woken for each launch. Same
run, 2 cores, median ``train_on_batch`` at batch 64: tutorial_cnn 2.15 ms with
``workqueue`` against 1.18 ms with ``omp``, mnist_cnn 36.1 against 32.5 ms,
vgg_mini 62.6 against 47.5 ms. (An earlier version, whose GEMMs ran on
OpenBLAS's own threads between the kernels, measured the opposite: the two
spinning pools fought for the cores. Now every GEMM of the Numba path runs on
Numba's threads with BLAS single-threaded, see :mod:`fastcnn.kernels._blas`.)
OpenMP's pool is not fork-safe: fork only before the first kernel runs, or
use the ``spawn`` start method.

Numba's thread count is per calling thread (``numba.set_num_threads`` is
thread-local); the BLAS count is process-wide.

How many threads (see README.md, "Threads on a busy machine"):

- The ceiling is :func:`default_num_threads`: the CPUs this process may run on
  (``os.sched_getaffinity``, which ``taskset`` and container cpusets set),
  lowered to the cgroup CPU quota rounded up (``cpu.max``, or
  ``cpu.cfs_quota_us / cpu.cfs_period_us`` on cgroup v1), and to
  ``NUMBA_NUM_THREADS``.
- Unless the user fixed a count (:func:`set_num_threads`, ``--threads`` or
  ``FASTCNN_THREADS=n``), each training step and inference pass of a model runs
  under :func:`adaptive`: it times the ceiling and one thread on the same work
  (in blocks of calls of at least :data:`BLOCK_S`), keeps the faster, and
  re-times the other now and then: after the first few re-checks, at most
  1/:data:`PROBE_EVERY` of the run while the machine is steady, sooner when the
  count in use speeds up or slows down (see :class:`_Tuner`). On a busy machine
  a parallel region ends only when its slowest thread has had its time slice (and libgomp's
  waiting threads spin meanwhile), so a step of small kernels can run several
  times slower on two threads than on one; on a quiet machine the ceiling wins
  and is kept. Results do not depend on the choice: the kernels split their
  work into a fixed number of groups (``NUMBA_NUM_THREADS``) whatever the
  thread count, so any sequence of thread counts gives bit-identical results.
"""

import collections
import contextlib
import functools
import itertools
import math
import numbers
import os
import threading
import time
import weakref

import numba  # noqa: E402
from numba.np.ufunc import parallel as _numba_parallel  # noqa: E402


def _choose_threading_layer():
    """``omp`` if Numba can load an OpenMP runtime, else ``workqueue``; a user's choice stands."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        layer = "workqueue"
    else:
        layer = "omp"
    numba.config.THREADING_LAYER = layer  # read when the first parallel kernel starts the pool


_choose_threading_layer()

try:  # noqa: E402
    import threadpoolctl
except ImportError:  # optional at run time; BLAS then keeps its import-time size
    threadpoolctl = None

__all__ = ["set_num_threads", "get_num_threads", "max_num_threads", "blas_num_threads", "default_num_threads",
           "cpu_quota", "reset_num_threads", "thread_policy", "adaptive", "spoil_timing", "in_trials", "PROBE_EVERY",
           "runs_numba_kernels"]


def max_num_threads():
    """The most threads Numba can use: ``NUMBA_NUM_THREADS`` (the core count unless set)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n):
    """Use ``n`` threads in Numba kernels and in BLAS, always (no adaptation; see
    :func:`reset_num_threads` to go back to fastcnn's choice).

    Parameters
    ----------
    n : int
        ``1 <= n <= max_num_threads()``.

    Raises
    ------
    TypeError
        ``n`` is not an int.
    ValueError
        ``n`` is outside ``[1, max_num_threads()]``.
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"set_num_threads: `n` must be an int, received {n!r}")
    limit = max_num_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"set_num_threads: `n` must be between 1 and {limit} "
            f"(NUMBA_NUM_THREADS, the threads this process started with), received {n}"
        )
    global _fixed
    _fixed = int(n)
    _apply(int(n))  # OpenBLAS's own setter where found (microseconds), else threadpoolctl


def get_num_threads():
    """Threads the Numba kernels use in the calling thread (BLAS is set to match by :func:`set_num_threads`);
    under the adaptive policy, the count the last model step or inference pass chose."""
    return int(numba.get_num_threads())


def blas_num_threads():
    """Threads each loaded BLAS library uses, ``{internal_api: n}``; empty without ``threadpoolctl``."""
    if threadpoolctl is None:
        return {}
    return {
        info["internal_api"]: info["num_threads"]
        for info in threadpoolctl.threadpool_info()
        if info.get("user_api") == "blas"
    }


# -- the default thread count: affinity and cgroup quota ------------------------------------

def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _parse_cpu_max(text):
    """CPUs of a cgroup v2 ``cpu.max`` (``"150000 100000"`` -> 1.5); None for ``max``, empty or malformed."""
    parts = (text or "").split()
    if len(parts) not in (1, 2) or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) == 2 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _parse_cfs(quota_text, period_text):
    """CPUs of cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None for -1 (no limit) or malformed."""
    try:
        quota, period = int((quota_text or "").strip()), int((period_text or "").strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _ancestors(base, path):
    """``base/path``, its parents, ..., ``base`` (a limit on any of them applies)."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]


def cpu_quota(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPU time per period the process's cgroup may use, in CPUs (``1.5``), or None if unlimited.

    cgroup v2: ``cpu.max`` of the process's cgroup and of every parent up to
    ``root``; cgroup v1: ``cpu.cfs_quota_us / cpu.cfs_period_us`` under
    ``root/cpu`` (or ``root/cpu,cpuacct``). The smallest limit found wins.
    Missing, unreadable or malformed files are ignored.
    """
    v2_path, v1_path = "/", "/"
    for line in (_read(proc_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[0] == "0" and fields[1] == "":
            v2_path = fields[2]
        elif "cpu" in fields[1].split(","):
            v1_path = fields[2]
    found = []
    for d in _ancestors(root, v2_path):
        found.append(_parse_cpu_max(_read(os.path.join(d, "cpu.max"))))
    for base in (os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct")):
        for d in _ancestors(base, v1_path):
            found.append(_parse_cfs(_read(os.path.join(d, "cpu.cfs_quota_us")),
                                    _read(os.path.join(d, "cpu.cfs_period_us"))))
    found = [q for q in found if q is not None]
    return min(found) if found else None


def _affinity_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_QUOTA = []


def _quota():
    """:func:`cpu_quota`, read once per process (it opens a dozen files: milliseconds on a busy machine)."""
    if not _QUOTA:
        _QUOTA.append(cpu_quota())
    return _QUOTA[0]


def default_num_threads():
    """Threads fastcnn uses at most unless told otherwise.

    The CPUs in the process's affinity mask, at most the cgroup CPU quota
    (:func:`cpu_quota`) rounded **up** (a 1.5-CPU quota gives 2: two threads
    get 1.5 CPUs of work done per period, one thread only 1; when the second
    thread does not pay, :func:`adaptive` drops to one), at most
    :func:`max_num_threads`, at least 1. The affinity mask is read at each call,
    the quota once per process.
    """
    n = _affinity_count()
    quota = _quota()
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, min(n, max_num_threads()))


# -- the policy: fixed by the user, or adaptive ---------------------------------------------

#: The count fixed by :func:`set_num_threads`, or None (then ``FASTCNN_THREADS``, else adaptive).
_fixed = None
#: The BLAS thread count this module last set (so it is set again only when it changes).
_blas_applied = [None]


def _env_threads():
    """``FASTCNN_THREADS``: None (unset or ``auto``) or a fixed count."""
    text = os.environ.get("FASTCNN_THREADS", "").strip()
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    limit = max_num_threads()
    if not 1 <= n <= limit:
        raise ValueError(f"FASTCNN_THREADS must be 'auto' or an int between 1 and {limit} "
                         f"(NUMBA_NUM_THREADS), received {text!r}")
    return n


#: ``[time, ceiling]``: :func:`default_num_threads` as last read by :func:`thread_policy`.
_CEILING = [-math.inf, None]
#: Seconds :func:`thread_policy` keeps the ceiling before reading the affinity mask again.
CEILING_TTL = 1.0


def thread_policy():
    """``("fixed", n)`` when the count was fixed (:func:`set_num_threads`, ``FASTCNN_THREADS=n``),
    else ``("adaptive", ceiling)`` with ``ceiling = default_num_threads()`` (re-read at most
    every :data:`CEILING_TTL` seconds: this runs before every step)."""
    fixed = _fixed if _fixed is not None else _env_threads()
    if fixed is not None:
        return "fixed", fixed
    now = time.monotonic()
    if now - _CEILING[0] > CEILING_TTL:
        _CEILING[:] = [now, default_num_threads()]
    return "adaptive", _CEILING[1]


def reset_num_threads():
    """Forget :func:`set_num_threads`: back to ``FASTCNN_THREADS`` if set, else the adaptive choice."""
    global _fixed
    _fixed = None


def _apply(n):
    """Numba (this thread) and BLAS on ``n`` threads; nearly free when nothing changes.

    Numba's count (thread-local) is read through the pool's own C getter once
    the pool runs (``numba.get_num_threads`` takes a lock first); OpenBLAS's
    through its own getter. Without those, what this module last set is assumed.
    """
    getter = getattr(_numba_parallel, "_get_num_threads", None)
    current = getter() if getter is not None else None
    if current != n:
        numba.set_num_threads(n)
    get_blas, set_blas = _blas_functions()
    if get_blas is not None and set_blas is not None:
        if get_blas() != n:
            set_blas(n)
    elif _blas_applied[0] != n and threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    _blas_applied[0] = n


def _blas_functions():
    """OpenBLAS's ``(get, set)`` thread-count functions as NumPy loaded it, or ``(None, None)``."""
    try:
        from fastcnn.kernels import _blas
    except ImportError:  # pragma: no cover - numba present but kernels unavailable
        return None, None
    return _blas._GET_THREADS, _blas._SET_THREADS


# -- adaptive: time the ceiling and one thread, keep the faster -----------------------------

#: The tuner's unit of evidence: consecutive calls on one count that together take at least
#: this long (one call if it takes longer). Under load a call of a millisecond either fits in its
#: time slice or waits out another process's whole slice (a few ms on Linux), and whether the
#: next few calls do is not independent of this one: tutorial_cnn's batch-64 prediction under two
#: spinning processes ran two threads in three fast calls in a row often enough that a tuner
#: deciding call by call switched to two threads on such runs, where two threads cost 3-15 times
#: one thread's time on average (1.13-1.17x one thread's mean over 6 s of calls, in three runs).
#: A block of 20 ms spans several time slices, and its mean time per call is what a run of such
#: calls costs (1.02x in the same three runs). Calls of 20 ms or more are blocks of one call.
BLOCK_S = 0.02
#: Re-time the count not in use once the time spent since its last trial reaches this many
#: times what a trial of it costs (a block, or one call of it if longer): at most 1/PROBE_EVERY
#: of the run is spent on it.
PROBE_EVERY = 50
#: The first re-checks after the trials come sooner: after PROBE_SOON times, then twice that,
#: and so on up to PROBE_EVERY; and once the count in use has become CHANGED times faster or
#: slower than before, by more than NOISE standard errors of its older durations (the machine
#: changed), the other is re-timed as soon as that time reaches PROBE_SOON times its duration.
#: NOISE: under load a count's durations fall into two groups, and five in a row vary by more
#: than CHANGED while the load stays what it was.
PROBE_SOON = 10
CHANGED = 1.5
NOISE = 4.0
#: A re-check of the count not in use that comes back this many times faster than the
#: typical duration of the count in use is followed by :data:`CONFIRM` more calls on that count:
#: their durations replace its older ones when they differ from them by more than NOISE
#: standard errors (that count got faster), else they join them.
PROMISING = 1.1
CONFIRM = 2
#: Trials (blocks) per count before the first choice; the latest SAMPLES durations of the
#: count in use tell whether the machine changed.
SAMPLES = 5
#: Durations (a block's time per call) kept per count: their typical duration (:func:`_typical`) decides. Under load
#: the slow group can be a fifth of a count's calls and most of its time: five durations often
#: hold none of it (tutorial_cnn's prediction under two spinning processes, two threads: most
#: calls 0.3 ms, the mean 1.3-2 ms against one thread's 0.5-0.8 ms).
HISTORY = 20
#: Tuners kept per model (one per kind of call and input shape).
MAX_TUNERS = 64


class _Tuner:
    """The thread count for one kind of work (a model's training step at one input shape, ...).

    The first call only warms up (compilation, buffers) and is not timed. The tuner decides on
    blocks of calls (:data:`BLOCK_S`): :meth:`choose` keeps the count of the block in progress,
    and :meth:`record` adds up its calls' times; a block's time per call is one "duration" below,
    its whole time what it cost. Each candidate count runs :data:`SAMPLES` blocks, alternating;
    afterwards the candidate with the lowest typical duration (:func:`_typical`) of its last
    :data:`HISTORY` blocks, and the other one runs a block whenever the time spent since its last
    trial reaches :data:`PROBE_EVERY` times what a trial of it costs (the first re-checks after the
    trials sooner: :data:`PROBE_SOON` times, then twice that, and so on up to
    PROBE_EVERY, for five trials each can mislead: under two spinning processes,
    two threads lost the trials of a vgg_mini prediction and then ran it in
    15-16 ms against one thread's 23 ms), or :data:`PROBE_SOON` times
    once the machine changed under the count in use (:meth:`_changed`: its latest
    :data:`SAMPLES` durations :data:`CHANGED` times and :data:`NOISE` standard errors
    away from its older ones; then that count keeps only those latest durations, and the one
    trial replaces the other count's). A trial that beats the count in use by
    :data:`PROMISING` is followed by :data:`CONFIRM` more blocks on that count, and
    those fresh durations replace its older ones if they differ from them by more
    than NOISE standard errors (:meth:`_settle`): the other count got faster
    while the one in use did not (under two spinning processes, two threads ran
    a prediction in 8 ms in one benchmark run and in 30-40 ms in others), and
    waiting for three re-checks :data:`PROBE_EVERY` blocks apart would take 150
    blocks; otherwise they join them (three fast blocks of a count whose blocks are
    mostly fast and sometimes very slow say nothing new). (Two candidates; the choice is
    recomputed when a block ends, so :meth:`choose` is a few comparisons and sums: about 2 µs
    with :meth:`record` when a call ends a block, 0.2 µs when it only adds to one.)

    Against the rule before (five durations per count, a 1.5x change of the count in use
    alone), two tuners in one process under two spinning processes, interleaved with one and
    two threads fixed, 8 s of calls per row, default / best fixed count by means: tutorial_cnn's
    training step 1.07 and 1.09 against 1.13 and 1.17, its prediction 1.15 and 1.15 against 1.18
    and 1.19, resnet_mini's prediction 1.04 against 1.05 (two runs on a 2-core machine; README.md,
    "Measured under load", names it). Quiet: 1.00-1.05 against 1.00-1.05 in the eight cells.
    """

    def __init__(self, candidates):
        self.candidates = tuple(candidates)
        self.times = {n: collections.deque(maxlen=HISTORY) for n in self.candidates}
        self.typical = {n: math.inf for n in self.candidates}
        self.warm = False
        self.ready = False  # every candidate has SAMPLES durations
        self.best, self.other = self.candidates[0], self.candidates[-1]
        self.since_probe = 0.0
        self.probing = False
        self.reference = math.inf
        self.confirming = 0  # calls still to run on the other count after a promising trial
        self.fresh = []  # the durations of that trial and its confirming calls
        self.spacing = PROBE_SOON  # re-check after this many of the other's trial costs: doubles to PROBE_EVERY
        self.block_n, self.block_time, self.block_calls = None, 0.0, 0  # the block in progress
        self.block_len = {n: 1 for n in self.candidates}  # calls in each count's latest block

    def choose(self):
        """The thread count for the next call: the block's in progress, else the next block's."""
        if self.block_calls:
            return self.block_n
        self.block_n = self._choose()
        return self.block_n

    def record(self, n, seconds):
        """The call just made took ``seconds`` on ``n`` threads."""
        if not self.warm:
            self.warm = True
            return
        self.block_time += seconds
        self.block_calls += 1
        if self.block_time >= BLOCK_S:
            total, calls = self.block_time, self.block_calls
            self.block_time, self.block_calls = 0.0, 0
            self.block_len[n] = calls
            self._record(n, total / calls, total)

    def _trial_cost(self, n):
        """What re-timing count ``n`` costs: its typical duration times the calls of its latest block."""
        return self.typical[n] * self.block_len[n]

    def _choose(self):
        self.probing = False
        if self.confirming:
            self.probing = True
            return self.other
        if self.ready:
            other = self._trial_cost(self.other)
            due = self.since_probe >= self.spacing * other
            if self.since_probe >= PROBE_SOON * other:
                # The count in use got much faster or slower since the other was last timed:
                # the machine changed, and the other's durations are stale.
                if self._changed():
                    due = True
                    self.times[self.other].clear()  # this trial alone stands for the other count
                    recent = self._latest(self.best)  # and the latest ones for this one
                    self.times[self.best].clear()
                    self.times[self.best].extend(recent)
                    self.typical[self.best] = _mean(recent)  # all five, the largest too: the change is in them
            if due:
                self.probing = True
                return self.other
            return self.best
        if not self.warm:
            return self.candidates[0]
        return min(self.candidates, key=lambda n: len(self.times[n]))

    def _record(self, n, seconds, total):
        """A block of calls on ``n`` threads ended: ``seconds`` per call, ``total`` in all."""
        if self.confirming:
            self.confirming -= 1
            self.fresh.append(seconds)
            if self.confirming:
                return
            self._settle(n)
        elif self.probing and seconds * PROMISING < self.typical[self.best]:
            self.fresh = [seconds]  # faster than the count in use: the next calls tell whether it changed
            self.confirming = CONFIRM
            return
        else:
            self.times[n].append(seconds)
        self.typical[n] = _typical(self.times[n])
        if self.probing:
            self.since_probe = 0.0
            self.spacing = min(PROBE_EVERY, 2 * self.spacing)
        else:
            self.since_probe += total
        before = self.best
        if self.typical[self.other] < self.typical[self.best]:
            self.best, self.other = self.other, self.best
        if not self.ready:
            self.ready = all(len(t) >= SAMPLES for t in self.times.values())
            if self.ready:
                self.since_probe = 0.0  # the first re-check is PROBE_SOON trials' cost after the trials
        if self.probing or not self.ready or self.best != before:
            self.reference = self._recent(self.best)  # the level the comparison was made at

    def _settle(self, n):
        """After a promising trial of count ``n`` and its confirming calls (``self.fresh``):
        their durations replace the count's older ones if their mean differs from those by more
        than :data:`NOISE` standard errors (the count got faster: the machine changed), else
        they join them (two fast calls in three from a count whose calls are mostly fast and
        sometimes very slow say nothing new)."""
        older, fresh = self.times[n], self.fresh
        if len(older) >= SAMPLES and abs(_mean(fresh) - _mean(older)) <= NOISE * _spread(older) / math.sqrt(len(fresh)):
            older.extend(fresh)
        else:
            older.clear()
            older.extend(fresh)

    def _latest(self, n):
        """The latest :data:`SAMPLES` durations of count ``n`` (fewer if it has fewer)."""
        times = self.times[n]
        return list(itertools.islice(times, max(0, len(times) - SAMPLES), None))

    def _recent(self, n):
        """:func:`_typical` of the latest :data:`SAMPLES` durations of count ``n``."""
        return _typical(self._latest(n))

    def _changed(self):
        """True when the machine changed under the count in use: its latest :data:`SAMPLES`
        durations are :data:`CHANGED` times faster or slower than its older ones, by more than
        :data:`NOISE` standard errors of them (under load a count's durations fall into two
        groups, and five of them vary by more than CHANGED while nothing changes)."""
        times = self.times[self.best]
        count = len(times)
        if count < 2 * SAMPLES:
            return not 1 / CHANGED < self._recent(self.best) / self.reference < CHANGED
        latest = sum(itertools.islice(times, count - SAMPLES, None))
        recent, mean = latest / SAMPLES, (sum(times) - latest) / (count - SAMPLES)
        if 1 / CHANGED < recent / mean < CHANGED:  # (every block: kept to two sums)
            return False
        return abs(recent - mean) > NOISE * _spread(list(itertools.islice(times, 0, count - SAMPLES))) / math.sqrt(SAMPLES)


def _mean(values):
    return sum(values) / len(values)


def _spread(values):
    """The standard deviation of ``values`` (at least one)."""
    mean = _mean(values)
    return math.sqrt(sum((t - mean) ** 2 for t in values) / len(values))


def _typical(values):
    """The mean of ``values`` without the largest one (all of them when fewer than :data:`SAMPLES`;
    inf when none).

    Not the median: on a busy machine a call either fits in its time slice or waits out
    another process's whole slice, so each count's durations fall into two groups (tutorial_cnn's
    training step under two spinning processes: about 2 ms, or 6.5 ms, the second group 60-70%
    of the calls at either count), and a median of five lands in either group by chance. Two
    threads of mnist_cnn's batch-64 prediction took 9 ms or 16-40 ms (about 40% of calls) and
    one thread a steady 16-21 ms: two threads were faster on average, 16.1 against 20.1 ms, but
    a median of five two-thread calls lands in the slow group about a third of the time (binomial
    odds at 40%), and the tuner then kept one thread (a loaded benchmark run: 21.4 ms against
    14.7 ms on two threads). The mean is what a run of many calls costs; leaving out the largest
    of a full window keeps one stray stall from deciding. Not from fewer: a re-check and its
    :data:`CONFIRM` calls are three durations, and dropping one of three lets two fast calls
    decide for a count that is mostly slow (resnet_mini's prediction under two spinning
    processes: two threads took 24.3, 156.8 and 24.3 ms, 111 ms on average, against one thread's
    36-44 ms; without the largest they won, and the tuner ran two threads for the next calls).
    """
    if not values:
        return math.inf
    if len(values) < SAMPLES:
        return _mean(values)
    return (sum(values) - max(values)) / (len(values) - 1)


#: Tuners per owner (a model), by key; weak on the owner.
_TUNERS = weakref.WeakKeyDictionary()
_local = threading.local()


def in_trials():
    """True while the thread tuner of this thread's latest adaptive call (a model's training
    step or prediction at one input shape) is still on its first trials of each count:
    :data:`SAMPLES` blocks each of about :data:`BLOCK_S` (or of one call, if longer),
    alternating, after one untimed call. A benchmark's warm-up repeats a call until this is
    False, so that its timed rounds measure the steady state, as after the first steps of a
    ``fit``. False after a call on a fixed thread count (no tuner)."""
    tuner = getattr(_local, "tuner", None)
    return tuner is not None and not tuner.ready


def spoil_timing():
    """Tell the adaptive call in progress in this thread (if any) that its duration is not
    representative (the planner timed kernel variants inside it): its tuner records nothing
    for it, and a tuner still warming up warms up again on the next call."""
    _local.spoiled = True


def runs_numba_kernels(owner):
    """True when ``owner`` (a model) runs a layer or its loss through a Numba implementation.

    Those kernels do their own threading on Numba's pool, and every GEMM they
    make runs on the calling kernel thread; a BLAS call left multi-threaded
    there (a small dense GEMM through ``numba:blas``, the input check's dot
    product) wakes OpenBLAS's workers, which then spin for a while after the
    call and take the cores from Numba's workers at the next barrier (the README's
    paragraph on threads under "The ``fastcnn`` command" has the measured cost).
    """
    fns = [getattr(layer, "_fn", None) for layer in getattr(owner, "layers", ())]
    fns.append(getattr(owner, "_loss_op", None))
    return any(str(getattr(fn, "impl", "")).startswith("numba") for fn in fns)


def _blas_context(owner):
    """OpenBLAS on one thread inside a call of a model that runs Numba kernels, else nothing."""
    if runs_numba_kernels(owner):
        from fastcnn.kernels import _blas

        return _blas.blas_single_threaded()
    return contextlib.nullcontext()


def adaptive(kind, variant=None):
    """Decorator for a method ``f(self, x, ...)``: run it on the thread count :class:`_Tuner` picks.

    One tuner per ``(self, kind, x.shape)``, and per ``variant(self, *args, **kwargs)``
    when given (work of another cost at the same shape, e.g. inference with and without
    BatchNormalization folded). A fixed policy (:func:`thread_policy`)
    just applies its count; calls nested in an adaptive call run on the count
    chosen for the outer one. The count chosen stays in force after the call
    (:func:`get_num_threads` reports it); while a model that runs Numba kernels
    is inside the call, BLAS runs on one thread (:func:`runs_numba_kernels`).
    """
    def decorate(method):
        @functools.wraps(method)
        def run(self, x, *args, **kwargs):
            if getattr(_local, "active", False):
                return method(self, x, *args, **kwargs)
            policy, n = thread_policy()
            if policy == "fixed" or n <= 1:
                _local.tuner = None
                _apply(n)
                _local.active = True
                try:
                    with _blas_context(self):
                        return method(self, x, *args, **kwargs)
                finally:
                    _local.active = False
            try:
                tuners = _TUNERS.setdefault(self, {})
            except TypeError:  # not weak-referenceable
                tuners = {}
            key = (kind, getattr(x, "shape", None), n,
                   None if variant is None else variant(self, x, *args, **kwargs))
            tuner = tuners.get(key)
            if tuner is None:
                if len(tuners) >= MAX_TUNERS:  # a stream of new shapes: start over rather than grow
                    tuners.clear()
                tuner = tuners[key] = _Tuner((n, 1))
            _local.tuner = tuner
            chosen = tuner.choose()
            _apply(chosen)  # and left there: setting it back after each call would cost more than the choice
            _local.active = True
            _local.spoiled = False
            start = time.perf_counter()
            try:
                with _blas_context(self):
                    out = method(self, x, *args, **kwargs)
            finally:
                _local.active = False
            if not _local.spoiled:  # a call that planned kernels is no trial of its thread count
                tuner.record(chosen, time.perf_counter() - start)
            return out

        return run

    return decorate
