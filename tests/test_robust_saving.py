"""Hostile model files and save errors (issue 14, items 3 and 7)."""

import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from fastcnn import CheckpointError
from fastcnn import layers as L
from fastcnn.callbacks import ModelCheckpoint, TerminateOnNaN
from fastcnn.model import Sequential
from fastcnn.optim import SGD, Adam
from fastcnn.saving import META_KEY, load_model


def small_net(seed=0, optimizer=None):
    model = Sequential([L.Conv2D(4, 3, stride=2), L.ReLU(), L.Flatten(), L.Dense(10)],
                       input_shape=(12, 12, 1), seed=seed)
    return model.compile(optimizer or Adam(1e-2))


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 12, 12, 1), dtype=np.float32), rng.integers(0, 10, n)


def arrays_of(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def edit_description(path, edit):
    arrays = arrays_of(path)
    desc = json.loads(arrays[META_KEY].tobytes().decode())
    edit(desc)
    arrays[META_KEY] = np.frombuffer(json.dumps(desc).encode(), dtype=np.uint8)
    rewrite(path, arrays)


@pytest.fixture
def saved(tmp_path):
    model = small_net()
    model.fit(*data(), batch_size=8, verbose=0)
    return model.save(tmp_path / "m.npz")


# -- item 3: the description and the arrays are checked against each other before building --------
@pytest.mark.parametrize("layer, key, value, match", [
    (0, "filters", 10**9, r"array 'params/layers.0.weight' has shape \(3, 3, 1, 4\), the architecture "
                          r"expects \(3, 3, 1, 1000000000\) \(layers\[0\] \(Conv2D\)\)"),
    (0, "kernel_size", [100000, 100000], r"layers\[0\] \(Conv2D\) cannot take inputs of shape \(12, 12, 1\): "
                                         r"Conv2D: kernel \(100000, 100000\) is larger than the padded input"),
    (3, "units", 2**40, r"array 'params/layers.3.weight' has shape \(100, 10\), the architecture expects "
                        r"\(100, 1099511627776\)"),
])
def test_absurd_sizes_in_the_description_are_a_checkpoint_error_before_any_allocation(saved, layer, key,
                                                                                        value, match):
    # Before the fix, filters=1e9 built the model first: MemoryError (67 GiB) or the OOM killer.
    def edit(desc):
        desc["model"]["layers"][layer]["config"][key] = value

    edit_description(saved, edit)
    with pytest.raises(CheckpointError, match=match):
        load_model(saved)


def test_a_huge_input_shape_is_checked_against_the_dense_weights(saved):
    def edit(desc):
        desc["model"]["input_shape"] = [2**31, 2**31, 1]

    edit_description(saved, edit)
    with pytest.raises(CheckpointError, match=r"array 'params/layers.3.weight' has shape \(100, 10\), the architecture "
                                              r"expects \(\d{15,}, 10\)"):
        load_model(saved)


def npy_with_header(shape, payload=b""):
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue() + payload


def test_huge_layers_whose_headers_agree_with_the_description_are_refused(saved):
    # The description and the headers both ask for a 2**33-unit Dense layer (128 GiB), the data is not there.
    edit_description(saved, lambda desc: desc["model"]["layers"][3]["config"].update(units=2**33))
    with zipfile.ZipFile(saved) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    members["params/layers.3.weight.npy"] = npy_with_header((100, 2**33), b"\0" * 40)
    members["params/layers.3.bias.npy"] = npy_with_header((2**33,), b"\0" * 40)
    with zipfile.ZipFile(saved, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    with pytest.raises(CheckpointError, match=r"array 'params/layers.3.weight': its header declares shape "
                                              r"\(100, 8589934592\) \(3,435,973,836,800 bytes\) but the member "
                                              r"holds \d+ bytes: truncated or crafted"):
        load_model(saved)


def test_compressed_members_are_refused(saved, tmp_path):
    arrays = arrays_of(saved)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"member '[^']+.npy' is compressed; model files hold "
                                              r"uncompressed arrays"):
        load_model(tmp_path / "c.npz")


# -- item 7: ModelCheckpoint and save errors --------------------------------------------------------
def test_model_checkpoint_creates_missing_directories(tmp_path):
    # Before the fix: FileNotFoundError naming a hidden temporary file, after the first epoch.
    model = small_net()
    target = tmp_path / "runs" / "today" / "ckpt-{epoch}.npz"
    checkpoint = ModelCheckpoint(target)
    model.fit(*data(), epochs=2, batch_size=8, verbose=0, callbacks=[checkpoint])
    assert checkpoint.saved == [str(tmp_path / "runs" / "today" / f"ckpt-{e}.npz") for e in (1, 2)]
    assert load_model(checkpoint.saved[-1]).optimizer.iterations == 4


def test_a_save_error_names_the_target_not_the_temporary_file(tmp_path):
    model = small_net()
    target = tmp_path / "missing" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        model.save(target)
    assert info.value.filename == str(target)
    assert ".tmp" not in str(info.value) and "cannot write the model file" in str(info.value)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("path, match", [("", r"the path must be a non-empty file name, received ''"),
                                         ("  ", r"non-empty file name, received '  '")])
def test_save_to_an_empty_name_is_refused(tmp_path, monkeypatch, path, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        small_net().save(path)
    assert os.listdir(tmp_path) == []  # before the fix: a hidden file named ".npz"


def test_save_to_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory; give a file name such as"):
        small_net().save(tmp_path)


def test_terminate_on_nan_with_model_checkpoint_never_writes_nan_weights(tmp_path, capsys):
    # A huge learning rate: the first step makes the weights infinite, the next loss is NaN.
    model = small_net(optimizer=SGD(lr=1e38))
    checkpoint = ModelCheckpoint(tmp_path / "ckpt-{epoch}.npz", monitor="loss")
    with pytest.warns(RuntimeWarning, match=r"ModelCheckpoint: not saving epoch 1 to .*ckpt-1.npz: "):
        history = model.fit(*data(), epochs=2, batch_size=8, verbose=0,
                            callbacks=[TerminateOnNaN(), checkpoint])
    assert history.epoch == [0] and not np.isfinite(history.history["loss"][0])
    assert checkpoint.saved == [] and os.listdir(tmp_path) == []


def test_non_finite_optimizer_state_is_refused_at_save_time(tmp_path):
    model = small_net()
    model.train_on_batch(*data())
    model.optimizer.state["layers.0.weight"]["m"][0, 0, 0, 0] = np.inf
    with pytest.raises(CheckpointError, match=r"optimizer state 'layers.0.weight/m' holds NaN or infinite"):
        model.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field", ["dtype", "layer type", "optimizer class"])
def test_a_list_where_a_name_belongs_is_a_checkpoint_error(saved, field):
    # Found by the fuzz target (tests/fuzz): a JSON list in these fields raised TypeError: unhashable type.
    def edit(desc):
        if field == "dtype":
            desc["model"]["dtype"] = []
        elif field == "layer type":
            desc["model"]["layers"][1]["type"] = ["ReLU"]
        else:
            desc["compile"]["optimizer"]["class"] = []

    edit_description(saved, edit)
    with pytest.raises(CheckpointError, match=r"is not one of|is not a fastcnn layer"):
        load_model(saved)


def test_the_cli_reports_a_crafted_model_file_in_one_line(saved, capsys):
    # Before the fix: a MemoryError traceback from building the model.
    from fastcnn import cli

    edit_description(saved, lambda desc: desc["model"]["layers"][0]["config"].update(filters=10**9))
    assert cli.main(["evaluate", str(saved)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("fastcnn: error: ") and "the architecture expects (3, 3, 1, 1000000000)" in err


def test_an_unsupported_zip_version_is_a_checkpoint_error(saved):
    # Found by the model file fuzz target: zipfile's NotImplementedError ("zip file version 6.4") escaped.
    raw = bytearray(open(saved, "rb").read())
    central = raw.index(b"PK\x01\x02")
    raw[central + 6] = 64  # "version needed to extract" of the first member: 6.4
    with open(saved, "wb") as f:
        f.write(raw)
    with pytest.raises(CheckpointError, match=r"is not a readable .npz archive \(zip file version 6.4\)"):
        load_model(saved)


# -- functional models: the shapes follow each layer's inbound tensors, state/ arrays included ----
def functional_bn(tmp_path):
    import fastcnn as fc

    x = fc.Input((12, 12, 1))
    a = L.Conv2D(2, 3, padding="same")(x)
    b = L.Conv2D(3, 3, padding="same")(x)
    y = L.BatchNormalization(center=False, scale=False)(L.Concatenate()([a, b]))
    model = fc.Model(x, L.Dense(10)(L.Flatten()(y)), seed=0).compile(Adam(1e-2))
    model.fit(*data(8), verbose=0)
    return model, model.save(tmp_path / "f.npz")


def test_a_functional_model_with_batchnorm_round_trips_through_the_shape_checks(tmp_path):
    model, path = functional_bn(tmp_path)
    loaded = load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert all(np.array_equal(a, loaded.get_weights()[k]) for k, a in model.get_weights().items())


def test_a_tampered_functional_description_is_refused_by_the_graph_or_the_state_shapes(tmp_path):
    model, path = functional_bn(tmp_path)
    names = [type(layer).__name__ for layer in model.layers]
    concat, bn = names.index("Concatenate"), names.index("BatchNormalization")

    def edit(desc):  # the Concatenate reads one conv twice
        ins = desc["model"]["inputs"][concat]
        desc["model"]["inputs"][concat] = [ins[0], ins[0]]  # the other conv is unread: graph's check refuses it
    edit_description(path, edit)
    with pytest.raises(CheckpointError, match=r"nothing reads"):
        load_model(path)

    model, path = functional_bn(tmp_path)
    edit_description(path, lambda desc: desc["model"]["layers"][bn]["config"].update(axis=1))
    with pytest.raises(CheckpointError, match=rf"array 'state/layers.{bn}.moving_mean' has shape \(5,\), the "
                                              rf"architecture expects \(12,\) \(layers\[{bn}\] \(BatchNormalization\)\)"):
        load_model(path)


def test_batchnorm_state_shapes_come_from_the_description_before_any_allocation(tmp_path):
    # A model whose only arrays are BatchNormalization's moving statistics: before the fix
    # the model was built first, allocating 2 x 2**33 floats (64 GiB) for an input_shape edit.
    import fastcnn as fc

    x = fc.Input((2,))
    model = fc.Model(x, L.BatchNormalization(center=False, scale=False)(x), seed=0)
    path = model.save(tmp_path / "bn.npz")
    edit_description(path, lambda desc: desc["model"].update(input_shape=[2**33]))
    with pytest.raises(CheckpointError, match=r"array 'state/layers.0.moving_mean' has shape \(2,\), the "
                                              r"architecture expects \(8589934592,\)"):
        load_model(path)
