"""Preset networks: the three models every comparison in fastcnn uses.

Each function returns a built and compiled :class:`fastcnn.Sequential` whose
last layer outputs logits (loss ``"softmax_cross_entropy"``, metric accuracy).
All take ``seed=`` (weights, shuffling, dropout), ``impl=`` (passed to every
layer and the loss), ``input_shape=`` (NHWC, default MNIST's ``(28, 28, 1)``)
and ``dtype=``.
"""

import numpy as np

from fastcnn import layers as L
from fastcnn.model import Sequential
from fastcnn.optim import SGD, Adam

__all__ = ["tutorial_cnn", "mnist_cnn", "vgg_mini", "PRESETS"]


def _compiled(layers, optimizer, *, seed, impl, input_shape, dtype, preset=None):
    model = Sequential(layers, input_shape=input_shape, seed=seed, dtype=dtype)
    if preset is not None:
        model.metadata["preset"] = preset  # saved with the model; names it in ONNX exports
    return model.compile(optimizer, loss="softmax_cross_entropy", metrics=["accuracy"], loss_impl=impl)


def tutorial_cnn(seed=None, impl="auto", input_shape=(28, 28, 1), num_classes=10, dtype=np.float32):
    """The "CNN from scratch" tutorial net: Conv2D(8, 3x3, valid, no bias) -> MaxPool2D(2)
    -> Flatten -> Dense(num_classes); SGD, lr 0.005. 13,602 parameters for 28x28x1."""
    layers = [
        L.Conv2D(8, 3, use_bias=False, impl=impl),
        L.MaxPool2D(2, impl=impl),
        L.Flatten(impl=impl),
        L.Dense(num_classes, impl=impl),
    ]
    return _compiled(layers, SGD(lr=0.005), seed=seed, impl=impl, input_shape=input_shape, dtype=dtype,
                     preset="tutorial_cnn")


def mnist_cnn(seed=None, impl="auto", input_shape=(28, 28, 1), num_classes=10, dtype=np.float32):
    """Keras's MNIST example: Conv 32 3x3 ReLU -> Conv 64 3x3 ReLU -> MaxPool 2 -> Dropout 0.25
    -> Flatten -> Dense 128 ReLU -> Dropout 0.5 -> Dense num_classes; Adam 1e-3.
    1,199,882 parameters for 28x28x1."""
    layers = [
        L.Conv2D(32, 3, impl=impl), L.ReLU(impl=impl),
        L.Conv2D(64, 3, impl=impl), L.ReLU(impl=impl),
        L.MaxPool2D(2, impl=impl), L.Dropout(0.25, impl=impl),
        L.Flatten(impl=impl),
        L.Dense(128, impl=impl), L.ReLU(impl=impl), L.Dropout(0.5, impl=impl),
        L.Dense(num_classes, impl=impl),
    ]
    return _compiled(layers, Adam(lr=1e-3), seed=seed, impl=impl, input_shape=input_shape, dtype=dtype,
                     preset="mnist_cnn")


def vgg_mini(seed=None, impl="auto", input_shape=(28, 28, 1), num_classes=10, dtype=np.float32):
    """The plain-NumPy tutorial's VGG-style net: 2x[Conv 32 3x3 same ReLU] -> MaxPool 2 -> Dropout 0.25
    -> 2x[Conv 64 3x3 same ReLU] -> MaxPool 2 -> Dropout 0.25 -> Flatten -> Dense 256 ReLU
    -> Dense num_classes; Adam 1e-3."""
    layers = [
        L.Conv2D(32, 3, padding="same", impl=impl), L.ReLU(impl=impl),
        L.Conv2D(32, 3, padding="same", impl=impl), L.ReLU(impl=impl),
        L.MaxPool2D(2, impl=impl), L.Dropout(0.25, impl=impl),
        L.Conv2D(64, 3, padding="same", impl=impl), L.ReLU(impl=impl),
        L.Conv2D(64, 3, padding="same", impl=impl), L.ReLU(impl=impl),
        L.MaxPool2D(2, impl=impl), L.Dropout(0.25, impl=impl),
        L.Flatten(impl=impl),
        L.Dense(256, impl=impl), L.ReLU(impl=impl),
        L.Dense(num_classes, impl=impl),
    ]
    return _compiled(layers, Adam(lr=1e-3), seed=seed, impl=impl, input_shape=input_shape, dtype=dtype,
                     preset="vgg_mini")


#: Preset name -> function (used by the command line).
PRESETS = {f.__name__: f for f in (tutorial_cnn, mnist_cnn, vgg_mini)}
