"""Executing notebooks: one job = one papermill run in a child process with a hard timeout.

The same :func:`execute` runs in a local thread pool or on a Dask worker; it returns the executed notebook
and its log, and the caller (on the machine that owns ``results/``) writes the result.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "REPRO_NUM_THREADS")
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """Kill every notebook still running (on Ctrl-C or when the runner itself is stopped)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _kill_group(proc)


def _worker_slots() -> int:
    """How many tasks this process runs at once: a Dask worker's thread count, else 1."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one notebook. ``spec``: slug, notebook (dict), parameters (dict passed to papermill),
    timeout (s), threads (int or None), cwd (str or None). Never raises for a failing notebook."""
    threads = spec.get("threads") or max(1, (os.cpu_count() or 1) // _worker_slots())
    env = dict(os.environ)
    env.update({var: str(threads) for var in THREAD_VARS})
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in env.get("XLA_FLAGS", ""):  # read once, at import
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TQDM_DISABLE", "1")  # progress bars are for interactive runs; recorded pages stay clean
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    cwd = spec.get("cwd")
    if cwd and not Path(cwd).is_dir():
        cwd = None
    started_at, t0 = now_iso(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"repro-{spec['slug']}-") as tmp:
        src, dst = Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb"
        src.write_text(json.dumps(spec["notebook"]), encoding="utf-8")
        cmd = [sys.executable, "-m", "repro.runner.worker", str(src), str(dst),
               json.dumps(spec["parameters"]), cwd or ""]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        timed_out = False
        try:
            log, _ = proc.communicate(timeout=spec.get("timeout"))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            log, _ = proc.communicate()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
        executed = None
        if dst.is_file():
            try:
                executed = json.loads(dst.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                executed = None
    wall = time.perf_counter() - t0
    if timed_out:
        log = (log or "") + f"\nrepro: stopped after the timeout of {spec.get('timeout')} s\n"
    return {
        "slug": spec["slug"],
        "ok": proc.returncode == 0 and not timed_out and executed is not None,
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "log": (log or "")[-50_000:],
        "notebook": executed,
        "started_at": started_at,
        "finished_at": now_iso(),
        "wall_seconds": round(wall, 2),
        "threads": threads,
        "host": socket.gethostname(),
    }
