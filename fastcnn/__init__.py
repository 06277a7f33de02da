"""fastcnn: fast CPU training of convolutional neural networks with NumPy and Numba.

NHWC activations, HWIO conv weights, float32 by default. See README.md.
"""

from fastcnn import callbacks, datasets, layers, losses, metrics, models, optim, registry
from fastcnn.model import Sequential, load_model
from fastcnn.errors import CheckpointError, DatasetError, FastCNNError, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "Sequential",
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
]
