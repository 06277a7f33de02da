"""The fastcnn command, run end to end in-process through ``fastcnn.cli.main``.

Data: a tiny synthetic MNIST-format set written with ``write_idx`` (class k is a
bright bar at row 2k + 4 over noise: learnable in a few steps). No test touches
the network: an autouse fixture hides the environment, the cache and the system
copies, and replaces the downloader with one that fails as if offline. One test
runs ``python -m fastcnn`` in a subprocess to prove the module entry point.
"""

import contextlib
import io
import json
import re
import subprocess
import sys
import urllib.error

import numba
import numpy as np
import pytest

from fastcnn import cli, datasets, parallel, registry
from fastcnn.model import load_model

N_TRAIN, N_TEST = 200, 100
SUMMARY = re.compile(
    r"^test accuracy (?P<accuracy>\d\.\d{4}) \| (?P<images>[\d,]+) images in (?P<seconds>[\d.]+) s "
    r"\((?P<rate>[\d,]+) images/s\) \| (?P<model>\w+) on (?P<dataset>[\w-]+), impl (?P<impl>\w+), "
    r"(?P<threads>\d+) threads?$"
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real data, no cache, no network; thread counts restored after each test."""
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", [str(tmp_path / "system")])

    def offline(url, timeout):
        raise urllib.error.URLError("offline in tests")

    monkeypatch.setattr(datasets, "_open_url", offline)
    numba_threads, blas_threads = numba.get_num_threads(), parallel.blas_num_threads()
    yield
    numba.set_num_threads(numba_threads)
    parallel.reset_num_threads()  # --threads fixed the count: back to the default policy
    if blas_threads:
        import threadpoolctl

        # By user_api: threadpoolctl ignores a dict keyed by internal_api ("openblas").
        threadpoolctl.threadpool_limits(limits=max(blas_threads.values()), user_api="blas")


def bar_images(labels, rng, dark_on_light=False):
    """uint8 (N, 28, 28): noise, plus a bright two-pixel bar at rows 2k+4, 2k+5 for class k."""
    x = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        x[i, 2 * k + 4: 2 * k + 6, 3:25] = 255
    return 255 - x if dark_on_light else x


def write_dataset(directory, seed=0, gz=True):
    """The four MNIST files (exactly MNIST's names) in ``directory``; returns the test split."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    splits = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        y = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(y)
        x = bar_images(y, rng)
        datasets.write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", x)
        datasets.write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        splits[prefix] = (x, y)
    return splits


def run(capsys, *argv):
    """``main(argv)``: returns (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_plans_lists_this_machines_choices_and_forgets_them(capsys, monkeypatch, tmp_path):
    from fastcnn import planner

    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path / "cache"))
    p = planner.default_planner()
    key = "conv2d x=2x8x8x3 w=3x3x3x4 stride=1x1 padding=1x1,1x1 float32 train"
    p.record(key, "numba:winograd", {"numba:im2col": 0.002, "numba:winograd": 0.001})
    other = planner.Planner(p.path, machine="another machine")
    other.record(key, "numba:im2col", {"numba:im2col": 0.001})
    code, out, err = run(capsys, "plans")
    assert code == 0 and err == ""
    assert f"Plan file: {p.path}" in out and f"Machine: {p.machine}" in out
    row = next(line for line in out.splitlines() if line.startswith(key))
    assert re.fullmatch(rf"{re.escape(key)}\s+numba:winograd\s+numba:winograd 1 ms, numba:im2col 2 ms", row), row
    code, out, _ = run(capsys, "plans", "--forget")
    assert code == 0 and "Forgot 1 plans of this machine" in out
    assert planner.Planner(p.path).held() == {}  # this machine's: gone
    assert other.held() == {key: {"choice": "numba:im2col", "seconds": {"numba:im2col": 0.001}}}  # kept
    code, out, _ = run(capsys, "plans")
    assert "No plans for this machine yet" in out


def summary_of(out):
    match = SUMMARY.match(out.strip().splitlines()[-1])
    assert match, f"no summary line at the end of:\n{out}"
    return match


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run shared by the evaluate/predict tests: (data dir, model path, stdout, test split)."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    splits = write_dataset(data)
    model_path = root / "model.npz"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([
            "train", "--data-dir", str(data), "--model", "tutorial_cnn", "--optimizer", "adam",
            "--lr", "0.01", "--epochs", "2", "--batch-size", "16", "--limit", "160",
            "--save", str(model_path), "--verbose", "2",
        ])
    assert code == 0, out.getvalue()
    return data, model_path, out.getvalue(), splits["t10k"]


# -- entry points ---------------------------------------------------------------------------
def test_python_m_fastcnn_help():
    result = subprocess.run([sys.executable, "-m", "fastcnn", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fastcnn ")
    for command in ("train", "evaluate", "predict", "bench"):
        assert command in result.stdout


def test_version_and_help_return_zero(capsys):
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, "fastcnn 0.1.0")
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "--limit N" in out and "--data-dir DIR" in out


# -- train, evaluate, predict ---------------------------------------------------------------
def test_train_prints_epochs_and_one_summary_line(trained):
    _, model_path, out, _ = trained
    lines = out.strip().splitlines()
    header = next(line for line in lines if line.startswith("Training "))
    assert header.startswith("Training tutorial_cnn on fashion-mnist: 160 images, validating on 100 test images; "
                               "batch 16, Adam lr 0.01, impl ")
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [e.split(" - ")[:2] for e in epochs] == [["Epoch 1/2", "10/10"], ["Epoch 2/2", "10/10"]]
    assert all("val_accuracy: " in e for e in epochs)
    assert f"Saved the model to {model_path}" in lines
    summary = summary_of(out)
    assert summary["images"] == "320"  # 160 images x 2 epochs
    assert (summary["model"], summary["dataset"]) == ("tutorial_cnn", "fashion-mnist")
    assert summary["impl"] == registry.resolve("conv2d", "auto")
    assert int(summary["threads"]) == parallel.thread_policy()[1]
    seconds, rate = float(summary["seconds"]), int(summary["rate"].replace(",", ""))
    assert 0 < seconds and 320 / (seconds + 0.005) - 1 <= rate <= 320 / max(seconds - 0.005, 1e-9) + 1
    last_val = float(re.search(r"val_accuracy: (\d\.\d{4})", epochs[-1])[1])
    assert float(summary["accuracy"]) == last_val
    assert last_val >= 0.8  # the bars are easy: the model did learn


def test_evaluate_reports_the_trained_accuracy(trained, capsys):
    data, model_path, out, _ = trained
    code, stdout, err = run(capsys, "evaluate", model_path, "--data-dir", data, "--dataset", "fashion-mnist")
    assert code == 0, err
    match = re.fullmatch(r"loss (\d+\.\d{4}) \| accuracy (\d\.\d{4}) \| 100 test images of fashion-mnist\n", stdout)
    assert match, stdout
    assert match[2] == summary_of(out)["accuracy"]
    last_val_loss = float(re.findall(r"val_loss: (\S+)", out)[-1])  # the test set is the validation set
    assert float(match[1]) == pytest.approx(last_val_loss, abs=5e-5)


def test_predict_idx_file_prints_class_name_and_probability(trained, capsys, tmp_path):
    data, model_path, _, (x_test, y_test) = trained
    images = tmp_path / "five-idx3-ubyte"
    datasets.write_idx(images, x_test[:5])
    code, out, err = run(capsys, "predict", model_path, images, "--dataset", "fashion-mnist", "--top", "2")
    assert code == 0, err
    probs = load_model(model_path).predict(x_test[:5].astype(np.float32)[..., None] / 255)
    names = datasets.CLASS_NAMES["fashion-mnist"]
    lines = out.splitlines()
    assert len(lines) == 5
    for i, (line, row) in enumerate(zip(lines, probs)):
        first, second = np.argsort(-row, kind="stable")[:2]
        assert line == (f"{images}[{i}]: {first} {names[first]} ({row[first]:.4f}), "
                        f"{second} {names[second]} ({row[second]:.4f})")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_predict_picture_dark_on_light_is_inverted(trained, capsys, tmp_path, suffix):
    Image = pytest.importorskip("PIL.Image")
    _, model_path, _, _ = trained
    labels = [3, 7]
    pictures = bar_images(labels, np.random.default_rng(5), dark_on_light=True)
    paths = []
    for k, picture in zip(labels, pictures):
        path = tmp_path / f"bar{k}{suffix}"
        Image.fromarray(picture).resize((56, 56)).save(path)  # resized back to 28x28 by predict
        paths.append(path)
    code, out, err = run(capsys, "predict", model_path, *paths)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    for k, path, line in zip(labels, paths, lines):
        # no --dataset: the class names come from the dataset recorded in the model file
        name = re.escape(datasets.CLASS_NAMES["fashion-mnist"][k])
        assert re.fullmatch(rf"{re.escape(str(path))} \(inverted\): {k} {name} \(\d\.\d{{4}}\)", line), line


def test_evaluate_and_predict_use_the_recorded_dataset(trained, capsys, tmp_path):
    data, model_path, _, (x_test, _) = trained
    model = load_model(model_path)
    assert model.metadata["dataset"] == "fashion-mnist"
    model.metadata["dataset"] = "kmnist"  # the default is fashion-mnist: record another one
    relabeled = model.save(tmp_path / "kmnist_model.npz")
    code, out, err = run(capsys, "evaluate", relabeled, "--data-dir", data)
    assert code == 0, err
    assert out.endswith("| 100 test images of kmnist\n")
    images = tmp_path / "one-idx3-ubyte.gz"
    datasets.write_idx(images, x_test[:1])
    code, out, err = run(capsys, "predict", model_path, images)
    assert code == 0, err
    k = int(re.fullmatch(rf"{re.escape(str(images))}\[0\]: (\d) (.+) \(\d\.\d{{4}}\)\n", out)[1])
    assert out.split(": ", 1)[1].startswith(f"{k} {datasets.CLASS_NAMES['fashion-mnist'][k]} (")
    code, out, err = run(capsys, "predict", model_path, images, "--dataset", "kmnist")  # --dataset wins
    assert code == 0, err
    assert out.split(": ", 1)[1].startswith(f"{k} {datasets.CLASS_NAMES['kmnist'][k]} (")


def test_train_mnist_from_data_dir_with_mnist_file_names(capsys, tmp_path):
    write_dataset(tmp_path / "mnist", gz=False)  # DIR/mnist/, uncompressed names
    code, out, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path, "--limit", "64",
                         "--batch-size", "32", "--verbose", "0")
    assert code == 0, err
    assert out.count("\n") == 1  # verbose 0: only the summary line
    summary = summary_of(out)
    assert (summary["model"], summary["dataset"], summary["images"]) == ("mnist_cnn", "mnist", "64")


def test_train_seed_impl_and_threads_are_honoured(capsys, tmp_path):
    write_dataset(tmp_path / "data")
    weights = {}
    for run_name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, out, err = run(capsys, "train", "--data-dir", tmp_path / "data", "--model", "tutorial_cnn",
                             "--limit", "64", "--batch-size", "16", "--seed", seed, "--impl", "numpy",
                             "--threads", "1", "--save", tmp_path / f"{run_name}.npz", "--verbose", "0")
        assert code == 0, err
        summary = summary_of(out)
        assert (summary["impl"], summary["threads"]) == ("numpy", "1")
        model = load_model(tmp_path / f"{run_name}.npz")
        assert {layer.resolved_impl for layer in model.layers} == {"numpy"}
        weights[run_name] = model.get_weights()
    assert all(np.array_equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(np.array_equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_train_plot_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    write_dataset(tmp_path / "data")
    curves = tmp_path / "curves.png"
    code, out, err = run(capsys, "train", "--data-dir", tmp_path / "data", "--model", "tutorial_cnn",
                         "--limit", "64", "--epochs", "2", "--plot", curves, "--verbose", "0")
    assert code == 0, err
    assert f"Wrote the training curves to {curves}" in out
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_plot_filters_of_a_model(tmp_path):
    pytest.importorskip("matplotlib")
    from fastcnn import models
    from fastcnn.plot import plot_filters, plot_history

    path = plot_filters(models.mnist_cnn(seed=0), tmp_path / "filters.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no Conv2D layer"):
        plot_filters(object(), tmp_path / "none.png")
    with pytest.raises(ValueError, match="records no loss or accuracy"):
        plot_history({"loss": []}, tmp_path / "empty.png")


# -- user errors: one message, no traceback -------------------------------------------------
def corrupt_images(directory):
    write_dataset(directory)
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"<html>404 Not Found</html>")


def not_a_model(path):
    path.write_text("this is not a model\n")


@pytest.mark.parametrize("argv, setup, code, message", [
    (["train", "--data-dir", "{tmp}/nowhere"], None, 1, "--data-dir {tmp}/nowhere: no such directory"),
    (["train", "--data-dir", "{tmp}/data"], lambda tmp: (tmp / "data").mkdir(), 1,
     "--data-dir {tmp}/data does not hold the fashion-mnist dataset: missing train-images-idx3-ubyte.gz, "
     "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"),
    (["train", "--data-dir", "{tmp}/data"], lambda tmp: corrupt_images(tmp / "data"), 1,
     "{tmp}/data/train-images-idx3-ubyte.gz: not a gzip file"),
    (["evaluate", "{tmp}/missing.npz"], None, 1, "model file {tmp}/missing.npz: no such file"),
    (["evaluate", "{tmp}/m.npz"], lambda tmp: not_a_model(tmp / "m.npz"), 1, "is not a fastcnn model file"),
    (["predict", "{tmp}/m.npz", "{tmp}/nothing.png"], None, 1, "{tmp}/nothing.png: no such file"),
    (["train", "--epochs", "0"], None, 2,
     "argument --epochs: must be a positive integer, received '0' (see 'fastcnn train --help')"),
    (["train", "--model", "resnet"], None, 2, "argument --model: invalid choice: 'resnet'"),
    (["train", "--threads", "-1"], None, 2, "argument --threads: must be a positive integer, received '-1'"),
    (["train", "--threads", "100000"], None, 2, "argument --threads: at most "),
    (["train", "--lr", "nan"], None, 2, "argument --lr: must be a positive number, received 'nan'"),
    (["train", "--save", "{tmp}/no/dir/m.npz"], None, 1,
     "--save {tmp}/no/dir/m.npz: directory {tmp}/no/dir does not exist"),
    (["bench", "--from-json", "{tmp}/b.json"], lambda tmp: (tmp / "b.json").write_text("[]"), 1,
     "not a pytest-benchmark JSON file"),
    ([], None, 2, "choose a command: train, evaluate, predict, bench, plans or export"),
])
def test_user_errors_print_one_message(capsys, tmp_path, argv, setup, code, message):
    if setup is not None:
        setup(tmp_path)
    status, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert status == code
    assert err.startswith("fastcnn: error: ")
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err and out == ""


def test_predict_unreadable_file_is_one_message(capsys, tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "notes.txt").write_text("hello")
    code, out, err = run(capsys, "predict", tmp_path / "m.npz", tmp_path / "notes.txt")
    assert (code, out) == (1, "")
    assert err.startswith(f"fastcnn: error: {tmp_path}/notes.txt: not an IDX file nor an image Pillow can read (")
    assert err.count("\n") == 1


def test_missing_pillow_is_one_message(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now raises ImportError
    (tmp_path / "digit.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, _, err = run(capsys, "predict", tmp_path / "m.npz", tmp_path / "digit.png")
    assert code == 1
    assert err == ("fastcnn: error: reading PNG/JPEG images needs Pillow, which is not installed; install it "
                   "with: pip install 'fastcnn[image]' (or: pip install pillow). IDX files need no extra package.\n")


def test_missing_matplotlib_fails_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run(capsys, "train", "--data-dir", tmp_path / "nowhere", "--plot", tmp_path / "c.png")
    assert code == 1 and out == ""
    assert err.startswith("fastcnn: error: --plot: plotting needs matplotlib, which is not installed; "
                          "install it with: pip install 'fastcnn[plot]'")


def test_keyboard_interrupt_exits_130(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load", interrupted)
    write_dataset(tmp_path / "data")
    code, _, err = run(capsys, "train", "--data-dir", tmp_path / "data")
    assert code == 130
    assert err.strip() == "fastcnn: interrupted"


# -- bench ----------------------------------------------------------------------------------
def test_bench_from_json_renders_markdown(capsys, tmp_path):
    def bench(group, impl, median):
        return {"group": group, "name": f"test_{group}[{impl}]", "stats": {"median": median, "rounds": 5},
                "extra_info": {"kind": "op", "impl": impl, "gflop": 0.01, "gemm_like": True}}

    report = {"datetime": "2025-01-02T03:04:05", "machine_info": {"fastcnn": {"cpu_model": "Test CPU", "cores": 2}},
              "benchmarks": [bench("conv2d", "numpy", 0.002), bench("conv2d", "numba", 0.001)]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    code, out, err = run(capsys, "bench", "--from-json", path, "--markdown")
    assert code == 0, err
    assert out.startswith("## Performance\n")
    assert "Measured on 2025-01-02 on Test CPU, 2 cores" in out
    assert "| conv2d | NumPy | 2 ms | baseline | 5 | — |" in out
    assert "|  | Numba | 1 ms | 2× vs NumPy | 10 | — |" in out


def test_quick_bench_prints_both_tables(capsys, monkeypatch):
    monkeypatch.setattr(cli, "REFERENCE_BUDGET", 0.02)  # keep the slow reference convs out
    monkeypatch.setattr(cli, "_median_seconds", lambda fn: (fn(), 1e-3)[1])
    monkeypatch.setattr(cli, "_train_images_per_second",
                        lambda preset, impl: {"numpy": 1000.0, "numba": 2500.0}[impl])
    code, out, err = run(capsys, "bench", "--batch", "2", "--preset", "tutorial_cnn", "--markdown")
    assert code == 0, err
    assert "### Ops of mnist_cnn, batch 2: forward + backward, median time per call" in out
    # Every op mnist_cnn's layers run (but Flatten), then its loss: (op, input) rows in order.
    rows = re.findall(r"^\| ([^|]+?) \| (\(2,[\d,]+\)) \|", out, re.M)
    assert rows == [
        ("conv 3x3, 1->32", "(2,28,28,1)"), ("relu", "(2,26,26,32)"),
        ("conv 3x3, 32->64", "(2,26,26,32)"), ("relu", "(2,24,24,64)"), ("max pool 2x2", "(2,24,24,64)"),
        ("dropout 0.25", "(2,12,12,64)"), ("dense 9216->128", "(2,9216)"), ("relu", "(2,128)"),
        ("dropout 0.5", "(2,128)"), ("dense 128->10", "(2,128)"), ("softmax cross-entropy", "(2,10)"),
    ]
    assert re.search(r"\| conv 3x3, 32->64 \| \(2,26,26,32\) \| skipped \(\d\) \| 1 ms \| 1 ms \| 1\.00x \|", out)
    assert "| tutorial_cnn | 1,000 | 2,500 | 2.50x |" in out


def test_evaluate_and_predict_a_saved_functional_model(capsys, tmp_path):
    """resnet_mini (a functional Model with BatchNormalization) saved, then evaluated and used by the CLI."""
    from fastcnn import models

    data = tmp_path / "data"
    splits = write_dataset(data)
    x_test, y_test = splits["t10k"]
    model = models.resnet_mini(seed=0)
    model.train_on_batch(x_test[:8], y_test[:8])  # moving statistics away from 0 and 1
    path = model.save(tmp_path / "resnet.npz")
    code, out, err = run(capsys, "evaluate", path, "--data-dir", data, "--dataset", "fashion-mnist")
    assert code == 0, err
    logs = model.evaluate(x_test, y_test, batch_size=256)  # the CLI's default batch
    assert out == (f"loss {logs['loss']:.4f} | accuracy {logs['accuracy']:.4f} | "
                   f"100 test images of fashion-mnist\n")
    images = tmp_path / "two-idx3-ubyte"
    datasets.write_idx(images, x_test[:2])
    code, out, err = run(capsys, "predict", path, images, "--dataset", "fashion-mnist")
    assert code == 0, err
    probs = model.predict(x_test[:2])
    for i, line in enumerate(out.splitlines()):
        k = int(np.argmax(probs[i]))
        assert line.startswith(f"{images}[{i}]: {k} ") and line.endswith(f"({probs[i, k]:.4f})")
