"""Callbacks: hook order and logs, History, EarlyStopping, ModelCheckpoint, learning-rate callbacks
(Keras semantics)."""

import contextlib
import io

import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn.callbacks import (Callback, EarlyStopping, History, LearningRateScheduler, ModelCheckpoint,
                               ReduceLROnPlateau)
from fastcnn.model import Sequential
from fastcnn.optim import SGD, schedules
from fastcnn.saving import load_model


def small_net(seed=0):
    model = Sequential([L.Conv2D(4, 3, stride=2), L.ReLU(), L.Flatten(), L.Dense(10)],
                       input_shape=(28, 28, 1), seed=seed)
    return model.compile(SGD(lr=0.05))


class Recorder(Callback):
    """Records every hook call, and the weights at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.epoch_weights = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))
        self.epoch_weights.append(self.model.get_weights())

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, dict(logs)))


def test_hooks_are_called_in_keras_order_with_running_logs(fashion_small):
    d = fashion_small
    recorder = Recorder()
    model = small_net()
    model.fit(d.x_train[:80], d.y_train[:80], epochs=2, batch_size=50, verbose=0, callbacks=[recorder],
              validation_data=(d.x_test[:20], d.y_test[:20]))
    kinds = [(c[0],) + tuple(x for x in c[1:2] if isinstance(x, int)) for c in recorder.calls]
    assert kinds == [("train_begin",),
                     ("epoch_begin", 0), ("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1), ("batch_end", 1),
                     ("epoch_end", 0),
                     ("epoch_begin", 1), ("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1), ("batch_end", 1),
                     ("epoch_end", 1), ("train_end",)]
    assert recorder.params == {"epochs": 2, "steps": 2, "samples": 80, "batch_size": 50, "verbose": 0}
    batch_logs = [c[2] for c in recorder.calls if c[0] == "batch_end"][:2]
    epoch_logs = [c[2] for c in recorder.calls if c[0] == "epoch_end"]
    assert set(batch_logs[1]) == {"loss", "accuracy"}
    assert set(epoch_logs[0]) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert epoch_logs[0]["learning_rate"] == 0.05
    assert epoch_logs[0]["loss"] == batch_logs[1]["loss"]  # the epoch value is the final running mean
    assert recorder.calls[-1][1] == epoch_logs[-1]


def test_history_records_every_epoch():
    history = History()
    history.on_train_begin()
    history.on_epoch_end(0, {"loss": 2.0, "accuracy": 0.5})
    history.on_epoch_end(1, {"loss": 1.0, "accuracy": 0.75})
    assert history.history == {"loss": [2.0, 1.0], "accuracy": [0.5, 0.75]}
    assert history.epoch == [0, 1]


def test_a_callback_can_stop_training(fashion_small):
    class StopAfterThreeBatches(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    model = small_net()
    history = model.fit(fashion_small.x_train[:200], fashion_small.y_train[:200], epochs=5, batch_size=20,
                        verbose=0, callbacks=[StopAfterThreeBatches()])
    assert model.optimizer.iterations == 3 and history.epoch == [0]


def test_early_stopping_stops_and_restores_the_best_weights(fashion_small):
    d = fashion_small
    recorder = Recorder()
    # the training loss falls every epoch, so "max" mode sees no improvement after epoch 0
    stopper = EarlyStopping(monitor="loss", mode="max", patience=1, restore_best_weights=True)
    model = small_net()
    history = model.fit(d.x_train[:128], d.y_train[:128], epochs=10, batch_size=32, verbose=0,
                        callbacks=[recorder, stopper])
    assert history.epoch == [0, 1]
    assert history.history["loss"][1] < history.history["loss"][0]
    assert stopper.stopped_epoch == 1 and stopper.best_epoch == 0
    final = model.get_weights()
    assert all(np.array_equal(final[k], recorder.epoch_weights[0][k]) for k in final)
    assert not np.array_equal(final["layers.3.weight"], recorder.epoch_weights[1]["layers.3.weight"])


class FakeModel:
    def __init__(self):
        self.stop_training = False
        self.weights = 0
        self.restored = None

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.restored = weights


@pytest.mark.parametrize("monitor, values, min_delta, patience, stop_at, best", [
    ("val_loss", [1.0, 0.9, 0.95, 0.91], 0.0, 2, 3, 1),  # min mode: two epochs without beating 0.9
    ("val_loss", [1.0, 0.95, 0.94], 0.1, 1, 1, 0),  # 0.95 does not beat 1.0 by more than min_delta
    ("val_accuracy", [0.5, 0.7, 0.6, 0.8], 0.0, 1, 2, 1),  # "auto" maximizes accuracy
    ("val_loss", [1.0, 0.9, 0.8, 0.7], 0.0, 0, None, 3),  # always improving: never stops
])
def test_early_stopping_logic(monitor, values, min_delta, patience, stop_at, best):
    fake = FakeModel()
    stopper = EarlyStopping(monitor=monitor, min_delta=min_delta, patience=patience, restore_best_weights=True)
    stopper.set_model(fake)
    stopper.on_train_begin()
    stopped = None
    for epoch, value in enumerate(values):
        fake.weights = epoch
        stopper.on_epoch_end(epoch, {monitor: value})
        if fake.stop_training:
            stopped = epoch
            break
    stopper.on_train_end()
    assert stopped == stop_at
    assert stopper.best_epoch == best and fake.restored == best


def test_early_stopping_warns_when_the_monitor_is_missing():
    stopper = EarlyStopping()
    stopper.set_model(FakeModel())
    with pytest.warns(RuntimeWarning, match="EarlyStopping monitors 'val_loss', which is not in the logs"):
        stopper.on_epoch_end(0, {"loss": 1.0})


def test_model_checkpoint_writes_every_epoch(fashion_small, tmp_path):
    d = fashion_small
    checkpoint = ModelCheckpoint(tmp_path / "ckpt-{epoch}")
    model = small_net()
    model.fit(d.x_train[:64], d.y_train[:64], epochs=2, batch_size=32, verbose=0, callbacks=[checkpoint])
    assert checkpoint.saved == [str(tmp_path / "ckpt-1.npz"), str(tmp_path / "ckpt-2.npz")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1.npz", "ckpt-2.npz"]
    restored = load_model(tmp_path / "ckpt-2.npz")
    np.testing.assert_array_equal(restored.predict(d.x_test[:16]), model.predict(d.x_test[:16]))
    assert restored.optimizer.iterations == 4
    assert load_model(tmp_path / "ckpt-1.npz").optimizer.iterations == 2


def test_model_checkpoint_save_best_only(fashion_small, tmp_path):
    d = fashion_small
    checkpoint = ModelCheckpoint(str(tmp_path / "best-{epoch}-{loss:.3f}.npz"), monitor="loss", mode="max",
                                 save_best_only=True)
    history = small_net().fit(d.x_train[:64], d.y_train[:64], epochs=3, batch_size=32, verbose=0,
                              callbacks=[checkpoint])
    loss = history.history["loss"]
    assert loss[2] < loss[1] < loss[0]
    assert [p.name for p in tmp_path.iterdir()] == [f"best-1-{loss[0]:.3f}.npz"]


def test_model_checkpoint_bad_pattern_is_a_clear_error(fashion_small, tmp_path):
    model = small_net()
    with pytest.raises(ValueError, match=r"ModelCheckpoint: cannot format filepath .*\{val_loss\}"):
        model.fit(fashion_small.x_train[:32], fashion_small.y_train[:32], verbose=0,
                  callbacks=[ModelCheckpoint(str(tmp_path / "m-{val_loss}"))])


def test_callbacks_must_be_callback_instances():
    with pytest.raises(TypeError, match="callbacks must be fastcnn.callbacks.Callback instances"):
        small_net().fit(np.zeros((2, 28, 28, 1), np.float32), np.zeros(2, np.int64), callbacks=[print])


def test_checkpoint_error_is_exported():
    assert issubclass(fastcnn.CheckpointError, ValueError)


# -- learning-rate callbacks ---------------------------------------------------------------------------
class WithOptimizer:
    """Just what the learning-rate callbacks touch: an optimizer."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.stop_training = False


def run_epochs(callback, values, lr=1.0, monitor="val_loss"):
    """Feed ``values`` of ``monitor`` epoch by epoch; returns the learning rate after each epoch."""
    model = WithOptimizer(SGD(lr))
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch)
        logs = {monitor: value}
        callback.on_epoch_end(epoch, logs)
        rates.append(model.optimizer.learning_rate)
    return rates


def test_reduce_lr_on_plateau_follows_keras():
    # patience 2: two epochs without improving by more than min_delta (1e-4) reduce the rate.
    rates = run_epochs(ReduceLROnPlateau(factor=0.5, patience=2), [1.0, 0.9, 0.89995, 0.9, 0.95, 0.8, 0.85, 0.85])
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]
    # cooldown 2: the epoch after a reduction and the next count down the cooldown (the second one may
    # already wait and reduce again, as in Keras); min_lr is a floor.
    rates = run_epochs(ReduceLROnPlateau(factor=0.1, patience=1, cooldown=2, min_lr=0.005), [1.0] * 8)
    assert rates == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01, 0.005, 0.005, 0.005], rel=1e-15)
    # "auto" maximizes a monitor with "acc" in its name
    rates = run_epochs(ReduceLROnPlateau(monitor="val_acc", factor=0.5, patience=1), [0.5, 0.6, 0.6, 0.7],
                       monitor="val_acc")
    assert rates == [1.0, 1.0, 0.5, 0.5]


def test_learning_rate_scheduler_sets_the_rate_each_epoch(fashion_small):
    d = fashion_small
    seen = []

    def halve_after_first(epoch, lr):
        seen.append((epoch, lr))
        return lr if epoch == 0 else lr * 0.5

    model = small_net()
    history = model.fit(d.x_train[:64], d.y_train[:64], epochs=3, batch_size=32, verbose=0,
                        callbacks=[LearningRateScheduler(halve_after_first)])
    assert seen == [(0, 0.05), (1, 0.05), (2, 0.025)]
    assert history.history["learning_rate"] == [0.05, 0.025, 0.0125]
    assert run_epochs(LearningRateScheduler(lambda epoch: 0.1 * (epoch + 1)), [0, 0]) == [0.1, 0.2]  # one-arg form


def test_learning_rate_callbacks_reject_bad_settings():
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: `factor` must be in \(0, 1\), received 1.0"):
        ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: `patience` must be a non-negative int, received -1"):
        ReduceLROnPlateau(patience=-1)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: `mode` must be 'auto', 'min' or 'max'"):
        ReduceLROnPlateau(mode="up")
    with pytest.raises(ValueError, match=r"the schedule must return a float; at epoch 0 it returned 'fast'"):
        run_epochs(LearningRateScheduler(lambda epoch, lr: "fast"), [0])
    with pytest.raises(ValueError, match=r"SGD: `learning_rate` must be in \(0.0, inf\), received -0.1"):
        run_epochs(LearningRateScheduler(lambda epoch, lr: -0.1), [0])
    scheduled = WithOptimizer(SGD(schedules.ExponentialDecay(0.1, 10, 0.5)))
    callback = LearningRateScheduler(lambda epoch, lr: lr)
    callback.set_model(scheduled)
    with pytest.raises(TypeError, match=r"SGD was created with the schedule ExponentialDecay"):
        callback.on_epoch_begin(0)


def test_learning_rate_is_in_the_history_and_on_the_progress_bar(fashion_small, capsys):
    d = fashion_small
    model = Sequential([L.Flatten(), L.Dense(10)], input_shape=(28, 28, 1), seed=0)
    model.compile(SGD(schedules.PiecewiseConstantDecay([2], [0.1, 0.01])))
    history = model.fit(d.x_train[:64], d.y_train[:64], epochs=2, batch_size=32, verbose=2)
    # two steps per epoch: after epoch 1 the next step is step 2 (0.1), after epoch 2 step 4 (0.01)
    assert history.history["learning_rate"] == [0.1, 0.01]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("learning_rate: 0.1000") and lines[1].endswith("learning_rate: 0.0100")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with contextlib.redirect_stdout(terminal):  # verbose=1 on a terminal: the redrawn bar shows it step by step
        model.fit(d.x_train[:64], d.y_train[:64], epochs=1, batch_size=32, verbose=1)
    first_draw = terminal.getvalue().split("\r")[1]
    assert first_draw.startswith("1/2 [") and first_draw.rstrip().endswith("learning_rate: 0.0100")
