"""fastcnn: fast CPU training of convolutional neural networks with NumPy and Numba."""

from fastcnn import registry
from fastcnn.errors import CheckpointError, DatasetError, FastCNNError, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "registry",
    "FastCNNError",
    "DatasetError",
    "CheckpointError",
    "NonFiniteLossError",
]
