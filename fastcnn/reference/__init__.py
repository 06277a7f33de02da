"""Naive-loop reference implementations of every op: the ground truth.

Explicit Python loops over the batch and output positions, written for
clarity, not speed. Nothing here imports ``fastcnn.ops`` or
``fastcnn.kernels``: the reference never calls the code it judges. Importing
this package registers every op under the implementation name ``"reference"``.
"""

from fastcnn.reference.activations import (
    leaky_relu_backward,
    leaky_relu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax_backward,
    softmax_forward,
    tanh_backward,
    tanh_forward,
)
from fastcnn.reference.batchnorm import batch_norm_backward, batch_norm_forward
from fastcnn.reference.conv import conv2d_backward, conv2d_forward
from fastcnn.reference.dense import dense_backward, dense_forward
from fastcnn.reference.dropout import dropout_backward, dropout_forward
from fastcnn.reference.flatten import flatten_backward, flatten_forward
from fastcnn.reference.loss import softmax_cross_entropy, sparse_categorical_crossentropy
from fastcnn.reference.merge import add_backward, add_forward, concatenate_backward, concatenate_forward
from fastcnn.reference.optim import adam_update, rmsprop_update, sgd_update
from fastcnn.reference.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from fastcnn.registry import register

#: op name -> (forward, backward), in the order of docs/ops.md.
OPS = {
    "conv2d": (conv2d_forward, conv2d_backward),
    "dense": (dense_forward, dense_backward),
    "max_pool2d": (max_pool2d_forward, max_pool2d_backward),
    "avg_pool2d": (avg_pool2d_forward, avg_pool2d_backward),
    "global_avg_pool2d": (global_avg_pool2d_forward, global_avg_pool2d_backward),
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "tanh": (tanh_forward, tanh_backward),
    "softmax": (softmax_forward, softmax_backward),
    "flatten": (flatten_forward, flatten_backward),
    "dropout": (dropout_forward, dropout_backward),
    "batch_norm": (batch_norm_forward, batch_norm_backward),
    "add": (add_forward, add_backward),
    "concatenate": (concatenate_forward, concatenate_backward),
    "softmax_cross_entropy": (softmax_cross_entropy, None),
    "sparse_categorical_crossentropy": (sparse_categorical_crossentropy, None),  # on probabilities
    # Optimizer updates: in place, no backward.
    "sgd_update": (sgd_update, None),
    "adam_update": (adam_update, None),
    "rmsprop_update": (rmsprop_update, None),
}

for _op, (_forward, _backward) in OPS.items():
    register(_op, "reference", _forward, _backward)

del _op, _forward, _backward

__all__ = [
    "OPS",
    "conv2d_forward",
    "conv2d_backward",
    "dense_forward",
    "dense_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "global_avg_pool2d_backward",
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "softmax_forward",
    "softmax_backward",
    "flatten_forward",
    "flatten_backward",
    "dropout_forward",
    "dropout_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "add_forward",
    "add_backward",
    "concatenate_forward",
    "concatenate_backward",
    "softmax_cross_entropy",
    "sparse_categorical_crossentropy",
    "sgd_update",
    "adam_update",
    "rmsprop_update",
]
