"""ONNX export checked by ONNX Runtime, and ONNX import (fastcnn.onnx_export, fastcnn.onnx_import).

Agreement: ONNX Runtime's probabilities against ``model.predict`` (float32) within
rtol 1e-5, atol 1e-7 (the atol only matters for probabilities below 1e-2).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'fastcnn[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'fastcnn[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastcnn as fc  # noqa: E402
from fastcnn import cli, layers as L  # noqa: E402
from fastcnn.onnx_common import OnnxConversionError  # noqa: E402
from fastcnn.onnx_export import build_onnx  # noqa: E402

RTOL, ATOL = 1e-5, 1e-7


def run_ort(path_or_proto, x):
    data = path_or_proto.SerializeToString() if hasattr(path_or_proto, "SerializeToString") else str(path_or_proto)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def images(shape, n=5, seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def assert_agrees(model, x, **export_args):
    proto = build_onnx(model, **export_args)
    onnx.checker.check_model(proto, full_check=True)
    got = run_ort(proto, x)
    want = model.predict(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return proto


def test_importing_fastcnn_does_not_import_onnx():
    code = "import sys, fastcnn; print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- export, checked by ONNX Runtime ---------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tutorial_cnn", "mnist_cnn", "vgg_mini"])
def test_presets_agree_with_predict(tmp_path, preset):
    model = fc.models.PRESETS[preset](seed=1)
    path = model.export_onnx(tmp_path / f"{preset}.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = images((28, 28, 1), n=6)
    np.testing.assert_allclose(run_ort(path, x), model.predict(x), rtol=RTOL, atol=ATOL)


def test_nhwc_layout_agrees_too():
    proto = assert_agrees(fc.models.vgg_mini(seed=2), images((28, 28, 1)), layout="nhwc")
    assert [n.op_type for n in proto.graph.node].count("Transpose") == 12  # a pair around each conv and pool


# Each architecture covers geometry the presets do not: strides, "same" padding with even
# kernels and strides (asymmetric pads), explicit padding, overlapping and padded pools,
# every activation, a Softmax between layers and at the end, float64 models.
ARCHITECTURES = {
    "same-even-kernel-stride2": ((11, 9, 3), lambda: [
        L.Conv2D(4, 4, stride=2, padding="same"), L.LeakyReLU(0.2),
        L.MaxPool2D(3, stride=2, padding="same"), L.Flatten(), L.Dense(7), L.Tanh(), L.Dense(5)]),
    "explicit-pads-avgpool": ((10, 12, 2), lambda: [
        L.Conv2D(3, (3, 2), stride=(1, 2), padding=(1, 2), use_bias=False), L.Sigmoid(),
        L.AvgPool2D(3, stride=1, padding=1), L.Conv2D(5, 2, stride=3, padding="same"), L.ReLU(),
        L.AvgPool2D(2, padding="same"), L.Flatten(), L.Dropout(0.5), L.Dense(4)]),
    "global-pool-softmax": ((8, 8, 3), lambda: [
        L.Conv2D(6, 3), L.Softmax(), L.MaxPool2D((2, 1)), L.Conv2D(5, 1), L.Tanh(),
        L.GlobalAvgPool2D(), L.Dense(3), L.Softmax()]),
    "dense-only": ((12,), lambda: [L.Dense(8), L.LeakyReLU(), L.Dense(6), L.Sigmoid(), L.Dense(3)]),
    # the output is an NCHW flatten: put back in fastcnn's (h, w, c) order by a Gather
    "ends-with-flatten": ((4, 3, 2), lambda: [L.Conv2D(3, 2), L.ReLU(), L.Flatten()]),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architectures_agree_with_predict(name):
    shape, make = ARCHITECTURES[name]
    model = fc.Sequential(make(), input_shape=shape, seed=3)
    assert_agrees(model, images(shape))


def random_architecture(rng):
    """A small random CNN drawn from the agreement grid's choices."""
    layers, hw = [], [int(rng.integers(7, 13)), int(rng.integers(7, 13))]
    for _ in range(int(rng.integers(1, 3))):
        k, s = int(rng.integers(1, 5)), int(rng.integers(1, 3))
        padding = ["valid", "same", (k // 2, (k - 1) // 2)][int(rng.integers(3))]
        layers.append(L.Conv2D(int(rng.integers(2, 6)), k, stride=s, padding=padding))
        layers.append([L.ReLU(), L.LeakyReLU(0.1), L.Sigmoid(), L.Tanh()][int(rng.integers(4))])
        pool = [L.MaxPool2D, L.AvgPool2D][int(rng.integers(2))]
        layers.append(pool(2, stride=int(rng.integers(1, 3)), padding=["valid", "same"][int(rng.integers(2))]))
    layers += [L.GlobalAvgPool2D()] if rng.integers(2) else [L.Flatten()]
    layers += [L.Dense(int(rng.integers(2, 8)))]
    return layers, (*hw, int(rng.integers(1, 4)))


@pytest.mark.parametrize("seed", range(6))
def test_random_architectures_agree_with_predict(seed):
    rng = np.random.default_rng(100 + seed)
    while True:  # draw again when the geometry does not fit (a window larger than its input)
        layers, shape = random_architecture(rng)
        try:
            model = fc.Sequential(layers, input_shape=shape, seed=seed)
            break
        except ValueError:
            continue
    assert_agrees(model, images(shape, n=3, seed=seed))


def test_float64_model_exports_float32_weights():
    model = fc.models.tutorial_cnn(seed=4, dtype=np.float64)
    x = images((28, 28, 1))
    proto = build_onnx(model)
    assert {t.data_type for t in proto.graph.initializer} == {TensorProto.FLOAT}
    np.testing.assert_allclose(run_ort(proto, x), model.predict(x), rtol=1e-5, atol=ATOL)


def test_graph_metadata(tmp_path):
    model = fc.models.tutorial_cnn(seed=0)
    model.metadata["dataset"] = "fashion-mnist"
    proto = onnx.load(model.export_onnx(tmp_path / "m.onnx", batch_size=3, opset=13))
    onnx.checker.check_model(proto, full_check=True)
    props = {p.key: p.value for p in proto.metadata_props}
    assert proto.graph.name == props["model_name"] == "tutorial_cnn"
    assert proto.producer_name == "fastcnn" and proto.producer_version == fc.__version__
    assert props["fastcnn_version"] == fc.__version__
    assert props["dataset"] == "fashion-mnist" and props["input_layout"] == "NHWC"
    assert json.loads(props["class_names"]) == list(fc.datasets.CLASS_NAMES["fashion-mnist"])
    assert [o.version for o in proto.opset_import] == [13]
    (x_info,), (y_info,) = proto.graph.input, proto.graph.output
    assert (x_info.name, y_info.name) == ("input", "probabilities")
    assert [d.dim_value for d in x_info.type.tensor_type.shape.dim] == [3, 28, 28, 1]
    assert [d.dim_value for d in y_info.type.tensor_type.shape.dim] == [3, 10]
    x = images((28, 28, 1), n=3)
    np.testing.assert_allclose(run_ort(proto, x), model.predict(x), rtol=RTOL, atol=ATOL)


def test_dynamic_batch_and_no_class_names_without_a_dataset():
    proto = build_onnx(fc.Sequential([L.Dense(3)], input_shape=(4,), seed=0))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 4
    props = {p.key for p in proto.metadata_props}
    assert "class_names" not in props and proto.graph.name == "Sequential"
    for n in (1, 7):
        assert run_ort(proto, images((4,), n=n)).shape == (n, 3)


def test_a_layer_without_conversion_is_named():
    class Doubler(L.ReLU):
        """A user's layer: forward differs from ReLU's, so it must not pass as one."""

    model = fc.Sequential([L.Conv2D(2, 3), Doubler(name="twice"), L.Flatten(), L.Dense(2)],
                          input_shape=(5, 5, 1), seed=0)
    with pytest.raises(OnnxConversionError, match=r"layers.1 Doubler 'twice' \(.*Doubler\) cannot be exported "
                                                  r"to ONNX: no ONNX conversion is known for it. Exportable "
                                                  r"layers: .*AvgPool2D, .*Conv2D, Dense, Dropout, Flatten"):
        build_onnx(model)


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 12}, r"`opset` must be an int from 13 to \d+ .*received 12"),
    ({"batch_size": 0}, r"`batch_size` must be a positive int or None, received 0"),
    ({"layout": "NCWH"}, r"`layout` must be one of \('nchw', 'nhwc'\), received 'NCWH'"),
])
def test_bad_export_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_onnx(fc.models.tutorial_cnn(seed=0), **kwargs)


def test_cli_export(tmp_path, capsys):
    model = fc.models.tutorial_cnn(seed=5)
    saved = model.save(tmp_path / "m.npz")
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(saved), str(out), "--batch-size", "2"]) == 0
    assert "input 'input' (2, 28, 28, 1) float32 (NHWC), output 'probabilities' (2, 10)" in capsys.readouterr().out
    x = images((28, 28, 1), n=2)
    np.testing.assert_allclose(run_ort(out, x), model.predict(x), rtol=RTOL, atol=ATOL)
    assert cli.main(["export", str(saved), str(out), "--opset", "3"]) == 1
    assert "`opset` must be an int from 13" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "none.npz"), str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


# -- import ------------------------------------------------------------------------------------------
def make_graph(nodes, x_shape, y_shape, initializers, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f"
                                                        else np.int64), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32) * np.float32(0.5)


def test_import_nchw_conv_pool_flatten_gemm(tmp_path):
    """PyTorch-style NCHW: asymmetric 'same' pads (even kernel), Gemm with transB, alpha and beta."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 2, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Flatten", ["p1"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    # input (N, 3, 9, 8); conv "same" stride 2 -> (5, 4); pool 2 stride 1 -> (4, 3); 6 channels
    proto = make_graph(nodes, ["N", 3, 9, 8], ["N", 4],
                       {"w1": normal(rng, 6, 3, 4, 4), "b1": normal(rng, 6), "w2": normal(rng, 4, 6 * 4 * 3),
                        "b2": normal(rng, 4)})
    onnx.save(proto, tmp_path / "g.onnx")
    model = fc.load_onnx(tmp_path / "g.onnx")
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense"]
    assert model.layers[0].padding == "same" and model.input_shape == (9, 8, 3)
    assert model.metadata["onnx_input_layout"] == "NCHW"
    x = images((3, 9, 8))
    np.testing.assert_allclose(model.predict(x.transpose(0, 2, 3, 1)), run_ort(proto, x), rtol=RTOL, atol=ATOL)


def test_import_matmul_add_reshape_global_pool_and_friends(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1], np.int64))),
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "b1"], ["a1"]),  # a bias added separately (TensorFlow-style)
        helper.make_node("LeakyRelu", ["a1"], ["r1"], alpha=0.2),
        helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Dropout", ["p1"], ["d1"]),
        helper.make_node("Reshape", ["d1", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["y"]),
    ]
    # (N, 2, 6, 6) -> conv 5 -> avg pool 3/2 pad 1 -> (3, 3) -> 45 features -> 4
    proto = make_graph(nodes, ["N", 2, 6, 6], ["N", 4],
                       {"w1": normal(rng, 5, 2, 3, 3), "b1": normal(rng, 1, 5, 1, 1), "w2": normal(rng, 45, 4),
                        "b2": normal(rng, 4)})
    onnx.save(proto, tmp_path / "g.onnx")
    model = fc.load_onnx(tmp_path / "g.onnx")
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D", "LeakyReLU", "AvgPool2D", "Dropout", "Flatten", "Dense", "Sigmoid"]
    x = images((2, 6, 6))
    logits = model.eval()(x.transpose(0, 2, 3, 1))  # the graph ends with Sigmoid, not Softmax: compare outputs
    np.testing.assert_allclose(logits, run_ort(proto, x), rtol=RTOL, atol=ATOL)

    pooled = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3]),
        helper.make_node("GlobalAveragePool", ["c1"], ["g"]),
        helper.make_node("Squeeze", ["g", "axes"], ["s"]),
        helper.make_node("Gemm", ["s", "w2"], ["y"]),
    ]
    proto = make_graph(pooled, ["N", 2, 6, 6], ["N", 3],
                       {"w1": normal(rng, 5, 2, 3, 3), "axes": np.array([2, 3]), "w2": normal(rng, 5, 3)})
    onnx.save(proto, tmp_path / "p.onnx")
    model = fc.load_onnx(tmp_path / "p.onnx")
    np.testing.assert_allclose(model.eval()(x.transpose(0, 2, 3, 1)), run_ort(proto, x), rtol=RTOL, atol=ATOL)


def test_import_rejects_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07garbage that protobuf cannot parse \xff\xff")
    with pytest.raises(OnnxConversionError, match=r"m.onnx: not a readable ONNX model"):
        fc.load_onnx(path)
    with pytest.raises(FileNotFoundError):
        fc.load_onnx(tmp_path / "missing.onnx")


def test_import_folds_batch_normalization(tmp_path):
    rng = np.random.default_rng(2)

    def bn_constants(prefix, C):
        return {f"{prefix}.scale": normal(rng, C), f"{prefix}.bias": normal(rng, C), f"{prefix}.mean": normal(rng, C),
                f"{prefix}.var": rng.random(C).astype(np.float32) + np.float32(0.5)}

    def bn(x, prefix, y):
        return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var")],
                                [y], epsilon=1e-3)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3]), bn("c1", "bn1", "n1"),
             helper.make_node("Relu", ["n1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["m"]), bn("m", "bn2", "y")]
    proto = make_graph(nodes, ["N", 2, 5, 5], ["N", 4],
                       {"w1": normal(rng, 3, 2, 3, 3), "w2": normal(rng, 27, 4), **bn_constants("bn1", 3),
                        **bn_constants("bn2", 4)})
    onnx.save(proto, tmp_path / "g.onnx")
    model = fc.load_onnx(tmp_path / "g.onnx")
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "ReLU", "Flatten", "Dense"]
    assert model.layers[0].use_bias and model.layers[3].use_bias
    x = images((2, 5, 5))
    np.testing.assert_allclose(model.eval()(x.transpose(0, 2, 3, 1)), run_ort(proto, x), rtol=RTOL, atol=1e-6)


def test_import_lists_every_unsupported_operator(tmp_path):
    nodes = [helper.make_node("Elu", ["x"], ["e"]), helper.make_node("Resize", ["e", "", "scales"], ["r"]),
             helper.make_node("Elu", ["r"], ["y"])]
    proto = make_graph(nodes, [1, 1, 2, 2], [1, 1, 4, 4], {"scales": np.array([1, 1, 2, 2], np.float32)})
    onnx.save(proto, tmp_path / "g.onnx")
    with pytest.raises(OnnxConversionError, match=r"g.onnx: fastcnn cannot import these operators: Elu, Resize\. "
                                                  r"Supported: Add, AveragePool, BatchNormalization, Concat, "
                                                  r"Constant, Conv"):
        fc.load_onnx(tmp_path / "g.onnx")


@pytest.mark.parametrize("nodes, y_shape, message", [
    ([helper.make_node("MatMul", ["x", "x"], ["y"])], [1, 2, 3, 3],
     r"g.onnx: node 'MatMul' \(MatMul\): takes the computed tensors \['x', 'x'\]; only Add and Concat combine "
     r"tensors"),
    ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]), helper.make_node("Add", ["x", "t"], ["y"])],
     [1, 2, 3, 3], r"only NHWC <-> NCHW transposes of images are supported"),
    ([helper.make_node("Concat", ["x", "c"], ["y"], axis=1)], [1, 4, 3, 3],
     r"node 'Concat' \(Concat\): concatenates constants \(\['c'\]\); only computed tensors can be concatenated"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1], pads=[1, 0, 0, 0])], [1, 2, 4, 3],
     r"pads \[top, left, bottom, right\] = \[1, 0, 0, 0\] are asymmetric and not 'same' for this input"),
    ([helper.make_node("Conv", ["x", "w1"], ["y"], kernel_shape=[1, 1], group=2)], [1, 2, 3, 3],
     r"grouped and dilated convolutions are not supported"),
])
def test_import_errors(tmp_path, nodes, y_shape, message):
    weights = {"w": np.ones((2, 2, 1, 1), np.float32), "w1": np.ones((2, 1, 1, 1), np.float32),
               "c": np.ones((1, 2, 3, 3), np.float32)}
    proto = make_graph(nodes, [1, 2, 3, 3], y_shape, weights)
    onnx.save(proto, tmp_path / "g.onnx")
    with pytest.raises(OnnxConversionError, match=message):
        fc.load_onnx(tmp_path / "g.onnx")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_round_trip_gives_the_same_model(tmp_path, layout):
    shape, make = ARCHITECTURES["same-even-kernel-stride2"]
    model = fc.Sequential(make(), input_shape=shape, seed=6)
    model.metadata.update(dataset="mnist", class_names=list("abcde"))  # names of its 5 classes
    from fastcnn.onnx_export import export_onnx

    back = fc.load_onnx(export_onnx(model, tmp_path / "m.onnx", layout=layout))
    assert [type(layer).__name__ for layer in back.layers] == [
        type(layer).__name__ for layer in model.layers if not isinstance(layer, L.Dropout)]
    for (name, w), (_, w_back) in zip(model.get_weights().items(), back.get_weights().items()):
        np.testing.assert_array_equal(w_back, w, err_msg=name)
    x = images(shape)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    assert back.metadata["class_names"] == list("abcde")
    assert back.metadata["dataset"] == "mnist" and back.metadata["onnx_input_layout"] == "NHWC"


def test_imported_model_fine_tunes(tmp_path):
    model = fc.models.tutorial_cnn(seed=7)
    back = fc.load_onnx(model.export_onnx(tmp_path / "m.onnx"))
    back.compile(fc.optim.SGD(lr=0.1))
    x, y = images((28, 28, 1), n=16), np.arange(16) % 10
    before = back.evaluate(x, y)["loss"]
    back.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert back.evaluate(x, y)["loss"] < before


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["torchscript-exporter", "dynamo-exporter"])
def test_import_a_pytorch_export(tmp_path, dynamo):
    """A CNN exported by torch.onnx.export agrees with PyTorch's own output. Both exporters: the
    TorchScript one (dynamo=False; Flatten, Gemm) and the default dynamo one, which needs the
    onnxscript package (Reshape, Gemm; opset 18 and newer)."""
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript (the peer extra)")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(  # the exporters fold BatchNorm2d into the conv, or load_onnx does
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2), nn.LeakyReLU(0.1), nn.AvgPool2d(2, padding=1, count_include_pad=False),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.Tanh(), nn.Dropout(0.3), nn.Linear(12, 5),
    ).eval()
    with torch.no_grad():  # statistics as after training, so that folding them matters
        net[1].running_mean.uniform_(-0.5, 0.5), net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5), net[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 12, 12)
    path = tmp_path / "torch.onnx"
    if dynamo:
        torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}})
    model = fc.load_onnx(path)
    assert model.input_shape == (12, 12, 3) and model.metadata["onnx_input_layout"] == "NCHW"
    with torch.no_grad():
        want = torch.softmax(net(x), dim=1).numpy()
    got = model.predict(x.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# -- functional models: BatchNormalization, Add, Concatenate -----------------------------------------
def randomize_batch_norms(model, seed=0):
    """Give every BatchNormalization moving statistics and gamma/beta away from their initial
    values (mild ones: the logits stay moderate, as in a trained network)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            C = layer.state["moving_mean"].shape[0]
            layer.state["moving_mean"][:] = np.float32(0.2) * normal(rng, C)
            layer.state["moving_variance"][:] = rng.random(C).astype(np.float32) + np.float32(0.5)
            if "gamma" in layer.params:
                layer.params["gamma"][:] = np.float32(1) + np.float32(0.2) * normal(rng, C)
            if "beta" in layer.params:
                layer.params["beta"][:] = np.float32(0.2) * normal(rng, C)
    model._weights_changed()
    return model


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_resnet_mini_agrees_with_predict(tmp_path, layout):
    model = randomize_batch_norms(fc.models.resnet_mini(seed=5))
    x = images((28, 28, 1), n=3)
    proto = assert_agrees(model, x, layout=layout)
    ops = [n.op_type for n in proto.graph.node]
    n_bn = sum(isinstance(layer, L.BatchNormalization) for layer in model.layers)
    n_add = sum(isinstance(layer, L.Add) for layer in model.layers)
    assert ops.count("BatchNormalization") == n_bn and ops.count("Add") == n_add and n_add == 6
    # the unfolded pass too: the file holds the model's own BatchNormalization
    np.testing.assert_allclose(run_ort(proto, x), model.predict(x, fold=False), rtol=RTOL, atol=ATOL)
    if layout == "nchw":
        path = model.export_onnx(tmp_path / "resnet_mini.onnx")
        assert onnx.load(path).graph.name == "resnet_mini"


def two_branch_model(seed=6):
    """Two convolution branches joined by Concatenate, batch-normalized (images and flat), an Add of a
    flat branch, and BatchNormalization without scale/center."""
    x = fc.Input((7, 6, 3))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(x)))
    b = L.BatchNormalization(center=False)(L.Conv2D(2, 1, use_bias=False)(x))
    y = L.Concatenate()([a, b])                                            # (7, 6, 6)
    y = L.BatchNormalization(scale=False)(y)
    p = L.MaxPool2D(2)(y)
    f1 = L.Flatten()(p)                                                    # NCHW flatten: permuted
    f2 = L.Flatten()(L.Conv2D(1, 3, stride=2)(L.AvgPool2D(2)(y)))
    f = L.BatchNormalization()(L.Concatenate()([f1, f2]))                  # flat BN on permuted features
    d = L.Dense(8)(f)
    d = L.Add()([d, L.Dense(8)(L.GlobalAvgPool2D()(y)), d])
    out = L.Dense(4)(L.Tanh()(d))
    return randomize_batch_norms(fc.Model(x, out, seed=seed), seed=seed)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_functional_two_branch_model_agrees_with_predict(tmp_path, capsys, layout):
    model = two_branch_model()
    x = images((7, 6, 3), n=4)
    assert_agrees(model, x, layout=layout)
    if layout == "nchw":  # the CLI exports a saved functional model (graph and moving statistics)
        saved = model.save(tmp_path / "m.npz")
        assert cli.main(["export", str(saved), str(tmp_path / "m.onnx")]) == 0
        assert "output 'probabilities' ('N', 4)" in capsys.readouterr().out
        np.testing.assert_allclose(run_ort(tmp_path / "m.onnx", x), model.predict(x), rtol=RTOL, atol=ATOL)


def test_functional_model_nodes_follow_the_graph():
    from fastcnn.onnx_export import model_nodes

    x = fc.Input((5, 5, 2))
    c = L.Conv2D(3, 1, name="c")(x)
    y = L.Add(name="sum")([c, L.Conv2D(3, 3, padding="same", name="d")(x)])
    model = fc.Model(x, L.Dense(2, name="out")(L.Flatten(name="f")(y)))
    nodes = [(type(layer).__name__, ins, out) for layer, ins, out in model_nodes(model)]
    assert nodes == [("Conv2D", ["input"], "layers.0.c"), ("Conv2D", ["input"], "layers.1.d"),
                     ("Add", ["layers.0.c", "layers.1.d"], "layers.2.sum"),
                     ("Flatten", ["layers.2.sum"], "layers.3.f"), ("Dense", ["layers.3.f"], "layers.4.out")]


def test_batch_norm_over_a_non_channel_axis_is_refused():
    x = fc.Input((4, 4, 2))
    y = L.BatchNormalization(axis=1)(L.Conv2D(2, 1)(x))
    model = fc.Model(x, L.Dense(2)(L.Flatten()(y)))
    with pytest.raises(OnnxConversionError, match=r"only the last axis \(channels\) normalizes in ONNX export; "
                                                  r"received axis=1 for inputs of rank 4"):
        build_onnx(model)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_import_of_resnet_mini_gives_a_functional_model(tmp_path, layout):
    """fastcnn's own resnet_mini export branches (each block's shortcut): a functional Model comes
    back, every BatchNormalization folded into the convolution before it."""
    from fastcnn.onnx_export import export_onnx

    model = randomize_batch_norms(fc.models.resnet_mini(seed=7))
    back = fc.load_onnx(export_onnx(model, tmp_path / "r.onnx", layout=layout))
    assert type(back) is fc.Model
    kinds = [type(layer).__name__ for layer in back.layers]
    assert kinds.count("Add") == 6 and "BatchNormalization" not in kinds
    assert kinds.count("Conv2D") == sum(isinstance(layer, L.Conv2D) for layer in model.layers)
    x = images((28, 28, 1), n=3)
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=RTOL, atol=ATOL)


def test_import_of_a_two_branch_graph_keeps_unfoldable_batch_norms(tmp_path):
    """Concat of computed tensors, a BatchNormalization after a Concat (images) and after a Concat
    of NCHW flattens (its parameters follow fastcnn's feature order), an Add of three tensors."""
    from fastcnn.onnx_export import export_onnx

    model = two_branch_model()
    back = fc.load_onnx(export_onnx(model, tmp_path / "t.onnx"))
    kinds = [type(layer).__name__ for layer in back.layers]
    assert kinds.count("Concatenate") == 2 and kinds.count("BatchNormalization") == 2 and kinds.count("Add") == 2
    x = images((7, 6, 3), n=4)
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=RTOL, atol=ATOL)
    # a residual join written by hand: Add(x, Relu(x))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["x", "a"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["y"])]
    onnx.save(make_graph(nodes, [1, 2, 3, 3], [1, 2, 1, 1], {}), tmp_path / "g.onnx")
    back = fc.load_onnx(tmp_path / "g.onnx")
    assert [type(layer).__name__ for layer in back.layers] == ["ReLU", "Add", "GlobalAvgPool2D"]
    v = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(back.eval()(v.transpose(0, 2, 3, 1)), (v + np.maximum(v, 0)).mean(axis=(2, 3)),
                               rtol=RTOL, atol=1e-6)


def test_import_refuses_a_constant_added_along_the_width(tmp_path):
    """Add(conv, c) with c of shape (C,) broadcasts over the width W of NCHW, not the channels."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c", "b"], ["y"])]
    proto = make_graph(nodes, [1, 2, 3, 2], [1, 2, 3, 2], {"w": np.ones((2, 2, 1, 1)), "b": np.ones(2)})
    onnx.save(proto, tmp_path / "g.onnx")
    with pytest.raises(OnnxConversionError, match=r"the added constant of shape \(2,\) is not a bias of 2 values "
                                                  r"\(expected one of the shapes \[\(2, 1, 1\), \(1, 2, 1, 1\)\]\)"):
        fc.load_onnx(tmp_path / "g.onnx")
