"""What ONNX export and import share, importable without onnx installed.

``import fastcnn`` never imports onnx: :mod:`fastcnn.onnx_export` and
:mod:`fastcnn.onnx_import` import it when they run, through :func:`require_onnx`,
which says how to install it when it is missing.
"""

import importlib

from fastcnn.errors import FastCNNError

__all__ = ["OnnxConversionError", "require_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

#: Opset written when ``opset=None``: ONNX Runtime has run it since 1.12 (2022), and it
#: holds every operator the exporter writes.
DEFAULT_OPSET = 17
#: Softmax's axis semantics (one axis, not "flatten from axis") date from opset 13.
MIN_OPSET = 13


class OnnxConversionError(FastCNNError, ValueError):
    """A model or graph that cannot be converted to or from ONNX (the message says what and why)."""


def require_onnx(what):
    """Import and return the ``onnx`` package, or raise ImportError saying how to get it."""
    try:
        return importlib.import_module("onnx")
    except ImportError:
        raise ImportError(
            f"{what} needs the onnx package: pip install 'fastcnn[onnx]' (or: pip install onnx onnxruntime)"
        ) from None
