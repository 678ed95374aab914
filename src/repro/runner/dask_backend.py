"""Running notebooks on an existing Dask cluster (``repro run --scheduler tcp://host:8786``).

GPU workers declare ``--resources GPU=1``; when the cluster advertises GPUs every task asks for one, so a
worker runs one notebook per GPU at a time. Results come back to this process, which writes them.
"""

from __future__ import annotations

from typing import Any, Callable

CONNECT_TIMEOUT = "10s"


def run_on_dask(jobs: list, specs: list[dict[str, Any]], address: str,
                done: Callable[[Any, dict[str, Any], str], None]) -> None:
    from distributed import Client, as_completed

    from repro.runner.batch import RunError
    from repro.runner.execute import execute

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise RunError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if not workers:
            raise RunError(f"the Dask scheduler at {address} has no workers")
        gpus = any(w.get("resources", {}).get("GPU") for w in workers.values())
        resources = {"GPU": 1} if gpus else None
        futures = {}
        for job, spec in zip(jobs, specs):
            fut = client.submit(execute, spec, resources=resources, pure=False,
                                key=f"repro-{job.profile}-{job.paper.slug}-{id(job):x}")
            futures[fut] = job
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # worker died, task lost
                outcome = {"ok": False, "log": f"repro: the Dask task failed: {exc!r}", "notebook": None,
                           "wall_seconds": 0.0, "timed_out": False}
            done(job, outcome, f"dask:{address}")
    finally:
        client.close()
