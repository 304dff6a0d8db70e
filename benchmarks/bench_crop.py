"""Benchmark: raw nnU-Net on the whole field of view against the default cropped pipeline, in one run.

On one scan (default: the 320x256x19 axial T2w of ``sct_tutorial_data/t2_ms``)
and the model the size of the field's cord model (``bench_inference.py``'s:
6 stages, 32 to 320 features, patch 64x224x160 in RPI order, random weights),
no test-time mirroring:

1. ``raw``: ``nnUNetPredictor.predict_single_npy_array`` on the whole scan
   (model loaded), what nnU-Net's own tools do;
2. ``cropped``: ``SegmentationEngine.predict`` with the default options
   (model loaded; the localizer is loaded and run inside the timing): the
   localizer pass, the box, the prediction inside it, uncrop (the safety net
   that redoes a prediction reaching the box is off: random weights reach it).

Each runs in its own process (peak memory is its own). Goal: raw / cropped >= 5.
With ``--code`` (folders holding ``SpinalCordSeg/``, e.g. the main branch and
a work tree), the cropped run is measured with each one's code, in the same
run (raw with the first). The CPU load average is printed before and after,
since other jobs may share the machine.

    .venv/bin/python benchmarks/bench_crop.py [--scan PATH] [--device cpu|cuda] [--tta] [--code /work/main .]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import DEFAULT_SCAN, _peak_mb, make_field_size_model, raw_prediction_seconds  # noqa: E402


def measure(kind: str, model: str, scan: str, device: str, tta: bool) -> dict:
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.imaging.image_io import read_scan

    # Random weights "segment" everywhere, up to the box faces, which would send the default pipeline back to
    # the whole field of view (its safety net for a missed cord): measured here is the normal path, where a
    # trained model's prediction stays inside the box.
    engine = SegmentationEngine(model, InferenceOptions(device=device, use_mirroring=tta, crop=kind == "cropped",
                                                        whole_if_truncated=False))
    image = read_scan(scan)
    result: dict = {}
    if kind == "raw":
        seconds = raw_prediction_seconds(engine, image)
    else:
        start = time.perf_counter()
        prediction = engine.predict(image)
        seconds = time.perf_counter() - start
        result["box"] = prediction.crop_box.to_dict() if prediction.crop_box else None
    result.update(seconds=seconds, peak_mb=_peak_mb())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", default=str(DEFAULT_SCAN))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring in both")
    parser.add_argument("--code", nargs="+", default=[str(Path(__file__).resolve().parents[1])],
                        help="code trees whose cropped pipeline is measured (the first one's also runs raw)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, the median is printed")
    parser.add_argument("--measure", choices=["raw", "cropped"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.model, args.scan, args.device, args.tta)))
        return 0
    if not Path(args.scan).is_file():
        print(f"scan not found: {args.scan}", file=sys.stderr)
        return 1
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as root:
        model = str(make_field_size_model(Path(root)))
        runs = [("raw", args.code[0])] + [("cropped", code) for code in args.code]
        for kind, code in runs:
            tree = Path(code).resolve()
            environment = dict(os.environ, PYTHONPATH=f"{tree / 'SpinalCordSeg'}{os.pathsep}{tree / 'LesionQC'}")
            measured = []
            for _ in range(args.repeat):
                output = subprocess.run(
                    [sys.executable, __file__, "--measure", kind, "--model", model, "--scan", args.scan,
                     "--device", args.device] + (["--tta"] if args.tta else []),
                    check=True, capture_output=True, text=True, env=environment,
                ).stdout
                measured.append(json.loads(output.strip().splitlines()[-1]))
            result = dict(measured[-1], seconds=statistics.median(m["seconds"] for m in measured))
            results[(kind, code)] = result
            print(f"{kind:>8} ({tree.name}): {result['seconds']:8.2f} s   peak {result['peak_mb']:8.0f} MB"
                  + (f"   box {result['box']}" if kind == "cropped" else ""), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    raw = results[("raw", args.code[0])]["seconds"]
    for code in args.code:
        print(f"raw / cropped ({Path(code).resolve().name}) = {raw / results[('cropped', code)]['seconds']:.2f} "
              "(goal >= 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
