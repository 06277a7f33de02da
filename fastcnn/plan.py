"""The execution plan of a model: the one home of fusion and of inference-time folding.

A plan is the list of :class:`Step` s one pass runs, built from the model's
graph (its layers in topological order and the tensors each reads, see
:func:`fastcnn.graph.topology`). A step runs a layer, or a fused run of
layers (:mod:`fastcnn.layers.fused`), reading tensors ``inputs`` and writing
tensor ``output`` (0 is the model input, ``i + 1`` the output of layer ``i``).

- **Fusion** (``fuse=True``): a chain Conv2D -> [ReLU] -> [MaxPool2D] in which
  every intermediate tensor has exactly one consumer (and is not the model's
  output) runs as one fused op when the layers resolve to the same
  implementation; the patterns are :data:`FUSIONS`, longest first.
- **Folding** (inference plans, ``fold=True``): a BatchNormalization over the
  last axis whose input is a Conv2D's or Dense's output that nothing else reads
  is folded into that layer's weights: ``w' = w * scale``, ``b' = b * scale +
  shift`` with BN's inference transform ``x * scale + shift``. The plan then
  runs a copy of the Conv2D/Dense holding the folded weights (which may itself
  fuse with a following ReLU/pool) and no BatchNormalization step. The
  copies are rebuilt when the plan is rebuilt, which the model does whenever
  its weights or state may have changed.

Training plans never fold: training needs the batch statistics.
"""

import copy

import numpy as np

from fastcnn.layers.conv import Conv2D
from fastcnn.layers.core import Dense
from fastcnn.layers.fused import ConvPool, ConvReLU
from fastcnn.layers.normalization import BatchNormalization

__all__ = ["Step", "FUSIONS", "build_plan", "consumers"]

#: (fused step class, how many layers it takes), longest first.
FUSIONS = ((ConvPool, 3), (ConvPool, 2), (ConvReLU, 2))


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
            and bn._last)


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
    n = len(layers)
    readers = consumers(inputs_of, n + 1)
    runners = list(layers)  # what runs at each layer index (a folded copy, for example)
    out_of = list(range(1, n + 1))  # the tensor each runner writes
    skip = set()
    if fold:
        for i, layer in enumerate(layers):
            t = i + 1
            if t == output or len(readers[t]) != 1:
                continue
            j = readers[t][0]
            if _foldable(layer, layers[j]):
                runners[i] = _folded(layer, layers[j])
                out_of[i] = j + 1
                skip.add(j)
    # A folded BN's readers need no re-wiring: the folded layer writes the BN's output tensor.
    steps = []
    covered = set(skip)
    for i in range(n):
        if i in covered:
            continue
        candidates = []
        if fuse and type(runners[i]) is Conv2D:
            # The chain in runner terms: follow out_of through sole consumers.
            run = [i]
            while len(run) < 3:
                t = out_of[run[-1]]
                if t == output or len(readers[t]) != 1:
                    break
                j = readers[t][0]
                if len(inputs_of[j]) != 1 or j in covered:
                    break
                run.append(j)
            candidates = run
        for fused, size in FUSIONS if candidates else ():
            run = candidates[:size]
            group = [runners[k] for k in run]
            if len(run) == size and fused.matches(group):
                steps.append(Step(fused(*group), inputs_of[i], out_of[run[-1]]))
                covered.update(run)
                break
        else:
            steps.append(Step(runners[i], inputs_of[i], out_of[i]))
    return steps
