"""fastcnn.datasets: IDX reading/writing, the search order, downloads, and every bad file.

Small synthetic sets (20 train + 10 test images) are written with ``write_idx``
into tmp_path. No test touches the network: an autouse fixture replaces the
downloader with one that fails as if offline, and download tests install a fake
server. One test loads the real Fashion-MNIST when Debian's copy is installed.
"""

import gzip
import hashlib
import io
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastcnn import datasets as ds
from fastcnn.errors import DatasetError

N_TRAIN, N_TEST = 20, 10
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = ds.FILES
_real_open_url = ds._open_url  # captured at import, before the autouse fixture replaces it


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Hide the real environment, cache, system copies and network from every test."""
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ds, "SYSTEM_DIRS", [str(tmp_path / "system")])

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def no_urlopen(*args, **kwargs):
        raise AssertionError("a test reached urllib.request.urlopen")

    monkeypatch.setattr(ds, "_open_url", offline)
    monkeypatch.setattr(urllib.request, "urlopen", no_urlopen)


def make_set(directory, seed=0, gz=True):
    """Write a small valid dataset; return {"train": (x, y), "t10k": (x, y)} as uint8."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, :2] = (0, 255)  # both ends of the range present
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        ds.write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", x)
        ds.write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        arrays[prefix] = (x, y)
    return arrays


def assert_loaded(result, arrays):
    """``result`` is load()'s scaled output for ``arrays``."""
    for (x, y), prefix in zip(result, ("train", "t10k")):
        x_raw, y_raw = arrays[prefix]
        assert x.dtype == np.float32 and x.shape == (len(x_raw), 28, 28, 1)
        assert y.dtype == np.int64 and y.shape == (len(y_raw),)
        np.testing.assert_array_equal(x[..., 0], x_raw.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(y, y_raw)
        assert x.min() == 0.0 and x.max() == 1.0


def cache_of(tmp_path, name="mnist"):
    return tmp_path / "home" / ".cache" / "fastcnn" / name


# ----------------------------------------------------------------------------- load from disk


def test_load_from_path_scales_to_unit_interval(tmp_path):
    arrays = make_set(tmp_path / "data")
    assert_loaded(ds.load("mnist", path=tmp_path / "data", download=False), arrays)


def test_load_raw_returns_stored_uint8(tmp_path):
    arrays = make_set(tmp_path / "data")
    (x_train, y_train), (x_test, y_test) = ds.load("mnist", path=str(tmp_path / "data"), raw=True)
    assert x_train.dtype == np.uint8 and x_train.shape == (N_TRAIN, 28, 28)
    assert x_test.dtype == np.uint8 and x_test.shape == (N_TEST, 28, 28)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train, arrays["train"][0])
    np.testing.assert_array_equal(x_test, arrays["t10k"][0])
    np.testing.assert_array_equal(y_test, arrays["t10k"][1])


def test_uncompressed_files(tmp_path):
    arrays = make_set(tmp_path / "data", gz=False)
    assert not list((tmp_path / "data").glob("*.gz"))
    assert_loaded(ds.load("kmnist", path=tmp_path / "data", download=False), arrays)


def test_path_may_hold_a_dataset_subdirectory(tmp_path):
    arrays = make_set(tmp_path / "root" / "fashion-mnist")
    assert_loaded(ds.load("fashion-mnist", path=tmp_path / "root", download=False), arrays)


@pytest.mark.parametrize("spelling", ["Fashion-MNIST", "fashion_mnist", " fashion-mnist "])
def test_name_is_normalized(tmp_path, spelling):
    arrays = make_set(tmp_path / "data")
    assert_loaded(ds.load(spelling, path=tmp_path / "data", download=False), arrays)


def test_unknown_name_lists_known_names():
    known = "known datasets: mnist, fashion-mnist, kmnist"
    with pytest.raises(ValueError, match=f"unknown dataset 'emnist'; {known}"):
        ds.load("emnist")


# ----------------------------------------------------------------------------- search order

PLACES = ("path", "env", "cache", "system")


def place_dir(tmp_path, place, name="mnist"):
    return {
        "path": tmp_path / "explicit",
        "env": tmp_path / "env" / name,
        "cache": cache_of(tmp_path, name),
        "system": tmp_path / "system" / name,
    }[place]


@pytest.mark.parametrize("first", PLACES)
def test_search_order(tmp_path, monkeypatch, first):
    """Every place from ``first`` on holds a different set; the one at ``first`` wins."""
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    sets = {place: make_set(place_dir(tmp_path, place), seed=i) for i, place in enumerate(PLACES)}
    for place in PLACES[: PLACES.index(first)]:
        shutil.rmtree(place_dir(tmp_path, place))
    path = tmp_path / "explicit" if first == "path" else None
    assert_loaded(ds.load("mnist", path=path, download=False), sets[first])


def test_cache_respects_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    make_set(cache_of(tmp_path), seed=1)  # ~/.cache is no longer the cache
    arrays = make_set(tmp_path / "xdg" / "fastcnn" / "mnist", seed=2)
    assert ds.cache_dir("mnist") == tmp_path / "xdg" / "fastcnn" / "mnist"
    assert_loaded(ds.load("mnist", download=False), arrays)


def test_incomplete_directory_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    make_set(tmp_path / "env" / "mnist", seed=1)
    (tmp_path / "env" / "mnist" / TEST_LABELS).unlink()
    arrays = make_set(tmp_path / "system" / "mnist", seed=2)
    assert_loaded(ds.load("mnist", download=False), arrays)


def test_mixed_compressed_and_uncompressed(tmp_path):
    arrays = make_set(tmp_path / "data")
    gz = tmp_path / "data" / TRAIN_IMAGES
    (tmp_path / "data" / TRAIN_IMAGES[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert_loaded(ds.load("mnist", path=tmp_path / "data", download=False), arrays)


# ----------------------------------------------------------------------------- bad files


def gz_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def gz_bad_crc(path):
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))


def html_page(path):
    path.write_bytes(b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")


def short_payload(path):
    """A well-formed gzip holding an IDX header for 20 images but data for 19."""
    x = np.zeros((N_TRAIN, 28, 28), dtype=np.uint8)
    header = b"\x00\x00\x08\x03" + np.array([N_TRAIN, 28, 28], dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + x[:-1].tobytes()))


def writer(array):
    return lambda path: ds.write_idx(path, np.asarray(array))


# (file to damage, damage, pinned message after "<path>: ")
CORRUPTIONS = {
    "truncated-gzip": (TRAIN_IMAGES, gz_truncate, r"truncated: the gzip stream ends early"),
    "bad-crc": (TEST_IMAGES, gz_bad_crc, r"corrupt gzip data: CRC check failed"),
    "html-as-gz": (TRAIN_LABELS, html_page, r"not a gzip file .*looks like an HTML/XML page"),
    "empty-gz": (TEST_LABELS, lambda p: p.write_bytes(b""), r"not a gzip file .*the file is empty"),
    "short-payload": (
        TRAIN_IMAGES, short_payload, r"not a valid IDX file: .*wrong number of items.*truncated"
    ),
    "labels-as-images": (
        TRAIN_IMAGES,
        writer(np.zeros(N_TRAIN, np.uint8)),
        r"expected an IDX images file \(magic 0x00000803.*found magic 0x00000801.*looks like a labels file",
    ),
    "images-as-labels": (
        TEST_LABELS,
        writer(np.zeros((N_TEST, 28, 28), np.uint8)),
        r"expected an IDX labels file \(magic 0x00000801.*found magic 0x00000803.*looks like an images file",
    ),
    "float-images": (
        TRAIN_IMAGES,
        writer(np.zeros((N_TRAIN, 28, 28), np.float32)),
        r"expected an IDX images file .*found magic 0x00000d03: float32",
    ),
    "int16-labels": (
        TRAIN_LABELS,
        writer(np.zeros(N_TRAIN, np.int16)),
        r"expected an IDX labels file .*found magic 0x00000b01: int16",
    ),
    "4d-images": (
        TEST_IMAGES,
        writer(np.zeros((N_TEST, 28, 28, 1), np.uint8)),
        r"expected an IDX images file .*with 4 dimension\(s\), shape \(10, 28, 28, 1\)",
    ),
    "27-wide-images": (
        TRAIN_IMAGES,
        writer(np.zeros((N_TRAIN, 28, 27), np.uint8)),
        r"expected 28x28 images, shape \(N, 28, 28\); found shape \(20, 28, 27\)",
    ),
    "no-images": (TEST_IMAGES, writer(np.zeros((0, 28, 28), np.uint8)), r"holds no images"),
    "label-out-of-range": (
        TEST_LABELS,
        writer(np.array([1, 2, 3, 12, 0, 0, 0, 0, 0, 10], np.uint8)),
        r"labels must be 0..9; found 2 out of range, the first is 12 at index 3",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_file_raises_dataset_error_naming_it(tmp_path, case):
    filename, damage, message = CORRUPTIONS[case]
    make_set(tmp_path / "data")
    bad = tmp_path / "data" / filename
    damage(bad)
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ": " + message):
        ds.load("mnist", path=tmp_path / "data", download=False)


# Uncompressed files whose IDX header itself is broken: parse_idx's own
# IdxDecodeError and the struct.error/TypeError it leaks all become DatasetError.
BAD_HEADERS = {
    "empty": (b"", r"not a valid IDX file: .*does not contain a full header.*the file is empty"),
    "html": (b"<html>oops</html>", r"not a valid IDX file: .*two zero bytes.*HTML/XML page"),
    "unknown-type": (bytes.fromhex("00000701 00000001 05"), r"not a valid IDX file: Unknown data type 0x07"),
    "cut-dimensions": (bytes.fromhex("00000803 00000014"), r"not a valid IDX file: malformed or truncated"),
    "zero-dimensions": (bytes.fromhex("00000800"), r"not a valid IDX file: malformed or truncated header"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_bad_uncompressed_header(tmp_path, case):
    content, message = BAD_HEADERS[case]
    make_set(tmp_path / "data", gz=False)
    bad = tmp_path / "data" / TRAIN_LABELS[:-3]
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ": " + message):
        ds.load("mnist", path=tmp_path / "data", download=False)


@pytest.mark.parametrize("split, n_images", [("train", N_TRAIN), ("t10k", N_TEST)])
def test_image_and_label_counts_must_match(tmp_path, split, n_images):
    make_set(tmp_path / "data")
    labels = tmp_path / "data" / f"{split}-labels-idx1-ubyte.gz"
    ds.write_idx(labels, np.zeros(n_images - 1, np.uint8))
    images = tmp_path / "data" / f"{split}-images-idx3-ubyte.gz"
    expected = f"{images} holds {n_images} images but {labels} holds {n_images - 1} labels"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        ds.load("mnist", path=tmp_path / "data", download=False)


def test_bad_file_is_not_skipped_for_a_later_place(tmp_path, monkeypatch):
    """A corrupt first copy is an error, never a silent fall-back to another copy."""
    make_set(tmp_path / "data")
    gz_truncate(tmp_path / "data" / TRAIN_IMAGES)
    make_set(tmp_path / "system" / "mnist")
    with pytest.raises(DatasetError, match="truncated"):
        ds.load("mnist", path=tmp_path / "data", download=False)


def test_bad_cached_file_says_how_to_refetch(tmp_path):
    make_set(cache_of(tmp_path))
    gz_truncate(cache_of(tmp_path) / TEST_IMAGES)
    with pytest.raises(DatasetError, match=r"(?s)t10k-images-idx3-ubyte\.gz: truncated.*delete the file"):
        ds.load("mnist", download=False)


# ----------------------------------------------------------------------------- read_idx / write_idx


IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64, ">i4", ">f8"]


@pytest.mark.parametrize("dtype", IDX_DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_then_read_idx_round_trips(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = ds.write_idx(tmp_path / f"a.idx{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = ds.read_idx(path)
    assert back.shape == array.shape and back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_write_idx_header_is_big_endian_idx(tmp_path):
    ds.write_idx(tmp_path / "a", np.array([[1, 2, 3]], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes.fromhex("00000b02 00000001 00000003 0001 0002 0003")


def test_write_idx_replaces_atomically(tmp_path, monkeypatch):
    path = ds.write_idx(tmp_path / "labels.gz", np.arange(5, dtype=np.uint8))

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ds.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        ds.write_idx(path, np.zeros(7, np.uint8))
    np.testing.assert_array_equal(ds.read_idx(path), np.arange(5))  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["labels.gz"]


@pytest.mark.parametrize(
    "array, error, message",
    [
        (np.zeros(3, np.int64), TypeError, "received dtype int64"),
        (np.zeros(3, bool), TypeError, "received dtype bool"),
        (np.float32(1.0), ValueError, r"1 to 255 dimensions; received shape \(\)"),
    ],
)
def test_write_idx_rejects(tmp_path, array, error, message):
    with pytest.raises(error, match=message):
        ds.write_idx(tmp_path / "x.idx", array)
    assert not list(tmp_path.iterdir())


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nope.gz")) + ": cannot open"):
        ds.read_idx(tmp_path / "nope.gz")


def test_read_idx_accepts_gzip_without_gz_name(tmp_path):
    (tmp_path / "labels").write_bytes(gzip.compress(bytes.fromhex("00000801 00000002 0709")))
    np.testing.assert_array_equal(ds.read_idx(tmp_path / "labels"), [7, 9])


# ----------------------------------------------------------------------------- downloads


class FakeResponse(io.BytesIO):
    """A urlopen response serving ``data``; calls ``on_read`` before each read."""

    def __init__(self, data, on_read=None):
        super().__init__(data)
        self.on_read = on_read

    def read(self, size=-1):
        if self.on_read:
            self.on_read()
        return super().read(min(size, 1000) if size and size > 0 else size)  # several chunks


class FakeServer:
    """Mirrors ``https://a.invalid/`` and ``https://b.invalid/`` serving a synthetic set."""

    MIRRORS = ("https://a.invalid/", "https://b.invalid/")

    def __init__(self, tmp_path, monkeypatch):
        self.arrays = make_set(tmp_path / "origin", seed=7)
        self.files = {name: (tmp_path / "origin" / name).read_bytes() for name in ds.FILES}
        self.content = {m + name: data for m in self.MIRRORS for name, data in self.files.items()}
        self.down = set()  # mirrors that fail to connect
        self.on_read = None
        self.requests = []
        sums = {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}
        monkeypatch.setitem(ds.SHA256, "mnist", sums)
        monkeypatch.setitem(ds.MIRRORS, "mnist", self.MIRRORS)
        monkeypatch.setattr(ds, "_open_url", self.open)

    def open(self, url, timeout):
        assert timeout == ds.DOWNLOAD_TIMEOUT
        self.requests.append(url)
        if any(url.startswith(m) for m in self.down):
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        if url not in self.content:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return FakeResponse(self.content[url], self.on_read)


@pytest.fixture
def server(tmp_path, monkeypatch):
    return FakeServer(tmp_path, monkeypatch)


def test_download_lands_atomically_after_checksum(tmp_path, server):
    cache = cache_of(tmp_path)
    seen = []

    def check_in_flight():
        url = server.requests[-1]
        name = url.rsplit("/", 1)[1]
        seen.append(name)
        assert not (cache / name).exists(), "the file appeared before it was verified"
        assert (cache / (name + ".partial")).exists()

    server.on_read = check_in_flight
    assert_loaded(ds.load("mnist"), server.arrays)
    assert set(seen) == set(ds.FILES)
    assert server.requests == [FakeServer.MIRRORS[0] + name for name in ds.FILES]
    assert sorted(p.name for p in cache.iterdir()) == sorted(ds.FILES)  # no .partial left
    for name in ds.FILES:
        assert (cache / name).read_bytes() == server.files[name]
    server.requests.clear()
    assert_loaded(ds.load("mnist"), server.arrays)  # now found in the cache
    assert server.requests == []


def test_checksum_mismatch_leaves_no_file_and_no_partial(tmp_path, server):
    for mirror in FakeServer.MIRRORS:
        server.content[mirror + TRAIN_LABELS] = b"\x1f\x8b tampered"
    message = (
        r"https://b\.invalid/train-labels-idx1-ubyte\.gz: sha256 mismatch for "
        r"train-labels-idx1-ubyte\.gz: expected [0-9a-f]{64}, received [0-9a-f]{64}"
    )
    with pytest.raises(DatasetError, match=message):
        ds.load("mnist")
    cache = cache_of(tmp_path)
    assert not (cache / TRAIN_LABELS).exists()
    assert not list(cache.glob("*.partial"))
    assert sorted(p.name for p in cache.iterdir()) == sorted({TRAIN_IMAGES, TEST_IMAGES, TEST_LABELS})


def test_checksum_mismatch_tries_next_mirror(tmp_path, server):
    server.content[FakeServer.MIRRORS[0] + TEST_IMAGES] = b"not the file"
    assert_loaded(ds.load("mnist"), server.arrays)
    assert FakeServer.MIRRORS[1] + TEST_IMAGES in server.requests
    assert not list(cache_of(tmp_path).glob("*.partial"))


def test_http_error_tries_next_mirror(server):
    del server.content[FakeServer.MIRRORS[0] + TRAIN_IMAGES]
    assert_loaded(ds.load("mnist"), server.arrays)
    assert server.requests[:2] == [m + TRAIN_IMAGES for m in FakeServer.MIRRORS]


def test_unreachable_mirror_is_tried_once(server):
    server.down.add(FakeServer.MIRRORS[0])
    assert_loaded(ds.load("mnist"), server.arrays)
    assert server.requests == [FakeServer.MIRRORS[0] + TRAIN_IMAGES] + [
        FakeServer.MIRRORS[1] + name for name in ds.FILES
    ]


def test_stale_partial_is_never_the_file(tmp_path, server):
    cache = cache_of(tmp_path)
    cache.mkdir(parents=True)
    for name in ds.FILES:  # complete, valid data, but only ever a .partial
        (cache / (name + ".partial")).write_bytes(server.files[name])
    with pytest.raises(DatasetError, match=r"cache .*: missing train-images-idx3-ubyte\.gz"):
        ds.load("mnist", download=False)
    assert_loaded(ds.load("mnist"), server.arrays)
    assert sorted(p.name for p in cache.iterdir()) == sorted(ds.FILES)


def test_download_fetches_only_missing_files(tmp_path, server):
    cache = cache_of(tmp_path)
    cache.mkdir(parents=True)
    for name in (TRAIN_IMAGES, TEST_LABELS):
        (cache / name).write_bytes(server.files[name])
    assert_loaded(ds.load("mnist"), server.arrays)
    assert server.requests == [FakeServer.MIRRORS[0] + n for n in (TRAIN_LABELS, TEST_IMAGES)]


def test_offline_error_lists_every_place_quickly(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    attempts = []

    def offline(url, timeout):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(ds, "_open_url", offline)
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        ds.load("mnist")
    assert time.perf_counter() - start < 5.0
    assert len(attempts) == len(ds.MIRRORS["mnist"])  # one try per unreachable host
    message = str(info.value)
    assert message.startswith("no copy of the mnist dataset was found, and it could not be downloaded.")
    places = [
        f"$FASTCNN_DATA/mnist = {tmp_path / 'env' / 'mnist'}: does not exist",
        f"cache {cache_of(tmp_path)}: does not exist",
        f"system copy {tmp_path / 'system' / 'mnist'}: does not exist",
    ]
    for text in places + [f"{m}: unreachable: [Errno -2]" for m in ds.MIRRORS["mnist"]]:
        assert text in message
    for text in ["--data-dir DIR", "FASTCNN_DATA=ROOT", "path=DIR", *ds.FILES]:
        assert text in message
    assert not cache_of(tmp_path).exists()  # nothing created when no mirror answered


def test_offline_with_hanging_lookups_gives_up_within_the_bound(tmp_path, monkeypatch):
    """No network where DNS or connect hangs: each mirror host costs at most one
    DOWNLOAD_TIMEOUT, once for all four files, so the error comes within 30 s."""
    assert max(len(mirrors) for mirrors in ds.MIRRORS.values()) * ds.DOWNLOAD_TIMEOUT <= 30.0
    attempts = []

    def hanging(request, timeout):
        attempts.append(request.full_url)
        time.sleep(2.0)

    monkeypatch.setattr(urllib.request, "urlopen", hanging)
    monkeypatch.setattr(ds, "_open_url", _real_open_url)
    monkeypatch.setattr(ds, "DOWNLOAD_TIMEOUT", 0.1)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"(?s)Looked in:.*unreachable: no answer from .* within 0\.1 s.*"
                                           r"pass --data-dir DIR.*set FASTCNN_DATA=ROOT"):
        ds.load("mnist")
    assert time.perf_counter() - start < len(ds.MIRRORS["mnist"]) * 0.1 + 0.5
    assert attempts == [mirror + TRAIN_IMAGES for mirror in ds.MIRRORS["mnist"]]


def test_download_false_says_so(tmp_path):
    make_set(tmp_path / "system" / "mnist")
    (tmp_path / "system" / "mnist" / TRAIN_LABELS).unlink()
    message = (
        r"(?s)FASTCNN_DATA is not set.*"
        r"system copy .*: missing train-labels-idx1-ubyte\.gz.*not attempted \(download=False\)"
    )
    with pytest.raises(DatasetError, match=message):
        ds.load("mnist", download=False)


def test_open_url_gives_up_on_a_hanging_lookup(monkeypatch):
    """A resolver or connection that hangs is abandoned after the timeout."""

    def hanging(request, timeout):
        time.sleep(1.0)

    monkeypatch.setattr(urllib.request, "urlopen", hanging)
    start = time.perf_counter()
    with pytest.raises(urllib.error.URLError, match=r"no answer from example\.invalid within 0\.05 s"):
        _real_open_url("https://example.invalid/x.gz", 0.05)
    assert time.perf_counter() - start < 0.5


def test_open_url_passes_errors_on(monkeypatch):
    def refused(request, timeout):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refused)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        _real_open_url("https://example.invalid/x.gz", 1.0)


# ----------------------------------------------------------------------------- tables


def test_tables_cover_every_dataset():
    assert set(ds.DATASETS) == set(ds.MIRRORS) == set(ds.SHA256) == set(ds.CLASS_NAMES)
    for name in ds.DATASETS:
        assert set(ds.SHA256[name]) == set(ds.FILES)
        assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in ds.SHA256[name].values())
        assert all(m.startswith(("http://", "https://")) and m.endswith("/") for m in ds.MIRRORS[name])
        assert "yann.lecun.com" not in " ".join(ds.MIRRORS[name])
        assert len(ds.CLASS_NAMES[name]) == 10 and len(set(ds.CLASS_NAMES[name])) == 10
    assert ds.CLASS_NAMES["mnist"] == tuple("0123456789")
    fashion = ds.CLASS_NAMES["fashion-mnist"]
    assert fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot"


# ----------------------------------------------------------------------------- the real data


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_system_dir(monkeypatch):
    monkeypatch.setattr(ds, "SYSTEM_DIRS", [str(SYSTEM_FASHION.parent)])
    (x_train, y_train), (x_test, y_test) = ds.load("fashion-mnist", download=False)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert y_train.min() == 0 and y_train.max() == 9 and y_test.min() == 0 and y_test.max() == 9
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)


# Debian's copy is the mirror's files recompressed identically but with a gzip
# header that has no file name and another mtime. Restoring the mirror's header
# (FNAME set, mtime 2017-08-31 UTC) gives back the mirror's bytes exactly.
MIRROR_MTIMES = {TRAIN_IMAGES: 1504176606, TRAIN_LABELS: 1504176606, TEST_IMAGES: 1504176627, TEST_LABELS: 1504176627}


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("filename", ds.FILES)
def test_pinned_fashion_mnist_sha256_is_that_of_the_real_files(filename):
    debian = (SYSTEM_FASHION / filename).read_bytes()
    assert debian[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME flag
    header = b"\x1f\x8b\x08\x08" + MIRROR_MTIMES[filename].to_bytes(4, "little") + debian[8:10]
    mirror_file = header + filename[: -len(".gz")].encode() + b"\x00" + debian[10:]
    assert hashlib.sha256(mirror_file).hexdigest() == ds.SHA256["fashion-mnist"][filename]
    assert gzip.decompress(mirror_file) == gzip.decompress(debian)


# -- issue 14: an explicit path is the only place looked at; precise IDX size errors --------------------
@pytest.mark.parametrize("state", ["missing", "empty", "incomplete"])
def test_an_explicit_path_never_falls_back_to_another_copy(tmp_path, monkeypatch, state):
    # Before the fix, load(name, path=...) silently loaded the next copy (here $FASTCNN_DATA's).
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    make_set(tmp_path / "env" / "mnist")
    mine = tmp_path / "mine"
    if state != "missing":
        mine.mkdir()
    if state == "incomplete":
        make_set(mine)
        (mine / TEST_LABELS).unlink()
    match = {"missing": rf"path={re.escape(str(mine))}: no such directory",
             "empty": rf"path={re.escape(str(mine))} does not hold the mnist dataset: missing {TRAIN_IMAGES}, "
                      rf"{TRAIN_LABELS}, {TEST_IMAGES}, {TEST_LABELS}",
             "incomplete": rf"does not hold the mnist dataset: missing {TEST_LABELS} \(the four files"}[state]
    with pytest.raises(DatasetError, match=match):
        ds.load("mnist", path=mine)


@pytest.mark.parametrize("content, match", [
    # an images file whose magic says 1 dimension (the labels' 0x00000801)
    (b"\x00\x00\x08\x01" + np.array([3, 28, 28], ">u4").tobytes() + bytes(3 * 784),
     r"its header \(magic 0x00000801: uint8, 1 dimension\(s\), shape \(3,\)\) declares 3 bytes of data, the file "
     r"holds 2,360: the magic number is wrong; the data fits magic 0x00000803 \(uint8, shape \(3, 28, 28\)\)"),
    # float32 data under the uint8 type byte
    (b"\x00\x00\x08\x01" + np.array([5], ">u4").tobytes() + bytes(20),
     r"its header .* declares 5 bytes of data, the file holds 20: the magic number is wrong; "
     r"the data fits magic 0x00000c01 \(int32, shape \(5,\)\) or 0x00000d01 \(float32, shape \(5,\)\)$"),
    (b"\x00\x00\x08\x01" + np.array([5], ">u4").tobytes() + bytes(4),
     r"its header .* declares 5 bytes of data, the file holds 4: wrong number of items; the file is truncated"),
    (b"\x00\x00\x08\x01" + np.array([5], ">u4").tobytes() + bytes(7),
     r"its header .* declares 5 bytes of data, the file holds 7: wrong number of items; the file has trailing data"),
], ids=["ndim-byte", "type-byte", "truncated", "trailing"])
def test_a_wrong_magic_number_is_named_as_such(tmp_path, content, match):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ": not a valid IDX file: " + match):
        ds.read_idx(path)


def test_a_header_declaring_a_huge_array_costs_no_memory(tmp_path):
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0e\x03" + np.array([2**32 - 1] * 3, ">u4").tobytes() + bytes(64)))
    with pytest.raises(DatasetError, match=r"its header .* declares 633,[\d,]+ bytes of data, the file holds 64: "
                                           r"wrong number"):
        ds.read_idx(path)


def test_data_that_is_not_a_whole_number_of_items_is_a_dataset_error(tmp_path):
    # Found by the IDX fuzz target on the old reader: mnist.parse_idx raised a raw
    # "ValueError: bytes length not a multiple of item size" for int16 data of odd length.
    path = tmp_path / "odd-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0b\x01" + np.array([2], ">u4").tobytes() + bytes(5))
    with pytest.raises(DatasetError, match=r"declares 4 bytes of data, the file holds 5: wrong number of items; "
                                           r"the file has trailing data"):
        ds.read_idx(path)
