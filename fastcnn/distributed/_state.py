"""Start-up agreement between the ranks: same model and data (digests), rank 0's state everywhere."""

import hashlib
import json

import numpy as np

import fastcnn
from fastcnn.errors import FastCNNError


class DistributedError(FastCNNError):
    """The ranks of a data-parallel run disagree (model, data, weights) or stopped answering."""


_RECORD = 80  # bytes: model digest 32, data digest 16, parameter count 8, fastcnn version 24


def _model_digest(model):
    """sha256 of the model's description without its seed and state, and the fastcnn version."""
    from fastcnn.saving import describe

    desc = describe(model)
    arch = {k: v for k, v in desc["model"].items() if k != "seed"}
    text = json.dumps({"fastcnn": fastcnn.__version__, "model": arch, "compile": desc["compile"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).digest()


def _data_digest(x, y):
    """16 bytes that differ when ``x`` or ``y`` differ: shapes, dtypes, every label, 64 spread rows of x."""
    x, y = np.asarray(x), np.asarray(y)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((x.shape, x.dtype.str, y.shape, y.dtype.str)).encode())
    h.update(np.ascontiguousarray(y).tobytes())
    if x.shape[0]:
        h.update(np.ascontiguousarray(x[:: max(1, x.shape[0] // 64)]).tobytes())
    return h.digest()


def check_same(context, model, x, y):
    """Raise :class:`DistributedError` when the model or the data differ between ranks."""
    record = np.zeros(_RECORD, dtype=np.uint8)
    record[:32] = np.frombuffer(_model_digest(model), dtype=np.uint8)
    record[32:48] = np.frombuffer(_data_digest(x, y), dtype=np.uint8)
    record[48:56] = np.frombuffer(np.int64(model.count_params()).tobytes(), dtype=np.uint8)
    version = fastcnn.__version__.encode()[:24]
    record[56:56 + len(version)] = np.frombuffer(version, dtype=np.uint8)
    records = context.allgather(record, "the start-up check of the model")

    def describe_rank(r):
        rec = records[r]
        params = int(np.frombuffer(rec[48:56].tobytes(), dtype=np.int64)[0])
        ver = rec[56:].tobytes().rstrip(b"\0").decode(errors="replace")
        return f"rank {r}: fastcnn {ver}, {params:,} parameters, description sha256 {rec[:4].tobytes().hex()}"

    models_differ = [r for r in range(context.size) if not np.array_equal(records[r, :32], records[0, :32])]
    if models_differ:
        raise DistributedError(
            f"the model differs between ranks ({'; '.join(describe_rank(r) for r in [0] + models_differ)}): "
            f"every rank must build the same model (layers, settings, dtype, optimizer, loss) with the "
            f"same fastcnn version"
        )
    data_differ = [r for r in range(context.size) if not np.array_equal(records[r, 32:48], records[0, 32:48])]
    if data_differ:
        raise DistributedError(
            f"the training data of rank(s) {data_differ} differs from rank 0's: every rank must load "
            f"the same x and y (each takes its slice of every batch itself)"
        )


def _generators(model):
    """``{"model": Generator, "<layer index>": Generator, ...}`` of every random stream."""
    gens = {"model": model.rng}
    for i, layer in enumerate(model.layers):
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            gens[str(i)] = layer.rng
    return gens


def _json_int(value):
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot broadcast {type(value).__name__}")


def broadcast_state(context, model):
    """Make every rank's weights, non-trainable state (moving statistics), optimizer state and
    Generator states rank 0's."""
    optimizer = model.optimizer
    header = None
    if context.rank == 0:
        meta = {
            "rng": {k: g.bit_generator.state for k, g in _generators(model).items()},
            "iterations": optimizer.iterations,
            "slots": [[name, slot, list(a.shape), a.dtype.str] for name, slots in sorted(optimizer.state.items())
                      for slot, a in sorted(slots.items())],
        }
        header = np.frombuffer(json.dumps(meta, default=_json_int).encode(), dtype=np.uint8)
    length = np.array([0 if header is None else header.size], dtype=np.int64)
    context.bcast(length, "the model state from rank 0")
    if header is None:
        header = np.empty(int(length[0]), dtype=np.uint8)
    else:
        header = header.copy()
    context.bcast(header, "the model state from rank 0")
    meta = json.loads(header.tobytes())
    if context.rank != 0:
        for key, gen in _generators(model).items():
            gen.bit_generator.state = meta["rng"][key]
        optimizer.iterations = int(meta["iterations"])
        optimizer.state = {}
        for name, slot, shape, dtype in meta["slots"]:
            optimizer.state.setdefault(name, {})[slot] = np.empty(tuple(shape), dtype=np.dtype(dtype))
    for _, p, _ in model.params():
        context.bcast(p, "the weights from rank 0")
    for _, a in model.states():
        context.bcast(a, "the non-trainable state from rank 0")
    for name, slot, _, _ in meta["slots"]:
        context.bcast(optimizer.state[name][slot], "the optimizer state from rank 0")
    model._weights_changed()  # inference plans fold the weights and state: rebuild them


def _weights_digest(model):
    h = hashlib.blake2b(digest_size=16)
    for _, p, _ in model.params():
        h.update(p.tobytes())
    for _, a in model.states():
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def check_weights_agree(context, model):
    """Raise :class:`DistributedError` unless every rank holds bit-identical weights and state."""
    digests = context.allgather(_weights_digest(model), "the weight check")
    differ = [r for r in range(context.size) if not np.array_equal(digests[r], digests[0])]
    if differ:
        raise DistributedError(f"the weights or moving statistics of rank(s) {differ} diverged from rank 0's")

