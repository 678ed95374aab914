"""Project-wide test settings: one BLAS/torch thread per test process (tiny models run far faster that way
on few cores, and `make test` runs two processes on two cores)."""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
