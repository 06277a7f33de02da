"""Typed exceptions raised by fastcnn.

Every error a user can cause derives from :class:`FastCNNError`, and also from
the built-in type that best describes it, so ``except ValueError`` keeps working.
"""


class FastCNNError(Exception):
    """Base class of every error fastcnn raises on purpose."""


class DatasetError(FastCNNError, ValueError):
    """A data file is missing, corrupt, truncated or inconsistent."""


class CheckpointError(FastCNNError, ValueError):
    """A saved model file is unreadable, unsafe, or does not match the model."""


class NonFiniteLossError(FastCNNError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class NonFiniteInputError(FastCNNError, ValueError):
    """Inputs hold NaN or infinite values, which would give NaN predictions or metrics."""
