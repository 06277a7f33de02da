"""The adaptive thread policy against the old default (all threads, fixed), on a quiet machine.

For each preset, two models: one under the default policy, one with the count
fixed to the usable cores. After warm-up (and the tuner's first trials), their
calls alternate (the order swapped every round), so both see the same machine;
prints the medians and their ratio, per preset, for the training step at batch
64 and prediction at batch 64 and 1000. Not a pytest-benchmark file (its
rows would be timed one after the other)::

    python -m benchmarks.thread_policy_quiet
"""

import os
import time

import numpy as np

from fastcnn import parallel

from benchmarks import _presets
from benchmarks._common import warm_up

PRESETS = ("tutorial_cnn", "mnist_cnn", "vgg_mini", "resnet_mini")
#: Timed calls per row at batch 64 (a quarter of it at batch 1000, at least 5).
REPS = {"tutorial_cnn": 60, "mnist_cnn": 20, "vgg_mini": 15, "resnet_mini": 10}


def cell(preset, task, n, threads):
    x, y = _presets.batch(n)
    models = {policy: _presets.build(preset, "numba") for policy in ("adaptive", "fixed")}

    def call(policy):
        if policy == "adaptive":
            parallel.reset_num_threads()
        else:
            parallel.set_num_threads(threads)
        model = models[policy]
        return model.train_on_batch(x, y) if task == "train" else model.predict(x, batch_size=n)

    warm_up(lambda: call("adaptive"))  # and the tuner's first trials, as in the first steps of a fit
    call("fixed")
    reps = REPS[preset] if n <= 64 else max(5, REPS[preset] // 4)
    times = {"adaptive": [], "fixed": []}
    for i in range(reps):
        for policy in (("adaptive", "fixed") if i % 2 else ("fixed", "adaptive")):
            start = time.perf_counter()
            call(policy)
            times[policy].append(time.perf_counter() - start)
    parallel.reset_num_threads()
    return float(np.median(times["adaptive"])), float(np.median(times["fixed"]))


def main():
    threads = min(len(os.sched_getaffinity(0)), parallel.max_num_threads())
    print(f"adaptive default against {threads} threads fixed, interleaved, medians")
    for preset in PRESETS:
        for task, n in (("train", 64), ("predict", 64), ("predict", 1000)):
            a, b = cell(preset, task, n, threads)
            print(f"{preset:12s} {task:7s} batch {n:<5d} adaptive {a * 1e3:9.2f} ms   fixed {b * 1e3:9.2f} ms   "
                  f"ratio {a / b:.3f}", flush=True)


if __name__ == "__main__":
    main()
