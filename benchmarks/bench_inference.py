"""Benchmark: the engine against nnU-Net's own entry points, in one run.

Measures, on one scan and one model the size of the field's cord model
(6 stages, 32 to 320 features, patch 64x224x160 in RPI order, random weights):

1. raw ``nnUNetPredictor.predict_single_npy_array`` (model already loaded);
2. ``SegmentationEngine.predict`` (model already loaded): target ratio <= 1.05;
3. ``nnUNetv2_predict_from_modelfolder`` as a subprocess (how SlicerNNUnet runs it);
4. the second case through the warm worker: target >= 1.5x faster than (3).

Each measurement runs in its own process so that its peak memory (max RSS,
children included for the subprocess) is its own. Usage:

    .venv/bin/python benchmarks/bench_inference.py [--scan PATH] [--device cpu|cuda] [--tta]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCAN = REPO.parent / "shared/data/sct_tutorial_data/t2_ms/t2.nii.gz"
ORIENTATION = "LAS"  # SCT's RPI in SimpleITK letters


def _peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def make_field_size_model(root: Path) -> Path:
    from SpinalCordSegLib.models.synthetic_model import make_synthetic_model

    # Patch 64x224x160 in RPI (x, y, z) is 160x224x64 in SimpleITK's z, y, x order.
    return make_synthetic_model(root, region_based=False, patch_size=(160, 224, 64), spacing=(1.0, 1.0, 1.0),
                                features=(32, 64, 128, 256, 320, 320), image_orientation=ORIENTATION)


def raw_prediction_seconds(engine, image) -> float:
    """Seconds of nnU-Net's own ``predict_single_npy_array`` on ``image`` in the model's orientation."""
    import numpy as np
    import SimpleITK as sitk

    from SpinalCordSegLib.imaging.image_io import reorient

    oriented = reorient(image, ORIENTATION)
    array = sitk.GetArrayFromImage(oriented).astype(np.float32)[None]
    properties = {"spacing": list(oriented.GetSpacing())[::-1]}
    start = time.perf_counter()
    engine._predictor.predict_single_npy_array(array, properties, None, None, True)
    return time.perf_counter() - start


def measure_in_process(kind: str, model: str, scan: str, device: str, tta: bool) -> dict:
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.imaging.image_io import read_scan

    # The whole field of view, as nnU-Net's own tools: this compares the engine's overhead, not cropping
    # (bench_crop.py measures that).
    engine = SegmentationEngine(model, InferenceOptions(device=device, use_mirroring=tta, crop=False))
    image = read_scan(scan)
    if kind == "raw":
        seconds = raw_prediction_seconds(engine, image)
    else:
        start = time.perf_counter()
        engine.predict(image)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_mb()}


def measure_subprocess(model: str, scan: str, device: str, tta: bool) -> dict:
    command = shutil.which("nnUNetv2_predict_from_modelfolder", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder, "in")
        inputs.mkdir()
        import SimpleITK as sitk

        from SpinalCordSegLib.imaging.image_io import read_scan, reorient

        # nnU-Net's command does not reorient: hand it the scan in the model's orientation.
        sitk.WriteImage(reorient(read_scan(scan), ORIENTATION), str(inputs / "case_0000.nii.gz"))
        arguments = [command, "-i", str(inputs), "-o", str(Path(folder, "out")), "-m", model, "-f", "0",
                     "--save_probabilities", "-device", device, "-npp", "1", "-nps", "1"]
        if not tta:
            arguments.append("--disable_tta")
        start = time.perf_counter()
        subprocess.run(arguments, check=True, capture_output=True)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_mb(resource.RUSAGE_CHILDREN)}


def measure_worker(model: str, scan: str, device: str, tta: bool) -> dict:
    from SpinalCordSegLib.inference.worker import WorkerClient

    options = {"device": device, "use_mirroring": tta, "crop": False}
    with tempfile.TemporaryDirectory() as folder, WorkerClient() as client:
        first = client.wait(client.submit(scan, model, options, folder))
        start = time.perf_counter()
        second = client.wait(client.submit(scan, model, options, folder))
        seconds = time.perf_counter() - start
        pid = client.pid
        status = Path(f"/proc/{pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024.0
    assert first["model_loaded"] and not second["model_loaded"]
    return {"seconds": seconds, "first_case_seconds": first["seconds"], "peak_mb": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", default=str(DEFAULT_SCAN))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring (off by default: 8x slower)")
    parser.add_argument("--measure", choices=["raw", "engine", "subprocess", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        if args.measure in ("raw", "engine"):
            result = measure_in_process(args.measure, args.model, args.scan, args.device, args.tta)
        elif args.measure == "subprocess":
            result = measure_subprocess(args.model, args.scan, args.device, args.tta)
        else:
            result = measure_worker(args.model, args.scan, args.device, args.tta)
        print(json.dumps(result))
        return 0

    if not Path(args.scan).is_file():
        print(f"scan not found: {args.scan}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as root:
        model = str(make_field_size_model(Path(root)))
        results = {}
        for kind in ("raw", "engine", "subprocess", "worker"):
            output = subprocess.run(
                [sys.executable, __file__, "--measure", kind, "--model", model, "--scan", args.scan,
                 "--device", args.device] + (["--tta"] if args.tta else []),
                check=True, capture_output=True, text=True,
            ).stdout
            results[kind] = json.loads(output.strip().splitlines()[-1])
            print(f"{kind:>10}: {results[kind]['seconds']:8.2f} s   peak {results[kind]['peak_mb']:8.0f} MB",
                  flush=True)
    print(f"engine / raw            = {results['engine']['seconds'] / results['raw']['seconds']:.3f} (target <= 1.05)")
    print(f"subprocess / warm worker = {results['subprocess']['seconds'] / results['worker']['seconds']:.2f} "
          "(target >= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
