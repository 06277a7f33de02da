"""Stateful layers: hyperparameters, params, grads, the last cache. NHWC throughout."""

from fastcnn.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from fastcnn.layers.base import Layer
from fastcnn.layers.conv import Conv2D
from fastcnn.layers.core import Dense, Dropout, Flatten
from fastcnn.layers.merge import Add, Concatenate
from fastcnn.layers.normalization import BatchNormalization
from fastcnn.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = [
    "Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dense", "Flatten",
    "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
    "BatchNormalization", "Add", "Concatenate",
]

#: Layer types a saved model may name (the allow-list used by load_model).
LAYER_TYPES = {name: globals()[name] for name in __all__ if name != "Layer"}
