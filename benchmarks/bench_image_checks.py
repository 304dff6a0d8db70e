"""Benchmark: the cost of ``image_io.check_image_file`` against SimpleITK's own read, in the same run.

For each file: the check alone, ``sitk.ReadImage`` alone, and their ratio (median of
``--repeats`` runs). Files: the shared scans (int16/uint8 .nii.gz, checked by their gzip
checksum), a float32 copy of the tutorial's axial T2w (read raw for NaN), and a
512x512x200 int16 .nii.gz over :data:`FULL_CHECK_BYTES` (checked by gzip's recorded
length only), written to a temporary folder. Usage:

    .venv/bin/python benchmarks/bench_image_checks.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SpinalCordSegLib.imaging.image_io import FULL_CHECK_BYTES, check_image_file

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPINALCORDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SCANS = ["sct_testing_data/t2/t2.nii.gz", "sct_tutorial_data/t2_lumbar/t2_lumbar.nii.gz",
         "sct_tutorial_data/t2_ms/t2.nii.gz"]


def _median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        files = [DATA / name for name in SCANS]
        as_float = Path(work) / "t2_ms_float32.nii.gz"
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(files[-1])), sitk.sitkFloat32), str(as_float))
        large = Path(work) / "large_int16.nii.gz"
        noise = np.random.default_rng(0).integers(0, 4000, (200, 512, 512), dtype=np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(noise), str(large))
        assert large.stat().st_size > FULL_CHECK_BYTES
        results = []
        for path in files + [as_float, large]:
            check = _median_seconds(lambda: check_image_file(path), args.repeats)
            read = _median_seconds(lambda: sitk.ReadImage(str(path)), args.repeats)
            results.append({"file": path.name, "bytes": path.stat().st_size, "check_s": round(check, 4),
                            "read_s": round(read, 4), "check_over_read": round(check / read, 2)})
            print(f"{path.name:28s} {path.stat().st_size / 2**20:7.1f} MiB  check {check * 1000:7.1f} ms  "
                  f"read {read * 1000:7.1f} ms  ratio {check / read:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
