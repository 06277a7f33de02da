"""Time train_on_batch and predict (batch 64) at 1 and 2 threads, interleaved, and count OpenMP
parallel regions per call.

    gcc -O2 -shared -fPIC -o scripts/contention/libgompcount.so scripts/contention/gompcount.c -ldl
    LD_PRELOAD=$PWD/scripts/contention/libgompcount.so python scripts/contention/regions.py tutorial_cnn,mnist_cnn 5

Prints one JSON line: per preset, ``regions`` (GOMP_parallel calls per training step and per
prediction; 0 without the preloaded shim) and median wall and CPU milliseconds per count.
Run it in fresh processes with OMP_WAIT_POLICY / GOMP_SPINCOUNT set to compare wait policies
(they are read when the OpenMP runtime starts).
"""
import ctypes, json, os, sys, time
import numpy as np
import fastcnn, numba
from fastcnn import models, parallel

presets = sys.argv[1].split(",")
rounds = int(sys.argv[2])
try:
    shim = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libgompcount.so"))
    shim.gompcount_get.restype = ctypes.c_longlong
except OSError:
    shim = None
rng = np.random.default_rng(0)
x = rng.random((64, 28, 28, 1), dtype=np.float32); y = rng.integers(0, 10, 64)
out = {}
for p in presets:
    m = models.PRESETS[p](seed=0)
    m.train_on_batch(x, y); m.predict(x, batch_size=64)
    regions = {}
    if shim is not None:
        for task, f in (("train", lambda: m.train_on_batch(x, y)), ("predict", lambda: m.predict(x, batch_size=64))):
            shim.gompcount_reset(); f(); regions[task] = shim.gompcount_get()
    times = {(t, n): [] for t in ("train", "predict") for n in (1, 2)}
    cpu = {(t, n): [] for t in ("train", "predict") for n in (1, 2)}
    for r in range(rounds):
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            parallel.set_num_threads(n)
            for t, f in (("train", lambda: m.train_on_batch(x, y)), ("predict", lambda: m.predict(x, batch_size=64))):
                c0 = time.process_time(); t0 = time.perf_counter(); f(); t1 = time.perf_counter(); c1 = time.process_time()
                times[(t, n)].append(t1 - t0); cpu[(t, n)].append(c1 - c0)
    out[p] = {"regions": regions,
              **{f"{t}{n}": float(np.median(v)) * 1e3 for (t, n), v in times.items()},
              **{f"{t}{n}_cpu": float(np.median(v)) * 1e3 for (t, n), v in cpu.items()}}
print(json.dumps(out))
