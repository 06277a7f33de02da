"""The one window primitive behind im2col, pooling and col2im.

:func:`window_view` turns an NHWC array into a read-only strided view of its
sliding windows, with strides taken from the array's own ``.strides`` so it
works on any memory layout. :func:`pad` pads the spatial axes only.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["pad", "window_view", "window_slices"]


def pad(x, padding, value=0):
    """Pad the H and W axes of NHWC ``x`` by ``((PT, PB), (PL, PR))`` with ``value``.

    Returns ``x`` itself (no copy) when nothing is padded.
    """
    (pt, pb), (pl, pr) = padding
    if pt == pb == pl == pr == 0:
        return x
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def window_view(x, kernel, stride):
    """Read-only view of every ``kernel``-sized window of NHWC ``x``.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C), already padded
    kernel : (KH, KW)
    stride : (SH, SW)

    Returns
    -------
    ndarray view, shape (N, OH, OW, KH, KW, C); ``OH = (H - KH) // SH + 1``.
    Writing to it raises: overlapping windows share memory.
    """
    N, H, W, C = x.shape
    KH, KW = kernel
    SH, SW = stride
    OH = (H - KH) // SH + 1
    OW = (W - KW) // SW + 1
    sN, sH, sW, sC = x.strides
    return as_strided(
        x,
        shape=(N, OH, OW, KH, KW, C),
        strides=(sN, sH * SH, sW * SW, sH, sW, sC),
        writeable=False,
    )


def window_slices(i, j, out_hw, stride):
    """Index of the input elements that window offset ``(i, j)`` touches, for every output.

    ``x[window_slices(i, j, ...)]`` has shape ``(N, OH, OW, C)``: element
    ``[n, oh, ow, c]`` is ``x[n, oh*SH + i, ow*SW + j, c]``. col2im and the pooling
    backward passes are ``KH*KW`` strided slice-adds through these.
    """
    OH, OW = out_hw
    SH, SW = stride
    return (slice(None), slice(i, i + SH * (OH - 1) + 1, SH), slice(j, j + SW * (OW - 1) + 1, SW))
