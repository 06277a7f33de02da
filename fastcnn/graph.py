"""The functional API's symbolic tensors and the graph a :class:`fastcnn.Model` is built from.

``x = fc.Input((28, 28, 1))`` is a :class:`SymbolicTensor`: a per-sample shape
and the node that produces it. Calling a layer on one (``L.Conv2D(16, 3)(x)``)
records a :class:`Node` and returns the layer's output tensor; nothing is
computed and no weights are created (the model builds every layer, seeded, when
it is constructed). :func:`topology` turns ``(input, output)`` into the
model's layers in topological order and, for each, the tensors it reads:
tensor 0 is the model input, tensor ``i + 1`` the output of ``layers[i]``.

A layer is called on a symbolic tensor at most once: fastcnn shares no weights
between graph positions.
"""

import numbers

from fastcnn.layers.base import Layer, format_shape

__all__ = ["Input", "SymbolicTensor", "Node", "is_symbolic", "call_layer", "topology"]


class Node:
    """One application of ``layer`` (None for an :func:`Input`) to ``inputs`` (symbolic tensors)."""

    __slots__ = ("layer", "inputs", "output")

    def __init__(self, layer, inputs, shape):
        self.layer = layer
        self.inputs = tuple(inputs)
        self.output = SymbolicTensor(shape, self)


class SymbolicTensor:
    """A placeholder for a batch of per-sample ``shape``, produced by ``node``."""

    __slots__ = ("shape", "node", "name")

    def __init__(self, shape, node, name=None):
        self.shape = tuple(shape)
        self.node = node
        self.name = name

    def __repr__(self):
        source = "Input" if self.node.layer is None else self.node.layer._label()
        return f"<SymbolicTensor shape={format_shape((None,) + self.shape)} from {source}>"


def Input(shape, name=None):
    """A model input of per-sample ``shape`` (no batch axis, NHWC), e.g. ``fc.Input((28, 28, 1))``."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"Input: `shape` must be a tuple of positive ints such as (28, 28, 1), received {shape!r}") \
            from None
    if not dims or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in dims):
        raise ValueError(f"Input: `shape` must be a tuple of positive ints such as (28, 28, 1), received {shape!r}")
    node = Node(None, (), tuple(int(s) for s in dims))
    node.output.name = name
    return node.output


def is_symbolic(x):
    """Whether ``x`` is a symbolic tensor or a non-empty list of them."""
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, SymbolicTensor) for t in x)


def call_layer(layer, inputs):
    """Record ``layer`` applied to symbolic ``inputs``; returns its output tensor."""
    merge = getattr(layer, "merge", False)
    if merge:
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"{layer._label()} must be called on a list of two or more tensors, received {inputs!r}")
        shapes = [t.shape for t in inputs]
    else:
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 1:
                raise ValueError(f"{layer._label()} takes one tensor, received a list of {len(inputs)}")
            inputs = inputs[0]
        shapes = inputs.shape
        inputs = [inputs]
    if getattr(layer, "_node", None) is not None:
        raise ValueError(
            f"{layer._label()} is already used in a graph; a layer can be called on a symbolic tensor "
            f"once (fastcnn shares no weights): create another layer"
        )
    try:
        shape = layer.symbolic_output_shape(shapes)
    except ValueError as e:
        raise ValueError(f"{e}") from None
    node = Node(layer, inputs, shape)
    layer._node = node
    return node.output


def topology(input, output):
    """``(layers, inputs_of)`` of the graph from ``input`` to ``output``, in topological order.

    ``inputs_of[i]`` lists the tensor indices ``layers[i]`` reads: 0 for the
    model input, ``j + 1`` for the output of ``layers[j]`` (always ``j < i``).
    Depth-first from the output, inputs in call order: the same graph always
    gives the same order (so saved parameter names are stable).
    """
    for what, t in (("inputs", input), ("outputs", output)):
        if not isinstance(t, SymbolicTensor):
            raise TypeError(f"Model: `{what}` must be a symbolic tensor (from fc.Input or a layer call), "
                            f"received {type(t).__name__}")
    if input.node.layer is not None:
        raise ValueError(f"Model: `inputs` must come from fc.Input(...), received {input!r}")
    index = {id(input.node): 0}
    layers, inputs_of = [], []
    stack = [(output.node, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in index:
            continue
        if node.layer is None:
            raise ValueError(
                f"Model: the outputs depend on an Input of shape {format_shape((None,) + node.output.shape)} "
                f"that is not the model's input"
            )
        if expanded:
            layers.append(node.layer)
            inputs_of.append([index[id(t.node)] for t in node.inputs])
            index[id(node)] = len(layers)
            continue
        stack.append((node, True))
        for t in reversed(node.inputs):
            if id(t.node) not in index:
                stack.append((t.node, False))
    if not layers:
        raise ValueError("Model: `outputs` is the input itself; call at least one layer on it")
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("Model: the same layer instance appears twice; create a new layer for each position")
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"Model: {layer!r} is not a fastcnn Layer")
    return layers, inputs_of
