"""Safe, atomic, resumable model files: one ``.npz`` of plain arrays.

Members (each an ``.npy`` inside the zip):

- ``__fastcnn__``: uint8 bytes of a UTF-8 JSON description: format and version,
  the architecture (layer type names, ``get_config()``, ``impl``, input_shape,
  dtype, seed; for a functional ``Model`` also its name and ``inputs``: per
  layer, the tensors it reads, 0 for the model input and ``j + 1`` for the
  output of layer ``j < i``), the compile settings (optimizer class and config, a
  learning-rate schedule as ``{"class", "config"}``, loss, metrics), the
  state of every numpy Generator (the model's shuffling Generator and each
  Dropout layer's, so a resumed run continues exactly) and
  ``model.metadata`` (a free-form JSON dict, e.g. the training dataset);
- ``params/layers.<i>.<param>``: the weights;
- ``state/layers.<i>.<name>``: the non-trainable state (BatchNormalization's
  moving statistics);
- ``optimizer/<param name>/<slot>`` and ``optimizer/iterations``: the optimizer
  state (:meth:`fastcnn.optim.Optimizer.state_arrays`).

Loading never unpickles: the file must be a zip whose every member is a plain
numeric ``.npy``; each member's header is read and checked (name, shape, dtype,
size) before its data, arrays are read with ``np.load(..., allow_pickle=False)``,
layer types must be in :data:`fastcnn.layers.LAYER_TYPES` and optimizer classes
in :data:`fastcnn.optim.OPTIMIZERS`, and every value must be finite. Any failure
is a :class:`fastcnn.CheckpointError` and leaves the target model untouched.

Saving writes a temporary file in the destination directory, fsyncs it and
``os.replace``s it over the destination, so an interrupted save never destroys
the previous file.
"""

import contextlib
import json
import math
import os
import secrets
import warnings
import zipfile

import numpy as np

import fastcnn
from fastcnn import losses, metrics as metrics_lib, optim
from fastcnn.errors import CheckpointError
from fastcnn.layers import LAYER_TYPES

__all__ = ["FORMAT", "FORMAT_VERSION", "save_model", "load_model", "load_into", "describe"]

FORMAT = "fastcnn.model"
FORMAT_VERSION = 1
META_KEY = "__fastcnn__"
PARAMS = "params/"
STATE = "state/"
MODEL_CLASSES = ("Sequential", "Model")
OPTIMIZER = "optimizer/"
MAX_META_BYTES = 1 << 20
#: Bit generators whose state may be restored (all of numpy's; PCG64 is the default).
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")
_OPTIMIZER_CLASSES = {cls.__name__: cls for cls in optim.OPTIMIZERS.values()}
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _optimizer_slots(class_name, config):
    """State slots an optimizer of this class and config holds for every parameter once it has stepped."""
    try:
        return _OPTIMIZER_CLASSES[class_name].from_config(config).slots()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"optimizer {class_name!r} has an invalid config {config!r}: {e}") from None


# -- description ------------------------------------------------------------------------
def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in a model file")


def _rng_state(rng):
    return json.loads(json.dumps(rng.bit_generator.state, default=_json_default))


def _layer_generators(model):
    """``{layer index: Generator}`` of the layers that draw random numbers (Dropout)."""
    return {i: layer.rng for i, layer in enumerate(model.layers)
            if isinstance(getattr(layer, "rng", None), np.random.Generator)}


def describe(model):
    """The JSON-serializable description stored in ``__fastcnn__``."""
    from fastcnn.model import Sequential

    arch = {
        "class": "Sequential" if isinstance(model, Sequential) else "Model",
        "input_shape": list(model.input_shape),
        "dtype": model.dtype.name,
        "seed": model.seed,
        "layers": [{"type": type(layer).__name__, "impl": layer.impl, "config": layer.get_config()}
                   for layer in model.layers],
    }
    if arch["class"] == "Model":
        arch["name"] = model.name
        arch["inputs"] = [list(ins) for ins in model._inputs_of]
    compiled = None
    if model.optimizer is not None:
        compiled = {
            "optimizer": {"class": type(model.optimizer).__name__, "config": model.optimizer.get_config()},
            "loss": losses.serialize(model.loss),
            "loss_impl": model.loss_impl,
            "metrics": [metrics_lib.serialize(m) for m in model.metrics],
        }
    rng = {"model": _rng_state(model.rng),
           "layers": {str(i): _rng_state(g) for i, g in _layer_generators(model).items()}}
    metadata = getattr(model, "metadata", None) or {}
    if not isinstance(metadata, dict):
        raise TypeError(f"model.metadata must be a dict, received {type(metadata).__name__}")
    desc = {"format": FORMAT, "format_version": FORMAT_VERSION, "fastcnn_version": fastcnn.__version__,
            "model": arch, "compile": compiled, "rng": rng, "metadata": metadata}
    try:
        return json.loads(json.dumps(desc, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"the model cannot be described in JSON (check model.metadata): {e}") from None


# -- saving -----------------------------------------------------------------------------
def _npz_path(path):
    path = os.fspath(path)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"save: the path must be a non-empty file name, received {path!r}")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(f"save: {path!r} is a directory; give a file name such as {os.path.join(path, 'model.npz')!r}")
    return path if path.endswith(".npz") else path + ".npz"


def save_model(model, path):
    """Write ``model`` to ``path`` (``.npz`` appended if missing), atomically; returns the path."""
    if not model.built:
        raise ValueError("cannot save a model that is not built: pass input_shape= to Sequential or fit it first")
    path = _npz_path(path)
    arrays = {}
    for name, p, _ in model.params():
        if not np.all(np.isfinite(p)):
            raise CheckpointError(f"refusing to save: parameter {name!r} holds NaN or infinite values")
        arrays[PARAMS + name] = p
    for name, a in model.states():
        if not np.all(np.isfinite(a)):
            raise CheckpointError(f"refusing to save: state {name!r} holds NaN or infinite values")
        arrays[STATE + name] = a
    if model.optimizer is not None:
        for key, a in model.optimizer.state_arrays().items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):  # load_model would refuse the file
                raise CheckpointError(f"refusing to save: optimizer state {key!r} holds NaN or infinite values")
            arrays[OPTIMIZER + key] = a
    text = json.dumps(describe(model), allow_nan=False, sort_keys=True)
    arrays[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # a file object: np.savez appends nothing to its name
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno is not None:  # name the target, not the temporary file
            raise OSError(error.errno, f"cannot write the model file: {error.strerror}", path) from error
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


# -- reading ----------------------------------------------------------------------------
class _Reader:
    """An opened, structurally checked model file; reads members only after checking their headers."""

    def __init__(self, path):
        path = os.fspath(path)
        if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
            path += ".npz"
        self.path = path
        if not os.path.isfile(path):
            raise CheckpointError(f"no model file at {path!r}")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04" or not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path!r} is not a fastcnn model file: expected an .npz (zip) archive written by "
                f"model.save(); it is another format, or truncated"
            )
        try:
            self.npz = np.load(path, allow_pickle=False)
            self.members = {info.filename: info for info in self.npz.zip.infolist()}
        # RuntimeError: zipfile's NotImplementedError for an unsupported zip version
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as e:
            raise CheckpointError(f"{path!r} is not a readable .npz archive ({e})") from None
        self.names = set()
        for member, info in self.members.items():
            if not member.endswith(".npy"):
                self.close()
                raise CheckpointError(f"{path!r}: unexpected member {member!r} (every member must be an .npy array)")
            if info.compress_type != zipfile.ZIP_STORED:
                # model.save writes stored members: every byte of an array is then in the file, so a
                # crafted file cannot make the loader allocate more memory than the file's own size
                self.close()
                raise CheckpointError(f"{path!r}: member {member!r} is compressed; model files hold "
                                      f"uncompressed arrays (as model.save writes them)")
            self.names.add(member[:-4])

    def close(self):
        self.npz.close()

    def header(self, name):
        """``(shape, dtype)`` of array ``name`` from its ``.npy`` header alone (no data is read)."""
        where = f"{self.path!r}: array {name!r}"
        if name not in self.names:
            raise CheckpointError(f"{where} is missing")
        try:
            with self.npz.zip.open(name + ".npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    header = np.lib.format.read_array_header_2_0(f)
                else:
                    raise CheckpointError(f"{where} has an unknown .npy version {version}")
        except CheckpointError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, RuntimeError, MemoryError) as e:
            raise CheckpointError(f"{where} has an unreadable header ({type(e).__name__}: {e})") from None
        got_shape, _, got_dtype = header
        if got_dtype.hasobject:
            raise CheckpointError(
                f"{where} holds Python objects (pickled data); fastcnn never unpickles: refusing to load"
            )
        if got_dtype.kind not in "biuf" or got_dtype.fields is not None:
            raise CheckpointError(f"{where} has dtype {got_dtype}; only plain numeric arrays are allowed")
        nbytes = math.prod(got_shape) * got_dtype.itemsize  # Python ints: no overflow
        member_size = self.members[name + ".npy"].file_size
        if nbytes > member_size:  # a crafted header: refused before anything of that size is allocated
            raise CheckpointError(f"{where}: its header declares shape {tuple(got_shape)} ({nbytes:,} bytes) but "
                                  f"the member holds {member_size:,} bytes: truncated or crafted")
        return tuple(got_shape), got_dtype

    def read(self, name, shape=None, dtype=None, max_bytes=None):
        """Read array ``name``, checking its header (shape, dtype, no objects, size) before its data."""
        where = f"{self.path!r}: array {name!r}"
        got_shape, got_dtype = self.header(name)  # no objects, no more bytes than the member holds
        if shape is not None and tuple(got_shape) != tuple(shape):
            raise CheckpointError(f"{where} has shape {tuple(got_shape)}, the architecture expects {tuple(shape)}")
        if dtype is not None and got_dtype != np.dtype(dtype):
            raise CheckpointError(f"{where} has dtype {got_dtype}, the architecture expects {np.dtype(dtype)}")
        nbytes = math.prod(got_shape) * got_dtype.itemsize
        if max_bytes is not None and nbytes > max_bytes:
            raise CheckpointError(f"{where} is {nbytes} bytes, more than the {max_bytes} allowed")
        if self.members[name + ".npy"].file_size > nbytes + 65536:
            raise CheckpointError(f"{where}: the member is larger than its header says ({nbytes} bytes of data)")
        try:
            a = self.npz[name]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, MemoryError) as e:
            raise CheckpointError(f"{where} is unreadable: corrupt or truncated ({e})") from None
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise CheckpointError(f"{where} holds NaN or infinite values")
        return a if a.flags.c_contiguous else a.copy(order="C")  # ascontiguousarray would make 0-d arrays 1-d


def _fail(path, message):
    raise CheckpointError(f"{path!r}: {message}")


def _check_dict(value, what, path, keys=()):
    if not isinstance(value, dict):
        _fail(path, f"the description's {what} must be an object, found {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        _fail(path, f"the description's {what} lacks {missing}")
    return value


def _is_name_in(value, names):
    """``value in names`` for a JSON value: only a string can name something (a list is unhashable)."""
    return isinstance(value, str) and value in names


def _read_description(reader):
    meta = reader.read(META_KEY, dtype=np.uint8, max_bytes=MAX_META_BYTES)
    path = reader.path
    if meta.ndim != 1:
        _fail(path, f"{META_KEY!r} must be a 1-D uint8 array, found shape {meta.shape}")
    try:
        desc = json.loads(meta.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _fail(path, f"the description is not valid JSON ({type(e).__name__}: {e})")
    _check_dict(desc, "top level", path, ("format", "format_version", "model", "compile", "rng"))
    if desc["format"] != FORMAT:
        _fail(path, f"format {desc['format']!r} is not {FORMAT!r}")
    if desc["format_version"] != FORMAT_VERSION:
        _fail(path, f"format version {desc['format_version']!r}; this fastcnn "
                    f"({fastcnn.__version__}) reads version {FORMAT_VERSION}")
    arch = _check_dict(desc["model"], "model", path, ("class", "input_shape", "dtype", "layers"))
    if arch["class"] not in MODEL_CLASSES:
        _fail(path, f"model class {arch['class']!r} is not one of {list(MODEL_CLASSES)}")
    if not _is_name_in(arch["dtype"], _DTYPES):
        _fail(path, f"dtype {arch['dtype']!r} is not one of {sorted(_DTYPES)}")
    shape = arch["input_shape"]
    if not isinstance(shape, list) or not shape or not all(type(s) is int and s > 0 for s in shape):
        _fail(path, f"input_shape {shape!r} is not a list of positive ints")
    if not isinstance(arch["layers"], list) or not arch["layers"]:
        _fail(path, "the layer list is empty or not a list")
    for i, spec in enumerate(arch["layers"]):
        _check_dict(spec, f"layers[{i}]", path, ("type", "config"))
        if not _is_name_in(spec["type"], LAYER_TYPES):
            _fail(path, f"layers[{i}] has type {spec['type']!r}, which is not a fastcnn layer "
                        f"(allowed: {sorted(LAYER_TYPES)})")
        _check_dict(spec["config"], f"layers[{i}].config", path)
    if arch["class"] == "Model":
        _check_graph(arch, path)
    if desc["compile"] is not None:
        comp = _check_dict(desc["compile"], "compile", path, ("optimizer", "loss", "metrics"))
        opt = _check_dict(comp["optimizer"], "optimizer", path, ("class", "config"))
        if not _is_name_in(opt["class"], _OPTIMIZER_CLASSES):
            _fail(path, f"optimizer class {opt['class']!r} is not one of {sorted(_OPTIMIZER_CLASSES)}")
        _check_dict(opt["config"], "optimizer config", path)
    rng = _check_dict(desc["rng"], "rng", path, ("model", "layers"))
    _check_dict(rng["layers"], "rng.layers", path)
    _check_dict(desc.get("metadata", {}), "metadata", path)
    return desc


def _check_shapes(reader, desc, layers):
    """Before anything is allocated: every parameter and state shape the description implies
    (following a functional model's per-layer inbound tensors) must equal the shape in its
    array's header. The arrays are in the file (uncompressed), so a description asking for
    absurd sizes (``filters=1e9``) is refused here instead of exhausting memory in ``build``.
    The graph's structure was checked by :func:`_check_graph` before."""
    path = reader.path
    arch = desc["model"]
    inbound = arch["inputs"] if arch["class"] == "Model" else [[i] for i in range(len(layers))]
    shapes = [tuple(arch["input_shape"])]  # tensor index (0: the model input, j + 1: layer j's output) -> shape
    wanted = {}  # array name -> (shape, layer label)
    for i, (layer, ins) in enumerate(zip(layers, inbound)):
        label = f"layers[{i}] ({type(layer).__name__})"
        merge = getattr(layer, "merge", False)
        shape = [shapes[t] for t in ins] if merge else shapes[ins[0]]
        if not merge and layer.ndim is not None and len(shape) != layer.ndim - 1:
            _fail(path, f"{label} takes inputs of rank {layer.ndim - 1} per sample; at its position they are {shape}")
        try:
            param_shapes = layer.param_shapes(shape)
            state_shapes = layer.state_shapes(shape)
            out = tuple(int(s) for s in layer.compute_output_shape(shape))
        except (TypeError, ValueError, ArithmeticError, IndexError) as e:
            _fail(path, f"{label} cannot take inputs of shape {shape}: {e}")
        if not out or any(s < 1 for s in out):
            _fail(path, f"{label} gives an empty output {out} for inputs {shape}")
        for prefix, expected_shapes in ((PARAMS, param_shapes), (STATE, state_shapes)):
            for key, expected in expected_shapes.items():
                wanted[f"{prefix}layers.{i}.{key}"] = (tuple(int(s) for s in expected), label)
        shapes.append(out)
    _check_param_names(path, reader.names, {n: v for n, v in wanted.items() if n.startswith(PARAMS)})
    _check_state_names(path, reader.names, {n: v for n, v in wanted.items() if n.startswith(STATE)})
    for name, (expected, label) in wanted.items():
        got, _ = reader.header(name)
        if got != expected:
            _fail(path, f"array {name!r} has shape {got}, the architecture expects {expected} ({label})")


def _check_param_names(path, names, wanted):
    params_in_file = {n for n in names if n.startswith(PARAMS)}
    if params_in_file != set(wanted):
        missing = sorted(n[len(PARAMS):] for n in set(wanted) - params_in_file)
        extra = sorted(n for n in params_in_file - set(wanted))
        _fail(path, f"the weights do not match the architecture (missing {missing}, unexpected {extra})")


def _check_state_names(path, names, wanted):
    state_in_file = {n for n in names if n.startswith(STATE)}
    if state_in_file != set(wanted):
        missing = sorted(n[len(STATE):] for n in set(wanted) - state_in_file)
        extra = sorted(n for n in state_in_file - set(wanted))
        _fail(path, f"the non-trainable state does not match the architecture (missing {missing}, "
                    f"unexpected {extra})")


def _check_graph(arch, path):
    """Validate a functional model's ``inputs``: each layer reads the model input or earlier
    layers, merge layers two or more tensors and the others one, and every layer but the
    last is read (the last is the output)."""
    inputs = arch.get("inputs")
    layers = arch["layers"]
    if arch.get("name") is not None and not isinstance(arch["name"], str):
        _fail(path, f"the model name {arch['name']!r} is not a string")
    if not isinstance(inputs, list) or len(inputs) != len(layers):
        _fail(path, f"the graph's `inputs` must be a list of {len(layers)} lists (one per layer), found {inputs!r}")
    read = set()
    for i, (spec, ins) in enumerate(zip(layers, inputs)):
        if not isinstance(ins, list) or not ins or not all(type(t) is int and 0 <= t <= i for t in ins):
            _fail(path, f"layers[{i}] reads tensors {ins!r}; each must be 0 (the input) or j + 1 for a layer j < {i}")
        merge = getattr(LAYER_TYPES[spec["type"]], "merge", False)
        if merge and len(ins) < 2 or not merge and len(ins) != 1:
            expected = "two or more tensors" if merge else "one tensor"
            _fail(path, f"layers[{i}] ({spec['type']}) reads {len(ins)} tensors; it takes {expected}")
        read.update(ins)
    unread = [i for i in range(len(layers) - 1) if i + 1 not in read]
    if unread or 0 not in read:
        _fail(path, f"the graph has layers whose output nothing reads ({unread}) or never reads its input")


def _build_model(desc, path, layers=None):
    """The model (uncompiled) a validated description describes (``layers``: already built
    from it by :func:`_build_layers`)."""
    from fastcnn.graph import Input
    from fastcnn.model import Model, Sequential

    arch = desc["model"]
    if layers is None:
        layers = _build_layers(desc, path)
    try:
        if arch["class"] == "Sequential":
            return Sequential(layers, input_shape=tuple(arch["input_shape"]), seed=arch.get("seed"),
                              dtype=_DTYPES[arch["dtype"]])
        tensors = [Input(tuple(arch["input_shape"]))]
        for layer, ins in zip(layers, arch["inputs"]):
            args = [tensors[t] for t in ins]
            tensors.append(layer(args if getattr(layer, "merge", False) else args[0]))
        model = Model(tensors[0], tensors[-1], name=arch.get("name"), seed=arch.get("seed"),
                      dtype=_DTYPES[arch["dtype"]])
    except (TypeError, ValueError) as e:
        _fail(path, f"the architecture cannot be built: {e}")
    if [id(layer) for layer in model.layers] != [id(layer) for layer in layers]:
        _fail(path, "the graph's layers are not listed in the order fastcnn saves them (topological, "
                    "depth-first from the output)")
    return model


def _build_layers(desc, path):
    layers = []
    for i, spec in enumerate(desc["model"]["layers"]):
        cls = LAYER_TYPES[spec["type"]]
        kwargs = dict(spec["config"])
        impl = spec.get("impl", "auto")
        try:
            layers.append(cls(**kwargs, impl=impl))
        except (TypeError, ValueError) as e:
            _fail(path, f"layers[{i}] ({spec['type']}) has an invalid config {spec['config']!r}: {e}")
    return layers


def _make_optimizer(desc, path):
    opt = desc["compile"]["optimizer"]
    try:
        return _OPTIMIZER_CLASSES[opt["class"]].from_config(opt["config"])
    except (TypeError, ValueError) as e:
        _fail(path, f"optimizer {opt['class']} has an invalid config {opt['config']!r}: {e}")


def _generator(state, what, path):
    if not isinstance(state, dict) or state.get("bit_generator") not in BIT_GENERATORS:
        _fail(path, f"{what}: a random generator state must name one of {BIT_GENERATORS}")
    bit_generator = getattr(np.random, state["bit_generator"])()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        _fail(path, f"{what}: invalid random generator state ({e})")
    return np.random.Generator(bit_generator)


def _read_payload(reader, desc, model):
    """Every array the file must hold for ``model`` (built from the same architecture),
    validated; returns ``(weights, optimizer_arrays or None, generators)``."""
    path = reader.path
    expected = {PARAMS + name: p for name, p, _ in model.params()}
    names = reader.names - {META_KEY}
    params_in_file = {n for n in names if n.startswith(PARAMS)}
    _check_param_names(path, names, expected)
    weights = {key[len(PARAMS):]: reader.read(key, p.shape, p.dtype) for key, p in expected.items()}
    expected_state = {STATE + name: a for name, a in model.states()}
    state_in_file = {n for n in names if n.startswith(STATE)}
    _check_state_names(path, names, expected_state)
    state_arrays = {key[len(STATE):]: reader.read(key, a.shape, a.dtype) for key, a in expected_state.items()}

    optimizer_arrays = None
    opt_names = {n for n in names if n.startswith(OPTIMIZER)}
    other = names - params_in_file - opt_names - state_in_file
    if other:
        _fail(path, f"unexpected arrays {sorted(other)}")
    if desc["compile"] is None:
        if opt_names:
            _fail(path, f"optimizer arrays {sorted(opt_names)} but no optimizer in the description")
    else:
        opt = desc["compile"]["optimizer"]
        iterations = reader.read(OPTIMIZER + "iterations", (), np.int64)
        if int(iterations) < 0:
            _fail(path, f"optimizer iteration count {int(iterations)} is negative")
        slots = _optimizer_slots(opt["class"], opt["config"]) if int(iterations) > 0 else ()
        wanted = {f"{OPTIMIZER}{name}/{slot}": weights[name] for name in weights for slot in slots}
        got = opt_names - {OPTIMIZER + "iterations"}
        if got != set(wanted):
            missing = sorted(set(wanted) - got)
            extra = sorted(got - set(wanted))
            _fail(path, f"the {opt['class']} state does not match the architecture "
                        f"(missing {missing}, unexpected {extra})")
        optimizer_arrays = {"iterations": iterations}
        for key, p in wanted.items():
            optimizer_arrays[key[len(OPTIMIZER):]] = reader.read(key, p.shape, p.dtype)

    rng = desc["rng"]
    generators = {"model": _generator(rng["model"], "rng.model", path)}
    expected_layers = {str(i) for i in _layer_generators(model)}
    if set(rng["layers"]) != expected_layers:
        _fail(path, f"random generator states for layers {sorted(rng['layers'])}, expected {sorted(expected_layers)}")
    for key, state in rng["layers"].items():
        generators[int(key)] = _generator(state, f"rng.layers.{key}", path)
    return {**weights, **state_arrays}, optimizer_arrays, generators


def _apply(model, desc, weights, optimizer_arrays, generators):
    model.metadata = dict(desc.get("metadata", {}))
    model.set_weights(weights)
    if optimizer_arrays is not None and model.optimizer is not None:
        model.optimizer.load_state_arrays(optimizer_arrays)
    model.rng = generators["model"]
    for i, g in generators.items():
        if i != "model":
            model.layers[i].reseed(g)


def load_model(path):
    """Rebuild, compile and restore a model written by :func:`save_model`.

    Raises
    ------
    CheckpointError
        If the file is missing, not an ``.npz``, truncated or corrupt, holds
        pickled objects, names unknown layer types, or its arrays do not match
        its architecture (names, shapes, dtypes, finiteness).
    """
    reader = _Reader(path)
    try:
        desc = _read_description(reader)
        layers = _build_layers(desc, reader.path)
        _check_shapes(reader, desc, layers)
        model = _build_model(desc, reader.path, layers)
        if desc["compile"] is not None:
            comp = desc["compile"]
            try:
                loss = comp["loss"] if isinstance(comp["loss"], str) else losses.get(comp["loss"])
                metrics = [m if isinstance(m, str) else metrics_lib.get(m) for m in comp["metrics"]]
                model.compile(_make_optimizer(desc, reader.path), loss=loss, metrics=metrics,
                              loss_impl=comp.get("loss_impl", "auto"))
            except (TypeError, ValueError) as e:
                if isinstance(e, CheckpointError):
                    raise
                _fail(reader.path, f"invalid compile settings {comp!r}: {e}")
        payload = _read_payload(reader, desc, model)
    finally:
        reader.close()
    _apply(model, desc, *payload)
    return model


def _architecture(arch):
    """The parts of an architecture description that must match to share weights."""
    return {"input_shape": list(arch["input_shape"]), "dtype": arch["dtype"],
            "layers": [(spec["type"], spec["config"]) for spec in arch["layers"]],
            "inputs": arch.get("inputs") or [[i] for i in range(len(arch["layers"]))]}  # Sequential: a chain


def load_into(model, path):
    """Load a file written by :func:`save_model` onto the existing ``model``.

    The file's architecture (layer types and configs, input shape, dtype) must
    equal the model's. Weights and RNG states are always restored; the
    optimizer state when the model is compiled with the same optimizer class.
    Nothing is changed unless the whole file validates.
    """
    reader = _Reader(path)
    try:
        desc = _read_description(reader)
        if not model.built:
            model.build(tuple(desc["model"]["input_shape"]))
        ours = _architecture(describe(model)["model"])
        theirs = _architecture(desc["model"])
        if ours != theirs:
            _fail(reader.path, "the file holds a different architecture than this model: "
                               + _first_difference(theirs, ours))
        if model.optimizer is not None and desc["compile"] is not None \
                and type(model.optimizer).__name__ != desc["compile"]["optimizer"]["class"]:
            warnings.warn(
                f"{reader.path!r} holds {desc['compile']['optimizer']['class']} state but the model uses "
                f"{type(model.optimizer).__name__}: loading the weights only", UserWarning, stacklevel=3,
            )
            desc = dict(desc, compile=None)
            # keep the file's arrays out of the check below: they belong to another optimizer
            reader.names = {n for n in reader.names if not n.startswith(OPTIMIZER)}
        payload = _read_payload(reader, desc, model)
    finally:
        reader.close()
    _apply(model, desc, *payload)


def _first_difference(theirs, ours):
    if theirs["input_shape"] != ours["input_shape"]:
        return f"input_shape {tuple(theirs['input_shape'])} in the file, {tuple(ours['input_shape'])} in the model"
    if theirs["dtype"] != ours["dtype"]:
        return f"dtype {theirs['dtype']} in the file, {ours['dtype']} in the model"
    if len(theirs["layers"]) != len(ours["layers"]):
        return f"{len(theirs['layers'])} layers in the file, {len(ours['layers'])} in the model"
    for i, (a, b) in enumerate(zip(theirs["layers"], ours["layers"])):
        if a != b:
            return f"layers.{i} is {a[0]}({a[1]}) in the file, {b[0]}({b[1]}) in the model"
    if theirs["inputs"] != ours["inputs"]:
        return f"the layers read {theirs['inputs']} in the file, {ours['inputs']} in the model"
    return "unknown difference"

