"""fastcnn._opcases: the op calls of a model, read off its layers (behind ``fastcnn bench`` and the op benchmarks)."""

import dataclasses

import numpy as np
import pytest

import fastcnn as fc
from fastcnn import layers as L
from fastcnn import models
from fastcnn._opcases import op_calls, preset_op_calls

VALID = ((0, 0), (0, 0))
CONV = {"stride": (1, 1), "padding": VALID}
POOL = {"pool_size": (2, 2), "stride": (2, 2), "padding": VALID}


def summary(calls):
    """``(op, where, description, inputs, params, kwargs, classes)`` per call; a Dropout's rng is
    checked to be its layer's and left out."""
    rows = []
    for call in calls:
        kwargs = dict(call.kwargs)
        if "rng" in kwargs:
            assert kwargs.pop("rng") is call.layer.rng
        rows.append((call.op, call.where, call.description, call.inputs, call.params, kwargs, call.classes))
    return rows


def test_mnist_cnn_calls_are_its_layers_then_its_loss():
    # Read off fastcnn.models.mnist_cnn: 28x28x1 -> conv 32 3x3 valid -> 26x26x32 -> conv 64 -> 24x24x64
    # -> pool 2 -> 12x12x64 = 9216 -> dense 128 -> dense 10; every conv and dense with a bias.
    assert summary(preset_op_calls("mnist_cnn")) == [
        ("conv2d", "conv1", "conv 3x3, 1->32", ((28, 28, 1),), ((3, 3, 1, 32), (32,)), CONV, 0),
        ("relu", "relu1", "relu", ((26, 26, 32),), (), {}, 0),
        ("conv2d", "conv2", "conv 3x3, 32->64", ((26, 26, 32),), ((3, 3, 32, 64), (64,)), CONV, 0),
        ("relu", "relu2", "relu", ((24, 24, 64),), (), {}, 0),
        ("max_pool2d", "pool", "max pool 2x2", ((24, 24, 64),), (), POOL, 0),
        ("dropout", "dropout1", "dropout 0.25", ((12, 12, 64),), (), {"rate": 0.25}, 0),
        ("flatten", "flatten", "flatten", ((12, 12, 64),), (), {}, 0),
        ("dense", "dense1", "dense 9216->128", ((9216,),), ((9216, 128), (128,)), {}, 0),
        ("relu", "relu3", "relu", ((128,),), (), {}, 0),
        ("dropout", "dropout2", "dropout 0.5", ((128,),), (), {"rate": 0.5}, 0),
        ("dense", "dense2", "dense 128->10", ((128,),), ((128, 10), (10,)), {}, 0),
        ("softmax_cross_entropy", "loss", "softmax cross-entropy", ((10,),), (), {}, 10),
    ]


def test_mnist_cnn_fused_calls_follow_its_training_plan():
    calls = summary(preset_op_calls("mnist_cnn", fused=True))
    assert calls[:2] == [
        ("conv2d_relu", "conv1", "conv 3x3, 1->32 + relu", ((28, 28, 1),), ((3, 3, 1, 32), (32,)), CONV, 0),
        ("conv2d_relu_maxpool2d", "conv2", "conv 3x3, 32->64 + relu + max pool 2x2", ((26, 26, 32),),
         ((3, 3, 32, 64), (64,)), {**CONV, "pool_size": (2, 2)}, 0),
    ]
    assert [(op, where) for op, where, *_ in calls[2:]] == [
        ("dropout", "dropout1"), ("flatten", "flatten"), ("dense", "dense1"), ("relu", "relu3"),
        ("dropout", "dropout2"), ("dense", "dense2"), ("softmax_cross_entropy", "loss"),
    ]


def test_padding_stride_and_a_missing_bias_are_reported():
    vgg = summary(preset_op_calls("vgg_mini"))
    assert vgg[0][:6] == ("conv2d", "conv1", "conv 3x3, 1->32, padding same", ((28, 28, 1),),
                          ((3, 3, 1, 32), (32,)), {"stride": (1, 1), "padding": ((1, 1), (1, 1))})
    tutorial = summary(preset_op_calls("tutorial_cnn"))
    assert tutorial[0][4] == ((3, 3, 1, 8), None)  # Conv2D(8, 3, use_bias=False)
    assert [row[1] for row in tutorial] == ["conv", "pool", "flatten", "dense", "loss"]  # one of each: no numbers
    resnet = {call.where: call for call in preset_op_calls("resnet_mini")}
    # Stage 2's first block: a 3x3 stride-2 conv on 28x28x16 ("same": pad 0 top/left, 1 bottom/right).
    assert resnet["conv6"].description == "conv 3x3, 16->32, stride 2x2, padding same"
    assert resnet["conv6"].kwargs == {"stride": (2, 2), "padding": ((0, 1), (0, 1))}
    assert resnet["bn1"].params == ((16,), (16,)) and resnet["bn1"].kwargs == {"epsilon": 1e-3}
    assert resnet["add1"].inputs == ((28, 28, 16), (28, 28, 16))


def recorded_calls(model):
    """Wrap the registry entry of every layer and fused step of ``model``: ``(op, shapes, kwargs)``
    of each forward call the model makes."""
    log = []

    def recording(entry):
        def forward(*args, **kwargs):
            # Conv2D also passes its scratch buffers and whether to keep a cache: plumbing, not arguments.
            kept = {k: v for k, v in kwargs.items() if k not in ("workspace", "need_cache")}
            log.append((entry.op, tuple(None if a is None else a.shape for a in args), kept))
            return entry.forward(*args, **kwargs)
        return dataclasses.replace(entry, forward=forward)

    runners = {id(runner): runner for runner in [*model.layers, *model.steps]}  # a layer is often a step
    for runner in runners.values():
        if getattr(runner, "_fn", None) is not None:
            runner._fn = recording(runner._fn)
    return log


@pytest.mark.parametrize("fused", [False, True], ids=["layers", "plan"])
@pytest.mark.parametrize("preset", ["mnist_cnn", "resnet_mini"])
def test_calls_are_what_a_training_step_runs(preset, fused):
    model = models.PRESETS[preset](seed=0, impl="numpy")
    model.fuse = fused
    log = recorded_calls(model)
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.random((2, 28, 28, 1), dtype=np.float32), np.array([3, 7]))
    expected = [(call.op, tuple((2, *s) for s in call.inputs) + call.params, call.kwargs)
                for call in op_calls(model, fused=fused) if call.where != "loss"]  # the loss has its own entry
    assert log == expected


@pytest.mark.parametrize("preset", list(models.PRESETS))
def test_arguments_run_through_the_numpy_ops(preset):
    from fastcnn import registry

    for call in preset_op_calls(preset):
        args, kwargs = call.arguments(2, np.random.default_rng(0))
        y, _ = registry.get(call.op, "numpy").forward(*args, **kwargs)
        if call.layer is not None:
            assert y.shape == (2, *call.layer.output_shape), call
            assert y.dtype == np.float32


def test_arguments_are_float32_exact_scaled_draws_in_argument_order():
    dense1, loss = (next(c for c in preset_op_calls("mnist_cnn") if c.where == where) for where in ("dense1", "loss"))
    (x, w, b), kwargs = dense1.arguments(3, np.random.default_rng(5), np.float64)
    rng = np.random.default_rng(5)
    assert kwargs == {}
    np.testing.assert_array_equal(x, rng.standard_normal((3, 9216)).astype(np.float32))
    np.testing.assert_array_equal(w, (9216 ** -0.5 * rng.standard_normal((9216, 128))).astype(np.float32))
    np.testing.assert_array_equal(b, rng.standard_normal(128).astype(np.float32))
    assert x.dtype == w.dtype == b.dtype == np.float64
    (logits, labels), _ = loss.arguments(64, np.random.default_rng(0))
    assert logits.shape == (64, 10) and logits.dtype == np.float32
    assert labels.shape == (64,) and labels.min() >= 0 and labels.max() <= 9 and len(set(labels)) > 1


def test_a_layer_drawing_its_arguments_per_batch_is_refused():
    model = fc.Sequential([L.RandomFlip("horizontal", seed=0), L.Flatten(), L.Dense(10)], input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match=r"RandomFlip.* draws its op's arguments for each batch"):
        op_calls(model)
