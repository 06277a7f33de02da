"""The execution plan of a model: the one home of fusion and of inference-time folding.

A plan is the list of :class:`Step` s one pass runs, built from the model's
graph (its layers in topological order and the tensors each reads, see
:func:`fastcnn.graph.topology`). A step runs a layer, or a fused run of
layers (:mod:`fastcnn.layers.fused`), reading tensors ``inputs`` and writing
tensor ``output`` (0 is the model input, ``i + 1`` the output of layer ``i``).

- **Fusion** (``fuse=True``): a chain Conv2D -> [ReLU] -> [MaxPool2D] in which
  every intermediate tensor has exactly one consumer (and is not the model's
  output) runs as one fused op when the layers resolve to the same
  implementation; the patterns are :data:`FUSIONS`, longest first. So does an
  Add whose sum only a ReLU reads (:data:`MERGE_FUSIONS`, a residual block's end).
- **Folding** (inference plans, ``fold=True``): a BatchNormalization over the
  last axis whose input is a Conv2D's or Dense's output that nothing else reads
  is folded into that layer's weights: ``w' = w * scale``, ``b' = b * scale +
  shift`` with BN's inference transform ``x * scale + shift``. The plan then
  runs a copy of the Conv2D/Dense holding the folded weights (which may itself
  fuse with a following ReLU/pool) and no BatchNormalization step. The
  copies are rebuilt when the plan is rebuilt, which the model does whenever
  its weights or state may have changed.

- **Activations** (``activation=`` on Conv2D and Dense): the plan runs such a
  layer as two units, its own op (:class:`fastcnn.layers.fused.Core`) writing
  an intermediate tensor, then its activation layer writing the layer's
  tensor, so ``Conv2D(..., activation="relu")`` fuses exactly as ``Conv2D``
  followed by ``ReLU`` does, and a final ``activation="softmax"`` is a step of
  its own that a loss on probabilities folds into its fused path on logits.
  The intermediate tensors are numbered after the layers' (``n + 1``, ...,
  :func:`tensor_count`), so the layers' tensor indices do not change.

Training plans never fold: training needs the batch statistics.
"""

import copy

import numpy as np

from fastcnn.layers.conv import Conv2D
from fastcnn.layers.core import Dense
from fastcnn.layers.fused import AddReLU, ConvPool, ConvReLU, Core
from fastcnn.layers.merge import Add
from fastcnn.layers.normalization import BatchNormalization

__all__ = ["Step", "FUSIONS", "MERGE_FUSIONS", "build_plan", "consumers", "expand", "tensor_count"]

#: (fused step class, how many layers it takes) of chains that start at a Conv2D, longest first.
FUSIONS = ((ConvPool, 3), (ConvPool, 2), (ConvReLU, 2))
#: The same of chains that start at an Add.
MERGE_FUSIONS = ((AddReLU, 2),)


class Step:
    """One unit of a plan: ``runner`` (a layer or a fused step) from tensors ``inputs`` to tensor ``output``."""

    __slots__ = ("runner", "inputs", "output", "merge")

    def __init__(self, runner, inputs, output):
        self.runner = runner
        self.inputs = tuple(inputs)
        self.output = output
        self.merge = getattr(runner, "merge", False)

    def forward(self, values):
        if self.merge:
            return self.runner.forward([values[t] for t in self.inputs])
        return self.runner.forward(values[self.inputs[0]])

    def backward(self, dy):
        """Input gradients as a tuple, one per entry of ``inputs``."""
        d = self.runner.backward(dy)
        return d if self.merge else (d,)

    def __repr__(self):
        return f"Step({self.runner!r}, inputs={list(self.inputs)}, output={self.output})"


def consumers(inputs_of, n_tensors):
    """``readers[t]``: indices of the layers that read tensor ``t``."""
    readers = [[] for _ in range(n_tensors)]
    for i, ins in enumerate(inputs_of):
        for t in ins:
            readers[t].append(i)
    return readers


def _folded(layer, bn):
    """A copy of the built Conv2D/Dense ``layer`` with ``bn`` (inference mode) folded into its weights."""
    scale, shift = bn.fold()  # (F,) each
    shadow = copy.copy(layer)
    w = layer.params["weight"]
    b = layer.params.get("bias")
    shadow.params = {
        "weight": np.ascontiguousarray(w * scale),  # the output channel is the weight's last axis
        "bias": (shift if b is None else b * scale + shift).astype(layer.dtype),
    }
    shadow.grads = {}
    shadow.use_bias = True
    shadow.training = False
    shadow._cache = None
    if isinstance(layer, Conv2D):
        shadow._workspace = {}
    return shadow


def _foldable(layer, bn):
    return (type(layer) in (Conv2D, Dense) and type(bn) is BatchNormalization and layer.built and bn.built
            and bn._last and layer.activation_layer is None)


def _activation_of(layer):
    return getattr(layer, "activation_layer", None)


def tensor_count(layers):
    """How many tensors a pass over ``layers`` has: the input, one per layer, one per ``activation=``."""
    return len(layers) + 1 + sum(_activation_of(layer) is not None for layer in layers)


def expand(layers, inputs_of):
    """The graph in units: ``(units, unit_inputs, unit_outputs)``, each layer given ``activation=``
    split into itself (its own op, writing a new tensor ``n + 1 + k``) and its activation layer
    (reading that tensor and writing the layer's tensor ``i + 1``)."""
    units, unit_inputs, unit_outputs = [], [], []
    extra = len(layers) + 1
    for i, layer in enumerate(layers):
        act = _activation_of(layer)
        units.append(layer)
        unit_inputs.append(list(inputs_of[i]))
        if act is None:
            unit_outputs.append(i + 1)
        else:
            unit_outputs.append(extra)
            units.append(act)
            unit_inputs.append([extra])
            unit_outputs.append(i + 1)
            extra += 1
    return units, unit_inputs, unit_outputs


def build_plan(layers, inputs_of, output, *, fuse=True, fold=False):
    """The steps of one pass over built ``layers`` (see the module docstring).

    Parameters
    ----------
    layers : list of built layers in topological order
    inputs_of : list of lists of tensor indices, one per layer
    output : the model's output tensor index
    fuse : run matching chains as fused ops
    fold : fold BatchNormalization into the Conv2D/Dense before it (inference only)
    """
    units, unit_inputs, unit_outputs = expand(layers, inputs_of)
    readers = consumers(unit_inputs, tensor_count(layers))  # tensor -> the units reading it
    runners = list(units)  # what runs at each unit index (a folded copy, for example)
    out_of = list(unit_outputs)  # the tensor each runner writes
    skip = set()
    if fold:
        for i, unit in enumerate(units):
            t = unit_outputs[i]
            if t == output or len(readers[t]) != 1:
                continue
            j = readers[t][0]
            if _foldable(unit, units[j]):
                runners[i] = _folded(unit, units[j])
                out_of[i] = unit_outputs[j]
                skip.add(j)
    # A folded BN's readers need no re-wiring: the folded layer writes the BN's output tensor.
    steps = []
    covered = set(skip)
    for i in range(len(units)):
        if i in covered:
            continue
        candidates, patterns = [], ()
        if fuse and type(runners[i]) in (Conv2D, Add):
            # The chain in runner terms: follow out_of through sole consumers. A layer's
            # activation is its own output's sole reader, so a layer and its activation never part.
            patterns = FUSIONS if type(runners[i]) is Conv2D else MERGE_FUSIONS
            run = [i]
            while len(run) < patterns[0][1]:  # the longest pattern comes first
                t = out_of[run[-1]]
                if t == output or len(readers[t]) != 1:
                    break
                j = readers[t][0]
                if len(unit_inputs[j]) != 1 or j in covered:
                    break
                run.append(j)
            candidates = run
        for fused, size in patterns if candidates else ():
            run = candidates[:size]
            group = [runners[k] for k in run]
            if len(run) == size and fused.matches(group):
                steps.append(Step(fused(*group), unit_inputs[i], out_of[run[-1]]))
                covered.update(run)
                break
        else:
            runner = runners[i]
            if _activation_of(runner) is not None:
                runner = Core(runner)  # its own op; its activation is the next unit
            steps.append(Step(runner, unit_inputs[i], out_of[i]))
    return steps
