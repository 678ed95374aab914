"""``repro verify``: re-execute a committed result with its recorded parameters, somewhere temporary, and
compare its verdicts and metrics with the record. It never writes into ``results/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro.catalog import Paper
from repro.claims import Metric, extract_report
from repro.runner.batch import RunError
from repro.runner.execute import execute
from repro.runner.params import read_notebook
from repro.runner.store import Store


def verify(paper: Paper, profile: str, root: Path, timeout: float | None = None,
           threads: int | None = None) -> dict[str, Any]:
    store = Store(root)
    record = store.read_record(profile, paper.chapter, paper.slug)
    if record is None:
        raise RunError(f"{paper.slug}: no committed {profile} result to verify")
    nb = read_notebook(paper.notebook_path(root))
    spec = {"slug": paper.slug, "notebook": nb, "timeout": timeout, "threads": threads,
            "parameters": {**record.get("overrides", {}), "profile": profile},
            "cwd": str(paper.notebook_path(root).parent)}
    outcome = execute(spec)
    report = extract_report(outcome["notebook"]) if outcome.get("notebook") else None
    rows: list[dict[str, Any]] = []
    if not outcome["ok"] or report is None:
        return {"ok": False, "rows": rows, "error": outcome.get("log", "")[-3000:],
                "wall_seconds": outcome["wall_seconds"]}
    new_claims = {c["id"]: c for c in report["claims"]}
    for c in record["claims"]:
        new = new_claims.pop(c["id"], None)
        rows.append({"kind": "claim", "name": c["id"], "recorded": c["verdict"],
                     "rerun": new["verdict"] if new else "(missing)",
                     "agree": bool(new) and new["verdict"] == c["verdict"]})
    for cid, new in new_claims.items():
        rows.append({"kind": "claim", "name": cid, "recorded": "(missing)", "rerun": new["verdict"],
                     "agree": False})
    new_metrics = report.get("metrics", {})
    for name, m in record.get("metrics", {}).items():
        metric = Metric(**m)
        new = new_metrics.get(name)
        rows.append({"kind": "metric", "name": name, "recorded": metric.value,
                     "rerun": new["value"] if new else "(missing)",
                     "agree": bool(new) and metric.agrees_with(new["value"]),
                     "tolerance": f"rtol {metric.rtol:g}, atol {metric.atol:g}"})
    return {"ok": all(r["agree"] for r in rows), "rows": rows, "error": None,
            "wall_seconds": outcome["wall_seconds"], "recorded_wall_seconds": record.get("wall_seconds")}
