"""The ``fastcnn`` command (also ``python -m fastcnn``): train, evaluate, predict, bench, plans, export.

    fastcnn train --dataset fashion-mnist --model mnist_cnn --epochs 1 --save m.npz
    fastcnn evaluate m.npz
    fastcnn predict m.npz shoe.png digits-idx3-ubyte.gz --top 3
    fastcnn bench
    fastcnn bench --from-json bench.json --markdown
    fastcnn plans [--forget]
    fastcnn export m.npz m.onnx

Every mistake a user can make (a missing or corrupt file, a bad flag value, a
missing optional package) ends with one message on stderr, ``fastcnn: error:
...``, and exit status 2 for a wrong command line or 1 for anything else;
Ctrl-C exits with 130. Other exceptions are bugs and keep their traceback.

:func:`main` takes the arguments as a list and returns the exit status, so the
command runs in-process in tests: ``fastcnn.cli.main(["train", "--limit", "200"])``.
"""

import argparse
import contextlib
import io
import json
import math
import os
import re
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np

import fastcnn
from fastcnn import datasets, models, optim, registry
from fastcnn._checks import first_non_finite
from fastcnn._opcases import preset_op_calls
from fastcnn.callbacks import Callback
from fastcnn.errors import FastCNNError

__all__ = ["main", "build_parser", "read_images", "read_image_file", "is_dark_on_light"]

PROG = "fastcnn"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DEFAULT_DATASET = "fashion-mnist"
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
#: IDX type codes (the third byte of an IDX file; the first two are zero).
_IDX_TYPE_CODES = (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)
#: ``predict --invert`` choices.
INVERT_CHOICES = ("auto", "yes", "no")
#: A picture whose outermost ring of pixels is lighter than this on average (in [0, 1]) is
#: dark on light, and inverted under ``--invert auto``. The largest ring mean among the 70,000
#: Fashion-MNIST images is 0.42 (train) and 0.37 (test); a light background gives about 1.
BORDER_THRESHOLD = 0.5
#: Larger pictures are refused before they are decoded (4096 x 4096; Pillow's own bomb limit is 89 M).
MAX_PICTURE_PIXELS = 1 << 24
#: No image codec packs more pixels than this into one byte of file (deflate peaks near 1032 for a
#: blank grayscale PNG, JPEG near 100); a header claiming more describes data the file cannot hold,
#: and is refused before the decoder allocates the whole picture.
MAX_PIXELS_PER_BYTE = 2048
#: Larger picture files are refused before they are read.
MAX_PICTURE_BYTES = 64 << 20


class CommandError(Exception):
    """A user error: printed as ``fastcnn: error: <message>``, exit status 1."""

    exit_code = EXIT_ERROR


class UsageError(CommandError):
    """A wrong command line: exit status 2."""

    exit_code = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command's ``--help``."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- argument types -------------------------------------------------------------------------
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, received {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, received {text!r}")
    return value


# -- the parser -----------------------------------------------------------------------------
def build_parser():
    """The ``fastcnn`` argument parser, one subcommand per action."""
    parser = _Parser(
        prog=PROG,
        description="Train, evaluate and benchmark convolutional networks on the CPU (NumPy + Numba).",
        epilog="Run 'fastcnn COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"fastcnn {fastcnn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    presets = tuple(models.PRESETS)
    impls = ("auto",) + registry.IMPLS

    train = commands.add_parser(
        "train", help="train a preset network and report test accuracy and images/s",
        description="Train a preset network on an MNIST-format dataset, validating on its test set "
                    "after every epoch. The last line sums up: test accuracy, training images/s "
                    "(data loading and evaluation excluded), model, dataset, implementation, threads.",
    )
    _add_data_arguments(train, default=DEFAULT_DATASET)
    train.add_argument("--model", choices=presets, default="mnist_cnn", help="preset (default: %(default)s)")
    train.add_argument("--epochs", type=_positive_int,
                       help="default: the preset's recipe (3 for resnet_mini), else 1")
    train.add_argument("--batch-size", type=_positive_int,
                       help="default: the preset's recipe (128 for resnet_mini), else 64")
    train.add_argument("--optimizer", choices=tuple(optim.OPTIMIZERS),
                       help="default: the preset's (adam; sgd for tutorial_cnn)")
    train.add_argument("--lr", type=_positive_float, help="learning rate (default: the preset's)")
    train.add_argument("--seed", type=_non_negative_int, default=0,
                       help="weights, shuffling and dropout (default: %(default)s)")
    train.add_argument("--impl", choices=impls, default="auto",
                       help="op implementation (default: auto = numba where registered, else numpy; "
                            "FASTCNN_IMPL overrides auto)")
    _add_threads_argument(train)
    train.add_argument("--save", metavar="PATH", help="write the trained model to PATH (.npz)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2),
                       help="0 silent, 1 progress bar (one line per epoch when not a terminal), "
                            "2 one line per epoch (default: 1)")
    train.add_argument("--limit", type=_positive_int, metavar="N",
                       help="train on the first N training images only (quick runs)")
    train.add_argument("--plot", metavar="PNG", help="draw loss/accuracy curves to PNG (needs matplotlib)")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="save a resumable checkpoint (weights, optimizer and random state) to "
                            "DIR/epoch-NNNN.npz after every epoch, atomically (DIR is created)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in --checkpoint-dir, exactly as an "
                            "uninterrupted run would (same data, batch size and seed; starts from "
                            "epoch 1 when DIR holds none). --epochs is the total, as in fit()")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="loss and accuracy of a saved model on a test set",
        description="Print the loss and accuracy of a saved model on a dataset's test set.",
    )
    evaluate.add_argument("model_path", metavar="MODEL.npz", help="a file written by 'fastcnn train --save'")
    _add_data_arguments(evaluate, default=None)
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="default: %(default)s")
    _add_threads_argument(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="classify PNG/JPEG images or IDX files with a saved model",
        description="Print, per image, the predicted class index, class name and probability. "
                    "PNG/JPEG images (needs Pillow) are converted to 28x28 grayscale in [0, 1] (resized, "
                    "not cropped: keep the object centered in a square picture); MNIST-style data is "
                    "light on dark, so a picture whose border is light (mean of the outermost pixels "
                    "> 0.5: a dark object on a light background) is inverted, and the output says so. "
                    "An IDX file contributes every image it holds. A file that cannot be read is "
                    "reported on its own line; the others are still predicted (exit status 1).",
    )
    predict.add_argument("model_path", metavar="MODEL.npz")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG image or IDX file")
    predict.add_argument("--top", type=_positive_int, default=1, metavar="K",
                         help="print the K most likely classes (default: %(default)s)")
    predict.add_argument("--dataset", choices=datasets.DATASETS,
                         help="name the classes as in this dataset (default: the one recorded in the model)")
    predict.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                         help="invert PNG/JPEG pictures: auto = when their border is light, yes = always, "
                              "no = never (default: %(default)s; IDX files are never inverted)")
    _add_threads_argument(predict)
    predict.set_defaults(run=cmd_predict)

    bench = commands.add_parser(
        "bench", help="a quick speed table: reference vs numpy vs numba",
        description=f"Time each op of {OPS_PRESET} (forward + backward, small batch) under every "
                    "implementation, and training images/s of each preset with numpy vs numba. "
                    "About a minute (the first run also compiles the Numba kernels). "
                    "For the full suite: pytest benchmarks --benchmark-only.",
    )
    bench.add_argument("--from-json", metavar="FILE",
                       help="render a pytest-benchmark JSON file (--benchmark-json) instead of timing")
    bench.add_argument("--markdown", action="store_true", help="print Markdown tables")
    bench.add_argument("--batch", type=_positive_int, default=8, help="batch of the op timings (default: 8)")
    bench.add_argument("--preset", action="append", choices=presets, dest="presets",
                       help="time only this preset end to end (repeatable; default: all)")
    _add_threads_argument(bench)
    bench.set_defaults(run=cmd_bench)

    plans = commands.add_parser(
        "plans", help="the kernel variants the planner chose on this machine (or forget them)",
        description="List the plan file's choices for this machine (FASTCNN_PLAN=measure times the "
                    "kernel variants of each layer geometry once and keeps the fastest): geometry, "
                    "chosen variant, and the time of each variant. --forget removes them, so the "
                    "next run plans again (for example after the machine was busy while planning).",
    )
    plans.add_argument("--forget", action="store_true", help="remove this machine's plans from the plan file")
    plans.set_defaults(run=cmd_plans)

    export = commands.add_parser(
        "export", help="write a saved model as an ONNX graph (needs onnx)",
        description="Write a saved model as a standard ONNX graph: input 'input', NHWC float32 images "
                    "(N, H, W, C) as predict takes them; output 'probabilities' (N, K). ONNX Runtime "
                    "and other ONNX tools run it. Needs: pip install 'fastcnn[onnx]'.",
    )
    export.add_argument("model_path", metavar="MODEL.npz", help="a file written by 'fastcnn train --save'")
    export.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")
    export.add_argument("--batch-size", type=_positive_int, metavar="N",
                        help="fix the batch axis to N (default: dynamic)")
    export.add_argument("--opset", type=_positive_int, metavar="K", help="ONNX opset (default: 17)")
    export.set_defaults(run=cmd_export)
    return parser


def _add_data_arguments(parser, default):
    default_text = default or f"the one recorded in the model, else {DEFAULT_DATASET}"
    parser.add_argument("--dataset", choices=datasets.DATASETS, default=default,
                        help=f"default: {default_text}")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="a directory holding the four IDX files (default: $FASTCNN_DATA, the "
                             "cache, system copies, then a download)")


def _add_threads_argument(parser):
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads for Numba kernels and BLAS, fixed (default: adaptive, at most the "
                             "usable cores: affinity and cgroup quota)")


# -- shared steps ---------------------------------------------------------------------------
def _set_threads(threads):
    """Apply ``--threads``; returns the number of threads in use (adaptive: the most it uses)."""
    from fastcnn import parallel

    if threads is not None:
        limit = parallel.max_num_threads()
        if threads > limit:
            raise UsageError(
                f"argument --threads: at most {limit} threads are available "
                f"(NUMBA_NUM_THREADS), received {threads}"
            )
        parallel.set_num_threads(threads)
        return parallel.get_num_threads()
    return parallel.thread_policy()[1]  # adaptive: at most this many (README, "Threads on a busy machine")


def _missing_files(directory):
    """The dataset files (see ``datasets.FILES``) in neither gzip-compressed nor plain form in ``directory``."""
    return [f for f in datasets.FILES
            if not (directory / f).is_file() and not (directory / f.removesuffix(".gz")).is_file()]


def _load_data(name, data_dir):
    """``datasets.load``; an explicit ``--data-dir`` must hold the files (no fallback, no download)."""
    if data_dir is None:
        return datasets.load(name)
    directory = Path(data_dir).expanduser()
    if not directory.exists():
        raise CommandError(f"--data-dir {directory}: no such directory")
    if not directory.is_dir():
        raise CommandError(f"--data-dir {directory}: not a directory")
    for candidate in (directory, directory / name):
        if not _missing_files(candidate):
            return datasets.load(name, path=candidate, download=False)
    raise CommandError(
        f"--data-dir {directory} does not hold the {name} dataset: missing "
        f"{', '.join(_missing_files(directory))} (the four files, gzip-compressed or not, "
        f"belong in {directory} or {directory / name})"
    )


def _check_writable(path, flag):
    """Fail before training, not after, when ``path`` cannot be written."""
    parent = Path(path).expanduser().absolute().parent
    if not parent.is_dir():
        raise CommandError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CommandError(f"{flag} {path}: directory {parent} is not writable")


def _load_model(path):
    from fastcnn.model import load_model

    if not os.path.exists(path) and not os.path.exists(f"{path}.npz"):
        raise CommandError(f"model file {path}: no such file")
    return load_model(path)


def _check_mnist_shaped(model, path):
    if tuple(model.input_shape) != IMAGE_SHAPE or model.output_shape != (NUM_CLASSES,):
        raise CommandError(
            f"{path}: the model takes inputs {(None, *model.input_shape)} and outputs {(None, *model.output_shape)}; "
            f"the datasets are 28x28 grayscale images (None, 28, 28, 1) of 10 classes"
        )


def _recorded_dataset(model):
    """The dataset the model was trained on, when its file records it."""
    name = model.metadata.get("dataset")
    return name if name in datasets.DATASETS else None


def _resolved_impl(impl):
    """What ``--impl`` means for the hot op, after ``auto`` and ``FASTCNN_IMPL``."""
    try:
        return registry.resolve("conv2d", impl)
    except ValueError as error:  # a bad FASTCNN_IMPL
        raise CommandError(str(error)) from None


def _plural(n, word):
    return f"{n:,} {word}" + ("" if n == 1 else "s")


# -- train ----------------------------------------------------------------------------------
class TrainingTimer(Callback):
    """Seconds and images of the training batches only: each epoch is timed from its start
    to the end of its last batch, so the validation pass after it is not counted."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self.images = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._epoch_seconds = 0.0
        self._epoch_images = 0

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_seconds = time.perf_counter() - self._start
        self._epoch_images = min((batch + 1) * self.params["batch_size"], self.params["samples"])

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self._epoch_seconds
        self.images += self._epoch_images


def _configure_optimizer(model, name, lr):
    """Recompile with ``--optimizer`` / ``--lr`` when given; keeps the preset's other settings."""
    if name is None and lr is None:
        return
    current = model.optimizer
    same_kind = name is None or type(current) is optim.OPTIMIZERS[name]
    config = current.get_config() if same_kind else {}
    if lr is not None:
        config["learning_rate"] = lr
    optimizer = type(current).from_config(config) if same_kind else optim.get(name, **config)
    model.compile(optimizer, loss=model.loss, metrics=model.metrics, loss_impl=model.loss_impl)


def _warm_up(preset, impl, verbose):
    """Compile (or load from Numba's disk cache) the kernels the preset uses, so that the
    training time measures training: one step of a throwaway copy on two blank images."""
    start = time.perf_counter()
    model = models.PRESETS[preset](seed=0, impl=impl)
    model.train_on_batch(np.zeros((2, *IMAGE_SHAPE), dtype=np.float32), np.zeros(2, dtype=np.int64))
    seconds = time.perf_counter() - start
    if verbose and seconds > 1.0:
        print(f"Numba kernels ready in {seconds:.1f} s (compiled once, then cached on disk; not timed)")


def _describe_optimizer(optimizer):
    rate = f"{optimizer.lr:g}" if optimizer.schedule is None else repr(optimizer.schedule)
    return f"{type(optimizer).__name__} lr {rate}"


#: Checkpoint file names in ``--checkpoint-dir``: the 1-based number of completed epochs.
CHECKPOINT_PATTERN = "epoch-{epoch:04d}.npz"
_CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})\.npz$")
#: Settings a resumed run must share with the run that wrote the checkpoint (exactness).
_RUN_SETTINGS = ("model", "dataset", "batch_size", "limit", "seed")


def _checkpoints(directory):
    """``{completed epochs: path}`` of the checkpoints in ``directory``."""
    found = {}
    if directory.is_dir():
        for entry in directory.iterdir():
            match = _CHECKPOINT_NAME.match(entry.name)
            if match and entry.is_file():
                found[int(match.group(1))] = entry
    return found


def _prepare_checkpoints(args):
    """Check ``--checkpoint-dir`` / ``--resume``; returns ``(directory or None, newest checkpoint or None)``."""
    if args.checkpoint_dir is None:
        if args.resume:
            raise UsageError("argument --resume: needs --checkpoint-dir DIR (where the checkpoints are)")
        return None, None
    directory = Path(args.checkpoint_dir).expanduser()
    if directory.exists() and not directory.is_dir():
        raise CommandError(f"--checkpoint-dir {directory}: not a directory")
    found = _checkpoints(directory)
    if found and not args.resume:
        newest = found[max(found)]
        raise CommandError(f"--checkpoint-dir {directory} already holds checkpoints (the newest is {newest.name}); "
                           f"pass --resume to continue that run, or choose another directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"--checkpoint-dir {directory}: cannot create it: {error.strerror or error}") from None
    if not os.access(directory, os.W_OK):
        raise CommandError(f"--checkpoint-dir {directory}: not writable")
    return directory, (found[max(found)] if found else None)


def _resume(path, args, settings):
    """The model of checkpoint ``path`` and its completed epochs, after checking it belongs to this run."""
    model = _load_model(str(path))
    saved = model.metadata.get("run", {})
    different = [f"--{key.replace('_', '-')} {saved.get(key)!r} in the checkpoint, {settings[key]!r} now"
                 for key in _RUN_SETTINGS if saved.get(key) != settings[key]]
    if different:
        raise CommandError(f"--resume: {path} was written by another run: {'; '.join(different)}")
    if args.optimizer is not None or args.lr is not None:
        raise CommandError("--resume: the optimizer and learning rate come from the checkpoint; "
                           "drop --optimizer/--lr")
    return model, int(_CHECKPOINT_NAME.match(path.name).group(1))


def cmd_train(args):
    """``fastcnn train``: fit a preset, print progress and one summary line.

    Under ``mpiexec -n N`` (N > 1, seen in the launcher's environment) the preset
    trains data-parallel on the N processes (:mod:`fastcnn.distributed`): rank 0
    prints and writes the files, an error on any rank ends them all.
    """
    if not fastcnn.distributed.launched():
        return _train(args, distributed=False)
    fastcnn.distributed.init(threads=args.threads)  # default: the cores / the ranks on this machine
    quiet = contextlib.nullcontext() if fastcnn.distributed.is_root() else contextlib.redirect_stdout(io.StringIO())
    with fastcnn.distributed.abort_on_error(brief=(CommandError, FastCNNError, OSError, KeyboardInterrupt)), quiet:
        return _train(args, distributed=True)


def _train(args, distributed):
    checkpoint_dir, newest = _prepare_checkpoints(args)
    if args.save:
        _check_writable(args.save, "--save")
    if args.plot:
        _check_writable(args.plot, "--plot")
        _require_matplotlib()
    impl = _resolved_impl(args.impl)
    threads = _set_threads(args.threads)
    verbose = 1 if args.verbose is None else args.verbose

    (x_train, y_train), (x_test, y_test) = _load_data(args.dataset, args.data_dir)
    if args.limit is not None:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    recipe = models.recipe(args.model)
    args.epochs = recipe["epochs"] if args.epochs is None else args.epochs
    args.batch_size = recipe["batch_size"] if args.batch_size is None else args.batch_size
    settings = {"model": args.model, "dataset": args.dataset, "batch_size": args.batch_size,
                "limit": args.limit, "seed": args.seed}
    initial_epoch = 0
    if newest is not None:
        model, initial_epoch = _resume(newest, args, settings)
    else:
        model = models.PRESETS[args.model](seed=args.seed, impl=args.impl)
        if recipe["learning_rate"] is not None and args.optimizer is None and args.lr is None:
            steps = args.epochs * -(-len(x_train) // args.batch_size)  # the schedule spans the whole run
            model.optimizer.learning_rate = recipe["learning_rate"](steps)
        _configure_optimizer(model, args.optimizer, args.lr)
    model.metadata["dataset"] = args.dataset  # saved with the model: evaluate/predict read it back
    model.metadata["run"] = settings  # --resume checks a checkpoint against these
    callbacks = []
    if checkpoint_dir is not None:
        from fastcnn.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(checkpoint_dir / CHECKPOINT_PATTERN))

    if impl == "numba":
        _warm_up(args.model, args.impl, verbose)
    if verbose and newest is not None:
        print(f"Resuming from {newest}: {_plural(initial_epoch, 'epoch')} of {args.epochs} done")
    if verbose:
        print(f"Training {args.model} on {args.dataset}: {_plural(len(x_train), 'image')}, validating on "
              f"{_plural(len(x_test), 'test image')}; batch {args.batch_size}, "
              f"{_describe_optimizer(model.optimizer)}, impl {impl}, {_plural(threads, 'thread')}"
              + (f" x {_plural(fastcnn.distributed.size(), 'rank')}" if distributed else ""))
    timer = TrainingTimer()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test), callbacks=[timer] + callbacks, verbose=verbose,
                        initial_epoch=initial_epoch, distributed=distributed)
    accuracy = history.history.get("val_accuracy", [None])[-1]
    if accuracy is None:  # no epoch finished its validation
        accuracy = model.evaluate(x_test, y_test, batch_size=256, distributed=distributed)["accuracy"]
    if distributed and not fastcnn.distributed.is_root():
        return 0  # rank 0 writes the files and the last line

    if args.save:
        print(f"Saved the model to {model.save(args.save)}")
    if args.plot:
        from fastcnn.plot import plot_history

        written = plot_history(history, args.plot, title=f"{args.model} on {args.dataset}")
        print(f"Wrote the training curves to {written}")
    rate = timer.images / timer.seconds if timer.seconds > 0 else 0.0
    seconds = f"{timer.seconds:.1f}" if timer.seconds >= 10 else f"{timer.seconds:.2f}"
    print(f"test accuracy {accuracy:.4f} | {timer.images:,} images in {seconds} s "
          f"({rate:,.0f} images/s) | {args.model} on {args.dataset}, impl {impl}, {_plural(threads, 'thread')}"
          + (f" x {_plural(fastcnn.distributed.size(), 'rank')}" if distributed else ""))
    return 0


def _require_matplotlib():
    from fastcnn.plot import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as error:
        raise CommandError(f"--plot: {error}") from None


# -- evaluate -------------------------------------------------------------------------------
def cmd_evaluate(args):
    """``fastcnn evaluate MODEL.npz``: loss and accuracy on the test set."""
    model = _load_model(args.model_path)
    _check_mnist_shaped(model, args.model_path)
    name = args.dataset or _recorded_dataset(model) or DEFAULT_DATASET
    _set_threads(args.threads)
    _, (x_test, y_test) = _load_data(name, args.data_dir)
    logs = model.evaluate(x_test, y_test, batch_size=args.batch_size)
    print(f"loss {logs['loss']:.4f} | accuracy {logs['accuracy']:.4f} | "
          f"{_plural(len(x_test), 'test image')} of {name}")
    return 0


# -- predict --------------------------------------------------------------------------------
def _require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise CommandError(
            "reading PNG/JPEG images needs Pillow, which is not installed; install it with: "
            "pip install 'fastcnn[image]' (or: pip install pillow). IDX files need no extra package."
        ) from None
    return Image


def _is_idx(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":  # gzip: IDX files are the only compressed input we read
        return True
    return len(head) == 4 and head[:2] == b"\x00\x00" and head[2] in _IDX_TYPE_CODES and head[3] > 0


def _read_idx_images(path):
    """Every image of an IDX file as float32 ``(N, 28, 28, 1)`` in [0, 1]."""
    array = datasets.read_idx(path)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    elif array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE[:2] or array.shape[0] == 0:
        raise CommandError(f"{path}: expected 28x28 images, shape (N, 28, 28); the IDX file holds shape {array.shape}")
    if array.dtype == np.uint8:
        x = array.astype(np.float32) / np.float32(255)
    elif array.dtype.kind == "f":
        x = array.astype(np.float32)
        bad = first_non_finite(x)
        if bad is not None:
            raise CommandError(f"{path}: image {bad} holds NaN or infinite pixels (as float32)")
    else:
        raise CommandError(f"{path}: expected uint8 (0..255) or float (0..1) pixels; the IDX file holds {array.dtype}")
    return x[..., None]  # (N, 28, 28, 1)


def is_dark_on_light(x):
    """Whether the grayscale picture ``x`` (H, W) in [0, 1] is a dark object on a light background:
    the mean of its outermost ring of pixels exceeds :data:`BORDER_THRESHOLD`. (The mean of the whole
    picture would invert light objects that fill the frame: 548 of Fashion-MNIST's test images.)"""
    ring = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    return bool(ring.mean() > BORDER_THRESHOLD)


def _read_picture(path, invert="auto"):
    """One PNG/JPEG/... image as float32 ``(1, 28, 28, 1)`` light-on-dark; also whether it was inverted."""
    Image = _require_pillow()
    size = os.path.getsize(path)
    if size > MAX_PICTURE_BYTES:
        raise CommandError(f"{path}: a {size:,}-byte picture is larger than the {MAX_PICTURE_BYTES:,} bytes "
                           f"predict reads; shrink it first")
    with open(path, "rb") as f:
        # from memory: a crafted chunk length then cannot make the decoder's file reads
        # allocate more than the file holds (a file read of n bytes allocates n up front)
        data = io.BytesIO(f.read())
    try:
        with Image.open(data) as image:
            pixels = image.width * image.height  # checked before decoding allocates them
            if pixels > MAX_PICTURE_PIXELS:
                raise CommandError(f"{path}: a {image.width}x{image.height} picture is larger than the "
                                   f"{MAX_PICTURE_PIXELS:,} pixels predict reads; shrink it first")
            if pixels > MAX_PIXELS_PER_BYTE * size:
                raise CommandError(f"{path}: its header says {image.width}x{image.height} pixels, more than a "
                                   f"{size:,}-byte file can hold: truncated or corrupt")
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # transparent pixels are background: put the picture on white
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            gray = image.convert("L")
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error, ZeroDivisionError,
            MemoryError, Image.DecompressionBombError) as error:  # what Pillow's decoders raise on bad data
        raise CommandError(f"{path}: not an IDX file nor an image Pillow can read ({error})") from None
    if gray.size != IMAGE_SHAPE[:2]:
        gray = gray.resize(IMAGE_SHAPE[:2], Image.Resampling.LANCZOS)
    x = np.asarray(gray, dtype=np.float32) / np.float32(255)  # (28, 28) in [0, 1]
    inverted = invert == "yes" or (invert == "auto" and is_dark_on_light(x))  # MNIST-style data is light on dark
    if inverted:
        x = np.float32(1) - x
    return x[None, :, :, None], inverted


def read_image_file(path, invert="auto"):
    """One ``predict`` input: ``(x, labels)`` as in :func:`read_images`; a bad file is a ``CommandError``."""
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    try:
        if _is_idx(path):
            x = _read_idx_images(path)
            return x, [f"{path}[{i}]" for i in range(len(x))]
        x, inverted = _read_picture(path, invert)
    except OSError as error:  # unreadable: permissions, a directory, I/O error
        raise CommandError(f"{path}: cannot read: {error.strerror or error}") from None
    except FastCNNError as error:  # DatasetError from the IDX reader, already naming the file
        raise CommandError(str(error)) from None
    return x, [f"{path} (inverted)" if inverted else path]


def read_images(paths, invert="auto"):
    """Read the ``predict`` inputs (the first bad file raises; ``fastcnn predict`` reads each on its own).

    Parameters
    ----------
    paths : list of str
        PNG/JPEG (any format Pillow reads) images and IDX files (gzip-compressed
        or not), told apart by their first bytes.
    invert : "auto", "yes" or "no"
        Invert pictures (not IDX files): when their border is light, always, never.

    Returns
    -------
    x : numpy.ndarray
        float32 ``(N, 28, 28, 1)`` in [0, 1], light on dark.
    labels : list of str
        One per image: the path, with ``[i]`` for the images of an IDX file and
        `` (inverted)`` for pictures that were dark on light.
    """
    batches, labels = [], []
    for path in paths:
        x, names = read_image_file(path, invert)
        batches.append(x)
        labels += names
    return np.concatenate(batches), labels


def cmd_predict(args):
    """``fastcnn predict MODEL.npz IMAGE...``: the most likely classes of each image.

    Every readable file is predicted; each bad one is reported on its own line
    (stderr), and the exit status is then 1.
    """
    batches, labels, failures = [], [], 0
    for path in args.images:
        try:
            x, names = read_image_file(path, args.invert)
        except CommandError as error:
            _error(error)
            failures += 1
            continue
        batches.append(x)
        labels += names
    if not batches:
        return EXIT_ERROR
    x = np.concatenate(batches)
    model = _load_model(args.model_path)
    _check_mnist_shaped(model, args.model_path)
    _set_threads(args.threads)
    name = args.dataset or _recorded_dataset(model)
    names = datasets.CLASS_NAMES[name] if name else None
    probs = model.predict(x, batch_size=256)  # (N, 10)
    top = min(args.top, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]  # (N, top), most likely first
    for label, row, classes in zip(labels, probs, order):
        guesses = [f"{k} {names[k]} ({row[k]:.4f})" if names else f"{k} ({row[k]:.4f})" for k in classes]
        print(f"{label}: {', '.join(guesses)}")
    if failures:
        _error(f"{_plural(failures, 'file')} of {len(args.images)} could not be read (see above); "
               f"the others were predicted")
        return EXIT_ERROR
    return 0


# -- bench ----------------------------------------------------------------------------------
#: A reference call estimated to take longer than this (seconds) is not run.
REFERENCE_BUDGET = 1.0
#: Batch of the end-to-end training timings.
TRAIN_BATCH = 64
#: The preset whose ops the first table times.
OPS_PRESET = "mnist_cnn"


def _op_cases(rng):
    """The op calls of :data:`OPS_PRESET`'s layers and loss, as they run unfused
    (:mod:`fastcnn._opcases`), without Flatten (a reshape: nothing to time):
    ``(op, description, make)``; ``make(N)`` returns ``(args, kwargs)``."""
    return [(call.op, call.description, lambda N, call=call: call.arguments(N, rng))
            for call in preset_op_calls(OPS_PRESET) if call.op != "flatten"]


def _op_step(entry, args, kwargs):
    """A callable running one forward and (when the op has one) one backward pass."""
    out = entry.forward(*args, **kwargs)
    if entry.backward is None:
        return lambda: entry.forward(*args, **kwargs)
    dy = np.ones_like(out[0])

    def step():
        y, cache = entry.forward(*args, **kwargs)
        entry.backward(dy, cache)

    return step


def _median_seconds(fn, min_total=0.2, min_runs=3, max_runs=50):
    """Median wall time of ``fn()`` over at least ``min_runs`` runs and ``min_total`` seconds."""
    times = []
    while len(times) < min_runs or (sum(times) < min_total and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_op(op, impl, make, batch):
    """Seconds per forward+backward call; for the reference ``("skipped", estimate)`` when too slow."""
    entry = registry.get(op, impl)
    if impl == "reference":
        probe = _op_step(entry, *make(1))
        start = time.perf_counter()
        probe()
        estimate = (time.perf_counter() - start) * batch
        if estimate > REFERENCE_BUDGET:
            return ("skipped", estimate)
        step = _op_step(entry, *make(batch))
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    step = _op_step(entry, *make(batch))
    step()  # warm-up: Numba compiles (or loads its cache) on the first call
    return _median_seconds(step)


def _train_images_per_second(preset, impl, budget=1.5):
    """Training throughput of a preset: a warm-up step, then steps for about ``budget`` seconds."""
    model = models.PRESETS[preset](seed=0, impl=impl)
    rng = np.random.default_rng(0)
    x = rng.random((TRAIN_BATCH, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, TRAIN_BATCH)
    model.train_on_batch(x, y)
    steps, seconds = 0, 0.0
    while steps < 2 or (seconds < budget and steps < 30):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        seconds += time.perf_counter() - start
        steps += 1
    return steps * TRAIN_BATCH / seconds


def _format_seconds(seconds):
    for scale, unit in ((1.0, "s"), (1e-3, "ms")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e6:.3g} µs"


def _table(headers, rows, markdown):
    """Rows of strings as aligned text (first column left, the others right) or Markdown."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["--:"] * (len(headers) - 1)) + "|"]
        return lines + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]

    def line(row):
        return "  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])

    return [line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows]


def _speedup(base, other):
    return f"{base / other:.2f}x" if isinstance(base, float) and isinstance(other, float) else "—"


def cmd_bench(args):
    """``fastcnn bench``: the quick speed tables, or a pytest-benchmark JSON rendered as Markdown."""
    if args.from_json:
        return _render_json(args.from_json)
    threads = _set_threads(args.threads)
    import numba

    title = "### " if args.markdown else ""
    print(f"fastcnn bench: NumPy {np.__version__}, Numba {numba.__version__}, "
          f"{_plural(threads, 'thread')} (Numba and BLAS)", flush=True)

    batch = args.batch
    rows, notes = [], []
    for op, description, make in _op_cases(np.random.default_rng(0)):
        impls = registry.implementations(op)
        cells = {}
        for impl in registry.IMPLS:
            if impl not in impls:
                cells[impl] = "—"
                continue
            seconds = _time_op(op, impl, make, batch)
            if isinstance(seconds, tuple):
                notes.append(f"{description}: about {seconds[1]:.1f} s per call")
                cells[impl] = f"skipped ({len(notes)})"
                cells["_" + impl] = None
            else:
                cells[impl] = _format_seconds(seconds)
                cells["_" + impl] = seconds
        rows.append([description, f"({batch},{','.join(str(s) for s in make(1)[0][0].shape[1:])})",
                     cells["reference"], cells["numpy"], cells["numba"],
                     _speedup(cells.get("_numpy"), cells.get("_numba"))])
    print(f"\n{title}Ops of {OPS_PRESET}, batch {batch}: forward + backward, median time per call\n")
    headers = ["op", "input", "reference", "numpy", "numba", "numba vs numpy"]
    print("\n".join(_table(headers, rows, args.markdown)))
    for i, note in enumerate(notes, 1):
        print(f"({i}) reference not run: {note}")

    rows = []
    for preset in args.presets or models.PRESETS:
        rates = {impl: _train_images_per_second(preset, impl) for impl in ("numpy", "numba")}
        rows.append([preset, f"{rates['numpy']:,.0f}", f"{rates['numba']:,.0f}",
                     _speedup(rates["numba"], rates["numpy"])])
    print(f"\n{title}Training images/s, batch {TRAIN_BATCH} (the reference would take minutes per step)\n")
    print("\n".join(_table(["model", "numpy", "numba", "numba vs numpy"], rows, args.markdown)))
    return 0


def _render_json(path):
    from fastcnn.benchreport import render_markdown

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CommandError(f"--from-json {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise CommandError(f"--from-json {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise CommandError(
            f"--from-json {path}: not a pytest-benchmark JSON file (no 'benchmarks' list); "
            f"write one with: pytest benchmarks --benchmark-only --benchmark-json {path}"
        )
    sys.stdout.write(render_markdown(data))
    return 0


# -- plans ----------------------------------------------------------------------------------
def cmd_plans(args):
    """``fastcnn plans [--forget]``: this machine's planned variants, or remove them."""
    from fastcnn import planner as planner_module

    planner = planner_module.default_planner()
    print(f"Plan file: {planner.path}")
    print(f"Machine: {planner.machine}")
    if args.forget:
        print(f"Forgot {planner.forget()} plans of this machine; the next run of each layer shape plans again.")
        return 0
    held = planner.held()
    if not held:
        print("No plans for this machine yet: the first run of a model times its layers' variants "
              "(FASTCNN_PLAN=measure, the default).")
        return 0
    rows = []
    for key in sorted(held):
        entry = held[key] if isinstance(held[key], dict) else {}
        seconds = entry.get("seconds") if isinstance(entry.get("seconds"), dict) else {}
        timed = ", ".join(f"{name} {_format_seconds(t)}" for name, t in sorted(seconds.items(), key=lambda kv: kv[1])
                          if isinstance(t, (int, float)))
        rows.append([key, str(entry.get("choice", "?")), timed or "—"])
    print("\n".join(_table(["geometry", "choice", "timed (fastest first)"], rows, markdown=False)))
    return 0


# -- export ---------------------------------------------------------------------------------
def cmd_export(args):
    """``fastcnn export MODEL.npz OUT.onnx``: the model as an ONNX graph."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CommandError(
            "exporting to ONNX needs the onnx package, which is not installed; install it with: "
            "pip install 'fastcnn[onnx]' (or: pip install onnx onnxruntime)"
        ) from None
    from fastcnn.onnx_export import export_onnx

    _check_writable(args.output, "OUT.onnx")
    model = _load_model(args.model_path)
    try:
        path = export_onnx(model, args.output, batch_size=args.batch_size, opset=args.opset)
    except ValueError as error:  # a bad --opset, a layer with no ONNX conversion
        raise CommandError(str(error)) from None
    batch = args.batch_size if args.batch_size is not None else "N"
    print(f"Wrote {path}: input 'input' {(batch, *model.input_shape)} float32 (NHWC), "
          f"output 'probabilities' {(batch, *model.output_shape)}")
    return 0


# -- entry point ----------------------------------------------------------------------------
def _error(message):
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv=None):
    """Run the ``fastcnn`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help and --version
            return exit_.code or 0
        if args.command is None:
            raise UsageError(f"choose a command: train, evaluate, predict, bench, plans or export "
                             f"(see '{PROG} --help')")
        return args.run(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CommandError as error:
        _error(error)
        return error.exit_code
    except FastCNNError as error:  # DatasetError, CheckpointError, NonFiniteLossError
        _error(error)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `fastcnn predict ... | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as error:  # an unreadable or unwritable file
        where = f"{error.filename}: " if error.filename else ""
        _error(f"{where}{error.strerror or error}")
        return EXIT_ERROR
