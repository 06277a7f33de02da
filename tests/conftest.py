import os

# Keep BLAS from oversubscribing the two cores while numba also runs threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
