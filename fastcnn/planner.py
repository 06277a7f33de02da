"""The planner: which numba variant of an op runs at a given call geometry.

Think of FFTW's planner and its wisdom file, or cuDNN's benchmark mode. Where an
op has several numba variants (:func:`fastcnn.registry.variants`), its ``"numba"``
entry asks :func:`choose` at every call; the answer is remembered per geometry
(op, input and weight shapes, stride, padding, pool size, dtype, and whether a
backward pass follows), so only the first call of a geometry does any work.

Threads: the key names ``NUMBA_NUM_THREADS`` (the most threads Numba can use), and
the variants are timed on that many threads (:func:`measuring`), whatever count
the step runs on. The adaptive policy of :mod:`fastcnn.parallel` flips a model's
steps between that ceiling and one thread; a plan survives the flips (it is
never re-planned per count), and a step during which the planner timed variants
is not recorded as a trial of its thread count.

``FASTCNN_PLAN`` says how a geometry is planned:

``measure`` (the default)
    Time every applicable variant on the call's own arguments (in interleaved
    rounds, each call after an untimed one, over at least :data:`MIN_SPAN_SECONDS`
    and at most :data:`BUDGET_SECONDS` after a first round that also compiles the
    kernels; each variant's minimum counts), with
    the backward pass when one follows, and keep the fastest. Choices are
    written to a JSON file, ``$FASTCNN_CACHE/plans.json`` or
    ``~/.cache/fastcnn/plans.json``, under a key naming the machine (CPU model,
    BLAS library and core type, ``NUMBA_NUM_THREADS``), the library versions and a
    digest of the kernels' source (:func:`kernels_digest`), so a
    second process on the same machine plans nothing and runs exactly the same
    arithmetic: the same seed gives the same weights. Before timing, the file is
    read again, and a choice is written under a lock where the first writer wins:
    two processes planning at once end up with one plan.
``heuristic``
    Fixed rules on the geometry (:data:`HEURISTICS`), the same on every machine:
    the same weights on any machine with the same library versions. The rules
    hold the thresholds fastcnn used before it measured; they never pick
    Winograd.
``numba:<variant>``
    That variant wherever its predicate holds, the heuristic elsewhere.

Machine-dependent numbers are planned the same way (:func:`tuned`): whether
float32 GEMMs are cut into calls small enough for OpenBLAS's unpacked kernels
(:func:`fastcnn.kernels._blas.small_gemm_mnk`) and the Winograd kernels' block
size (:func:`fastcnn.kernels.winograd.planned_block_bytes`) are timed under
``measure``; otherwise no GEMM is cut and the blocks are 512 KB (the same on
every machine).

A plan timed while other processes took the CPUs (:func:`others_share` above
:data:`BUSY_SHARE`) is used by the process that timed it but not written to the
plan file: under two spinning processes a variant's time grows by whole scheduler
slices (8 ms and 16 ms where 0.13-2.5 ms were true), which rank the variants by
luck, and a plan on disk lasts. The next process on a quieter machine times it
again.

The first time a process times anything it says so on stderr, once, and again
when it keeps a plan out of the file because the machine was busy.
"""

import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from fastcnn import registry

__all__ = ["choose", "tuned", "measuring", "plan_mode", "cache_path", "machine_key", "kernels_digest", "geometry_key",
           "Planner", "rounds_minimum", "others_share", "HEURISTICS", "BUDGET_SECONDS", "REPEATS",
           "MIN_SPAN_SECONDS", "BUSY_SHARE"]

#: At most this long timing one geometry's variants after their first round (a round under
#: way is finished), so that planning a preset takes a few seconds.
BUDGET_SECONDS = 0.3

#: Rounds of timing, each timing every variant once in turn (fewer when the budget runs
#: out; each variant's minimum counts).
REPEATS = 3

#: The rounds go on for at least this long (within the budget): longer than OpenBLAS's
#: workers spin after a multi-threaded call (measured: about 0.1 s, during which a
#: parallel Numba kernel ran 20x slower; see :func:`rounds_minimum`).
MIN_SPAN_SECONDS = 0.2

#: A plan is not written to the file when other processes used more than this share of
#: the CPUs this process may run on while it was timed (:func:`others_share`).
BUSY_SHARE = 0.2

#: :func:`others_share` tells nothing of a span shorter than this many clock ticks.
SHARE_TICKS = 10

#: op -> rule(geometry) -> variant name: the heuristic mode (set by fastcnn.kernels).
HEURISTICS = {}

_FORMAT = 1


def plan_mode(value=None):
    """``FASTCNN_PLAN`` (or ``value``) parsed: ``"measure"``, ``"heuristic"`` or a variant name.

    Raises ``ValueError`` for anything else, listing what is accepted.
    """
    raw = os.environ.get("FASTCNN_PLAN", "") if value is None else value
    mode = raw.strip() or "measure"
    if mode in ("measure", "heuristic"):
        return mode
    known = sorted({name for op in registry.ops() for name in registry.variants(op)})
    if mode in known:
        return mode
    raise ValueError(f"FASTCNN_PLAN={raw!r} is not understood; expected 'measure' (the default), 'heuristic' "
                     f"or one of the variants {known}")


def cache_path():
    """Where the plans are kept: ``$FASTCNN_CACHE/plans.json``, else ``~/.cache/fastcnn/plans.json``."""
    root = os.environ.get("FASTCNN_CACHE", "").strip() or os.path.join(os.path.expanduser("~"), ".cache",
                                                                          "fastcnn")
    return os.path.join(root, "plans.json")


#: Instruction-set extensions named in the machine key (the ones the kernels' speed depends on).
_ISA_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma", "neon", "asimd", "sve")


def _cpu_model():
    """The CPU as /proc/cpuinfo names it, with its family, model, stepping and vector extensions.

    The model name alone is not enough: some virtual machines report one
    generic name for CPU generations whose kernels' speeds differ.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # the first processor's block is enough
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip().lower(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware")
    if model is None:
        import platform

        return platform.processor() or platform.machine() or "unknown CPU"
    ident = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    isa = [flag for flag in _ISA_FLAGS if flag in flags]
    detail = ", ".join(x for x in (" ".join(ident), " ".join(isa)) if x)
    return f"{model} ({detail})" if detail else model


@functools.lru_cache(maxsize=None)
def kernels_digest(root=None):
    """The first 12 hex digits of a SHA-256 of the kernels' source (``fastcnn/kernels/*.py``, by
    name and content): a plan measured before a kernel changed is not reused after it, even
    where the version number stayed the same (a development checkout, a patched install)."""
    root = root or os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
    digest = hashlib.sha256()
    try:
        for name in sorted(n for n in os.listdir(root) if n.endswith(".py")):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:  # not on a file system (a zip import): the version alone tells
        return "unknown"
    return digest.hexdigest()[:12]


def machine_key():
    """The machine, library versions and kernel source a plan holds for, as one string."""
    import numba

    import fastcnn
    from fastcnn.kernels import _blas

    info = _blas._numpy_blas_info()
    blas = f"{info.get('internal_api', 'none')} {info.get('version', '')} {info.get('architecture', '')}".strip()
    return (f"{_cpu_model()} | BLAS {blas} | numba threads {numba.config.NUMBA_NUM_THREADS} | "
            f"fastcnn {fastcnn.__version__} (kernels {kernels_digest()}) numpy {np.__version__} "
            f"numba {numba.__version__}")


def geometry_key(geometry, train):
    """A geometry and pass as one string (the plan file's key)."""
    g = geometry

    def dims(t):
        return "x".join(map(str, t))

    parts = [g.op, f"x={dims(g.x_shape)}", f"w={dims(g.w_shape)}"]
    if g.stride is not None:
        parts.append(f"stride={dims(g.stride)}")
    if g.padding is not None:
        parts.append("padding=" + ",".join(dims(p) for p in g.padding))
    if g.pool_size is not None:
        parts.append(f"pool={dims(g.pool_size)}")
    parts += [g.dtype, "train" if train else "infer"]
    return " ".join(parts)


def _time_variant(entry, args, kwargs, train):
    """Seconds of one forward (and backward when ``train``) of ``entry``, after an untimed one
    (it compiles or loads the kernels and faults the pages in, and puts this variant's data in
    the caches as the previous call of a step would)."""
    kw = dict(kwargs)
    if "workspace" in kw:
        kw["workspace"] = {}  # its own buffers: the caller's stay as they are
    y, cache = entry.forward(*args, **kw)
    dy = np.ones(y.shape, dtype=y.dtype) if train else None
    if train:
        entry.backward(dy, cache)
    start = time.perf_counter()
    y, cache = entry.forward(*args, **kw)
    if train:
        entry.backward(dy, cache)
    return time.perf_counter() - start


def rounds_minimum(names, measure, *, min_rounds, min_span, budget=float("inf")):
    """``{name: seconds}``: the minimum of ``measure(name)`` over rounds, each round measuring
    every name once in turn, for at least ``min_rounds`` rounds and ``min_span`` seconds, and
    no more rounds once ``budget`` seconds have passed (a round under way is finished).

    Interleaved rounds spread over a span, rather than each name's repetitions back to back:
    a disturbance shorter than the span (OpenBLAS's workers spinning for about 0.1 s after a
    multi-threaded NumPy call, a burst of another process) slows some rounds of every name,
    not all of one name's repetitions.

    The span and the budget are counted from the end of the first round: a name's first
    measurement also compiles or loads its kernels and runs the tunings they make
    (:func:`tuned`), which took 0.1-0.35 s at vgg_mini's first layer; counted, that cost
    used up the budget in one round, which left one timing per variant, taken right after
    its compilation (im2col there: 5.4 ms against 0.37 ms when warm)."""
    times = dict.fromkeys(names, float("inf"))
    start = None
    rounds = 0
    while True:
        for name in names:
            times[name] = min(times[name], float(measure(name)))
        rounds += 1
        if start is None:
            start = time.perf_counter()
        elapsed = time.perf_counter() - start
        if elapsed >= budget or (rounds >= min_rounds and elapsed >= min_span):
            return times


def _process_cpus():
    """The CPUs this process's threads may run on: the union of every thread's
    ``Cpus_allowed_list`` (``os.sched_getaffinity`` answers for the calling thread, and with
    ``OMP_PROC_BIND`` set the OpenMP runtime pins the main thread to one CPU: the share then
    read 0 under load); the calling thread's affinity where ``/proc`` has no tasks; None
    where neither exists."""
    cpus = set()
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/status", encoding="ascii") as f:
                    for line in f:
                        if line.startswith("Cpus_allowed_list:"):
                            for part in line.split(":", 1)[1].strip().split(","):
                                lo, _, hi = part.partition("-")
                                cpus.update(range(int(lo), int(hi or lo) + 1))
            except FileNotFoundError:  # the thread ended meanwhile
                continue
    except (OSError, ValueError):
        cpus = set()
    if cpus:
        return cpus
    try:
        return set(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return None


def _cpu_counters():
    """``(busy, own, wall)`` now: ``{cpu: seconds}`` that each CPU spent busy (``/proc/stat``:
    user, nice, system, irq, softirq and steal), this process's CPU seconds, and a wall
    clock in seconds; None where ``/proc/stat`` cannot be read (not Linux)."""
    busy = {}
    try:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0].startswith("cpu") and fields[0] != "cpu":
                    # user nice system idle iowait irq softirq steal (guest time is within user)
                    ticks = sum(int(v) for v in fields[1:4]) + sum(int(v) for v in fields[6:9])
                    busy[int(fields[0][3:])] = ticks / tick
    except (OSError, ValueError, AttributeError):
        return None
    own = os.times()
    return busy, own.user + own.system, time.perf_counter()


@contextlib.contextmanager
def others_share():
    """Measures, over its block, the share of this process's CPUs that other processes used
    (and the hypervisor's steal): ``with others_share() as share: ...`` then ``share[0]``,
    0 to 1, or None where it cannot be told: not Linux, or a block shorter than
    :data:`SHARE_TICKS` clock ticks (the kernel counts CPU time in ticks, 10 ms at
    ``SC_CLK_TCK`` 100: one tick in a 1 ms block would read as the whole machine). The
    CPUs are those the process's threads may run on at the end of the block
    (:func:`_process_cpus`: the thread pool may start inside it)."""
    share = [None]
    before = _cpu_counters()
    try:
        yield share
    finally:
        after = _cpu_counters()
        allowed = _process_cpus()
        if before is not None and after is not None and allowed:
            span = after[2] - before[2]
            cpus = [c for c in allowed if c in before[0] and c in after[0]]
            if cpus and span * os.sysconf("SC_CLK_TCK") >= SHARE_TICKS:
                busy = sum(after[0][c] - before[0][c] for c in cpus)
                others = busy - (after[1] - before[1])
                share[0] = min(max(others / (span * len(cpus)), 0.0), 1.0)


class Planner:
    """Chooses variants, remembers choices in memory and in the plan file at ``path``.

    ``timer(entry, args, kwargs, train) -> seconds`` times one call of one
    variant (tests inject a fake one); ``machine`` overrides :func:`machine_key`.
    """

    def __init__(self, path=None, *, timer=None, machine=None, budget=BUDGET_SECONDS, repeats=REPEATS,
                 min_span=MIN_SPAN_SECONDS, announce=True):
        self.path = path or cache_path()
        self.timer = timer or _time_variant
        self._machine = machine
        self.budget = budget
        self.repeats = repeats
        self.min_span = min_span
        self.announce = announce
        self.announced = False
        self.announced_busy = False
        self.busy_plans = 0  # choices and tunings kept out of the file because the machine was busy
        self.memo = {}  # (mode, geometry, train) -> OpImpl
        self.quick = {}  # the same choices keyed by the calls' raw shapes, dtypes and arguments
        self.timings = {}  # geometry key -> {variant: seconds}, what this process measured

    def __repr__(self):
        return f"Planner({self.path!r}, {len(self.memo)} choices)"

    @property
    def machine(self):
        if self._machine is None:
            self._machine = machine_key()
        return self._machine

    def choose(self, op, args, kwargs, mode=None):
        """The :class:`fastcnn.registry.OpImpl` to run for ``forward(*args, **kwargs)`` of ``op``."""
        mode = plan_mode() if mode is None else mode
        train = bool(kwargs.get("need_cache", True))
        x, w = args[0], args[1]
        try:  # every call of a layer after its first: the call's own values as the key (no Geometry built)
            quick = (op, mode, train, x.shape, w.shape, x.dtype, kwargs.get("stride"), kwargs.get("padding"),
                     kwargs.get("pool_size"))
            entry = self.quick.get(quick)
        except TypeError:  # a list among them: unhashable
            quick = entry = None
        if entry is not None:
            return entry
        geometry = registry.geometry_of(op, args, kwargs)
        memo_key = (mode, geometry, train)
        entry = self.memo.get(memo_key)
        if entry is None:
            entry = self.memo[memo_key] = registry.get(op, self._choose(op, geometry, train, mode, args, kwargs))
        if quick is not None:
            self.quick[quick] = entry
        return entry

    def _choose(self, op, geometry, train, mode, args, kwargs):
        candidates = registry.variants(op, geometry, training=train)
        if not candidates:
            raise ValueError(f"no numba variant of {op!r} applies to {geometry}")
        if mode not in ("measure", "heuristic") and mode in candidates:
            return mode
        if mode != "measure" or len(candidates) == 1:
            return heuristic(op, geometry, candidates)
        key = geometry_key(geometry, train)
        known = self.read().get(self.machine, {}).get(key)  # another process may have planned it
        if isinstance(known, dict) and known.get("choice") in candidates:
            return known["choice"]
        if self.announce and not self.announced:
            self.announced = True
            print(f"fastcnn: planning kernels for new layer shapes (timing the variants, FASTCNN_PLAN=measure); "
                  f"plans are kept in {self.path}", file=sys.stderr, flush=True)
        with measuring(), others_share() as share:
            entries = {name: registry.get(op, name) for name in candidates}
            times = rounds_minimum(candidates, lambda name: self.timer(entries[name], args, kwargs, train),
                                   min_rounds=self.repeats, min_span=self.min_span, budget=self.budget)
        self.timings[key] = times
        fastest = min(candidates, key=lambda name: (times[name], candidates.index(name)))
        if self._busy(share[0]):
            return fastest
        return self.record(key, fastest, times, candidates)

    def _busy(self, share):
        """True (and said once) when other processes used more than :data:`BUSY_SHARE` of the
        CPUs during a timing: its result then holds for this process only."""
        if share is None or share <= BUSY_SHARE:
            return False
        self.busy_plans += 1
        if self.announce and not self.announced_busy:
            self.announced_busy = True
            print(f"fastcnn: the machine is busy (other processes took {share:.0%} of the CPUs while kernels were "
                  f"timed): this process uses what it timed but keeps it out of {self.path}; a later process "
                  f"times it again", file=sys.stderr, flush=True)
        return True

    # -- the plan file -----------------------------------------------------------------
    def read(self):
        """The plan file's content (``{machine: {geometry: {"choice", "seconds"}}}``), or {} when
        there is none; an unreadable file is ignored with a warning."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            warnings.warn(f"fastcnn: ignoring the unreadable plan file {self.path} ({error}); "
                          f"it will be replaced", RuntimeWarning, stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("plans"), dict):
            warnings.warn(f"fastcnn: ignoring the plan file {self.path}: not a fastcnn plan file of format "
                          f"{_FORMAT}; it will be replaced", RuntimeWarning, stacklevel=3)
            return {}
        return data["plans"]

    def held(self):
        """This machine's plans in the file: ``{geometry key: {"choice", "seconds"}}``."""
        mine = self.read().get(self.machine, {})
        return mine if isinstance(mine, dict) else {}

    def forget(self):
        """Remove this machine's plans from the file (other machines' stay) and from memory, so
        the next call of each geometry plans again; returns how many were removed."""
        self.memo.clear()
        self.quick.clear()
        if not os.path.exists(self.path):
            return 0
        with _locked(self.path + ".lock"):
            plans = self.read()
            gone = plans.pop(self.machine, None)
            if not gone:
                return 0
            _write_atomically(self.path, {"format": _FORMAT, "plans": plans})
        return len(gone)

    def record(self, key, choice, times, candidates=None):
        """Write ``choice`` for ``key`` unless the file already has one (the first writer wins)
        among ``candidates`` (default: any); returns the choice that holds."""
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with _locked(self.path + ".lock"):
                plans = self.read()
                mine = plans.setdefault(self.machine, {})
                held = mine.get(key)
                if isinstance(held, dict) and "choice" in held and (candidates is None
                                                                      or held["choice"] in candidates):
                    return held["choice"]
                mine[key] = {"choice": choice, "seconds": {k: round(v, 7) for k, v in times.items()}}
                _write_atomically(self.path, {"format": _FORMAT, "plans": plans})
        except OSError as error:  # a read-only home: plan in memory only
            warnings.warn(f"fastcnn: cannot write the plan file {self.path} ({error}); the plan holds for this "
                          f"process only", RuntimeWarning, stacklevel=3)
        return choice


def tuned(name, measure, rule, planner=None):
    """A machine-dependent number: under ``FASTCNN_PLAN=measure`` ``measure() -> (value, timings)``,
    run once per machine and kept in the plan file as ``"tuning <name>"``; otherwise ``rule()``."""
    if plan_mode() != "measure":
        return rule()
    planner = planner or default_planner()
    key = f"tuning {name}"
    known = planner.read().get(planner.machine, {}).get(key)
    if isinstance(known, dict) and "choice" in known:
        return known["choice"]
    with measuring(), others_share() as share:
        value, times = measure()
    if planner._busy(share[0]):
        return value
    return planner.record(key, value, times)


@contextlib.contextmanager
def measuring():
    """The context every timing of the planner runs in.

    - Numba runs on :func:`fastcnn.parallel.max_num_threads` threads (``NUMBA_NUM_THREADS``,
      the count :func:`machine_key` names), whatever count the adaptive policy or the user
      set for the step; the count in force before is restored after. A plan therefore
      depends on the machine, not on the count a step happened to run on: the adaptive
      tuner flipping between the ceiling and one thread neither invalidates nor re-plans it.
    - The adaptive call in progress, if any, is told its duration includes planning
      (:func:`fastcnn.parallel.spoil_timing`), so its tuner does not record it as a trial
      of the thread count it ran on.
    """
    import numba

    from fastcnn import parallel

    parallel.spoil_timing()
    before = numba.get_num_threads()
    numba.set_num_threads(parallel.max_num_threads())
    try:
        yield
    finally:
        numba.set_num_threads(before)


def heuristic(op, geometry, candidates=None):
    """The heuristic mode's variant for ``geometry``: the op's rule, where it applies, else the
    first applicable variant."""
    candidates = registry.variants(op, geometry) if candidates is None else candidates
    rule = HEURISTICS.get(op)
    name = rule(geometry) if rule is not None else None
    return name if name in candidates else candidates[0]


@contextlib.contextmanager
def _locked(path):
    """An exclusive advisory lock on ``path`` (POSIX); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomically(path, data):
    fd, tmp = tempfile.mkstemp(prefix=".plans-", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


_PLANNERS = {}  # $FASTCNN_CACHE -> Planner
_MODES = {}  # $FASTCNN_PLAN -> parsed mode


def default_planner():
    """The process's planner for the current ``$FASTCNN_CACHE``."""
    root = os.environ.get("FASTCNN_CACHE", "")
    planner = _PLANNERS.get(root)
    if planner is None:
        planner = _PLANNERS[root] = Planner(cache_path())
    return planner


def choose(op, args, kwargs):
    """The variant entry the ``"numba"`` dispatcher of ``op`` runs for this call (a few dict
    lookups once the geometry has been planned)."""
    raw = os.environ.get("FASTCNN_PLAN", "")
    mode = _MODES.get(raw)
    if mode is None:
        mode = _MODES[raw] = plan_mode(raw)
    return default_planner().choose(op, args, kwargs, mode)
