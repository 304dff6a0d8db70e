"""Batch prediction over a BIDS cohort: discovery, sharding, skip-done, failures.

Outputs go to a BIDS derivatives folder
(``<derivatives>/sub-XX[/ses-YY]/anat/<scan>_label-SC_probseg.nii.gz`` ...).
A scan is done when its mask sidecar records the same input sha256 and the
same model checkpoints: a batch that was interrupted, or run again on a grown
cohort, predicts only what is missing. ``--shard K/N`` gives each of N jobs
(a SLURM array) a deterministic share, decided by a hash of the scan's path
relative to the BIDS root, so that no job needs to know about the others.

Example:
    >>> from SpinalCordSegLib.rounds.cohort import find_scans, in_shard
    >>> scans = find_scans("/data/bids", "sub-*_T2w.nii.gz")  # doctest: +SKIP
    >>> [s for s in scans if in_shard(s.relative, 1, 4)]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PureWindowsPath
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import SimpleITK as sitk

from ..imaging.binarization import MaskOptions
from ..errors import SpinalCordSegError
from ..imaging.fileutil import append_csv_rows, remove_stale_temporaries, write_text_atomic
from ..imaging.image_io import read_image, read_scan
from ..models.model_folder import sha256_of_file
from ..imaging.naming import bids_label, is_safe_id, output_name, refuse_name_collisions, source_name
from ..imaging.outputs import write_outputs
from ..imaging.sidecar import Sidecar, now
from ..measures.uncertainty import uncertainty
from .worklist import Worklist

logger = logging.getLogger(__name__)
FAILURES_FILE = "failures.csv"
WORKLIST_FILE = "worklist.csv"
#: The BIDS name of single-voxel disc labels in SCT's datasets (and of the panel's clicked discs).
DISCS_SUFFIX = "_label-discs_dlabel"
#: sct_label_vertebrae's name for the labelled cord mask of ``<case>_label-SC_seg``.
LEVELS_SUFFIX = "_label-SC_seg_labeled"
#: Where the levels come from: the labels folder only, or TotalSpineSeg where it has none.
LEVELS_WITH = ("labels", "spine")
#: Per-level table of a batch scan, beside its masks.
LEVELS_TABLE_SUFFIX = "_levels.csv"
DATASET_DESCRIPTION = "dataset_description.json"
#: The BIDS version whose derivatives rules the folder follows.
BIDS_VERSION = "1.9.0"


@dataclass(frozen=True)
class Scan:
    """A scan of the cohort, with its BIDS subject and session."""

    path: Path
    relative: str
    subject: str
    session: str

    @property
    def case(self) -> str:
        """Case id: the scan's name without extension (unique in a BIDS dataset)."""
        return source_name(self.path)

    def derivative_folder(self, derivatives: Path) -> Path:
        """``<derivatives>/sub-XX[/ses-YY]/anat``."""
        folder = derivatives / f"sub-{self.subject}"
        if self.session:
            folder = folder / f"ses-{self.session}"
        return folder / "anat"


def bids_entities(path: Path) -> Tuple[str, str]:
    """(subject, session) labels from a BIDS file name; session is '' when absent."""
    subject = re.search(r"(?:^|_)sub-([a-zA-Z0-9]+)", path.name)
    if not subject:
        raise SpinalCordSegError(f"{path}: not a BIDS file name (no sub-<label>)")
    session = re.search(r"_ses-([a-zA-Z0-9]+)", path.name)
    return subject.group(1), session.group(1) if session else ""


def check_include(include: str) -> str:
    """``include`` when it is a file name pattern confined to the BIDS root; else SpinalCordSegError.

    >>> check_include("sub-*_T2w.nii.gz")
    'sub-*_T2w.nii.gz'
    """
    parts = PurePath(include).parts
    if not include or PurePath(include).is_absolute() or PureWindowsPath(include).anchor or ".." in parts:
        raise SpinalCordSegError(f"--include {include!r}: give a file name pattern inside the BIDS folder "
                                 "(such as sub-*_T2w.nii.gz), without '..' or a leading '/'")
    return include


def _printable(path: Path) -> str:
    """``path`` as text that any terminal and log can show (undecodable bytes as ``\\xff``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def find_scans(bids_root: Union[str, Path], include: str = "sub-*_T2w.nii.gz",
               skipped: Optional[Dict[str, str]] = None) -> List[Scan]:
    """Scans under ``bids_root`` matching ``include``, sorted, derivatives excluded.

    A matching file that cannot be a case (a name that is not UTF-8, no BIDS subject,
    a case id that cannot name files) is logged and left out, with its reason in
    ``skipped`` when given: one odd file does not stop a cohort. Two scans that would
    share a case id (and so their output files and worklist row) are refused by name
    (:func:`refuse_case_collisions`).
    """
    root = Path(bids_root)
    if not root.is_dir():
        raise SpinalCordSegError(f"{root}: BIDS folder not found")
    scans = []
    for path in sorted(root.rglob(check_include(include))):
        relative = path.relative_to(root)
        if relative.parts[0] in ("derivatives", "sourcedata", "code") or not path.is_file():
            continue
        try:
            try:
                relative.as_posix().encode("utf-8")
            except UnicodeEncodeError:
                raise SpinalCordSegError(f"{_printable(path)}: the file name is not valid UTF-8; rename it") from None
            subject, session = bids_entities(path)
            scan = Scan(path, relative.as_posix(), subject, session)
            if not is_safe_id(scan.case):
                raise SpinalCordSegError(f"{_printable(path)}: case id {scan.case!r} cannot name output files "
                                         "(use letters, digits, '_', '-' or '.')")
        except SpinalCordSegError as error:
            logger.error("%s; skipped", error)
            if skipped is not None:
                skipped[_printable(path)] = str(error)
            continue
        scans.append(scan)
    refuse_case_collisions(scans)
    return scans


def refuse_case_collisions(scans: List[Scan]) -> None:
    """Refuse scans that share a case id: they would write the same outputs and one worklist row."""
    refuse_name_collisions({scan.relative: scan.case for scan in scans}, "scans of the BIDS folder")


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; None -> (1, 1)."""
    if not text:
        return 1, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise SpinalCordSegError(f"--shard {text!r}: expected K/N with 1 <= K <= N (e.g. 3/10)")
    return int(match.group(1)), int(match.group(2))


def in_shard(relative: str, k: int, n: int) -> bool:
    """True when the scan at ``relative`` belongs to shard ``k`` of ``n`` (stable across runs)."""
    digest = int(hashlib.sha256(relative.encode("utf-8")).hexdigest(), 16)
    return digest % n == k - 1


def is_done(scan: Scan, derivatives: Path, structures: List[str], input_sha: str,
            model_sha: Dict[str, str]) -> bool:
    """True when every output exists and its sidecar records this input and model."""
    folder = scan.derivative_folder(derivatives)
    for structure in structures:
        seg = folder / output_name(scan.case, structure, "seg")
        if not seg.is_file() or not (folder / output_name(scan.case, structure, "probseg")).is_file():
            return False
        step = Sidecar.read(seg).automatic_step
        if step.get("InputSha256") != input_sha or step.get("ModelSha256") != model_sha:
            return False
    return True


def write_dataset_description(derivatives: Path, provenance: Mapping) -> Optional[Path]:
    """Write the ``dataset_description.json`` that BIDS requires of a derivatives folder; keep an existing one.

    ``provenance`` is the engine's ``GeneratedBy`` entry (name, version, model). Returns the path when
    written, None when the folder already had one (the user's, or an earlier batch's).

    Example:
        >>> write_dataset_description(Path("derivatives/spinalcordseg"), engine.provenance())  # doctest: +SKIP
    """
    path = derivatives / DATASET_DESCRIPTION
    generated_by = {key: provenance[key] for key in ("Name", "Version", "Description") if provenance.get(key)}
    if provenance.get("ModelId") or provenance.get("Model"):
        generated_by["Description"] = (f"{generated_by.get('Description', 'nnU-Net v2 inference')} with model "
                                       f"{provenance.get('ModelId') or provenance.get('Model')}")
    description = {"Name": "SpinalCordSeg predictions", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                   "GeneratedBy": [generated_by]}
    try:
        return write_text_atomic(json.dumps(description, indent=2) + "\n", path, replace=False)
    except FileExistsError:  # a shard of the same batch wrote it meanwhile, or the user keeps their own
        return None


@dataclass
class BatchReport:
    """What a batch run did."""

    predicted: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    #: done scans missing from the worklist (or newer than their row), added from the files on disk
    recovered: List[str] = field(default_factory=list)
    #: done scans whose masks were made with other thresholds or mask options: re-binarized from
    #: their stored soft maps (no prediction)
    rebinarized: List[str] = field(default_factory=list)


def _rebinarize_if_needed(scan: Scan, folder: Path, structures: List[str], thresholds: Mapping[str, float],
                          options: MaskOptions) -> bool:
    """Rewrite a done scan's masks from its stored soft maps when they were made with other thresholds or options.

    Returns True when it did. The automatic step (input, model, date) is kept: the prediction is the same.
    """
    sidecars = {s: Sidecar.read(folder / output_name(scan.case, s, "seg")) for s in structures}
    if all(sidecar.threshold == float(thresholds[s]) and sidecar.mask_options == options
           for s, sidecar in sidecars.items()):
        return False
    soft_maps = {s: read_image(folder / output_name(scan.case, s, "probseg")) for s in structures}
    step = {k: v for k, v in sidecars[structures[0]].automatic_step.items() if k != "Thresholds"}
    write_outputs(soft_maps, scan.case, folder, thresholds, step, write_soft=False, options=options)
    return True


def _record_failure(derivatives: Path, scan: Scan, message: str) -> None:
    # Locked: two batch runs on one derivatives folder write one header.
    append_csv_rows(derivatives / FAILURES_FILE, [[now(), scan.relative, message]], ["date", "scan", "error"],
                    "failure log")


def _record(worklist: Worklist, scan: Scan, folder: Path, soft_maps: Mapping[str, sitk.Image]) -> None:
    """Put a predicted scan (soft maps written in ``folder``) in the worklist, with its uncertainty; save."""
    outputs = {}
    for structure, soft in soft_maps.items():
        entropy, volume = uncertainty(soft)
        outputs[structure] = {
            "probseg": folder / output_name(scan.case, structure, "probseg"),
            "seg": folder / output_name(scan.case, structure, "seg"),
            "entropy": round(entropy, 5), "uncertain_mm3": round(volume, 2),
        }
    worklist.record_prediction(scan.case, scan.subject, scan.session, scan.path, outputs)
    worklist.save()


def run_batch(
    scans: List[Scan],
    engine,
    derivatives: Union[str, Path],
    thresholds: Dict[str, float],
    worklist_path: Optional[Union[str, Path]] = None,
    crop_engine=None,
    options: Optional[MaskOptions] = None,
) -> BatchReport:
    """Predict every scan not done yet; record failures and go on; update the worklist.

    Masks follow ``thresholds`` and the mask ``options`` (default: the field's, as the panel's); a
    scan done earlier with other thresholds or options gets new masks from its stored soft maps.

    ``crop_engine``, a cord model, runs first on each scan and the main model
    predicts only around its cord. Temporary files of killed runs are removed
    first, and finished scans missing from the worklist are added to it.
    """
    refuse_case_collisions(scans)
    options = options if options is not None else MaskOptions()
    derivatives = Path(derivatives)
    derivatives.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(derivatives, recursive=True)  # left by a killed run; each one is logged
    if scans and not (derivatives / DATASET_DESCRIPTION).exists():
        write_dataset_description(derivatives, engine.provenance())
    worklist = Worklist.load(worklist_path or derivatives / WORKLIST_FILE, create=True)
    report = BatchReport()
    for scan in scans:
        try:
            input_sha = sha256_of_file(scan.path)
            folder = scan.derivative_folder(derivatives)
            if is_done(scan, derivatives, engine.structures, input_sha, engine.checkpoint_sha256):
                # A run killed between writing the outputs and saving the worklist left the case
                # out of it (or its row older than the outputs): record it from the files.
                seg = folder / output_name(scan.case, engine.structures[0], "seg")
                if not worklist.is_recorded(scan.case, Sidecar.read(seg).automatic_step.get("Date", "")):
                    soft_maps = {s: sitk.ReadImage(str(folder / output_name(scan.case, s, "probseg")))
                                 for s in engine.structures}
                    _record(worklist, scan, folder, soft_maps)
                    report.recovered.append(scan.relative)
                    logger.warning("%s: finished earlier but missing from %s; added", scan.relative, worklist.path)
                if _rebinarize_if_needed(scan, folder, engine.structures, thresholds, options):
                    logger.info("%s: masks made again from the stored soft maps with the thresholds and mask "
                                "options of this run", scan.relative)
                    report.rebinarized.append(scan.relative)
                else:
                    report.skipped.append(scan.relative)
                continue
            image = read_scan(scan.path)
            mask = crop_engine.cord_mask(image, str(scan.path)) if crop_engine is not None else None
            prediction = engine.predict(image, crop_mask=mask, name=str(scan.path))
            provenance = dict(prediction.provenance, InputSha256=input_sha, Input=scan.relative)
            write_outputs(prediction.soft_maps, scan.case, folder, thresholds, provenance, options=options)
            _record(worklist, scan, folder, prediction.soft_maps)
            report.predicted.append(scan.relative)
        except Exception as error:  # one bad case (out of memory...) must not stop a cohort of hundreds
            if isinstance(error, SpinalCordSegError):  # ours already names the file and the problem
                message = str(error)
                logger.error("%s", message)
            else:
                message = f"{scan.path}: {type(error).__name__}: {error}"
                logger.exception("%s: unexpected error", scan.relative)
            _record_failure(derivatives, scan, message)
            report.failed[scan.relative] = message
    return report


def level_source(scan: Scan, labels: Optional[Path], levels_with: str = "labels",
                 spine: Optional[Callable[[Path], sitk.Image]] = None, discs_suffix: str = DISCS_SUFFIX,
                 levels_suffix: str = LEVELS_SUFFIX):
    """The scan's vertebral levels (a :class:`~SpinalCordSegLib.measures.levels.LevelSource`), or None.

    In order: disc labels ``<labels>/<scan's folders>/<case><discs_suffix>.nii.gz``,
    a labelled cord ``<case><levels_suffix>.nii.gz``, then, with
    ``levels_with="spine"``, TotalSpineSeg's disc labels (``spine``: scan path
    -> disc label image; default :func:`SpinalCordSegLib.inference.spine.spine_disc_labels`).
    """
    from ..measures.levels import LevelSource

    if labels is not None:
        folder = Path(labels) / Path(scan.relative).parent
        for kind, suffix in (("discs", discs_suffix), ("labelled", levels_suffix)):
            path = folder / f"{scan.case}{suffix}.nii.gz"
            if path.is_file():
                return LevelSource.read(kind, path)
    if levels_with == "spine":
        if spine is None:
            from ..inference.spine import spine_disc_labels as spine
        return LevelSource("discs", spine(scan.path), f"TotalSpineSeg disc labels of {scan.path}")
    return None


def write_level_tables(scans: List[Scan], derivatives: Union[str, Path], structures: List[str],
                       thresholds: Mapping[str, float], labels: Optional[Path], levels_with: str = "labels",
                       spine: Optional[Callable[[Path], sitk.Image]] = None) -> Dict[str, str]:
    """Per-level tables (``<case>_levels.csv`` beside the masks) of predicted scans; scan -> what happened.

    The cord's soft map is measured (CSA soft and binary, angle-corrected) and
    the lesion mask, when the model has one, counted per level (see
    :func:`SpinalCordSegLib.measures.levels.level_tables`). A scan without
    levels, or whose levels fail, is reported and skipped, not fatal.
    """
    from ..imaging.fileutil import write_csv_atomic
    from ..measures.levels import level_tables
    from ..measures.morphometrics import load_image

    cords = [s for s in structures if bids_label(s) == "SC"]
    lesions = [s for s in structures if bids_label(s) == "lesion"]
    if not cords:
        raise SpinalCordSegError(f"per-level tables need a cord model; this one gives {structures}")
    outcome = {}
    for scan in scans:
        folder = scan.derivative_folder(Path(derivatives))
        try:
            source = level_source(scan, labels, levels_with, spine)
            if source is None:
                outcome[scan.relative] = "no vertebral levels (no disc labels or labelled cord in the labels folder)"
                continue
            cord = load_image(folder / output_name(scan.case, cords[0], "probseg"))
            lesion = load_image(folder / output_name(scan.case, lesions[0], "seg")) if lesions else None
            tables = level_tables(cord, source, lesion, threshold=thresholds[cords[0]],
                                  name=str(folder / output_name(scan.case, cords[0], "probseg")))
            path = write_csv_atomic(tables.per_level, folder / f"{scan.case}{LEVELS_TABLE_SUFFIX}")
            outcome[scan.relative] = f"levels from {source.kind}: {path}"
        except SpinalCordSegError as error:
            logger.error("%s", error)
            outcome[scan.relative] = f"failed: {error}"
    return outcome
