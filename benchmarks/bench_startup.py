"""Benchmark: how long ``spinalcordseg`` and ``lesionqc`` take to answer ``--help`` and argument errors.

Each command runs in a fresh interpreter (as a user's shell runs it), several
times in turn; the table gives the median and the worst wall time, and the
ratio to the bare interpreter start (``python -c pass``) measured in the same
run. The second reference imports every ``spinalcordseg`` command module, as
the command line did before it imported them lazily. Target: well under
0.5 s for help and argument errors.

Usage:
    python benchmarks/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 0.5

ALL_MODULES = ("import SpinalCordSegLib.cli.segment, SpinalCordSegLib.cli.models, "
               "SpinalCordSegLib.cli.measure, SpinalCordSegLib.cli.rounds")
CASES: Tuple[Tuple[str, Sequence[str]], ...] = (
    ("reference: python -c pass", ["-c", "pass"]),
    ("reference: import every command module", ["-c", ALL_MODULES]),
    ("spinalcordseg --help", ["-m", "SpinalCordSegLib.cli", "--help"]),
    ("spinalcordseg (no command)", ["-m", "SpinalCordSegLib.cli"]),
    ("spinalcordseg segment (arguments missing)", ["-m", "SpinalCordSegLib.cli", "segment"]),
    ("spinalcordseg segment --help", ["-m", "SpinalCordSegLib.cli", "segment", "--help"]),
    ("spinalcordseg demo --help", ["-m", "SpinalCordSegLib.cli", "demo", "--help"]),
    ("spinalcordseg models --help", ["-m", "SpinalCordSegLib.cli", "models", "--help"]),
    ("spinalcordseg measure --help", ["-m", "SpinalCordSegLib.cli", "measure", "--help"]),
    ("spinalcordseg round --help", ["-m", "SpinalCordSegLib.cli", "round", "--help"]),
    ("spinalcordseg batch (arguments missing)", ["-m", "SpinalCordSegLib.cli", "batch"]),
    ("lesionqc --help", ["-m", "LesionQCLib.cli", "--help"]),
    ("lesionqc make-session (arguments missing)", ["-m", "LesionQCLib.cli", "make-session"]),
)


def _environment() -> Dict[str, str]:
    paths = [str(REPO / "SpinalCordSeg"), str(REPO / "LesionQC")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))


def measure(arguments: Sequence[str], repeat: int) -> List[float]:
    """Wall times (s) of ``python ARGUMENTS`` in a fresh process, ``repeat`` times."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *arguments], env=_environment(), cwd=str(REPO),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (default 7)")
    args = parser.parse_args(list(argv) or None)
    measure(["-c", "pass"], 2)  # warm the file cache
    rows = [(name, measure(arguments, args.repeat)) for name, arguments in CASES]
    reference = statistics.median(rows[0][1])
    print(f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, {args.repeat} runs each; "
          f"budget {BUDGET_S:.1f} s for help and argument errors\n")
    print(f"| {'command':<45} | median ms | max ms | / python start | within budget |")
    print(f"|{'-' * 47}|-----------|--------|----------------|---------------|")
    for name, times in rows:
        median = statistics.median(times)
        verdict = "" if name.startswith("reference") else ("yes" if median < BUDGET_S else "**no**")
        print(f"| {name:<45} | {median * 1000:9.0f} | {max(times) * 1000:6.0f} | "
              f"{median / reference:14.1f} | {verdict:<13} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
