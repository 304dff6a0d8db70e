"""The worker jobs of one Apply: what runs (a cord model first when the input must be cropped), polled.

:func:`plan_jobs` decides the jobs, :class:`ApplyRun` runs them one after
the other in the warm worker (``SpinalCordSegLib.inference.worker``) and is polled
from a timer, so the GUI never blocks.

Example:
    >>> from SpinalCordSegLib.inference.job_runner import plan_jobs
    >>> jobs, warning = plan_jobs("lesion_ms", crop_enabled=True, crop_with="spinalcord", has_cord_segment=False)
    >>> [(job.model, job.purpose, job.crop) for job in jobs]
    [('spinalcord', 'crop', None), ('lesion_ms', 'segment', 'previous')]
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import SimpleITK as sitk

from ..imaging.binarization import DEFAULT_THRESHOLD, binarize, cord_structure, is_cord
from ..errors import CancelledError, SpinalCordSegError
from ..imaging.image_io import write_image_atomic



def parse_folds(text: str) -> Optional[List[str]]:
    """Folds typed by the user (``"0, 1"`` or ``"0 1"``); empty means every fold present."""
    folds = [part for part in text.replace(",", " ").split() if part]
    bad = [f for f in folds if not (f.isdigit() or f == "all")]
    if bad:
        raise ValueError(f"folds must be numbers such as '0 1 2' (or 'all'), not {', '.join(bad)}")
    return folds or None


@dataclass(frozen=True)
class PlannedJob:
    """One worker job of an Apply.

    Attributes:
        model: the spec given to ``resolve_model``.
        purpose: ``"crop"`` (cord model whose mask crops the next job) or ``"segment"``.
        crop: where the crop comes from: ``"segment"`` (the cord segment
            already in the scene), ``"previous"`` (the crop job's cord map),
            ``"box"`` (the user's box, predicted in as it is) or None.
    """

    model: str
    purpose: str
    crop: Optional[str]


def plan_jobs(
    model: str, crop_enabled: bool, crop_with: Optional[str], has_cord_segment: bool, user_box: bool = False
) -> Tuple[List[PlannedJob], Optional[str]]:
    """Jobs for one Apply, and a warning for the user (or None).

    A box the user drew or moved (``user_box``) is predicted in as it is,
    whether cropping is on or off. Otherwise, with cropping on, the cord segment already in the scene is used when
    there is one; otherwise the catalogue's cord model (``crop_with``) runs
    first. Without either, the engine crops around the box of its own
    localizer pass (pass ``{"crop": crop_enabled}`` in the job options).
    """
    if user_box:
        return [PlannedJob(model, "segment", "box")], None
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
        crop_box: the box the last job predicted in (``CropBox.to_dict()``,
            with its ``source``), None for the whole field of view.
    """

    fraction: float
    message: str
    finished: bool = False
    soft_maps: Dict[str, str] = field(default_factory=dict)
    provenance: Dict[str, dict] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    crop_box: Optional[dict] = None


class ApplyRun:
    """The worker jobs of one Apply, run one after the other, never blocking the caller.

    Args:
        client: a :class:`SpinalCordSegLib.inference.worker.WorkerClient`.
        scan: the scan written as NIfTI.
        jobs: from :func:`plan_jobs`.
        models: the resolved model of each job (``model_store.ResolvedModel``:
            ``folder``, ``model_id``, ``orientation``).
        options: :class:`SpinalCordSegLib.inference.engine.InferenceOptions` fields; a job
            without ``orientation`` gets its model's catalogue orientation.
        work_dir: where the worker writes soft maps and the crop mask.
        segment_crop_mask: the cord mask file for jobs cropping with ``"segment"``.
        crop_box: the user's box (``CropBox.to_dict()``) for jobs cropping with ``"box"``.

    A crop job's cord map becomes the next job's crop mask (probability >=
    the default threshold of :mod:`.binarization`) and, when the segmenting model has no cord of its
    own, one of the results (so lesions can be restricted to it).
    """

    def __init__(self, client, scan: Union[str, Path], jobs: Sequence[PlannedJob], models: Sequence,
                 options: Mapping, work_dir: Union[str, Path],
                 segment_crop_mask: Optional[Union[str, Path]] = None, crop_box: Optional[dict] = None) -> None:
        if len(jobs) != len(models) or not jobs:
            raise ValueError("one resolved model per job is needed")
        if any(job.crop == "segment" for job in jobs) and segment_crop_mask is None:
            raise ValueError("a job crops with the cord segment but no cord mask file was given")
        if any(job.crop == "box" for job in jobs) and crop_box is None:
            raise ValueError("a job crops with the user's box but no box was given")
        self.client = client
        self.scan = str(scan)
        self.jobs = list(jobs)
        self.models = list(models)
        self.options = dict(options)
        self.work_dir = Path(work_dir)
        self.segment_crop_mask = segment_crop_mask
        self.crop_box = crop_box
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
                                          crop_mask=crop_mask, model_id=model.model_id,
                                          crop_box=self.crop_box if job.crop == "box" else None)
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
                log = self.client.log_tail() if hasattr(self.client, "log_tail") else ""
                self.detail = "\n".join(part for part in (event.get("detail", ""), log and f"Worker log:\n{log}")
                                        if part)
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
            cord = cord_structure(maps)
            if cord is None:
                raise SpinalCordSegError(f"crop model '{job.model}' gives no cord map (it gives {sorted(maps)})")
            mask = binarize(sitk.ReadImage(maps[cord]), DEFAULT_THRESHOLD)
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
        update.crop_box = event.get("crop_box")
        update.fraction, update.message, update.finished = 1.0, "done", True
        self.running = False

    def cancel(self) -> None:
        """Stop a running job: the worker process is killed and the next Apply starts a fresh one.

        Nothing happens once the run finished or failed, so the worker stays warm.
        """
        if self.running:
            self.client.cancel()
            self.running = False


class LocateRun(ApplyRun):
    """A "locate only" job: the crop box the model would predict in, without predicting (polled likewise).

    When finished, the update's ``crop_box`` is the box (None: the whole
    field of view) and its ``warnings`` say why, when there is no box.
    """

    def __init__(self, client, scan: Union[str, Path], job: PlannedJob, model, options: Mapping) -> None:
        super().__init__(client, scan, [replace(job, crop=None)], [model], options, ".")

    def _submit(self, index: int, crop_mask: Optional[Union[str, Path]]) -> None:
        job, model = self.jobs[index], self.models[index]
        options = dict(self.options, crop=True)  # locating is cropping's first step, whatever the box says
        options["orientation"] = options.get("orientation") or model.orientation
        self._index = index
        self.running = True
        self._job_id = self.client.submit_locate(self.scan, model.folder, options, model_id=model.model_id)
        self._update.message = f"{job.model}: locating the cord"

    def _job_done(self, job: PlannedJob, event: Mapping) -> None:
        update = self._update
        update.warnings += list(event.get("warnings") or [])
        update.crop_box = event.get("crop_box")
        update.fraction, update.message, update.finished = 1.0, "located", True
        self.running = False


T = TypeVar("T")


class BackgroundTask(Generic[T]):
    """``work(confirm, progress)`` in a thread, so that the GUI never waits for it (first-use download, hashing).

    ``work`` asks the user through ``confirm(question) -> bool``; the
    question waits for the next :meth:`poll`, which asks it on the polling
    (GUI) thread, where dialogs may open. ``progress(done, total)`` (a
    download's bytes) sets :attr:`fraction` and :attr:`message`. After
    :meth:`cancel`, ``confirm`` and ``progress`` raise CancelledError in the
    thread, so a download stops at its next chunk; a file being hashed is
    finished first, and its result is dropped.

    Example:
        >>> task = BackgroundTask(lambda confirm, progress: 6 * 7)
        >>> while not task.poll(confirm=lambda question: True): pass
        >>> task.result
        42
    """

    def __init__(self, work: Callable[[Callable[[str], bool], Callable[[int, Optional[int]], None]], T],
                 message: str = "checking the model") -> None:
        self._work = work
        self._questions: "queue.Queue[Tuple[str, dict, threading.Event]]" = queue.Queue()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        self.result: Optional[T] = None
        self.fraction = 0.0
        self.message = message
        threading.Thread(target=self._run, name="SpinalCordSeg background task", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._work(self._confirm, self._progress)
        except BaseException as error:  # handed to the polling thread, which raises it
            self._error = error
        finally:
            self._done.set()

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise CancelledError("cancelled by the user")

    def _confirm(self, question: str) -> bool:
        self._check()
        answer: dict = {}
        answered = threading.Event()
        self._questions.put((question, answer, answered))
        while not answered.wait(0.1):
            self._check()
        self._check()
        return answer["value"]

    def _progress(self, done: int, total: Optional[int] = None) -> None:
        self._check()
        megabytes = done / 1e6
        if total:
            self.fraction = min(1.0, done / total)
            self.message = f"downloading the model: {megabytes:.0f} of {total / 1e6:.0f} MB"
        else:
            self.message = f"downloading the model: {megabytes:.0f} MB"

    def poll(self, confirm: Callable[[str], bool]) -> bool:
        """Ask a waiting question with ``confirm`` (here, on the caller's thread); True once the work ended.

        Raises the work's error (CancelledError after :meth:`cancel`).
        """
        try:
            question, answer, answered = self._questions.get_nowait()
        except queue.Empty:
            pass
        else:
            answer["value"] = False  # a failing dialog declines
            try:
                answer["value"] = bool(confirm(question))
            finally:
                answered.set()
        if not self._done.is_set():
            return False
        if self._cancelled.is_set():
            raise CancelledError("cancelled by the user")
        if self._error is not None:
            raise self._error
        return True

    def cancel(self) -> None:
        """Stop at the next question or downloaded chunk; the result, if any, is dropped."""
        self._cancelled.set()
