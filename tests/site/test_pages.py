"""Generated pages: header, planned page, dashboard and chapter tables (no Sphinx build)."""

from __future__ import annotations

from repro.catalog import load_catalog
from repro.site.build import dashboard_table, header_markdown, planned_page, result_page, toc

CAT = load_catalog()
NTK = CAT.get("ntk")


def row(**kw):
    base = {"slug": "ntk", "status": "cpu", "stale": False, "stale_parts": [], "errors": [], "claims_total": 2,
            "claims_passed": 1, "wall_seconds": 75.0, "device": "cpu", "notebook": "x", "module": "y",
            "profiles": {"cpu": {"stale": False, "claims_passed": 1, "claims_total": 2}}}
    base.update(kw)
    return base


RECORD = {"profile": "cpu", "device": "cpu", "device_name": "x86_64", "git": {"commit": "abcdef1234567", "dirty": False},
          "finished_at": "2026-11-23T06:00:00+00:00", "wall_seconds": 75.0, "peak_memory_mb": 2048.0,
          "parameters": {"profile": "cpu", "seed": 0}, "claims_passed": 1, "claims_total": 2,
          "claims": [{"id": "C1", "text": "a", "paper": "p", "ours": "o", "rule": "r", "verdict": "reproduced", "note": ""},
                     {"id": "C2", "text": "b|c", "paper": "p", "ours": "o", "rule": "r", "verdict": "not reproduced",
                      "note": ""}]}


def test_header_shows_provenance_claims_and_freshness():
    md = header_markdown(NTK, row(), RECORD)
    for needle in ("Run record", "arXiv:1806.07572", "{cite:p}`ntk`", "`abcdef1234`", "2026-11-23", "75 s",
                   "2.0 GiB", "1 of 2 reproduced", "`seed=0`", "{bdg-success}`current`", "b\\|c"):
        assert needle in md, needle
    stale = header_markdown(NTK, row(stale=True, stale_parts=["module:repro.core.kernels"]), RECORD)
    assert "{bdg-warning}`stale`" in stale and "module:repro.core.kernels" in stale


def test_result_page_puts_the_header_under_the_notebook_title():
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# NTK"},
                    {"cell_type": "code", "metadata": {}, "source": "x", "outputs": []}], "metadata": {}}
    page = result_page(NTK, row(), RECORD, nb)
    assert [c["cell_type"] for c in page["cells"]] == ["markdown", "markdown", "code"]
    assert "Run record" in page["cells"][1]["source"]
    assert len(nb["cells"]) == 2  # the executed notebook itself is not modified


def test_planned_page_and_dashboard_cover_every_paper():
    md = planned_page(CAT.get("pfn"), row(status="planned", notebook=None, claims_total=0))
    assert md.startswith("# Transformers Can Do Bayesian Inference") and "no notebook" in md
    rows = {p.slug: row(slug=p.slug, status="planned", claims_total=0, wall_seconds=None, device=None) for p in CAT}
    table = dashboard_table(CAT, rows)
    assert len(table.strip().splitlines()) == 2 + 98
    assert "</book/papers/infinite-width/ntk>" in table


def test_toc_has_every_paper_under_its_chapter():
    t = toc(CAT)
    sections = {s["file"] for part in t["parts"] for ch in part["chapters"] for s in ch.get("sections", [])}
    assert sections == {f"book/papers/{p.chapter}/{p.slug}" for p in CAT}
