"""ONNX Runtime on NCHW-inside vs NHWC-with-Transposes exports of each preset (docs/onnx.md).

The sessions run alternately in one process, so a loaded machine slows them alike: read the
ratios. Also with graph optimizations off (a runtime that does not cancel Transpose pairs).

    PYTHONPATH=. python scripts/onnx_layout.py
"""

import os
import statistics
import time

import numpy as np
import onnxruntime as ort

from fastcnn import models
from fastcnn.onnx_export import build_onnx

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
CALLS = {64: 21, 1000: 7}


def session(proto, level, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def main():
    threads = len(os.sched_getaffinity(0))
    print(f"onnxruntime {ort.__version__}, {threads} intra-op threads", flush=True)
    for preset, build in models.PRESETS.items():
        model = build(seed=0)
        protos = {layout: build_onnx(model, layout=layout).SerializeToString() for layout in ("nchw", "nhwc")}
        sessions = {(layout, level): session(protos[layout], LEVELS[level], threads)
                    for level in LEVELS for layout in protos}
        for n, calls in CALLS.items():
            x = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)
            for s in sessions.values():
                s.run(None, {"input": x})  # warm up
            times = {key: [] for key in sessions}
            keys = list(sessions)
            for call in range(calls):
                for key in keys if call % 2 == 0 else keys[::-1]:
                    start = time.perf_counter()
                    sessions[key].run(None, {"input": x})
                    times[key].append(time.perf_counter() - start)
            for level in LEVELS:
                a, b = times["nchw", level], times["nhwc", level]
                ma, mb = statistics.median(a), statistics.median(b)
                print(f"{preset} batch {n} optimizations {level}: nchw median {ma * 1e3:.2f} ms "
                      f"(fastest {min(a) * 1e3:.2f}), nhwc median {mb * 1e3:.2f} ms (fastest {min(b) * 1e3:.2f}); "
                      f"nhwc/nchw median {mb / ma:.2f}, fastest {min(b) / min(a):.2f}", flush=True)


if __name__ == "__main__":
    main()
