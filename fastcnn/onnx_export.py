"""Export a fastcnn model to a standard ONNX graph (``model.export_onnx``, ``fastcnn export``).

The graph takes what ``model.predict`` takes, NHWC float32 images ``(N, H, W, C)``
named ``"input"``, and returns what it returns, the class probabilities ``(N, K)``
named ``"probabilities"``: a Softmax is appended to the logits unless the model
already ends with a Softmax layer.

Inside, the graph is NCHW (``layout="nchw"``, the default): one Transpose after
the input, then every Conv and pool in ONNX's native layout; the Dense after a
Flatten gets its weight rows permuted from fastcnn's (h, w, c) order to the
graph's (c, h, w) order, which costs nothing at inference. ``layout="nhwc"``
keeps NHWC between operators and wraps every Conv and pool in a pair of
Transposes; docs/onnx.md has ONNX Runtime's timings of both.

How it is built: the model is a sequence of nodes ``(layer, input tensors,
output name)`` (:func:`model_nodes`), and :data:`EMITTERS` maps each layer type
to the function writing its ONNX operators. Functional models (``fc.Model``:
branches, Add, Concatenate, BatchNormalization, e.g. ``fc.models.resnet_mini``)
and Sequential export the same way; a new layer type plugs in by registering
an emitter with :func:`emitter`.

onnx is imported when an export runs, never by ``import fastcnn``.
"""

import json
import os
import tempfile

import numpy as np

from fastcnn.onnx_common import DEFAULT_OPSET, MIN_OPSET, OnnxConversionError, require_onnx

__all__ = ["export_onnx", "build_onnx", "model_nodes", "emitter", "EMITTERS", "LAYOUTS", "Graph", "Tensor"]

LAYOUTS = ("nchw", "nhwc")
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
#: Layer type name -> ``emit(graph, layer, inputs, output) -> Tensor``.
EMITTERS = {}

_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


def emitter(*type_names):
    """Register the decorated function as the ONNX emitter of the fastcnn layer types ``type_names``.

    The function receives the :class:`Graph` being built, the layer, the list of
    its input :class:`Tensor` s and the name its output must get; it adds nodes
    and initializers and returns the output :class:`Tensor`.
    """
    def register(fn):
        for name in type_names:
            EMITTERS[name] = fn
        return fn
    return register


class Tensor:
    """A value of the graph as the exporter sees it.

    ``layout`` is ``"nhwc"`` or ``"nchw"`` for images, ``"flat"`` for ``(N, F)``.
    ``shape`` is fastcnn's per-sample shape (always NHWC order for images).
    ``perm`` (flat tensors only, else None): graph element ``j`` holds fastcnn's
    element ``perm[j]`` (a Flatten of an NCHW tensor, before the Dense that undoes it).
    """

    def __init__(self, name, layout, shape, perm=None):
        self.name, self.layout, self.shape, self.perm = name, layout, tuple(shape), perm

    def like(self, name):
        """The same layout and order under another name (elementwise results)."""
        return Tensor(name, self.layout, self.shape, self.perm)

    def __repr__(self):
        return f"Tensor({self.name!r}, {self.layout}, {self.shape}{', permuted' if self.perm is not None else ''})"


class Graph:
    """Nodes and initializers under construction, and the layout policy (``"nchw"``/``"nhwc"``)."""

    def __init__(self, onnx, layout):
        self.onnx = onnx
        self.layout = layout
        self.nodes = []
        self.initializers = []
        self._names = set()
        self._nchw = {}  # NHWC tensor name -> its transposed NCHW Tensor

    def unique(self, name):
        base, i = name, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def node(self, op_type, inputs, output, **attributes):
        """Append one node with one output named ``output``; returns ``output``."""
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        self._names.add(output)
        return output

    def constant(self, name, array):
        """Add an initializer (float arrays as float32); returns its name."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def nchw(self, x):
        """``x`` as an NCHW tensor (a Transpose from NHWC when needed, made once per tensor)."""
        if x.layout == "nchw":
            return x
        if x.layout != "nhwc":
            raise OnnxConversionError(f"expected an image tensor (N, H, W, C), received {x}")
        if x.name not in self._nchw:
            name = self.node("Transpose", [x.name], self.unique(f"{x.name}.nchw"), perm=list(_TO_NCHW))
            self._nchw[x.name] = Tensor(name, "nchw", x.shape)
        return self._nchw[x.name]

    def image_output(self, name, shape):
        """The NCHW result ``name`` of a Conv or pool, transposed back to NHWC in the ``"nhwc"`` layout."""
        t = Tensor(name, "nchw", shape)
        if self.layout == "nhwc":
            back = self.node("Transpose", [name], self.unique(f"{name}.nhwc"), perm=list(_TO_NHWC))
            t = Tensor(back, "nhwc", shape)
        return t

    def canonical(self, x):
        """``x`` in fastcnn's own element order: NHWC images, flat tensors unpermuted."""
        if x.layout == "nchw":
            name = self.node("Transpose", [x.name], self.unique(f"{x.name}.nhwc"), perm=list(_TO_NHWC))
            return Tensor(name, "nhwc", x.shape)
        if x.perm is not None:
            indices = self.constant(f"{x.name}.order", np.argsort(x.perm).astype(np.int64))
            name = self.node("Gather", [x.name, indices], self.unique(f"{x.name}.ordered"), axis=1)
            return Tensor(name, "flat", x.shape)
        return x


# -- the model as nodes ----------------------------------------------------------------------
def model_nodes(model):
    """The model as ``[(layer, input names, output name), ...]`` in execution order.

    Any :class:`fastcnn.Model`: a functional graph lists its layers in the
    topological order the model runs them (``model.layers``), each with the
    names of the tensors it reads (``"input"`` for the model input, else an
    earlier node's output); a Sequential is the chain fed by ``"input"``. The
    last node computes the model's output (the logits).
    """
    from fastcnn.model import Model

    if not isinstance(model, Model):
        raise OnnxConversionError(
            f"export_onnx: expected a fastcnn Model or Sequential, received {type(model).__name__}"
        )
    names = [INPUT_NAME]
    nodes = []
    for i, (layer, ins) in enumerate(zip(model.layers, model._inputs_of)):
        output = f"layers.{i}.{layer.name or type(layer).__name__.lower()}"
        nodes.append((layer, [names[t] for t in ins], output))
        names.append(output)
    if model._output != len(model.layers):
        raise OnnxConversionError(f"export_onnx: the model's output is tensor {model._output}, "
                                  f"expected the last layer's ({len(model.layers)})")
    return nodes


def _emitter_of(layer, index):
    cls = type(layer)
    fn = EMITTERS.get(cls.__name__) if cls.__module__.startswith("fastcnn.") else None
    if fn is None:
        known = ", ".join(sorted(EMITTERS))
        raise OnnxConversionError(
            f"layers.{index} {layer._label()} ({cls.__module__}.{cls.__qualname__}) cannot be exported "
            f"to ONNX: no ONNX conversion is known for it. Exportable layers: {known}"
        )
    return fn


# -- emitters --------------------------------------------------------------------------------
def _one(inputs, layer):
    if len(inputs) != 1:
        raise OnnxConversionError(f"{layer._label()} takes one input, received {len(inputs)}")
    return inputs[0]


def _pads(pads):
    """fastcnn's ((top, bottom), (left, right)) as ONNX's [top, left, bottom, right]."""
    (pt, pb), (pl, pr) = pads
    return [int(pt), int(pl), int(pb), int(pr)]


@emitter("Conv2D")
def _emit_conv2d(g, layer, inputs, output):
    x = g.nchw(_one(inputs, layer))
    w = layer.params["weight"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
    names = [x.name, g.constant(f"{output}.weight", w)]
    if layer.use_bias:
        names.append(g.constant(f"{output}.bias", layer.params["bias"]))
    pads = layer._geometry(x.shape[:2])
    g.node("Conv", names, output, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
           pads=_pads(pads), dilations=[1, 1], group=1)
    return g.image_output(output, layer.output_shape)


def _emit_pool(op_type, **extra):
    def emit(g, layer, inputs, output):
        x = g.nchw(_one(inputs, layer))
        pads = layer._geometry(x.shape[:2])
        g.node(op_type, [x.name], output, kernel_shape=list(layer.pool_size), strides=list(layer.stride),
               pads=_pads(pads), ceil_mode=0, **extra)
        return g.image_output(output, layer.output_shape)
    return emit


# fastcnn averages each window over its unpadded elements (Keras): count_include_pad=0.
emitter("MaxPool2D")(_emit_pool("MaxPool"))
emitter("AvgPool2D")(_emit_pool("AveragePool", count_include_pad=0))


@emitter("GlobalAvgPool2D")
def _emit_global_avg_pool(g, layer, inputs, output):
    x = g.nchw(_one(inputs, layer))
    pooled = g.node("GlobalAveragePool", [x.name], g.unique(f"{output}.nc11"))  # (N, C, 1, 1)
    return Tensor(g.node("Flatten", [pooled], output, axis=1), "flat", layer.output_shape)


@emitter("Flatten")
def _emit_flatten(g, layer, inputs, output):
    x = _one(inputs, layer)
    if x.layout == "flat":
        return x
    name = g.node("Flatten", [x.name], output, axis=1)
    perm = None
    if x.layout == "nchw":  # the graph's (c, h, w) order; fastcnn's is (h, w, c)
        H, W, C = x.shape
        perm = np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1).ravel()
    return Tensor(name, "flat", layer.output_shape, perm)


@emitter("Dense")
def _emit_dense(g, layer, inputs, output):
    x = _one(inputs, layer)
    if x.layout != "flat":
        raise OnnxConversionError(f"{layer._label()} needs a flat input (N, features), received {x}")
    w = layer.params["weight"]  # (IN, OUT), rows in fastcnn's order
    if x.perm is not None:
        w = w[x.perm]  # rows in the graph's order: the Flatten's transposition, free at inference
    names = [x.name, g.constant(f"{output}.weight", w)]
    if layer.use_bias:
        names.append(g.constant(f"{output}.bias", layer.params["bias"]))
    return Tensor(g.node("Gemm", names, output), "flat", layer.output_shape)


@emitter("Dropout")
def _emit_dropout(g, layer, inputs, output):
    return _one(inputs, layer)  # the identity at inference


def _emit_elementwise(op_type, **attributes):
    def emit(g, layer, inputs, output):
        x = _one(inputs, layer)
        extra = {key: getattr(layer, attr) for key, attr in attributes.items()}
        return x.like(g.node(op_type, [x.name], output, **extra))
    return emit


emitter("ReLU")(_emit_elementwise("Relu"))
emitter("Sigmoid")(_emit_elementwise("Sigmoid"))
emitter("Tanh")(_emit_elementwise("Tanh"))
emitter("LeakyReLU")(_emit_elementwise("LeakyRelu", alpha="alpha"))


@emitter("Softmax")
def _emit_softmax(g, layer, inputs, output):
    x = _one(inputs, layer)
    # fastcnn's softmax runs over the last axis: channels, axis 1 of an NCHW tensor. Over a
    # permuted flat tensor it commutes with the permutation.
    axis = 1 if x.layout == "nchw" else -1
    return x.like(g.node("Softmax", [x.name], output, axis=axis))


# -- graph-model layers ------------------------------------------------------------------------
# BatchNormalization, Add and Concatenate (fastcnn.layers.normalization / merge) of functional
# models. Each emitter documents the layer attributes it reads.
def _same_layout(g, inputs):
    """``inputs`` in one layout and element order: images all NCHW (when any is) or all NHWC;
    flat tensors all in fastcnn's order unless they share one permutation."""
    if all(t.layout in ("nchw", "nhwc") for t in inputs):
        if any(t.layout == "nchw" for t in inputs):
            return [g.nchw(t) for t in inputs]
        return list(inputs)
    if all(t.layout == "flat" for t in inputs):
        perms = [t.perm for t in inputs]
        if all(p is None for p in perms) or all(p is not None and np.array_equal(p, perms[0]) for p in perms):
            return list(inputs)
        return [g.canonical(t) for t in inputs]
    raise OnnxConversionError(f"cannot combine tensors of ranks that differ: {inputs}")


@emitter("BatchNormalization")
def _emit_batch_norm(g, layer, inputs, output):
    """Inference-mode batch normalization over the channels (the last axis, fastcnn's NHWC).

    Reads ``layer.params["gamma"]`` and ``layer.params["beta"]`` (each optional: 1 and 0 when
    absent, Keras's ``scale=False`` / ``center=False``), ``layer.state["moving_mean"]``,
    ``layer.state["moving_variance"]`` (all of shape (C,)), ``layer.epsilon`` and ``layer.axis``.
    Writes ONNX ``BatchNormalization`` (NCHW: channels on axis 1; (N, C) inputs as they are),
    not folded into the Conv/Gemm before it: the file keeps the model's own parameters, and
    ONNX Runtime's graph optimizer folds it when it loads the graph.
    """
    x = _one(inputs, layer)
    rank = len(x.shape) + 1
    if int(layer.axis) % rank != rank - 1:
        raise OnnxConversionError(
            f"{layer._label()}: only the last axis (channels) normalizes in ONNX export; "
            f"received axis={layer.axis} for inputs of rank {rank}"
        )
    if x.layout == "nhwc":
        x = g.nchw(x)
    mean = np.asarray(layer.state["moving_mean"])
    C = mean.shape[0]
    values = {
        "scale": layer.params.get("gamma", np.ones(C, dtype=np.float32)),
        "bias": layer.params.get("beta", np.zeros(C, dtype=np.float32)),
        "mean": mean, "var": layer.state["moving_variance"],
    }
    if x.perm is not None:  # a flat tensor in the graph's order: the parameters follow it
        values = {k: np.asarray(v)[x.perm] for k, v in values.items()}
    names = [x.name] + [g.constant(f"{output}.{k}", v) for k, v in values.items()]
    g.node("BatchNormalization", names, output, epsilon=float(layer.epsilon))
    if x.layout == "nchw":
        return g.image_output(output, x.shape)
    return x.like(output)


@emitter("Add")
def _emit_add(g, layer, inputs, output):
    """Elementwise sum of two or more tensors of one shape (``Add`` nodes; no attributes read)."""
    if len(inputs) < 2:
        raise OnnxConversionError(f"{layer._label()} adds two or more tensors, received {len(inputs)}")
    inputs = _same_layout(g, inputs)
    total = inputs[0].name
    for i, t in enumerate(inputs[1:], start=1):
        total = g.node("Add", [total, t.name], output if i == len(inputs) - 1 else g.unique(f"{output}.{i}"))
    return inputs[0].like(total)


@emitter("Concatenate")
def _emit_concatenate(g, layer, inputs, output):
    """Concatenation along ``layer.axis`` (Keras's axis of the NHWC tensor with its batch axis,
    default -1: channels). Writes ONNX ``Concat`` on the axis of the graph's layout. Flat tensors
    keep their permutations: the result's is theirs, offset."""
    if len(inputs) < 2:
        raise OnnxConversionError(f"{layer._label()} joins two or more tensors, received {len(inputs)}")
    rank = len(inputs[0].shape) + 1
    axis = int(getattr(layer, "axis", -1))
    if not -rank <= axis < rank or axis % rank == 0:
        raise OnnxConversionError(f"{layer._label()}: cannot concatenate over axis {axis} of rank-{rank} tensors")
    axis %= rank
    shape = tuple(layer.output_shape)
    if rank == 4:
        inputs = _same_layout(g, inputs)
        nchw = inputs[0].layout == "nchw"
        g.node("Concat", [t.name for t in inputs], output, axis={1: 2, 2: 3, 3: 1}[axis] if nchw else axis)
        return Tensor(output, inputs[0].layout, shape)
    if rank != 2 or any(t.layout != "flat" for t in inputs):
        raise OnnxConversionError(f"{layer._label()}: expected images (N, H, W, C) or (N, F), received {inputs}")
    perm, offset = [], 0
    for t in inputs:
        F = t.shape[0]
        perm.append((np.arange(F) if t.perm is None else t.perm) + offset)
        offset += F
    perm = np.concatenate(perm)
    g.node("Concat", [t.name for t in inputs], output, axis=1)
    return Tensor(output, "flat", shape, None if np.array_equal(perm, np.arange(offset)) else perm)


# -- the model -------------------------------------------------------------------------------
def model_name(model):
    """``model.name`` if set, else ``metadata["name"]`` (an imported graph's), else the preset it was
    built from (``metadata["preset"]``), else its class name."""
    return (getattr(model, "name", None) or model.metadata.get("name") or model.metadata.get("preset")
            or type(model).__name__)


def class_names(model):
    """Class names from ``metadata["class_names"]`` or the dataset ``metadata["dataset"]`` names; else None."""
    from fastcnn import datasets

    K = model.output_shape[0]
    names = model.metadata.get("class_names")
    if names is None:
        names = datasets.CLASS_NAMES.get(model.metadata.get("dataset"))
    if names is None or len(names) != K:
        return None
    return [str(n) for n in names]


def _check_opset(onnx, opset):
    latest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, latest)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= latest:
        raise ValueError(
            f"export_onnx: `opset` must be an int from {MIN_OPSET} to {latest} (this onnx's newest), "
            f"received {opset!r}"
        )
    return int(opset)


def _check_batch_size(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"export_onnx: `batch_size` must be a positive int or None, received {batch_size!r}")
    return int(batch_size)


def build_onnx(model, *, batch_size=None, opset=None, layout="nchw"):
    """The ``onnx.ModelProto`` of ``model`` (see :func:`export_onnx`), checked but not written."""
    onnx = require_onnx("export_onnx")
    from onnx import TensorProto, helper

    import fastcnn

    if layout not in LAYOUTS:
        raise ValueError(f"export_onnx: `layout` must be one of {LAYOUTS}, received {layout!r}")
    opset = _check_opset(onnx, opset)
    batch_size = _check_batch_size(batch_size)
    model._check_classifier()
    nodes = model_nodes(model)
    emitters = [_emitter_of(layer, i) for i, (layer, _, _) in enumerate(nodes)]  # all, before any work

    g = Graph(onnx, layout)
    g._names.add(INPUT_NAME)
    shape = tuple(model.input_shape)
    tensors = {INPUT_NAME: Tensor(INPUT_NAME, "nhwc" if len(shape) == 3 else "flat", shape)}
    for (layer, inputs, output), emit in zip(nodes, emitters):
        tensors[output] = emit(g, layer, [tensors[name] for name in inputs], g.unique(output))
    last = g.canonical(tensors[nodes[-1][2]])
    if isinstance(nodes[-1][0], fastcnn.layers.Softmax):
        g.node("Identity", [last.name], OUTPUT_NAME)
    else:  # model.predict's softmax of the logits
        g.node("Softmax", [last.name], OUTPUT_NAME, axis=-1)

    batch = batch_size if batch_size is not None else "N"
    name = model_name(model)
    x_info = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, *shape])
    x_info.doc_string = (f"float32 {'NHWC images ' if len(shape) == 3 else ''}(N, {', '.join(map(str, shape))}), "
                         f"as model.predict takes them (uint8 images divided by 255)")
    y_info = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, model.output_shape[0]])
    y_info.doc_string = "class probabilities (N, K): model.predict's output"
    graph = helper.make_graph(g.nodes, name, [x_info], [y_info], initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastcnn",
                              producer_version=fastcnn.__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    proto.doc_string = (f"{name}, exported by fastcnn {fastcnn.__version__}. Input {INPUT_NAME!r}: "
                        f"{x_info.doc_string}; output {OUTPUT_NAME!r}: {y_info.doc_string}.")
    props = {"fastcnn_version": fastcnn.__version__, "model_name": name, "input_layout":
             "NHWC" if len(shape) == 3 else "NF", "output": "probabilities", "internal_layout": layout.upper()}
    if model.metadata.get("dataset") is not None:
        props["dataset"] = str(model.metadata["dataset"])
    names = class_names(model)
    if names is not None:
        props["class_names"] = json.dumps(names)
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, *, batch_size=None, opset=None, layout="nchw"):
    """Write ``model`` to ``path`` as an ONNX graph; returns the path.

    Parameters
    ----------
    model : a built :class:`fastcnn.Model` (functional or Sequential) classifier
    path : str or os.PathLike, written atomically (a temporary file, then a rename)
    batch_size : int, optional
        Fix the batch axis; by default it is dynamic (``"N"``).
    opset : int, optional
        ONNX opset, 13 or newer; default 17.
    layout : "nchw" (default) or "nhwc"
        Layout between operators (the input is NHWC either way); see docs/onnx.md.

    Raises
    ------
    OnnxConversionError
        A layer has no ONNX conversion (the message names it).
    ImportError
        onnx is not installed (``pip install 'fastcnn[onnx]'``).

    Weights are written as float32 (a float64 model too). Dropout is left out.

    Shape:
        input ``"input"`` (N, H, W, C) float32 -> output ``"probabilities"`` (N, K) float32.
    """
    proto = build_onnx(model, batch_size=batch_size, opset=opset, layout=layout)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx.partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
