"""The script tests/test_distributed.py runs under ``mpiexec``: ``python _mpi_worker.py SCENARIO CONFIG_JSON``.

Also imported by the test for the model and the data, so both sides build the same.
"""

import json
import os
import signal
import sys
import time

import numpy as np

import fastcnn as fc
from fastcnn import layers as L

N_TRAIN, N_VAL = 300, 90
#: 300 = 4 batches of 64 and one of 44: with 3 ranks the last batch splits 14/15/15.
BATCH = 64


def data():
    """Synthetic 12x12 images whose class is readable from their brightest quadrant (learnable)."""
    rng = np.random.default_rng(42)
    x = rng.random((N_TRAIN + N_VAL, 12, 12, 1), dtype=np.float32) * np.float32(0.5)
    y = rng.integers(0, 4, N_TRAIN + N_VAL)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 6 * r:6 * r + 6, 6 * c:6 * c + 6] += np.float32(0.5)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def model(seed=7, units=16):
    """Conv -> ReLU -> pool -> Dropout -> Dense -> ReLU -> Dropout -> Dense: both dropout kinds, fused conv+pool."""
    m = fc.Sequential([
        L.Conv2D(4, 3), L.ReLU(), L.MaxPool2D(2), L.Dropout(0.25), L.Flatten(),
        L.Dense(units), L.ReLU(), L.Dropout(0.5), L.Dense(4),
    ], input_shape=(12, 12, 1), seed=seed)
    return m.compile(fc.optim.Adam(1e-2))


def functional_model(seed=7):
    """A residual block with BatchNormalization (float64): Conv -> BN -> ReLU, plus a 1x1 Conv of the input."""
    inputs = fc.Input((12, 12, 1))
    y = L.Conv2D(4, 3, padding="same")(inputs)
    y = L.BatchNormalization(momentum=0.5)(y)
    y = L.ReLU()(y)
    y = L.Add()([y, L.Conv2D(4, 1)(inputs)])
    y = L.MaxPool2D(2)(y)
    logits = L.Dense(4)(L.Flatten()(y))
    return fc.Model(inputs, logits, seed=seed, dtype=np.float64).compile(fc.optim.SGD(0.05))


def first_batch_by_label():
    """Indices of the first batch sorted by label: the two ranks' slices hold different classes."""
    _, y = data()[0]
    return np.argsort(y[:BATCH], kind="stable")


def functional(cfg):
    """A functional model with BN on 2 ranks: rank 1 starts from other weights and moving statistics
    (rank 0's replace them); one step on the first batch, then an epoch; every rank saves its weights and state."""
    context = fc.distributed.init()
    (x, y), (xv, yv) = data()
    m = functional_model(seed=7 if context.rank == 0 else 8)
    if context.rank == 1:
        for _, a in m.states():
            a += 0.25
    first = first_batch_by_label()
    m.fit(x[first], y[first], epochs=1, batch_size=BATCH, shuffle=False, verbose=0, distributed=True)
    np.savez(os.path.join(cfg["out"], f"step-{context.rank}.npz"), **m.get_weights())
    m.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, distributed=True)
    logs = m.evaluate(xv, yv, batch_size=16, distributed=True)
    np.savez(os.path.join(cfg["out"], f"epoch-{context.rank}.npz"), **m.get_weights())
    with open(os.path.join(cfg["out"], f"functional-{context.rank}.json"), "w") as f:
        json.dump(logs, f)


class _Fault(fc.callbacks.Callback):
    """On rank 1, at the second batch: raise, SIGKILL itself or hang."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def on_train_batch_end(self, batch, logs=None):
        if fc.distributed.rank() != 1 or batch != 1:
            return
        if self.kind == "raise":
            raise ValueError("injected failure on rank 1")
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            time.sleep(60)


def train(cfg):
    """Distributed fit (+ checkpoints in a per-rank directory) and evaluate; results to cfg['out']."""
    context = fc.distributed.init()
    out = cfg["out"]
    workdir = os.path.join(out, f"rank{context.rank}")
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)  # relative checkpoint paths: a rank that wrote one would leave it here
    (x, y), (xv, yv) = data()
    m = model(seed=cfg.get("seed", 7))
    if cfg.get("resume") and context.rank == 0:
        m.load(cfg["resume"])  # rank 0 alone: the others receive its state at start-up
    history = m.fit(x, y, epochs=cfg["epochs"], batch_size=BATCH, validation_data=(xv, yv), verbose=2,
                    callbacks=[fc.callbacks.ModelCheckpoint("ckpt-{epoch}.npz")],
                    initial_epoch=cfg.get("initial_epoch", 0), distributed=True)
    logs = fc.distributed.evaluate(m, xv, yv, batch_size=16)
    np.savez(os.path.join(out, f"weights-{context.rank}.npz"), **m.get_weights())
    result = {"history": history.history, "evaluate": logs, "stats": m.distributed_stats,
              "threads": fc.get_num_threads(), "size": context.size}
    with open(os.path.join(out, f"result-{context.rank}.json"), "w") as f:
        json.dump(result, f)


def fault(cfg):
    (x, y), _ = data()
    m = model()
    m.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[_Fault(cfg["kind"])], distributed=True)
    print(f"rank {fc.distributed.rank()} finished")


class _StopOnRankOne(fc.callbacks.Callback):
    """Sets stop_training on rank 1 alone, at the third batch of the first epoch."""

    def on_train_batch_end(self, batch, logs=None):
        if fc.distributed.rank() == 1 and batch == 2:
            self.model.stop_training = True


def stop(cfg):
    """One rank asks to stop: every rank stops after the same batch."""
    (x, y), _ = data()
    m = model()
    history = m.fit(x, y, epochs=3, batch_size=BATCH, verbose=0, callbacks=[_StopOnRankOne()], distributed=True)
    result = {"rank": fc.distributed.rank(), "steps": m.optimizer.iterations, "epochs": history.epoch}
    with open(os.path.join(cfg["out"], f"stop-{fc.distributed.rank()}.json"), "w") as f:
        json.dump(result, f)


def one_rank(cfg):
    """Plain python: fit(distributed=True) as one rank must be fit() exactly."""
    (x, y), (xv, yv) = data()
    weights = []
    for distributed in (False, True):
        m = model()
        m.fit(x, y, epochs=1, batch_size=BATCH, validation_data=(xv, yv), verbose=0, distributed=distributed)
        weights.append(m.get_weights())
    same = all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    print(json.dumps({"size": fc.distributed.size(), "identical": same}))


def mismatch(cfg):
    fc.distributed.init()
    (x, y), _ = data()
    m = model(units=17 if fc.distributed.rank() == 1 else 16)
    m.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, distributed=True)


if __name__ == "__main__":
    {"train": train, "fault": fault, "mismatch": mismatch, "one_rank": one_rank, "stop": stop,
     "functional": functional}[sys.argv[1]](json.loads(sys.argv[2]))
