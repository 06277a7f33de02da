"""Runs of layers that :class:`fastcnn.Sequential` executes as one fused op.

Users never build these: a model's plan (``Sequential.steps``) puts one in
place of a matching run of layers when every layer in it resolves to the same
implementation. The layers keep their weights and gradients; only the work
between them is fused. Every implementation has every fused op (the registry
composes the unfused ops where an implementation has no fused kernel), so a
fused step gives the results of the layers it replaces.
"""

from fastcnn import registry
from fastcnn.layers.activations import ReLU
from fastcnn.layers.conv import Conv2D

__all__ = ["ConvReLU", "plan"]


class ConvReLU:
    """A :class:`Conv2D` and the :class:`ReLU` after it, as the op ``conv2d_relu``.

    The Numba kernel applies the ReLU while each output block is still in cache
    and masks the gradient block by block: no pre-activation array, no
    separate pass over the convolution's output in either direction.
    """

    def __init__(self, conv, relu):
        self.conv = conv
        self.relu = relu
        self.layers = (conv, relu)
        self._fn = registry.get("conv2d_relu", conv.resolved_impl)

    @staticmethod
    def matches(layers):
        conv, relu = layers
        return (type(conv) is Conv2D and type(relu) is ReLU and conv.built and relu.built
                and conv.resolved_impl == relu.resolved_impl)

    def forward(self, x):
        return self.conv.forward_with(self._fn, x)

    def backward(self, dy):
        return self.conv.backward_with(self._fn, dy)

    def __repr__(self):
        return f"ConvReLU({self.conv!r}, {self.relu!r})"


_FUSIONS = (ConvReLU,)


def plan(layers, fuse=True):
    """The steps one pass runs over built ``layers``: layers, and fused steps where they match."""
    steps, i = [], 0
    while i < len(layers):
        for fused in _FUSIONS if fuse else ():
            if i + 2 <= len(layers) and fused.matches(layers[i:i + 2]):
                steps.append(fused(*layers[i:i + 2]))
                i += 2
                break
        else:
            steps.append(layers[i])
            i += 1
    return steps
