"""Activation layers. Each works on any input rank."""

import numbers

from fastcnn.layers.base import Layer
from fastcnn.registry import family

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "ACTIVATIONS", "make_activation"]


class _Activation(Layer):
    def forward(self, x):
        y, self._cache = self._fn.forward(x, **self.op_kwargs(x.shape[1:]))
        return y

    def backward(self, dy):
        return self._fn.backward(dy, self._cache)


class ReLU(_Activation):
    """``max(x, 0)``; the gradient at exactly 0 is 0. Shape: any -> same."""

    op = "relu"


class Sigmoid(_Activation):
    """Logistic function ``1 / (1 + exp(-x))``, overflow-free. Shape: any -> same."""

    op = "sigmoid"


class Tanh(_Activation):
    """Hyperbolic tangent. Shape: any -> same."""

    op = "tanh"


class Softmax(_Activation):
    """Softmax over the last axis, for model outputs. Shape: (N, K) -> (N, K).

    For training, prefer raw logits with ``loss="softmax_cross_entropy"``, which is
    fused and stable; ``Sequential.predict`` applies the softmax itself.
    """

    op = "softmax"


class LeakyReLU(_Activation):
    """``x`` where positive, else ``alpha * x``. Shape: any -> same."""

    op = "leaky_relu"

    def __init__(self, alpha=0.01, *, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or alpha < 0:
            raise ValueError(f"{self._label()}: `alpha` must be a non-negative float, received {alpha!r}")
        self.alpha = float(alpha)

    def op_kwargs(self, input_shape):
        return {"alpha": self.alpha}

    def extra_repr(self):
        return "" if self.alpha == 0.01 else f"alpha={self.alpha}"

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


#: ``activation=`` names Conv2D and Dense accept (Keras's), ``None``/"linear" meaning none.
#: "leaky_relu" uses Keras's ``keras.activations.leaky_relu`` slope, 0.2.
ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "leaky_relu", "linear")


def make_activation(activation, impl, owner):
    """``(name or None, activation layer or None)`` for the ``activation=`` argument of a layer."""
    if activation is None or activation == "linear":
        return None, None
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {activation!r}; expected one of {list(ACTIVATIONS)} or None")
    impl = family(impl)  # a Conv2D's "numba:winograd" is a numba ReLU (activations have no variants)
    if activation == "leaky_relu":
        return activation, LeakyReLU(0.2, impl=impl)
    cls = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax}[activation]
    return activation, cls(impl=impl)
