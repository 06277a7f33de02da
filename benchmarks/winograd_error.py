"""Max relative error of the Winograd variants against a float64 truth (forward and dx), per dtype.

Run: PYTHONPATH=. python benchmarks/winograd_error.py (docs/ops.md quotes its output).
"""
import os
import sys
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from fastcnn import registry
from fastcnn.testing import max_rel_error
from test_ops_agreement import CONV_GRID, conv_case

cases = [c for c in CONV_GRID]
# preset shapes at batch 4: (N, H, W, C, F, k, stride, padding, bias)
presets = [(4, 28, 28, 1, 32, 3, 1, "same", True), (4, 28, 28, 32, 32, 3, 1, "same", True),
           (4, 14, 14, 32, 64, 3, 1, "same", True), (4, 14, 14, 64, 64, 3, 1, "same", True),
           (4, 26, 26, 32, 64, 3, 1, "valid", True), (4, 28, 28, 1, 8, 3, 1, "valid", False)]
worst = {}
for label, grid, truth_impl in (("grid", cases, "reference"), ("presets", presets, "numpy")):
    for case in grid:
        for seed in range(3):
            args, kwargs = conv_case(np.random.default_rng(seed), *case)
            if "numba:winograd" not in registry.applicable("conv2d", args, kwargs):
                continue
            ref = registry.get("conv2d", truth_impl)
            y64, c64 = ref.forward(*args, **kwargs)
            dy = np.random.default_rng(seed + 1).standard_normal(y64.shape)
            dx64 = ref.backward(dy, c64)[0]
            for variant, dtype in [(v, d) for v in ("numba:winograd", "numba:winograd4")
                                   for d in (np.float32, np.float64)]:
                fn = registry.get("conv2d", variant)
                a = [t if t is None else t.astype(dtype) for t in args]
                y, c = fn.forward(*a, **kwargs)
                dx = fn.backward(dy.astype(dtype), c)[0]
                for what, got, want in (("forward", y, y64), ("dx", dx, dx64)):
                    key = (variant, label, np.dtype(dtype).name, what)
                    worst[key] = max(worst.get(key, 0.0), max_rel_error(got, want))
for key in sorted(worst):
    print(key, f"{worst[key]:.2e}")
