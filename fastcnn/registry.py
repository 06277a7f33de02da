"""The op registry: op name -> implementation name -> (forward, backward).

Implementations register themselves when their package is imported
(``fastcnn.reference``, ``fastcnn.ops``, ``fastcnn.kernels``). Tests and
benchmarks iterate :func:`ops` and :func:`implementations`, so a variant is
tested and timed the moment it is registered.

Names: a *family* (``"reference"``, ``"numpy"``, ``"numba"``) or a *variant*
of the numba family, ``"numba:<name>"`` (``numba:im2col``, ``numba:shifted``,
``numba:direct``, ``numba:winograd``, ...). A variant comes with a predicate,
``applies(geometry) -> bool`` on a :class:`Geometry`, saying where it is
correct (stride, kernel size, padding, dtype). Where an op has variants, its
``"numba"`` entry is a dispatcher: per call geometry it runs the variant the
planner (:mod:`fastcnn.planner`) chose, and the backward of that same variant.

Resolution of ``impl="auto"``: the environment variable ``FASTCNN_IMPL`` if set
(a family), otherwise ``"numba"``. ``"numba"`` (asked for or resolved) means the
numba entry where the op has one and ``"numpy"`` otherwise, because a numba
kernel is only registered where a benchmark shows it beats the NumPy path.
``"reference"`` and ``"numpy"`` exist for every op. A variant name asks for that
variant, and is an error for an op that does not have it.
"""

import importlib
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

__all__ = ["OpImpl", "Geometry", "register", "get", "resolve", "default_impl", "ops", "implementations",
           "variants", "applicable", "family", "check_impl", "geometry_of", "IMPLS"]

#: Known implementation families, slowest first.
IMPLS = ("reference", "numpy", "numba")

_REGISTRY: dict[str, dict[str, "OpImpl"]] = {}
_LOADED = False


class Geometry(NamedTuple):
    """What a variant's predicate and the planner see of one call: shapes, not values.

    ``stride``, ``padding`` (``((PT, PB), (PL, PR))``) and ``pool_size`` are None
    for ops without them (dense); ``dtype`` is the input's dtype name.
    """

    op: str
    x_shape: tuple
    w_shape: tuple
    stride: Optional[tuple]
    padding: Optional[tuple]
    pool_size: Optional[tuple]
    dtype: str


def geometry_of(op, args, kwargs):
    """The :class:`Geometry` of a call ``forward(*args, **kwargs)`` of a weighted op."""
    x, w = args[0], args[1]

    def pairs(v):
        return None if v is None else tuple(tuple(int(t) for t in p) if isinstance(p, (tuple, list)) else int(p)
                                            for p in v)

    return Geometry(op, tuple(x.shape), tuple(w.shape), pairs(kwargs.get("stride")), pairs(kwargs.get("padding")),
                    pairs(kwargs.get("pool_size")), x.dtype.name)


def _always(geometry):
    return True


@dataclass(frozen=True)
class OpImpl:
    """One implementation of one op; ``applies(geometry)`` says where a variant may run;
    ``plan_training``: whether the planner may choose it where a backward pass follows."""

    op: str
    impl: str
    forward: Callable
    backward: Optional[Callable]
    applies: Callable = _always
    plan_training: bool = True

    def __repr__(self):
        return f"OpImpl({self.op!r}, {self.impl!r})"


def family(impl):
    """The family of an implementation name: ``"numba:winograd"`` -> ``"numba"``."""
    return impl.split(":", 1)[0]


def check_impl(impl, owner=""):
    """Raise ``ValueError`` unless ``impl`` is ``"auto"``, a family or a well-formed variant name."""
    fam, sep, name = impl.partition(":") if isinstance(impl, str) else ("", "", "")
    if impl == "auto" or (fam in IMPLS and (not sep or (fam == "numba" and name))):
        return impl
    where = f"{owner}: " if owner else ""
    raise ValueError(f"{where}unknown impl {impl!r}; expected 'auto' or one of {IMPLS}, or a numba variant "
                     f"such as 'numba:im2col' (see fastcnn.registry.implementations(op))")


def register(op, impl, forward, backward=None, *, applies=None, plan_training=True):
    """Register ``forward``/``backward`` as implementation ``impl`` of ``op``.

    ``impl`` is a family name or a variant ``"numba:<name>"``; a variant takes
    ``applies(geometry) -> bool`` (default: everywhere). ``plan_training=False``:
    the planner chooses the variant for inference only (a layer may still ask
    for it by name).
    """
    check_impl(impl)
    if impl == "auto":
        raise ValueError("'auto' is not an implementation name")
    if applies is not None and ":" not in impl:
        raise ValueError(f"only a variant takes a predicate; {impl!r} is a family")
    _REGISTRY.setdefault(op, {})[impl] = OpImpl(op, impl, forward, backward, applies or _always, plan_training)


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
    _compose_dispatchers()
    _compose_fused()


#: Fused ops: name -> the ops they chain. An implementation that registers no
#: fused entry of its own gets the composition of its own entries, so every
#: implementation has every fused op, with exactly the unfused results.
#: Signature: the first op's (conv2d's; add's: the input arrays), plus ``pool_size`` where a max
#: pool ends the chain (stride = pool size, no padding: the pools that can be fused).
FUSED = {
    "conv2d_relu": ("conv2d", "relu"),
    "conv2d_maxpool2d": ("conv2d", "max_pool2d"),
    "conv2d_relu_maxpool2d": ("conv2d", "relu", "max_pool2d"),
    "add_relu": ("add", "relu"),
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


def _compose_dispatchers():
    for op, entries in _REGISTRY.items():
        if "numba" not in entries and any(family(name) == "numba" for name in entries):
            register(op, "numba", *_dispatcher(op))


def _dispatcher(op):
    """The ``"numba"`` entry of an op with variants: the planner's choice per call geometry."""
    from fastcnn import planner

    def forward(*args, **kwargs):
        entry = planner.choose(op, args, kwargs)
        y, cache = entry.forward(*args, **kwargs)
        return y, (None if cache is None else (entry, cache))

    def backward(dy, cache, **kwargs):
        if cache is None:
            raise ValueError("backward after a forward with need_cache=False")
        entry, inner = cache
        return entry.backward(dy, inner, **kwargs)

    forward.__name__, backward.__name__ = f"{op}_forward", f"{op}_backward"
    return forward, backward


def ops():
    """Names of every registered op, sorted."""
    _load()
    return sorted(_REGISTRY)


def implementations(op):
    """Implementation names registered for ``op``: the families slowest first, then the variants."""
    _load()
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(_REGISTRY)}")
    return [name for name in IMPLS if name in _REGISTRY[op]] + variants(op)


def variants(op, geometry=None, *, training=None):
    """The ``"numba:*"`` variants of ``op`` in registration order; only those whose predicate
    holds for ``geometry`` when one is given, and with ``training=True`` only those the
    planner may choose where a backward pass follows."""
    _load()
    return [name for name, entry in _REGISTRY.get(op, {}).items()
            if ":" in name and (geometry is None or entry.applies(geometry))
            and (not training or entry.plan_training)]


def applicable(op, args, kwargs, names=None):
    """Of ``names`` (default: every implementation of ``op``), those that may run
    ``forward(*args, **kwargs)``: families always, variants where their predicate holds."""
    names = implementations(op) if names is None else names
    geometry = geometry_of(op, args, kwargs) if any(":" in name for name in names) else None
    return [name for name in names if ":" not in name or _REGISTRY[op][name].applies(geometry)]


def default_impl():
    """What ``impl="auto"`` asks for: ``$FASTCNN_IMPL`` if set, else ``"numba"``."""
    impl = os.environ.get("FASTCNN_IMPL", "").strip() or "numba"
    if impl not in IMPLS:
        raise ValueError(f"FASTCNN_IMPL={impl!r} is not one of {IMPLS} (a variant is chosen with FASTCNN_PLAN)")
    return impl


def resolve(op, impl="auto"):
    """The implementation name ``impl`` means for ``op``."""
    available = implementations(op)
    if impl == "auto":
        impl = default_impl()
    else:
        check_impl(impl)
    if impl == "numba" and impl not in available:
        return "numpy"
    if impl not in available:
        raise ValueError(f"op {op!r} has no {impl!r} implementation; available: {available}")
    return impl


def get(op, impl="auto"):
    """The :class:`OpImpl` for ``op`` under ``impl`` (see module docstring)."""
    name = resolve(op, impl)  # loads the registry first
    return _REGISTRY[op][name]
