"""Start-up: the wall time of ``codara --help`` and ``codara runs list`` (SQLite, 20 runs).

    python -m benchmarks._startup            # 7 reps, prints the rows
    python -m benchmarks._startup --reps 3

Each command runs as a fresh process, the way a user runs it: the installed console script
(``.venv/bin/codara``) with the bytecode cache warm (one untimed run first; the cache goes to a
temporary ``PYTHONPYCACHEPREFIX``, so no ``__pycache__`` lands in the tree), ``--reps`` timed
runs, median, min and max. Beside the wall time, the CPU time the process used (user + system,
from ``getrusage``), which a machine shared with other work inflates less.

Two floors are measured in the same run, between the commands: the interpreter alone
(``python -c pass``) and the CLI framework alone (``python -c "import typer"``); the rows give
each command's time as a multiple of the interpreter's. ``--no-cache`` also measures with no
bytecode cache at all (``PYTHONDONTWRITEBYTECODE=1``: every module is compiled on every start,
as in a source checkout that may not write ``__pycache__``).

``benchmarks.run`` calls :func:`measure` and adds the rows to ``benchmarks/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 300.0  # issue 9: both commands start in at most 300 ms

_APP = """
import codara

app = codara.App()


@app.workflow(name="noop")
async def noop(ctx: codara.Context, data: object) -> object:
    return data
"""


def _codara() -> list[str]:
    script = Path(sys.executable).with_name("codara")
    return [str(script)] if script.exists() else [sys.executable, "-m", "codara"]


def _once(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-800:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def measure(
    reps: int = 7, *, no_cache: bool = False, log: TextIO = sys.stderr
) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/latest.json``: workload ``startup``, one per command and cache
    state, with the floors measured in the same run."""
    tmp = tempfile.mkdtemp(prefix="codara-bench-startup-")
    try:
        Path(tmp, "startup_app.py").write_text(_APP)
        Path(tmp, "inputs.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(20)))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CODARA_", "PYTHON"))}
        env.update(
            CODARA_DATABASE_URL=f"sqlite:///{tmp}/codara.db",
            CODARA_APP="startup_app:app",
            PYTHONPATH=tmp,
            PYTHONPYCACHEPREFIX=os.path.join(tmp, "pycache"),
            NO_COLOR="1",
        )
        codara = _codara()
        _once([*codara, "db", "upgrade"], tmp, env)
        _once([*codara, "run", "noop", "--input-file", "inputs.jsonl", "--no-wait"], tmp, env)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import typer'": [sys.executable, "-c", "import typer"],
            "codara --help": [*codara, "--help"],
            "codara runs list": [*codara, "runs", "list"],
        }
        modes = [("cached", env)]
        if no_cache:
            empty = os.path.join(tmp, "no-pycache")  # an empty cache, never written to
            modes.append(
                ("none", {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": empty})
            )
        rows: list[dict[str, Any]] = []
        for bytecode, mode_env in modes:
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            for cmd in commands.values():
                _once(cmd, tmp, mode_env)  # warm-up: writes the bytecode cache (if allowed)
            for _ in range(reps):  # interleaved, so that background load hits all alike
                for name, cmd in commands.items():
                    samples[name].append(_once(cmd, tmp, mode_env))
            floor = statistics.median(w for w, _ in samples["python -c pass"])
            for name, runs in samples.items():
                walls = [w for w, _ in runs]
                cpus = [c for _, c in runs]
                row = {
                    "workload": "startup",
                    "system": "codara" if name.startswith("codara") else "python",
                    "command": name,
                    "database": "sqlite" if name == "codara runs list" else "none",
                    "durability": "none",
                    "bytecode": bytecode,
                    "median": round(statistics.median(walls), 1),
                    "min": round(min(walls), 1),
                    "max": round(max(walls), 1),
                    "cpu_median": round(statistics.median(cpus), 1),
                    "vs_interpreter": round(statistics.median(walls) / floor, 1) if floor else None,
                    "unit": "ms",
                    "reps": reps,
                    "target_ms": TARGET_MS if name.startswith("codara") else None,
                    "how": f"fresh process, bytecode cache {bytecode}; {reps} reps after 1 "
                    "warm-up, interleaved with the floors; runs list: 20 runs in SQLite",
                }
                rows.append(row)
                log.write(
                    f"  startup {name:<28} {bytecode:<6} wall {row['median']:7.1f} ms "
                    f"(min {row['min']:.1f}, max {row['max']:.1f}), "
                    f"CPU {row['cpu_median']:.1f} ms\n"
                )
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks._startup", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--reps", type=int, default=7, help="timed runs per command (7)")
    p.add_argument("--no-cache", action="store_true", help="also measure with no bytecode cache")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.reps, no_cache=args.no_cache), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
