"""Running against an existing Dask cluster (a LocalCluster with two workers stands in for SLURM)."""

from __future__ import annotations

import time

import pytest
from toyproject import record

from repro.cli import main

pytestmark = pytest.mark.xdist_group("runner")


def test_runs_on_a_local_dask_cluster_with_two_workers(toy):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        assert main(["run", "--no-progress", "good", "other", "broken", "--scheduler", cluster.scheduler_address]) == 1
    assert record(toy, "cpu", "infinite-width", "good")["runner"]["backend"].startswith("dask:")
    assert record(toy, "cpu", "bayesian", "other")["claims_total"] == 1
    assert (toy / "results/_failed/cpu/bayesian/broken.log").is_file()


def test_an_unreachable_scheduler_is_an_error_within_seconds(toy, capsys):
    t0 = time.perf_counter()
    assert main(["run", "--no-progress", "good", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert time.perf_counter() - t0 < 20
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
