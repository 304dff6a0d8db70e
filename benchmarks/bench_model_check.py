"""Benchmark: checking an unchanged model on each Apply, against hashing it in full, in one run.

The panel checks the model's files before every Apply (trust, pinned
checksums). A model the size of the field's releases (five folds; here
``--fold-mb`` of checkpoint per fold, default 200 MB, random bytes appended
to a real synthetic nnU-Net checkpoint) is checked:

1. ``full``: ``ModelFolder.file_sha256`` the first time (every file read);
2. ``cached``: the same call again on the unchanged folder (stat only).

Goal: full / cached >= 100. The CPU load average is printed before and
after, since other jobs may share the machine.

    .venv/bin/python benchmarks/bench_model_check.py [--fold-mb 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpinalCordSeg"))

from SpinalCordSegLib.models.model_folder import ModelFolder  # noqa: E402
from SpinalCordSegLib.models.synthetic_model import make_synthetic_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold-mb", type=int, default=200)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench_model_check-") as root:
        folder = make_synthetic_model(root, folds=(0, 1, 2, 3, 4))
        model = ModelFolder.open(folder)
        chunk = os.urandom(1 << 20)
        for fold in model.folds:
            with open(model.checkpoint_path(fold), "ab") as stream:
                for _ in range(args.fold_mb):
                    stream.write(chunk)
        start = time.perf_counter()
        first = ModelFolder.open(folder).file_sha256()
        full = time.perf_counter() - start
        start = time.perf_counter()
        second = ModelFolder.open(folder).file_sha256()
        cached = time.perf_counter() - start
        assert first == second
    print(f"full: {full:.3f} s for 5 x {args.fold_mb} MB; cached: {cached * 1000:.2f} ms; "
          f"ratio {full / cached:.0f}x (goal >= 100)")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
