"""Preset networks: architecture, parameter counts, and that each one learns on real data."""

import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn import models
from fastcnn.optim import SGD, Adam

# Keras's MNIST example (these layers) reports 1,199,882 parameters.
PARAM_COUNTS = {"tutorial_cnn": 13_602, "mnist_cnn": 1_199_882, "vgg_mini": 870_634, "resnet_mini": 176_090}


def test_presets_registry():
    assert list(models.PRESETS) == ["tutorial_cnn", "mnist_cnn", "vgg_mini", "resnet_mini"]
    assert models.PRESETS["mnist_cnn"] is models.mnist_cnn


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_parameter_counts(name):
    model = models.PRESETS[name](seed=0)
    assert model.count_params() == PARAM_COUNTS[name]
    assert f"Total params: {PARAM_COUNTS[name]:,}\n" in model.summary_string()
    assert model.output_shape == (10,) and model.compiled


def test_mnist_cnn_summary_rows():
    rows = models.mnist_cnn().summary_string().splitlines()
    table = [row.split() for row in rows[3:14]]
    assert [(r[0], r[1], r[-1]) for r in table] == [
        ("layers.0", "(Conv2D)", "320"), ("layers.1", "(ReLU)", "0"), ("layers.2", "(Conv2D)", "18,496"),
        ("layers.3", "(ReLU)", "0"), ("layers.4", "(MaxPool2D)", "0"), ("layers.5", "(Dropout)", "0"),
        ("layers.6", "(Flatten)", "0"), ("layers.7", "(Dense)", "1,179,776"), ("layers.8", "(ReLU)", "0"),
        ("layers.9", "(Dropout)", "0"), ("layers.10", "(Dense)", "1,290"),
    ]
    assert "(None, 12, 12, 64)" in rows[7] and "(None, 9216)" in rows[9]
    assert rows[-3:] == ["Total params: 1,199,882", "Trainable params: 1,199,882", "Non-trainable params: 0"]


def test_architectures_and_optimizers():
    tutorial = models.tutorial_cnn()
    assert [type(layer) for layer in tutorial.layers] == [L.Conv2D, L.MaxPool2D, L.Flatten, L.Dense]
    assert not tutorial.layers[0].use_bias and tutorial.layers[0].filters == 8
    assert isinstance(tutorial.optimizer, SGD) and tutorial.optimizer.lr == 0.005
    mnist = models.mnist_cnn()
    assert [layer.rate for layer in mnist.layers if isinstance(layer, L.Dropout)] == [0.25, 0.5]
    assert isinstance(mnist.optimizer, Adam) and mnist.optimizer.lr == 1e-3
    vgg = models.vgg_mini()
    convs = [layer for layer in vgg.layers if isinstance(layer, L.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64] and {c.padding for c in convs} == {"same"}
    assert vgg.layers[-1].units == 10 and isinstance(vgg.layers[-2], L.ReLU)
    assert all(m.loss == "softmax_cross_entropy" for m in (tutorial, mnist, vgg))


def test_resnet_mini_architecture():
    from fastcnn import Model

    model = models.resnet_mini(seed=0)
    assert type(model) is Model and isinstance(model.optimizer, Adam) and model.optimizer.lr == 1e-3
    convs = [layer for layer in model.layers if isinstance(layer, L.Conv2D)]
    assert [c.filters for c in convs] == [16] * 5 + [32] * 5 + [64] * 5
    strided = [(c.kernel_size, c.output_shape) for c in convs if c.stride == (2, 2)]
    assert strided == [((3, 3), (14, 14, 32)), ((1, 1), (14, 14, 32)), ((3, 3), (7, 7, 64)), ((1, 1), (7, 7, 64))]
    assert all(c.padding == "same" and not c.use_bias for c in convs)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") == 15 and kinds.count("Add") == 6
    assert kinds[-2:] == ["GlobalAvgPool2D", "Dense"] and model.output_shape == (10,)
    assert model.summary_string().endswith("Trainable params: 174,970\nNon-trainable params: 1,120")
    assert "BatchNormalization" not in [type(s).__name__ for s in model.inference_steps()]  # all folded


def test_impl_and_input_shape_reach_every_layer():
    model = models.vgg_mini(impl="numpy", input_shape=(32, 32, 3))
    assert {layer.impl for layer in model.layers} == {"numpy"} and model.loss_impl == "numpy"
    assert {layer.resolved_impl for layer in model.layers} == {"numpy"}
    assert model.input_shape == (32, 32, 3) and model.layers[13].params["weight"].shape == (4096, 256)


@pytest.mark.parametrize("name, samples, min_accuracy", [
    ("tutorial_cnn", 1000, None),  # SGD at lr 0.005 needs more than one short epoch to classify well
    ("mnist_cnn", 512, 0.5),
    ("vgg_mini", 256, 0.3),
])
def test_each_preset_learns_fashion_mnist(fashion_small, name, samples, min_accuracy):
    d = fashion_small
    model = models.PRESETS[name](seed=0)
    x, y = d.x_train[:samples], d.y_train[:samples]
    before = model.evaluate(x, y, batch_size=128)
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    after = model.evaluate(x, y, batch_size=128)
    assert np.isfinite(history.history["loss"][0])
    assert after["loss"] < before["loss"] - 0.1
    if min_accuracy is not None:  # chance is 0.1
        assert after["accuracy"] > min_accuracy
        assert model.evaluate(d.x_test[:200], d.y_test[:200], batch_size=100)["accuracy"] > min_accuracy - 0.05


def test_recipes_give_the_documented_training_settings():
    recipe = models.recipe("resnet_mini")
    assert (recipe["epochs"], recipe["batch_size"]) == (3, 128)
    schedule = recipe["learning_rate"](1407)  # 3 epochs of 469 batches of Fashion-MNIST
    assert float(schedule(0)) == pytest.approx(2e-3)
    assert float(schedule(1407 // 2)) == pytest.approx(1e-3, rel=2e-3)
    assert float(schedule(1407)) == pytest.approx(0.0, abs=1e-12)
    assert models.recipe("mnist_cnn") == {"epochs": 1, "batch_size": 64, "learning_rate": None}
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; expected one of"):
        models.recipe("nope")
