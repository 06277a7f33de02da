"""Data-parallel scaling on one machine, and a model of it across machines.

    python -m benchmarks.distributed_scaling                  # mnist_cnn and vgg_mini, the three configurations
    python -m benchmarks.distributed_scaling --markdown --profile --json dist.json
    python -m benchmarks.distributed_scaling --network dist.json   # the multi-machine model from measured times

Configurations (global batch ``--batch``, 64 by default; one rank computes it
all, two ranks 32 rows each): 1 rank x 1 thread, 1 rank x 2 threads, 2 ranks x
1 thread (``mpiexec -n 2``). One-rank rows run plain ``fit``; the two-rank row
``fit(..., distributed=True)``. Each run is a fresh process: a short untimed
fit first (Numba's cache, the first steps), then ``--steps`` timed steps on
synthetic 28x28 images.

Columns: images/s; scaling efficiency = images/s / (cores used x images/s of 1
rank x 1 thread); step time; for two ranks the allreduce of one step's
gradients alone (the buckets back to back, nothing to hide behind:
:func:`fastcnn.distributed.measure_allreduce`), its time in flight during
training (start to observed completion, summed over buckets) and the exposed
part (the wait before the optimizer step, which also absorbs any imbalance
between the ranks).

The network model (``--network``): ring allreduce of ``B`` bytes on ``N`` ranks
takes ``2 (N - 1) / N * B / bandwidth + 2 (N - 1) * latency`` (:data:`LATENCY_S`
per message), against the measured compute time of a step.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMALL = os.environ.get("FASTCNN_BENCH_SMALL", "").strip() not in ("", "0")
#: (ranks, threads per rank, progress thread): the last row shows what the progress thread hides.
CONFIGS = ((1, 1, True), (1, 2, True), (2, 1, True), (2, 1, False))
PRESETS = ("mnist_cnn", "vgg_mini")
#: Per-message latency of the network model (TCP over 10/25 GbE, MPI on top).
LATENCY_S = 25e-6
BANDWIDTHS_GBPS = (10, 25)
NETWORK_RANKS = (2, 4, 8, 16, 32, 64)


def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


# -- one run (a fresh process, or every rank of mpiexec) -----------------------------------------
def worker(preset, threads, batch, steps, distributed, out):
    import fastcnn as fc

    if distributed:
        context = fc.distributed.init(threads=threads)
        root = context.rank == 0
    else:
        fc.set_num_threads(threads)
        root = True
    model = fc.models.PRESETS[preset](seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch * steps)
    kwargs = {"distributed": True} if distributed else {}
    model.fit(x[:2 * batch], y[:2 * batch], epochs=1, batch_size=batch, verbose=0, shuffle=False, **kwargs)
    start = time.perf_counter()
    history = model.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=False, **kwargs)
    seconds = time.perf_counter() - start
    result = {"preset": preset, "ranks": 1, "threads": threads, "batch": batch, "steps": steps,
              "images_per_s": batch * steps / seconds, "step_ms": 1e3 * seconds / steps,
              "loss": history.history["loss"][-1], "params": model.count_params()}
    if distributed:
        stats = model.distributed_stats
        result.update(ranks=stats["ranks"], stats=stats,
                      allreduce_alone_ms=1e3 * fc.distributed.measure_allreduce(model))
    if root:
        Path(out).write_text(json.dumps(result))


def run(preset, ranks, threads, batch, steps, progress=True, timeout=900):
    """One configuration in fresh process(es); returns the result dict."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        args = [sys.executable, "-m", "benchmarks.distributed_scaling", "--worker", preset, str(threads),
                str(batch), str(steps), str(int(ranks > 1)), out]
        if ranks > 1:
            args = [mpiexec(), "-n", str(ranks)] + args
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   FASTCNN_MPI_PROGRESS_THREAD="1" if progress else "0")
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(Path(out).read_text())


def measure(presets=PRESETS, batch=64, steps=20):
    results = []
    for preset in presets:
        for ranks, threads, progress in CONFIGS:
            results.append(run(preset, ranks, threads, batch, steps, progress))
    return results


# -- reporting ---------------------------------------------------------------------------------
def _table(headers, rows, markdown):
    if markdown:
        return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
               ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [headers] + rows]


def scaling_table(results, markdown=False):
    base = {r["preset"]: r["images_per_s"] for r in results if (r["ranks"], r["threads"]) == (1, 1)}
    rows = []
    for r in results:
        cores = r["ranks"] * r["threads"]
        efficiency = r["images_per_s"] / (cores * base[r["preset"]])
        stats = r.get("stats")
        comm = ["-", "-", "-", "-"] if stats is None else [
            f"{r['allreduce_alone_ms']:.1f}", f"{stats['allreduce_in_flight_ms_per_step']:.1f}",
            f"{stats['exposed_ms_per_step']:.1f}", f"{stats['exposed_ms_median']:.1f}"]
        config = f"{r['ranks']} x {r['threads']}"
        if stats is not None and not stats["progress_thread"]:
            config += " (no progress thread)"
        rows.append([r["preset"], config, f"{r['images_per_s']:,.0f}", f"{efficiency:.0%}",
                     f"{r['step_ms']:.1f}"] + comm)
    headers = ["preset", "ranks x threads", "img/s", "efficiency", "step ms", "allreduce alone ms",
               "in flight ms", "exposed ms (mean)", "exposed ms (median)"]
    return _table(headers, rows, markdown)


def profile_lines(results):
    """The last training step of each two-rank run, rank 0: when each bucket's allreduce ran."""
    lines = []
    for r in results:
        stats = r.get("stats")
        if not stats or not stats.get("last_step"):
            continue
        step = stats["last_step"]
        thread = "progress thread" if stats["progress_thread"] else "no progress thread"
        lines.append(f"{r['preset']}, 2 ranks x 1 thread ({thread}), batch {r['batch']}: backward "
                     f"{step['backward_ms']:.1f} ms (from the loss), then the wait before the optimizer step "
                     f"{step['wait_ms']:.2f} ms")
        for i, b in enumerate(step["buckets"]):
            lines.append(f"  bucket {i}: {b['bytes'] / 1e6:.2f} MB, Iallreduce started at {b['start_ms']:.1f} ms, "
                         f"seen complete at {b['done_ms']:.1f} ms")
    return lines


def network_table(results, markdown=False, latency=LATENCY_S, compute_ms=None):
    """Ring-allreduce time per step across machines against the compute time per step.

    ``compute_ms``: ``{preset: ms}`` of a step at the runs' batch on one 2-core
    machine; default the measured 1 rank x 2 threads. Weak scaling (the batch per
    rank stays) and strong scaling (the global batch stays: compute / N per rank).
    """
    lines = []
    for preset in dict.fromkeys(r["preset"] for r in results):
        runs = {(r["ranks"], r["threads"]): r for r in results if r["preset"] == preset and (
            "stats" not in r or r["stats"]["progress_thread"])}
        nbytes = 4 * runs[(1, 1)]["params"]
        step_ms = runs[(1, 2)]["step_ms"] if not compute_ms else compute_ms[preset]
        batch = runs[(1, 2)]["batch"]
        rows = []
        for gbps in BANDWIDTHS_GBPS:
            cells = []
            for n in NETWORK_RANKS:
                seconds = 2 * (n - 1) / n * nbytes * 8 / (gbps * 1e9) + 2 * (n - 1) * latency
                cells.append(f"{1e3 * seconds:.1f}")
            weak = next((n for n, c in zip(NETWORK_RANKS, cells) if float(c) > step_ms), None)
            strong = next((n for n, c in zip(NETWORK_RANKS, cells) if float(c) > step_ms / n), None)
            rows.append([f"{gbps} Gb/s"] + cells + [f">{NETWORK_RANKS[-1]}" if n is None else str(n)
                                                     for n in (weak, strong)])
        lines.append(f"{preset}: {nbytes / 1e6:.2f} MB of gradients per step; compute {step_ms:.1f} ms per step "
                     f"(batch {batch} per rank, 2 threads)")
        lines += _table(["allreduce ms"] + [f"N={n}" for n in NETWORK_RANKS]
                        + [f"network > compute from N ({batch}/rank)", f"same, global batch {batch}"],
                        rows, markdown)
        lines.append("")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--batch", type=int, default=8 if SMALL else 64, help="global batch")
    parser.add_argument("--steps", type=int, default=3 if SMALL else 20, help="timed steps per run")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the bucket timeline of a two-rank step")
    parser.add_argument("--json", metavar="PATH", help="write the measurements to PATH")
    parser.add_argument("--network", metavar="JSON", help="print the multi-machine model from measurements")
    parser.add_argument("--compute-ms", nargs="+", metavar="PRESET=MS",
                        help="compute time per step for the model (default: the measured 1 rank x 2 threads)")
    args = parser.parse_args(argv)
    if args.worker:
        preset, threads, batch, steps, distributed, out = args.worker
        worker(preset, int(threads), int(batch), int(steps), bool(int(distributed)), out)
        return 0
    compute = None
    if args.compute_ms:
        compute = {k: float(v) for k, v in (item.split("=") for item in args.compute_ms)}
    if args.network:
        measured = json.loads(Path(args.network).read_text())
        print("\n".join(network_table(measured, args.markdown, compute_ms=compute)))
        return 0
    results = measure(args.presets, args.batch, args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("\n".join(scaling_table(results, args.markdown)))
    if args.profile:
        print("\n" + "\n".join(profile_lines(results)))
    print("\n" + "\n".join(network_table(results, args.markdown, compute_ms=compute)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
