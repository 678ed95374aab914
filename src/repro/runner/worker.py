"""Executes one notebook with papermill in this process (the runner starts it as a subprocess so that a
timeout can kill it, kernel included). Usage: python -m repro.runner.worker IN OUT PARAMS_JSON [CWD]"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    src, dst, params = argv[0], argv[1], json.loads(argv[2])
    cwd = argv[3] if len(argv) > 3 and argv[3] else None
    import papermill as pm

    try:
        pm.execute_notebook(src, dst, parameters=params, kernel_name="python3", progress_bar=False,
                            cwd=cwd, log_output=False, request_save_on_cell_execute=True)
    except pm.PapermillExecutionError as exc:
        print(f"notebook raised {exc.ename}: {exc.evalue}\n", file=sys.stderr)
        print("".join(exc.traceback) if isinstance(exc.traceback, list) else exc.traceback, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
