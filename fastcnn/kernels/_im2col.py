"""Row-wise im2col and col2im: the two loops every Numba convolution is built on.

Rows are output pixels in ``(n, oh, ow)`` order, columns ``(kh, kw, c)``,
matching an HWIO weight reshaped to ``(KH*KW*C, F)``. ``x`` and ``dx`` are
passed as ``(N, H, W*C)`` so that one kernel row of a window is one run of
``KW*C`` contiguous elements. Copying between 1-D views indexed by the loop
counter (never negative) vectorizes; 3-D indexing with a computed column pays
a negative-index check per element, so only windows that hang over the left
or right padding take that path. Padding is never materialized: im2col writes
zeros there and col2im drops the gradient that falls on it.
"""

import numpy as np

from fastcnn.kernels._jit import inline_kernel, kernel
from fastcnn.kernels._planar import planar_image

__all__ = ["im2col_rows", "im2col_rows_kmajor", "direct_image", "col2im_rows", "scratch"]


@kernel
def im2col_rows(cols, x, r0, r1, OH, OW, KH, KW, SH, SW, PT, PL):
    # cols: (>= r1 - r0, KH*KW*C) out, row t is output pixel r0 + t in (n, oh, ow)
    # order; x: (N, H, W*C), rows flattened so a window row is KW*C contiguous elements.
    _, H, WC = x.shape
    KWC = cols.shape[1] // KH
    C = KWC // KW
    zero = cols.dtype.type(0)
    # (n, oh, ow) of pixel r0, then stepped along: no division per pixel.
    n, oh, ow = r0 // (OH * OW), (r0 // OW) % OH, r0 % OW
    for r in range(r0, r1):
        start = (ow * SW - PL) * C  # flat column of the window's first element
        inside = start >= 0 and start + KWC <= WC
        row = cols[r - r0]  # (KH*KW*C,)
        for i in range(KH):
            h = oh * SH - PT + i
            base = i * KWC
            if h < 0 or h >= H:
                for t in range(KWC):
                    row[base + t] = zero
            elif inside:
                src = x[n, h, start:start + KWC]  # (KW*C,)
                dst = row[base:base + KWC]
                for t in range(KWC):
                    dst[t] = src[t]
            else:  # the window hangs over the left or right padding
                for t in range(KWC):
                    s = start + t
                    row[base + t] = x[n, h, s] if 0 <= s < WC else zero
        n, oh, ow = _next_pixel(n, oh, ow, OH, OW)


@inline_kernel
def _next_pixel(n, oh, ow, OH, OW):
    # The output pixel after (n, oh, ow) in (n, oh, ow) order.
    ow += 1
    if ow == OW:
        ow = 0
        oh += 1
        if oh == OH:
            oh = 0
            n += 1
    return n, oh, ow


@kernel
def im2col_rows_kmajor(colsT, x, r0, r1, OH, OW, KH, KW, SH, SW, PT, PL):
    # colsT: (KH*KW*C, >= r1 - r0) out, the transpose of im2col_rows's block: column t
    # is output pixel r0 + t. For few input channels, where a window row is too
    # short to copy as a run: here the runs are along ow (contiguous when SW*C == 1).
    _, H, WC = x.shape
    C = colsT.shape[0] // (KH * KW)
    W = WC // C
    zero = colsT.dtype.type(0)
    r = r0
    while r < r1:  # one segment per image row (n, oh): output pixels r .. r + count
        n, oh, ow0 = r // (OH * OW), (r // OW) % OH, r % OW
        count = min(OW - ow0, r1 - r)
        t0 = r - r0
        for i in range(KH):
            h = oh * SH - PT + i
            for j in range(KW):
                # ow whose column ow*SW - PL + j lies inside [0, W): lo .. hi
                lo = max(ow0, -((j - PL) // SW)) if j < PL else ow0
                hi = min(ow0 + count, (W - 1 - j + PL) // SW + 1)
                for c in range(C):
                    dst = colsT[(i * KW + j) * C + c, t0:t0 + count]  # (count,)
                    if h < 0 or h >= H or hi <= lo:
                        for t in range(count):
                            dst[t] = zero
                        continue
                    for t in range(lo - ow0):
                        dst[t] = zero
                    src = x[n, h, (lo * SW - PL + j) * C + c:]  # from the first valid column
                    step = SW * C
                    for t in range(hi - lo):
                        dst[lo - ow0 + t] = src[t * step]
                    for t in range(hi - ow0, count):
                        dst[t] = zero
        r += count


@inline_kernel
def _taps3x3(acc, src, wf, C, HP, WP, L):
    # acc[:L] = the sum over channels c of the 3x3 taps wf[(3*i + j)*C + c] times the planar image
    # src's channel c shifted by (i, j) (rows WP wide): the first channel assigns, the others add.
    for c in range(C):
        r0 = c * HP * WP
        r1, r2 = r0 + WP, r0 + 2 * WP
        w0, w1, w2 = wf[c], wf[C + c], wf[2 * C + c]
        w3, w4, w5 = wf[3 * C + c], wf[4 * C + c], wf[5 * C + c]
        w6, w7, w8 = wf[6 * C + c], wf[7 * C + c], wf[8 * C + c]
        a0, a1, a2 = src[r0:r0 + L], src[r0 + 1:r0 + 1 + L], src[r0 + 2:r0 + 2 + L]
        b0, b1, b2 = src[r1:r1 + L], src[r1 + 1:r1 + 1 + L], src[r1 + 2:r1 + 2 + L]
        c0, c1, c2 = src[r2:r2 + L], src[r2 + 1:r2 + 1 + L], src[r2 + 2:r2 + 2 + L]
        if c == 0:
            for t in range(L):
                acc[t] = (w0 * a0[t] + w1 * a1[t] + w2 * a2[t] + w3 * b0[t] + w4 * b1[t] + w5 * b2[t]
                          + w6 * c0[t] + w7 * c1[t] + w8 * c2[t])
        else:
            for t in range(L):
                acc[t] += (w0 * a0[t] + w1 * a1[t] + w2 * a2[t] + w3 * b0[t] + w4 * b1[t] + w5 * b2[t]
                           + w6 * c0[t] + w7 * c1[t] + w8 * c2[t])


@kernel
def direct_image(seg, x, n, wT, xp, OH, OW, KH, KW, PT, PL):
    # seg: (F, >= (OH-1)*WP + OW) out, image n's stride-1 convolution, planar:
    # output (oh, ow) of filter f at seg[f, oh*WP + ow] (columns ow >= OW are
    # garbage); x: (N, H, W*C); wT: (F, KH*KW*C) the weights transposed;
    # xp: (>= C*HP*WP,) scratch, HP = OH+KH-1, WP = OW+KW-1. For a small
    # K = KH*KW*C (first layers), where a GEMM of inner dimension K is all
    # overhead: the image is copied zero-padded and channel-planar into xp, so
    # every kernel tap is one long multiply-add pass over the flat image (the
    # "full width" trick), a 3-wide kernel row one pass, a 3x3 kernel's nine
    # taps of one channel one pass.
    F, K = wT.shape
    C = K // (KH * KW)
    HP, WP = OH + KH - 1, OW + KW - 1
    zero = seg.dtype.type(0)
    src = planar_image(xp, x, n, C, OH, OW, KH, KW, PT, PL)  # (C*HP*WP,)
    L = (OH - 1) * WP + OW  # flat span of every valid output position
    for f in range(F):
        acc = seg[f, :L]
        if KH == 3 and KW == 3:  # the common kernel in one pass a channel: a ninth of the loads and stores of acc
            _taps3x3(acc, src, wT[f], C, HP, WP, L)
            continue
        for t in range(L):
            acc[t] = zero
        for c in range(C):
            for i in range(KH):
                row = (c * HP + i) * WP
                k = (i * KW) * C + c  # tap (i, 0, c)
                if KW == 3:  # the common kernel row in one pass: a third of the loads and stores
                    w0, w1, w2 = wT[f, k], wT[f, k + C], wT[f, k + 2 * C]
                    s0, s1, s2 = src[row:row + L], src[row + 1:row + 1 + L], src[row + 2:row + 2 + L]
                    for t in range(L):
                        acc[t] += w0 * s0[t] + w1 * s1[t] + w2 * s2[t]
                else:
                    for j in range(KW):
                        wv = wT[f, k + j * C]
                        sj = src[row + j:row + j + L]
                        for t in range(L):
                            acc[t] += wv * sj[t]


@kernel
def col2im_rows(dx, dcols, r0, r1, OH, OW, KH, KW, SH, SW, PT, PL):
    # dx: (N, H, W*C) in/out, accumulated; dcols: rows of output pixels r0..r1.
    # Gradient that falls on padding is dropped.
    _, H, WC = dx.shape
    KWC = dcols.shape[1] // KH
    C = KWC // KW
    n, oh, ow = r0 // (OH * OW), (r0 // OW) % OH, r0 % OW
    for r in range(r0, r1):
        start = (ow * SW - PL) * C
        inside = start >= 0 and start + KWC <= WC
        row = dcols[r - r0]
        for i in range(KH):
            h = oh * SH - PT + i
            if h < 0 or h >= H:
                continue
            base = i * KWC
            if inside:
                dst = dx[n, h, start:start + KWC]  # (KW*C,)
                src = row[base:base + KWC]
                for t in range(KWC):
                    dst[t] += src[t]
            else:
                for t in range(KWC):
                    s = start + t
                    if 0 <= s < WC:
                        dx[n, h, s] += row[base + t]
        n, oh, ow = _next_pixel(n, oh, ow, OH, OW)


def scratch(workspace, key, shape, dtype):
    """A reusable buffer ``workspace[key]`` of ``shape``/``dtype`` (fresh when ``workspace`` is None).

    A fresh 40 MB array costs ~10k page faults on first touch every step (glibc
    returns allocations above 32 MB to the OS on free); reusing it costs none.
    """
    if workspace is None:
        return np.empty(shape, dtype=dtype)
    buf = workspace.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = workspace[key] = np.empty(shape, dtype=dtype)
    return buf
