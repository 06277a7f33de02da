"""Runs of layers that a model executes as one fused op.

Users never build these: a model's plan (:mod:`fastcnn.plan`, shown by
``model.steps``) puts one in place of a matching run of layers when every
layer in it resolves to the same implementation. The layers keep their weights and gradients; only the work
between them is fused. Every implementation has every fused op (the registry
composes the unfused ops where an implementation has no fused kernel), so a
fused step gives the results of the layers it replaces.
"""

from fastcnn import registry
from fastcnn.layers.activations import ReLU
from fastcnn.layers.conv import Conv2D
from fastcnn.layers.merge import Add
from fastcnn.layers.pooling import MaxPool2D

__all__ = ["ConvReLU", "ConvPool", "AddReLU", "Core"]


def _then_relu(layers, kind):
    """``layers`` is a built ``kind`` layer and a built ReLU of the same implementation family."""
    if len(layers) != 2:
        return False
    first, relu = layers
    return (type(first) is kind and type(relu) is ReLU and first.built and relu.built
            and registry.family(first.resolved_impl) == registry.family(relu.resolved_impl))


class ConvReLU:
    """A :class:`Conv2D` and the :class:`ReLU` after it, as the op ``conv2d_relu``.

    The Numba kernel applies the ReLU while each output block is still in cache
    and masks the gradient block by block: no pre-activation array, no
    separate pass over the convolution's output in either direction.
    """

    op = "conv2d_relu"

    def __init__(self, conv, relu):
        self.conv = conv
        self.relu = relu
        self.layers = (conv, relu)
        self._fn = registry.get(self.op, conv.resolved_impl)
        self.extra_kwargs = {}  # the fused op's own keyword arguments, after the convolution's

    @staticmethod
    def matches(layers):
        return _then_relu(layers, Conv2D)

    def forward(self, x):
        return self.conv.forward_with(self._fn, x, **self.extra_kwargs)

    def backward(self, dy):
        return self.conv.backward_with(self._fn, dy)

    def __repr__(self):
        return f"ConvReLU({self.conv!r}, {self.relu!r})"


class ConvPool:
    """A :class:`Conv2D`, optionally a :class:`ReLU`, and a :class:`MaxPool2D` whose stride is
    its size and which pads nothing: the op ``conv2d_relu_maxpool2d`` (or ``conv2d_maxpool2d``).

    The Numba kernel pools each block of the convolution's output while it is in
    cache: the unpooled output is never stored, in either direction.
    """

    def __init__(self, *layers):
        self.layers = tuple(layers)
        self.conv, self.pool = layers[0], layers[-1]
        self.op = "conv2d_relu_maxpool2d" if len(layers) == 3 else "conv2d_maxpool2d"
        self._fn = registry.get(self.op, self.conv.resolved_impl)
        self.extra_kwargs = {"pool_size": self.pool.pool_size}

    @staticmethod
    def matches(layers):
        conv, pool = layers[0], layers[-1]
        if type(conv) is not Conv2D or type(pool) is not MaxPool2D or len(layers) not in (2, 3):
            return False
        if len(layers) == 3 and type(layers[1]) is not ReLU:
            return False
        if not all(layer.built for layer in layers) or len({registry.family(layer.resolved_impl) for layer in layers}) != 1:
            return False
        return pool.stride == pool.pool_size and pool._geometry(conv.output_shape[:2]) == ((0, 0), (0, 0))

    def forward(self, x):
        return self.conv.forward_with(self._fn, x, **self.extra_kwargs)

    def backward(self, dy):
        return self.conv.backward_with(self._fn, dy)

    def __repr__(self):
        return f"ConvPool({', '.join(map(repr, self.layers))})"


class AddReLU:
    """An :class:`Add` and the :class:`ReLU` after it (a residual block's end), as the op ``add_relu``.

    The Numba kernel writes ``max(sum, 0)`` in one pass over the inputs: no
    separate pass over the sum in either direction. A merge step: ``forward``
    takes the list of input arrays, ``backward`` returns one gradient per input.
    """

    op = "add_relu"
    merge = True

    def __init__(self, add, relu):
        self.add = add
        self.relu = relu
        self.layers = (add, relu)
        self._fn = registry.get(self.op, add.resolved_impl)
        self._cache = None

    @staticmethod
    def matches(layers):
        return _then_relu(layers, Add)

    def forward(self, xs):
        y, self._cache = self._fn.forward(*xs)
        return y

    def backward(self, dy):
        return self._fn.backward(dy, self._cache)

    def __repr__(self):
        return f"AddReLU({self.add!r}, {self.relu!r})"


class Core:
    """A layer's own op without its ``activation=`` (which the plan runs as the next step)."""

    def __init__(self, layer):
        self.layer = layer
        self.output_shape = layer.output_shape

    def forward(self, x):
        return self.layer.forward_core(x)

    def backward(self, dy):
        return self.layer.backward_core(dy)

    def __repr__(self):
        return f"Core({self.layer!r})"
