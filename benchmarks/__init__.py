"""fastcnn's benchmark suite (pytest-benchmark); run with ``pytest benchmarks --benchmark-only``.

A package so the benchmark files share :mod:`benchmarks._common` without
touching ``sys.path``; it is not installed with fastcnn.
"""
