"""Vectorized image augmentation and padding: index maps, one gather, its transpose.

Each op turns its draws (flips, shifts, crop offsets, angles; see
:mod:`fastcnn.reference.augment` for the contract) into the input row and
column every output pixel reads, ``-1`` meaning the fill. Flips, shifts, crops
and padding are separable: a row map ``(N, OH)`` and a column map ``(N, OW)``;
rotation needs a full map ``(N, OH, OW)``. The forward gathers through the map
with fancy indexing; the backward adds each output gradient to its source, one
output row and then one output column at a time (each statement touches every
image at most once, so no addition is lost: no ``np.add.at``).

The index-map helpers are shared with the Numba wrappers in
:mod:`fastcnn.kernels.augment`.
"""

import numpy as np

__all__ = [
    "FILL_MODES", "source_indices", "flip_maps", "translate_maps", "crop_maps", "rotation_trig",
    "flip2d_forward", "flip2d_backward",
    "translate2d_forward", "translate2d_backward",
    "crop2d_forward", "crop2d_backward",
    "zero_pad2d_forward", "zero_pad2d_backward",
    "rotate2d_forward", "rotate2d_backward",
]

#: The fill modes, in the order of their integer codes in the Numba kernels.
FILL_MODES = ("constant", "nearest", "reflect", "wrap")


# -- index maps -------------------------------------------------------------------------
def source_indices(k, L, fill_mode):
    """Input indices read for positions ``k`` (int array) on an axis of length ``L``; -1 is the fill."""
    if fill_mode == "constant":
        return np.where((k >= 0) & (k < L), k, -1)
    if fill_mode == "nearest":
        return np.clip(k, 0, L - 1)
    if fill_mode == "wrap":
        return np.mod(k, L)
    k = np.mod(k, 2 * L)  # reflect
    return np.where(k < L, k, 2 * L - 1 - k)


def flip_maps(flip, H, W):
    """Row map (N, H) and column map (N, W) of :func:`flip2d_forward`."""
    flip = np.asarray(flip, dtype=bool)
    rows, cols = np.arange(H), np.arange(W)
    return (np.where(flip[:, :1], H - 1 - rows, rows).astype(np.int64),
            np.where(flip[:, 1:2], W - 1 - cols, cols).astype(np.int64))


def translate_maps(shift, H, W, fill_mode):
    """Row map (N, H) and column map (N, W) of :func:`translate2d_forward`."""
    shift = np.asarray(shift, dtype=np.int64)
    return (source_indices(np.arange(H) - shift[:, :1], H, fill_mode),
            source_indices(np.arange(W) - shift[:, 1:2], W, fill_mode))


def crop_maps(offset, size):
    """Row map (N, OH) and column map (N, OW) of :func:`crop2d_forward`."""
    offset = np.asarray(offset, dtype=np.int64)
    return offset[:, :1] + np.arange(size[0]), offset[:, 1:2] + np.arange(size[1])


def rotation_trig(angle):
    """``(N, 2)`` float64 ``[cos, sin]``: ``np.cos`` / ``np.sin`` of the float64 angle array (the contract)."""
    angle = np.ascontiguousarray(angle, dtype=np.float64)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def rotation_maps(trig, H, W, fill_mode):
    """Full row and column maps (N, H, W) of :func:`rotate2d_forward` (float64, the contract's order)."""
    cos_a, sin_a = trig[:, 0, None, None], trig[:, 1, None, None]
    cy, cx = (H - 1) * 0.5, (W - 1) * 0.5
    u = (np.arange(W, dtype=np.float64) - cx)[None, None, :]  # (1, 1, W)
    v = (np.arange(H, dtype=np.float64) - cy)[None, :, None]  # (1, H, 1)
    sx = cos_a * u - sin_a * v + cx  # (N, H, W)
    sy = sin_a * u + cos_a * v + cy
    rows = np.floor(sy + 0.5).astype(np.int64)
    cols = np.floor(sx + 0.5).astype(np.int64)
    rows, cols = source_indices(rows, H, fill_mode), source_indices(cols, W, fill_mode)
    invalid = (rows < 0) | (cols < 0)
    return np.where(invalid, -1, rows), np.where(invalid, -1, cols)


# -- gather and its transpose -------------------------------------------------------------
def _gather(x, rows, cols, fill):
    """``y[n, i, j] = x[n, rows[n, i, j], cols[n, i, j]]`` (maps broadcast to (N, OH, OW)), or ``fill``."""
    n = np.arange(x.shape[0])[:, None, None]
    y = np.ascontiguousarray(x[n, np.maximum(rows, 0), np.maximum(cols, 0)])  # (N, OH, OW, C)
    invalid = (rows < 0) | (cols < 0)
    if invalid.any():
        y[np.broadcast_to(invalid, y.shape[:3])] = fill
    return y


def _gather_separable(x, rows, cols, fill):
    return _gather(x, rows[:, :, None], cols[:, None, :], fill)


def _scatter_separable(dy, rows, cols, x_shape):
    """Transpose of :func:`_gather_separable`: rows first into (N, H, OW, C), then columns."""
    N, H, _, C = x_shape
    OW = dy.shape[2]
    n = np.arange(N)
    tmp = np.zeros((N, H, OW, C), dtype=dy.dtype)
    for i in range(dy.shape[1]):
        ok = rows[:, i] >= 0
        tmp[n[ok], rows[ok, i]] += dy[ok, i]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for j in range(OW):
        ok = cols[:, j] >= 0
        dx[n[ok], :, cols[ok, j]] += tmp[ok, :, j]
    return dx


def _scatter_full(dy, rows, cols, x_shape):
    """Transpose of :func:`_gather` with full maps: a sum per input pixel (``np.bincount``)."""
    N, H, W, C = x_shape
    valid = (rows >= 0).reshape(-1)
    flat = (np.arange(N)[:, None, None] * (H * W) + rows * W + cols).reshape(-1)[valid]
    dy2 = dy.reshape(-1, C)[valid]
    dx = np.empty((N * H * W, C), dtype=dy.dtype)
    for c in range(C):
        dx[:, c] = np.bincount(flat, weights=dy2[:, c], minlength=N * H * W)
    return dx.reshape(x_shape)


# -- the ops ------------------------------------------------------------------------------
def flip2d_forward(x, *, flip):
    """See :func:`fastcnn.reference.augment.flip2d_forward`."""
    rows, cols = flip_maps(flip, x.shape[1], x.shape[2])
    return _gather_separable(x, rows, cols, 0), (rows, cols, x.shape)


def flip2d_backward(dy, cache):
    return _scatter_separable(dy, *cache)


def translate2d_forward(x, *, shift, fill_mode, fill_value):
    """See :func:`fastcnn.reference.augment.translate2d_forward`."""
    rows, cols = translate_maps(shift, x.shape[1], x.shape[2], fill_mode)
    return _gather_separable(x, rows, cols, x.dtype.type(fill_value)), (rows, cols, x.shape)


def translate2d_backward(dy, cache):
    return _scatter_separable(dy, *cache)


def crop2d_forward(x, *, offset, size):
    """See :func:`fastcnn.reference.augment.crop2d_forward`."""
    rows, cols = crop_maps(offset, size)
    return _gather_separable(x, rows, cols, 0), (rows, cols, x.shape)


def crop2d_backward(dy, cache):
    return _scatter_separable(dy, *cache)


def zero_pad2d_forward(x, *, padding):
    """See :func:`fastcnn.reference.augment.zero_pad2d_forward`: one slice assignment."""
    (PT, PB), (PL, PR) = padding
    N, H, W, C = x.shape
    y = np.zeros((N, PT + H + PB, PL + W + PR, C), dtype=x.dtype)
    y[:, PT:PT + H, PL:PL + W] = x
    return y, (padding, (H, W))


def zero_pad2d_backward(dy, cache):
    ((PT, _), (PL, _)), (H, W) = cache
    return np.ascontiguousarray(dy[:, PT:PT + H, PL:PL + W])


def rotate2d_forward(x, *, angle, fill_mode, fill_value):
    """See :func:`fastcnn.reference.augment.rotate2d_forward`."""
    rows, cols = rotation_maps(rotation_trig(angle), x.shape[1], x.shape[2], fill_mode)
    return _gather(x, rows, cols, x.dtype.type(fill_value)), (rows, cols, x.shape)


def rotate2d_backward(dy, cache):
    return _scatter_full(dy, *cache)
