"""The layer protocol every fastcnn layer follows.

- ``layer(x)`` builds the layer on first use from the input's shape and dtype
  (lazy weights), validates ``x`` and runs :meth:`forward`.
- ``forward(x) -> y`` caches what ``backward`` needs; ``backward(dy) -> dx``
  writes ``layer.grads``.
- ``params`` and ``grads`` are dicts with the same keys, shapes and dtypes.
- ``state`` holds non-trainable arrays (BatchNormalization's moving
  statistics): saved and loaded with the model, updated by the layer itself
  (in place), never given to the optimizer.
- Called on a symbolic tensor (:func:`fastcnn.Input`), a layer returns the
  symbolic tensor of its output (the functional API, :mod:`fastcnn.graph`);
  its weights are created when the :class:`fastcnn.Model` is built.
- ``reset_parameters(rng)`` is the one initializer; ``train()`` / ``eval()``.
"""

import numpy as np

from fastcnn import registry
from fastcnn.init import initialize

__all__ = ["Layer", "format_shape"]


def format_shape(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


class Layer:
    """Base class: lazy build, input validation, train/eval mode, ``__repr__``.

    Subclasses set ``op`` (a registry op name, or None), ``ndim`` (the input rank
    including the batch axis) and override :meth:`compute_output_shape`,
    :meth:`forward`, :meth:`backward`, :meth:`op_kwargs` when the op takes keyword
    arguments, and for layers with weights ``op_params``, :meth:`param_shapes` and
    :meth:`reset_parameters`.
    """

    op = None
    #: Names of the parameters the layer passes to its op after the input(s), in order
    #: (one it does not have, such as an unused bias, is passed as None).
    op_params = ()
    ndim = None
    input_description = "(N, H, W, C)"

    def __init__(self, *, impl="auto", name=None):
        registry.check_impl(impl, owner=type(self).__name__)
        self.impl = impl
        self.name = name
        self.built = False
        self.training = True
        # False when nothing consumes this layer's dx (the first layer of a model):
        # layers that can skip computing it do.
        self.needs_input_grad = True
        self.input_shape = None  # without the batch axis
        self.output_shape = None
        self.dtype = None
        self.params = {}
        self.grads = {}
        self.state = {}  # non-trainable arrays: saved, never given to the optimizer
        self._fn = None
        self._cache = None
        # ``activation=`` on Conv2D and Dense: the name and the activation layer applied after
        # the layer's own op (built with it; a model's plan runs it as a step of its own).
        self.activation = None
        self.activation_layer = None

    # -- construction -------------------------------------------------------------
    def build(self, input_shape, dtype=np.float32, rng=None):
        """Create weights for inputs of ``input_shape`` (no batch axis) and ``dtype``."""
        input_shape = tuple(int(s) for s in input_shape)
        if self.ndim is not None and len(input_shape) != self.ndim - 1:
            raise ValueError(
                f"{self._label()} expects inputs of shape {self.input_description}; "
                f"received a per-sample shape {format_shape(input_shape)}"
            )
        self.dtype = np.dtype(dtype)
        self.output_shape = tuple(self.compute_output_shape(input_shape))
        self.input_shape = input_shape  # set before reset_parameters, which reads it
        if self.op is not None:
            self._fn = registry.get(self.op, self.impl)
        shapes = self.param_shapes(input_shape)
        if shapes:
            self.reset_parameters(rng if rng is not None else np.random.default_rng())
        if self.activation_layer is not None:
            self.activation_layer.build(self.output_shape, self.dtype)
        self.built = True
        return self

    def param_shapes(self, input_shape):
        """Mapping of parameter name to shape; empty for layers without weights."""
        return {}

    def state_shapes(self, input_shape):
        """Mapping of non-trainable state name to shape (``self.state`` once built); empty for most layers."""
        return {}

    def reset_parameters(self, rng):
        """(Re)initialize every parameter from the numpy Generator ``rng``.

        ``"weight"`` is drawn from ``self.kernel_initializer``; every other
        parameter (the bias) starts at zero. Gradients are zeroed.
        """
        self.params = {
            name: initialize(self.kernel_initializer, rng, shape, self.dtype) if name == "weight"
            else np.zeros(shape, dtype=self.dtype)
            for name, shape in self.param_shapes(self.input_shape).items()
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def compute_output_shape(self, input_shape):
        return input_shape

    def op_kwargs(self, input_shape):
        """The keyword arguments :meth:`forward` passes to the op for per-sample inputs of
        ``input_shape`` (what :mod:`fastcnn._opcases` reports; empty for most layers)."""
        return {}

    def count_params(self):
        """Every weight, trained or not (Keras's ``count_params``)."""
        return self.count_trainable_params() + int(sum(a.size for a in self.state.values()))

    def count_trainable_params(self):
        return int(sum(p.size for p in self.params.values()))

    def symbolic_output_shape(self, input_shape):
        """The per-sample output shape for ``input_shape`` without building (validates the rank)."""
        input_shape = tuple(int(s) for s in input_shape)
        if self.ndim is not None and len(input_shape) != self.ndim - 1:
            raise ValueError(
                f"{self._label()} expects inputs of shape {self.input_description}; "
                f"received a symbolic tensor of shape {format_shape((None,) + input_shape)}"
            )
        return tuple(self.compute_output_shape(input_shape))

    @property
    def resolved_impl(self):
        """The implementation actually used (after 'auto' and FASTCNN_IMPL), once built."""
        return None if self._fn is None else self._fn.impl

    # -- running ------------------------------------------------------------------
    def __call__(self, x):
        from fastcnn import graph

        if graph.is_symbolic(x):
            return graph.call_layer(self, x)
        x = self.check_input(x)
        if not self.built:
            self.build(x.shape[1:], x.dtype)
        self.check_built_input(x)
        return self.forward(x)

    def check_input(self, x):
        """Validate type, dtype and rank of a batch; returns it as an ndarray."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._label()} expects a numpy array, received {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"{self._label()} expects a float32 or float64 array, received dtype {x.dtype} "
                f"with shape {x.shape}; convert with x.astype(np.float32) (scale images to [0, 1])"
            )
        if self.ndim is not None and x.ndim != self.ndim:
            raise ValueError(
                f"{self._label()} expects a {self.ndim}-D input {self.input_description}, "
                f"received a {x.ndim}-D array of shape {x.shape}{self.rank_hint(x)}"
            )
        return x

    def rank_hint(self, x):
        """Extra advice appended to a wrong-rank error."""
        if self.ndim == 4 and x.ndim == 3:
            return "; a batch of one image needs a leading axis (x[None]), grayscale images a channel axis (x[..., None])"
        return ""

    def check_built_input(self, x):
        """Validate a batch against what the layer was built for."""
        if x.dtype != self.dtype:
            raise TypeError(
                f"{self._label()} was built for {self.dtype} inputs, received {x.dtype} with shape {x.shape}"
            )

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def forward_core(self, x):
        """The layer's own op, without its ``activation`` (the whole forward for other layers)."""
        return self.forward(x)

    def backward_core(self, dy):
        """Backward through :meth:`forward_core`."""
        return self.backward(dy)

    def _activate(self, y):
        return y if self.activation_layer is None else self.activation_layer.forward(y)

    def _activate_backward(self, dy):
        return dy if self.activation_layer is None else self.activation_layer.backward(dy)

    def train(self, mode=True):
        self.training = bool(mode)
        if self.activation_layer is not None:
            self.activation_layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- description ----------------------------------------------------------------
    def _label(self):
        return f"{type(self).__name__}" + (f" {self.name!r}" if self.name else "")

    def extra_repr(self):
        """Non-default settings, as ``key=value`` text (subclasses extend)."""
        return ""

    def __repr__(self):
        parts = [self.extra_repr()]
        if self.impl != "auto":
            parts.append(f"impl={self.impl!r}")
        if self.name:
            parts.append(f"name={self.name!r}")
        return f"{type(self).__name__}({', '.join(p for p in parts if p)})"

    def get_config(self):
        """JSON-serializable constructor arguments (used by save/load)."""
        return {"name": self.name} if self.name else {}
