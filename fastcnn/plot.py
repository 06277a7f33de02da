"""Pictures of training: loss/accuracy curves and first-layer conv filters, as PNG files.

matplotlib is an optional extra (``pip install 'fastcnn[plot]'``), imported only
when a plot is drawn. Figures are drawn on matplotlib's Agg canvas directly
(``matplotlib.figure.Figure``, not ``pyplot``), so plotting neither needs a
display nor changes the backend of an interactive session. Every PNG is written
to a temporary file beside the target and renamed over it, so a crash never
leaves a half-written image.
"""

import os
import secrets
from pathlib import Path

import numpy as np

__all__ = ["plot_history", "plot_filters", "require_matplotlib"]

_INSTALL_HINT = "install it with: pip install 'fastcnn[plot]' (or: pip install matplotlib)"


def require_matplotlib():
    """Import matplotlib, or raise an ImportError that says how to install it.

    Returns
    -------
    module
        ``matplotlib.figure``, whose ``Figure`` draws on the Agg canvas.
    """
    try:
        import matplotlib.figure
    except ImportError as error:
        raise ImportError(f"plotting needs matplotlib, which is not installed; {_INSTALL_HINT}") from error
    return matplotlib.figure


def _save(fig, path):
    """Write ``fig`` as a PNG at ``path`` atomically; returns ``path`` as a Path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _history_dict(history):
    """``{"loss": [...], ...}`` from a History (``.history``) or a plain mapping."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(
            f"plot_history: expected a fastcnn History (what fit returns) or a dict of lists, "
            f"received {type(history).__name__}"
        )
    if not any(len(logs.get(key) or ()) for key in ("loss", "accuracy", "val_loss", "val_accuracy")):
        raise ValueError(
            f"plot_history: the history records no loss or accuracy to plot (keys: {sorted(logs)})"
        )
    return logs


def plot_history(history, path, title=None):
    """Plot the loss and accuracy per epoch, training vs validation, side by side.

    Parameters
    ----------
    history : fastcnn.callbacks.History or dict
        What ``fit`` returns, or a mapping like ``{"loss": [...], "val_loss": [...],
        "accuracy": [...], "val_accuracy": [...]}`` (missing curves are skipped).
    path : str or os.PathLike
        The PNG to write (replaced atomically).
    title : str, optional
        A title over both panels.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        matplotlib is not installed (the message says how to install it).
    """
    figure = require_matplotlib()
    logs = _history_dict(history)
    fig = figure.Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    n_epochs = max(len(values or ()) for values in logs.values())
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
            values = logs.get(key) or []
            if len(values):
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, style, label=label)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, n_epochs + 0.5)
        if n_epochs <= 20:
            ax.set_xticks(range(1, n_epochs + 1))
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _first_conv_weight(model_or_layer):
    """The HWIO weight of the first conv layer of a model, of a layer, or an array itself."""
    if isinstance(model_or_layer, np.ndarray):
        weight = model_or_layer
    else:
        layers = getattr(model_or_layer, "layers", None)
        candidates = [model_or_layer] if layers is None else list(layers)
        convs = [layer for layer in candidates if getattr(layer, "op", None) == "conv2d"]
        if not convs:
            raise ValueError(
                f"plot_filters: expected a model with a Conv2D layer, a Conv2D layer, or an HWIO "
                f"weight array; received {type(model_or_layer).__name__} with no Conv2D layer"
            )
        weight = convs[0].params.get("weight")
        if weight is None:
            raise ValueError("plot_filters: the Conv2D layer is not built yet (run the model on a batch first)")
    if weight.ndim != 4:
        raise ValueError(
            f"plot_filters: expected conv weights of shape (KH, KW, C_in, F); received shape {weight.shape}"
        )
    return weight


def plot_filters(model_or_layer, path, title=None):
    """Draw the first conv layer's filters as a grid of small images.

    Each filter is scaled to its own min..max (light = large weight). Filters
    over 3 input channels are shown in color, other multi-channel filters as
    the mean over their input channels.

    Parameters
    ----------
    model_or_layer : Sequential, Conv2D or numpy.ndarray
        A model (its first Conv2D is drawn), a built Conv2D layer, or HWIO weights.
    path : str or os.PathLike
        The PNG to write (replaced atomically).
    title : str, optional

    Returns
    -------
    pathlib.Path
        ``path``.

    Shape:
        weight (KH, KW, C_in, F): F tiles of KH x KW pixels.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    ValueError
        No conv layer, or it is not built.
    """
    figure = require_matplotlib()
    weight = np.asarray(_first_conv_weight(model_or_layer), dtype=np.float64)  # (KH, KW, C, F)
    KH, KW, C, F = weight.shape
    cols = int(np.ceil(np.sqrt(F)))
    rows = int(np.ceil(F / cols))
    fig = figure.Figure(figsize=(1.1 * cols, 1.1 * rows + (0.4 if title else 0)), dpi=100,
                        layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for f, ax in enumerate(axes):
        ax.set_axis_off()
        if f >= F:
            continue
        tile = weight[:, :, :, f] if C == 3 else weight[:, :, :, f].mean(axis=2)  # (KH, KW[, 3])
        low, high = tile.min(), tile.max()
        tile = (tile - low) / (high - low) if high > low else np.full_like(tile, 0.5)
        ax.imshow(tile, cmap=None if C == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(str(f), fontsize=7)
    fig.suptitle(title or f"conv filters {KH}x{KW}x{C} ({F})", fontsize=9)
    return _save(fig, path)
