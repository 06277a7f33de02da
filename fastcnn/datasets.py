"""MNIST-format datasets: find them, download them, check them, load them.

``load("mnist" | "fashion-mnist" | "kmnist")`` looks for the four standard IDX
files in, in order:

1. the explicit ``path`` (the directory itself, or ``path/<name>``): when
   given, the only place looked at;
2. ``$FASTCNN_DATA/<name>``;
3. the cache, ``~/.cache/fastcnn/<name>`` (``$XDG_CACHE_HOME/fastcnn/<name>``);
4. system copies, ``<root>/<name>`` for each root in :data:`SYSTEM_DIRS`
   (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``);
5. with ``download=True``, a download into the cache from :data:`MIRRORS`.

The first directory that holds all four files is used. Files found on disk are
validated structurally (users may supply their own copies); downloads are also
verified against :data:`SHA256` before they are renamed into place. Every
problem with a file is a :class:`~fastcnn.errors.DatasetError` that names it.
IDX decoding goes through the ``mnist`` package's parser (``mnist.parse_idx``).
"""

import gzip
import hashlib
import http.client
import io
import math
import os
import secrets
import struct
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import mnist
import numpy as np

from fastcnn.errors import DatasetError

__all__ = [
    "load",
    "read_idx",
    "write_idx",
    "cache_dir",
    "DATASETS",
    "FILES",
    "CLASS_NAMES",
    "MIRRORS",
    "SHA256",
    "SYSTEM_DIRS",
]

#: The four files of every dataset, in the order train images, train labels,
#: test images, test labels. The same names without ``.gz`` (uncompressed) work too.
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: Download mirrors, tried in order. yann.lecun.com no longer serves MNIST.
#: MNIST: PyTorch's mirror (torchvision.datasets.MNIST.mirrors) and TensorFlow's
#: (tensorflow_datasets url_checksums/mnist.txt); both serve the original files.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
}

#: sha256 of each file as served by the mirrors, from tensorflow_datasets'
#: url_checksums/{mnist,fashion_mnist,kmnist}.txt. They agree with the md5 sums
#: published by the dataset authors and torchvision. (Debian's Fashion-MNIST copy
#: has the same content but a rewritten gzip header, so a different sha256.)
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "train-labels-idx1-ubyte.gz": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        "t10k-images-idx3-ubyte.gz": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "t10k-labels-idx1-ubyte.gz": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    },
}

#: Known dataset names.
DATASETS = tuple(MIRRORS)

#: Human-readable class names, indexed by label. KMNIST's are the romanized
#: hiragana お き す つ な は ま や れ を.
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}

#: Roots searched for system-wide copies, as ``<root>/<name>``.
SYSTEM_DIRS = ["/usr/local/share/datasets", "/usr/share/datasets"]

#: Seconds allowed to connect to a mirror (DNS lookup included) and for each
#: read of a download. A host that cannot be reached is not tried again for the
#: other files, so an offline search gives up within DOWNLOAD_TIMEOUT per host.
DOWNLOAD_TIMEOUT = 5.0

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# IDX type codes by NumPy dtype (byte order aside).
_IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


# ----------------------------------------------------------------------------- IDX files


def read_idx(path):
    """Read one IDX file (gzip-compressed or not) into a NumPy array.

    Parameters
    ----------
    path : str or os.PathLike
        The file. A gzip stream is recognized by its first bytes; a name ending
        in ``.gz`` must hold one.

    Returns
    -------
    numpy.ndarray
        The array the file describes, with the dtype and shape its header says
        (``uint8 (N, 28, 28)`` for an MNIST images file, ``uint8 (N,)`` for labels).

    Raises
    ------
    DatasetError
        The file is missing, unreadable, not gzip although named ``.gz``, a
        truncated or corrupt gzip stream, or not valid IDX data.
    """
    path = Path(path)
    try:
        raw = open(path, "rb")
    except OSError as error:
        raise DatasetError(f"{path}: cannot open: {error.strerror or error}") from error
    with raw:
        try:
            start = raw.read(16)
            raw.seek(0)
        except OSError as error:
            raise DatasetError(f"{path}: cannot read: {error.strerror or error}") from error
        compressed = start[:2] == b"\x1f\x8b"
        if path.name.endswith(".gz") and not compressed:
            raise DatasetError(
                f"{path}: not a gzip file (expected the gzip magic bytes 1f 8b, "
                f"found {start!r}){_looks_like(start)}"
            )
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return mnist.parse_idx(_bounded_idx(stream, path))
        except EOFError as error:
            raise DatasetError(f"{path}: truncated: the gzip stream ends early ({error})") from error
        except (gzip.BadGzipFile, zlib.error) as error:
            raise DatasetError(f"{path}: corrupt gzip data: {error}") from error
        except mnist.IdxDecodeError as error:
            detail = _looks_like(start) if not compressed else ""
            if "wrong number of items" in str(error):
                detail = "; the file is truncated or has trailing data"
            raise DatasetError(f"{path}: not a valid IDX file: {error}{detail}") from error
        except (struct.error, TypeError) as error:
            # parse_idx leaks these for a header cut short or declaring 0 dimensions
            raise DatasetError(
                f"{path}: not a valid IDX file: malformed or truncated header ({error})"
            ) from error
        except OSError as error:
            raise DatasetError(f"{path}: cannot read: {error.strerror or error}") from error


#: Bytes read per chunk; data is read in chunks so that a header declaring a huge
#: array (or a gzip bomb) costs memory only for the bytes actually present.
_CHUNK = 1 << 20
#: On the error path, how much of a file with more data than its header declares
#: is read to explain the mismatch.
_EXPLAIN_LIMIT = 1 << 28
_IDX_ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
_IDX_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def _read_up_to(stream, limit):
    """At most ``limit`` bytes of ``stream``, read in chunks (memory follows the data, not ``limit``)."""
    chunks, size = [], 0
    while size < limit:
        chunk = stream.read(min(_CHUNK, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _bounded_idx(stream, path):
    """The IDX bytes of ``stream`` as a file object for ``mnist.parse_idx``, after checking that the data
    has exactly the size the header declares (read no further than that, plus one byte).

    A malformed header is handed over as read, for the parser to report.
    """
    head = _read_up_to(stream, 4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_ITEMSIZE or head[3] == 0:
        return io.BytesIO(head)
    ndim, itemsize = head[3], _IDX_ITEMSIZE[head[2]]
    dims_raw = _read_up_to(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        return io.BytesIO(head + dims_raw)
    shape = struct.unpack(f">{ndim}I", dims_raw)
    expected = math.prod(shape) * itemsize
    data = _read_up_to(stream, expected + 1)
    if len(data) != expected:
        if len(data) > expected:
            data += _read_up_to(stream, _EXPLAIN_LIMIT)
        raise DatasetError(f"{path}: not a valid IDX file: {_size_mismatch(head, dims_raw + data, shape, expected)}")
    return io.BytesIO(head + dims_raw + data)


def _size_mismatch(head, body, shape, expected):
    """Why the data size differs from the header's, naming the magic number and what would fit.

    ``body``: the bytes after the 4-byte magic number (dimension sizes and data).
    """
    code, ndim = head[2], head[3]
    found = len(body) - 4 * ndim
    magic = f"0x{code << 8 | ndim:08x}"
    said = (f"its header (magic {magic}: {_IDX_TYPE_NAMES[code]}, {ndim} dimension(s), shape {shape}) "
            f"declares {expected:,} bytes of data, the file holds {found:,}"
            + (" or more" if found >= expected + _EXPLAIN_LIMIT else ""))
    fits = []
    for other_ndim in range(1, 5):  # the dimension count byte is wrong: the body read with another one
        if other_ndim == ndim or len(body) < 4 * other_ndim:
            continue
        dims = struct.unpack(f">{other_ndim}I", body[:4 * other_ndim])
        if all(dims) and math.prod(dims) * _IDX_ITEMSIZE[code] == len(body) - 4 * other_ndim:
            fits.append(f"0x{code << 8 | other_ndim:08x} ({_IDX_TYPE_NAMES[code]}, shape {dims})")
    for other_code, size in _IDX_ITEMSIZE.items():  # the type byte is wrong
        if size != _IDX_ITEMSIZE[code] and math.prod(shape) * size == found:
            fits.append(f"0x{other_code << 8 | ndim:08x} ({_IDX_TYPE_NAMES[other_code]}, shape {shape})")
    if fits:
        return f"{said}: the magic number is wrong; the data fits magic {' or '.join(fits[:2])}"
    if found < expected:
        return f"{said}: wrong number of items; the file is truncated"
    return f"{said}: wrong number of items; the file has trailing data"


def write_idx(path, array):
    """Write ``array`` as an IDX file, atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the data are gzip-compressed when the name ends in ``.gz``.
    array : array_like
        uint8, int8, int16, int32, float32 or float64 data with 1 to 255 dimensions.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        The dtype has no IDX type code (for example int64 or bool).
    ValueError
        The array is 0-dimensional, has more than 255 dimensions, or an axis of
        2**32 elements or more.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.str[1:]) if array.dtype.kind in "uif" else None
    if code is None:
        raise TypeError(
            "write_idx: IDX holds uint8, int8, int16, int32, float32 or float64 arrays; "
            f"received dtype {array.dtype} (convert first, e.g. labels.astype(np.uint8))"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(
            f"write_idx: expected an array with 1 to 255 dimensions; received shape {array.shape}"
        )
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"write_idx: every axis must be shorter than 2**32; received shape {array.shape}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as out:
            if path.name.endswith(".gz"):
                with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz:
                    gz.write(header)
                    gz.write(body)
            else:
                out.write(header)
                out.write(body)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _looks_like(start):
    """A hint about what a non-IDX file is, from its first bytes."""
    if start.lstrip()[:1] == b"<":
        return "; it looks like an HTML/XML page, e.g. an error page saved by a failed download"
    if not start:
        return "; the file is empty"
    return ""


def _idx_magic(array):
    """The IDX magic number that describes ``array``, as hex text."""
    code = _IDX_CODES.get(array.dtype.str[1:], 0)
    return f"0x{code << 8 | array.ndim:08x}"


def _read_images(path):
    """Read and validate an images file: uint8 (N, 28, 28), N > 0."""
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3:
        hint = " (this looks like a labels file)" if images.ndim == 1 else ""
        raise DatasetError(
            f"{path}: expected an IDX images file (magic 0x00000803: uint8, 3 dimensions (N, 28, 28)); "
            f"found magic {_idx_magic(images)}: {images.dtype} with {images.ndim} dimension(s), "
            f"shape {images.shape}{hint}"
        )
    if images.shape[1:] != IMAGE_SHAPE:
        raise DatasetError(
            f"{path}: expected 28x28 images, shape (N, 28, 28); found shape {images.shape}"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{path}: holds no images (shape {images.shape})")
    return images


def _read_labels(path):
    """Read and validate a labels file: uint8 (N,) with values 0..9."""
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        hint = " (this looks like an images file)" if labels.ndim == 3 else ""
        raise DatasetError(
            f"{path}: expected an IDX labels file (magic 0x00000801: uint8, 1 dimension (N,)); "
            f"found magic {_idx_magic(labels)}: {labels.dtype} with {labels.ndim} dimension(s), "
            f"shape {labels.shape}{hint}"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DatasetError(
            f"{path}: labels must be 0..{NUM_CLASSES - 1}; found {bad.size} out of range, "
            f"the first is {labels[bad[0]]} at index {bad[0]}"
        )
    return labels


# ----------------------------------------------------------------------------- search


def _canonical_name(name):
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, one of {', '.join(DATASETS)}; received {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in MIRRORS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return key


def cache_dir(name=None):
    """The download cache: ``$XDG_CACHE_HOME/fastcnn`` or ``~/.cache/fastcnn``.

    Parameters
    ----------
    name : str, optional
        A dataset name; when given, the dataset's subdirectory is returned.

    Returns
    -------
    pathlib.Path
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    root = root / "fastcnn"
    return root / _canonical_name(name) if name is not None else root


def _search_dirs(name):
    """Where to look without an explicit path, in order: ``(description, directory or None)``."""
    places = []
    data_root = os.environ.get("FASTCNN_DATA", "")
    if data_root:
        directory = Path(data_root).expanduser() / name
        places.append((f"$FASTCNN_DATA/{name} = {directory}", directory))
    else:
        places.append((f"$FASTCNN_DATA/{name}: FASTCNN_DATA is not set", None))
    places.append((f"cache {cache_dir(name)}", cache_dir(name)))
    places += [(f"system copy {Path(root) / name}", Path(root) / name) for root in SYSTEM_DIRS]
    return places


def _locate(directory):
    """Map each of :data:`FILES` to an existing file in ``directory``.

    Returns ``(found, missing)``: a dict filename -> path (``.gz`` preferred over
    the uncompressed name) and the list of filenames with neither.
    """
    found, missing = {}, []
    for filename in FILES:
        for candidate in (directory / filename, directory / filename[: -len(".gz")]):
            if candidate.is_file():
                found[filename] = candidate
                break
        else:
            missing.append(filename)
    return found, missing


def _why_unusable(directory):
    if not directory.exists():
        return "does not exist"
    if not directory.is_dir():
        return "is not a directory"
    _, missing = _locate(directory)
    return f"missing {', '.join(missing)}"


# ----------------------------------------------------------------------------- download


def _open_url(url, timeout):
    """``urlopen`` that gives up after ``timeout`` seconds, DNS lookup included.

    ``urlopen``'s own timeout covers neither the DNS lookup (a broken resolver
    can block for tens of seconds) nor the sum over several addresses of one
    host, so the connection is made in a daemon thread, abandoned when late.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "fastcnn"})
    outcome = {}

    def connect():
        try:
            outcome["response"] = urllib.request.urlopen(request, timeout=timeout)
        except Exception as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=connect, name="fastcnn-download", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        host = urllib.parse.urlsplit(url).hostname
        raise urllib.error.URLError(f"no answer from {host} within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


class _HostDown(Exception):
    """The mirror could not be reached at all: skip it for the other files."""


def _fetch(url, destination, sha256):
    """Download ``url`` to ``destination`` via ``<destination>.partial``, checking sha256.

    Raises ``_HostDown`` when the host cannot be reached, ``DatasetError`` for
    an HTTP error, an interrupted transfer or a checksum mismatch. On any
    failure the ``.partial`` file is removed and ``destination`` is untouched.
    """
    partial = destination.with_name(destination.name + ".partial")
    digest = hashlib.sha256()
    try:
        try:
            response = _open_url(url, DOWNLOAD_TIMEOUT)
        except urllib.error.HTTPError as error:
            raise DatasetError(f"HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError) as error:  # DNS, refused, timed out
            raise _HostDown(str(getattr(error, "reason", error))) from error
        with response:
            destination.parent.mkdir(parents=True, exist_ok=True)  # only once a mirror answers
            with open(partial, "wb") as out:  # "wb" truncates a stale .partial
                while chunk := response.read(1 << 16):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DatasetError(
                f"sha256 mismatch for {destination.name}: expected {sha256}, "
                f"received {digest.hexdigest()} (download discarded)"
            )
        os.replace(partial, destination)
    except (OSError, http.client.HTTPException) as error:  # reset or timed out mid-transfer, disk full, ...
        raise DatasetError(f"download failed: {error!r}") from error
    finally:
        partial.unlink(missing_ok=True)


def _download(name, directory):
    """Download the files missing from ``directory``. Returns a list of failures (empty: success)."""
    failures, down, complete = [], {}, True
    _, missing = _locate(directory)
    for filename in missing:
        errors = []
        for mirror in MIRRORS[name]:
            if mirror in down:
                continue
            url = mirror + filename
            print(f"fastcnn: downloading {url}", file=sys.stderr)
            try:
                _fetch(url, directory / filename, SHA256[name][filename])
                break
            except _HostDown as error:
                down[mirror] = str(error)
            except DatasetError as error:
                errors.append(f"{url}: {error}")
        else:
            complete = False
            failures += errors
    if complete:
        return []
    return failures + [f"{mirror}: unreachable: {reason}" for mirror, reason in down.items()]


# ----------------------------------------------------------------------------- load


def load(name, path=None, download=True, raw=False):
    """Load an MNIST-format dataset: ``mnist``, ``fashion-mnist`` or ``kmnist``.

    Parameters
    ----------
    name : str
        The dataset (case and ``_``/``-`` do not matter).
    path : str or os.PathLike, optional
        A directory holding the four files of :data:`FILES` (gzip-compressed or
        not), or holding them in a ``<name>`` subdirectory. When given, it is the
        only place looked at: a missing or incomplete directory is a
        ``DatasetError`` naming the missing files (no other copy, no download).
    download : bool
        Download the files into :func:`cache_dir` when no copy is found.
    raw : bool
        Return the images as stored: uint8 (N, 28, 28) in 0..255.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        Images float32 in [0, 1] (pixel / 255), labels int64 in 0..9.

    Shape:
        - x: ``(N, 28, 28, 1)`` (NHWC), or ``(N, 28, 28)`` with ``raw=True``;
        - y: ``(N,)``; N is 60000 / 10000 for the three standard datasets.

    Raises
    ------
    ValueError
        ``name`` is not a known dataset.
    DatasetError
        No copy was found and none could be downloaded (the message lists every
        place searched and how to supply the files), or a file is corrupt,
        truncated, of the wrong kind or inconsistent with its partner.
    """
    name = _canonical_name(name)
    if path is not None:
        return _load_from_path(name, path, raw)
    cache = cache_dir(name)
    looked = []
    for description, directory in _search_dirs(name):
        if directory is None:
            looked.append(description)
            continue
        found, missing = _locate(directory)
        if not missing:
            return _load_files(found, raw, in_cache=directory == cache)
        looked.append(f"{description}: {_why_unusable(directory)}")

    if not download:
        failures = ["not attempted (download=False)"]
    else:
        failures = _download(name, cache)
        if not failures:
            return _load_files(_locate(cache)[0], raw, in_cache=True)
    raise DatasetError(_not_found_message(name, looked, cache, failures))


def _load_from_path(name, path, raw):
    """An explicit ``path`` is the only place looked at: no other copy, no download."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise DatasetError(f"path={directory}: no such directory (an explicit path is the only place looked at "
                           f"for {name}; pass path=None to search the usual places)")
    if not directory.is_dir():
        raise DatasetError(f"path={directory}: not a directory")
    for candidate in (directory, directory / name):
        found, missing = _locate(candidate)
        if not missing:
            return _load_files(found, raw, in_cache=False)
    missing = _locate(directory)[1]
    raise DatasetError(
        f"path={directory} does not hold the {name} dataset: missing {', '.join(missing)} "
        f"(the four files, gzip-compressed or not, belong in {directory} or {directory / name}; an explicit "
        f"path is the only place looked at)"
    )


def _load_files(found, raw, in_cache):
    """Read and check the four files; scale unless ``raw``."""
    try:
        splits = []
        for images_file, labels_file in ((FILES[0], FILES[1]), (FILES[2], FILES[3])):
            images = _read_images(found[images_file])
            labels = _read_labels(found[labels_file])
            if len(images) != len(labels):
                raise DatasetError(
                    f"{found[images_file]} holds {len(images)} images but {found[labels_file]} "
                    f"holds {len(labels)} labels; they must match"
                )
            splits.append((images, labels))
    except DatasetError as error:
        if in_cache:  # a cached file can simply be fetched again
            hint = "(delete the file and call load() again to re-download it)"
            raise DatasetError(f"{error}\n{hint}") from error
        raise
    return tuple((_scale(images, raw), labels.astype(np.int64)) for images, labels in splits)


def _scale(images, raw):
    if raw:
        return images
    x = np.divide(images, np.float32(255), dtype=np.float32)  # (N, 28, 28) in [0, 1]
    return x.reshape(*images.shape, 1)  # (N, 28, 28, 1) NHWC


def _not_found_message(name, looked, cache, failures):
    files = ", ".join(FILES)
    lines = [f"no copy of the {name} dataset was found, and it could not be downloaded.", "Looked in:"]
    lines += [f"  {line}" for line in looked]
    lines.append(f"Download into {cache}:")
    lines += [f"  {line}" for line in failures]
    lines += [
        f"To supply the files yourself, put the four files {files}",
        "(gzip-compressed, or uncompressed without .gz) in a directory DIR, then either",
        "  pass --data-dir DIR on the command line,",
        f"  call fastcnn.datasets.load({name!r}, path=DIR), or",
        f"  set FASTCNN_DATA=ROOT with the files in ROOT/{name},",
        f"or copy them into {cache}.",
    ]
    return "\n".join(lines)
