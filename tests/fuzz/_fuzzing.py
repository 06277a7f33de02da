"""Shared by the fuzz targets: how many cases, and the guard every case runs under.

``FASTCNN_FUZZ=long`` (``make fuzz``) runs many random cases per target; otherwise (CI) a
bounded, derandomized number (500: 6 to 15 s per target on the 2-core test machine). Each case
must end in success or the parser's typed error, within :data:`CASE_SECONDS`, with no
traced allocation above :data:`MAX_TRACED_BYTES`; the address space is capped at
:data:`ADDRESS_SPACE_SLACK` above the current size, so a runaway allocation is a
``MemoryError`` (a finding) and never the machine's OOM killer.
"""

import contextlib
import os
import resource
import time
import tracemalloc

from hypothesis import HealthCheck, settings

LONG = os.environ.get("FASTCNN_FUZZ") == "long"
CASE_SECONDS = 5.0
MAX_TRACED_BYTES = 256 << 20
ADDRESS_SPACE_SLACK = 4 << 30

#: Cases run per target, for the closing count of each session.
COUNTS = {}


def fuzz_settings(ci_examples):
    """Hypothesis settings of a target: ``ci_examples`` derandomized cases in CI, 50x more, random, with
    ``FASTCNN_FUZZ=long`` (``FASTCNN_FUZZ_EXAMPLES=N`` sets the number)."""
    examples = ci_examples * 50 if LONG else ci_examples
    examples = int(os.environ.get("FASTCNN_FUZZ_EXAMPLES", examples))
    return settings(
        max_examples=examples,
        derandomize=not LONG,
        database=None if not LONG else settings.default.database,
        deadline=None,  # timing is checked by guarded() itself, with a generous bound for a loaded machine
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


def _vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return None


@contextlib.contextmanager
def _capped_address_space():
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        size = _vm_bytes()
    except (OSError, ValueError):
        size = None
    if size is None:
        yield
        return
    cap = size + ADDRESS_SPACE_SLACK
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def guarded(target, name, fn, allowed):
    """Run one case: ``fn()`` may return or raise one of ``allowed``; anything else propagates
    (hypothesis shrinks and reports it). Returns ``fn()``'s result, or the allowed exception."""
    COUNTS[target] = COUNTS.get(target, 0) + 1
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with _capped_address_space():
            try:
                outcome = fn()
            except allowed as error:
                outcome = error
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < CASE_SECONDS, f"{name}: {seconds:.1f} s for one case"
    assert peak < MAX_TRACED_BYTES, f"{name}: a traced allocation peak of {peak:,} bytes"
    return outcome
