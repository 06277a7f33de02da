"""2-D convolution layer (NHWC activations, HWIO weights)."""

import numpy as np

from fastcnn import registry
from fastcnn.geometry import check_padding_spec, output_hw, pair, resolve_padding
from fastcnn.init import check_initializer
from fastcnn.layers.activations import make_activation
from fastcnn.layers.base import Layer

__all__ = ["Conv2D"]


class Conv2D(Layer):
    """2-D convolution (cross-correlation) over NHWC inputs.

    Parameters
    ----------
    filters : int
        Number of output channels ``F``.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
        ``strides=`` is Keras's spelling of the same argument (give one of them).
    padding : "valid", "same", int or (int, int), default "valid"
        "same" gives ``ceil(H / stride)`` outputs, the odd padding row/column at
        the bottom/right (TensorFlow and PyTorch semantics).
    use_bias : bool, default True
    kernel_initializer : str, default "glorot_uniform" (see ``fastcnn.init``)
    activation : "relu", "sigmoid", "tanh", "softmax", "leaky_relu" (slope 0.2), "linear" or None
        Applied to the output; "relu" runs fused with the convolution exactly as a
        separate ``ReLU()`` layer after it does.
    impl : "auto", "reference", "numpy", "numba" or a numba variant ("numba:im2col",
        "numba:winograd", ...: see ``fastcnn.registry.implementations("conv2d")``)

    Shape:
        input (N, H, W, C) -> output (N, OH, OW, filters);
        weight (KH, KW, C, filters), bias (filters,).
        fastcnn is NHWC: an NCHW batch must be transposed with
        ``x.transpose(0, 2, 3, 1)``.
    """

    op = "conv2d"
    op_params = ("weight", "bias")
    ndim = 4

    def __init__(self, filters, kernel_size, stride=None, padding="valid", use_bias=True,
                 kernel_initializer="glorot_uniform", activation=None, *, strides=None, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        label = self._label()
        stride = keras_strides(stride, strides, 1, label)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)):
            raise TypeError(f"{label}: `filters` must be a positive int, received {filters!r}")
        if filters < 1:
            raise ValueError(f"{label}: `filters` must be a positive int, received {filters!r}")
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size", owner=label)
        self.stride = pair(stride, "stride", owner=label)
        self.padding = check_padding_spec(padding, owner=label)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = check_initializer(kernel_initializer, label)
        self.activation, self.activation_layer = make_activation(activation, impl, label)
        self._workspace = {}  # large scratch buffers the implementation may keep across steps

    def _geometry(self, hw):
        pads = resolve_padding(self.padding, hw, self.kernel_size, self.stride, owner=self._label())
        padded = (hw[0] + sum(pads[0]), hw[1] + sum(pads[1]))
        if padded[0] < self.kernel_size[0] or padded[1] < self.kernel_size[1]:
            raise ValueError(
                f"{self._label()}: kernel {self.kernel_size} is larger than the padded input "
                f"{padded} (input H, W = {tuple(hw)}, padding {self.padding!r})"
            )
        return pads

    def compute_output_shape(self, input_shape):
        H, W, _ = input_shape
        pads = self._geometry((H, W))
        OH, OW = output_hw((H, W), self.kernel_size, self.stride, pads)
        return (OH, OW, self.filters)

    def op_kwargs(self, input_shape):
        return {"stride": self.stride, "padding": self._geometry(input_shape[:2])}

    def param_shapes(self, input_shape):
        shapes = {"weight": self.kernel_size + (input_shape[2], self.filters)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def check_built_input(self, x):
        super().check_built_input(x)
        C = self.input_shape[2]
        if x.shape[3] != C:
            hint = ""
            if x.shape[1] == C:
                hint = " It looks like NCHW; fastcnn is NHWC: use x.transpose(0, 2, 3, 1)."
            raise ValueError(
                f"{self._label()} was built for inputs with {C} channels (N, H, W, {C}); "
                f"received shape {x.shape} with {x.shape[3]} channels.{hint}"
            )

    def forward(self, x):
        return self._activate(self.forward_with(self._fn, x))

    def backward(self, dy):
        return self.backward_with(self._fn, self._activate_backward(dy))

    def forward_core(self, x):
        return self.forward_with(self._fn, x)

    def backward_core(self, dy):
        return self.backward_with(self._fn, dy)

    def forward_with(self, fn, x, **extra):
        """Forward through ``fn``, a registry entry with conv2d's signature (conv2d or a fused op
        starting with it; ``extra`` are the fused op's own arguments, such as ``pool_size``)."""
        kwargs = {**self.op_kwargs(x.shape[1:]), **extra}
        if ":" in fn.impl:  # one variant asked for: it must apply
            self._check_variant(fn, x, kwargs)
        y, self._cache = fn.forward(
            x, self.params["weight"], self.params.get("bias"),
            workspace=self._workspace, need_cache=self.training, **kwargs,
        )
        return y

    def _check_variant(self, fn, x, kwargs):
        args = (x, self.params["weight"], None)
        if not fn.applies(registry.geometry_of(fn.op, args, kwargs)):
            (KH, KW), (SH, SW) = self.kernel_size, self.stride
            others = registry.applicable(fn.op, args, kwargs, registry.variants(fn.op))
            raise ValueError(f"{self._label()}: impl {fn.impl!r} does not apply to this convolution (kernel "
                             f"{KH}x{KW}, stride {SH}x{SW}, padding {kwargs['padding']}); variants that do: {others}")

    def backward_with(self, fn, dy):
        """Backward through ``fn`` (the entry the last forward used); writes ``grads``."""
        dx, dw, db = fn.backward(dy, self._cache, need_dx=self.needs_input_grad)
        self.grads["weight"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def extra_repr(self):
        s = f"{self.filters}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != "valid":
            s += f", padding={self.padding!r}"
        if not self.use_bias:
            s += ", use_bias=False"
        if self.kernel_initializer != "glorot_uniform":
            s += f", kernel_initializer={self.kernel_initializer!r}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s

    def get_config(self):
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        config = {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                  "stride": list(self.stride), "padding": padding, "use_bias": self.use_bias,
                  "kernel_initializer": self.kernel_initializer}
        if self.activation is not None:
            config["activation"] = self.activation
        return config


def keras_strides(stride, strides, default, owner):
    """The stride from fastcnn's ``stride=`` or Keras's ``strides=`` (at most one given)."""
    if stride is not None and strides is not None:
        raise ValueError(f"{owner}: pass `strides` (Keras's spelling) or `stride`, not both; received "
                         f"stride={stride!r}, strides={strides!r}")
    if strides is not None:
        return strides
    return default if stride is None else stride
