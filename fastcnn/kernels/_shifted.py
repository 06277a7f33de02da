"""Stride-1 convolution as shifted GEMMs: no im2col copy at all.

In NHWC, with the image zero-padded into a frame ``HP x WP`` and its pixels
numbered row-major, output pixel ``(oh, ow)`` computed over the frame's full
width is row ``p = oh*WP + ow`` of::

    out[p] = sum over taps (i, j) of  frame[p + i*WP + j] @ w[i, j]      # (C,) @ (C, F)

For one tap the rows ``frame[p0 + off : p1 + off]`` are a plain matrix with
leading dimension ``C`` (a view, no copy), so a run of output rows is ``KH*KW``
GEMMs of inner dimension ``C``, accumulated in place. The columns ``ow >= OW``
of each full-width row mix pixels of two frame rows and are dropped by the
epilogue; ``KW - 1`` zero pixels after the frame keep the last run's reads in
bounds.

Used by the fused convolution + max pool forward (:mod:`fastcnn.kernels.conv_pool`),
whose epilogue reads the full-width rows in place. At batch 64, interleaved
medians: vgg_mini conv4 + pool 3.80 -> 3.41 ms, mnist_cnn conv2 + pool
5.67 -> 5.26 ms, vgg_mini conv2 + pool 3.50 -> 3.41 ms. An unpooled
convolution (vgg_mini conv3, 1.79 against 1.84 ms) gains nothing: its output
needs one more copy out of the full-width rows, so it keeps im2col.
"""

from fastcnn.kernels import _blas
from fastcnn.kernels._jit import kernel

__all__ = ["pad_image", "shifted_gemm", "frame_rows", "ROWS_PER_CALL", "MIN_CHANNELS"]

#: Full-width output rows per run of shifted GEMMs, at most (whole pooling rows:
#: 468 at mnist_cnn's conv2). 64-1024 measured: longer runs were faster up to 512.
ROWS_PER_CALL = 512

#: Fewest input channels for the shifted form: each GEMM's inner dimension is ``C``,
#: and below this (a first layer's 1 or 3) im2col's ``KH*KW*C`` is the better one.
MIN_CHANNELS = 16


def frame_rows(HP, WP, KW):
    """Rows (pixels) of one image's padded frame, with the ``KW - 1`` zero pixels after it."""
    return HP * WP + KW - 1


@kernel
def pad_image(frame, x, n, HP, WP, PT, PL):
    """Image ``n`` of ``x`` ``(N, H, W*C)`` into ``frame`` ``(frame_rows, C)``: ``PT`` rows and
    ``PL`` columns of zeros before it, zeros after it up to ``HP x WP``, then zero pixels."""
    _, H, WC = x.shape
    C = frame.shape[1]
    W = WC // C
    zero = frame.dtype.type(0)
    flat = frame.reshape(-1)  # (frame_rows*C,)
    for r in range(HP):
        row = flat[r * WP * C:(r + 1) * WP * C]  # (WP*C,)
        h = r - PT
        if h < 0 or h >= H:
            for t in range(WP * C):
                row[t] = zero
            continue
        for t in range(PL * C):
            row[t] = zero
        src, dst = x[n, h], row[PL * C:(PL + W) * C]  # (W*C,) each
        for t in range(W * C):
            dst[t] = src[t]
        for t in range((PL + W) * C, WP * C):
            row[t] = zero
    for t in range(HP * WP * C, flat.shape[0]):
        flat[t] = zero


@kernel
def shifted_gemm(out, frame, w4, p0, p1, WP):
    """``out`` ``(p1 - p0, F)`` = full-width output rows ``p0..p1`` of the convolution of
    ``frame`` ``(frame_rows, C)`` with ``w4`` ``(KH, KW, C, F)``: one GEMM per tap."""
    KH, KW = w4.shape[0], w4.shape[1]
    for i in range(KH):
        for j in range(KW):
            off = i * WP + j
            beta = 0.0 if i == 0 and j == 0 else 1.0
            _blas.gemm(False, False, 1.0, frame[p0 + off:p1 + off], w4[i, j], beta, out)
