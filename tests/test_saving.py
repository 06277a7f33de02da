"""save / load: bit-exact round trips, exact resumption, and refusal of unsafe or mismatched files."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from fastcnn import CheckpointError, models, optim
from fastcnn import layers as L
from fastcnn.callbacks import ModelCheckpoint
from fastcnn.model import Sequential
from fastcnn.saving import META_KEY, load_model


def weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def trained(fashion_small, tmp_path_factory):
    """An mnist_cnn trained a few steps, and the path it was saved to."""
    d = fashion_small
    model = models.mnist_cnn(seed=11)
    model.fit(d.x_train[:128], d.y_train[:128], batch_size=64, verbose=0)
    path = model.save(tmp_path_factory.mktemp("saved") / "mnist_cnn.npz")
    return model, path


def arrays_of(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def description(arrays):
    return json.loads(arrays[META_KEY].tobytes().decode())


def with_description(arrays, desc):
    return {**arrays, META_KEY: np.frombuffer(json.dumps(desc).encode(), dtype=np.uint8)}


# -- round trips --------------------------------------------------------------------------
def test_save_load_predict_is_bit_identical(trained, fashion_small):
    model, path = trained
    loaded = load_model(path)
    assert repr(loaded) == repr(model)
    assert weights_equal(loaded, model)
    np.testing.assert_array_equal(loaded.predict(fashion_small.x_test), model.predict(fashion_small.x_test))
    assert loaded.optimizer.iterations == model.optimizer.iterations == 2
    saved_state, state = loaded.optimizer.state_arrays(), model.optimizer.state_arrays()
    assert saved_state.keys() == state.keys() and all(np.array_equal(saved_state[k], state[k]) for k in state)
    assert (loaded.loss, loaded.metrics) == ("softmax_cross_entropy", ["accuracy"])


def test_file_layout_is_plain_arrays_and_json(trained):
    _, path = trained
    arrays = arrays_of(path)
    desc = description(arrays)
    assert desc["format"] == "fastcnn.model" and desc["format_version"] == 1
    assert [spec["type"] for spec in desc["model"]["layers"]][:3] == ["Conv2D", "ReLU", "Conv2D"]
    assert desc["model"]["input_shape"] == [28, 28, 1] and desc["model"]["dtype"] == "float32"
    assert desc["compile"]["optimizer"]["class"] == "Adam"
    assert set(desc["rng"]["layers"]) == {"5", "9"}  # the two Dropout layers
    assert arrays["params/layers.0.weight"].shape == (3, 3, 1, 32)
    assert arrays["optimizer/layers.10.bias/m"].shape == (10,)
    assert arrays["optimizer/iterations"] == 2
    assert all(a.dtype != object for a in arrays.values())


def test_npz_suffix_is_appended_and_found(tmp_path, fashion_small):
    model = models.tutorial_cnn(seed=0)
    written = model.save(tmp_path / "model")
    assert written == str(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == ["model.npz"]
    np.testing.assert_array_equal(load_model(tmp_path / "model").predict(fashion_small.x_test[:5]),
                                  model.predict(fashion_small.x_test[:5]))


def test_uncompiled_float64_model_round_trips(tmp_path):
    model = Sequential([L.Flatten(), L.Dense(3, use_bias=False)], input_shape=(2, 2, 1), seed=1, dtype=np.float64)
    loaded = load_model(model.save(tmp_path / "m.npz"))
    assert loaded.optimizer is None and loaded.dtype == np.float64
    assert weights_equal(loaded, model)


def test_load_onto_an_existing_model(trained, fashion_small):
    model, path = trained
    other = models.mnist_cnn(seed=99)
    assert not weights_equal(other, model)
    other.load(path)
    assert weights_equal(other, model) and other.optimizer.iterations == 2
    np.testing.assert_array_equal(other.predict(fashion_small.x_test[:50]), model.predict(fashion_small.x_test[:50]))


def test_resuming_from_a_checkpoint_equals_uninterrupted_training(fashion_small, tmp_path):
    d = fashion_small
    x, y = d.x_train[:192], d.y_train[:192]
    val = (d.x_test[:64], d.y_test[:64])
    straight = models.mnist_cnn(seed=5)  # dropout and shuffling on, Adam state
    full = straight.fit(x, y, epochs=2, batch_size=64, validation_data=val, verbose=0,
                        callbacks=[ModelCheckpoint(tmp_path / "ckpt-{epoch}")])
    resumed = load_model(tmp_path / "ckpt-1.npz")
    rest = resumed.fit(x, y, epochs=2, initial_epoch=1, batch_size=64, validation_data=val, verbose=0)
    assert weights_equal(resumed, straight)
    assert rest.history["loss"] == full.history["loss"][1:]
    assert rest.history["val_loss"] == full.history["val_loss"][1:]
    assert resumed.optimizer.iterations == straight.optimizer.iterations == 6


def test_an_interrupted_save_keeps_the_previous_file(trained, tmp_path, monkeypatch):
    model, original = trained
    path = tmp_path / "keep.npz"
    model.save(path)
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.npz"]  # the temporary file was removed


def test_saving_non_finite_weights_is_refused(tmp_path):
    model = models.tutorial_cnn(seed=0)
    model.layers[3].params["bias"][0] = np.nan
    with pytest.raises(CheckpointError, match=r"refusing to save: parameter 'layers.3.bias' holds NaN"):
        model.save(tmp_path / "nan.npz")
    assert not os.listdir(tmp_path)


# -- unsafe and mismatched files ----------------------------------------------------------
class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def object_array(marker):
    a = np.empty(1, dtype=object)
    a[0] = Payload(marker)
    return a


def assert_payload_is_live(path, key, marker):
    """The crafted file really would run code if unpickled (then clean up)."""
    with np.load(path, allow_pickle=True) as npz:
        npz[key]
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("member", [META_KEY, "params/layers.0.weight"])
def test_pickled_objects_are_never_unpickled(trained, tmp_path, member):
    _, good = trained
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    arrays = arrays_of(good)
    arrays[member] = object_array(marker)
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # savez pickles object arrays
    assert_payload_is_live(path, member, marker)
    with pytest.raises(CheckpointError, match=rf"array '{member}' holds Python objects \(pickled data\); "
                                              r"fastcnn never unpickles"):
        load_model(path)
    model = models.mnist_cnn(seed=0)
    with pytest.raises(CheckpointError, match="pickled data"):
        model.load(path)
    assert not marker.exists()


def test_a_pickle_file_is_not_loaded(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="is not a fastcnn model file: expected an .npz"):
        load_model(path)
    assert not marker.exists()


def test_truncated_file(trained, tmp_path):
    _, good = trained
    data = open(good, "rb").read()
    for size in (len(data) // 2, len(data) - 10, 30):
        path = tmp_path / f"cut-{size}.npz"
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="is not a fastcnn model file: .* or truncated"):
            load_model(path)


def test_corrupt_member_data(trained, tmp_path):
    _, good = trained
    data = bytearray(open(good, "rb").read())
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("params/layers.7.weight.npy")
    middle = info.header_offset + 200 + info.compress_size // 2
    data[middle:middle + 8] = b"\xff" * 8
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"array 'params/layers.7.weight' is unreadable: corrupt or truncated"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a zip", b"\x93NUMPY\x01\x00"])
def test_non_zip_files(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a fastcnn model file"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no model file at"):
        load_model(tmp_path / "nothing.npz")


def test_loading_a_different_architecture_changes_nothing(trained, tmp_path):
    _, mnist_path = trained
    tutorial_path = models.tutorial_cnn(seed=0).save(tmp_path / "tutorial.npz")
    model = models.mnist_cnn(seed=3)
    before = model.get_weights()
    with pytest.raises(CheckpointError, match=r"different architecture than this model: 4 layers in the file, "
                                              r"11 in the model"):
        model.load(tutorial_path)
    wider = models.mnist_cnn(seed=0, num_classes=12)
    with pytest.raises(CheckpointError, match=r"layers.10 is Dense\(.*'units': 10.*\) in the file, "
                                              r"Dense\(.*'units': 12.*\) in the model"):
        wider.load(mnist_path)
    assert all(np.array_equal(model.get_weights()[k], before[k]) for k in before)
    assert model.optimizer.iterations == 0


def test_arrays_that_do_not_match_the_description(trained, tmp_path):
    _, good = trained
    arrays = arrays_of(good)
    desc = description(arrays)
    path = tmp_path / "tampered.npz"

    desc["model"]["layers"][7]["config"]["units"] = 64  # claims Dense(64), holds Dense(128) weights
    rewrite(path, with_description(arrays, desc))
    with pytest.raises(CheckpointError, match=r"array 'params/layers.7.weight' has shape \(9216, 128\), "
                                              r"the architecture expects \(9216, 64\)"):
        load_model(path)

    rewrite(path, {k: v for k, v in arrays.items() if k != "params/layers.2.bias"})
    with pytest.raises(CheckpointError, match=r"the weights do not match the architecture \(missing "
                                              r"\['layers.2.bias'\]"):
        load_model(path)

    rewrite(path, {**arrays, "params/layers.0.weight": arrays["params/layers.0.weight"].astype(np.float64)})
    with pytest.raises(CheckpointError, match=r"has dtype float64, the architecture expects float32"):
        load_model(path)

    poisoned = arrays["params/layers.10.bias"].copy()
    poisoned[3] = np.inf
    rewrite(path, {**arrays, "params/layers.10.bias": poisoned})
    with pytest.raises(CheckpointError, match=r"array 'params/layers.10.bias' holds NaN or infinite values"):
        load_model(path)

    rewrite(path, {k: v for k, v in arrays.items() if k != "optimizer/layers.0.weight/v"})
    with pytest.raises(CheckpointError, match=r"the Adam state does not match the architecture \(missing "
                                              r"\['optimizer/layers.0.weight/v'\]"):
        load_model(path)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["model"]["layers"][0].update(type="os.system"), r"layers\[0\] has type 'os.system', which is "
                                                                 r"not a fastcnn layer"),
    (lambda d: d["model"]["layers"][0]["config"].update(evil=1), r"layers\[0\] \(Conv2D\) has an invalid config"),
    (lambda d: d["compile"]["optimizer"].update({"class": "Evil"}), r"optimizer class 'Evil' is not one of"),
    (lambda d: d.update(format_version=2), r"format version 2; this fastcnn \(0.1.0\) reads version 1"),
    (lambda d: d["rng"]["model"].update(bit_generator="Evil"), r"rng.model: a random generator state must name"),
    (lambda d: d["model"].update(input_shape=[28, 28, 0]), r"input_shape \[28, 28, 0\] is not a list of positive"),
])
def test_bad_descriptions(trained, tmp_path, edit, match):
    _, good = trained
    arrays = arrays_of(good)
    desc = description(arrays)
    edit(desc)
    path = tmp_path / "bad.npz"
    rewrite(path, with_description(arrays, desc))
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_description_must_be_json(trained, tmp_path):
    _, good = trained
    path = tmp_path / "bad.npz"
    rewrite(path, {**arrays_of(good), META_KEY: np.frombuffer(b"\xff{not json", dtype=np.uint8)})
    with pytest.raises(CheckpointError, match="the description is not valid JSON"):
        load_model(path)


def test_metadata_round_trips_and_must_be_json(tmp_path):
    model = models.tutorial_cnn(seed=0)
    model.metadata = {"dataset": "fashion-mnist", "epochs": 1}
    assert load_model(model.save(tmp_path / "m.npz")).metadata == {"dataset": "fashion-mnist", "epochs": 1}
    model.metadata = {"when": object()}
    with pytest.raises(TypeError, match=r"cannot be described in JSON \(check model.metadata\)"):
        model.save(tmp_path / "bad.npz")
    assert os.listdir(tmp_path) == ["m.npz"]


# -- newer optimizers and schedules resume exactly ------------------------------------------------------
def small_net(seed, optimizer):
    model = Sequential([L.Conv2D(4, 3), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dropout(0.2), L.Dense(10)],
                       input_shape=(28, 28, 1), seed=seed)
    return model.compile(optimizer)


@pytest.mark.parametrize("make_optimizer", [
    lambda: optim.RMSprop(optim.schedules.ExponentialDecay(0.01, 2, 0.5), momentum=0.9, centered=True,
                          clipnorm=1.0),
    lambda: optim.AdamW(optim.schedules.CosineDecay(0.0, 4, warmup_target=0.01, warmup_steps=2), amsgrad=True,
                        global_clipnorm=1.0),
], ids=["rmsprop-exponential", "adamw-cosine-warmup"])
def test_resuming_with_a_schedule_equals_uninterrupted_training(fashion_small, tmp_path, make_optimizer):
    d = fashion_small
    x, y = d.x_train[:96], d.y_train[:96]
    straight = small_net(3, make_optimizer())
    full = straight.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "c{epoch}")])
    resumed = load_model(tmp_path / "c1.npz")
    assert type(resumed.optimizer) is type(straight.optimizer)
    assert resumed.optimizer.get_config() == straight.optimizer.get_config()
    assert resumed.optimizer.iterations == 3
    rest = resumed.fit(x, y, epochs=2, initial_epoch=1, batch_size=32, verbose=0)
    assert weights_equal(resumed, straight)
    assert rest.history["loss"] == full.history["loss"][1:]
    assert rest.history["learning_rate"] == full.history["learning_rate"][1:]
    assert resumed.optimizer.learning_rate == straight.optimizer.learning_rate


def test_a_plain_callable_learning_rate_cannot_be_saved(tmp_path):
    model = small_net(0, optim.SGD(lambda step: 0.01))
    with pytest.raises(TypeError, match=r"cannot be saved: only the schedules in fastcnn.optim.schedules"):
        model.save(tmp_path / "m.npz")
    assert not os.listdir(tmp_path)


def test_an_unknown_schedule_in_a_file_is_refused(tmp_path):
    path = small_net(0, optim.SGD(optim.schedules.ExponentialDecay(0.1, 10, 0.9))).save(tmp_path / "m.npz")
    arrays = arrays_of(path)
    desc = description(arrays)
    desc["compile"]["optimizer"]["config"]["learning_rate"]["class"] = "os.system"
    rewrite(path, with_description(arrays, desc))
    with pytest.raises(CheckpointError, match=r"optimizer SGD has an invalid config .*unknown schedule 'os.system'"):
        load_model(path)


def bn_graph(seed):
    """A functional model with activation= layers, BatchNormalization state and a residual Add."""
    import fastcnn as fc

    x = fc.Input((8, 8, 1))
    h = L.BatchNormalization(momentum=0.9)(L.Conv2D(4, 3, padding="same", activation="relu")(x))
    h = L.Add()([h, L.Conv2D(4, 1)(x)])
    y = L.Dense(3, activation="softmax")(L.GlobalAvgPool2D()(h))
    model = fc.Model(x, y, seed=seed)
    lr = optim.schedules.CosineDecay(0.0, 4, warmup_target=0.02, warmup_steps=2)
    loss = fc.losses.SparseCategoricalCrossentropy(label_smoothing=0.1)
    return model.compile(optim.AdamW(lr, weight_decay=0.01, global_clipnorm=1.0), loss=loss,
                         metrics=["acc", "top_k_accuracy"])


def test_a_functional_model_with_state_and_a_schedule_resumes_exactly(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.random((24, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, size=24)
    straight = bn_graph(5)
    full = straight.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "c{epoch}")])
    resumed = load_model(tmp_path / "c1.npz")
    assert resumed.optimizer.get_config() == straight.optimizer.get_config()
    assert resumed.loss.get_config() == straight.loss.get_config()
    names = {key.rsplit("/", 1)[0] for key in resumed.optimizer.state_arrays() if key != "iterations"}
    assert names == {name for name, _, _ in resumed.params()}  # no slot for the moving statistics
    assert {name for name, _ in resumed.states()} == {"layers.1.moving_mean", "layers.1.moving_variance"}
    rest = resumed.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, verbose=0)
    assert weights_equal(resumed, straight)  # parameters and moving statistics
    assert rest.history == {k: v[1:] for k, v in full.history.items()}
    assert set(full.history) == {"loss", "acc", "top_k_accuracy", "learning_rate"}
