"""Dense, Flatten and Dropout layers."""

import numbers

import numpy as np

from fastcnn.init import check_initializer
from fastcnn.layers.activations import make_activation
from fastcnn.layers.base import Layer

__all__ = ["Dense", "Flatten", "Dropout"]


class Dense(Layer):
    """Fully connected layer, ``y = x @ weight + bias``.

    Parameters
    ----------
    units : int
    use_bias : bool, default True
    kernel_initializer : str, default "glorot_uniform"
    activation : "relu", "sigmoid", "tanh", "softmax", "leaky_relu" (slope 0.2), "linear" or None
        Applied to the output (as the same activation layer after it would be).

    Shape:
        input (N, IN) -> output (N, units); weight (IN, units), bias (units,)
    """

    op = "dense"
    op_params = ("weight", "bias")
    ndim = 2
    input_description = "(N, features)"

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform", activation=None, *, impl="auto",
                 name=None):
        super().__init__(impl=impl, name=name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)):
            raise TypeError(f"{self._label()}: `units` must be a positive int, received {units!r}")
        if units < 1:
            raise ValueError(f"{self._label()}: `units` must be a positive int, received {units!r}")
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = check_initializer(kernel_initializer, self._label())
        self.activation, self.activation_layer = make_activation(activation, impl, self._label())

    def rank_hint(self, x):
        return "; add a Flatten() layer before it" if x.ndim > 2 else ""

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def param_shapes(self, input_shape):
        shapes = {"weight": (input_shape[0], self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def check_built_input(self, x):
        super().check_built_input(x)
        if x.shape[1] != self.input_shape[0]:
            raise ValueError(
                f"{self._label()} was built for {self.input_shape[0]} input features; "
                f"received shape {x.shape}"
            )

    def forward(self, x):
        return self._activate(self.forward_core(x))

    def backward(self, dy):
        return self.backward_core(self._activate_backward(dy))

    def forward_core(self, x):
        y, self._cache = self._fn.forward(x, self.params["weight"], self.params.get("bias"))
        return y

    def backward_core(self, dy):
        dx, dw, db = self._fn.backward(dy, self._cache)
        self.grads["weight"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def extra_repr(self):
        s = f"{self.units}"
        if not self.use_bias:
            s += ", use_bias=False"
        if self.kernel_initializer != "glorot_uniform":
            s += f", kernel_initializer={self.kernel_initializer!r}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s

    def get_config(self):
        config = {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                  "kernel_initializer": self.kernel_initializer}
        if self.activation is not None:
            config["activation"] = self.activation
        return config


class Flatten(Layer):
    """Flatten every axis but the batch axis, in C order. Shape: (N, ...) -> (N, prod(...))."""

    op = "flatten"

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x):
        y, self._cache = self._fn.forward(x)
        return y

    def backward(self, dy):
        return self._fn.backward(dy, self._cache)


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``rate`` and
    scale the rest by ``1 / (1 - rate)``; the identity in evaluation.

    Parameters
    ----------
    rate : float in [0, 1)
    seed : int or None; the model's seed overrides it when built inside a Sequential.

    ``batch_rows``: ``None``, or ``(start, total_rows)`` set by :mod:`fastcnn.distributed`
    while one rank trains on rows ``[start, start + N)`` of a global batch: the mask is
    drawn for the whole batch, as a single process draws it, and this slice used.
    """

    op = "dropout"

    def __init__(self, rate, seed=None, *, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise TypeError(f"{self._label()}: `rate` must be a float in [0, 1), received {rate!r}")
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{self._label()}: `rate` must be in [0, 1), received {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.batch_rows = None

    def reseed(self, rng):
        """Draw future masks from ``rng`` (a numpy Generator)."""
        self.rng = rng

    def op_kwargs(self, input_shape):
        kwargs = {"rate": self.rate, "rng": self.rng}
        if self.batch_rows is not None:
            kwargs["rows"] = self.batch_rows
        return kwargs

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            self._cache = None
            return x
        y, self._cache = self._fn.forward(x, **self.op_kwargs(x.shape[1:]))
        return y

    def backward(self, dy):
        if self._cache is None:
            return dy
        return self._fn.backward(dy, self._cache)

    def extra_repr(self):
        return f"{self.rate}" + (f", seed={self.seed}" if self.seed is not None else "")

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
