"""Interleaved A/B in one process: fastcnn fixed to 2 threads, fixed to 1 thread, the adaptive
default, and PyTorch on 2 threads, for each preset's train_on_batch and predict at batch 64,
under LOAD spinning processes started and killed here.

    python scripts/contention/ab.py LOAD BLOCKS STEPS_PER_BLOCK [presets]

Each variant runs STEPS_PER_BLOCK calls per block, the order reversed every other block; the
medians and the ratios adaptive / best fixed count and PyTorch / adaptive are printed.
"""
import os, subprocess, sys, time, json
import numpy as np
import numba
from fastcnn import models, parallel
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
load = int(sys.argv[1]); blocks = int(sys.argv[2]); K = int(sys.argv[3])
presets = sys.argv[4].split(",") if len(sys.argv) > 4 else ["tutorial_cnn", "mnist_cnn", "vgg_mini"]
import torch
from benchmarks import test_bench_torch as tb
torch.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.random((64, 28, 28, 1), dtype=np.float32); y = rng.integers(0, 10, 64)
procs = [subprocess.Popen([sys.executable, "-c", "import time\nt=time.monotonic()+900\nwhile time.monotonic()<t: pass"]) for _ in range(load)]
try:
    time.sleep(0.3)
    for p in presets:
        ms = {v: models.PRESETS[p](seed=0) for v in ("fixed2", "fixed1", "adaptive")}
        fm, net, _, _ = tb.peer(p); opt = tb.torch_optimizer(fm, net); lf = torch.nn.CrossEntropyLoss()
        xt, yt = tb.nchw(x), torch.from_numpy(y)
        def tstep():
            opt.zero_grad(set_to_none=True); l = lf(net(xt), yt); l.backward(); opt.step()
        def tpred():
            with torch.inference_mode(): return torch.softmax(net(xt), dim=1).numpy()
        for task in ("train", "predict"):
            for v, m in ms.items():  # warm-up incl. the tuner's trials
                if v == "adaptive": parallel.reset_num_threads()
                else: parallel.set_num_threads(int(v[-1]))
                for _ in range(7):
                    m.train_on_batch(x, y) if task == "train" else m.predict(x, batch_size=64)
            tstep() if task == "train" else tpred()
            times = {v: [] for v in ("fixed2", "fixed1", "adaptive", "torch")}
            for b in range(blocks):
                order = list(times) if b % 2 == 0 else list(reversed(times))
                for v in order:
                    if v == "torch":
                        f = tstep if task == "train" else tpred
                    else:
                        m = ms[v]
                        if v == "adaptive": parallel._fixed = None
                        else: parallel.set_num_threads(int(v[-1]))
                        f = (lambda m=m: m.train_on_batch(x, y)) if task == "train" else (lambda m=m: m.predict(x, batch_size=64))
                    for _ in range(K):
                        t = time.perf_counter(); f(); times[v].append(time.perf_counter() - t)
            med = {v: float(np.median(t)) * 1e3 for v, t in times.items()}
            best = min(med["fixed2"], med["fixed1"])
            chosen = {k[0]: list(tn.times) for k, tn in parallel._TUNERS.get(ms["adaptive"], {}).items()}
            print(f"load={load} {p:12s} {task:7s} " + " ".join(f"{v}={t:8.2f}" for v, t in med.items())
                  + f" | adaptive/best={med['adaptive']/best:.2f} torch/adaptive={med['torch']/med['adaptive']:.2f}", flush=True)
finally:
    for q in procs: q.kill()
    for q in procs: q.wait()
