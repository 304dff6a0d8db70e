"""Export corrected cases of a round as an nnU-Net v2 raw dataset for the next training run.

Images go to ``imagesTr/<case>_0000.nii.gz``, labels to ``labelsTr/<case>.nii.gz``
with the model's label scheme (cord 1; region-based cord + lesion: cord 1, lesion 2),
``dataset.json`` alongside, and ``splits_final.json`` with every session of a
subject on the same side of each fold. The result is checked with nnU-Net's own
``verify_dataset_integrity``.

Example:
    >>> from SpinalCordSegLib.rounds.nnunet_export import export_round
    >>> export_round(worklist, "nnUNet_raw/Dataset123_SCround2")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import SimpleITK as sitk

from .correction import plan_outputs
from ..errors import SpinalCordSegError
from ..imaging.fileutil import make_staging_folder, remove_stale
from ..imaging.grid import same_grid
from ..imaging.image_io import read_image, read_scan, write_image_atomic
from ..imaging.naming import output_name
from .worklist import Worklist

logger = logging.getLogger(__name__)


def corrected_masks(scan: Path, case: str, structures: List[str]) -> Dict[str, Path]:
    """Paths of a case's corrected masks where the Slicer module saves them (missing ones left out)."""
    folder = plan_outputs(scan).folder
    found = {s: folder / output_name(case, s, "seg") for s in structures}
    return {s: p for s, p in found.items() if p.is_file()}


def subject_splits(case_subjects: Dict[str, str], folds: int = 5, seed: int = 0) -> List[dict]:
    """nnU-Net ``splits_final.json`` entries; all cases of a subject stay on one side."""
    subjects = sorted(set(case_subjects.values()))
    folds = max(1, min(folds, len(subjects)))
    order = list(np.random.default_rng(seed).permutation(subjects))
    fold_of = {subject: index % folds for index, subject in enumerate(order)}
    splits = []
    for fold in range(folds):
        val = sorted(c for c, s in case_subjects.items() if fold_of[s] == fold)
        train = sorted(c for c, s in case_subjects.items() if fold_of[s] != fold) if folds > 1 else val
        splits.append({"train": train, "val": val})
    return splits


def export_round(
    worklist: Worklist,
    output: Union[str, Path],
    region_based: bool = True,
    channel_name: str = "T2w",
    folds: int = 5,
    seed: int = 0,
) -> Path:
    """Write the raw dataset of the round's corrected and approved cases; return its folder.

    Corrected masks are read from ``derivatives/labels`` of the scans' BIDS
    dataset, where the Slicer module saves them (:func:`correction.plan_outputs`).
    The dataset is built in a hidden staging folder beside ``output``, then renamed;
    staging folders of killed exports are removed first.
    """
    output = Path(output)
    if output.exists():
        raise SpinalCordSegError(f"{output}: already exists; choose a new DatasetNNN_Name folder")
    if not output.name.startswith("Dataset") or "_" not in output.name:
        raise SpinalCordSegError(f"{output}: nnU-Net dataset folders are named DatasetNNN_Name")
    structures = ["sc", "lesion"] if region_based else ["sc"]
    rows = worklist.cases()
    if rows.empty:
        raise SpinalCordSegError(f"{worklist.path}: no corrected or approved case to export")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Left by killed exports (their process is gone): never a live export's, never a user's folder.
    remove_stale(output.parent, "an interrupted 'round export'", folders=True,
                 prefix=lambda name: name.startswith(".Dataset"))
    staging = make_staging_folder(output.parent, f".{output.name}")  # the umask's mode, not mkdtemp's 0700
    try:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        subjects: Dict[str, str] = {}
        for _, row in rows.iterrows():
            case = row["case"]
            scan_path = worklist.case(case).scan
            masks = corrected_masks(scan_path, case, structures)
            if "sc" not in masks:
                raise SpinalCordSegError(
                    f"case {case}: marked {row['status']} but no corrected cord mask "
                    f"{output_name(case, 'sc', 'seg')} in {plan_outputs(scan_path).folder}")
            scan = read_scan(scan_path)
            labels = _label_map(scan, masks, case)
            write_image_atomic(scan, staging / "imagesTr" / f"{case}_0000.nii.gz")
            write_image_atomic(labels, staging / "labelsTr" / f"{case}.nii.gz")
            subjects[case] = row["subject"]
        dataset = {
            "channel_names": {"0": channel_name},
            "labels": {"background": 0, "sc": [1, 2], "lesion": 2} if region_based else {"background": 0, "sc": 1},
            "numTraining": len(subjects),
            "file_ending": ".nii.gz",
            "name": output.name,
        }
        if region_based:
            dataset["regions_class_order"] = [1, 2]
        (staging / "dataset.json").write_text(json.dumps(dataset, indent=2))
        (staging / "splits_final.json").write_text(json.dumps(subject_splits(subjects, folds, seed), indent=2))
        verify_dataset(staging)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _label_map(scan: sitk.Image, masks: Dict[str, Path], case: str) -> sitk.Image:
    """Cord 1, lesion 2 (lesion wins), on the scan's grid."""
    arrays = {}
    for structure, path in masks.items():
        mask = read_image(path)
        if not same_grid(scan, mask):
            raise SpinalCordSegError(f"{path}: not on the grid of case {case}'s scan")
        arrays[structure] = sitk.GetArrayFromImage(mask) > 0
    labels = arrays["sc"].astype(np.uint8)
    if "lesion" in arrays:
        labels[arrays["lesion"]] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(scan)
    return image


def verify_dataset(folder: Union[str, Path]) -> None:
    """nnU-Net's own integrity check of a raw dataset; its assertion becomes a clear error."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    printed = io.StringIO()  # nnU-Net prints its banner and findings: keep them for the error or the log
    try:
        with contextlib.redirect_stdout(printed):
            verify_dataset_integrity(str(folder), num_processes=1)
    except (AssertionError, RuntimeError) as error:
        detail = printed.getvalue().strip()
        raise SpinalCordSegError(f"{folder}: nnU-Net's dataset integrity check failed: {error}"
                                 + (f"\n{detail}" if detail else "")) from error
    logger.debug("%s", printed.getvalue())
