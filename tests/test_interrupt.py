"""Training steps are all-or-nothing: a real SIGINT (or any exception) at any moment of
``train_on_batch`` or ``fit`` leaves the model either exactly as before the step or exactly
as after a full step (weights, optimizer state and step count, random generators)."""

import signal
import threading
import time

import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn import models
from fastcnn._atomic import deferred_sigint
from fastcnn.callbacks import Callback
from fastcnn.model import Sequential, load_model
from fastcnn.optim import Adam

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signals are delivered to the main thread only")


def state_of(model):
    """Everything a step may change: weights, optimizer arrays and count, generator states."""
    rngs = [model.rng.bit_generator.state] + [layer.rng.bit_generator.state
                                              for layer in model.layers if hasattr(layer, "rng")]
    optimizer = {k: a.copy() for k, a in model.optimizer.state_arrays().items()}  # not views of live state
    return model.get_weights(), optimizer, rngs


def same_state(a, b):
    (wa, oa, ra), (wb, ob, rb) = a, b
    return (wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
            and oa.keys() == ob.keys() and all(np.array_equal(oa[k], ob[k]) for k in oa)
            and ra == rb)


class sigint_after:
    """Send the process a real SIGINT ``delay`` seconds from now (SIGALRM raises it), and
    take it back if it has not fired by the end of the block."""

    def __init__(self, delay):
        self.delay = delay

    def __enter__(self):
        self.previous = signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, self.delay)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return False


def interrupted_call(fn, delay):
    """Run ``fn()`` with a SIGINT after ``delay`` s; returns whether it was interrupted inside ``fn``.
    A signal due after ``fn`` returns is waited for and swallowed, so none leaks into the next call."""
    inside = True
    try:
        with sigint_after(delay):
            fn()
            inside = False
            deadline = time.perf_counter() + delay + 1.0
            while time.perf_counter() < deadline:
                time.sleep(0.001)
            raise AssertionError("the SIGINT never came")
    except KeyboardInterrupt:
        return inside


def test_sigint_at_40_random_moments_of_train_on_batch_leaves_no_half_step(tmp_path):
    # Before the fix, an interrupt in the optimizer update left some layers updated and the
    # step count advanced, and one during the forward pass left the Dropout generators
    # advanced with the weights unchanged: the state matched neither below.
    rng = np.random.default_rng(0)
    model = models.mnist_cnn(seed=0)  # Adam, two Dropout layers
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    model.train_on_batch(x, y)  # compiled, Adam state allocated
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        durations.append(time.perf_counter() - start)
    duration = float(np.median(durations))

    outcomes = {"before": 0, "after": 0}
    inside = 0
    for i in range(40):
        checkpoint = model.save(tmp_path / "before.npz")
        xb = rng.random((16, 28, 28, 1), dtype=np.float32)
        yb = rng.integers(0, 10, 16)
        inside += interrupted_call(lambda: model.train_on_batch(xb, yb), rng.uniform(0.0, duration))
        got = state_of(model)
        replay = load_model(checkpoint)
        before = state_of(replay)
        replay.train_on_batch(xb, yb)
        after = state_of(replay)
        if same_state(got, before):
            outcomes["before"] += 1
        elif same_state(got, after):
            outcomes["after"] += 1
        else:
            pytest.fail(f"interrupt {i + 1}: the model matches neither the state before the call nor "
                        f"a full step ({outcomes})")
    assert inside >= 10, f"only {inside} of 40 interrupts landed inside the call"
    assert outcomes["before"] > 0


class Boundaries(Callback):
    """Records the model state at every step boundary of ``fit``, and the epochs completed."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_epoch_begin(self, epoch, logs=None):
        self.states.append((state_of(self.model), epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.states.append((state_of(self.model), len(self.model.history.epoch)))

    def on_train_batch_end(self, batch, logs=None):
        self.states.append((state_of(self.model), len(self.model.history.epoch)))

    def on_epoch_end(self, epoch, logs=None):
        self.states.append((state_of(self.model), epoch + 1))


def dropout_net():
    model = Sequential([L.Conv2D(4, 3, stride=2), L.ReLU(), L.Dropout(0.3), L.Flatten(), L.Dense(10)],
                       input_shape=(12, 12, 1), seed=3)
    return model.compile(Adam(1e-2))


def test_sigint_during_fit_stops_at_a_step_boundary_with_the_completed_epochs(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((96, 12, 12, 1), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    model = dropout_net()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # warm up
    checkpoint = model.save(tmp_path / "start.npz")
    reference = load_model(checkpoint)
    record = Boundaries()
    start = time.perf_counter()
    reference.fit(x, y, epochs=3, batch_size=8, callbacks=[record], verbose=0)
    duration = time.perf_counter() - start
    for i in range(8):
        model = load_model(checkpoint)
        interrupted_call(lambda: model.fit(x, y, epochs=3, batch_size=8, verbose=0), rng.uniform(0, duration))
        got = state_of(model)
        matches = [epochs for state, epochs in record.states if same_state(got, state)]
        assert matches, f"interrupt {i + 1}: fit stopped between step boundaries"
        assert len(model.history.epoch) in matches
        assert model.history.epoch == list(range(len(model.history.epoch)))


def test_an_exception_in_the_backward_pass_restores_the_dropout_generators():
    model = models.mnist_cnn(seed=0)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    y = np.arange(4)
    before = state_of(model)
    dense = model.layers[-1]

    def fail(dy):
        raise MemoryError("simulated")

    dense.backward = fail
    with pytest.raises(MemoryError, match="simulated"):
        model.train_on_batch(x, y)  # both Dropout layers drew their masks before the failure
    assert same_state(state_of(model), before)
    del dense.backward
    model.train_on_batch(x, y)
    twin = models.mnist_cnn(seed=0)
    twin.train_on_batch(x, y)
    assert same_state(state_of(model), state_of(twin))


def test_a_bad_gradient_is_refused_before_any_parameter_changes():
    model = models.mnist_cnn(seed=0)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    y = np.arange(4)
    model.train_on_batch(x, y)
    before = state_of(model)
    last = model.layers[-1]

    def backward(dy):  # a layer bug: the last parameter's gradient has the wrong shape
        dx = type(last).backward(last, dy)
        last.grads["bias"] = np.zeros(5, dtype=np.float32)
        return dx

    last.backward = backward
    with pytest.raises(ValueError, match=r"gradient for 'layers.10.bias' has shape \(5,\).*not applied"):
        model.train_on_batch(x, y)
    assert same_state(state_of(model), before)  # before the fix: layers 0..7 updated, step count + 1


def test_deferred_sigint_delivers_to_the_previous_handler_after_the_block():
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with deferred_sigint():
            signal.raise_signal(signal.SIGINT)
            for _ in range(1000):  # Python instructions: a handler would run here if not deferred
                pass
            assert calls == []
        assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is not None
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            signal.raise_signal(signal.SIGINT)
            done = True
    assert done


def test_deferred_sigint_is_a_no_op_outside_the_main_thread():
    seen = []

    def worker():
        with deferred_sigint():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def bn_residual_net():
    """A small functional model: conv-BN-ReLU, conv-BN, a residual Add, Dropout, Dense."""
    import fastcnn as fc

    x = fc.Input((12, 12, 1))
    a = L.ReLU()(L.BatchNormalization(momentum=0.5)(L.Conv2D(6, 3, padding="same")(x)))
    b = L.BatchNormalization(momentum=0.5)(L.Conv2D(6, 3, padding="same")(a))
    y = L.Dense(10)(L.Flatten()(L.Dropout(0.3)(L.ReLU()(L.Add()([a, b])))))
    return fc.Model(x, y, seed=5).compile(Adam(1e-2))


def test_sigint_on_a_functional_model_with_batchnorm_leaves_moving_statistics_all_or_nothing(tmp_path):
    # state_of compares get_weights(), which holds the moving statistics: a forward pass updates
    # them before the update phase, so an interrupt there must put them back with the generators.
    rng = np.random.default_rng(1)
    model = bn_residual_net()
    x = rng.random((32, 12, 12, 1), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    model.train_on_batch(x, y)
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        durations.append(time.perf_counter() - start)
    duration = float(np.median(durations))
    outcomes = {"before": 0, "after": 0}
    inside = 0
    for i in range(20):
        checkpoint = model.save(tmp_path / "before.npz")
        xb = rng.random((32, 12, 12, 1), dtype=np.float32)
        yb = rng.integers(0, 10, 32)
        inside += interrupted_call(lambda: model.train_on_batch(xb, yb), rng.uniform(0.0, duration))
        got = state_of(model)
        replay = load_model(checkpoint)
        before = state_of(replay)
        replay.train_on_batch(xb, yb)
        after = state_of(replay)
        if same_state(got, before):
            outcomes["before"] += 1
        elif same_state(got, after):
            outcomes["after"] += 1
        else:
            pytest.fail(f"interrupt {i + 1}: the model matches neither the state before the call nor "
                        f"a full step ({outcomes})")
    assert inside >= 4, f"only {inside} of 20 interrupts landed inside the call"
    assert outcomes["before"] > 0


def test_an_exception_in_backward_restores_the_moving_statistics_in_place():
    model = bn_residual_net()
    x = np.random.default_rng(0).random((8, 12, 12, 1), dtype=np.float32)
    y = np.arange(8)
    model.train_on_batch(x, y)
    before = state_of(model)
    arrays = [a for _, a in model.states()]  # a data-parallel step holds these very arrays
    dense = model.layers[-1]

    def fail(dy):
        raise MemoryError("simulated")

    dense.backward = fail
    with pytest.raises(MemoryError, match="simulated"):
        model.train_on_batch(x, y)  # the forward pass moved the statistics and drew a Dropout mask
    assert same_state(state_of(model), before)
    assert all(a is b for (_, a), b in zip(model.states(), arrays))
    del dense.backward
    model.train_on_batch(x, y)
    twin = bn_residual_net()
    twin.train_on_batch(x, y)
    twin.train_on_batch(x, y)
    assert same_state(state_of(model), state_of(twin))
