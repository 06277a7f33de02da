"""Fuzz target 1: the model file loader (``fastcnn.load_model``).

Seeds: valid files (Adam + Dropout after a step; SGD with momentum; uncompiled; a functional model
with BatchNormalization, Add and Concatenate after a step). Mutations:
byte overwrites, truncation and insertion anywhere in the zip; JSON description fields set to
extreme values or removed; arrays replaced by others of another shape or dtype; ``.npy`` headers
declaring huge shapes. Allowed outcomes: a model, or ``CheckpointError``.
"""

import io
import json
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastcnn import CheckpointError
from fastcnn import layers as L
from fastcnn.model import Sequential, load_model
from fastcnn.optim import SGD, Adam
from fastcnn.saving import META_KEY

from _fuzzing import fuzz_settings, guarded

WORK = Path(tempfile.mkdtemp(prefix="fastcnn-fuzz-model-"))


def _graph_model():
    import fastcnn as fc

    x = fc.Input((12, 12, 1))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(3, 3, stride=2)(x)))
    b = L.Add()([a, L.Conv2D(3, 1)(a)])
    y = L.Dense(5)(L.Flatten()(L.Concatenate()([a, b])))
    return fc.Model(x, y, seed=1)


def _seed(kind):
    if kind == "graph":
        model = _graph_model().compile(Adam(1e-3))
        model.train_on_batch(np.random.default_rng(0).random((4, 12, 12, 1), dtype=np.float32), np.arange(4))
        with open(model.save(WORK / "seed-graph.npz"), "rb") as f:
            return f.read()
    layers = [L.Conv2D(3, 3, stride=2), L.ReLU(), L.MaxPool2D(2), L.Dropout(0.25), L.Flatten(), L.Dense(5)]
    model = Sequential(layers, input_shape=(12, 12, 1), seed=1)
    if kind != "uncompiled":
        model.compile(Adam(1e-3) if kind == "adam" else SGD(0.1, momentum=0.9))
        x = np.random.default_rng(0).random((4, 12, 12, 1), dtype=np.float32)
        model.train_on_batch(x, np.arange(4))
    path = model.save(WORK / f"seed-{kind}.npz")
    with open(path, "rb") as f:
        return f.read()


SEEDS = {kind: _seed(kind) for kind in ("adam", "sgd", "uncompiled", "graph")}


def members(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def zipped(files):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def npy(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def leaf_paths(value, prefix=()):
    """Every path into a JSON value (containers included)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaf_paths(item, prefix + (i,))


EXTREMES = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**32 - 1, 2**63, -(2**63), 10**9, 10**30, 1e308, -1e308, math.inf,
                     -math.inf, math.nan, 0.5, None, True, False, "", "x" * 1000, "float16", "auto", "reference",
                     "valid", "same", [], {}, [0], [1, 1], [10**9, 10**9], [28, 28, 1], [-1, 5], {"a": 1}]),
    st.integers(), st.floats(), st.text(max_size=12), st.lists(st.integers(-3, 40), max_size=4),
)

ARRAYS = st.builds(
    lambda shape, dtype: np.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 12), max_size=4).map(tuple),
    st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64, np.float16]),
)


@st.composite
def mutated_files(draw):
    kind = draw(st.sampled_from(sorted(SEEDS)))
    raw = SEEDS[kind]
    how = draw(st.sampled_from(["json", "json", "array", "header", "bytes", "truncate", "insert"]))
    if how == "bytes":
        data = bytearray(raw)
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                                             min_size=1, max_size=8)):
            data[position] = value
        return bytes(data)
    if how == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if how == "insert":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
    files = members(raw)
    if how == "json":
        desc = json.loads(np.lib.format.read_array(io.BytesIO(files[META_KEY + ".npy"])).tobytes())
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from([p for p in leaf_paths(desc) if p]))
            parent = desc
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(EXTREMES)
        text = json.dumps(desc)  # NaN/Infinity spelled as Python's json does: load_model must refuse them
        files[META_KEY + ".npy"] = npy(np.frombuffer(text.encode(), dtype=np.uint8))
    elif how == "array":
        name = draw(st.sampled_from(sorted(files)))
        files[name] = npy(draw(ARRAYS))
    else:  # a header declaring a huge or odd shape over little data
        name = draw(st.sampled_from(sorted(files)))
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 3, 2**31, 2**40, 10**12]), min_size=0, max_size=4)))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": draw(st.sampled_from(["<f4", "<f8", "|u1", "<i8"])),
                                                      "fortran_order": draw(st.booleans()), "shape": shape})
        files[name] = header.getvalue() + draw(st.binary(max_size=64))
    return zipped(files)


@fuzz_settings(ci_examples=500)
@given(raw=mutated_files())
def test_fuzz_load_model(raw):
    path = WORK / "case.npz"
    path.write_bytes(raw)
    outcome = guarded("model file", "load_model", lambda: load_model(path), CheckpointError)
    if not isinstance(outcome, CheckpointError):  # a file that loads gives a usable model
        assert outcome.built


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_seeds_load(kind):
    path = WORK / f"seed-{kind}.npz"
    assert load_model(path).built
