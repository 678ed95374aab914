"""``repro status``: one row per catalogue paper with its best committed result and whether it is stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro.catalog import Catalog, Paper
from repro.runner.fingerprint import changed_parts, fingerprint
from repro.runner.params import ParameterError, declared_parameters, read_notebook
from repro.runner.store import BEST_FIRST, CorruptRecord, Store


def record_freshness(paper: Paper, record: dict[str, Any], root: Path,
                     nb: dict | None = None) -> tuple[bool, list[str]]:
    """(stale, changed parts) of a record against the current sources."""
    path = paper.notebook_path(root)
    if nb is None:
        if not path.is_file():
            return True, ["notebook (missing)"]
        nb = read_notebook(path)
    try:
        declared = declared_parameters(nb, where=paper.slug)
    except (ParameterError, SyntaxError):
        return True, ["notebook (parameters cell unreadable)"]
    parameters = {**declared, **record.get("overrides", {}), "profile": record["profile"]}
    fp = fingerprint(nb, parameters, root / "requirements.lock")
    old = record.get("fingerprint", {})
    if old.get("value") == fp["value"]:
        return False, []
    return True, changed_parts(old.get("parts", {}), fp["parts"])


def paper_status(paper: Paper, root: Path) -> dict[str, Any]:
    store = Store(root)
    nb_path, mod_path = paper.notebook_path(root), paper.module_path(root)
    nb = read_notebook(nb_path) if nb_path.is_file() else None
    row: dict[str, Any] = {
        "slug": paper.slug, "chapter": paper.chapter, "tier": paper.tier, "title": paper.title,
        "status": "planned", "stale": False, "stale_parts": [],
        "claims_total": 0, "claims_passed": 0, "wall_seconds": None, "device": None,
        "notebook": str(nb_path.relative_to(root)) if nb_path.is_file() else None,
        "module": str(mod_path.relative_to(root)) if mod_path.is_file() else None,
        "profiles": {}, "errors": [],
    }
    records = store.all_records(paper.chapter, paper.slug)
    for profile in BEST_FIRST:
        rec = records.get(profile)
        if rec is None:
            continue
        if isinstance(rec, CorruptRecord):
            row["errors"].append(str(rec))
            row["profiles"][profile] = {"error": str(rec)}
            continue
        stale, parts = record_freshness(paper, rec, root, nb)
        row["profiles"][profile] = {"stale": stale, "stale_parts": parts,
                                    "claims_passed": rec.get("claims_passed"),
                                    "claims_total": rec.get("claims_total"),
                                    "wall_seconds": rec.get("wall_seconds"),
                                    "finished_at": rec.get("finished_at")}
        if row["status"] == "planned":  # first valid one is the best
            row.update(status=profile, stale=stale, stale_parts=parts,
                       claims_total=rec.get("claims_total", len(rec["claims"])),
                       claims_passed=rec.get("claims_passed", 0), wall_seconds=rec.get("wall_seconds"),
                       device=rec.get("device_name") or rec.get("device"))
    return row


def status_rows(catalog: Catalog, root: Path, papers: list[Paper] | None = None) -> list[dict[str, Any]]:
    return [paper_status(p, root) for p in (papers if papers is not None else list(catalog))]
