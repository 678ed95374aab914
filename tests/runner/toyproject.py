"""A toy project (catalogue, notebooks, lock file) for the runner and CLI tests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nbformat

TOY_CATALOG = """
papers:
  - {slug: good, title: "A paper whose claims hold", authors: ["A. Author"], year: 2020, venue: "Toy 2020",
     arxiv: "2001.00001", chapter: infinite-width, tier: A, abstract: "Toy."}
  - {slug: other, title: "A second paper", authors: ["B. Author"], year: 2021, venue: "Toy 2021",
     arxiv: null, chapter: bayesian, tier: B, abstract: "Toy."}
  - {slug: broken, title: "A paper whose notebook raises", authors: [], year: 2021, venue: "Toy",
     arxiv: null, chapter: bayesian, tier: C, abstract: "Toy."}
  - {slug: slow, title: "A paper whose notebook hangs", authors: [], year: 2022, venue: "Toy",
     arxiv: null, chapter: theory, tier: D, abstract: "Toy."}
  - {slug: planned-one, title: "A paper with no notebook", authors: [], year: 2023, venue: "Toy",
     arxiv: null, chapter: llm, tier: B, abstract: "Toy."}
"""

PARAMS = 'profile = "cpu"\nseed = 0\ndevice = "auto"\nscale = None\n'


def claims_cell(slug: str, passed: str = "True") -> str:
    return textwrap.dedent(f"""
        from repro.profiles import setup
        from repro.claims import Report
        ctx = setup(profile, seed, "cpu")
        value = 2.0 * (scale or 1) + seed
        report = Report("{slug}", ctx)
        report.check("C1", "value is positive", paper="> 0", ours=f"{{value:.2f}}", rule="value > 0",
                     passed=value > 0 and {passed})
        report.metric("value", value, rtol=0.01)
        report.show()
    """)


def make_notebook(path: Path, body: list[str], params: str = PARAMS) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Toy"),
                nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in body]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))



def make_toy(root: Path) -> Path:
    (root / "src" / "repro").mkdir(parents=True)
    (root / "src" / "repro" / "papers.yaml").write_text(TOY_CATALOG)
    (root / "_config.yml").write_text("title: toy\n")
    (root / "requirements.lock").write_text("numpy==2.0\n")
    make_notebook(root / "notebooks/infinite-width/good.ipynb", [claims_cell("good")])
    make_notebook(root / "notebooks/bayesian/other.ipynb", [claims_cell("other", passed="False")])
    make_notebook(root / "notebooks/bayesian/broken.ipynb", ["raise ValueError('the method diverged')"])
    make_notebook(root / "notebooks/theory/slow.ipynb", ["import time\ntime.sleep(600)"])
    return root


def record(root: Path, profile: str, chapter: str, slug: str) -> dict:
    return json.loads((root / "results" / profile / chapter / f"{slug}.json").read_text())
