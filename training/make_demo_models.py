"""Train the two embedded demo models with nnU-Net v2, on CPU or GPU.

- ``demo-sc``: spinal cord (label ``sc``), trained on the shared scans that have a
  cord mask, except ``t2/t2.nii.gz``, held out for validation.
- ``demo-sc-lesion``: region-based cord + lesion (``sc`` = [1, 2], ``lesion`` = 2),
  trained on ``t2_fake_lesion`` and on the other scans with synthetic lesions
  painted into their cords (hyperintense ellipsoids of varied size and contrast).

Every step is nnU-Net's own: raw datasets, fingerprint, planning and
preprocessing through ``nnunetv2.experiment_planning``, training with
``nnUNetTrainer``. Only the budget is shrunk (features capped, fewer epochs and
iterations) so that a model trains in well under an hour on 2 CPU cores. The
final checkpoints are stripped to what inference needs and saved under
``SpinalCordSeg/Resources/Models/<id>/``, and registered as built-in models in
``SpinalCordSeg/Resources/models.json``, pinned by checkpoint sha256. A report
(Dice on every shared scan, training time) goes to ``training/demo_models_report.json``.

Usage:
    .venv/bin/python training/make_demo_models.py [--device cpu|cuda] [--epochs 40] [--iterations 25]
        [--models demo-sc demo-sc-lesion] [--work-dir /tmp/scs-train]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sct_testing_data"
MODELS = REPO / "SpinalCordSeg" / "Resources" / "Models"
CATALOGUE = REPO / "SpinalCordSeg" / "Resources" / "models.json"
REPORT = REPO / "training" / "demo_models_report.json"  # the README's figures
ORIENTATION = "LAS"  # SCT's RPI, in SimpleITK letters
FEATURE_CAP = 32  # keeps both shipped models under 20 MB together

#: (case id, scan, cord mask, lesion mask or None), relative to sct_testing_data.
CASES = [
    ("t2fakelesion", "t2/t2_fake_lesion.nii.gz", "t2/t2_fake_lesion_sc_seg.nii.gz",
     "t2/t2_fake_lesion_lesion_seg.nii.gz"),
    ("t2", "t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", None),
    ("t1w", "t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz", None),
    ("t2s", "t2s/t2s.nii.gz", "t2s/t2s_seg-deepseg.nii.gz", None),
    ("mt1", "mt/mt1.nii.gz", "mt/mt1_seg.nii.gz", None),
]
HELD_OUT = "t2"
#: In catalogue order: the first built-in model is the Slicer module's default.
SPECS = {
    # nnU-Net picks 1 mm along the cord for this dataset (patch 80x80x40): a CPU epoch then takes
    # minutes. Lesions are long along the cord, so 3 mm there keeps them and cuts the cost to a third.
    "demo-sc-lesion": {"dataset_id": 952, "name": "Dataset952_DemoSCLesion", "region_based": True,
                       "min_axis0_spacing": 3.0,
                       "title": "Demo: spinal cord and lesions (embedded)", "structures": ["sc", "lesion"],
                       "task": "spinal cord and lesion segmentation (region-based)"},
    "demo-sc": {"dataset_id": 951, "name": "Dataset951_DemoSC", "region_based": False,
                "title": "Demo: spinal cord (embedded)", "structures": ["sc"], "task": "spinal cord segmentation"},
}


def _load(relative: str, orientation: str = ORIENTATION) -> sitk.Image:
    from SpinalCordSegLib.image_io import reorient

    return reorient(sitk.ReadImage(str(DATA / relative)), orientation)


def paint_lesions(scan: sitk.Image, cord: np.ndarray, rng: np.random.Generator,
                  count: int) -> Tuple[sitk.Image, np.ndarray]:
    """Hyperintense ellipsoids inside the cord; return the new scan and the lesion mask."""
    image = sitk.GetArrayFromImage(scan).astype(np.float32)
    spacing = np.array(scan.GetSpacing()[::-1])  # z, y, x in mm
    grid = np.indices(image.shape).astype(np.float32)
    lesions = np.zeros(image.shape, bool)
    inside = np.argwhere(cord)
    cord_level = np.percentile(image[cord], 75)
    for _ in range(count):
        centre = inside[rng.integers(len(inside))]
        radii = np.array([rng.uniform(3.0, 9.0), rng.uniform(1.2, 3.0), rng.uniform(1.2, 3.0)])  # SI, AP, RL mm
        distance = sum(((grid[a] - centre[a]) * spacing[a] / radii[a]) ** 2 for a in range(3))
        region = (distance <= 1.0) & cord
        weight = np.clip(1.5 - distance, 0.0, 1.0) * cord  # soft edge, only inside the cord
        contrast = rng.uniform(0.5, 1.2)
        image += weight * contrast * cord_level
        lesions |= region
    painted = sitk.GetImageFromArray(image)
    painted.CopyInformation(scan)
    return painted, lesions


def build_raw_dataset(model_id: str, raw_root: Path, seed: int = 0) -> Path:
    """Write the nnU-Net raw dataset of ``model_id``; return its folder."""
    spec = SPECS[model_id]
    folder = raw_root / spec["name"]
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    count = 0
    for case, scan_path, cord_path, lesion_path in CASES:
        if not spec["region_based"] and case == HELD_OUT:
            continue
        scan = sitk.Cast(_load(scan_path), sitk.sitkFloat32)
        cord = sitk.GetArrayFromImage(_load(cord_path)) > 0
        variants: List[Tuple[sitk.Image, np.ndarray]] = []
        if lesion_path:
            variants.append((scan, sitk.GetArrayFromImage(_load(lesion_path)) > 0))
        elif spec["region_based"]:
            variants += [paint_lesions(scan, cord, rng, int(rng.integers(1, 3))) for _ in range(2)]
        else:
            variants.append((scan, np.zeros(cord.shape, bool)))
        for index, (image, lesion) in enumerate(variants):
            labels = cord.astype(np.uint8)
            if spec["region_based"]:
                labels[lesion] = 2
            label_image = sitk.GetImageFromArray(labels)
            label_image.CopyInformation(image)
            name = f"{case}{index}"
            sitk.WriteImage(image, str(folder / "imagesTr" / f"{name}_0000.nii.gz"))
            sitk.WriteImage(label_image, str(folder / "labelsTr" / f"{name}.nii.gz"))
            count += 1
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "sc": [1, 2], "lesion": 2} if spec["region_based"]
        else {"background": 0, "sc": 1},
        "numTraining": count,
        "file_ending": ".nii.gz",
        "name": spec["name"],
        "image_orientation": ORIENTATION,
        "description": f"SpinalCordSeg {model_id}: a demo model trained on the SCT testing data; not for real use",
    }
    if spec["region_based"]:
        dataset["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def plan_and_preprocess(model_id: str, preprocessed_root: Path) -> dict:
    """nnU-Net's fingerprint, plans and 3d_fullres preprocessing, with a smaller network."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset)

    spec = SPECS[model_id]
    extract_fingerprint_dataset(spec["dataset_id"], num_processes=1, check_dataset_integrity=True,
                                clean=True, verbose=False, show_progress_bar=False)
    plan_experiment_dataset(spec["dataset_id"])
    plans_path = preprocessed_root / spec["name"] / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    configuration = plans["configurations"]["3d_fullres"]
    arch = configuration["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(f, FEATURE_CAP) for f in arch["features_per_stage"]]
    coarser = spec.get("min_axis0_spacing", 0.0)
    if configuration["spacing"][0] < coarser:
        # Axis 0 (along the cord in LAS) at a coarser spacing; the patch shrinks to the image, keeping
        # the size divisible by the network's total stride on that axis.
        factor = coarser / configuration["spacing"][0]
        stride = int(np.prod([s[0] for s in arch["strides"]]))
        median = configuration["median_image_size_in_voxels"][0] / factor
        configuration["spacing"][0] = coarser
        configuration["median_image_size_in_voxels"][0] = median
        configuration["patch_size"][0] = int(min(configuration["patch_size"][0], stride * np.ceil(median / stride)))
    configuration["batch_size"] = 2
    plans["configurations"] = {"3d_fullres": configuration}
    plans_path.write_text(json.dumps(plans, indent=2))
    preprocess_dataset(spec["dataset_id"], configurations=("3d_fullres",), num_processes=[1],
                       show_progress_bar=False)
    return plans


def train(model_id: str, device: str, epochs: int, iterations: int) -> Path:
    """Train fold 'all' with nnU-Net's trainer; return the final checkpoint."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class DemoTrainer(nnUNetTrainer):
        """nnUNetTrainer with a CPU-sized budget."""

        # nnUNetTrainer records its own arguments by name: keep its signature.
        def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = 3
            self.save_every = 10 ** 6  # only the final checkpoint

    spec = SPECS[model_id]
    plans = json.loads((Path(nnUNet_preprocessed) / spec["name"] / "nnUNetPlans.json").read_text())
    dataset = json.loads((Path(nnUNet_preprocessed) / spec["name"] / "dataset.json").read_text())
    plans["continue_training"] = False  # what nnU-Net's run_training sets for a fresh run
    trainer = DemoTrainer(plans, "3d_fullres", "all", dataset, device=torch.device(device))
    trainer.run_training()
    return Path(trainer.output_folder) / "checkpoint_final.pth"


def export_model(model_id: str, checkpoint_path: Path) -> Dict[str, str]:
    """Strip the checkpoint to what inference needs and install it in the module's resources."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed

    spec = SPECS[model_id]
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    init_args = checkpoint["init_args"]
    stripped = {
        "network_weights": {k: v.clone() for k, v in checkpoint["network_weights"].items()},
        "init_args": {"configuration": init_args["configuration"], "fold": init_args["fold"],
                      "plans": init_args["plans"], "dataset_json": init_args["dataset_json"]},
        # The architecture is nnU-Net's standard one: any nnU-Net can load it under this name.
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": checkpoint["inference_allowed_mirroring_axes"],
        "current_epoch": checkpoint.get("current_epoch"),
    }
    target = MODELS / model_id / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.rmtree(MODELS / model_id, ignore_errors=True)
    (target / "fold_all").mkdir(parents=True)
    source = Path(nnUNet_preprocessed) / spec["name"]
    shutil.copy(source / "nnUNetPlans.json", target / "plans.json")
    shutil.copy(source / "dataset.json", target / "dataset.json")
    torch.save(stripped, target / "fold_all" / "checkpoint_final.pth")
    from SpinalCordSegLib.model_folder import sha256_of_file

    return {"all": sha256_of_file(target / "fold_all" / "checkpoint_final.pth")}


def register_in_catalogue(model_id: str) -> None:
    """Add or replace the model's built-in entry at the top of the catalogue, pinned by the hash of each file."""
    from SpinalCordSegLib.model_folder import ModelFolder

    spec = SPECS[model_id]
    files_sha256 = ModelFolder.open(MODELS / model_id).file_sha256()  # dataset.json, plans.json, checkpoints
    entry = {
        "id": model_id,
        "name": spec["title"],
        "description": "A small nnU-Net v2 model trained in minutes on the few scans of the Spinal Cord Toolbox's "
                       "testing data (training/make_demo_models.py), shipped so that SpinalCordSeg works with no "
                       "download. A demo, not for real use: use the field's models (spinalcord, lesion_ms...).",
        "task": spec["task"],
        "structures": spec["structures"],
        "contrasts": ["t2", "t1", "t2s", "mt"],
        "orientation": ORIENTATION,
        "version": time.strftime("%Y-%m-%d"),
        "folds": ["all"],
        "builtin": True,
        "path": model_id,
        "demo": True,  # every output says "demo model: not for clinical use"
        "files_sha256": files_sha256,
        "licence": "MIT",
    }
    catalogue = json.loads(CATALOGUE.read_text(encoding="utf-8"))
    others = [m for m in catalogue["models"] if m["id"] != model_id]
    builtins = [m for m in others if m.get("builtin")]
    order = list(SPECS)
    builtins = sorted(builtins + [entry], key=lambda m: order.index(m["id"]) if m["id"] in order else len(order))
    catalogue["models"] = builtins + [m for m in others if not m.get("builtin")]
    CATALOGUE.write_text(json.dumps(catalogue, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def evaluate(model_id: str) -> Dict[str, Dict[str, float]]:
    """Dice of the shipped model on every shared scan, on the scan's own grid (the project's own code)."""
    from SpinalCordSegLib.correction import correction_stats
    from SpinalCordSegLib.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.image_io import read_scan

    engine = SegmentationEngine(MODELS / model_id, InferenceOptions(device="cpu"))
    results: Dict[str, Dict[str, float]] = {}
    for case, scan_path, cord_path, lesion_path in CASES:
        maps = engine.predict(read_scan(DATA / scan_path)).soft_maps
        cord = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / cord_path))) > 0
        scores = {"sc": correction_stats(sitk.GetArrayFromImage(maps["sc"]) >= 0.5, cord).dice}
        if lesion_path and "lesion" in maps:
            lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / lesion_path))) > 0
            scores["lesion"] = correction_stats(sitk.GetArrayFromImage(maps["lesion"]) >= 0.5, lesion).dice
        results[case] = scores
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.add_argument("--work-dir", default="/tmp/scs-train", help="nnU-Net raw/preprocessed/results folders")
    args = parser.parse_args()

    work = Path(args.work_dir)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)  # read by nnunetv2.paths at import: set before importing nnU-Net
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_compile", "false")
    if not DATA.is_dir():
        print(f"shared data not found at {DATA}", file=sys.stderr)
        return 1
    report = {}
    for model_id in args.models:
        start = time.perf_counter()
        build_raw_dataset(model_id, work / "nnUNet_raw")
        plan_and_preprocess(model_id, work / "nnUNet_preprocessed")
        checkpoint = train(model_id, args.device, args.epochs, args.iterations)
        sha = export_model(model_id, checkpoint)
        register_in_catalogue(model_id)
        minutes = (time.perf_counter() - start) / 60
        report[model_id] = {"sha256": sha, "minutes": round(minutes, 1), "dice": evaluate(model_id),
                            "epochs": args.epochs, "iterations": args.iterations, "device": args.device}
        print(json.dumps({model_id: report[model_id]}, indent=2), flush=True)
        merged = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
        merged[model_id] = report[model_id]
        REPORT.write_text(json.dumps(merged, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
