"""Fuzz target 3: the image reader of ``fastcnn predict`` (``fastcnn.cli.read_image_file``).

Seeds: valid PNG (grayscale, RGBA, palette with transparency), JPEG, GIF, BMP pictures and an IDX
file. Mutations: byte overwrites, truncation, insertion, and the PNG header's width, height, bit
depth and colour type set to extreme values with a valid CRC (so decoders get past the checksum).
Allowed outcomes: float32 images (N, 28, 28, 1), finite, in [0, 1] for pictures, or the CLI's
one-line error (``CommandError``).
"""

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastcnn import cli, datasets

from _fuzzing import fuzz_settings, guarded

Image = pytest.importorskip("PIL.Image")
Image.init()  # import every format plugin now: the first unidentifiable file would, and time it
WORK = Path(tempfile.mkdtemp(prefix="fastcnn-fuzz-images-"))


def _picture(mode, size, fmt, **options):
    rng = np.random.default_rng(len(mode) + size[0])
    channels = {"L": 1, "RGB": 3, "RGBA": 4}
    if mode == "P":
        image = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L").convert("P")
        options.setdefault("transparency", 0) if fmt == "PNG" else None
    else:
        shape = size[::-1] + ((channels[mode],) if channels[mode] > 1 else ())
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _idx():
    path = WORK / "seed-idx"
    datasets.write_idx(path, np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8))
    return path.read_bytes()


SEEDS = [
    _picture("L", (28, 28), "PNG"),
    _picture("RGBA", (40, 30), "PNG"),
    _picture("P", (20, 20), "PNG"),
    _picture("RGB", (32, 32), "JPEG", quality=80),
    _picture("P", (16, 16), "GIF"),
    _picture("RGB", (10, 12), "BMP"),
    _idx(),
]
PNG_SIZES = st.sampled_from([0, 1, 28, 2**15, 2**16, 2**24, 2**31 - 1, 2**31, 2**32 - 1])


def _png_ihdr(raw, draw):
    """Rewrite a PNG's IHDR fields, with the CRC recomputed."""
    if len(raw) < 33 or raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        return raw
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", raw[16:29])
    field = draw(st.sampled_from(["size", "depth", "colour", "interlace"]))
    if field == "size":
        width, height = draw(PNG_SIZES), draw(PNG_SIZES)
    elif field == "depth":
        depth = draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3, 255]))
    elif field == "colour":
        colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7, 255]))
    else:
        interlace = draw(st.integers(0, 255))
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, compression, filtering, interlace)
    return raw[:12] + body + struct.pack(">I", zlib.crc32(body)) + raw[33:]


@st.composite
def mutated_files(draw):
    raw = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["ihdr", "ihdr", "byte", "truncate", "insert"]))
        if how == "ihdr":
            raw = _png_ihdr(raw, draw)
        elif how == "byte" and raw:
            data = bytearray(raw)
            data[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
            raw = bytes(data)
        elif how == "truncate":
            raw = raw[:draw(st.integers(0, len(raw)))]
        else:
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=32)) + raw[at:]
    return raw


def read_checked(path, invert):
    x, labels = cli.read_image_file(str(path), invert)
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (28, 28, 1) and len(labels) == len(x) > 0
    assert np.isfinite(x).all()
    if not labels[0].endswith("]"):  # a picture, not an IDX file
        assert 0.0 <= x.min() and x.max() <= 1.0
    return x


@fuzz_settings(ci_examples=500)
@given(raw=mutated_files(), invert=st.sampled_from(cli.INVERT_CHOICES))
def test_fuzz_read_image_file(raw, invert):
    path = WORK / "case"
    path.write_bytes(raw)
    guarded("predict image", "read_image_file", lambda: read_checked(path, invert), cli.CommandError)


def test_seeds_read():
    for i, raw in enumerate(SEEDS):
        path = WORK / f"seed-{i}"
        path.write_bytes(raw)
        read_checked(path, "auto")
