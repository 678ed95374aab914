"""Repository consistency: catalogue <-> notebooks <-> modules <-> results <-> toc, clean sources."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from repro.catalog import CHAPTER_TITLES, load_catalog
from repro.claims import extract_report
from repro.runner.params import declared_parameters
from repro.runner.store import load_record
from repro.site.build import toc_yaml

ROOT = Path(__file__).resolve().parents[1]
CATALOG = load_catalog(ROOT / "src" / "repro" / "papers.yaml")
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
RECORDS = sorted(p for p in (ROOT / "results").rglob("*.json") if "_failed" not in p.parts)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_there_are_notebooks_and_each_belongs_to_its_catalogue_chapter():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        chapter, slug = path.parent.name, path.stem
        assert chapter in CHAPTER_TITLES, f"{path}: unknown chapter folder"
        assert slug in CATALOG, f"{path}: not in the catalogue"
        assert CATALOG.get(slug).chapter == chapter, f"{path}: catalogue puts {slug} in another chapter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_source_notebook_is_clean_and_parameterized(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "source notebook carries outputs"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell must be tagged parameters"
    params = declared_parameters(nb, path.stem)
    assert params.get("profile") == "cpu" and "seed" in params and params.get("device") == "auto"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    source = "\n".join("".join(c["source"]) for c in code)
    assert "report.show()" in source.splitlines()[-1] or "report.show()" in "".join(code[-1]["source"])
    paper = CATALOG.get(path.stem)
    assert paper.module_path(ROOT).is_file(), f"no module {paper.module_path(ROOT)}"
    assert paper.module in source or f"from repro.{paper.package} import {paper.module_name}" in source
    tests = ROOT / "tests" / paper.package / f"test_{paper.module_name}.py"
    assert tests.is_file(), f"no unit tests at {tests}"


def test_every_paper_module_has_a_notebook_and_config():
    for module in (ROOT / "src" / "repro").glob("*/*.py"):
        if module.parent.name in ("core", "runner", "site") or module.name == "__init__.py":
            continue
        slug = module.stem.replace("_", "-")
        assert slug in CATALOG, f"{module}: no catalogue entry {slug}"
        paper = CATALOG.get(slug)
        assert paper.notebook_path(ROOT).is_file(), f"{module}: no notebook"
        assert "def config(" in module.read_text(), f"{module}: no config(profile, **overrides)"


@pytest.mark.parametrize("path", RECORDS, ids=["/".join(p.parts[-3:]) for p in RECORDS])
def test_committed_result_parses_and_matches_its_notebook(path):
    rec = load_record(path)
    profile, chapter, slug = path.parts[-3], path.parts[-2], path.stem
    assert (rec["profile"], rec["chapter"], rec["slug"]) == (profile, chapter, slug)
    assert slug in CATALOG and CATALOG.get(slug).chapter == chapter
    executed = json.loads(path.with_suffix(".ipynb").read_text())
    report = extract_report(executed)
    assert report is not None, "executed notebook has no claims report"
    assert report["claims"] == rec["claims"], "claims table differs from the executed notebook"
    assert report["metrics"] == rec["metrics"]
    assert rec["claims_total"] == len(rec["claims"])
    assert rec["claims_passed"] == sum(c["verdict"] == "reproduced" for c in rec["claims"])
    budget = {"smoke": 20, "cpu": 180, "full": 600}[profile]
    assert rec["wall_seconds"] <= budget * 1.1, f"{slug} [{profile}] took {rec['wall_seconds']} s, budget {budget} s"
    assert rec["git"]["commit"] and rec["fingerprint"]["value"]


def test_committed_results_are_cpu_or_full_only():
    assert not [p for p in RECORDS if p.parts[-3] == "smoke"], "smoke results are not committed"


def test_toc_is_generated_from_the_catalogue():
    assert (ROOT / "_toc.yml").read_text() == toc_yaml(CATALOG), "run `repro book --no-build` to regenerate _toc.yml"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [s["file"] for part in toc["parts"] for ch in part["chapters"] for s in ch.get("sections", [])]
    assert len(files) == 98


def test_environment_yml_pins_what_pyproject_requires_at_the_locked_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[_norm(name)] = version
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    pinned = {_norm(p.split("==")[0]): p.split("==")[1] for p in pip if "==" in p}
    for req in wanted:
        name = _norm(re.split(r"[<>=!~\[ ]", req)[0])
        assert name in lock, f"{name} is required by pyproject.toml but not in requirements.lock"
        assert pinned.get(name) == lock[name], f"environment.yml pins {name}={pinned.get(name)}, lock has {lock[name]}"


def test_the_tests_never_read_the_team_folder_outside_the_repository():
    outside = ["..", "/shared"], ["shared", "/papers"]  # spelled apart so this file does not match itself
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text()
        for parts in outside:
            assert "".join(parts) not in text, f"{path} reads outside the repository"
