"""``fastcnn train --checkpoint-dir DIR [--resume]`` (issue 14, item 10): a checkpoint per epoch, and a
resumed run that ends bit-identical to an uninterrupted one, as ``fit(initial_epoch=...)`` does."""

import os

import numpy as np
import pytest

from fastcnn import cli, datasets
from fastcnn.model import load_model

from test_cli import isolated, run, write_dataset  # noqa: F401  (isolated: autouse fixture)

COMMON = ["--model", "mnist_cnn", "--limit", "48", "--batch-size", "16", "--seed", "3", "--verbose", "0"]


def same_model(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    oa, ob = a.optimizer.state_arrays(), b.optimizer.state_arrays()
    rng_a = [a.rng.bit_generator.state] + [l.rng.bit_generator.state for l in a.layers if hasattr(l, "rng")]
    rng_b = [b.rng.bit_generator.state] + [l.rng.bit_generator.state for l in b.layers if hasattr(l, "rng")]
    return (wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
            and oa.keys() == ob.keys() and all(np.array_equal(oa[k], ob[k]) for k in oa) and rng_a == rng_b)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_dataset(directory)
    return directory


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """Three epochs in one run, checkpointed."""
    root = tmp_path_factory.mktemp("straight")
    code = cli.main(["train", "--data-dir", str(data), *COMMON, "--epochs", "3", "--checkpoint-dir",
                     str(root / "ckpt")])
    assert code == 0
    return root / "ckpt"


def test_every_epoch_is_checkpointed_atomically(uninterrupted):
    assert sorted(os.listdir(uninterrupted)) == ["epoch-0001.npz", "epoch-0002.npz", "epoch-0003.npz"]
    model = load_model(uninterrupted / "epoch-0002.npz")
    assert model.optimizer.iterations == 6  # 48 images in batches of 16, two epochs
    assert model.metadata["run"] == {"model": "mnist_cnn", "dataset": "fashion-mnist", "batch_size": 16,
                                     "limit": 48, "seed": 3}


def test_ctrl_c_loses_at_most_the_current_epoch_and_resume_is_exact(data, uninterrupted, tmp_path, capsys,
                                                                    monkeypatch):
    checkpoints = tmp_path / "ckpt"
    begin = cli.TrainingTimer.on_epoch_begin

    def interrupt_in_epoch_2(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt
        begin(self, epoch, logs)

    with monkeypatch.context() as patch:
        patch.setattr(cli.TrainingTimer, "on_epoch_begin", interrupt_in_epoch_2)
        code, _, err = run(capsys, "train", "--data-dir", data, *COMMON, "--epochs", "3",
                           "--checkpoint-dir", checkpoints)
    assert code == 130 and "interrupted" in err
    assert os.listdir(checkpoints) == ["epoch-0001.npz"]

    code, out, err = run(capsys, "train", "--data-dir", data, *COMMON, "--epochs", "3", "--checkpoint-dir",
                         checkpoints, "--resume", "--verbose", "2")
    assert code == 0, err
    assert f"Resuming from {checkpoints / 'epoch-0001.npz'}: 1 epoch of 3 done" in out
    assert "Epoch 2/3" in out and "Epoch 1/3" not in out
    for name in ("epoch-0002.npz", "epoch-0003.npz"):
        assert same_model(load_model(checkpoints / name), load_model(uninterrupted / name))


def test_resume_equals_fit_with_initial_epoch(data, uninterrupted, tmp_path, capsys):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / "epoch-0002.npz").write_bytes((uninterrupted / "epoch-0002.npz").read_bytes())
    code, _, err = run(capsys, "train", "--data-dir", data, *COMMON, "--epochs", "3", "--checkpoint-dir",
                       checkpoints, "--resume")
    assert code == 0, err
    (x, y), (x_test, y_test) = datasets.load("fashion-mnist", path=data)
    model = load_model(uninterrupted / "epoch-0002.npz")
    model.fit(x[:48], y[:48], epochs=3, batch_size=16, validation_data=(x_test, y_test), verbose=0,
              initial_epoch=2)
    assert same_model(load_model(checkpoints / "epoch-0003.npz"), model)


def test_resume_with_no_checkpoint_starts_from_the_first_epoch(data, uninterrupted, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data-dir", data, *COMMON, "--epochs", "1", "--checkpoint-dir",
                       tmp_path / "new" / "dir", "--resume")
    assert code == 0, err
    assert same_model(load_model(tmp_path / "new" / "dir" / "epoch-0001.npz"),
                      load_model(uninterrupted / "epoch-0001.npz"))


@pytest.mark.parametrize("extra, code, message", [
    (["--resume"], 2, "argument --resume: needs --checkpoint-dir DIR"),
    (["--checkpoint-dir", "{ckpt}"], 1,
     "--checkpoint-dir {ckpt} already holds checkpoints (the newest is epoch-0003.npz); pass --resume"),
    (["--checkpoint-dir", "{ckpt}", "--resume", "--batch-size", "8"], 1,
     "epoch-0003.npz was written by another run: --batch-size 16 in the checkpoint, 8 now"),
    (["--checkpoint-dir", "{ckpt}", "--resume", "--lr", "0.1"], 1,
     "--resume: the optimizer and learning rate come from the checkpoint"),
    (["--checkpoint-dir", "{file}"], 1, "--checkpoint-dir {file}: not a directory"),
])
def test_checkpoint_errors_are_one_message(data, uninterrupted, tmp_path, capsys, extra, code, message):
    (tmp_path / "file").write_text("")
    fill = {"ckpt": uninterrupted, "file": tmp_path / "file"}
    argv = ["train", "--data-dir", data, *COMMON, "--epochs", "3", *[a.format(**fill) for a in extra]]
    status, out, err = run(capsys, *argv)
    assert status == code
    assert err.startswith("fastcnn: error: ") and message.format(**fill) in err
    assert err.count("\n") == 1
