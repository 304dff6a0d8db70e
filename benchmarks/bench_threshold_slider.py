"""Benchmark: one threshold-slider move (threshold, segment update, overlay threshold) on a real MRML scene.

What a slider move does in the module is ``ResultScene.set_threshold``:
threshold the soft map, replace the segment's labelmap
(``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment``), move the
soft map's lower display threshold and store the state in the parameter node.
Measured on slicer-core's real scene, for:

1. the tutorial's axial T2w (``sct_tutorial_data/t2_ms/t2.nii.gz``, 320x256x19),
   loaded with Slicer's own reader, soft maps derived from the scan;
2. a 512x512x120 volume with smooth random soft maps (target: under 100 ms).

Each case is timed with the default mask options (largest cord component kept:
while the slider is dragged the masks are plain thresholds and the 3D
labelling runs once, on release), then for the cord slider with both options
off, with "restrict lesions to the cord" (a cord move also updates the lesion
segment), and with both options on, every move settled. Usage:

    .venv/bin/python benchmarks/bench_threshold_slider.py [--moves 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
TUTORIAL_SCAN = REPO.parent / "shared/data/sct_tutorial_data/t2_ms/t2.nii.gz"
TARGET_MS = 100.0
PROVENANCE = {"Name": "benchmark"}


def smooth_map(shape, seed: int, sigma: float) -> np.ndarray:
    """Blob-like probabilities in [0, 1] (blurred noise), closer to a network's maps than white noise."""
    noise = sitk.GetImageFromArray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma))
    return ((blurred - blurred.min()) / (blurred.max() - blurred.min())).astype(np.float32)


def tutorial_case(scene):
    import slicer

    from SpinalCordSegLib.panel.slicer_scene import image_from_volume

    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    volume = logic.AddArchetypeVolume(str(TUTORIAL_SCAN), "t2_ms", 0)
    scan = image_from_volume(volume)
    array = sitk.GetArrayFromImage(scan).astype(np.float32)
    cord = (array - array.min()) / (array.max() - array.min())
    lesion = cord * smooth_map(array.shape, 1, 3.0)
    return volume, scan, {"sc": cord, "lesion": lesion}


def large_case(scene, shape=(120, 512, 512)):
    from SpinalCordSegLib.panel.slicer_scene import add_volume_from_image

    image = sitk.GetImageFromArray(smooth_map(shape, 0, 4.0))
    image.SetSpacing((0.5, 0.5, 1.0))
    volume = add_volume_from_image(scene, image, "large")
    return volume, image, {"sc": sitk.GetArrayFromImage(image), "lesion": smooth_map(shape, 2, 4.0)}


def measure(results, structure: str, moves: int, settled: bool = True) -> dict:
    thresholds = np.linspace(0.2, 0.8, moves)
    times = []
    for value in thresholds:
        start = time.perf_counter()
        assert results.set_threshold(structure, float(value), settled=settled) == []
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "max_ms": max(times), "moves": moves}


def measure_drag(results, structure: str, moves: int) -> dict:
    """A drag: ``moves`` unsettled moves, then the release (settled) at the last value."""
    figures = measure(results, structure, moves, settled=False)
    start = time.perf_counter()
    assert results.set_threshold(structure, 0.8, settled=True) == []
    figures["release_ms"] = (time.perf_counter() - start) * 1000.0
    return figures


def run_case(name: str, make, moves: int) -> dict:
    import slicer

    from SpinalCordSegLib.panel.slicer_scene import ResultScene, new_parameter_node

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    volume, reference, arrays = make(scene)
    soft_maps = {}
    for structure, array in arrays.items():
        soft_maps[structure] = sitk.GetImageFromArray(array)
        soft_maps[structure].CopyInformation(reference)
    results = ResultScene(new_parameter_node(scene))
    start = time.perf_counter()
    results.show(volume, soft_maps, {s: PROVENANCE for s in soft_maps})  # the default mask options
    show_s = time.perf_counter() - start
    figures = {"case": name, "size": list(reference.GetSize()), "show_s": show_s,
               "defaults_cord_drag": measure_drag(results, "sc", moves),
               "defaults_lesion_drag": measure_drag(results, "lesion", moves)}
    results.set_options(keep_largest_cord=False, restrict_lesions_to_cord=False)
    figures["cord"] = measure(results, "sc", moves)
    figures["lesion"] = measure(results, "lesion", moves)
    results.set_options(keep_largest_cord=False, restrict_lesions_to_cord=True)
    figures["cord_restricting_lesions"] = measure(results, "sc", moves)
    results.set_options(keep_largest_cord=True, restrict_lesions_to_cord=True)
    figures["cord_largest_component_restricting_lesions"] = measure(results, "sc", max(3, moves // 4))
    results.close()
    scene.Clear(True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20, help="slider moves per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    cases = []
    if TUTORIAL_SCAN.is_file():
        cases.append(run_case("t2_ms/t2.nii.gz", tutorial_case, args.moves))
    else:
        print(f"skipping the tutorial scan: {TUTORIAL_SCAN} not found")
    cases.append(run_case("512x512x120", large_case, args.moves))

    keys = ("defaults_cord_drag", "defaults_lesion_drag", "cord", "lesion", "cord_restricting_lesions",
            "cord_largest_component_restricting_lesions")
    print(f"{'case':18} {'size':>14} {'measurement':44} {'median ms':>10} {'max ms':>8} {'release ms':>10}")
    for figures in cases:
        size = "x".join(str(s) for s in figures["size"])
        for key in keys:
            row = figures[key]
            release = f"{row['release_ms']:10.1f}" if "release_ms" in row else ""
            print(f"{figures['case']:18} {size:>14} {key:44} {row['median_ms']:10.1f} {row['max_ms']:8.1f} {release}")
    large = cases[-1]["defaults_cord_drag"]["median_ms"]
    verdict = "meets" if large < TARGET_MS else "MISSES"
    print(f"512x512x120 cord slider, default options: median {large:.1f} ms per move while dragged, "
          f"{verdict} the {TARGET_MS:.0f} ms target")
    if args.json:
        args.json.write_text(json.dumps(cases, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
