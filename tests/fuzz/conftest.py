import sys
import os

sys.path.insert(0, os.path.dirname(__file__))  # _fuzzing, whatever the import mode


def pytest_terminal_summary(terminalreporter):
    from _fuzzing import COUNTS, LONG

    if COUNTS:
        mode = "long (FASTCNN_FUZZ=long)" if LONG else "bounded (CI)"
        counts = ", ".join(f"{target}: {n:,}" for target, n in sorted(COUNTS.items()))
        terminalreporter.write_line(f"fuzz cases run, {mode}: {counts}")
