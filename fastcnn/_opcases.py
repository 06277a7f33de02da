"""The registry op calls a model makes: which op each layer runs, on which shapes, with which arguments.

The one source of "the ops of a preset" for ``fastcnn bench`` and
``benchmarks/test_bench_ops.py``: read off the built model, each layer
reporting its own op, parameters (``op_params``) and keyword arguments
(``op_kwargs``, what its ``forward`` passes), so the tables follow the presets
and the layers instead of repeating their shapes.
"""

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fastcnn import losses, models
from fastcnn.layers.fused import AddReLU, ConvPool, ConvReLU, Core

__all__ = ["OpCall", "op_calls", "preset_op_calls", "KINDS"]

#: How ``where`` names the layers of an op ("conv1", "pool2"); other layers are named by their op.
KINDS = {"conv2d": "conv", "max_pool2d": "pool", "avg_pool2d": "pool", "batch_norm": "bn"}


@dataclass(frozen=True)
class OpCall:
    """One call ``forward(*args, **kwargs)`` of the registry op ``op`` in a training step.

    ``where`` names the layer in its model ("conv2", "dense1": numbered when the
    model has several of a kind); ``inputs`` are the per-sample shapes (no batch
    axis) of the batched arguments, ``params`` the shapes of the parameters after
    them (None for an absent one, such as an unused bias); a loss takes int labels
    in ``[0, classes)`` last. ``layer`` is the layer (or fused step) making the call,
    None for the loss.
    """

    op: str
    where: str
    description: str
    inputs: tuple
    params: tuple = ()
    kwargs: dict = field(default_factory=dict)
    classes: int = 0
    layer: object = field(default=None, repr=False, compare=False)

    def arguments(self, N, rng, dtype=np.float32):
        """Random arguments for a batch of ``N``: ``(args, kwargs)``.

        Inputs are standard normal; parameters are scaled by ``fan_in ** -0.5``
        (``fan_in``: the product of every axis but the last, 1 for a bias) so
        outputs stay of order one; labels are uniform. Values are drawn in
        argument order and are exact in float32 whatever ``dtype``, so a float64
        run sees the values a float32 run sees.
        """
        def draw(shape, scale=1.0):
            return (scale * rng.standard_normal(shape)).astype(np.float32).astype(dtype)

        args = [draw((N, *shape)) for shape in self.inputs]
        args += [None if shape is None else draw(shape, math.prod(shape[:-1]) ** -0.5) for shape in self.params]
        if self.classes:
            args.append(rng.integers(0, self.classes, size=N))
        return tuple(args), dict(self.kwargs)


def _describe(layer):
    """A short text for a table: "conv 3x3, 32->64", "max pool 2x2", "dense 9216->128"."""
    op = layer.op
    if op == "conv2d":
        (KH, KW), (SH, SW) = layer.kernel_size, layer.stride
        text = f"conv {KH}x{KW}, {layer.input_shape[-1]}->{layer.filters}"
        text += "" if (SH, SW) == (1, 1) else f", stride {SH}x{SW}"
        return text + ("" if layer.padding == "valid" else f", padding {layer.padding}")
    if op in ("max_pool2d", "avg_pool2d"):
        (PH, PW), (SH, SW) = layer.pool_size, layer.stride
        return f"{op[:3]} pool {PH}x{PW}" + ("" if (SH, SW) == (PH, PW) else f", stride {SH}x{SW}")
    if op == "dense":
        return f"dense {layer.input_shape[0]}->{layer.units}"
    if op == "dropout":
        return f"dropout {layer.rate}"
    if op == "global_avg_pool2d":
        return "global avg pool"
    return op.replace("_", " ")


def _call(layer, where, op=None, description=None, extra=None):
    """The :class:`OpCall` of ``layer``'s forward (its own op, or ``op`` with ``extra`` keyword arguments)."""
    if hasattr(layer, "draw"):
        raise ValueError(f"{layer!r} draws its op's arguments for each batch: no fixed call to describe")
    if getattr(layer, "_last", True) is False:
        raise ValueError(f"{layer!r} normalizes another axis than the last: its op sees a transposed input")
    merge = getattr(layer, "merge", False)
    inputs = tuple(map(tuple, layer.input_shape)) if merge else (tuple(layer.input_shape),)
    params = tuple(layer.params[name].shape if name in layer.params else None for name in layer.op_params)
    kwargs = {**layer.op_kwargs(layer.input_shape), **(extra or {})}
    return OpCall(op or layer.op, where, description or _describe(layer), inputs, params, kwargs, layer=layer)


def _units(model):
    """The model's layers with an op, each followed by its ``activation=`` layer if it has one."""
    for layer in model.layers:
        if layer.op is not None:
            yield layer
        if layer.activation_layer is not None:
            yield layer.activation_layer


def _where_names(units):
    """``id(layer) -> where``: the kind ("conv"), numbered from 1 when the model has several."""
    kinds = [KINDS.get(unit.op, unit.op) for unit in units]
    totals, seen, names = Counter(kinds), Counter(), {}
    for unit, kind in zip(units, kinds):
        seen[kind] += 1
        names[id(unit)] = kind if totals[kind] == 1 else f"{kind}{seen[kind]}"
    return names


def op_calls(model, *, fused=False):
    """The op calls of one training step of the built ``model``, in order, then its compiled loss
    on the model's output (if compiled).

    Parameters
    ----------
    model : a built :class:`fastcnn.Model` (or Sequential)
    fused : False: every layer's own op, as the layers run on their own (the op
        of an ``activation=`` is a call of its own after its layer). True: the
        steps of the model's training plan (``model.steps``), with fused ops
        (``conv2d_relu``, ``conv2d_relu_maxpool2d``, ...) where the plan fuses;
        a fused call is named after its convolution.

    Returns
    -------
    list of :class:`OpCall`
    """
    units = list(_units(model))
    names = _where_names(units)
    if not fused:
        calls = [_call(unit, names[id(unit)]) for unit in units]
    else:
        calls = []
        for step in model.steps:
            if isinstance(step, (ConvReLU, ConvPool)):
                calls.append(_call(step.conv, names[id(step.conv)], step.op,
                                   " + ".join(map(_describe, step.layers)), step.extra_kwargs))
            elif isinstance(step, AddReLU):
                calls.append(_call(step.add, names[id(step.add)], step.op, " + ".join(map(_describe, step.layers))))
            else:
                layer = step.layer if isinstance(step, Core) else step
                if layer.op is not None:
                    calls.append(_call(layer, names[id(layer)]))
    if model.compiled:
        loss = losses.get(model.loss)
        op = "softmax_cross_entropy" if loss.from_logits else "sparse_categorical_crossentropy"
        kwargs = {"label_smoothing": loss.label_smoothing} if loss.label_smoothing else {}
        calls.append(OpCall(op, "loss", op.replace("_", " ").replace(" entropy", "-entropy"),
                            (model.output_shape,), kwargs=kwargs, classes=model.num_classes))
    return calls


def preset_op_calls(name, *, fused=False):
    """:func:`op_calls` of preset ``name`` (``fastcnn.models.PRESETS``) as its function builds it."""
    return op_calls(models.PRESETS[name](seed=0), fused=fused)
