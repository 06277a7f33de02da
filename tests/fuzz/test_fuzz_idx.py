"""Fuzz target 2: the IDX reader (``fastcnn.datasets.read_idx`` and the images/labels checks of ``load``).

Seeds: valid IDX files (uint8 images and labels, int16, float32, float64), plain and gzip-compressed.
Mutations: header fields (the zero bytes, type byte, dimension count, each dimension size) set to
extreme values, byte overwrites, truncation, trailing bytes, a gzip stream cut or corrupted, a gzip
stream of a mutated file. Allowed outcomes: an array that agrees with its header, or ``DatasetError``.
"""

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, strategies as st

from fastcnn import datasets
from fastcnn.errors import DatasetError

from _fuzzing import fuzz_settings, guarded

WORK = Path(tempfile.mkdtemp(prefix="fastcnn-fuzz-idx-"))


def _seed(array):
    path = WORK / "seed-idx"
    datasets.write_idx(path, array)
    return path.read_bytes()


_rng = np.random.default_rng(0)
SEEDS = [
    _seed(_rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
    _seed(_rng.integers(0, 10, 7, dtype=np.uint8)),
    _seed(_rng.integers(-500, 500, (2, 5), dtype=np.int16)),
    _seed(_rng.random((4, 3), dtype=np.float32)),
    _seed(_rng.random((2, 2, 2)).astype(np.float64)),
]
DIMENSIONS = st.sampled_from([0, 1, 2, 3, 27, 28, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1])


@st.composite
def mutated_files(draw):
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["zero-bytes", "type", "ndim", "dimension", "byte", "truncate", "append"]))
        if how in ("zero-bytes", "type", "ndim", "dimension") and len(raw) < 4:
            continue  # already truncated into the magic number
        if how == "zero-bytes":
            raw[draw(st.integers(0, 1))] = draw(st.integers(0, 255))
        elif how == "type":
            raw[2] = draw(st.one_of(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]), st.integers(0, 255)))
        elif how == "ndim":
            raw[3] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 64, 255]))
        elif how == "dimension":
            ndim = max(raw[3], 1)
            i = draw(st.integers(0, ndim - 1))
            if 4 + 4 * i + 4 <= len(raw):
                raw[4 + 4 * i: 8 + 4 * i] = struct.pack(">I", draw(DIMENSIONS))
        elif how == "byte" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif how == "truncate":
            raw = raw[:draw(st.integers(0, len(raw)))]
        else:
            raw += draw(st.binary(min_size=1, max_size=16))
    raw = bytes(raw)
    packing = draw(st.sampled_from(["plain", "gzip", "gzip-cut", "gzip-byte"]))
    if packing == "plain":
        return raw, False
    packed = bytearray(gzip.compress(raw, mtime=0))
    if packing == "gzip-cut":
        packed = packed[:draw(st.integers(0, len(packed) - 1))]
    elif packing == "gzip-byte":
        packed[draw(st.integers(0, len(packed) - 1))] = draw(st.integers(0, 255))
    return bytes(packed), True


def read_checked(path):
    array = datasets.read_idx(path)
    with (gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")) as f:
        raw = datasets._read_up_to(f, 1 << 24)
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    assert array.shape == shape  # what was read agrees with the header
    assert array.size * array.itemsize == len(raw) - 4 - 4 * ndim
    return array


@fuzz_settings(ci_examples=500)
@given(case=mutated_files(), check=st.sampled_from(["read_idx", "images", "labels"]))
def test_fuzz_read_idx(case, check):
    raw, compressed = case
    path = WORK / ("case-idx.gz" if compressed else "case-idx")
    path.write_bytes(raw)
    fn = {"read_idx": lambda: read_checked(path), "images": lambda: datasets._read_images(path),
          "labels": lambda: datasets._read_labels(path)}[check]
    guarded("IDX", check, fn, DatasetError)


def test_seeds_read():
    for i, raw in enumerate(SEEDS):
        path = WORK / f"seed-{i}-idx"
        path.write_bytes(raw)
        read_checked(path)
