"""All-or-nothing training steps: a Ctrl-C (or any exception) never leaves a half-applied step.

A training step has two phases:

1. **compute**: forward, loss, backward. It writes only scratch memory (layer
   caches, gradient buffers) and advances the random generators the layers
   draw from (Dropout masks). An exception here is undone by restoring the
   generators' states, taken before the step, so the model is exactly as it
   was before the call.
2. **commit**: the optimizer update of every parameter, its state and its step
   count. It runs with SIGINT *deferred* (:func:`deferred_sigint`): a Ctrl-C
   that arrives during the update is recorded and raised as soon as the update
   is complete, so the model is exactly as after a full step. Gradients are
   checked before the update starts, so the update itself has nothing to refuse.

:func:`atomic_step` is the one place both phases meet; ``Model._train_step`` calls it
(``train_on_batch`` and every batch of ``fit``, functional models and ``Sequential`` alike). Its cost per step is a handful of
microseconds (two ``signal.signal`` calls and a copy of each layer generator's state).

Numba kernels do not run Python signal handlers: a SIGINT that arrives inside a
kernel is handled when the kernel returns, at the next Python instruction.
"""

import contextlib
import threading

import numpy as np

try:  # the C functions under ``signal``: its wrappers convert to enums at ~4 us per call
    import _signal as _sig
except ImportError:  # pragma: no cover - other Python implementations
    import signal as _sig

__all__ = ["atomic_step", "deferred_sigint", "PartialUpdateError"]

#: Layer attributes holding non-trained state that a forward pass may change
#: (e.g. moving statistics): dicts of arrays, copied before a step and restored
#: when it does not complete.
STATE_ATTRIBUTES = ("state",)


class PartialUpdateError(RuntimeError):
    """The optimizer update failed part-way (a bug, or memory exhausted): some parameters
    may be updated and others not. The model should be reloaded from a checkpoint."""


_MAIN_THREAD = threading.main_thread()


class deferred_sigint:
    """Hold back SIGINT for the duration of the ``with`` block, then deliver it.

    Only in the main thread (the only one Python delivers signals to, and the only
    one allowed to install handlers); elsewhere the block runs unchanged. A SIGINT
    that arrives in the block is handed to the previous handler when the block
    ends (for Python's default, ``KeyboardInterrupt`` is raised there).
    """

    __slots__ = ("previous", "received")

    def __enter__(self):
        self.previous = None
        self.received = None
        if threading.current_thread() is not _MAIN_THREAD:
            return self
        previous = _sig.getsignal(_sig.SIGINT)
        if previous is None or previous == _sig.SIG_IGN:  # not installed from Python, or ignored
            return self
        self.received = []
        self.previous = previous
        _sig.signal(_sig.SIGINT, self._record)
        return self

    def _record(self, signum, frame):
        self.received.append(frame)

    def __exit__(self, *exc):
        previous = self.previous
        if previous is None:
            return False
        _sig.signal(_sig.SIGINT, previous)
        if self.received:
            if previous == _sig.SIG_DFL:
                _sig.raise_signal(_sig.SIGINT)
            else:
                previous(_sig.SIGINT, self.received[0])
        return False


def _generators(model):
    """The numpy Generators a step draws from: the layers' (Dropout masks). The model's own
    Generator (shuffling) is drawn from between steps, never inside one."""
    found = []
    for layer in model.layers:
        rng = getattr(layer, "rng", None)
        if isinstance(rng, np.random.Generator):
            found.append(rng)
    return found


def _layer_states(model):
    """``[(dict, {key: copy})]`` of the non-trained state dicts listed in :data:`STATE_ATTRIBUTES`."""
    saved = []
    for layer in model.layers:
        for attribute in STATE_ATTRIBUTES:
            state = getattr(layer, attribute, None)
            if isinstance(state, dict) and state:
                saved.append((state, {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in state.items()}))
    return saved


def check_gradients(params):
    """Refuse, before any parameter is touched, a gradient whose shape or dtype differs from its parameter."""
    for name, p, g in params:
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(
                f"gradient for {name!r} has shape {g.shape} dtype {g.dtype}, expected shape {p.shape} "
                f"dtype {p.dtype}; the step was not applied"
            )


class _Step:
    """The state of one :func:`atomic_step`; :meth:`commit` applies the update."""

    __slots__ = ("model", "generators", "rng_states", "layer_states", "committed")

    def __init__(self, model):
        self.model = model
        self.generators = _generators(model)
        self.rng_states = [g.bit_generator.state for g in self.generators]
        self.layer_states = _layer_states(model)
        self.committed = False

    def commit(self, optimizer, params):
        """Apply ``optimizer.step(params)`` whole, with SIGINT deferred until it is done."""
        check_gradients(params)
        with deferred_sigint():
            try:
                optimizer.step(params)
            except Exception as error:
                raise PartialUpdateError(
                    f"the optimizer update failed part-way ({type(error).__name__}: {error}); the weights "
                    f"and optimizer state may be inconsistent: reload the model from a checkpoint"
                ) from error
            self.committed = True

    def rollback(self):
        """Put back the generators and layer states (SIGINT deferred, so the rollback is whole too).

        State arrays are restored **in place** (other objects, such as a data-parallel
        step or a plan, may hold references to them); an entry whose array was replaced
        by one of another shape, or that is not an array, is put back as it was.
        """
        with deferred_sigint():
            for g, state in zip(self.generators, self.rng_states):
                g.bit_generator.state = state
            for state, saved in self.layer_states:
                for key in [k for k in state if k not in saved]:
                    del state[key]
                for key, value in saved.items():
                    current = state.get(key)
                    if (isinstance(value, np.ndarray) and isinstance(current, np.ndarray)
                            and current.shape == value.shape and current.dtype == value.dtype):
                        current[...] = value
                    else:
                        state[key] = value
            changed = getattr(self.model, "_weights_changed", None)
            if changed is not None:  # cached inference plans may hold folded statistics
                changed()


@contextlib.contextmanager
def atomic_step(model):
    """Run one training step all-or-nothing.

    Usage::

        with atomic_step(model) as step:
            ...forward, loss, backward...
            step.commit(model.optimizer, model.params())

    If the block ends without :meth:`_Step.commit` having completed (an exception,
    a ``KeyboardInterrupt``, or a plain exit such as a non-finite loss), the
    model's random generators and layer states are put back as they were, and
    the weights and optimizer state were never touched. Once the commit
    completes, the step stands, even if a deferred Ctrl-C is raised right after.
    """
    step = _Step(model)
    try:
        yield step
    finally:
        if not step.committed:
            step.rollback()
