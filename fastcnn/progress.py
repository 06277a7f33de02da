"""Progress output for ``fit``: a throttled, tty-aware per-epoch bar (after Keras's
``utils/progbar.py``).

- ``verbose=1`` on a terminal: an ``Epoch i/n`` header, then a bar redrawn in
  place with ``\\r`` (at most every ``interval`` seconds) showing the ETA, images/s
  and the running loss/accuracy and learning rate; the final draw adds the
  validation metrics.
- ``verbose=1`` when stdout is not a terminal (a log file, CI, a pipe), and
  ``verbose=2`` always: exactly one line per epoch, printed when it ends.
- ``verbose=0``: nothing.

Output goes to ``sys.stdout`` as it is at write time (so pytest's capsys and
``contextlib.redirect_stdout`` see it).
"""

import sys
import time

from fastcnn.callbacks import Callback

__all__ = ["ProgbarLogger", "format_duration", "format_logs", "is_dynamic_display"]


def is_dynamic_display(stream=None):
    """Whether ``stream`` (default ``sys.stdout``) can redraw a line in place."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # closed stream
        return False
    return "ipykernel" in sys.modules


def format_duration(seconds):
    """``"42s"``, ``"3:07"`` or ``"1:02:03"``."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{s:02d}"
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}"


def _format_value(value):
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        return f"{value:.4e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_logs(logs):
    """``"loss: 0.5000 - accuracy: 0.8125"``."""
    return " - ".join(f"{k}: {_format_value(v)}" for k, v in logs.items())


class ProgbarLogger(Callback):
    """Prints training progress; added by ``fit`` when ``verbose`` is 1 or 2.

    Parameters
    ----------
    verbose : 1 or 2
    interval : float, default 0.05
        Minimum seconds between two redraws of the bar (``verbose=1`` on a terminal).
    width : int, default 30
        Characters in the bar.
    """

    def __init__(self, verbose=1, interval=0.05, width=30):
        super().__init__()
        if verbose not in (1, 2):
            raise ValueError(f"ProgbarLogger: `verbose` must be 1 or 2, received {verbose!r}")
        self.verbose = verbose
        self.interval = float(interval)
        self.width = int(width)

    def on_train_begin(self, logs=None):
        self.dynamic = self.verbose == 1 and is_dynamic_display()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._train_seconds = 0.0
        self._steps_done = 0
        self._prev_width = 0
        if self.dynamic:
            self._write(f"Epoch {epoch + 1}/{self.params['epochs']}\n")

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self._steps_done = batch + 1
        self._train_seconds = now - self._start
        if not self.dynamic or now - self._last_draw < self.interval:
            return
        self._last_draw = now
        steps = self.params["steps"]
        per_step = self._train_seconds / self._steps_done
        parts = [self._bar(self._steps_done, steps)]
        if steps is not None:  # None: a generator of unknown length
            parts.append(f"ETA: {format_duration(per_step * (steps - self._steps_done))}")
        parts.append(self._speed())
        if logs:
            parts.append(format_logs(logs))
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:  # a schedule changes it step by step
            parts.append(format_logs({"learning_rate": optimizer.learning_rate}))
        self._redraw(" - ".join(parts))

    def on_epoch_end(self, epoch, logs=None):
        steps_done = self._steps_done
        per_step = self._train_seconds / max(steps_done, 1)
        timing = f"{format_duration(self._train_seconds)} {per_step * 1e3:.0f}ms/step"
        parts = [timing, self._speed()]
        if logs:
            parts.append(format_logs(logs))
        if self.dynamic:
            self._redraw(" - ".join([self._bar(steps_done, self.params["steps"] or steps_done)] + parts))
            self._write("\n")
        else:
            head = f"Epoch {epoch + 1}/{self.params['epochs']} - {steps_done}/{self.params['steps'] or steps_done}"
            self._write(" - ".join([head] + parts) + "\n")

    # -- helpers -------------------------------------------------------------------
    def _speed(self):
        if self.params.get("samples") is None:  # batches from a generator: their size is not known ahead
            rate = self._steps_done / self._train_seconds if self._train_seconds > 0 else 0.0
            return f"{rate:,.1f} steps/s"
        seen = min(self._steps_done * self.params["batch_size"], self.params["samples"])
        rate = seen / self._train_seconds if self._train_seconds > 0 else 0.0
        return f"{rate:,.0f} img/s"

    def _bar(self, done, total):
        if total is None:
            return f"{done}/Unknown"
        digits = len(str(total))
        filled = int(self.width * done / total) if total else self.width
        if done < total and filled < self.width:
            bar = "=" * filled + ">" + "." * (self.width - filled - 1)
        else:
            bar = "=" * self.width
        return f"{done:>{digits}}/{total} [{bar}]"

    def _redraw(self, line):
        pad = " " * max(self._prev_width - len(line), 0)
        self._prev_width = len(line)
        self._write("\r" + line + pad)

    @staticmethod
    def _write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    def __repr__(self):
        return f"ProgbarLogger(verbose={self.verbose})"


class EvaluationProgbar:
    """The bar ``evaluate(verbose=1)`` draws on a terminal: samples done of ``total``, ETA.

    Redrawn at most every ``interval`` seconds; erased when done (``evaluate`` then
    prints its metrics line).
    """

    def __init__(self, total, interval=0.1, width=30):
        self.total = int(total)
        self.interval = float(interval)
        self.width = int(width)
        self._start = self._last_draw = time.perf_counter()
        self._drawn = 0

    def update(self, done):
        now = time.perf_counter()
        if done == 0 or now - self._last_draw < self.interval:
            return
        self._last_draw = now
        filled = int(self.width * done / self.total)
        bar = "=" * filled + ">" + "." * (self.width - filled - 1)
        eta = format_duration((now - self._start) / done * (self.total - done))
        line = f"{done:>{len(str(self.total))}}/{self.total} [{bar}] - ETA: {eta}"
        sys.stdout.write("\r" + line + " " * max(self._drawn - len(line), 0))
        sys.stdout.flush()
        self._drawn = len(line)

    def done(self):
        if self._drawn:
            sys.stdout.write("\r" + " " * self._drawn + "\r")
            sys.stdout.flush()

    def __repr__(self):
        return f"EvaluationProgbar(total={self.total})"
