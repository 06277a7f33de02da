"""Hyperparameter normalization and output-size arithmetic for windowed ops.

Every implementation (reference, numpy, numba) receives *normalized* geometry:
``stride=(SH, SW)`` and ``padding=((PT, PB), (PL, PR))``. Normalizing here, once,
keeps the implementations free of string handling and lets tests pin the
arithmetic separately (see tests/test_geometry.py).
"""

import math
import numbers

__all__ = ["pair", "resolve_padding", "output_size", "output_hw"]


def pair(value, name, *, owner="", minimum=1):
    """Return ``value`` as a pair of ints, each ``>= minimum``.

    Accepts an int or a length-2 tuple/list of ints; raises ``TypeError`` for
    other types and ``ValueError`` for out-of-range values.
    """
    where = f"{owner}: " if owner else ""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        items = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{where}`{name}` must be an int or a pair of ints, received {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{where}`{name}` must be >= {minimum}, received {value!r}")
    return items


def resolve_padding(padding, in_hw, kernel, stride, *, owner=""):
    """Normalize ``padding`` to ``((PT, PB), (PL, PR))``.

    ``"valid"`` pads nothing. ``"same"`` pads a total of
    ``max((ceil(H / s) - 1) * s + K - H, 0)`` per spatial axis, the odd row or
    column going to the bottom/right (as TensorFlow and PyTorch do), so the
    output size is ``ceil(H / s)``. An int pads every side by that amount; a
    pair ``(ph, pw)`` pads top/bottom by ``ph`` and left/right by ``pw``.
    """
    where = f"{owner}: " if owner else ""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            result = []
            for size, k, s in zip(in_hw, kernel, stride):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                result.append((total // 2, total - total // 2))
            return tuple(result)
        raise ValueError(
            f"{where}unknown padding {padding!r}; expected 'valid', 'same', an int or a pair of ints"
        )
    ph, pw = pair(padding, "padding", owner=owner, minimum=0)
    return ((ph, ph), (pw, pw))


def check_padding_spec(padding, *, owner=""):
    """Validate a padding argument at construction time (before shapes are known)."""
    if isinstance(padding, str):
        if padding.lower() not in ("valid", "same"):
            where = f"{owner}: " if owner else ""
            raise ValueError(
                f"{where}unknown padding {padding!r}; expected 'valid', 'same', an int or a pair of ints"
            )
        return padding.lower()
    return pair(padding, "padding", owner=owner, minimum=0)


def output_size(size, kernel, stride, pad_total):
    """Output length of a window of ``kernel`` sliding by ``stride`` over ``size + pad_total``."""
    return (size + pad_total - kernel) // stride + 1


def output_hw(in_hw, kernel, stride, padding):
    """``(OH, OW)`` for normalized ``kernel``, ``stride`` and ``padding``."""
    return tuple(
        output_size(size, k, s, p[0] + p[1])
        for size, k, s, p in zip(in_hw, kernel, stride, padding)
    )
