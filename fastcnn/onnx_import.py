"""Import a standard CNN graph from ONNX into a fastcnn model (``fc.load_onnx``).

One input, one output, weights and shapes as initializers or Constant nodes.
A chain (each operator on the previous one's result) becomes a Sequential; a
graph that branches (residual blocks, parallel branches joined by an Add of
two computed tensors or a Concat) becomes a functional ``fc.Model`` with
``Add`` / ``Concatenate`` layers.
Supported operators: Conv, MaxPool, AveragePool, GlobalAveragePool, Flatten,
Reshape or Squeeze to ``(N, features)``, Gemm, MatMul (+ Add of a bias),
BatchNormalization (folded into the Conv, Gemm or MatMul before it when
nothing else reads that one's result, else a BatchNormalization layer), Add and
Concat of computed tensors, Relu,
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
    "Transpose", "Identity", "Constant", "BatchNormalization", "Concat",
})

_TO_NCHW = [0, 3, 1, 2]
_TO_NHWC = [0, 2, 3, 1]


class _T:
    """A graph tensor as fastcnn sees it: made by fastcnn op ``src`` (0: the model input, ``k + 1``:
    ``ops[k]``), held by the graph as ``kind``: ``"nchw"`` / ``"nhwc"`` images (fastcnn's per-sample
    ``shape`` is (H, W, C) either way), ``"flat"`` ``(N, F)``, or ``"pooled"``: GlobalAveragePool's
    ``(N, C, 1, 1)``, which is fastcnn's ``(N, C)``. ``perm`` (flat only): graph feature ``j`` is
    fastcnn's feature ``perm[j]``. ``sole``: nothing but this tensor's path reads op ``src``'s output
    (so a bias or BatchNormalization on it may be folded into that op).
    """

    def __init__(self, src, kind, shape, perm=None, sole=True):
        self.src, self.kind, self.shape, self.perm, self.sole = src, kind, tuple(shape), perm, sole

    def alias(self, kind=None, perm=False, sole=True):
        return _T(self.src, kind or self.kind, self.shape, self.perm if perm is False else perm, self.sole and sole)


class _Builder:
    """The fastcnn ops found so far: ``ops[k] = [layer, {param: array}, {state: array}, [input srcs]]``."""

    def __init__(self, where):
        self.where = where
        self.ops = []

    def fail(self, node, message):
        return OnnxConversionError(f"{self.where}: node {node.name or node.op_type!r} ({node.op_type}): {message}")

    def add(self, node, layer, ins, params=None, state=None, kind=None, perm=None):
        """Append ``layer`` reading the tensors ``ins``; returns its output tensor."""
        shapes = [t.shape for t in ins]
        try:
            shape = tuple(layer.compute_output_shape(shapes if getattr(layer, "merge", False) else shapes[0]))
        except ValueError as error:
            raise self.fail(node, str(error)) from None
        self.ops.append([layer, params or {}, state or {}, [t.src for t in ins]])
        return _T(len(self.ops), kind or ins[0].kind, shape, perm)

    def op(self, t):
        """``(layer, params)`` of the op making ``t`` (None, None for the model input)."""
        return tuple(self.ops[t.src - 1][:2]) if t.src else (None, None)

    def need(self, node, t, *kinds):
        if t.kind not in kinds:
            raise self.fail(node, f"expected a {' or '.join(kinds)} input, the graph has a {t.kind} tensor here")


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


def _flatten(b, L, node, t):
    """A Flatten (or an equivalent Reshape) of ``t``."""
    if t.kind in ("flat", "pooled"):
        return t.alias("flat")
    b.need(node, t, "nchw", "nhwc")
    perm = None
    if t.kind == "nchw":  # the graph's features come in (c, h, w) order; fastcnn's in (h, w, c)
        H, W, C = t.shape
        perm = np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1).ravel()
    return b.add(node, L.Flatten(), [t], kind="flat", perm=perm)


def _dense(b, L, node, t, w, bias):
    """A Dense from a graph weight ``w`` (IN, OUT) whose rows follow the graph's feature order."""
    b.need(node, t, "flat", "pooled")
    features = t.shape[0]
    if w.ndim != 2 or w.shape[0] != features:
        raise b.fail(node, f"weight of shape {w.shape} does not take the {features} features it receives")
    if t.perm is not None:
        rows = np.empty_like(w)
        rows[t.perm] = w  # back to fastcnn's (h, w, c) order
        w = rows
    params = {"weight": w}
    if bias is not None:
        params["bias"] = np.broadcast_to(bias, (w.shape[1],))
    return b.add(node, L.Dense(int(w.shape[1]), use_bias=bias is not None), [t], params, kind="flat")


def _foldable(b, t, readers, name, types):
    layer, params = b.op(t)
    return layer if isinstance(layer, types) and t.sole and readers.get(name, 0) == 1 else None


def _fold_bias(b, node, t, c, readers):
    """An Add of a constant right after a Dense or Conv2D without bias: that layer's bias."""
    from fastcnn import layers as L

    layer = _foldable(b, t, readers, node.input[0] if node.input[0] not in b.consts else node.input[1],
                      (L.Dense, L.Conv2D))
    if layer is None or layer.use_bias:
        raise b.fail(node, "an Add is imported only as the bias of the MatMul or Conv right before it")
    params = b.op(t)[1]
    units = layer.units if isinstance(layer, L.Dense) else layer.filters
    # The shapes that broadcast over the features of (N, units), or the channels of NCHW (N, units, H, W)
    shapes = [(units,), (1, units)] if isinstance(layer, L.Dense) else [(units, 1, 1), (1, units, 1, 1)]
    if c.shape not in shapes and not (units == 1 and c.size == 1):
        raise b.fail(node, f"the added constant of shape {c.shape} is not a bias of {units} values "
                           f"(expected one of the shapes {shapes})")
    layer.use_bias = True
    params["bias"] = c.reshape(units)
    return t


def _batch_norm(b, node, t, const, epsilon, readers):
    """An inference BatchNormalization. Right after a Conv or Gemm/MatMul whose result nothing
    else reads, folded into its weights: ``w * k`` and ``(bias - mean) * k + beta`` per output
    channel, ``k = gamma / sqrt(var + eps)``. Elsewhere, a fastcnn BatchNormalization layer
    holding the graph's parameters and moving statistics."""
    from fastcnn import layers as L

    layer = _foldable(b, t, readers, node.input[0], (L.Dense, L.Conv2D))
    if layer is not None:
        params = b.op(t)[1]
        units = layer.units if isinstance(layer, L.Dense) else layer.filters
        if len(const) != 4 or any(c.shape != (units,) for c in const):
            raise b.fail(node, f"expected constant scale, bias, mean and variance of shape ({units},)")
        gamma, beta, mean, var = (c.astype(np.float64) for c in const)
        k = gamma / np.sqrt(var + epsilon)
        params["weight"] = params["weight"] * k  # the output channels are the last axis (HWIO, (IN, OUT))
        params["bias"] = (params.get("bias", 0.0) - mean) * k + beta
        layer.use_bias = True
        return t
    if t.kind == "nhwc":
        raise b.fail(node, "a BatchNormalization of an NHWC tensor normalizes over the height (ONNX's axis 1), "
                           "which fastcnn's BatchNormalization does not do")
    C = t.shape[-1]
    if len(const) != 4 or any(c.shape != (C,) for c in const):
        raise b.fail(node, f"expected constant scale, bias, mean and variance of shape ({C},)")
    gamma, beta, mean, var = const
    if t.perm is not None:  # graph feature j is fastcnn's feature perm[j]
        gamma, beta, mean, var = (_unpermute(v, t.perm) for v in (gamma, beta, mean, var))
    out = b.add(node, L.BatchNormalization(epsilon=float(epsilon)), [t], {"gamma": gamma, "beta": beta},
                {"moving_mean": mean, "moving_variance": var}, perm=t.perm)
    return out


def _unpermute(v, perm):
    out = np.empty_like(v)
    out[perm] = v
    return out


def _merge(b, L, node, ins, op, a):
    """Add of computed tensors (fastcnn Add) or Concat (fastcnn Concatenate)."""
    kinds = {t.kind for t in ins}
    if len(kinds) != 1:
        raise b.fail(node, f"combines tensors held as {sorted(kinds)}; expected one layout")
    kind = ins[0].kind
    if op == "Add":
        perms = [t.perm for t in ins]
        if not (all(p is None for p in perms) or all(p is not None and np.array_equal(p, perms[0]) for p in perms)):
            raise b.fail(node, "adds flattened tensors whose feature orders differ")
        return b.add(node, L.Add(), ins, perm=perms[0])
    rank = {"nchw": 4, "nhwc": 4, "pooled": 4, "flat": 2}[kind]
    axis = int(a.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if kind == "flat":
        if axis != 1:
            raise b.fail(node, f"Concat over axis {a.get('axis')} of (N, features) tensors; expected 1")
        perm, offset = [], 0
        for t in ins:
            perm.append((np.arange(t.shape[0]) if t.perm is None else t.perm) + offset)
            offset += t.shape[0]
        perm = np.concatenate(perm)
        return b.add(node, L.Concatenate(-1), ins, perm=None if np.array_equal(perm, np.arange(offset)) else perm)
    fc_axis = {"nchw": {1: -1, 2: 1, 3: 2}, "nhwc": {1: 1, 2: 2, 3: -1}, "pooled": {1: -1}}[kind].get(axis)
    if fc_axis is None:
        raise b.fail(node, f"Concat over axis {a.get('axis')} of a {kind} tensor is not supported")
    return b.add(node, L.Concatenate(fc_axis), ins)


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
        start = _T(0, "nhwc" if nhwc else "nchw", shape)
    elif len(dims) == 2 and dims[1] is not None:
        start = _T(0, "flat", (dims[1],))
    else:
        raise OnnxConversionError(f"{where}: input {x.name!r} has shape {dims}; expected (N, C, H, W), "
                                  f"(N, H, W, C) or (N, features)")
    b = _Builder(where)
    b.consts = consts
    output = graph.output[0].name
    tensors = {x.name: start}
    readers = {}  # tensor name -> how many operators read it
    for node in nodes:
        for name in set(n for n in node.input if n and n not in consts):
            readers[name] = readers.get(name, 0) + 1
    for i, node in enumerate(nodes):
        data = [name for name in node.input if name and name not in consts]
        missing = [name for name in data if name not in tensors]
        if missing or not data:
            raise b.fail(node, f"takes {list(node.input)}; {missing[0]!r} is neither the graph input, a "
                               f"constant nor an earlier operator's result" if missing else
                               f"takes only constants {list(node.input)}")
        ins = [tensors[name] for name in data]
        a = _attrs(onnx, node)
        op = node.op_type
        if op == "Concat" and len(data) != len([n for n in node.input if n]):
            raise b.fail(node, f"concatenates constants ({[n for n in node.input if n in consts]}); only "
                               f"computed tensors can be concatenated")
        if op == "Concat" or (op == "Add" and len(data) > 1):
            tensors[node.output[0]] = _merge(b, L, node, ins, op, a)
            continue
        if len(data) > 1:
            raise b.fail(node, f"takes the computed tensors {data}; only Add and Concat combine tensors")
        t = ins[0]
        if readers.get(data[0], 0) > 1:
            t = t.alias(sole=False)  # read by others too: nothing may be folded into its op
        const = [consts[name] for name in node.input[1:] if name]
        if op == "Identity":
            t = t.alias()
        elif op == "Transpose":
            perm = list(a.get("perm", []))
            if t.kind == "nhwc" and perm == _TO_NCHW:
                t = t.alias("nchw")
            elif t.kind == "nchw" and perm == _TO_NHWC:
                t = t.alias("nhwc")
            else:
                raise b.fail(node, f"only NHWC <-> NCHW transposes of images are supported, received perm "
                                   f"{perm} on a {t.kind} tensor")
        elif op == "Conv":
            b.need(node, t, "nchw")
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise b.fail(node, "grouped and dilated convolutions are not supported")
            w = const[0] if const else None
            if w is None or w.ndim != 4 or w.shape[1] != t.shape[2]:
                raise b.fail(node, f"expected a constant OIHW weight with {t.shape[2]} input channels, "
                                   f"received {None if w is None else w.shape}")
            kernel = tuple(int(k) for k in w.shape[2:])
            stride = _ints(a.get("strides"), (1, 1))
            padding = _padding(b, node, a.get("pads"), t.shape[:2], kernel, stride, a.get("auto_pad", "NOTSET"))
            bias = const[1] if len(const) > 1 else None
            params = {"weight": w.transpose(2, 3, 1, 0)}  # OIHW -> HWIO
            if bias is not None:
                params["bias"] = bias
            t = b.add(node, L.Conv2D(int(w.shape[0]), kernel, stride, padding, use_bias=bias is not None), [t],
                      params)
        elif op in ("MaxPool", "AveragePool"):
            b.need(node, t, "nchw")
            if len([o for o in node.output if o]) > 1:
                raise b.fail(node, "MaxPool's Indices output is not supported")
            if any(d != 1 for d in a.get("dilations", [1, 1])):
                raise b.fail(node, "dilated pooling is not supported")
            kernel = _ints(a.get("kernel_shape"), None)
            stride = _ints(a.get("strides"), (1, 1))
            padding = _padding(b, node, a.get("pads"), t.shape[:2], kernel, stride, a.get("auto_pad", "NOTSET"))
            pads = resolve_padding(padding, t.shape[:2], kernel, stride)
            if a.get("ceil_mode", 0):
                floor = output_hw(t.shape[:2], kernel, stride, pads)
                ceil = tuple(-(-(n + p[0] + p[1] - k) // s) + 1
                             for n, k, s, p in zip(t.shape[:2], kernel, stride, pads))
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
            t = b.add(node, layer, [t])
        elif op == "GlobalAveragePool":
            b.need(node, t, "nchw")
            t = b.add(node, L.GlobalAvgPool2D(), [t], kind="pooled")
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise b.fail(node, f"Flatten axis must be 1, received {a.get('axis')}")
            t = _flatten(b, L, node, t)
        elif op == "Reshape":
            target = [int(v) for v in const[0]] if const else None
            size = int(np.prod(t.shape))
            if target is None or len(target) != 2 or target[1] not in (-1, size) or target[0] == size:
                raise b.fail(node, f"only a reshape to (N, {size}) (a flatten) is supported, received {target}")
            t = _flatten(b, L, node, t)
        elif op == "Squeeze":
            axes = [int(v) for v in (const[0] if const else a.get("axes", []))]
            if t.kind != "pooled" or sorted(axes) not in ([2, 3], [-2, -1]):
                raise b.fail(node, "Squeeze is supported only of GlobalAveragePool's spatial axes [2, 3]")
            t = t.alias("flat")
        elif op == "Gemm":
            if a.get("transA", 0) or not const:
                raise b.fail(node, "expected Gemm(x, constant B[, constant C]) with transA=0")
            w = const[0].T if a.get("transB", 0) else const[0]
            w = w * np.float32(a.get("alpha", 1.0))
            bias = const[1] * np.float32(a.get("beta", 1.0)) if len(const) > 1 else None
            t = _dense(b, L, node, t, w, bias)
        elif op == "MatMul":
            if not const or const[0].ndim != 2:
                raise b.fail(node, "expected MatMul(x, constant 2-D weight)")
            t = _dense(b, L, node, t, const[0], None)
        elif op == "Add":
            added = [consts[n] for n in node.input if n in consts]
            if len(added) != 1:
                raise b.fail(node, "expected Add(x, constant bias)")
            t = _fold_bias(b, node, t, added[0], readers)
        elif op == "BatchNormalization":
            if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
                raise b.fail(node, "only inference-mode batch normalization (one output) is supported")
            t = _batch_norm(b, node, t, const, float(a.get("epsilon", 1e-5)), readers)
        elif op in ("Relu", "Sigmoid", "Tanh"):
            t = b.add(node, {"Relu": L.ReLU, "Sigmoid": L.Sigmoid, "Tanh": L.Tanh}[op](), [t], perm=t.perm)
        elif op == "LeakyRelu":
            t = b.add(node, L.LeakyReLU(float(a.get("alpha", 0.01))), [t], perm=t.perm)
        elif op == "Softmax":
            rest = [n for n in nodes[i + 1:] if n.op_type != "Identity"]
            if not rest:
                t = t.alias()  # predict applies the softmax to the logits
            else:
                axis = a.get("axis", -1 if opset >= 13 else 1)
                last = {"flat": (-1, 1), "pooled": (1,), "nchw": (1,), "nhwc": (-1, 3)}[t.kind]
                if axis not in last or (opset < 13 and t.kind != "flat"):  # before 13: flatten from axis
                    raise b.fail(node, f"softmax over axis {axis} of a {t.kind} tensor; fastcnn's Softmax "
                                       f"runs over the channels")
                t = b.add(node, L.Softmax(), [t], perm=t.perm)
        elif op == "Dropout":
            ratio = float(const[0]) if const else float(a.get("ratio", 0.5))
            t = b.add(node, L.Dropout(ratio), [t], perm=t.perm)
        tensors[node.output[0]] = t
    if output not in tensors:
        raise OnnxConversionError(f"{where}: no operator computes the graph output {output!r}")
    out = tensors[output]
    if out.perm is not None:
        raise OnnxConversionError(f"{where}: the graph ends with a flatten of an NCHW tensor, whose feature "
                                  f"order fastcnn (NHWC) cannot reproduce")
    if out.src == 0:
        raise OnnxConversionError(f"{where}: the graph holds no layer fastcnn can import")
    return b, out, start


def _build_model(b, out, start, dtype):
    """A Sequential when the ops form a chain ending at ``out``, else a functional Model."""
    from fastcnn.graph import Input
    from fastcnn.model import Model, Sequential

    ops = b.ops[:out.src]
    if all(ins == [k] for k, (_, _, _, ins) in enumerate(ops)):
        model = Sequential([op[0] for op in ops], input_shape=start.shape, dtype=dtype)
    else:
        syms = [Input(start.shape)]
        for layer, _, _, ins in ops:
            syms.append(layer([syms[k] for k in ins]) if getattr(layer, "merge", False) else layer(syms[ins[0]]))
        model = Model(syms[0], syms[out.src], dtype=dtype)
    kept = {id(layer) for layer in model.layers}
    for i, (layer, params, state, _) in enumerate(op for op in ops if id(op[0]) in kept):
        for store, values in (("params", params), ("state", state)):
            target = getattr(layer, store)
            for key, value in values.items():
                if target[key].shape != value.shape:
                    raise OnnxConversionError(f"{b.where}: layers.{i} {key} has shape {value.shape}, the layer "
                                              f"expects {target[key].shape}")
                target[key][...] = value
    model._weights_changed()
    return model


def load_onnx(path, *, dtype=np.float32):
    """A fastcnn model holding the layers and weights of the ONNX graph at ``path``: a
    :class:`fastcnn.Sequential` for a chain graph, a functional :class:`fastcnn.Model` for a
    branching one (Add / Concat of computed tensors).

    The model outputs logits and ``predict`` returns their softmax (a trailing
    Softmax of the graph is dropped). It takes NHWC inputs ``(N, H, W, C)``:
    transpose the NCHW batches of a PyTorch-exported graph with
    ``x.transpose(0, 2, 3, 1)``. It is not compiled: call ``model.compile(...)``
    before ``fit`` to fine-tune it. ``model.metadata`` records the graph's name,
    its input layout, and the dataset and class names of fastcnn exports.

    Raises
    ------
    OnnxConversionError
        Unsupported operators (all listed at once), or an operator fastcnn cannot express (named).
    ImportError
        onnx is not installed (``pip install 'fastcnn[onnx]'``).
    """
    onnx = require_onnx("load_onnx")
    from onnx import numpy_helper

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
    b, out, start = _convert(onnx, graph, where, consts, opset)
    model = _build_model(b, out, start, dtype)
    input_layout = start.kind
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
