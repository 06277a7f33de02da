"""Checks of the values users hand to ``predict`` / ``evaluate`` / ``fit`` / ``set_weights``.

Kept out of :mod:`fastcnn.model` so the model code reads as the training loop. Each
check is cheap on the success path: finiteness is one BLAS dot product of the data
with itself (no temporary array; NaN and inf propagate into it, so a finite result
proves every value finite; about 6 us for a batch of 64 MNIST images, 70 us for
1000), and only when it is not finite is the first offending sample searched for
(or the values found finite after all: the squares overflowed). The range warning
looks at a few samples of the first batch a model sees.
"""

import math
import numbers
import warnings
import weakref

import numpy as np

from fastcnn.errors import NonFiniteInputError

__all__ = ["as_array", "check_finite", "warn_unscaled", "single_image_hint", "check_shuffle", "check_weight"]

#: A float input whose largest value exceeds this looks like 0..255 pixels that were not scaled
#: (standardized inputs, (x - mean) / std, stay well below it).
UNSCALED_THRESHOLD = 10.0
#: Samples the range check looks at.
UNSCALED_SAMPLES = 8

_range_checked = weakref.WeakSet()  # models whose inputs were looked at once


def as_array(x, what):
    """``np.asarray(x)``, with a clear error for a ragged list of images."""
    try:
        return np.asarray(x)
    except ValueError as error:
        shapes = sorted({np.shape(item) for item in x}) if isinstance(x, (list, tuple)) else []
        detail = f" (sample shapes {shapes[:4]})" if 1 < len(shapes) else ""
        raise ValueError(
            f"{what} must be an array, or a list of images of one shape; received a ragged "
            f"{type(x).__name__} of {len(x)} samples{detail}: stack images of equal shape with np.stack"
        ) from error


def first_non_finite(x):
    """Index of the first sample (along axis 0) holding NaN or inf, or None."""
    if x.dtype.kind != "f":
        return None
    flat = x.reshape(x.shape[0], -1)
    for start in range(0, x.shape[0], 1024):  # bounded temporaries on the error path
        bad = ~np.isfinite(flat[start:start + 1024]).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def check_finite(x, what):
    """Raise :class:`NonFiniteInputError` when the float array ``x`` (N, ...) holds NaN or inf.

    The message names the kinds of values found, their number and the first sample holding one.
    """
    if x.dtype.kind != "f":
        return
    flat = x.reshape(-1)
    if math.isfinite(np.dot(flat, flat)):
        return
    index = first_non_finite(x)
    if index is None:  # the sum overflowed; every value is finite
        return
    n_nan = int(np.count_nonzero(np.isnan(x)))
    n_inf = int(np.count_nonzero(np.isinf(x)))
    kinds = ", ".join(f"{n:,} {name}" for n, name in ((n_nan, "NaN"), (n_inf, "inf")) if n)
    raise NonFiniteInputError(
        f"{what} holds non-finite values ({kinds}); the first is in sample {index} ({what}[{index}]). "
        f"Predictions and metrics of such samples would be NaN: clean or drop them first"
    )


def warn_unscaled(model, x, what):
    """Warn when float inputs exceed 1 by far (0..255 pixels that were not scaled).

    Looked at once per model, on the first float batch it is given (its first
    :data:`UNSCALED_SAMPLES` samples), so the check costs nothing afterwards.
    """
    if x.dtype.kind != "f" or model in _range_checked:
        return
    _range_checked.add(model)
    largest = float(np.max(x[:UNSCALED_SAMPLES]))
    if largest > UNSCALED_THRESHOLD:
        warnings.warn(
            f"{what} is float with values up to {largest:g}; fastcnn expects float images in [0, 1]. "
            f"If these are 0..255 pixels, divide by 255 (or pass uint8 images, which are scaled). "
            f"(Checked once per model, on its first batch.)",
            UserWarning, stacklevel=4,
        )


def single_image_hint(shape, expected):
    """A hint when ``shape`` is one sample of ``expected`` (the batch axis is missing)."""
    single = tuple(shape) == tuple(expected) or (
        len(expected) == 3 and expected[2] == 1 and tuple(shape) == tuple(expected[:2]))
    return ". It looks like a single image: pass a batch of one, x[None]" if single else ""


def check_shuffle(shuffle):
    """``fit``'s ``shuffle``: a bool (Keras's "batch" mode, for HDF5 data, is not supported)."""
    if isinstance(shuffle, (bool, np.bool_)):
        return bool(shuffle)
    if shuffle == "batch":
        raise ValueError("fit: shuffle='batch' (Keras's shuffling in batch-sized chunks, for HDF5 data) is "
                         "not supported; pass shuffle=True or shuffle=False")
    raise ValueError(f"fit: `shuffle` must be True or False, received {shuffle!r}")


def check_weight(name, value, param):
    """One ``set_weights`` array: float of the parameter's dtype family, its shape, finite.

    Returns the array to copy from (ints are refused rather than silently cast).
    """
    if isinstance(value, numbers.Number) or value is None:
        raise TypeError(f"set_weights: {name!r} must be an array of shape {param.shape}, received {value!r}")
    w = np.asarray(value)
    if w.dtype.kind != "f":
        raise TypeError(f"set_weights: {name!r} must be a float array ({param.dtype}), received dtype {w.dtype}")
    if w.shape != param.shape:
        raise ValueError(f"set_weights: {name!r} has shape {param.shape}, received {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"set_weights: {name!r} holds NaN or infinite values")
    return w
