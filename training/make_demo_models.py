"""Train the two embedded demo models with nnU-Net v2, contrast-agnostic, on CPU or GPU.

One region-based network (``sc`` = [1, 2], ``lesion`` = 2) is trained on the 13
training cases of the shared data (``CASES`` less ``VALIDATION``: T2*w, T1w, MT-on,
MT-off, mean BOLD, 7T, a PAM50 T2w template crop) with the augmentation of
``contrast_agnostic.py`` (synthetic lesions painted in the cord during training, lesion mimics,
SynthSeg-style random intensities per label, inversion, gamma, bias field, thick
slabs, noise). It installs as ``demo-sc-lesion``, and ``demo-sc`` is the same network
with its cord head turned into a 2-class softmax (:func:`as_cord_model`); ``--install``
picks which. ``--init-from`` starts from a cord or region model's weights (the shipped models come
from three runs, each starting from the one before: see the README), ``--split`` trains on another
held-out split to measure the recipe.

Every step is nnU-Net's own: raw dataset, fingerprint, planning (target spacing
``TARGET_SPACING``, a small memory target so that the patch suits a CPU) and
preprocessing through ``nnunetv2.experiment_planning``, training with a subclass of
``nnUNetTrainer``. The final checkpoints are stripped to what inference needs,
saved under ``SpinalCordSeg/Resources/Models/<id>/`` and registered as built-in
models in ``SpinalCordSeg/Resources/models.json``, pinned by checkpoint sha256.
The report (training time, Dice per case and per contrast, lesion components on
healthy scans, speed on a clinical-size scan) goes to ``training/demo_models_report.json``.

Usage:
    .venv/bin/python training/make_demo_models.py [--device cpu|cuda] [--epochs 50] [--iterations 30]
        [--max-minutes 60] [--learning-rate 0.01] [--init-from MODEL_FOLDER] [--install demo-sc]
        [--split shipped|sct-subject] [--work-dir /tmp/scs-train] [--reuse-preprocessed]
        [--evaluate-only [--validation-only]] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPINALCORDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))  # scans are relative to it
MODELS = REPO / "SpinalCordSeg" / "Resources" / "Models"
CATALOGUE = REPO / "SpinalCordSeg" / "Resources" / "models.json"
REPORT = REPO / "training" / "demo_models_report.json"  # the README's figures
ORIENTATION = "LAS"  # SCT's RPI, in SimpleITK letters
#: Features per stage at most: 16 at full resolution (most of a CPU step's cost), 32 below;
#: keeps both shipped models far under 20 MB together.
FEATURE_CAPS = (16, 32)
#: Along the cord (axis 0 in LAS), in plane: coarse enough for a CPU, fine enough for a ~8x12 mm cord.
TARGET_SPACING = (3.0, 0.9, 0.9)
GPU_MEMORY_TARGET_GB = 0.4  # nnU-Net sizes patch and network for this: patch 16x64x96, CPU-sized
GM = "train/gm-challenge-data"
SCT = "sct_testing_data"


def _gm(subject: str) -> Tuple[str, str, str, str, str, None]:
    session = subject.replace("Ses1", "").replace("Ses2", "")
    return (f"gm{subject[4:]}", session, "T2starw", f"{GM}/{subject}/anat/{subject}_run-1_T2starw.nii.gz",
            f"{GM}/derivatives/labels/{subject}/anat/{subject}_run-1_T2starw_seg-manual.nii.gz", None)


#: (case id, subject, contrast, scan, cord mask, lesion mask or None), relative to ``DATA``.
#: The sct_testing_data scans are all of one volunteer ("sct").
CASES = [_gm(s) for s in ("sub-10062Ses1", "sub-10062Ses2", "sub-9418", "sub-9584", "sub-9604", "sub-9669",
                          "sub-9709Ses1", "sub-9709Ses2")] + [
    ("bold", "sub-leipzigR01", "BOLD",
     "train/fmri-segmentation/data_leipzig_rest/derivatives/moco/sub-leipzigR01/func/"
     "sub-leipzigR01_task-rest_desc-mocomean_bold.nii.gz",
     "train/fmri-segmentation/data_leipzig_rest/derivatives/label/sub-leipzigR01/func/"
     "sub-leipzigR01_task-rest_desc-spinalcord_mask.nii.gz", None),
    ("amu7t", "AMU7T", "7T", "train/template_AMU7T/code/image.nii.gz", "train/template_AMU7T/code/image_sc.nii.gz",
     None),
    ("pam50", "PAM50", "T2w-template", "train/sct_testing_data_extra/template/template/PAM50_small_t2.nii.gz",
     "train/sct_testing_data_extra/template/template/PAM50_small_cord.nii.gz", None),
    ("mt0", "sct", "MToff", "train/sct_testing_data_extra/mt/mt0.nii.gz", "train/sct_testing_data_extra/mt/mt0_seg.nii.gz",
     None),
    ("t2fakelesion", "sct", "T2w", f"{SCT}/t2/t2_fake_lesion.nii.gz", f"{SCT}/t2/t2_fake_lesion_sc_seg.nii.gz",
     f"{SCT}/t2/t2_fake_lesion_lesion_seg.nii.gz"),
    ("t2", "sct", "T2w", f"{SCT}/t2/t2.nii.gz", f"{SCT}/t2/t2_seg-manual.nii.gz", None),
    ("t1w", "sct", "T1w", f"{SCT}/t1/t1w.nii.gz", f"{SCT}/t1/t1w_seg-manual.nii.gz", None),
    ("t2s", "sct", "T2starw", f"{SCT}/t2s/t2s.nii.gz", f"{SCT}/t2s/t2s_seg-deepseg.nii.gz", None),
    ("mt1", "sct", "MTon", f"{SCT}/mt/mt1.nii.gz", f"{SCT}/mt/mt1_seg.nii.gz", None),
]
#: Validation cases, never trained on: two sessions of one gm-challenge subject (T2*w), and the two
#: T2w scans of the SCT volunteer (whose T1w, T2*w and MT scans are trained on: not subject-independent).
VALIDATION = ("gm10062Ses1", "gm10062Ses2", "t2", "t2fakelesion")
#: Held-out splits (``--split``). ``shipped`` trains the shipped models. ``sct-subject`` holds out every
#: scan of the SCT volunteer (T1w, T2w, T2*w, MT-on, MT-off: T1w and MT are then contrasts training never
#: shows) and one gm-challenge subject: it measures the recipe on unseen subjects and contrasts, and its
#: models are evaluated, not installed.
SPLITS = {"shipped": VALIDATION,
          "sct-subject": ("gm9709Ses1", "gm9709Ses2", "t2", "t2fakelesion", "t1w", "t2s", "mt1", "mt0")}
#: The region-based network is trained once; demo-sc is its cord output as a softmax model.
TRAINED = "demo-sc-lesion"
#: In catalogue order: the first built-in model is the Slicer module's default.
SPECS = {
    "demo-sc-lesion": {"dataset_id": 952, "name": "Dataset952_DemoSCLesion", "region_based": True,
                       "title": "Demo: spinal cord and lesions (embedded)", "structures": ["sc", "lesion"],
                       "task": "spinal cord and lesion segmentation (region-based)"},
    "demo-sc": {"dataset_id": 951, "name": "Dataset951_DemoSC", "region_based": False,
                "title": "Demo: spinal cord (embedded)", "structures": ["sc"], "task": "spinal cord segmentation"},
}


def _load(relative: str, orientation: str = ORIENTATION) -> sitk.Image:
    from SpinalCordSegLib.imaging.image_io import reorient

    return reorient(sitk.ReadImage(str(DATA / relative)), orientation)


def training_cases(validation: Sequence[str] = VALIDATION) -> List[tuple]:
    """The cases trained on: every case whose id is not in ``validation``."""
    return [c for c in CASES if c[0] not in validation]


def build_raw_dataset(model_id: str, raw_root: Path, validation: Sequence[str] = VALIDATION) -> Path:
    """Write the nnU-Net raw dataset of ``model_id`` (training cases only); return its folder.

    Scans become float32 and masks uint8 (cord 1, lesion 2), both in LAS. The region-based
    dataset declares the lesion label; its lesions are painted during training
    (``contrast_agnostic.ContrastAgnosticTransform``).
    """
    spec = SPECS[model_id]
    folder = raw_root / spec["name"]
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases = training_cases(validation)
    for case, _subject, _contrast, scan_path, cord_path, lesion_path in cases:
        scan = sitk.Cast(_load(scan_path), sitk.sitkFloat32)
        labels = (sitk.GetArrayFromImage(_load(cord_path)) > 0).astype(np.uint8)
        if lesion_path and spec["region_based"]:
            labels[sitk.GetArrayFromImage(_load(lesion_path)) > 0] = 2
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(scan)
        sitk.WriteImage(scan, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(label_image, str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "sc": [1, 2], "lesion": 2} if spec["region_based"]
        else {"background": 0, "sc": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": spec["name"],
        "image_orientation": ORIENTATION,
        "description": f"SpinalCordSeg {model_id}: a small contrast-agnostic demo model (training/make_demo_models.py)",
    }
    if spec["region_based"]:
        dataset["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def plan_and_preprocess(model_id: str, preprocessed_root: Path, preprocess: bool = True) -> dict:
    """nnU-Net's fingerprint, plans and 3d_fullres preprocessing at ``TARGET_SPACING``, features capped.

    nnU-Net's planner sizes the patch, strides and batch itself, for a small memory target.
    With ``preprocess`` False, only the plans are made again (the fingerprint and the
    preprocessed data of an earlier run at the same spacing are kept).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset)

    spec = SPECS[model_id]
    if preprocess:
        extract_fingerprint_dataset(spec["dataset_id"], num_processes=1, check_dataset_integrity=True,
                                    clean=True, verbose=False, show_progress_bar=False)
    plan_experiment_dataset(spec["dataset_id"], gpu_memory_target_in_gb=GPU_MEMORY_TARGET_GB,
                            overwrite_target_spacing=TARGET_SPACING)
    plans_path = preprocessed_root / spec["name"] / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    configuration = plans["configurations"]["3d_fullres"]
    arch = configuration["architecture"]["arch_kwargs"]
    caps = list(FEATURE_CAPS) + [FEATURE_CAPS[-1]] * (len(arch["features_per_stage"]) - len(FEATURE_CAPS))
    arch["features_per_stage"] = [min(f, cap) for f, cap in zip(arch["features_per_stage"], caps)]
    configuration["batch_size"] = 2
    plans["configurations"] = {"3d_fullres": configuration}
    plans_path.write_text(json.dumps(plans, indent=2))
    if preprocess:
        preprocess_dataset(spec["dataset_id"], configurations=("3d_fullres",), num_processes=[1],
                           show_progress_bar=False)
    return plans


def train(model_id: str, device: str, epochs: int, iterations: int, max_minutes: float,
          learning_rate: float = 1e-2, initial_weights: Optional[Path] = None) -> Path:
    """Train fold 'all' with the contrast-agnostic trainer; return the final checkpoint.

    ``initial_weights``: a cord or region model's checkpoint to start from
    (``ContrastAgnosticTrainer.load_initial_weights``).
    """
    import torch
    from nnunetv2.paths import nnUNet_preprocessed

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from contrast_agnostic import ContrastAgnosticTrainer

    class DemoTrainer(ContrastAgnosticTrainer):
        """The budget of this run."""

    DemoTrainer.epochs, DemoTrainer.iterations, DemoTrainer.max_minutes = epochs, iterations, max_minutes
    DemoTrainer.learning_rate, DemoTrainer.initial_weights = learning_rate, initial_weights
    spec = SPECS[model_id]
    plans = json.loads((Path(nnUNet_preprocessed) / spec["name"] / "nnUNetPlans.json").read_text())
    dataset = json.loads((Path(nnUNet_preprocessed) / spec["name"] / "dataset.json").read_text())
    plans["continue_training"] = False  # what nnU-Net's run_training sets for a fresh run
    trainer = DemoTrainer(plans, "3d_fullres", "all", dataset, device=torch.device(device))
    trainer.run_training()
    return Path(trainer.output_folder) / "checkpoint_final.pth"


def as_cord_model(weights: Dict[str, "torch.Tensor"]) -> Dict[str, "torch.Tensor"]:
    """The region network's cord output as a 2-class softmax network, exactly.

    Each segmentation head maps features to (sc region, lesion region) logits z read
    through sigmoids; a head with logits (0, z_sc) read through a softmax gives
    softmax(0, z)[1] = sigmoid(z): the same cord probability.
    """
    import torch

    out = {}
    for name, tensor in weights.items():
        if ".seg_layers." in name:
            cord = tensor[:1]
            tensor = torch.cat([torch.zeros_like(cord), cord])
        out[name] = tensor.clone()
    return out


def export_model(model_id: str, checkpoint_path: Path, models_root: Path = MODELS) -> Dict[str, str]:
    """Strip the checkpoint to what inference needs and install it in ``models_root`` (the module's resources).

    ``demo-sc`` is derived from the region-based checkpoint (:func:`as_cord_model`).
    """
    import torch

    spec = SPECS[model_id]
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    init_args = checkpoint["init_args"]
    dataset_json = dict(init_args["dataset_json"])
    weights = checkpoint["network_weights"]
    if not spec["region_based"]:
        weights = as_cord_model(weights)
        dataset_json.update(labels={"background": 0, "sc": 1}, name=spec["name"],
                            description=f"SpinalCordSeg {model_id}: the cord output of demo-sc-lesion "
                                        "(training/make_demo_models.py)")
        dataset_json.pop("regions_class_order", None)
    stripped = {
        "network_weights": {k: v.clone() for k, v in weights.items()},
        "init_args": {"configuration": init_args["configuration"], "fold": init_args["fold"],
                      "plans": init_args["plans"], "dataset_json": dataset_json},
        # The architecture is nnU-Net's standard one: any nnU-Net can load it under this name.
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": checkpoint["inference_allowed_mirroring_axes"],
        "current_epoch": checkpoint.get("current_epoch"),
    }
    target = models_root / model_id / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.rmtree(models_root / model_id, ignore_errors=True)
    (target / "fold_all").mkdir(parents=True)
    (target / "plans.json").write_text(json.dumps(init_args["plans"], indent=2))
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    torch.save(stripped, target / "fold_all" / "checkpoint_final.pth")
    from SpinalCordSegLib.models.model_folder import sha256_of_file

    return {"all": sha256_of_file(target / "fold_all" / "checkpoint_final.pth")}


def register_in_catalogue(model_id: str) -> None:
    """Add or replace the model's built-in entry at the top of the catalogue, pinned by the hash of each file."""
    from SpinalCordSegLib.models.model_folder import ModelFolder

    spec = SPECS[model_id]
    files_sha256 = ModelFolder.open(MODELS / model_id).file_sha256()  # dataset.json, plans.json, checkpoints
    entry = {
        "id": model_id,
        "name": spec["title"],
        "description": "A small nnU-Net v2 model trained on a CPU in three runs (about 105 min), on 13 scans of 7 "
                       "contrasts with contrast-agnostic augmentation, synthetic lesions and lesion mimics "
                       "(training/make_demo_models.py), shipped so that SpinalCordSeg works with no download. "
                       "A demo, not for real use: use the field's models (spinalcord, lesion_ms...).",
        "task": spec["task"],
        "structures": spec["structures"],
        "contrasts": ["t2s", "t2", "t1", "mt", "bold"],
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


def _painted_copy(scan: sitk.Image, cord: np.ndarray, seed: int) -> Tuple[sitk.Image, np.ndarray]:
    """``scan`` with 2 synthetic lesions painted in its cord (the trainer's painting), and their mask."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from contrast_agnostic import LESION, paint_lesions

    image = torch.tensor(sitk.GetArrayFromImage(scan).astype(np.float32))[None]
    seg = torch.tensor(cord.astype(np.float32))[None]
    rng = np.random.default_rng(seed)
    while not (seg == LESION).any():
        paint_lesions(image, seg, scan.GetSpacing()[::-1], 2, rng, bright=True)
    painted = sitk.GetImageFromArray(image[0].numpy())
    painted.CopyInformation(scan)
    return painted, seg[0].numpy() == LESION


def evaluate_models(models: Dict[str, Path], validation_only: Sequence[str] = (),
                    validation: Sequence[str] = VALIDATION) -> Dict[str, dict]:
    """Every model on every case (``validation_only`` models: ``validation`` cases), with the project's engine.

    Predictions are on each scan's own grid.

    Per case: cord Dice at the default threshold; for a model with a lesion output,
    the number of lesion components (26-connected, default threshold) on healthy
    scans, lesion Dice where a lesion mask exists, and on held-out healthy scans
    lesion Dice and lesions found on a copy with 2 painted lesions.
    """
    from SpinalCordSegLib.rounds.correction import correction_stats
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.imaging.image_io import read_scan
    from SpinalCordSegLib.measures.lesion_metrics import label_lesions
    from SpinalCordSegLib.measures.morphometrics import DEFAULT_THRESHOLD

    results: Dict[str, dict] = {}
    for model_id, folder in models.items():
        engine = SegmentationEngine(folder, InferenceOptions(device="cpu"), model_id=model_id)
        cases = {}
        for case, subject, contrast, scan_path, cord_path, lesion_path in CASES:
            if model_id in validation_only and case not in validation:
                continue
            scan = read_scan(DATA / scan_path)
            maps = engine.predict(scan, name=scan_path).soft_maps
            cord = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / cord_path))) > 0
            row = {"subject": subject, "contrast": contrast, "validation": case in validation,
                   "sc_dice": correction_stats(sitk.GetArrayFromImage(maps["sc"]) >= DEFAULT_THRESHOLD, cord).dice}
            if "lesion" in maps:
                found = sitk.GetArrayFromImage(maps["lesion"]) >= DEFAULT_THRESHOLD
                if lesion_path:
                    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / lesion_path))) > 0
                    row["lesion_dice"] = correction_stats(found, truth).dice
                else:
                    row["lesion_components_on_healthy_scan"] = int(label_lesions(found).max())
                    if case in validation:
                        painted, truth = _painted_copy(scan, cord, seed=len(cases))
                        found = sitk.GetArrayFromImage(engine.predict(painted).soft_maps["lesion"]) >= DEFAULT_THRESHOLD
                        hits = label_lesions(truth)
                        row["painted_lesion_dice"] = correction_stats(found, truth).dice
                        row["painted_lesions_found"] = f"{len(set(np.unique(hits[found])) - {0})}/{hits.max()}"
            cases[case] = row
            print(model_id, case, row, flush=True)
        engine.close()
        results[model_id] = cases
    return results


def summarize(results: Dict[str, dict]) -> Dict[str, dict]:
    """Per model: mean validation cord Dice per contrast, and lesion figures."""
    summary = {}
    for model_id, cases in results.items():
        validation = [r for r in cases.values() if r["validation"]]
        entry = {"validation_sc_dice_per_contrast": {
            c: round(float(np.mean([r["sc_dice"] for r in validation if r["contrast"] == c])), 3)
            for c in sorted({r["contrast"] for r in validation})},
            "training_sc_dice_per_contrast": {
            c: round(float(np.mean([r["sc_dice"] for r in cases.values() if r["contrast"] == c and not r["validation"]])), 3)
            for c in sorted({r["contrast"] for r in cases.values() if not r["validation"]})} or None}
        healthy = {k: r["lesion_components_on_healthy_scan"] for k, r in cases.items()
                   if "lesion_components_on_healthy_scan" in r}
        if healthy:
            entry["lesion_components_on_healthy_scans"] = {
                "validation": {k: v for k, v in healthy.items() if cases[k]["validation"]},
                "training_scans": {k: v for k, v in healthy.items() if not cases[k]["validation"]}}
            entry["lesion_dice"] = {k: round(r[key], 3) for k, r in cases.items()
                                    for key in ("lesion_dice", "painted_lesion_dice") if key in r}
        summary[model_id] = entry
    return summary


def benchmark_speed(model_id: str, folder: Path, scan_path: Path) -> dict:
    """Seconds to load a model and to segment one clinical-size scan with the engine (CPU, its defaults).

    Wall time depends on what else runs on the machine; the process's CPU time (all
    threads) does much less, and divided by the cores used bounds the wall time of an idle machine.
    """
    import torch
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.imaging.image_io import read_scan

    scan = read_scan(scan_path)
    start, cpu_start = time.perf_counter(), time.process_time()
    engine = SegmentationEngine(folder, InferenceOptions(device="cpu"), model_id=model_id)
    loaded = time.perf_counter()
    engine.predict(scan)
    timing = {"model": model_id, "scan": str(scan_path.relative_to(DATA)), "size": list(scan.GetSize()),
              "load_s": round(loaded - start, 1), "predict_wall_s": round(time.perf_counter() - loaded, 1),
              "load_and_predict_cpu_s": round(time.process_time() - cpu_start, 1),
              "torch_threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0]}
    engine.close()
    return timing


def evaluate_all(models: Dict[str, Path], baseline: Optional[Path] = None, validation_only: bool = False,
                 validation: Sequence[str] = VALIDATION) -> dict:
    """The report's evaluation: per case, summary, speed, size; ``baseline`` models on the validation cases.

    The trained model is evaluated on every case (training scans too) unless ``validation_only``.
    """
    derived = list(models) if validation_only else [m for m in models if m != TRAINED]
    results = evaluate_models(models, validation_only=derived, validation=validation)
    evaluation = {"cases": results, "summary": summarize(results),
                  "speed": benchmark_speed(TRAINED, models[TRAINED], DATA / "sct_tutorial_data/t2_ms/t2.nii.gz"),
                  "size_bytes": sum(p.stat().st_size for m in models.values() for p in m.rglob("*") if p.is_file())}
    if baseline is not None:
        old = evaluate_models({m: baseline / m for m in models if (baseline / m).is_dir()}, validation_only=list(models),
                              validation=validation)
        evaluation["baseline"] = {"folder": str(baseline), "cases": old, "summary": summarize(old)}
    return evaluation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per epoch")
    parser.add_argument("--max-minutes", type=float, default=float("inf"),
                        help="stop training after the epoch that passes this wall-clock time")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="nnU-Net's initial learning rate")
    parser.add_argument("--init-from", type=Path, metavar="MODEL_FOLDER",
                        help="start from this cord or region model's weights (e.g. the shipped demo-sc) "
                             "instead of from scratch")
    parser.add_argument("--work-dir", default="/tmp/scs-train", help="nnU-Net raw/preprocessed/results folders")
    parser.add_argument("--evaluate-only", action="store_true", help="re-evaluate the shipped models, no training")
    parser.add_argument("--skip-evaluation", action="store_true", help="train and export only")
    parser.add_argument("--reuse-preprocessed", action="store_true",
                        help="keep the work folder's raw and preprocessed data (same spacing); plan again")
    parser.add_argument("--baseline", type=Path, help="a Models folder of earlier demo models to evaluate alongside")
    parser.add_argument("--validation-only", action="store_true", help="evaluate on the validation cases only")
    parser.add_argument("--split", default="shipped", choices=list(SPLITS),
                        help="held-out cases; other than 'shipped', the models go to WORK_DIR/models and the report's "
                             "held_out_splits, not into the module (use a work dir of its own)")
    parser.add_argument("--install", nargs="+", default=list(SPECS), choices=list(SPECS),
                        help="the models to install from this training (the others keep their shipped version)")
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
    report = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    validation = SPLITS[args.split]
    shipped = args.split == "shipped"
    models_root = MODELS if shipped else work / "models"
    section = report if shipped else report.setdefault("held_out_splits", {}).setdefault(args.split, {})
    if not args.evaluate_only:
        start = time.perf_counter()
        if not args.reuse_preprocessed:
            build_raw_dataset(TRAINED, work / "nnUNet_raw", validation)
        plans = plan_and_preprocess(TRAINED, work / "nnUNet_preprocessed", preprocess=not args.reuse_preprocessed)
        prepared = time.perf_counter()
        initial = None
        if args.init_from is not None:
            from SpinalCordSegLib.models.model_folder import ModelFolder, sha256_of_file

            # A copy: exporting the new models replaces the shipped folders.
            initial = work / "initial_checkpoint.pth"
            shutil.copyfile(ModelFolder.open(args.init_from).checkpoint_path("all"), initial)
        checkpoint = train(TRAINED, args.device, args.epochs, args.iterations, args.max_minutes,
                           args.learning_rate, initial)
        trained = time.perf_counter()
        import torch

        epochs_done = torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"]
        configuration = plans["configurations"]["3d_fullres"]
        section["training"] = {
            "trained_model": TRAINED, "derived_models": [m for m in SPECS if m != TRAINED],
            "device": args.device, "epochs_planned": args.epochs, "epochs_done": epochs_done,
            "iterations_per_epoch": args.iterations, "max_minutes": args.max_minutes,
            "learning_rate": args.learning_rate,
            "initial_weights": None if initial is None else {
                "model": str(args.init_from), "checkpoint_sha256": sha256_of_file(initial)},
            "preparation_minutes": round((prepared - start) / 60, 1),
            "training_minutes": round((trained - prepared) / 60, 1),
            "spacing_mm": configuration["spacing"], "patch_size": configuration["patch_size"],
            "features_per_stage": configuration["architecture"]["arch_kwargs"]["features_per_stage"],
            "training_cases": [c[0] for c in training_cases(validation)], "validation_cases": list(validation),
        }
        for model_id in args.install if shipped else list(SPECS):
            sha = export_model(model_id, checkpoint, models_root)
            if shipped:
                register_in_catalogue(model_id)
            section.setdefault("models", {})[model_id] = {"sha256": sha}
        REPORT.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(section["training"], indent=2), flush=True)
        if args.skip_evaluation:
            return 0
    evaluation = evaluate_all({m: models_root / m for m in SPECS}, args.baseline, args.validation_only, validation)
    section["evaluation"] = evaluation
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(evaluation["summary"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
