"""Padding and output-size arithmetic shared by the reference conv and pooling.

Kept here, and not taken from ``fastcnn.geometry``, so the ground truth does
its own window arithmetic: a slip in the shared helpers then shows up as a
disagreement instead of being copied into the reference.
"""

import numpy as np

__all__ = ["pad_hw", "out_size"]


def pad_hw(x, padding, value):
    """Pad the two spatial axes of an NHWC array with the constant ``value``.

    Parameters
    ----------
    x : ndarray
        Input of shape ``(N, H, W, C)``; may be non-contiguous.
    padding : tuple
        Normalized ``((PT, PB), (PL, PR))``.
    value : float
        Fill value (``0`` for conv, ``-inf`` for max pooling).

    Returns
    -------
    ndarray
        A new array of ``x.dtype`` (``np.pad`` keeps the dtype).

    Shape
    -----
    ``(N, H, W, C) -> (N, PT + H + PB, PL + W + PR, C)``
    """
    (pt, pb), (pl, pr) = padding
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), mode="constant", constant_values=value)


def out_size(size, kernel, stride, pad_before, pad_after):
    """Number of window positions along one axis of the padded input."""
    return (size + pad_before + pad_after - kernel) // stride + 1
