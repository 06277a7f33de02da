"""Turn a pytest-benchmark JSON file into the README's performance table.

    pytest benchmarks --benchmark-only --benchmark-json bench.json
    python -m fastcnn.benchreport bench.json --markdown

The benchmarks (``benchmarks/``) record in each ``extra_info``: ``kind``
(``"op"``, ``"model"`` or ``"peak"``), ``impl``, ``gflop`` (1e9 floating-point
operations per call) and ``gemm_like``; ``machine_info["fastcnn"]`` holds the
machine facts from :func:`environment`. From those and the timings this module
derives, per benchmark: GFLOP/s, the speed-up over its group's baseline (the
reference where it ran at that shape, else NumPy) and the share of the float32
matmul peak measured in the same run. Times are medians throughout.
"""

import argparse
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

__all__ = ["environment", "annotate", "derive", "render_markdown", "main"]

#: The statistic every figure is computed from.
STAT = "median"
#: Row order inside a group; unknown implementations go last.
IMPL_ORDER = ("reference", "numpy", "numba", "torch", "onnxruntime")
#: Preferred baselines for speed-ups, first present wins.
BASELINES = ("reference", "numpy")
IMPL_NAMES = {"reference": "reference", "numpy": "NumPy", "numba": "Numba", "torch": "PyTorch",
              "onnxruntime": "ONNX Runtime"}


def _cpu_model():
    """The CPU with its family, model and vector extensions (the plan file's name for it)."""
    from fastcnn.planner import _cpu_model as cpu_model

    return cpu_model()


def _dist_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(*, threads=None, small=False):
    """Facts about this machine and its libraries, for ``machine_info["fastcnn"]``.

    PyTorch's version is read from its metadata, so this does not import it.
    """
    info = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "small": bool(small),
        "python": platform.python_version(),
        "numpy": _dist_version("numpy"),
        "numba": _dist_version("numba"),
        "torch": _dist_version("torch"),
        "onnxruntime": _dist_version("onnxruntime"),
        "blas": None,
    }
    try:
        import numba

        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if blas:
            p = blas[0]
            arch = f" ({p['architecture']})" if p.get("architecture") else ""
            info["blas"] = f"{p.get('internal_api', p.get('prefix'))} {p.get('version') or ''}".strip() + arch
            info["blas_threads"] = p.get("num_threads")
    except ImportError:
        pass
    return info


@dataclass
class Row:
    """One timed benchmark with the figures derived from it."""

    group: str
    kind: str
    impl: str
    seconds: Optional[float]
    rounds: int
    gflops: Optional[float] = None
    baseline: Optional[str] = None
    speedup: Optional[float] = None
    peak_share: Optional[float] = None
    note: str = ""
    extra: Optional[dict] = None


def _group_of(bench):
    return bench.get("group") or bench.get("name", "?")


def _impl_rank(row):
    """Families in IMPL_ORDER, each family's variants (``numba:winograd``) right after it, by name."""
    family = row.impl.split(":", 1)[0]
    return (IMPL_ORDER.index(family) if family in IMPL_ORDER else len(IMPL_ORDER), row.impl)


def _peak_gflops(benchmarks):
    rates = []
    for bench in benchmarks:
        extra = bench.get("extra_info") or {}
        seconds = (bench.get("stats") or {}).get(STAT)
        if extra.get("kind") == "peak" and seconds and extra.get("gflop"):
            rates.append(extra["gflop"] / seconds)
    return max(rates) if rates else None


def derive(json_dict):
    """Rows (in the JSON's group order, implementations ordered) and the matmul peak in GFLOP/s."""
    benchmarks = json_dict.get("benchmarks", [])
    peak = _peak_gflops(benchmarks)
    groups = {}
    for bench in benchmarks:
        extra = bench.get("extra_info") or {}
        stats = bench.get("stats") or {}
        seconds = stats.get(STAT)
        row = Row(
            group=_group_of(bench),
            kind=extra.get("kind", "op"),
            impl=extra.get("impl", bench.get("name", "?")),
            seconds=seconds,
            rounds=int(stats.get("rounds", 0)),
            extra=extra,
        )
        if seconds and extra.get("gflop"):
            row.gflops = extra["gflop"] / seconds
            if peak and extra.get("gemm_like") and row.kind != "peak":
                row.peak_share = row.gflops / peak
        reference = str(extra.get("reference", ""))
        if reference.startswith("skipped"):
            row.note = "reference " + reference
        groups.setdefault(row.group, []).append(row)

    rows = []
    for members in groups.values():
        members.sort(key=_impl_rank)
        timed = {r.impl: r for r in members if r.seconds}
        base = next((timed[name] for name in BASELINES if name in timed), None)
        if base is not None and len(members) > 1:
            for r in members:
                if r.seconds:
                    r.baseline = base.impl
                    r.speedup = base.seconds / r.seconds
        rows.extend(members)
    return rows, peak


def annotate(json_dict):
    """Write the derived figures into each benchmark's ``extra_info`` (in place); returns ``json_dict``."""
    rows, peak = derive(json_dict)
    by_key = {}
    for bench in json_dict.get("benchmarks", []):
        extra = bench.setdefault("extra_info", {})
        by_key.setdefault((_group_of(bench), extra.get("impl", bench.get("name", "?"))), []).append(extra)
    for row in rows:
        for extra in by_key.get((row.group, row.impl), []):
            extra["gflops"] = row.gflops
            extra["speedup"] = row.speedup
            extra["baseline"] = row.baseline
            extra["peak_share"] = row.peak_share
            extra["peak_gflops"] = peak
    return json_dict


def format_time(seconds):
    """``1.23 s``, ``45.6 ms`` or ``789 µs`` (three significant figures)."""
    if seconds is None:
        return "—"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _number(value):
    """Three significant figures, never in exponent notation for the values a table holds."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _speedup_cell(row):
    if row.speedup is None:
        return "—"
    if row.impl == row.baseline:
        return "baseline"
    return f"{_number(row.speedup)}× vs {IMPL_NAMES.get(row.baseline, row.baseline)}"


def _rate_cell(value):
    if value is None:
        return "—"
    return _number(value) if value >= 0.01 else "<0.01"


def _share_cell(value):
    return "—" if value is None else f"{100 * value:.1f}%"


def _cell(text):
    return str(text).replace("|", "\\|")


def _table(rows):
    lines = [
        "| benchmark | implementation | time | speed-up | GFLOP/s | % of matmul peak |",
        "|---|---|--:|--:|--:|--:|",
    ]
    previous = None
    for r in rows:
        label = ""
        if r.group != previous:
            label = r.group + (" ¹" if r.note else "")
            previous = r.group
        lines.append(
            f"| {_cell(label)} | {IMPL_NAMES.get(r.impl, r.impl)} | {format_time(r.seconds)} | "
            f"{_speedup_cell(r)} | {_rate_cell(r.gflops)} | {_share_cell(r.peak_share)} |"
        )
    return lines


def _date(json_dict):
    stamp = json_dict.get("datetime")
    if not stamp:
        return "an unknown date"
    try:
        return datetime.fromisoformat(stamp).date().isoformat()
    except ValueError:
        return str(stamp)[:10]


def _machine_line(json_dict):
    machine = json_dict.get("machine_info") or {}
    env = machine.get("fastcnn") or {}
    cpu = env.get("cpu_model") or (machine.get("cpu") or {}).get("brand_raw") or "an unknown CPU"
    parts = [f"{cpu}"]
    if env.get("cores"):
        usable = env.get("usable_cores")
        parts.append(f"{env['cores']} cores" + (f" ({usable} usable)" if usable and usable != env["cores"] else ""))
    if env.get("threads"):
        plural = "" if env["threads"] == 1 else "s"
        parts.append(f"{env['threads']} thread{plural} for Numba, BLAS and PyTorch alike")
    python = env.get("python") or machine.get("python_version")
    libs = [f"Python {python}"] if python else []
    for key, name in (("numpy", "NumPy"), ("numba", "Numba"), ("torch", "PyTorch"), ("onnxruntime", "ONNX Runtime")):
        if env.get(key):
            libs.append(f"{name} {env[key]}")
    if env.get("blas"):
        libs.append(f"BLAS: {env['blas']}")
    return f"Measured on {_date(json_dict)} on {', '.join(parts)}" + (f"; {', '.join(libs)}." if libs else ".")


def _against_peer(rows, peer):
    """fastcnn (Numba) beside the peer ``peer`` (an impl name) for every model benchmark both ran:
    images/s and the ratio."""
    name = IMPL_NAMES[peer]
    pairs = {}
    for r in rows:
        if r.kind == "model" and r.seconds and r.impl in ("numba", peer):
            pairs.setdefault(r.group, {})[r.impl] = r
    lines = []
    for group, both in pairs.items():
        if len(both) == 2:
            n = (both["numba"].extra or {}).get("batch")
            rate = (lambda r: f"{n / r.seconds:,.0f}") if n else (lambda r: "—")
            lines.append(f"| {_cell(group)} | {rate(both['numba'])} | {rate(both[peer])} | "
                         f"**{both[peer].seconds / both['numba'].seconds:.2f}×** |")
    if not lines:
        return []
    return ([f"### fastcnn against {name}", "", f"| benchmark | fastcnn img/s | {name} img/s | fastcnn speed-up |",
             "|---|--:|--:|--:|"] + lines
            + ["", f"Images per second (batch / median time) of the Numba implementation and of {name} in the same "
               f"run; the speed-up is {name}'s time over fastcnn's (above 1: fastcnn is faster).", ""])


def _against_torch(rows):
    """fastcnn (Numba) beside PyTorch for every model benchmark both ran: images/s and the ratio."""
    return _against_peer(rows, "torch")


def _against_onnxruntime(rows):
    """fastcnn (Numba) ``predict`` beside ONNX Runtime running the model's ONNX export."""
    lines = _against_peer(rows, "onnxruntime")
    if lines:
        lines[-2] += (" ONNX Runtime runs `model.export_onnx`'s graph (CPU provider, the same intra-op "
                      "thread count, one inter-op thread).")
    return lines


def _memory(rows):
    """Peak resident memory of the training benchmarks that measured it, against PyTorch's."""
    chosen = [r for r in rows if r.kind == "memory" and (r.extra or {}).get("peak_rss_mb")]
    if not chosen:
        return []
    torch_mb = next((r.extra["peak_rss_mb"] for r in chosen if r.impl == "torch"), None)
    lines = ["### Memory", "", "| benchmark | implementation | peak RSS | share of PyTorch's |", "|---|---|--:|--:|"]
    for r in chosen:
        mb = r.extra["peak_rss_mb"]
        share = f"{100 * mb / torch_mb:.0f}%" if torch_mb else "—"
        lines.append(f"| {_cell(r.group)} | {IMPL_NAMES.get(r.impl, r.impl)} | {mb:,.0f} MB | {share} |")
    return lines + ["", "Peak resident memory of a process that trains, each in a process of its own (everything: "
                        "interpreter, libraries, model, optimizer state, buffers).", ""]


def _under_load(rows):
    """benchmarks/test_bench_contention.py: fastcnn's default, fastcnn on one thread and PyTorch
    under the same background load, per cell."""
    out = []
    for loaded in (True, False):
        cells = {}
        for r in rows:
            if r.kind == "contention" and r.seconds and bool((r.extra or {}).get("load_processes", 1)) == loaded:
                cells.setdefault(r.group, {})[r.impl] = r
        if cells:
            out += _contention_table(cells, loaded)
    return out


def _ratio_of_means(means, own_means, stderr):
    """``default / fastest`` of the rows' mean times, with its standard error (``1.04 ± 0.03``)
    when the benchmark recorded the rows' standard errors."""
    best = min(own_means, key=own_means.get)
    ratio = means["numba"] / own_means[best]
    if "numba" not in stderr or best not in stderr:
        return f"{ratio:.2f}"
    relative = math.hypot(stderr["numba"] / means["numba"], 0.0 if best == "numba" else stderr[best] / own_means[best])
    return f"{ratio:.2f} ± {ratio * relative:.2f}"


def _contention_table(cells, loaded):
    lines = ["### Under load" if loaded else "### Quiet machine, interleaved", "",
             "| benchmark | fastcnn default | fastcnn 1 thread | fastcnn all threads | PyTorch | "
             "default / best fastcnn | PyTorch / default |" + (" default / best, means |" if loaded else ""),
             "|---|--:|--:|--:|--:|--:|--:|" + ("--:|" if loaded else "")]
    for group, row in cells.items():
        seconds = {k: r.seconds for k, r in row.items()}
        default = row.get("numba")
        if default is not None:  # the rows timed in the default's rounds, interleaved with it
            seconds.update((k, v) for k, v in ((default.extra or {}).get("interleaved") or {}).items() if v)
        d, one, every, torch = (seconds.get(k) for k in ("numba", "numba-1", "numba-all", "torch"))
        cell = (lambda t: format_time(t) if t else "—")
        own = [t for t in (d, one, every) if t]
        ratio = f"{d / min(own):.2f}" if d and own else "—"
        vs_torch = f"**{torch / d:.2f}×**" if d and torch else "—"
        line = f"| {_cell(group)} | {cell(d)} | {cell(one)} | {cell(every)} | {cell(torch)} | {ratio} | {vs_torch} |"
        if loaded:
            means = ((default.extra or {}).get("means") or {}) if default is not None else {}
            own_means = {k: means[k] for k in ("numba", "numba-1", "numba-all") if means.get(k)}
            line += f" {_ratio_of_means(means, own_means, default.extra.get('stderr') or {})} |" if (
                means.get("numba") and own_means) else " — |"
        lines.append(line)
    where = ("Each cell ran while one process per core spun in a loop (started and stopped by the benchmark), its "
             "four rows interleaved round by round." if loaded else
             "Each cell's four rows took turns in blocks of timed calls, each after a few untimed ones, in a "
             "shuffled order, with nothing else running (the contention module's quiet cells; FASTCNN_BENCH_LOAD=0 "
             "runs only these).")
    return lines + ["", where + " \"default / best fastcnn\" is the "
                        "default's time over the fastest of the "
                        "default and the fixed counts (1.00: the default is the best); \"PyTorch / default\" above 1: "
                        "fastcnn is faster." + (" \"default / best, means\" is the same ratio of mean times: under load "
                                                "each row's times fall into two groups (a call fits in its time slice or "
                                                "waits out a spinning process's), a median lands in either, and the mean "
                                                "is what a run of many calls costs; ± is its standard error." if loaded
                                                else ""), ""]


def render_markdown(json_dict):
    """The performance section of the README, as Markdown text."""
    rows, peak = derive(json_dict)
    env = (json_dict.get("machine_info") or {}).get("fastcnn") or {}
    out = ["## Performance", "", _machine_line(json_dict), ""]
    if env.get("small"):
        out += ["**Smoke-test shapes (FASTCNN_BENCH_SMALL=1): these times mean nothing.**", ""]
    peak_rows = [r for r in rows if r.kind == "peak"]
    if peak:
        name = peak_rows[0].group if peak_rows else "float32 matmul"
        out.append(f"Float32 matmul peak ({name}, NumPy): **{peak:.3g} GFLOP/s**.")
    else:
        out.append("No float32 matmul peak was measured in this run, so there is no % of peak.")
    out += [
        f"Times are {STAT}s. Speed-ups are against the reference where it ran at that shape, "
        "else against NumPy. GFLOP/s counts the convolution and matrix-multiply FLOPs "
        "(a training step counts three times the forward); \"% of matmul peak\" is that rate "
        "as a share of the float32 matmul measured in the same run. The convolution FLOPs are the direct "
        "convolution's count whatever the variant, so a variant doing fewer multiplications "
        "(`numba:winograd`: 2.25x fewer) can exceed 100%.",
        "",
    ]
    out += _against_torch(rows) + _against_onnxruntime(rows) + _under_load(rows) + _memory(rows)
    sections = (("End to end", "model"), ("Ops", "op"))
    for title, kind in sections:
        chosen = [r for r in rows if r.kind == kind]
        if chosen:
            out += [f"### {title}", ""] + _table(chosen) + [""]
    others = [r for r in rows if r.kind not in ("model", "op", "peak", "memory", "contention")]
    if others:
        out += ["### Other", ""] + _table(others) + [""]
    if any(r.note for r in rows):
        out += ["¹ The reference was not run at this shape (one call would take seconds to minutes); "
                "the speed-up is against NumPy and the results were checked against the float64 NumPy path.", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None):
    """``python -m fastcnn.benchreport FILE --markdown [-o OUT]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fastcnn.benchreport",
        description="Render a pytest-benchmark JSON file (--benchmark-json) as fastcnn's performance table.",
    )
    parser.add_argument("file", help="JSON written by pytest --benchmark-json FILE")
    parser.add_argument("--markdown", action="store_true", help="Markdown output (the default and only format)")
    parser.add_argument("-o", "--output", help="write to this file instead of standard output")
    args = parser.parse_args(argv)
    try:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"benchreport: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(data, dict) or "benchmarks" not in data:
        print(f"benchreport: {args.file} is not a pytest-benchmark JSON file (no 'benchmarks' key)", file=sys.stderr)
        return 2
    text = render_markdown(data)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
