"""Manual corrections: how much changed, where they go, and how they are saved.

A corrected mask is saved as a BIDS derivative on the scan's own grid
(``derivatives/labels/sub-XX[/ses-YY]/anat/<source>_label-SC_seg.nii.gz``
when the scan lies in a BIDS dataset, else in a folder the user picks), with
a JSON sidecar whose ``GeneratedBy`` list holds the automatic step and then a
``Manual`` entry (the Spinal Cord Toolbox's manual-correction format). Each
save appends one row per structure to ``correction_log.csv``: what the
correction added and removed, the Dice score between the automatic and the
corrected mask, the time spent and the rater, the material of an
active-learning round.

Example:
    >>> import numpy as np
    >>> from SpinalCordSegLib.rounds.correction import correction_stats, bids_location
    >>> automatic = np.array([1, 1, 0, 0], bool)
    >>> correction_stats(automatic, np.array([1, 0, 1, 1], bool))
    CorrectionStats(automatic_voxels=2, corrected_voxels=3, added=2, removed=1, dice=0.4)
    >>> bids_location("/data/ds/sub-01/ses-02/anat/sub-01_ses-02_T2w.nii.gz").folder("labels").as_posix()
    '/data/ds/derivatives/labels/sub-01/ses-02/anat'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..imaging.binarization import MaskOptions
from ..errors import InputImageError, SpinalCordSegError
from ..imaging.fileutil import PathLike, append_csv_rows
from ..imaging.grid import same_grid
from ..imaging.image_io import orientation_of, reorient, write_image_atomic
from ..imaging.naming import SESSION, SUBJECT, output_name
from ..imaging.sidecar import Sidecar, automatic_step, now


LOG_NAME = "correction_log.csv"
LOG_COLUMNS = [
    "date", "case", "scan", "structure", "model", "threshold", "voxels_automatic", "voxels_corrected",
    "voxels_added", "voxels_removed", "dice", "seconds", "rater", "output",
]


# ------------------------------------------------------------------ statistics

@dataclass(frozen=True)
class CorrectionStats:
    """What a correction changed in one mask (voxel counts, and Dice automatic vs corrected)."""

    automatic_voxels: int
    corrected_voxels: int
    added: int
    removed: int
    dice: float


def correction_stats(automatic: np.ndarray, corrected: np.ndarray) -> CorrectionStats:
    """Compare an automatic mask with its correction (same shape; nonzero is inside).

    Dice is 1.0 when both masks are empty (nothing to find, nothing found).
    """
    automatic = np.asarray(automatic) != 0
    corrected = np.asarray(corrected) != 0
    if automatic.shape != corrected.shape:
        raise ValueError(f"masks differ in shape: {automatic.shape} vs {corrected.shape}")
    n_automatic = int(np.count_nonzero(automatic))
    n_corrected = int(np.count_nonzero(corrected))
    both = int(np.count_nonzero(automatic & corrected))
    total = n_automatic + n_corrected
    return CorrectionStats(
        automatic_voxels=n_automatic,
        corrected_voxels=n_corrected,
        added=n_corrected - both,
        removed=n_automatic - both,
        dice=1.0 if total == 0 else 2.0 * both / total,
    )


# ------------------------------------------------------------------ where outputs go

@dataclass(frozen=True)
class BidsLocation:
    """Where a scan sits in a BIDS dataset."""

    root: Path
    subject: str
    session: Optional[str]
    datatype: str

    def folder(self, pipeline: str = "labels") -> Path:
        """``<root>/derivatives/<pipeline>/sub-XX[/ses-YY]/<datatype>``."""
        folder = self.root / "derivatives" / pipeline / self.subject
        if self.session:
            folder = folder / self.session
        return folder / self.datatype


def bids_location(scan_path: PathLike) -> Optional[BidsLocation]:
    """The BIDS location of ``scan_path`` (``<root>/sub-XX[/ses-YY]/<datatype>/sub-XX_...``), or None.

    The file name must start with the subject (and hold the session) of its
    folders, as BIDS requires. A scan inside ``<root>/derivatives/<name>/``
    belongs to the dataset at ``<root>``.
    """
    scan = Path(scan_path).expanduser().absolute()
    datatype_dir = scan.parent
    above = datatype_dir.parent
    session = above.name if SESSION.fullmatch(above.name) else None
    subject_dir = above.parent if session else above
    if not SUBJECT.fullmatch(subject_dir.name) or not scan.name.startswith(subject_dir.name + "_"):
        return None
    if session and f"_{session}_" not in scan.name:
        return None
    root = subject_dir.parent
    if root.parent.name == "derivatives":
        root = root.parent.parent
    return BidsLocation(root, subject_dir.name, session, datatype_dir.name)


@dataclass(frozen=True)
class OutputPlan:
    """Where one save writes: the masks' folder and the correction log."""

    folder: Path
    log: Path
    bids: bool


def plan_outputs(scan_path: Optional[PathLike], chosen_folder: Optional[PathLike] = None) -> OutputPlan:
    """BIDS derivatives when the scan is in a BIDS dataset, else the folder the user chose.

    The log lives at the top of ``derivatives/labels`` (one log per dataset)
    or in the chosen folder.
    """
    location = bids_location(scan_path) if scan_path else None
    if location is not None:
        labels = location.root / "derivatives" / "labels"
        return OutputPlan(location.folder("labels"), labels / LOG_NAME, True)
    if not chosen_folder:
        where = f"{scan_path} is not in a BIDS dataset" if scan_path else "the scan was not loaded from a file"
        raise SpinalCordSegError(f"{where}: choose an output folder for the corrected masks")
    folder = Path(chosen_folder).expanduser()
    return OutputPlan(folder, folder / LOG_NAME, False)


# ------------------------------------------------------------------ grids

def read_grid(scan_path: PathLike) -> sitk.Image:
    """A 1-voxel-deep stand-in holding the scan file's grid (header only, no voxels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(scan_path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputImageError(f"{scan_path}: cannot read the image header ({error})") from error
    size = reader.GetSize()
    if len(size) not in (3, 4) or len(size) == 4 and size[3] != 1:
        raise InputImageError(f"{scan_path}: not a 3D scan (size {size})")
    grid = sitk.Image([int(s) for s in size[:3]], sitk.sitkUInt8)
    grid.SetSpacing(reader.GetSpacing()[:3])
    grid.SetOrigin(reader.GetOrigin()[:3])
    direction = np.array(reader.GetDirection()).reshape(len(size), len(size))[:3, :3]
    grid.SetDirection(direction.ravel().tolist())
    return grid


def on_grid(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkNearestNeighbor) -> sitk.Image:
    """``image`` on ``reference``'s grid.

    Slicer stores left-handed scans (PSR, LAS...) with flipped axes, so a mask
    from Slicer is usually the scan's grid permuted and flipped: it is then
    reoriented voxel for voxel. Any other grid (a cropped or resampled
    volume) is resampled with ``interpolator``.
    """
    oriented = reorient(image, orientation_of(reference))
    if same_grid(reference, oriented):
        oriented = sitk.Image(oriented)  # never change the caller's image
        oriented.CopyInformation(reference)  # drop float noise of the round trip through Slicer
        return oriented
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


# ------------------------------------------------------------------ correction log

def append_correction_log(path: PathLike, rows: Sequence[Mapping[str, object]]) -> Path:
    """Append rows to the CSV correction log, creating it with its header; flushed and fsync'd.

    Two saves at once (two panels, two raters) write one header and both rows
    (``fileutil.append_csv_rows``). Raises SpinalCordSegError when an existing log has other columns.
    """
    return append_csv_rows(path, ([row.get(column, "") for column in LOG_COLUMNS] for row in rows), LOG_COLUMNS,
                           "correction log")


# ------------------------------------------------------------------ saving

@dataclass(frozen=True)
class SavedCorrection:
    """What a save wrote."""

    files: Dict[str, Path]
    log: Path
    stats: Dict[str, CorrectionStats]


def _history(image_path: Path, step: dict, rater: str, date: str) -> List[dict]:
    """``GeneratedBy`` of a saved mask: earlier corrections of the same automatic result are kept."""
    previous = Sidecar.read(image_path)
    start = previous if previous.generated_by and previous.automatic_step == step else Sidecar([step])
    return start.with_correction(rater, date).generated_by


def save_correction(
    corrected: Mapping[str, sitk.Image],
    automatic: Mapping[str, sitk.Image],
    provenance: Mapping[str, dict],
    thresholds: Mapping[str, float],
    source: str,
    plan: OutputPlan,
    rater: str,
    seconds: Optional[float] = None,
    scan_path: Optional[PathLike] = None,
    soft_maps: Optional[Mapping[str, sitk.Image]] = None,
    model: Optional[str] = None,
    options: Optional[MaskOptions] = None,
) -> SavedCorrection:
    """Write corrected masks (and soft maps) with sidecars, then log the correction.

    Args:
        corrected: structure -> corrected binary mask (any pixel type; nonzero inside).
        automatic: structure -> the automatic mask it started from (same grid).
        provenance: structure -> the automatic step's ``GeneratedBy`` entry.
        thresholds: structure -> threshold that made the automatic mask.
        source: the scan's name for file names (``outputs.source_name``).
        plan: where to write (:func:`plan_outputs`).
        rater: who corrected (the ``Manual`` entry's author).
        seconds: time spent on the correction.
        scan_path: the scan file whose grid the outputs must have; None keeps
            the masks' grid.
        soft_maps: structure -> soft map, written as ``probseg`` when given.
        model: model id (or folder) for the log; default: the provenance's.
        options: the mask options that made the automatic masks (recorded in the sidecars).
    """
    if not rater.strip():
        raise SpinalCordSegError("enter the rater's name before saving (it goes into the sidecar and the log)")
    missing = [s for s in corrected if s not in automatic or s not in provenance or s not in thresholds]
    if missing:
        raise ValueError(f"no automatic mask, provenance or threshold for {missing}")
    reference = read_grid(scan_path) if scan_path else None
    date = now()
    files: Dict[str, Path] = {}
    stats: Dict[str, CorrectionStats] = {}
    rows = []
    for structure, mask in corrected.items():
        auto = automatic[structure]
        if not same_grid(auto, mask):
            raise InputImageError(f"{source}: the corrected and automatic {structure} masks are on different grids")
        mask = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
        auto = sitk.Cast(sitk.NotEqual(auto, 0), sitk.sitkUInt8)
        if reference is not None:
            mask, auto = on_grid(mask, reference), on_grid(auto, reference)
        stats[structure] = result = correction_stats(sitk.GetArrayViewFromImage(auto), sitk.GetArrayViewFromImage(mask))
        step = automatic_step(provenance[structure], {structure: thresholds[structure]})
        path = plan.folder / output_name(source, structure, "seg")
        history = _history(path, step, rater.strip(), date)
        write_image_atomic(mask, path)
        Sidecar(history, structure=structure, threshold=float(thresholds[structure]), mask_options=options).write(path)
        files[f"{structure}_seg"] = path
        if soft_maps is not None and structure in soft_maps:
            soft = soft_maps[structure]
            if reference is not None:
                soft = on_grid(soft, reference, sitk.sitkLinear)
            soft_path = write_image_atomic(soft, plan.folder / output_name(source, structure, "probseg"))
            Sidecar([step], structure=structure).write(soft_path)
            files[f"{structure}_probseg"] = soft_path
        rows.append({
            "date": date, "case": source, "scan": str(scan_path or ""), "structure": structure,
            "model": model or provenance[structure].get("ModelId") or provenance[structure].get("Model", ""),
            "threshold": f"{float(thresholds[structure]):.4g}",
            "voxels_automatic": result.automatic_voxels, "voxels_corrected": result.corrected_voxels,
            "voxels_added": result.added, "voxels_removed": result.removed, "dice": f"{result.dice:.6f}",
            "seconds": "" if seconds is None else f"{float(seconds):.1f}", "rater": rater.strip(),
            "output": str(path),
        })
    log = append_correction_log(plan.log, rows)
    return SavedCorrection(files, log, stats)
