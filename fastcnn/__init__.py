"""fastcnn: fast CPU training of convolutional neural networks with NumPy and Numba.

NHWC activations, HWIO conv weights, float32 by default. See README.md.
"""

from fastcnn import callbacks, datasets, layers, losses, metrics, models, optim, registry
from fastcnn.graph import Input
from fastcnn.model import Model, Sequential, load_model
from fastcnn.errors import CheckpointError, DatasetError, FastCNNError, NonFiniteLossError
from fastcnn.errors import NonFiniteInputError
from fastcnn.parallel import get_num_threads, set_num_threads
from fastcnn import distributed  # noqa: E402  (imports mpi4py only when used)

__version__ = "0.1.0"


def warmup(dtypes=("float32",)):
    """Compile (or load from Numba's on-disk cache) every kernel for ``dtypes`` now.

    Call once at start-up so the first training step is not slowed by compilation.
    """
    from fastcnn.kernels import warmup as _warmup

    _warmup(dtypes)


def load_onnx(path, *, dtype="float32"):
    """A :class:`Sequential` (chain graph) or functional :class:`Model` built from the ONNX graph at
    ``path`` (see :mod:`fastcnn.onnx_import`).

    Needs ``pip install 'fastcnn[onnx]'``; onnx is imported only when this is called.
    """
    from fastcnn.onnx_import import load_onnx as _load_onnx

    return _load_onnx(path, dtype=dtype)


__all__ = [
    "Input",
    "Model",
    "Sequential",
    "warmup",
    "load_onnx",
    "set_num_threads",
    "get_num_threads",
    "load_model",
    "models",
    "callbacks",
    "losses",
    "metrics",
    "datasets",
    "layers",
    "optim",
    "registry",
    "distributed",
    "FastCNNError",
    "DatasetError",
    "CheckpointError",
    "NonFiniteLossError",
    "NonFiniteInputError",
]
