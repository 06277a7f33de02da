"""The inference peer: ONNX Runtime (CPU provider) running each preset as fastcnn exports it.

Skipped cleanly when onnx or onnxruntime is not installed (``pip install 'fastcnn[onnx]'``).
The graph is ``model.export_onnx``'s (NHWC input, NCHW inside, softmax output: what
``model.predict`` computes), from the preset's starting weights; the session uses
``intra_op_num_threads`` = the benchmarks' thread count and one inter-op thread,
ONNX Runtime's full graph optimizations. Groups are named like
benchmarks/test_bench_models.py's, and benchmarks/conftest.py runs each row right
after the fastcnn (Numba) row it is compared with.

Check: the probabilities must agree with the float64 fastcnn model holding the same
weights, within ``fastcnn.testing.RTOL[float32]``.
"""

import numpy as np
import pytest

from fastcnn.testing import assert_close, max_rel_error

from benchmarks import _presets
from benchmarks._common import PRESET_LAYERS, PRESETS, THREADS, model_gflop, run_info
from benchmarks.test_bench_models import PREDICT_BATCHES, predict_group

pytest.importorskip("onnx", reason="onnx is not installed: pip install 'fastcnn[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'fastcnn[onnx]'")


def session(preset):
    """An ONNX Runtime session of the preset's export, with the benchmarks' thread count."""
    from fastcnn.onnx_export import build_onnx

    model = _presets.build(preset)
    model.set_weights(_presets.initial_weights(preset))
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(build_onnx(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("n", PREDICT_BATCHES)
@pytest.mark.parametrize("preset", PRESETS)
def test_ort_predict(benchmark, preset, n):
    sess = session(preset)
    x = _presets.batch(n)[0]

    def predict():
        return sess.run(None, {"input": x})[0]

    predict()  # warm up: buffers, prepacked weights
    benchmark.group = predict_group(preset, n)
    benchmark.extra_info.update(run_info("onnxruntime"))
    benchmark.extra_info.update(
        kind="model", preset=preset, batch=n, task="predict", onnxruntime=ort.__version__,
        ort_threads=THREADS, gflop=model_gflop(PRESET_LAYERS[preset], n, training=False), gemm_like=True,
        dtype="float32",
    )
    probs = benchmark(predict)

    truth_impl, truth = _presets.predict_truth(preset, n)
    assert probs.dtype == np.float32 and probs.shape == (n, 10)
    assert_close(probs, truth, dtype=np.float32, name=f"{preset}/onnxruntime predict")
    benchmark.extra_info["check"] = (
        f"float64 fastcnn {truth_impl}, same weights: max rel error {max_rel_error(probs, truth):.1e}"
    )
