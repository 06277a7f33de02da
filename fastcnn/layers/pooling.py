"""Pooling layers (NHWC)."""

from fastcnn.geometry import check_padding_spec, output_hw, pair, resolve_padding
from fastcnn.layers.base import Layer
from fastcnn.layers.conv import keras_strides

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


class _Pool2D(Layer):
    ndim = 4

    def __init__(self, pool_size=2, stride=None, padding="valid", *, strides=None, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        label = self._label()
        stride = keras_strides(stride, strides, None, label)
        self.pool_size = pair(pool_size, "pool_size", owner=label)
        self.stride = self.pool_size if stride is None else pair(stride, "stride", owner=label)
        self._stride_given = stride is not None
        self.padding = check_padding_spec(padding, owner=label)
        if not isinstance(self.padding, str) and any(
            2 * p > k for p, k in zip(self.padding, self.pool_size)
        ):
            raise ValueError(
                f"{label}: explicit padding {self.padding} must be at most half the pool size "
                f"{self.pool_size}, or some windows would hold only padding"
            )

    def _geometry(self, hw):
        pads = resolve_padding(self.padding, hw, self.pool_size, self.stride, owner=self._label())
        padded = (hw[0] + sum(pads[0]), hw[1] + sum(pads[1]))
        if padded[0] < self.pool_size[0] or padded[1] < self.pool_size[1]:
            raise ValueError(
                f"{self._label()}: pool_size {self.pool_size} is larger than the padded input "
                f"{padded} (input H, W = {tuple(hw)}, padding {self.padding!r})"
            )
        return pads

    def compute_output_shape(self, input_shape):
        H, W, C = input_shape
        return output_hw((H, W), self.pool_size, self.stride, self._geometry((H, W))) + (C,)

    def op_kwargs(self, input_shape):
        return {"pool_size": self.pool_size, "stride": self.stride, "padding": self._geometry(input_shape[:2])}

    def forward(self, x):
        y, self._cache = self._fn.forward(x, **self.op_kwargs(x.shape[1:]))
        return y

    def backward(self, dy):
        return self._fn.backward(dy, self._cache)

    def extra_repr(self):
        s = f"pool_size={self.pool_size}"
        if self._stride_given and self.stride != self.pool_size:
            s += f", stride={self.stride}"
        if self.padding != "valid":
            s += f", padding={self.padding!r}"
        return s

    def get_config(self):
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "stride": list(self.stride), "padding": padding}


class MaxPool2D(_Pool2D):
    """Max pooling; the gradient of each window goes to its first maximum (row-major).

    Parameters
    ----------
    pool_size : int or (int, int), default 2
    stride : int or (int, int), default ``pool_size`` (``strides=``: Keras's spelling)
    padding : "valid", "same", int or (int, int); pads with -inf

    Shape:
        input (N, H, W, C) -> output (N, OH, OW, C)
    """

    op = "max_pool2d"


class AvgPool2D(_Pool2D):
    """Average pooling over each window's unpadded elements (TensorFlow/Keras semantics).

    Shape:
        input (N, H, W, C) -> output (N, OH, OW, C)
    """

    op = "avg_pool2d"


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes. Shape: input (N, H, W, C) -> output (N, C)."""

    op = "global_avg_pool2d"
    ndim = 4

    def compute_output_shape(self, input_shape):
        return (input_shape[2],)

    def forward(self, x):
        y, self._cache = self._fn.forward(x)
        return y

    def backward(self, dy):
        return self._fn.backward(dy, self._cache)
