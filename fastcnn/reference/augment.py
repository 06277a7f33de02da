"""Reference image augmentation and padding, pixel by pixel: the ground truth.

Every op here is a copy: each output pixel ``(n, i, j)`` is one input pixel
``(n, si, sj)`` (all channels) or a constant fill. The random choices (flips,
shifts, crop offsets, angles) are *arguments*, drawn by the layer once per
batch, so every implementation given the same draws must give bit-equal
outputs. The backward of a copy is its transpose: each output gradient is
added to the input pixel it was copied from (fills receive nothing), in
row-major output order.

Out-of-range source indices are resolved by ``fill_mode`` (Keras's names, on
whole pixels), for a row or column index ``k`` of an axis of length ``L``:

- ``"constant"``: no source; the output takes ``fill_value``;
- ``"nearest"``: ``a a a | a b c d | d d d`` (clamp to the edge);
- ``"reflect"``: ``d c b a | a b c d | d c b a`` (mirror about the edge, the
  edge pixel repeated; period ``2 L``);
- ``"wrap"``: ``a b c d | a b c d | a b c d`` (period ``L``).
"""

import numpy as np

__all__ = [
    "FILL_MODES", "source_index",
    "flip2d_forward", "flip2d_backward",
    "translate2d_forward", "translate2d_backward",
    "crop2d_forward", "crop2d_backward",
    "zero_pad2d_forward", "zero_pad2d_backward",
    "rotate2d_forward", "rotate2d_backward",
]

#: The fill modes, in the order of their integer codes in the Numba kernels.
FILL_MODES = ("constant", "nearest", "reflect", "wrap")


def source_index(k, L, fill_mode):
    """The input index an output reads for position ``k`` on an axis of length ``L``; -1 means the fill."""
    if 0 <= k < L:
        return k
    if fill_mode == "constant":
        return -1
    if fill_mode == "nearest":
        return 0 if k < 0 else L - 1
    if fill_mode == "wrap":
        return k % L
    k = k % (2 * L)  # reflect: period 2L, the second half mirrored
    return k if k < L else 2 * L - 1 - k


def _copy(x, out_hw, source, fill):
    """``y[n, i, j] = x[n, *source(n, i, j)]`` or ``fill`` where ``source`` gives -1; and the map."""
    N, C = x.shape[0], x.shape[3]
    OH, OW = out_hw
    y = np.zeros((N, OH, OW, C), dtype=x.dtype)
    src = np.zeros((N, OH, OW, 2), dtype=np.int64)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                si, sj = source(n, i, j)
                src[n, i, j] = (si, sj)
                for c in range(C):
                    y[n, i, j, c] = fill if si < 0 or sj < 0 else x[n, si, sj, c]
    return y, (src, x.shape)


def _transpose(dy, cache):
    """The backward of :func:`_copy`: add each ``dy`` pixel to the input pixel it came from."""
    src, x_shape = cache
    dx = np.zeros(x_shape, dtype=dy.dtype)
    N, OH, OW, C = dy.shape
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                si, sj = src[n, i, j]
                if si < 0 or sj < 0:
                    continue
                for c in range(C):
                    dx[n, si, sj, c] += dy[n, i, j, c]
    return dx


def flip2d_forward(x, *, flip):
    """Flip each image of the batch upside down and/or left to right.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    flip : bool array (N, 2)
        ``flip[n, 0]``: reverse the rows of image ``n`` (vertical flip);
        ``flip[n, 1]``: reverse its columns (horizontal flip).

    Returns
    -------
    y : ndarray (N, H, W, C), ``x.dtype``
    cache : private to :func:`flip2d_backward`
    """
    _, H, W, _ = x.shape

    def source(n, i, j):
        return (H - 1 - i if flip[n, 0] else i), (W - 1 - j if flip[n, 1] else j)

    return _copy(x, (H, W), source, x.dtype.type(0))


def flip2d_backward(dy, cache):
    """Gradient of :func:`flip2d_forward` (the same flips applied to ``dy``)."""
    return _transpose(dy, cache)


def translate2d_forward(x, *, shift, fill_mode, fill_value):
    """Shift each image by whole pixels: ``y[n, i, j] = x[n, i - shift[n, 0], j - shift[n, 1]]``.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    shift : int array (N, 2)
        Rows and columns to move image ``n`` by; positive moves it down / right.
    fill_mode : "constant", "nearest", "reflect" or "wrap" (see the module docstring)
    fill_value : float, the value of ``"constant"`` fills

    Returns
    -------
    y : ndarray (N, H, W, C), ``x.dtype``
    cache : private to :func:`translate2d_backward`
    """
    _, H, W, _ = x.shape

    def source(n, i, j):
        return (source_index(i - int(shift[n, 0]), H, fill_mode),
                source_index(j - int(shift[n, 1]), W, fill_mode))

    return _copy(x, (H, W), source, x.dtype.type(fill_value))


def translate2d_backward(dy, cache):
    """Gradient of :func:`translate2d_forward`: fills receive none; with "nearest",
    "reflect" and "wrap" an input pixel copied several times gets the sum."""
    return _transpose(dy, cache)


def crop2d_forward(x, *, offset, size):
    """Crop a ``size`` window from each image at its own offset.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    offset : int array (N, 2)
        Top-left corner ``(row, column)`` of image ``n``'s window, with
        ``0 <= offset[n] <= (H - OH, W - OW)``.
    size : (OH, OW)

    Returns
    -------
    y : ndarray (N, OH, OW, C), ``x.dtype``
    cache : private to :func:`crop2d_backward`
    """

    def source(n, i, j):
        return int(offset[n, 0]) + i, int(offset[n, 1]) + j

    return _copy(x, tuple(size), source, x.dtype.type(0))


def crop2d_backward(dy, cache):
    """Gradient of :func:`crop2d_forward`: ``dy`` placed at each window, zero elsewhere."""
    return _transpose(dy, cache)


def zero_pad2d_forward(x, *, padding):
    """Pad the rows and columns of each image with zeros.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    padding : ((PT, PB), (PL, PR))

    Returns
    -------
    y : ndarray (N, PT + H + PB, PL + W + PR, C), ``x.dtype``
    cache : private to :func:`zero_pad2d_backward`
    """
    (PT, PB), (PL, PR) = padding
    _, H, W, _ = x.shape

    def source(n, i, j):
        si, sj = i - PT, j - PL
        return (si if 0 <= si < H else -1), (sj if 0 <= sj < W else -1)

    return _copy(x, (PT + H + PB, PL + W + PR), source, x.dtype.type(0))


def zero_pad2d_backward(dy, cache):
    """Gradient of :func:`zero_pad2d_forward`: ``dy`` without its padding."""
    return _transpose(dy, cache)


def rotation_source(i, j, cos_a, sin_a, H, W):
    """Nearest input pixel ``(row, column)``, before ``fill_mode``, for output ``(i, j)`` of an
    ``H x W`` image rotated counter-clockwise by the angle whose cosine and sine are given.

    About the image centre ``((H - 1) / 2, (W - 1) / 2)``; the arithmetic is float64 in
    exactly this order, so every implementation rounds alike: ``u = j - cx``, ``v = i - cy``,
    source column ``cos_a * u - sin_a * v + cx``, row ``sin_a * u + cos_a * v + cy``,
    each rounded as ``floor(value + 0.5)``.
    """
    cy = (H - 1) * 0.5
    cx = (W - 1) * 0.5
    u = j - cx
    v = i - cy
    sx = cos_a * u - sin_a * v + cx
    sy = sin_a * u + cos_a * v + cy
    return int(np.floor(sy + 0.5)), int(np.floor(sx + 0.5))


def rotation_trig(angle):
    """``(N, 2)`` float64 ``[cos, sin]`` of the angles: ``np.cos`` / ``np.sin`` of the whole float64
    array, as every implementation computes them (so they are the same bits everywhere)."""
    angle = np.ascontiguousarray(angle, dtype=np.float64)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def rotate2d_forward(x, *, angle, fill_mode, fill_value):
    """Rotate each image about its centre by its angle (radians, counter-clockwise), nearest neighbour.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    angle : float array (N,), radians; positive turns the image counter-clockwise
    fill_mode : "constant", "nearest", "reflect" or "wrap", applied to the rounded
        source row and column separately (see the module docstring)
    fill_value : float, the value of ``"constant"`` fills

    Returns
    -------
    y : ndarray (N, H, W, C), ``x.dtype``
    cache : private to :func:`rotate2d_backward`
    """
    _, H, W, _ = x.shape
    trig = rotation_trig(angle)

    def source(n, i, j):
        si, sj = rotation_source(i, j, float(trig[n, 0]), float(trig[n, 1]), H, W)
        return source_index(si, H, fill_mode), source_index(sj, W, fill_mode)

    return _copy(x, (H, W), source, x.dtype.type(fill_value))


def rotate2d_backward(dy, cache):
    """Gradient of :func:`rotate2d_forward` (the transpose of its copy)."""
    return _transpose(dy, cache)
