"""State and decisions of the SpinalCordSeg panel, in plain Python.

The Slicer widget only wires its ``.ui`` widgets to these classes, so that
what a slider value means, what counts as a manual edit, which devices and
models can be picked and what must be installed first are tested without
Qt:

- :class:`ThresholdState`: one threshold per structure and the masks they give
  (optionally the largest cord component only, lesions restricted to the cord).
- :class:`EditTracker`: which segments the user edited since the last
  automatic update, so that sliders never overwrite edits without asking.
- :func:`device_choices`: auto, CUDA, MPS, CPU with the reason a device is unusable.
- :class:`ModelSelectorState`: catalogue models, installed or not, the embedded
  demo models, custom folders and the "Custom nnU-Net folder..." item.
- :func:`install_plan`: how to install PyTorch and nnU-Net inside Slicer.
- :func:`plan_jobs` and :class:`ApplyRun`: the worker jobs of one Apply (a cord
  model first when the chosen model needs its input cropped around the cord),
  polled from a timer so that the GUI never blocks.

Example:
    >>> import numpy as np
    >>> from SpinalCordSegLib.panel_state import ThresholdState
    >>> state = ThresholdState(["sc", "lesion"], restrict_lesions_to_cord=True)
    >>> state.set_threshold("sc", 0.3)
    ['sc', 'lesion']
    >>> soft = {"sc": np.array([0.2, 0.4, 0.9]), "lesion": np.array([0.9, 0.1, 0.8])}
    >>> {k: v.tolist() for k, v in state.masks(soft).items()}
    {'sc': [False, True, True], 'lesion': [False, False, True]}
"""

from __future__ import annotations

import importlib.util
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import CancelledError, SpinalCordSegError
from .image_io import write_image_atomic
from .outputs import bids_label, binarize

MIN_THRESHOLD = 0.01
MAX_THRESHOLD = 0.99
DEFAULT_THRESHOLD = 0.5
#: Threshold that turns the crop model's cord map into the crop mask (nnU-Net's own decision level).
CROP_THRESHOLD = 0.5


def clamp_threshold(value: float) -> float:
    """A threshold within the slider's range [0.01, 0.99]."""
    return float(min(MAX_THRESHOLD, max(MIN_THRESHOLD, float(value))))


def is_cord(structure: str) -> bool:
    """True for the structure the field labels ``SC`` (``sc``, ``cord``, ``spinalcord``)."""
    return bids_label(structure) == "SC"


def is_lesion(structure: str) -> bool:
    """True for lesion structures."""
    return bids_label(structure) == "lesion"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest component of a boolean mask, corners connecting (26-connected in 3D)."""
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(np.argmax(sizes))


class ThresholdState:
    """Thresholds of the soft maps and the binary masks they define.

    Args:
        structures: the model's structure names, in output order.
        defaults: default threshold per structure (from the model); 0.5 otherwise.
        keep_largest_cord: keep only the largest connected component of the cord.
        restrict_lesions_to_cord: remove lesion voxels outside the cord mask.
    """

    def __init__(
        self,
        structures: Sequence[str],
        defaults: Optional[Mapping[str, float]] = None,
        keep_largest_cord: bool = False,
        restrict_lesions_to_cord: bool = False,
    ) -> None:
        if not structures:
            raise ValueError("a model gives at least one structure")
        self.structures = list(structures)
        defaults = defaults or {}
        self.thresholds: Dict[str, float] = {
            s: clamp_threshold(defaults.get(s, DEFAULT_THRESHOLD)) for s in self.structures
        }
        self.keep_largest_cord = bool(keep_largest_cord)
        self.restrict_lesions_to_cord = bool(restrict_lesions_to_cord)

    @property
    def cord(self) -> Optional[str]:
        """The cord structure, if the model has one."""
        return next((s for s in self.structures if is_cord(s)), None)

    @property
    def lesions(self) -> List[str]:
        """The lesion structures."""
        return [s for s in self.structures if is_lesion(s)]

    def _restricting(self) -> bool:
        return self.restrict_lesions_to_cord and self.cord is not None and bool(self.lesions)

    def dependents(self, structure: str) -> List[str]:
        """Structures whose mask changes when ``structure``'s threshold changes (itself first)."""
        if structure not in self.thresholds:
            raise KeyError(f"unknown structure {structure!r}; the model has {self.structures}")
        if structure == self.cord and self._restricting():
            return [structure] + self.lesions
        return [structure]

    def set_threshold(self, structure: str, value: float) -> List[str]:
        """Set one threshold (clamped); return the structures whose masks must be updated."""
        affected = self.dependents(structure)
        self.thresholds[structure] = clamp_threshold(value)
        return affected

    def set_options(self, keep_largest_cord: bool, restrict_lesions_to_cord: bool) -> List[str]:
        """Change the options; return the structures whose masks must be updated."""
        changed = []
        if bool(keep_largest_cord) != self.keep_largest_cord and self.cord is not None:
            changed = self.dependents(self.cord)
        self.keep_largest_cord = bool(keep_largest_cord)
        if bool(restrict_lesions_to_cord) != self.restrict_lesions_to_cord:
            changed += [s for s in self.lesions if s not in changed]
        self.restrict_lesions_to_cord = bool(restrict_lesions_to_cord)
        return [s for s in self.structures if s in changed]

    def _cord_mask(self, soft: np.ndarray) -> np.ndarray:
        mask = soft >= self.thresholds[self.cord]
        return largest_component(mask) if self.keep_largest_cord else mask

    def masks(
        self, soft_maps: Mapping[str, np.ndarray], structures: Optional[Iterable[str]] = None
    ) -> Dict[str, np.ndarray]:
        """Boolean masks of ``structures`` (default: all) from their soft-map arrays.

        A voxel is inside when its probability is at least the threshold
        (as :func:`SpinalCordSegLib.outputs.binarize`).
        """
        wanted = list(structures) if structures is not None else list(self.structures)
        cord_mask = None
        if self.cord in wanted or (self._restricting() and any(s in self.lesions for s in wanted)):
            cord_mask = self._cord_mask(soft_maps[self.cord])
        result: Dict[str, np.ndarray] = {}
        for structure in wanted:
            if structure == self.cord:
                result[structure] = cord_mask
                continue
            mask = soft_maps[structure] >= self.thresholds[structure]
            if self._restricting() and structure in self.lesions:
                mask &= cord_mask
            result[structure] = mask
        return result

    def to_dict(self) -> dict:
        """Plain-JSON form (stored in the scene's parameter node)."""
        return {
            "structures": self.structures,
            "thresholds": self.thresholds,
            "keep_largest_cord": self.keep_largest_cord,
            "restrict_lesions_to_cord": self.restrict_lesions_to_cord,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ThresholdState":
        """Inverse of :meth:`to_dict`."""
        return cls(data["structures"], data.get("thresholds"), bool(data.get("keep_largest_cord")),
                   bool(data.get("restrict_lesions_to_cord")))


def volume_mm3(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in mm3 given the voxel spacing in mm."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing))


def format_volume(mm3: float) -> str:
    """``'1234 mm3'`` below 10 000 mm3, else ``'12.3 cm3'``."""
    return f"{mm3:.0f} mm3" if mm3 < 10000 else f"{mm3 / 1000:.1f} cm3"


class EditTracker:
    """Which segments the user has edited since the automatic update.

    The widget runs its own segment updates inside :meth:`automatic` and
    forwards every segment modification event to :meth:`segment_modified`;
    events outside :meth:`automatic` are the user's edits.

    Args:
        clock: returns the time in seconds (``time.time``; tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._automatic_depth = 0
        self.edited: Set[str] = set()
        self.started_at: Optional[float] = None

    @contextmanager
    def automatic(self) -> Iterator[None]:
        """Modifications made inside this block are not user edits."""
        self._automatic_depth += 1
        try:
            yield
        finally:
            self._automatic_depth -= 1

    def start(self, started_at: Optional[float] = None) -> None:
        """New automatic results are shown: no edits yet, the correction clock starts."""
        self.edited.clear()
        self.started_at = self._clock() if started_at is None else float(started_at)

    def segment_modified(self, structure: Optional[str], all_structures: Sequence[str] = ()) -> None:
        """A segment changed; None means unknown which (undo, whole-segmentation changes)."""
        if self._automatic_depth:
            return
        if structure is None:
            self.edited.update(all_structures)
        else:
            self.edited.add(structure)

    def needs_confirmation(self, structures: Iterable[str]) -> List[str]:
        """Structures among ``structures`` whose manual edits an automatic update would overwrite."""
        return [s for s in structures if s in self.edited]

    def discard_edits(self, structures: Iterable[str]) -> None:
        """The user accepted to overwrite these structures' edits."""
        self.edited.difference_update(structures)

    def seconds_spent(self) -> Optional[float]:
        """Seconds since the results were shown, or None before any result."""
        return None if self.started_at is None else max(0.0, self._clock() - self.started_at)


def overwrite_question(structures: Sequence[str]) -> str:
    """The question asked before a slider overwrites manual edits."""
    names = ", ".join(structures)
    return (f"You have edited {names} by hand. Update it from the threshold and lose these edits? "
            "(Undo in the segment editor brings them back.)")


# ------------------------------------------------------------------ devices

DEVICES = ("auto", "cuda", "mps", "cpu")
_DEVICE_LABELS = {"auto": "Automatic", "cuda": "CUDA GPU", "mps": "Apple MPS", "cpu": "CPU"}


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device list; ``reason`` says why it is disabled."""

    name: str
    label: str
    enabled: bool
    reason: Optional[str]


def device_choices(reasons: Optional[Mapping[str, Optional[str]]]) -> List[DeviceChoice]:
    """The device list from ``engine.available_devices()`` (None: PyTorch is not installed).

    ``auto`` is labelled with the device it picks (CUDA, then MPS, then CPU,
    as the engine does).
    """
    if reasons is None:
        missing = "PyTorch is not installed yet (it is installed on the first Apply)"
        reasons = {"cuda": missing, "mps": missing, "cpu": None}
    picked = next((d for d in ("cuda", "mps", "cpu") if reasons.get(d) is None), "cpu")
    choices = [DeviceChoice("auto", f"{_DEVICE_LABELS['auto']} ({_DEVICE_LABELS[picked]})", True, None)]
    for name in DEVICES[1:]:
        reason = reasons.get(name, "unknown device")
        choices.append(DeviceChoice(name, _DEVICE_LABELS[name], reason is None, reason))
    return choices


def parse_folds(text: str) -> Optional[List[str]]:
    """Folds typed by the user (``"0, 1"`` or ``"0 1"``); empty means every fold present."""
    folds = [part for part in text.replace(",", " ").split() if part]
    bad = [f for f in folds if not (f.isdigit() or f == "all")]
    if bad:
        raise ValueError(f"folds must be numbers such as '0 1 2' (or 'all'), not {', '.join(bad)}")
    return folds or None


# ------------------------------------------------------------------ models

CUSTOM_FOLDER = "custom-folder"


@dataclass(frozen=True)
class ModelEntry:
    """A model the selector offers.

    Attributes:
        id: what ``model_store.resolve_model`` takes (catalogue id, installed id or folder).
        name: what the user reads.
        installed: ready without a download.
        builtin: an embedded demo model shipped with the module.
    """

    id: str
    name: str
    installed: bool
    builtin: bool = False


@dataclass(frozen=True)
class ModelItem:
    """One line of the model combo box."""

    key: str
    label: str
    enabled: bool
    tooltip: str


class ModelSelectorState:
    """The model combo box: entries, custom folders, then "Custom nnU-Net folder...".

    Args:
        entries: catalogue and installed models (see :func:`catalogue_model_entries`).
        custom_folders: nnU-Net folders the user picked before (kept in the scene).
    """

    def __init__(self, entries: Sequence[ModelEntry], custom_folders: Sequence[str] = ()) -> None:
        self.entries = list(entries)
        self.custom_folders: List[str] = []
        for folder in custom_folders:
            self.add_custom_folder(folder)

    def add_custom_folder(self, folder: str) -> str:
        """Remember a folder the user picked; return its key."""
        folder = str(folder)
        if folder not in self.custom_folders:
            self.custom_folders.append(folder)
        return folder

    def items(self) -> List[ModelItem]:
        """Lines of the combo box, in order."""
        items = []
        for entry in self.entries:
            if entry.builtin:
                label = f"{entry.name} (demo, built in)"
                tooltip = "Embedded demo model" if entry.installed else "Not part of this build"
            elif entry.installed:
                label, tooltip = entry.name, f"Installed model '{entry.id}'"
            else:
                label = f"{entry.name} (not installed)"
                tooltip = f"Downloaded and installed on first use ('{entry.id}')"
            items.append(ModelItem(entry.id, label, entry.installed or not entry.builtin, tooltip))
        for folder in self.custom_folders:
            items.append(ModelItem(folder, f"Folder: {Path(folder).name}", True, folder))
        items.append(ModelItem(CUSTOM_FOLDER, "Custom nnU-Net folder...", True,
                               "Pick an nnU-Net v2 results folder (dataset.json, plans.json, fold_*)"))
        return items

    def default_key(self) -> Optional[str]:
        """The first usable model: an installed one if any, else the first entry."""
        usable = [item for item in self.items() if item.enabled and item.key != CUSTOM_FOLDER]
        installed = {e.id for e in self.entries if e.installed}
        first_installed = next((item.key for item in usable if item.key in installed), None)
        return first_installed or (usable[0].key if usable else None)

    @staticmethod
    def is_custom_choice(key: str) -> bool:
        """True for the "Custom nnU-Net folder..." item (ask for a folder)."""
        return key == CUSTOM_FOLDER


def catalogue_model_entries(catalogue: Iterable, installed: Iterable = ()) -> List[ModelEntry]:
    """Entries for every catalogue model, then every installed model the catalogue does not know.

    ``catalogue`` is a :class:`SpinalCordSegLib.catalogue.Catalogue`;
    ``installed`` holds ``model_store.InstalledModel`` objects (``ModelStore().installed()``).
    """
    installed = {model.id: model for model in installed}
    entries = []
    for entry in catalogue:
        if entry.builtin:
            entries.append(ModelEntry(entry.id, entry.name, entry.path is not None and entry.path.is_dir(), True))
        else:
            entries.append(ModelEntry(entry.id, entry.name, entry.id in installed))
    known = {entry.id for entry in entries}
    entries += [ModelEntry(i, model.record.get("name") or i, True) for i, model in installed.items() if i not in known]
    return entries


# ------------------------------------------------------------------ dependencies

#: What Slicer's Python needs beyond what Slicer ships: PyTorch, nnU-Net, and the
#: per-user folders library of the model store.
REQUIRED_PACKAGES = ("torch", "nnunetv2", "platformdirs")


def missing_packages(find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[str]:
    """Required packages that Slicer's Python cannot import."""
    return [name for name in REQUIRED_PACKAGES if find_spec(name) is None]


@dataclass(frozen=True)
class InstallStep:
    """How one part of the set-up is installed.

    ``method`` is ``"slicer_nnunet"`` (SlicerNNUnet's InstallLogic installs
    nnU-Net and a matching PyTorch through the PyTorch extension),
    ``"pytorch_extension"`` (PyTorchUtils installs a PyTorch built for this
    computer's GPU) or ``"pip"`` (``slicer.util.pip_install(requirement)``).
    """

    package: str
    method: str
    requirement: str
    description: str


def install_plan(missing: Sequence[str], has_slicer_nnunet: bool, has_pytorch_extension: bool) -> List[InstallStep]:
    """Steps that install the ``missing`` packages, best tool first.

    SlicerNNUnet's installer needs the PyTorch extension, so it is used only
    when both extensions are present.
    """
    steps = []
    if "nnunetv2" in missing and has_slicer_nnunet and has_pytorch_extension:
        steps.append(InstallStep("nnunetv2", "slicer_nnunet", "nnunetv2",
                                 "nnU-Net and PyTorch with the SlicerNNUnet extension's installer"))
    else:
        if "torch" in missing and has_pytorch_extension:
            steps.append(InstallStep("torch", "pytorch_extension", "torch",
                                     "PyTorch built for this computer's GPU, with the PyTorch extension"))
        elif "torch" in missing:
            steps.append(InstallStep("torch", "pip", "torch", "PyTorch from PyPI (pip; install the PyTorch "
                                                             "extension first for a build matched to your GPU)"))
        if "nnunetv2" in missing:
            steps.append(InstallStep("nnunetv2", "pip", "nnunetv2", "nnU-Net v2 from PyPI (pip)"))
    if "platformdirs" in missing:
        steps.append(InstallStep("platformdirs", "pip", "platformdirs", "platformdirs from PyPI (pip)"))
    return steps


def install_question(steps: Sequence[InstallStep]) -> str:
    """The confirmation shown before installing."""
    lines = "\n".join(f"- {step.description}" for step in steps)
    return ("SpinalCordSeg needs PyTorch and nnU-Net in Slicer's Python. Install them now? This downloads "
            f"several hundred MB and can take a few minutes:\n{lines}")


# ------------------------------------------------------------------ jobs

@dataclass(frozen=True)
class PlannedJob:
    """One worker job of an Apply.

    Attributes:
        model: the spec given to ``resolve_model``.
        purpose: ``"crop"`` (cord model whose mask crops the next job) or ``"segment"``.
        crop: where the crop mask comes from: ``"segment"`` (the cord segment
            already in the scene), ``"previous"`` (the crop job's cord map) or None.
    """

    model: str
    purpose: str
    crop: Optional[str]


def plan_jobs(
    model: str, crop_enabled: bool, crop_with: Optional[str], has_cord_segment: bool
) -> Tuple[List[PlannedJob], Optional[str]]:
    """Jobs for one Apply, and a warning for the user (or None).

    With cropping on, the cord segment already in the scene is used when
    there is one; otherwise the catalogue's cord model (``crop_with``) runs
    first. Without either, the engine crops around the box of its own
    localizer pass (pass ``{"crop": crop_enabled}`` in the job options).
    """
    if not crop_enabled:
        return [PlannedJob(model, "segment", None)], None
    if has_cord_segment:
        return [PlannedJob(model, "segment", "segment")], None
    if crop_with:
        return [PlannedJob(crop_with, "crop", None), PlannedJob(model, "segment", "previous")], None
    return [PlannedJob(model, "segment", None)], None


def overall_progress(job_index: int, job_count: int, fraction: float) -> float:
    """Progress of the whole Apply in [0, 1] from one job's fraction."""
    fraction = min(1.0, max(0.0, float(fraction)))
    return (job_index + fraction) / max(1, job_count)


@dataclass
class RunUpdate:
    """Where an Apply stands after :meth:`ApplyRun.poll`.

    Attributes:
        fraction: progress of the whole Apply in [0, 1].
        message: what the worker is doing.
        finished: True once the soft maps are ready.
        soft_maps: structure -> float32 NIfTI written by the worker (when finished).
        provenance: structure -> ``GeneratedBy`` entry of the job that made it.
        warnings: messages for the user (device fallback, crop box touched...).
    """

    fraction: float
    message: str
    finished: bool = False
    soft_maps: Dict[str, str] = field(default_factory=dict)
    provenance: Dict[str, dict] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


class ApplyRun:
    """The worker jobs of one Apply, run one after the other, never blocking the caller.

    Args:
        client: a :class:`SpinalCordSegLib.worker.WorkerClient`.
        scan: the scan written as NIfTI.
        jobs: from :func:`plan_jobs`.
        models: the resolved model of each job (``model_store.ResolvedModel``:
            ``folder``, ``model_id``, ``orientation``).
        options: :class:`SpinalCordSegLib.engine.InferenceOptions` fields; a job
            without ``orientation`` gets its model's catalogue orientation.
        work_dir: where the worker writes soft maps and the crop mask.
        segment_crop_mask: the cord mask file for jobs cropping with ``"segment"``.

    A crop job's cord map becomes the next job's crop mask (probability >=
    :data:`CROP_THRESHOLD`) and, when the segmenting model has no cord of its
    own, one of the results (so lesions can be restricted to it).
    """

    def __init__(self, client, scan: Union[str, Path], jobs: Sequence[PlannedJob], models: Sequence,
                 options: Mapping, work_dir: Union[str, Path],
                 segment_crop_mask: Optional[Union[str, Path]] = None) -> None:
        if len(jobs) != len(models) or not jobs:
            raise ValueError("one resolved model per job is needed")
        if any(job.crop == "segment" for job in jobs) and segment_crop_mask is None:
            raise ValueError("a job crops with the cord segment but no cord mask file was given")
        self.client = client
        self.scan = str(scan)
        self.jobs = list(jobs)
        self.models = list(models)
        self.options = dict(options)
        self.work_dir = Path(work_dir)
        self.segment_crop_mask = segment_crop_mask
        self.detail = ""  # traceback of the last error, for the log
        self._index = 0
        self._job_id: Optional[str] = None
        self.running = False  # a job is submitted and has neither finished nor failed
        self._update = RunUpdate(0.0, "starting")
        self._crop_cord: Optional[Tuple[str, str, dict]] = None

    def start(self) -> None:
        """Submit the first job."""
        self._submit(0, None)

    def _submit(self, index: int, crop_mask: Optional[Union[str, Path]]) -> None:
        job, model = self.jobs[index], self.models[index]
        if job.crop == "segment":
            crop_mask = self.segment_crop_mask
        options = dict(self.options)
        options["orientation"] = options.get("orientation") or model.orientation
        self._index = index
        self.running = True
        self._job_id = self.client.submit(self.scan, model.folder, options, self.work_dir / f"job{index}",
                                          crop_mask=crop_mask, model_id=model.model_id)
        self._update.message = f"{job.model}: starting"

    def poll(self) -> RunUpdate:
        """Handle the worker's events; raise SpinalCordSegError (CancelledError) when a job fails."""
        for event in self.client.poll():
            if event.get("job") != self._job_id or self._update.finished:
                continue  # a stale event of an earlier run
            job = self.jobs[self._index]
            kind = event.get("event")
            if kind == "progress":
                self._update.fraction = overall_progress(self._index, len(self.jobs), event.get("fraction", 0.0))
                self._update.message = f"{job.model}: {event.get('message', '')}"
            elif kind == "error":
                self.running = False
                self.detail = event.get("detail", "")
                error = CancelledError if event.get("cancelled") else SpinalCordSegError
                raise error(f"{job.model}: {event.get('message')}")
            elif kind == "done":
                self._job_done(job, event)
        return self._update

    def _job_done(self, job: PlannedJob, event: Mapping) -> None:
        maps: Dict[str, str] = dict(event.get("soft_maps") or {})
        provenance = dict(event.get("provenance") or {})
        self._update.warnings += list(event.get("warnings") or [])
        if job.purpose == "crop":
            cord = next((s for s in maps if is_cord(s)), None)
            if cord is None:
                raise SpinalCordSegError(f"crop model '{job.model}' gives no cord map (it gives {sorted(maps)})")
            mask = binarize(sitk.ReadImage(maps[cord]), CROP_THRESHOLD)
            if not sitk.GetArrayViewFromImage(mask).any():
                raise SpinalCordSegError(
                    f"crop model '{job.model}' found no spinal cord in {self.scan}; untick 'Crop around the cord'")
            self._crop_cord = (cord, maps[cord], provenance)
            self._submit(self._index + 1, write_image_atomic(mask, self.work_dir / "crop_mask.nii.gz"))
            return
        update = self._update
        update.soft_maps = maps
        update.provenance = {s: provenance for s in maps}
        if self._crop_cord is not None and not any(is_cord(s) for s in maps):
            cord, path, cord_provenance = self._crop_cord
            update.soft_maps = {cord: path, **maps}
            update.provenance = {cord: cord_provenance, **update.provenance}
        update.fraction, update.message, update.finished = 1.0, "done", True
        self.running = False

    def cancel(self) -> None:
        """Stop a running job: the worker process is killed and the next Apply starts a fresh one.

        Nothing happens once the run finished or failed, so the worker stays warm.
        """
        if self.running:
            self.client.cancel()
            self.running = False
