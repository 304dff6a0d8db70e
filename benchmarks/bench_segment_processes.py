"""Benchmark: whole ``spinalcordseg segment`` processes, as users run them: default (crop-first) against ``--no-crop``.

For each scan (default: the axial T2w ``t2_ms``, the long sagittal T2w
``errsm_11`` and an axial T2*w of the gm-challenge), each model (the embedded
``demo-sc-lesion`` and a model the size of the field's cord model:
``bench_inference.py``'s, its output layer set to say background everywhere
so that its prediction never reaches the crop box, as a trained model's cord
stays inside it) and each code tree given with ``--code`` (a folder holding
``SpinalCordSeg/``: e.g. the main branch as "before" and a work tree as
"after", in the same run), one fresh process per mode, ``--repeat`` times:
wall seconds (median), CPU user and system seconds of the process, and the
ratio ``--no-crop`` / default, and the localizer's share of the default
run (from the sidecar's ``Timing``). The load average is printed before each
row, since other jobs may share the machine: compare ratios within a run.

    .venv/bin/python benchmarks/bench_segment_processes.py [--code /work/main .] [--scans t2_ms errsm_11 t2star]
        [--models demo-sc-lesion field] [--repeat 1] [--device cpu] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import make_field_size_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Scan name -> its path under the shared data folder.
SCANS = {
    "t2_ms": "sct_tutorial_data/t2_ms/t2.nii.gz",
    "errsm_11": "sct_history_errsm/errsm_11/t2.nii.gz",
    "t2star": "train/gm-challenge-data/sub-9418/anat/sub-9418_run-1_T2starw.nii.gz",
}


def silent_field_model(root: Path) -> Path:
    """The field-sized model with random weights whose output layer says background everywhere (same cost)."""
    import torch

    model = make_field_size_model(root)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key, value in state["network_weights"].items():
        if "seg_layers" in key:
            value.zero_()
            if key.endswith("bias"):
                value[0] = 50.0
    torch.save(state, checkpoint)
    return model


def run_once(code: Path, scan: Path, model: str, crop: bool, device: str, home: Path) -> dict:
    """One ``spinalcordseg segment`` process: wall, user and system seconds."""
    environment = dict(os.environ, PYTHONPATH=f"{code / 'SpinalCordSeg'}{os.pathsep}{code / 'LesionQC'}",
                       HOME=str(home), SPINALCORDSEG_OFFLINE="1")
    with tempfile.TemporaryDirectory() as output:
        command = [sys.executable, "-m", "SpinalCordSegLib.cli", "segment", "-i", str(scan), "-m", model, "-o", output,
                   "--device", device, "--trust", "--yes"] + ([] if crop else ["--no-crop"])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, env=environment, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        # The sidecar's stage timing (older code trees may write none).
        sidecar = next(Path(output).glob("*_seg.json"), None)
        timing = json.loads(sidecar.read_text())["GeneratedBy"][0].get("Timing", {}) if sidecar else {}
    whole = "whole field of view instead" in done.stderr
    return {"seconds": seconds, "user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime,
            "fell_back": whole, "localizer": timing.get("Localizer")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", nargs="+", default=[str(REPO)], help="code trees to compare (folders with "
                                                                         "SpinalCordSeg/), e.g. /work/main .")
    parser.add_argument("--scans", nargs="+", default=list(SCANS), help=f"some of {list(SCANS)} or paths")
    parser.add_argument("--models", nargs="+", default=["demo-sc-lesion", "field"],
                        help="catalogue ids, folders, or 'field' (the field-sized model)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data"), help="the shared data folder")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    print(f"{'code':>14} {'model':>15} {'scan':>9} {'load':>5} | {'default s':>9} {'user':>6} {'sys':>5} | "
          f"{'no-crop s':>9} {'user':>6} {'sys':>5} | ratio", flush=True)
    with tempfile.TemporaryDirectory() as root:
        home = Path(root, "home")  # trust decisions of the field-sized model stay in this run
        home.mkdir()
        models = {name: str(silent_field_model(Path(root, "field"))) if name == "field" else name
                  for name in args.models}
        for scan_name in args.scans:
            scan = Path(args.data, SCANS[scan_name]) if scan_name in SCANS else Path(scan_name)
            if not scan.is_file():
                print(f"{scan_name}: {scan} not found, skipped", flush=True)
                continue
            for model_name in args.models:
                model = models[model_name]
                for code in map(Path, args.code):
                    load = os.getloadavg()[0]
                    runs = {crop: [run_once(code.resolve(), scan, model, crop, args.device, home)
                                   for _ in range(args.repeat)] for crop in (True, False)}
                    row = {crop: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "user", "system")}
                           for crop, rs in runs.items()}
                    fell = " (fell back to the whole field)" if any(r["fell_back"] for r in runs[True]) else ""
                    located = [r["localizer"] for r in runs[True] if r["localizer"] is not None]
                    share = (f"  localizer {statistics.median(located):.2f} s = "
                             f"{100 * statistics.median(located) / row[True]['seconds']:.1f} % of the default run"
                             if located else "")
                    print(f"{code.resolve().name:>14} {model_name:>15} {scan_name:>9} {load:5.1f} | "
                          f"{row[True]['seconds']:9.1f} {row[True]['user']:6.1f} {row[True]['system']:5.1f} | "
                          f"{row[False]['seconds']:9.1f} {row[False]['user']:6.1f} {row[False]['system']:5.1f} | "
                          f"{row[False]['seconds'] / row[True]['seconds']:5.2f}{fell}{share}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
