"""The op registry: op name -> implementation name -> (forward, backward).

Implementations register themselves when their package is imported
(``fastcnn.reference``, ``fastcnn.ops``, ``fastcnn.kernels``). Tests and
benchmarks iterate :func:`ops` and :func:`implementations`, so a variant is
tested and timed the moment it is registered.

Resolution of ``impl="auto"``: the environment variable ``FASTCNN_IMPL`` if set,
otherwise ``"numba"``. ``"numba"`` (asked for or resolved) means the numba entry
where the op has one and ``"numpy"`` otherwise, because a numba kernel is only
registered where a benchmark shows it beats the NumPy path. ``"reference"`` and
``"numpy"`` exist for every op.
"""

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["OpImpl", "register", "get", "resolve", "default_impl", "ops", "implementations", "IMPLS"]

#: Known implementation names, slowest first.
IMPLS = ("reference", "numpy", "numba")

_REGISTRY: dict[str, dict[str, "OpImpl"]] = {}
_LOADED = False


@dataclass(frozen=True)
class OpImpl:
    """One implementation of one op."""

    op: str
    impl: str
    forward: Callable
    backward: Optional[Callable]

    def __repr__(self):
        return f"OpImpl({self.op!r}, {self.impl!r})"


def register(op, impl, forward, backward=None):
    """Register ``forward``/``backward`` as implementation ``impl`` of ``op``."""
    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")
    _REGISTRY.setdefault(op, {})[impl] = OpImpl(op, impl, forward, backward)


def _load():
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    importlib.import_module("fastcnn.reference")
    importlib.import_module("fastcnn.ops")
    try:
        import numba  # noqa: F401
    except ImportError:  # numba missing: numpy and reference still work
        numba = None
    if numba is not None:
        importlib.import_module("fastcnn.kernels")
    _compose_fused()


#: Fused ops: name -> the ops they chain. An implementation that registers no
#: fused entry of its own gets the composition of its own entries, so every
#: implementation has every fused op, with exactly the unfused results.
#: Signature: the first op's (conv2d's), plus ``pool_size`` where a max pool
#: ends the chain (stride = pool size, no padding: the pools that can be fused).
FUSED = {
    "conv2d_relu": ("conv2d", "relu"),
    "conv2d_maxpool2d": ("conv2d", "max_pool2d"),
    "conv2d_relu_maxpool2d": ("conv2d", "relu", "max_pool2d"),
}

_NO_PADDING = ((0, 0), (0, 0))


def _chain(entries):
    first, rest = entries[0], entries[1:]

    def forward(*args, pool_size=None, **kwargs):
        z, cache = first.forward(*args, **kwargs)
        caches = [cache]
        for entry in rest:
            if entry.op == "max_pool2d":
                z, cache = entry.forward(z, pool_size=pool_size, stride=pool_size, padding=_NO_PADDING)
            else:
                z, cache = entry.forward(z)
            caches.append(cache)
        return z, tuple(caches)

    def backward(dy, cache, **kwargs):
        if cache[0] is None:
            raise ValueError("backward after a forward with need_cache=False")
        for entry, c in zip(reversed(rest), reversed(cache[1:])):
            dy = entry.backward(dy, c)
        return first.backward(dy, cache[0], **kwargs)

    name = "_".join(entry.op for entry in entries)
    forward.__name__, backward.__name__ = f"{name}_forward", f"{name}_backward"
    return forward, backward


def _compose_fused():
    for fused, chain in FUSED.items():
        for impl in IMPLS:
            if impl in _REGISTRY.get(fused, {}) or any(impl not in _REGISTRY.get(op, {}) for op in chain):
                continue
            register(fused, impl, *_chain([_REGISTRY[op][impl] for op in chain]))


def ops():
    """Names of every registered op, sorted."""
    _load()
    return sorted(_REGISTRY)


def implementations(op):
    """Implementation names registered for ``op``, slowest first."""
    _load()
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(_REGISTRY)}")
    return [name for name in IMPLS if name in _REGISTRY[op]]


def default_impl():
    """What ``impl="auto"`` asks for: ``$FASTCNN_IMPL`` if set, else ``"numba"``."""
    impl = os.environ.get("FASTCNN_IMPL", "").strip() or "numba"
    if impl not in IMPLS:
        raise ValueError(f"FASTCNN_IMPL={impl!r} is not one of {IMPLS}")
    return impl


def resolve(op, impl="auto"):
    """The implementation name ``impl`` means for ``op``."""
    available = implementations(op)
    if impl == "auto":
        impl = default_impl()
    elif impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {IMPLS}")
    if impl == "numba" and impl not in available:
        return "numpy"
    if impl not in available:
        raise ValueError(f"op {op!r} has no {impl!r} implementation; available: {available}")
    return impl


def get(op, impl="auto"):
    """The :class:`OpImpl` for ``op`` under ``impl`` (see module docstring)."""
    name = resolve(op, impl)  # loads the registry first
    return _REGISTRY[op][name]
