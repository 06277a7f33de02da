"""Preset networks: the three models every comparison in fastcnn uses, and a small ResNet.

Each function returns a built and compiled model (:class:`fastcnn.Sequential`,
or a functional :class:`fastcnn.Model` for ``resnet_mini``) whose last layer
outputs logits (loss ``"softmax_cross_entropy"``, metric accuracy).
All take ``seed=`` (weights, shuffling, dropout), ``impl=`` (passed to every
layer and the loss), ``input_shape=`` (NHWC, default MNIST's ``(28, 28, 1)``)
and ``dtype=``.
"""

import numpy as np

from fastcnn import layers as L
from fastcnn.graph import Input
from fastcnn.model import Model, Sequential
from fastcnn.optim import SGD, Adam
from fastcnn.optim.schedules import CosineDecay

__all__ = ["tutorial_cnn", "mnist_cnn", "vgg_mini", "resnet_mini", "residual_block", "PRESETS"]


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


#: BatchNormalization momentum of resnet_mini: PyTorch's default (its momentum=0.1). With
#: Keras's 0.99 the moving statistics average the last ~100 steps and lag the weights in a
#: short run: after one Fashion-MNIST epoch the test accuracy was 79.9% with them and 88.0%
#: with statistics re-estimated from 16 batches at the final weights.
RESNET_BN_MOMENTUM = 0.9


def _conv_bn(x, filters, kernel_size, stride, impl, momentum=RESNET_BN_MOMENTUM):
    """Conv2D ("same", no bias: BatchNormalization's beta is the offset) then BatchNormalization."""
    x = L.Conv2D(filters, kernel_size, stride=stride, padding="same", use_bias=False,
                 kernel_initializer="he_normal", impl=impl)(x)
    return L.BatchNormalization(momentum=momentum, impl=impl)(x)


def residual_block(x, filters, stride=1, impl="auto"):
    """A basic residual block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU.

    The shortcut is the identity, or a strided 1x1 conv-BN where the shape
    changes (``stride > 1`` or another number of channels).
    """
    y = _conv_bn(x, filters, 3, stride, impl)
    y = L.ReLU(impl=impl)(y)
    y = _conv_bn(y, filters, 3, 1, impl)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, impl)
    return L.ReLU(impl=impl)(L.Add(impl=impl)([y, shortcut]))


def resnet_mini(seed=None, impl="auto", input_shape=(28, 28, 1), num_classes=10, dtype=np.float32):
    """A small ResNet for 28x28 inputs, as a functional :class:`fastcnn.Model`.

    3x3 stem (16 filters, BN, ReLU); three stages of two basic residual blocks
    (:func:`residual_block`) at 16, 32 and 64 filters, the first block of stages 2
    and 3 with stride 2 and a 1x1 strided conv-BN shortcut (28 -> 14 -> 7);
    GlobalAvgPool2D; Dense(num_classes). Convolutions have no bias (each is
    followed by a BatchNormalization, which at inference is folded into it) and
    He-normal weights; BatchNormalization momentum 0.9 (:data:`RESNET_BN_MOMENTUM`).
    176,090 weights for 28x28x1, of which 1,120 are the non-trainable moving
    statistics.

    Training recipe (Fashion-MNIST; what ``fastcnn train --model resnet_mini``
    runs, :data:`RECIPES`): batch 128, 3 epochs, Adam with a cosine decay of
    the learning rate from 2e-3 to 0 over the whole run, inputs scaled to
    [0, 1], no augmentation::

        model = fc.models.resnet_mini(seed=0)
        steps = 3 * math.ceil(len(x_train) / 128)
        model.compile(fc.optim.Adam(fc.optim.schedules.CosineDecay(2e-3, steps)))
        model.fit(x_train, y_train, epochs=3, batch_size=128, validation_data=(x_test, y_test))

    The model is returned compiled with a constant ``Adam(1e-3)``; the recipe's
    schedule needs the number of steps, so it is set by the caller (or
    :func:`recipe`). Measured accuracy and time: README ("Functional models and
    BatchNormalization").
    """
    x = Input(input_shape)
    y = L.ReLU(impl=impl)(_conv_bn(x, 16, 3, 1, impl))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(2):
            y = residual_block(y, filters, stride=2 if stage > 0 and block == 0 else 1, impl=impl)
    y = L.GlobalAvgPool2D(impl=impl)(y)
    logits = L.Dense(num_classes, impl=impl)(y)
    model = Model(x, logits, name="resnet_mini", seed=seed, dtype=dtype)
    model.metadata["preset"] = "resnet_mini"  # saved with the model; names it in ONNX exports
    return model.compile(Adam(lr=1e-3), loss="softmax_cross_entropy", metrics=["accuracy"], loss_impl=impl)


#: Preset name -> function (used by the command line).
PRESETS = {f.__name__: f for f in (tutorial_cnn, mnist_cnn, vgg_mini, resnet_mini)}

#: Preset name -> its documented training recipe: epochs, batch size, and the learning rate
#: as a function of the run's total number of steps (``fastcnn train`` uses it unless told
#: otherwise). Presets without an entry train with their compiled optimizer, 1 epoch, batch 64.
RECIPES = {
    "resnet_mini": {"epochs": 3, "batch_size": 128, "learning_rate": lambda steps: CosineDecay(2e-3, steps)},
}


def recipe(name):
    """``{"epochs", "batch_size", "learning_rate"}`` of preset ``name`` (defaults where it has none)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return {"epochs": 1, "batch_size": 64, "learning_rate": None, **RECIPES.get(name, {})}
