"""Import a standard CNN graph from ONNX into a fastcnn Sequential (``fc.load_onnx``).

The graph must be a chain: one input, one output, each operator taking the
previous one's result (weights and shapes as initializers or Constant nodes).
A graph that branches (residual blocks: a tensor read twice, an Add of two
computed tensors) raises :class:`OnnxConversionError` saying so; importing
those into a functional ``fc.Model`` is not implemented.
Supported operators: Conv, MaxPool, AveragePool, GlobalAveragePool, Flatten,
Reshape or Squeeze to ``(N, features)``, Gemm, MatMul (+ Add of a bias),
BatchNormalization after a Conv, Gemm or MatMul (folded into its weights), Relu,
LeakyRelu, Sigmoid, Tanh, Softmax, Dropout, Transpose between NCHW and NHWC,
Identity. Anything else raises one :class:`OnnxConversionError` listing every
unsupported operator of the graph.

Layouts. ONNX's Conv and pools are NCHW, fastcnn is NHWC: conv weights are
converted from OIHW to HWIO, and the Gemm/MatMul after a Flatten of an NCHW
tensor gets its weight rows permuted from (c, h, w) to fastcnn's (h, w, c)
order. The input layout is read from the graph: an input whose first operator
is ``Transpose(perm=[0, 3, 1, 2])`` is NHWC (fastcnn's own exports, tf2onnx);
any other 4-D input is NCHW (PyTorch's exports), and the fastcnn model takes
the same images as NHWC: ``x.transpose(0, 2, 3, 1)``. The model's input shape
is always ``(H, W, C)``.

A final Softmax is dropped: the model outputs logits, as fastcnn models do,
and ``model.predict`` applies the softmax (so ``predict`` equals the graph's
output). onnx is imported when this runs, never by ``import fastcnn``.
"""

import json
import os

import numpy as np

from fastcnn.geometry import output_hw, resolve_padding
from fastcnn.onnx_common import OnnxConversionError, require_onnx

__all__ = ["load_onnx", "SUPPORTED_OPS"]

SUPPORTED_OPS = frozenset({
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze",
    "Gemm", "MatMul", "Add", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax", "Dropout",
    "Transpose", "Identity", "Constant", "BatchNormalization",
})

_TO_NCHW = [0, 3, 1, 2]
_TO_NHWC = [0, 2, 3, 1]


class _Builder:
    """The layers found so far, their weights, and what the current tensor is.

    ``kind``: how the graph holds the current tensor. ``"nchw"`` / ``"nhwc"``
    images (fastcnn's per-sample ``shape`` is (H, W, C) either way), ``"flat"``
    ``(N, F)``, or ``"pooled"``: GlobalAveragePool's ``(N, C, 1, 1)``, which is
    fastcnn's ``(N, C)``. ``perm`` (flat only): graph feature ``j`` is fastcnn's
    feature ``perm[j]``.
    """

    def __init__(self, where, shape, kind):
        self.where = where
        self.shape = tuple(shape)
        self.kind = kind
        self.perm = None
        self.layers = []  # [(layer, {param name: array})]

    def fail(self, node, message):
        return OnnxConversionError(f"{self.where}: node {node.name or node.op_type!r} ({node.op_type}): {message}")

    def add(self, node, layer, params=None):
        try:
            self.shape = tuple(layer.compute_output_shape(self.shape))
        except ValueError as error:
            raise self.fail(node, str(error)) from None
        self.layers.append((layer, params or {}))

    def need(self, node, *kinds):
        if self.kind not in kinds:
            raise self.fail(node, f"expected a {' or '.join(kinds)} input, the graph has a {self.kind} tensor here")


def _attrs(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _padding(b, node, pads, hw, kernel, stride, auto_pad):
    """ONNX pads / auto_pad as a fastcnn padding argument."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    same = resolve_padding("same", hw, kernel, stride)
    if auto_pad == "VALID":
        return "valid"
    if auto_pad == "SAME_UPPER":
        return "same"
    if auto_pad == "SAME_LOWER":
        if all(lo == hi for lo, hi in same):
            return "same"
        raise b.fail(node, "auto_pad SAME_LOWER with an odd total padding (the extra row at the top) "
                           "has no fastcnn equivalent")
    pt, pl, pb, pr = (list(pads) + [0, 0, 0, 0])[:4] if pads else (0, 0, 0, 0)
    if (pt, pl, pb, pr) == (0, 0, 0, 0):
        return "valid"
    if ((pt, pb), (pl, pr)) == same:
        return "same"
    if pt == pb and pl == pr:
        return (int(pt), int(pl))
    raise b.fail(node, f"pads [top, left, bottom, right] = {[pt, pl, pb, pr]} are asymmetric and not "
                       f"'same' for this input; fastcnn pads symmetrically or as 'same'")


def _ints(value, default):
    return tuple(int(v) for v in value) if value is not None else default


def _flatten(b, L, node):
    """A Flatten (or an equivalent Reshape) of the current tensor."""
    if b.kind in ("flat", "pooled"):
        b.kind = "flat"
        return
    b.need(node, "nchw", "nhwc")
    if b.kind == "nchw":  # the graph's features come in (c, h, w) order; fastcnn's in (h, w, c)
        H, W, C = b.shape
        b.perm = np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1).ravel()
    b.add(node, L.Flatten())
    b.kind = "flat"


def _dense(b, L, node, w, bias):
    """A Dense from a graph weight ``w`` (IN, OUT) whose rows follow the graph's feature order."""
    b.need(node, "flat", "pooled")
    b.kind = "flat"
    features = b.shape[0]
    if w.ndim != 2 or w.shape[0] != features:
        raise b.fail(node, f"weight of shape {w.shape} does not take the {features} features it receives")
    if b.perm is not None:
        rows = np.empty_like(w)
        rows[b.perm] = w  # back to fastcnn's (h, w, c) order
        w, b.perm = rows, None
    params = {"weight": w}
    if bias is not None:
        params["bias"] = np.broadcast_to(bias, (w.shape[1],))
    b.add(node, L.Dense(int(w.shape[1]), use_bias=bias is not None), params)


def _fold_bias(b, node, c):
    """An Add of a constant right after a Dense or Conv2D without bias: that layer's bias."""
    from fastcnn import layers as L

    layer, params = b.layers[-1] if b.layers else (None, None)
    if not isinstance(layer, (L.Dense, L.Conv2D)) or layer.use_bias:
        raise b.fail(node, "an Add is imported only as the bias of the MatMul or Conv right before it")
    units = layer.units if isinstance(layer, L.Dense) else layer.filters
    # The shapes that broadcast over the features of (N, units), or the channels of NCHW (N, units, H, W)
    shapes = [(units,), (1, units)] if isinstance(layer, L.Dense) else [(units, 1, 1), (1, units, 1, 1)]
    if c.shape not in shapes and not (units == 1 and c.size == 1):
        raise b.fail(node, f"the added constant of shape {c.shape} is not a bias of {units} values "
                           f"(expected one of the shapes {shapes})")
    layer.use_bias = True
    params["bias"] = c.reshape(units)


def _fold_batch_norm(b, node, const, epsilon):
    """An inference BatchNormalization right after a Conv or Gemm/MatMul, folded into its weights:
    ``w * k`` and ``(bias - mean) * k + beta`` per output channel, ``k = gamma / sqrt(var + eps)``."""
    from fastcnn import layers as L

    layer, params = b.layers[-1] if b.layers else (None, None)
    if not isinstance(layer, (L.Dense, L.Conv2D)):
        raise b.fail(node, "a BatchNormalization is imported folded into the Conv, Gemm or MatMul right "
                           "before it; here it follows none")
    units = layer.units if isinstance(layer, L.Dense) else layer.filters
    if len(const) != 4 or any(c.shape != (units,) for c in const):
        raise b.fail(node, f"expected constant scale, bias, mean and variance of shape ({units},)")
    gamma, beta, mean, var = (c.astype(np.float64) for c in const)
    k = gamma / np.sqrt(var + epsilon)
    params["weight"] = params["weight"] * k  # the output channels are the last axis (HWIO, (IN, OUT))
    params["bias"] = (params.get("bias", 0.0) - mean) * k + beta
    layer.use_bias = True


def _branching(data, current, readers):
    if len(data) > 1:
        return f"it combines the computed tensors {data}"
    return f"{current!r} is read by {readers[current]} operators"


def _convert(onnx, graph, where, consts, opset):
    from fastcnn import layers as L

    (x,) = [i for i in graph.input if i.name not in consts]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    first = next((n for n in nodes if x.name in n.input), None)
    if len(dims) == 4:
        if None in dims[1:]:
            raise OnnxConversionError(f"{where}: input {x.name!r} has shape {dims}; fastcnn needs fixed H, W, C")
        nhwc = (first is not None and first.op_type == "Transpose"
                and list(_attrs(onnx, first).get("perm", [])) == _TO_NCHW)
        shape = tuple(dims[1:]) if nhwc else (dims[2], dims[3], dims[1])
        b = _Builder(where, shape, "nhwc" if nhwc else "nchw")
    elif len(dims) == 2 and dims[1] is not None:
        b = _Builder(where, (dims[1],), "flat")
    else:
        raise OnnxConversionError(f"{where}: input {x.name!r} has shape {dims}; expected (N, C, H, W), "
                                  f"(N, H, W, C) or (N, features)")
    input_layout, input_shape = b.kind, b.shape
    output = graph.output[0].name
    current = x.name
    readers = {}  # tensor name -> how many operators read it
    for node in nodes:
        for name in set(n for n in node.input if n and n not in consts):
            readers[name] = readers.get(name, 0) + 1
    for i, node in enumerate(nodes):
        data = [name for name in node.input if name and name not in consts]
        if len(data) > 1 or readers.get(current, 0) > 1:
            raise b.fail(node, f"the graph branches here ({_branching(data, current, readers)}): fastcnn "
                               f"imports chain graphs only, not residual or multi-branch ones (build those "
                               f"with fc.Input and fc.Model)")
        if data != [current]:
            raise b.fail(node, f"takes {list(node.input)}; fastcnn imports chains (each operator on the "
                               f"previous one's result {current!r}, the rest constants)")
        a = _attrs(onnx, node)
        const = [consts[name] for name in node.input[1:] if name]
        op = node.op_type
        if op == "Identity":
            pass
        elif op == "Transpose":
            perm = list(a.get("perm", []))
            if b.kind == "nhwc" and perm == _TO_NCHW:
                b.kind = "nchw"
            elif b.kind == "nchw" and perm == _TO_NHWC:
                b.kind = "nhwc"
            else:
                raise b.fail(node, f"only NHWC <-> NCHW transposes of images are supported, received perm "
                                   f"{perm} on a {b.kind} tensor")
        elif op == "Conv":
            b.need(node, "nchw")
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise b.fail(node, "grouped and dilated convolutions are not supported")
            w = const[0] if const else None
            if w is None or w.ndim != 4 or w.shape[1] != b.shape[2]:
                raise b.fail(node, f"expected a constant OIHW weight with {b.shape[2]} input channels, "
                                   f"received {None if w is None else w.shape}")
            kernel = tuple(int(k) for k in w.shape[2:])
            stride = _ints(a.get("strides"), (1, 1))
            padding = _padding(b, node, a.get("pads"), b.shape[:2], kernel, stride, a.get("auto_pad", "NOTSET"))
            bias = const[1] if len(const) > 1 else None
            params = {"weight": w.transpose(2, 3, 1, 0)}  # OIHW -> HWIO
            if bias is not None:
                params["bias"] = bias
            b.add(node, L.Conv2D(int(w.shape[0]), kernel, stride, padding, use_bias=bias is not None), params)
        elif op in ("MaxPool", "AveragePool"):
            b.need(node, "nchw")
            if len([o for o in node.output if o]) > 1:
                raise b.fail(node, "MaxPool's Indices output is not supported")
            if any(d != 1 for d in a.get("dilations", [1, 1])):
                raise b.fail(node, "dilated pooling is not supported")
            kernel = _ints(a.get("kernel_shape"), None)
            stride = _ints(a.get("strides"), (1, 1))
            padding = _padding(b, node, a.get("pads"), b.shape[:2], kernel, stride, a.get("auto_pad", "NOTSET"))
            pads = resolve_padding(padding, b.shape[:2], kernel, stride)
            if a.get("ceil_mode", 0):
                floor = output_hw(b.shape[:2], kernel, stride, pads)
                ceil = tuple(-(-(n + p[0] + p[1] - k) // s) + 1
                             for n, k, s, p in zip(b.shape[:2], kernel, stride, pads))
                if floor != ceil:
                    raise b.fail(node, "ceil_mode=1 changes the output size here; fastcnn rounds down")
            if op == "AveragePool" and a.get("count_include_pad", 0) and pads != ((0, 0), (0, 0)):
                raise b.fail(node, "count_include_pad=1 with padding: fastcnn averages over the unpadded "
                                   "elements only")
            cls = L.MaxPool2D if op == "MaxPool" else L.AvgPool2D
            try:
                layer = cls(kernel, stride, padding)
            except ValueError as error:
                raise b.fail(node, str(error)) from None
            b.add(node, layer)
        elif op == "GlobalAveragePool":
            b.need(node, "nchw")
            b.add(node, L.GlobalAvgPool2D())
            b.kind = "pooled"
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise b.fail(node, f"Flatten axis must be 1, received {a.get('axis')}")
            _flatten(b, L, node)
        elif op == "Reshape":
            target = [int(v) for v in const[0]] if const else None
            size = int(np.prod(b.shape))
            if target is None or len(target) != 2 or target[1] not in (-1, size) or target[0] == size:
                raise b.fail(node, f"only a reshape to (N, {size}) (a flatten) is supported, received {target}")
            _flatten(b, L, node)
        elif op == "Squeeze":
            axes = [int(v) for v in (const[0] if const else a.get("axes", []))]
            if b.kind != "pooled" or sorted(axes) not in ([2, 3], [-2, -1]):
                raise b.fail(node, "Squeeze is supported only of GlobalAveragePool's spatial axes [2, 3]")
            b.kind = "flat"
        elif op == "Gemm":
            if a.get("transA", 0) or not const:
                raise b.fail(node, "expected Gemm(x, constant B[, constant C]) with transA=0")
            w = const[0].T if a.get("transB", 0) else const[0]
            w = w * np.float32(a.get("alpha", 1.0))
            bias = const[1] * np.float32(a.get("beta", 1.0)) if len(const) > 1 else None
            _dense(b, L, node, w, bias)
        elif op == "MatMul":
            if not const or const[0].ndim != 2:
                raise b.fail(node, "expected MatMul(x, constant 2-D weight)")
            _dense(b, L, node, const[0], None)
        elif op == "Add":
            added = [consts[n] for n in node.input if n in consts]
            if len(added) != 1:
                raise b.fail(node, "expected Add(x, constant bias)")
            _fold_bias(b, node, added[0])
        elif op == "BatchNormalization":
            if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
                raise b.fail(node, "only inference-mode batch normalization (one output) is supported")
            _fold_batch_norm(b, node, const, float(a.get("epsilon", 1e-5)))
        elif op in ("Relu", "Sigmoid", "Tanh"):
            b.add(node, {"Relu": L.ReLU, "Sigmoid": L.Sigmoid, "Tanh": L.Tanh}[op]())
        elif op == "LeakyRelu":
            b.add(node, L.LeakyReLU(float(a.get("alpha", 0.01))))
        elif op == "Softmax":
            rest = [n for n in nodes[i + 1:] if n.op_type != "Identity"]
            if not rest:
                pass  # predict applies the softmax to the logits
            else:
                axis = a.get("axis", -1 if opset >= 13 else 1)
                last = {"flat": (-1, 1), "pooled": (1,), "nchw": (1,), "nhwc": (-1, 3)}[b.kind]
                if axis not in last or (opset < 13 and b.kind != "flat"):  # before 13: flatten from axis
                    raise b.fail(node, f"softmax over axis {axis} of a {b.kind} tensor; fastcnn's Softmax "
                                       f"runs over the channels")
                b.add(node, L.Softmax())
        elif op == "Dropout":
            ratio = float(const[0]) if const else float(a.get("ratio", 0.5))
            b.add(node, L.Dropout(ratio))
        current = node.output[0]
    if current != output:
        raise OnnxConversionError(f"{where}: the chain ends at {current!r}, not at the graph output {output!r}")
    if b.perm is not None:
        raise OnnxConversionError(f"{where}: the graph ends with a flatten of an NCHW tensor, whose feature "
                                  f"order fastcnn (NHWC) cannot reproduce")
    if not b.layers:
        raise OnnxConversionError(f"{where}: the graph holds no layer fastcnn can import")
    return b, input_layout, input_shape


def load_onnx(path, *, dtype=np.float32):
    """A :class:`fastcnn.Sequential` holding the layers and weights of the ONNX graph at ``path``.

    The model outputs logits and ``predict`` returns their softmax (a trailing
    Softmax of the graph is dropped). It takes NHWC inputs ``(N, H, W, C)``:
    transpose the NCHW batches of a PyTorch-exported graph with
    ``x.transpose(0, 2, 3, 1)``. It is not compiled: call ``model.compile(...)``
    before ``fit`` to fine-tune it. ``model.metadata`` records the graph's name,
    its input layout, and the dataset and class names of fastcnn exports.

    Raises
    ------
    OnnxConversionError
        Unsupported operators (all listed at once), or a graph that is not a chain.
    ImportError
        onnx is not installed (``pip install 'fastcnn[onnx]'``).
    """
    onnx = require_onnx("load_onnx")
    from onnx import numpy_helper

    from fastcnn.model import Sequential

    where = os.fspath(path)
    try:
        proto = onnx.load(where)  # protobuf: data, never code
    except OSError:
        raise
    except Exception as error:  # a truncated or foreign file: protobuf's DecodeError and the like
        raise OnnxConversionError(f"{where}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    unsupported = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                          for n in graph.node
                          if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS})
    if unsupported:
        raise OnnxConversionError(
            f"{where}: fastcnn cannot import these operators: {', '.join(unsupported)}. "
            f"Supported: {', '.join(sorted(SUPPORTED_OPS))}"
        )
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is None:
                raise OnnxConversionError(f"{where}: Constant {node.name!r}: only tensor values are supported")
            consts[node.output[0]] = numpy_helper.to_array(value.t)
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxConversionError(f"{where}: the graph has {len(inputs)} inputs and {len(graph.output)} "
                                  f"outputs; fastcnn imports graphs with one of each")
    b, input_layout, input_shape = _convert(onnx, graph, where, consts, opset)
    model = Sequential([layer for layer, _ in b.layers], input_shape=input_shape, dtype=dtype)
    for i, (layer, params) in enumerate(b.layers):
        for key, value in params.items():
            if layer.params[key].shape != value.shape:
                raise OnnxConversionError(f"{where}: layers.{i} {key} has shape {value.shape}, the layer "
                                          f"expects {layer.params[key].shape}")
            layer.params[key][...] = value
    props = {p.key: p.value for p in proto.metadata_props}
    model.metadata.update({"source": "onnx", "onnx_input_layout": input_layout.upper() if input_layout != "flat"
                           else "NF"})
    if graph.name:
        model.metadata["name"] = graph.name
    if props.get("dataset"):
        model.metadata["dataset"] = props["dataset"]
    if props.get("class_names"):
        try:
            names = json.loads(props["class_names"])
        except ValueError:
            names = None
        if isinstance(names, list) and len(names) == model.output_shape[0]:
            model.metadata["class_names"] = [str(n) for n in names]
    return model
