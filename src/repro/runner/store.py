"""The result store: ``results/<profile>/<chapter>/<slug>.{ipynb,json}``, written atomically.

The JSON record is written last, so a record on disk always describes the notebook beside it. Failed runs
go to ``results/_failed/`` (not committed) and never touch the last good result.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.profiles import PROFILES

BEST_FIRST = ("full", "cpu", "smoke")
RECORD_SCHEMA = 1


class CorruptRecord(ValueError):
    pass


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; results are ordinary files
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass(frozen=True)
class ResultPaths:
    notebook: Path
    record: Path


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.results = self.root / "results"

    def paths(self, profile: str, chapter: str, slug: str) -> ResultPaths:
        base = self.results / profile / chapter
        return ResultPaths(base / f"{slug}.ipynb", base / f"{slug}.json")

    def failed_paths(self, profile: str, chapter: str, slug: str) -> tuple[Path, Path]:
        base = self.results / "_failed" / profile / chapter
        return base / f"{slug}.ipynb", base / f"{slug}.log"

    def read_record(self, profile: str, chapter: str, slug: str) -> dict[str, Any] | None:
        """The record, ``None`` if there is none; raises :class:`CorruptRecord` if it does not parse."""
        path = self.paths(profile, chapter, slug).record
        if not path.is_file():
            return None
        return load_record(path)

    def write_result(self, profile: str, chapter: str, slug: str, notebook: dict, record: dict) -> ResultPaths:
        p = self.paths(profile, chapter, slug)
        atomic_write_text(p.notebook, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(p.record, json.dumps(record, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
        failed_nb, failed_log = self.failed_paths(profile, chapter, slug)
        for f in (failed_nb, failed_log):
            f.unlink(missing_ok=True)
        return p

    def write_failure(self, profile: str, chapter: str, slug: str, notebook: dict | None, log: str) -> Path:
        nb_path, log_path = self.failed_paths(profile, chapter, slug)
        if notebook is not None:
            atomic_write_text(nb_path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(log_path, log)
        return log_path

    def all_records(self, chapter: str, slug: str) -> dict[str, dict | CorruptRecord]:
        out: dict[str, dict | CorruptRecord] = {}
        for profile in PROFILES:
            try:
                rec = self.read_record(profile, chapter, slug)
            except CorruptRecord as exc:
                out[profile] = exc
                continue
            if rec is not None:
                out[profile] = rec
        return out


def load_record(path: Path) -> dict[str, Any]:
    where = "/".join(path.parts[-3:])  # profile/chapter/slug.json
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise CorruptRecord(f"{where}: expected a JSON object")
    for key in ("slug", "profile", "fingerprint", "claims", "parameters", "wall_seconds"):
        if key not in rec:
            raise CorruptRecord(f"{where}: missing field {key!r}")
    if not isinstance(rec["claims"], list) or not isinstance(rec["fingerprint"], dict):
        raise CorruptRecord(f"{where}: fields 'claims'/'fingerprint' have the wrong type")
    return rec
