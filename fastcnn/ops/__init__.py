"""The vectorized NumPy implementation of every op (``impl="numpy"``), the default math.

See docs/ops.md for the contract every implementation follows.
"""

from fastcnn.ops import activations, batchnorm, conv, dense, loss, merge, optim, pool
from fastcnn.registry import register

for _module in (conv, pool, dense, activations, batchnorm, merge):
    for _name in _module.__all__:
        if _name.endswith("_forward"):
            _op = _name[: -len("_forward")]
            register(_op, "numpy", getattr(_module, _name), getattr(_module, _op + "_backward"))
register("softmax_cross_entropy", "numpy", loss.softmax_cross_entropy)
register("sparse_categorical_crossentropy", "numpy", loss.sparse_categorical_crossentropy)
for _name in optim.__all__:  # optimizer updates: in place, no backward
    register(_name, "numpy", getattr(optim, _name))
