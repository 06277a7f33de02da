"""BatchNormalization (Keras 3 semantics)."""

import numbers

import numpy as np

from fastcnn.layers.base import Layer, format_shape

__all__ = ["BatchNormalization"]


class BatchNormalization(Layer):
    """Normalize each channel with the batch's statistics in training and moving ones at inference.

    Training: ``y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta`` with the
    batch's mean and biased variance over every axis but ``axis``, then
    ``moving = moving * momentum + batch * (1 - momentum)`` for the mean and the
    variance (Keras). Evaluation and prediction use the moving statistics; there
    a BatchNormalization right after a Conv2D or Dense is folded into that
    layer's weights (see :mod:`fastcnn.plan`).

    Parameters
    ----------
    axis : int, default -1
        The channel axis (normalized separately); -1 is the last (NHWC's C).
    momentum : float in [0, 1], default 0.99
    epsilon : float > 0, default 1e-3
    center : bool, default True
        Learn an offset ``beta`` (starts at 0).
    scale : bool, default True
        Learn a scale ``gamma`` (starts at 1).

    Weights: ``gamma``, ``beta`` (trained, ``(C,)``); state ``moving_mean``
    (starts at 0) and ``moving_variance`` (starts at 1), ``(C,)``, not trained.

    Shape:
        input (N, H, W, C) or (N, F) (any rank >= 2) -> output the same.
    """

    op = "batch_norm"
    op_params = ("gamma", "beta")
    input_description = "(N, ..., C) with at least 2 axes"

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, *, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        label = self._label()
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{label}: `axis` must be an int, received {axis!r}")
        for key, value in (("momentum", momentum), ("epsilon", epsilon)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
                raise TypeError(f"{label}: `{key}` must be a finite float, received {value!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{label}: `momentum` must be in [0, 1], received {momentum!r}")
        if epsilon <= 0:
            raise ValueError(f"{label}: `epsilon` must be > 0, received {epsilon!r}")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self._last = True  # whether the channel axis is the last one (set by build)

    def _channel_axis(self, input_shape):
        rank = len(input_shape) + 1  # with the batch axis
        axis = self.axis + rank if self.axis < 0 else self.axis
        if rank < 2 or not 1 <= axis < rank:
            raise ValueError(
                f"{self._label()}: axis={self.axis} is not a channel axis of inputs "
                f"{format_shape((None,) + tuple(input_shape))} (the batch axis 0 cannot be normalized)"
            )
        return axis

    def compute_output_shape(self, input_shape):
        self._channel_axis(input_shape)
        return input_shape

    def param_shapes(self, input_shape):
        C = input_shape[self._channel_axis(input_shape) - 1]
        shapes = {}
        if self.scale:
            shapes["gamma"] = (C,)
        if self.center:
            shapes["beta"] = (C,)
        return shapes

    def op_kwargs(self, input_shape):
        return {"epsilon": self.epsilon}

    def state_shapes(self, input_shape):
        C = input_shape[self._channel_axis(input_shape) - 1]
        return {"moving_mean": (C,), "moving_variance": (C,)}

    def build(self, input_shape, dtype=np.float32, rng=None):
        super().build(input_shape, dtype, rng)
        self._last = self._channel_axis(self.input_shape) == len(self.input_shape)
        if not self.state:  # neither scale nor center: reset_parameters was not called
            self.reset_parameters(rng)
        return self

    def reset_parameters(self, rng=None):
        """gamma = 1, beta = 0, moving_mean = 0, moving_variance = 1; gradients zeroed."""
        C = self.input_shape[self._channel_axis(self.input_shape) - 1]
        self.params = {}
        if self.scale:
            self.params["gamma"] = np.ones(C, dtype=self.dtype)
        if self.center:
            self.params["beta"] = np.zeros(C, dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.state = {"moving_mean": np.zeros(C, dtype=self.dtype), "moving_variance": np.ones(C, dtype=self.dtype)}

    def check_built_input(self, x):
        super().check_built_input(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self._label()} was built for inputs {format_shape((None,) + self.input_shape)}; "
                f"received shape {x.shape}"
            )

    def _to_last(self, a):
        return a if self._last else np.ascontiguousarray(np.moveaxis(a, self._channel_axis(self.input_shape), -1))

    def _from_last(self, a):
        return a if self._last else np.moveaxis(a, -1, self._channel_axis(self.input_shape))

    def forward(self, x):
        gamma, beta = self.params.get("gamma"), self.params.get("beta")
        x = self._to_last(x)
        if self.training:
            y, self._cache = self._fn.forward(x, gamma, beta, **self.op_kwargs(self.input_shape))
            batch_mean, batch_var = self._cache[0], self._cache[1]
            t = self.dtype.type
            for key, batch in (("moving_mean", batch_mean), ("moving_variance", batch_var)):
                moving = self.state[key]  # updated in place: the model's references stay valid
                moving *= t(self.momentum)
                moving += t(1.0 - self.momentum) * batch
        else:
            y, self._cache = self._fn.forward(x, gamma, beta, self.state["moving_mean"],
                                              self.state["moving_variance"], **self.op_kwargs(self.input_shape))
        return self._from_last(y)

    def backward(self, dy):
        dx, dgamma, dbeta = self._fn.backward(self._to_last(dy), self._cache)
        if self.scale:
            self.grads["gamma"] = dgamma
        if self.center:
            self.grads["beta"] = dbeta
        return self._from_last(dx)

    def fold(self):
        """Per-channel ``(scale, shift)`` of the inference-mode transform, ``y = x * scale + shift``."""
        from fastcnn.ops.batchnorm import batch_norm_fold

        return batch_norm_fold(self.params.get("gamma"), self.params.get("beta"), self.state["moving_mean"],
                               self.state["moving_variance"], self.epsilon, self.dtype)

    def extra_repr(self):
        parts = []
        if self.axis != -1:
            parts.append(f"axis={self.axis}")
        if self.momentum != 0.99:
            parts.append(f"momentum={self.momentum}")
        if self.epsilon != 1e-3:
            parts.append(f"epsilon={self.epsilon}")
        if not self.center:
            parts.append("center=False")
        if not self.scale:
            parts.append("scale=False")
        return ", ".join(parts)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}
