"""The runner: ``repro run``, ``repro status``, ``repro verify`` (papermill execution, result store,
fingerprints, a local pool or a Dask cluster)."""

from repro.runner.batch import BatchSummary, RunError, plan, run_batch
from repro.runner.status import status_rows

__all__ = ["BatchSummary", "RunError", "plan", "run_batch", "status_rows"]
