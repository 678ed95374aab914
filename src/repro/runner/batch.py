"""Planning and running a batch of notebooks; writing their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from repro.catalog import Paper
from repro.claims import REPRODUCED, extract_report
from repro.profiles import check_profile
from repro.runner.execute import execute, kill_all
from repro.runner.fingerprint import fingerprint
from repro.runner.params import check_overrides, declared_parameters, read_notebook
from repro.runner.store import RECORD_SCHEMA, CorruptRecord, Store


class RunError(RuntimeError):
    """Bad input found before anything executes (unknown slug, bad -p, unreachable scheduler ...)."""


@dataclass
class Job:
    paper: Paper
    profile: str
    notebook: dict
    overrides: dict[str, Any]
    parameters: dict[str, Any]  # declared defaults with the overrides applied
    fingerprint: dict[str, Any]
    reason: str  # why it runs: "missing", "stale", "forced"


@dataclass
class BatchSummary:
    ran: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (slug, why)
    fresh: list[str] = field(default_factory=list)  # skipped: result current
    planned: list[str] = field(default_factory=list)  # skipped: no notebook yet

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        out = [f"ran {len(self.ran)}, failed {len(self.failed)}, up to date {len(self.fresh)}, "
               f"planned (no notebook) {len(self.planned)}"]
        out += [f"  FAILED {slug}: {why}" for slug, why in self.failed]
        return out


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (subprocess.SubprocessError, FileNotFoundError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None and os.environ.get("REPRO_GIT_COMMIT"):
        # a copy of the tree without .git (a remote GPU machine): the caller says which commit it is
        return {"commit": os.environ["REPRO_GIT_COMMIT"], "dirty": os.environ.get("REPRO_GIT_DIRTY") == "1"}
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "notebooks", "requirements.lock")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def plan(papers: Iterable[Paper], profile: str, overrides: dict[str, Any], root: Path, *, force: bool = False,
         explicit: bool = True) -> tuple[list[Job], BatchSummary]:
    """Check every input and decide what runs. Raises :class:`RunError` before anything executes."""
    check_profile(profile)
    store = Store(root)
    lock = root / "requirements.lock"
    jobs: list[Job] = []
    summary = BatchSummary()
    for paper in papers:
        path = paper.notebook_path(root)
        if not path.is_file():
            if explicit:
                raise RunError(f"{paper.slug}: no notebook yet ({path.relative_to(root)} is missing)")
            summary.planned.append(paper.slug)
            continue
        nb = read_notebook(path)
        try:
            declared = declared_parameters(nb, where=paper.slug)
            check_overrides(declared, overrides, where=paper.slug)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if "profile" not in declared:
            raise RunError(f"{paper.slug}: the parameters cell declares no 'profile'")
        parameters = {**declared, **overrides, "profile": profile}
        fp = fingerprint(nb, parameters, lock)
        try:
            old = store.read_record(profile, paper.chapter, paper.slug)
        except CorruptRecord:
            old = None
        if old is None:
            reason = "missing"
        elif old.get("fingerprint", {}).get("value") != fp["value"]:
            reason = "stale"
        elif force:
            reason = "forced"
        else:
            summary.fresh.append(paper.slug)
            continue
        jobs.append(Job(paper, profile, nb, overrides, parameters, fp, reason))
    return jobs, summary


def build_record(job: Job, outcome: dict[str, Any], report: dict[str, Any], root: Path,
                 backend: str) -> dict[str, Any]:
    env = report.get("environment", {})
    claims = report.get("claims", [])
    return {
        "schema": RECORD_SCHEMA,
        "slug": job.paper.slug,
        "title": job.paper.title,
        "chapter": job.paper.chapter,
        "tier": job.paper.tier,
        "profile": job.profile,
        "parameters": job.parameters,
        "overrides": job.overrides,
        "seed": job.parameters.get("seed"),
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "git": git_state(root),
        "fingerprint": job.fingerprint,
        "started_at": outcome["started_at"],
        "finished_at": outcome["finished_at"],
        "wall_seconds": outcome["wall_seconds"],
        "peak_memory_mb": env.get("peak_memory_mb"),
        "gpu_peak_memory_mb": env.get("gpu_peak_memory_mb"),
        "threads": outcome.get("threads"),
        "host": {"cpu_count": env.get("cpu_count"), "platform": env.get("platform")},
        "versions": env.get("versions", {}),
        "runner": {"backend": backend},
        "claims_total": len(claims),
        "claims_passed": sum(c.get("verdict") == REPRODUCED for c in claims),
        "claims": claims,
        "metrics": report.get("metrics", {}),
    }


def _finish(job: Job, outcome: dict[str, Any], root: Path, backend: str) -> tuple[bool, str]:
    """Write the result (or the failure, kept apart). Returns (ok, message)."""
    store = Store(root)
    slug, chapter = job.paper.slug, job.paper.chapter
    nb = outcome.get("notebook")
    report = extract_report(nb) if nb else None
    if outcome["ok"] and report is None:
        outcome["ok"] = False
        outcome["log"] += "\nrepro: the notebook ran but showed no claims report (report.show() missing)\n"
    if not outcome["ok"]:
        why = "timeout" if outcome.get("timed_out") else "error"
        log = store.write_failure(job.profile, chapter, slug, nb, outcome.get("log", ""))
        tail = [line for line in outcome.get("log", "").strip().splitlines() if line.strip()][-1:]
        return False, f"{why} after {outcome['wall_seconds']:.0f}s; log: {log.relative_to(root)}" + (
            f" ({tail[0][:160]})" if tail else "")
    record = build_record(job, outcome, report, root, backend)
    store.write_result(job.profile, chapter, slug, nb, record)
    return True, (f"{record['claims_passed']}/{record['claims_total']} claims reproduced, "
                  f"{outcome['wall_seconds']:.0f}s on {record.get('device_name') or record.get('device')}")


def _spec(job: Job, root: Path, timeout: float | None, threads: int | None) -> dict[str, Any]:
    return {
        "slug": job.paper.slug,
        "notebook": job.notebook,
        "parameters": {**job.overrides, "profile": job.profile},
        "timeout": timeout,
        "threads": threads,
        "cwd": str(job.paper.notebook_path(root).parent),
    }


def run_batch(jobs: list[Job], summary: BatchSummary, root: Path, *, n_jobs: int = 1,
              timeout: float | None = None, scheduler: str | None = None, progress: bool = True,
              echo: Callable[[str], None] | None = None) -> BatchSummary:
    """Execute ``jobs`` (local pool or Dask), write each result as it finishes; failures never stop the rest."""
    from tqdm.auto import tqdm

    echo = echo or (lambda msg: tqdm.write(msg, file=sys.stderr))
    if not jobs:
        return summary
    bar = tqdm(total=len(jobs), desc=f"{jobs[0].profile}", unit="nb", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    def done(job: Job, outcome: dict[str, Any], backend: str) -> None:
        ok, msg = _finish(job, outcome, root, backend)
        (summary.ran.append(job.paper.slug) if ok else summary.failed.append((job.paper.slug, msg)))
        echo(f"{'ok  ' if ok else 'FAIL'} {job.paper.slug} [{job.profile}, {job.reason}]: {msg}")
        bar.update(1)

    try:
        if scheduler:
            from repro.runner.dask_backend import run_on_dask

            run_on_dask(jobs, [_spec(j, root, timeout, None) for j in jobs], scheduler, done)
        else:
            n_jobs = max(1, min(n_jobs, len(jobs)))
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
            with ThreadPoolExecutor(max_workers=n_jobs) as pool:
                pending: dict[Future, Job] = {pool.submit(execute, _spec(j, root, timeout, threads)): j
                                              for j in jobs}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        job = pending.pop(fut)
                        try:
                            outcome = fut.result()
                        except Exception as exc:  # the executor itself broke, not the notebook
                            outcome = {"ok": False, "log": f"repro: {exc!r}", "notebook": None,
                                       "wall_seconds": 0.0, "timed_out": False}
                        done(job, outcome, "local")
    except KeyboardInterrupt:
        kill_all()
        echo("interrupted: finished results are kept; run the same command again to resume")
        raise
    finally:
        bar.close()
    return summary


def dumps_summary(summary: BatchSummary) -> str:
    return json.dumps({"ran": summary.ran, "failed": summary.failed, "fresh": summary.fresh,
                       "planned": summary.planned})
