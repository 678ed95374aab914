"""Prepare every source notebook for the smoke test: inject `profile = "smoke"` with papermill
(--prepare-only, nothing executes) into OUT/<chapter>/<slug>.ipynb; `pytest --nbval-lax OUT` then runs them."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import papermill as pm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="build/smoke")
    ap.add_argument("--root", default=".")
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    notebooks = sorted((root / "notebooks").rglob("*.ipynb"))
    for nb in notebooks:
        if ".ipynb_checkpoints" in nb.parts:
            continue
        target = out / nb.relative_to(root / "notebooks")
        target.parent.mkdir(parents=True, exist_ok=True)
        pm.execute_notebook(str(nb), str(target), parameters={"profile": "smoke"}, prepare_only=True,
                            kernel_name="python3", progress_bar=False, log_output=False)
    print(f"prepared {len(notebooks)} notebook(s) in {out} with profile=smoke")
    return 0 if notebooks else 1


if __name__ == "__main__":
    raise SystemExit(main())
