"""Image augmentation layers (Keras preprocessing names) and ZeroPadding2D. NHWC.

The Random* layers transform each image of a training batch with its own
random draw and are the identity in evaluation and prediction (RandomCrop
centre-crops there). Their draws come from the layer's Generator: inside a
:class:`fastcnn.Sequential` the model's seed gives each layer its own child
Generator (as for Dropout), and ``model.save`` stores its state, so the same
seed gives the same augmented batches and a resumed run continues exactly.

The draws are taken in Python once per batch, as a few small arrays; the copy
itself is a registry op (``flip2d``, ``translate2d``, ``crop2d``, ``rotate2d``,
``zero_pad2d``), a Numba kernel parallel over the batch by default, with a
reference loop implementation given the same draws. Every op has a backward
(the transpose of its copy), so these layers may sit anywhere in a model; at
the front of one they cost no backward at all.

Differences from Keras, all on purpose:

- shifts and rotations move pixels by whole pixels (the nearest input pixel),
  where Keras interpolates bilinearly by default;
- RandomCrop draws an offset per image (Keras: one per batch) and, at
  inference, crops the centre (Keras resizes the image to the target size; for
  ``ZeroPadding2D(p)`` then ``RandomCrop(H, W)``, the usual recipe, the centre
  crop is exactly the original image). Crops larger than the input are refused
  (Keras would resize).
"""

import math
import numbers

import numpy as np

from fastcnn.layers.base import Layer, format_shape

__all__ = ["RandomFlip", "RandomTranslation", "RandomCrop", "RandomRotation", "ZeroPadding2D"]

FILL_MODES = ("constant", "nearest", "reflect", "wrap")


def _check_seed(seed, owner):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"{owner}: `seed` must be a non-negative int or None, received {seed!r}")
    return None if seed is None else int(seed)


def _factor_range(factor, name, owner):
    """Keras's factor: ``f`` means ``(-|f|, |f|)``; a pair is ``(lower, upper)``; all within [-1, 1]."""
    def real(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    if real(factor):
        lower, upper = -abs(float(factor)), abs(float(factor))
    elif isinstance(factor, (tuple, list)) and len(factor) == 2 and all(real(v) for v in factor):
        lower, upper = float(factor[0]), float(factor[1])
    else:
        raise TypeError(f"{owner}: `{name}` must be a float or a (lower, upper) pair of floats, received {factor!r}")
    if lower > upper:
        raise ValueError(f"{owner}: `{name}` lower bound {lower} is greater than its upper bound {upper}")
    if lower < -1.0 or upper > 1.0:
        raise ValueError(f"{owner}: `{name}` must be within [-1, 1], received {factor!r}")
    return lower, upper


def _check_fill(fill_mode, fill_value, interpolation, owner):
    if fill_mode not in FILL_MODES:
        raise ValueError(f"{owner}: `fill_mode` must be one of {list(FILL_MODES)}, received {fill_mode!r}")
    if isinstance(fill_value, bool) or not isinstance(fill_value, numbers.Real) or not math.isfinite(fill_value):
        raise TypeError(f"{owner}: `fill_value` must be a finite float, received {fill_value!r}")
    if interpolation != "nearest":
        raise ValueError(
            f"{owner}: only interpolation='nearest' is implemented (whole-pixel moves), received {interpolation!r}"
        )
    return fill_mode, float(fill_value)


class _RandomLayer(Layer):
    """A layer with no weights that transforms training batches with draws from ``self.rng``."""

    ndim = 4
    #: No weights, and ``backward(None)`` is fine: a model whose first layers all say so
    #: skips computing the input gradient of the first layer after them.
    accepts_no_gradient = True

    def __init__(self, seed=None, *, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        self.seed = _check_seed(seed, self._label())
        self.rng = np.random.default_rng(self.seed)
        # ``(start, total_rows)`` while a data-parallel step runs (fastcnn.distributed, the
        # protocol Dropout follows): draw for the whole batch, transform this rank's rows.
        self.batch_rows = None

    def reseed(self, rng):
        """Draw future transformations from ``rng`` (a numpy Generator)."""
        self.rng = rng

    def check_built_input(self, x):
        super().check_built_input(x)
        _check_built_shape(self, x)

    def draw(self, N):
        """Keyword arguments of the op for a training batch of ``N`` images (one set of draws)."""
        raise NotImplementedError

    def inference(self, x):
        self._cache = None
        return x

    def forward(self, x):
        if not self.training:
            return self.inference(x)
        if self.batch_rows is None:
            draws = self.draw(x.shape[0])
        else:  # the same draws as one process taking the whole batch, then this rank's rows
            start, total = self.batch_rows
            draws = {key: value[start:start + x.shape[0]]
                     if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == total else value
                     for key, value in self.draw(total).items()}
        y, self._cache = self._fn.forward(x, **draws)
        return y

    def backward(self, dy):
        if dy is None or not self.needs_input_grad:
            return None
        if self._cache is None:
            return dy
        return self._fn.backward(dy, self._cache)

    def get_config(self):
        config = super().get_config()
        if self.seed is not None:
            config["seed"] = self.seed
        return config


class RandomFlip(_RandomLayer):
    """Flip each training image with probability 1/2 per enabled axis; the identity in evaluation.

    Parameters
    ----------
    mode : "horizontal_and_vertical" (default, as Keras; two independent draws),
        "horizontal" (left-right) or "vertical" (upside down)
    seed : int or None; the model's seed overrides it when built inside a Sequential.

    Draws: ``rng.random((N, A)) < 0.5`` for the ``A`` enabled axes, in the order
    vertical, horizontal.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    op = "flip2d"
    MODES = {"horizontal": (1,), "vertical": (0,), "horizontal_and_vertical": (0, 1)}

    def __init__(self, mode="horizontal_and_vertical", seed=None, *, impl="auto", name=None):
        super().__init__(seed, impl=impl, name=name)
        if mode not in self.MODES:
            raise ValueError(f"{self._label()}: `mode` must be one of {list(self.MODES)}, received {mode!r}")
        self.mode = mode

    def draw(self, N):
        axes = self.MODES[self.mode]
        flip = np.zeros((N, 2), dtype=bool)
        flip[:, axes] = self.rng.random((N, len(axes))) < 0.5
        return {"flip": flip}

    def extra_repr(self):
        return "" if self.mode == "horizontal_and_vertical" else repr(self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class RandomTranslation(_RandomLayer):
    """Shift each training image by a random whole number of pixels; the identity in evaluation.

    Parameters
    ----------
    height_factor, width_factor : float or (lower, upper), within [-1, 1]
        Fractions of the image height / width, as in Keras: ``0.1`` shifts by up to
        10% either way; ``(-0.2, 0.3)`` from 20% up (left) to 30% down (right).
    fill_mode : "reflect" (default, as Keras), "constant", "nearest" or "wrap"
        How pixels shifted in from outside are filled (see :mod:`fastcnn.reference.augment`).
    fill_value : float, default 0.0; the fill of ``"constant"``.
    interpolation : "nearest" only. Keras interpolates sub-pixel shifts bilinearly;
        here each shift is rounded to whole pixels (``np.rint``).
    seed : int or None; the model's seed overrides it when built inside a Sequential.

    Draws: ``u = rng.random((N, 2))``; image ``n`` moves down by
    ``rint((lower_h + (upper_h - lower_h) * u[n, 0]) * H)`` rows and right by the
    same expression in ``u[n, 1]``, the width factor and ``W`` columns.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    op = "translate2d"

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="nearest", seed=None,
                 fill_value=0.0, *, impl="auto", name=None):
        super().__init__(seed, impl=impl, name=name)
        label = self._label()
        self.height_factor = _factor_range(height_factor, "height_factor", label)
        self.width_factor = _factor_range(width_factor, "width_factor", label)
        self._factors = (height_factor, width_factor)
        self.fill_mode, self.fill_value = _check_fill(fill_mode, fill_value, interpolation, label)

    def draw(self, N):
        H, W, _ = self.input_shape
        u = self.rng.random((N, 2))
        (hl, hu), (wl, wu) = self.height_factor, self.width_factor
        shift = np.empty((N, 2), dtype=np.int64)
        shift[:, 0] = np.rint((hl + (hu - hl) * u[:, 0]) * H)
        shift[:, 1] = np.rint((wl + (wu - wl) * u[:, 1]) * W)
        return {"shift": shift, "fill_mode": self.fill_mode, "fill_value": self.fill_value}

    def extra_repr(self):
        s = f"{self._factors[0]!r}, {self._factors[1]!r}"
        if self.fill_mode != "reflect":
            s += f", fill_mode={self.fill_mode!r}"
        if self.fill_value != 0.0:
            s += f", fill_value={self.fill_value}"
        return s

    def get_config(self):
        return {**super().get_config(), "height_factor": list(self.height_factor),
                "width_factor": list(self.width_factor), "fill_mode": self.fill_mode, "fill_value": self.fill_value}


class RandomRotation(_RandomLayer):
    """Rotate each training image about its centre by a random angle; the identity in evaluation.

    Parameters
    ----------
    factor : float or (lower, upper), within [-1, 1]
        Fractions of a full turn (2 pi), as in Keras: ``0.1`` rotates by up to 36
        degrees either way. Positive angles turn the image counter-clockwise.
    fill_mode : "reflect" (default, as Keras), "constant", "nearest" or "wrap",
        applied to the source row and column separately.
    fill_value : float, default 0.0; the fill of ``"constant"``.
    interpolation : "nearest" only: each output pixel takes the nearest input pixel
        (Keras's default is bilinear).
    seed : int or None; the model's seed overrides it when built inside a Sequential.

    Draws: ``angle = (lower + (upper - lower) * rng.random(N)) * 2 pi``.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    op = "rotate2d"

    def __init__(self, factor, fill_mode="reflect", interpolation="nearest", seed=None, fill_value=0.0, *,
                 impl="auto", name=None):
        super().__init__(seed, impl=impl, name=name)
        self.factor = _factor_range(factor, "factor", self._label())
        self._factor = factor
        self.fill_mode, self.fill_value = _check_fill(fill_mode, fill_value, interpolation, self._label())

    def draw(self, N):
        lower, upper = self.factor
        angle = (lower + (upper - lower) * self.rng.random(N)) * (2.0 * math.pi)
        return {"angle": angle, "fill_mode": self.fill_mode, "fill_value": self.fill_value}

    def extra_repr(self):
        s = f"{self._factor!r}"
        if self.fill_mode != "reflect":
            s += f", fill_mode={self.fill_mode!r}"
        if self.fill_value != 0.0:
            s += f", fill_value={self.fill_value}"
        return s

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "fill_mode": self.fill_mode,
                "fill_value": self.fill_value}


def _check_built_shape(layer, x):
    """The draws and crops are sized for the built (H, W, C): other images are refused."""
    if x.shape[1:] != layer.input_shape:
        raise ValueError(
            f"{layer._label()} was built for images {format_shape((None,) + layer.input_shape)}; "
            f"received shape {x.shape}"
        )


def _check_size(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int, received {value!r}")
    return int(value)


class RandomCrop(_RandomLayer):
    """Crop a random ``height x width`` window from each training image; the centre one in evaluation.

    Parameters
    ----------
    height, width : int, at most the input's height and width
    seed : int or None; the model's seed overrides it when built inside a Sequential.

    Each image gets its own window (Keras crops a whole batch at one offset).
    In evaluation and prediction the window is the centre one, at
    ``((H - height) // 2, (W - width) // 2)`` (Keras resizes the whole image
    instead). Pair it with :class:`ZeroPadding2D` for the classic "pad 4, crop
    back" augmentation: the centre crop is then the unpadded image.

    Draws: ``rng.integers(0, (H - height + 1, W - width + 1), size=(N, 2))``, the
    top-left corners.

    Shape:
        (N, H, W, C) -> (N, height, width, C)
    """

    op = "crop2d"

    def __init__(self, height, width, seed=None, *, impl="auto", name=None):
        super().__init__(seed, impl=impl, name=name)
        self.height = _check_size(height, "height", self._label())
        self.width = _check_size(width, "width", self._label())

    def compute_output_shape(self, input_shape):
        H, W, C = input_shape
        if self.height > H or self.width > W:
            raise ValueError(
                f"{self._label()}: the crop ({self.height}, {self.width}) is larger than the input "
                f"(H, W) = ({H}, {W}); pad first with ZeroPadding2D or crop less"
            )
        return self.height, self.width, C

    def draw(self, N):
        H, W, _ = self.input_shape
        offset = self.rng.integers(0, (H - self.height + 1, W - self.width + 1), size=(N, 2))
        return {"offset": offset, "size": (self.height, self.width)}

    def inference(self, x):
        H, W, _ = self.input_shape
        offset = np.empty((x.shape[0], 2), dtype=np.int64)
        offset[:] = ((H - self.height) // 2, (W - self.width) // 2)
        y, self._cache = self._fn.forward(x, offset=offset, size=(self.height, self.width))
        return y

    def extra_repr(self):
        return f"{self.height}, {self.width}"

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def _padding_pairs(padding, owner):
    """Keras's ZeroPadding2D spec -> ``((PT, PB), (PL, PR))``."""
    def count(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0

    if count(padding):
        p = int(padding)
        return (p, p), (p, p)
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(count(v) for v in padding):
            return (int(padding[0]),) * 2, (int(padding[1]),) * 2
        if all(isinstance(v, (tuple, list)) and len(v) == 2 and all(count(u) for u in v) for v in padding):
            return tuple(int(u) for u in padding[0]), tuple(int(u) for u in padding[1])
    raise ValueError(
        f"{owner}: `padding` must be a non-negative int, a pair (rows, columns) or a pair of pairs "
        f"((top, bottom), (left, right)), received {padding!r}"
    )


class ZeroPadding2D(Layer):
    """Pad the rows and columns of every image with zeros, in training and in evaluation.

    Parameters
    ----------
    padding : int, (rows, columns) or ((top, bottom), (left, right)); default 1

    Shape:
        (N, H, W, C) -> (N, top + H + bottom, left + W + right, C)
    """

    op = "zero_pad2d"
    ndim = 4
    accepts_no_gradient = True

    def __init__(self, padding=1, *, impl="auto", name=None):
        super().__init__(impl=impl, name=name)
        self.padding = _padding_pairs(padding, self._label())

    def check_built_input(self, x):
        super().check_built_input(x)
        _check_built_shape(self, x)

    def compute_output_shape(self, input_shape):
        H, W, C = input_shape
        (PT, PB), (PL, PR) = self.padding
        return PT + H + PB, PL + W + PR, C

    def op_kwargs(self, input_shape):
        return {"padding": self.padding}

    def forward(self, x):
        y, self._cache = self._fn.forward(x, **self.op_kwargs(x.shape[1:]))
        return y

    def backward(self, dy):
        if dy is None or not self.needs_input_grad:
            return None
        return self._fn.backward(dy, self._cache)

    def extra_repr(self):
        (PT, PB), (PL, PR) = self.padding
        if PT == PB == PL == PR:
            return "" if PT == 1 else f"{PT}"
        if PT == PB and PL == PR:
            return f"({PT}, {PL})"
        return f"{self.padding}"

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}
