"""`repro status` and `repro verify`."""

from __future__ import annotations

import json

import pytest
from toyproject import make_notebook, claims_cell

from repro.cli import main

pytestmark = pytest.mark.xdist_group("runner")


def status_json(capsys) -> dict[str, dict]:
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    return {r["slug"]: r for r in json.loads(capsys.readouterr().out)}


def test_status_lists_every_paper_with_best_profile_and_staleness(toy, capsys):
    rows = status_json(capsys)
    assert set(rows) == {"good", "other", "broken", "slow", "planned-one"}
    assert rows["planned-one"]["status"] == "planned" and rows["planned-one"]["notebook"] is None
    assert main(["run", "--no-progress", "good"]) == 0
    assert main(["run", "--no-progress", "good", "--profile", "smoke"]) == 0
    rows = status_json(capsys)
    good = rows["good"]
    assert good["status"] == "cpu" and good["stale"] is False  # cpu beats smoke
    assert good["claims_total"] == 1 and good["claims_passed"] == 1 and good["wall_seconds"] > 0
    assert good["notebook"] == "notebooks/infinite-width/good.ipynb"
    for key in ("slug", "chapter", "tier", "status", "stale", "claims_total", "claims_passed", "wall_seconds",
                "notebook", "module"):
        assert key in good
    make_notebook(toy / "notebooks/infinite-width/good.ipynb", [claims_cell("good"), "x = 1"])
    rows = status_json(capsys)
    assert rows["good"]["stale"] is True and rows["good"]["stale_parts"] == ["notebook"]


def test_a_corrupt_record_is_reported_not_a_crash(toy, capsys):
    bad = toy / "results/cpu/bayesian/other.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{ this is not json")
    rows = status_json(capsys)
    assert rows["other"]["status"] == "planned"
    assert "not valid JSON" in rows["other"]["errors"][0]
    assert main(["status"]) == 0
    captured = capsys.readouterr()
    assert "not valid JSON" in captured.out and "unreadable" in captured.err


def test_verify_reruns_a_result_and_agrees_without_overwriting(toy, capsys):
    assert main(["run", "--no-progress", "good", "-p", "scale=2"]) == 0
    path = toy / "results/cpu/infinite-width/good.json"
    before = path.read_text()
    capsys.readouterr()
    assert main(["verify", "good"]) == 0
    out = capsys.readouterr().out
    assert "agree" in out and "DIFFERS" not in out
    assert path.read_text() == before
    rec = json.loads(before)
    rec["metrics"]["value"]["value"] = 99.0  # as if the committed number were wrong
    path.write_text(json.dumps(rec))
    assert main(["verify", "good"]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_list_shows_the_catalogue(toy, capsys):
    assert main(["list"]) == 0
    assert "5 papers" in capsys.readouterr().out
