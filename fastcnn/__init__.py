"""fastcnn: fast CPU training of convolutional neural networks with NumPy and Numba.

NHWC activations, HWIO conv weights, float32 by default. See README.md.
"""

from fastcnn import callbacks, datasets, layers, losses, metrics, models, optim, registry
from fastcnn.model import Sequential, load_model
from fastcnn.errors import CheckpointError, DatasetError, FastCNNError, NonFiniteLossError
from fastcnn.errors import NonFiniteInputError
from fastcnn.parallel import get_num_threads, set_num_threads

__version__ = "0.1.0"


def warmup(dtypes=("float32",)):
    """Compile (or load from Numba's on-disk cache) every kernel for ``dtypes`` now.

    Call once at start-up so the first training step is not slowed by compilation.
    """
    from fastcnn.kernels import warmup as _warmup

    _warmup(dtypes)


__all__ = [
    "Sequential",
    "warmup",
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
    "FastCNNError",
    "DatasetError",
    "CheckpointError",
    "NonFiniteLossError",
    "NonFiniteInputError",
]
