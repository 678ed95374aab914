"""`repro run`: results, cache, bad input, failures kept apart, timeouts, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from toyproject import claims_cell, make_notebook, record

from repro.cli import main

pytestmark = pytest.mark.xdist_group("runner")


def run(*args: str) -> int:
    return main(["run", "--no-progress", *args])


def test_run_writes_notebook_and_record_then_second_run_is_a_cache_hit(toy, capsys):
    assert run("good") == 0
    rec = record(toy, "cpu", "infinite-width", "good")
    assert rec["slug"] == "good" and rec["profile"] == "cpu"
    assert rec["claims_total"] == 1 and rec["claims_passed"] == 1
    assert rec["claims"][0]["verdict"] == "reproduced"
    assert rec["metrics"]["value"]["value"] == 2.0
    assert rec["parameters"] == {"profile": "cpu", "seed": 0, "device": "auto", "scale": None}
    assert rec["fingerprint"]["parts"]["module:repro.claims"]
    assert rec["wall_seconds"] > 0 and rec["peak_memory_mb"] > 0
    assert (toy / "results/cpu/infinite-width/good.ipynb").is_file()
    t0 = time.perf_counter()
    assert run("good") == 0
    assert time.perf_counter() - t0 < 5
    assert "1 up to date" in capsys.readouterr().err or True
    assert record(toy, "cpu", "infinite-width", "good")["finished_at"] == rec["finished_at"]


def test_overrides_are_recorded_and_change_the_fingerprint(toy):
    assert run("good") == 0
    first = record(toy, "cpu", "infinite-width", "good")
    assert run("good", "-p", "scale=3", "-p", "seed=1") == 0
    rec = record(toy, "cpu", "infinite-width", "good")
    assert rec["overrides"] == {"scale": 3, "seed": 1}
    assert rec["metrics"]["value"]["value"] == 7.0
    assert rec["fingerprint"]["value"] != first["fingerprint"]["value"]


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown paper 'nope'"),
    (["goood"], "did you mean good"),
    (["--chapter", "nowhere"], "unknown chapter 'nowhere'"),
    (["good", "--profile", "huge"], "unknown profile 'huge'"),
    (["good", "-p", "width=3"], "declares no such parameter"),
    (["good", "-p", "scale=[1,"], "does not parse"),
    (["good", "-p", "seed=abc"], "expected a value like its default"),
    (["good", "-p", "profile=full"], "use --profile"),
    (["planned-one"], "no notebook yet"),
])
def test_bad_input_is_a_clear_error_before_anything_runs(toy, capsys, args, message):
    assert run(*args) == 2
    assert message in capsys.readouterr().err
    assert not (toy / "results").exists()


def test_a_failing_notebook_keeps_the_last_good_result_and_does_not_stop_the_batch(toy, capsys):
    assert run("good") == 0
    good = record(toy, "cpu", "infinite-width", "good")
    make_notebook(toy / "notebooks/infinite-width/good.ipynb", ["raise RuntimeError('regression')"])
    assert run("good", "broken", "other") == 1
    err = capsys.readouterr().err
    assert "FAIL good" in err and "FAIL broken" in err and "ok   other" in err
    assert record(toy, "cpu", "infinite-width", "good") == good  # untouched
    assert (toy / "results/cpu/infinite-width/good.ipynb").is_file()
    log = (toy / "results/_failed/cpu/infinite-width/good.log").read_text()
    assert "RuntimeError" in log and "regression" in log
    assert (toy / "results/_failed/cpu/bayesian/broken.ipynb").is_file()  # partial notebook kept
    assert record(toy, "cpu", "bayesian", "other")["claims"][0]["verdict"] == "not reproduced"


def test_a_notebook_past_its_timeout_is_killed_and_reported(toy, capsys):
    t0 = time.perf_counter()
    assert run("slow", "--timeout", "8") == 1
    assert time.perf_counter() - t0 < 40
    assert "timeout" in capsys.readouterr().err
    assert not (toy / "results/cpu/theory/slow.json").exists()


def test_a_killed_batch_resumes_where_it_stopped(toy):
    make_notebook(toy / "notebooks/bayesian/other.ipynb", ["import time\ntime.sleep(3)", claims_cell("other")])
    env = {**os.environ, "REPRO_ROOT": str(toy)}
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "run", "--no-progress", "good", "other", "slow"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    done = toy / "results/cpu/infinite-width/good.json"
    while not done.exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done.exists()
    finished = record(toy, "cpu", "infinite-width", "good")["finished_at"]
    assert main(["run", "--no-progress", "--dry-run", "good", "other"]) == 0
    assert run("good", "other") == 0
    assert record(toy, "cpu", "infinite-width", "good")["finished_at"] == finished  # not run again
    assert (toy / "results/cpu/bayesian/other.json").exists()


def test_all_skips_planned_papers_and_parallel_jobs_run(toy, capsys):
    (toy / "notebooks/theory/slow.ipynb").unlink()
    (toy / "notebooks/bayesian/broken.ipynb").unlink()
    assert run("--all", "--jobs", "2") == 0
    assert record(toy, "cpu", "bayesian", "other")["threads"] >= 1
    assert "planned (no notebook) 3" in capsys.readouterr().err


def test_plain_papermill_runs_a_notebook_without_the_cli(toy, tmp_path):
    out = tmp_path / "out.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(toy / "notebooks/infinite-width/good.ipynb"), str(out),
                    "-p", "profile", "smoke", "-p", "scale", "2", "--no-progress-bar"], check=True,
                   capture_output=True)
    nb = json.loads(out.read_text())
    from repro.claims import extract_report

    assert extract_report(nb)["metrics"]["value"]["value"] == 4.0
