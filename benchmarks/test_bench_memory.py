"""Peak memory of training mnist_cnn at batch 64: fastcnn against PyTorch, each in a fresh process.

A process's peak resident set (``VmHWM``) counts everything it touched:
the interpreter, the libraries (Numba's LLVM, PyTorch's kernels), the model,
the optimizer state and every buffer of a training step. Each implementation
trains the preset for :data:`STEPS` steps on the benchmark batch in a child
process of its own, so one cannot inflate the other's figure. The timed
quantity is the child's whole run (start-up included); the figure that matters
is ``extra_info["peak_rss_mb"]``. Check: the child's last loss is finite and
below its first (it trained).
"""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks._common import BATCH, THREADS, run_info

#: Training steps each child takes (buffers, optimizer slots and caches all exist after the first).
STEPS = 20

_COMMON = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks import _presets
x, y = _presets.batch({batch})
"""

_FASTCNN = _COMMON + """
import fastcnn
fastcnn.set_num_threads({threads})
model = _presets.build("mnist_cnn", "numba")
losses = [float(model.train_on_batch(x, y)) for _ in range({steps})]
"""

_TORCH = _COMMON + """
import torch
torch.set_num_threads({threads})
from benchmarks.test_bench_torch import torch_net
net = torch_net("mnist_cnn")
opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
losses = []
for _ in range({steps}):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(xt), yt)
    loss.backward()
    opt.step()
    losses.append(float(loss))
"""

_REPORT = """
def peak_mb():
    # VmHWM: this process's own high-water mark. ru_maxrss would not do in a child
    # of a big process: Linux carries the parent's peak over the fork into it.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_rss_mb": peak_mb(), "losses": losses}}))
"""


def measure(impl):
    """Run the child for ``impl``; returns its JSON report.

    Numba's kernels are compiled (or found) in this process first, so the child
    loads them from the on-disk cache as every run after the first does:
    compiling them, once per machine, costs LLVM's memory too.
    """
    if impl == "numba":
        import fastcnn

        fastcnn.warmup()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (_FASTCNN if impl == "numba" else _TORCH) + _REPORT
    code = code.format(root=root, batch=BATCH, threads=THREADS, steps=STEPS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_training_peak_memory(benchmark, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    benchmark.group = f"mnist_cnn training peak memory, batch {BATCH}"
    benchmark.extra_info.update(run_info(impl, torch=impl == "torch"))
    benchmark.extra_info.update(kind="memory", preset="mnist_cnn", batch=BATCH, steps=STEPS, gemm_like=False)
    report = benchmark.pedantic(measure, args=(impl,), rounds=1, iterations=1)
    losses = report["losses"]
    assert len(losses) == STEPS and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0], losses
    benchmark.extra_info["peak_rss_mb"] = round(report["peak_rss_mb"], 1)
    benchmark.extra_info["check"] = f"trained: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {STEPS} steps"
