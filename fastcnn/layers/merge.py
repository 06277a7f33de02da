"""Merge layers: ``Add`` and ``Concatenate``, called on a list of tensors."""

import numpy as np

from fastcnn import registry
from fastcnn.layers.base import Layer, format_shape

__all__ = ["Add", "Concatenate"]


class _Merge(Layer):
    """A layer of two or more inputs: ``forward(xs) -> y``, ``backward(dy) -> (dx, ...)``."""

    merge = True
    input_description = "a list of two or more tensors"

    def _check_shapes(self, shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) < 2:
            raise ValueError(f"{self._label()} must be called on a list of two or more tensors, received {shapes!r}")
        return [tuple(int(s) for s in shape) for shape in shapes]

    def symbolic_output_shape(self, input_shapes):
        return tuple(self.compute_output_shape(self._check_shapes(input_shapes)))

    def build(self, input_shape, dtype=np.float32, rng=None):
        shapes = self._check_shapes(input_shape)
        self.dtype = np.dtype(dtype)
        self.output_shape = tuple(self.compute_output_shape(shapes))
        self.input_shape = shapes
        self._fn = registry.get(self.op, self.impl)
        self.built = True
        return self

    def __call__(self, xs):
        from fastcnn import graph

        if graph.is_symbolic(xs):
            return graph.call_layer(self, list(xs) if isinstance(xs, (list, tuple)) else xs)
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(
                f"{self._label()} must be called on a list of two or more arrays, received {type(xs).__name__}"
            )
        xs = [self.check_input(x) for x in xs]
        if not self.built:
            self.build([x.shape[1:] for x in xs], xs[0].dtype)
        for x in xs:
            self.check_built_input(x)
        shapes = [x.shape[1:] for x in xs]
        if [tuple(s) for s in shapes] != [tuple(s) for s in self.input_shape]:
            raise ValueError(f"{self._label()} was built for inputs {self.input_shape}, received {shapes}")
        return self.forward(xs)

    def backward(self, dy):
        return self._fn.backward(dy, self._cache)


class Add(_Merge):
    """Element-wise sum of two or more tensors of one shape (residual connections).

    Its gradient hands the same array to every input, with no copy.

    Shape:
        inputs [(N, ...), (N, ...), ...] of one shape -> output (N, ...)
    """

    op = "add"

    def compute_output_shape(self, input_shapes):
        first = input_shapes[0]
        for shape in input_shapes[1:]:
            if shape != first:
                raise ValueError(
                    f"{self._label()}: every input must have the same shape; received "
                    + ", ".join(format_shape((None,) + s) for s in input_shapes)
                )
        return first

    def forward(self, xs):
        y, self._cache = self._fn.forward(*xs)
        return y


class Concatenate(_Merge):
    """Join tensors along ``axis`` (default -1, the channels).

    Parameters
    ----------
    axis : int, default -1 (not the batch axis 0)

    Shape:
        inputs [(N, H, W, C1), (N, H, W, C2), ...] -> output (N, H, W, C1 + C2 + ...)
    """

    op = "concatenate"

    def __init__(self, axis=-1, *, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{self._label()}: `axis` must be an int, received {axis!r}")
        self.axis = int(axis)

    def _axis(self, rank):
        """The axis for per-sample shapes of ``rank`` axes, counted with the batch axis."""
        axis = self.axis + rank + 1 if self.axis < 0 else self.axis
        if not 1 <= axis <= rank:
            raise ValueError(f"{self._label()}: axis={self.axis} is not a non-batch axis of {rank + 1}-D inputs")
        return axis

    def compute_output_shape(self, input_shapes):
        rank = len(input_shapes[0])
        axis = self._axis(rank)
        for shape in input_shapes:
            if len(shape) != rank or any(a != b for k, (a, b) in enumerate(zip(shape, input_shapes[0]))
                                         if k != axis - 1):
                raise ValueError(
                    f"{self._label()}: inputs must match on every axis but axis={self.axis}; received "
                    + ", ".join(format_shape((None,) + s) for s in input_shapes)
                )
        out = list(input_shapes[0])
        out[axis - 1] = sum(shape[axis - 1] for shape in input_shapes)
        return tuple(out)

    def op_kwargs(self, input_shapes):
        return {"axis": self._axis(len(input_shapes[0]))}

    def forward(self, xs):
        y, self._cache = self._fn.forward(*xs, **self.op_kwargs([x.shape[1:] for x in xs]))
        return y

    def extra_repr(self):
        return "" if self.axis == -1 else f"axis={self.axis}"

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
