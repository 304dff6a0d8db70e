"""The SpinalCordSeg panel's decisions without Qt: Apply, polling, sliders, saving, the worklist, set-up.

The widget forwards each user action to one method of
:class:`SegmentationController` and copies what it returns into its
widgets; questions to the user go through the ``confirm`` callable the
widget passes (a yes/no dialog in Slicer, a scripted answer in tests).
Everything here runs on a bare MRML scene (``slicer-core``), through
``slicer_scene``.

Example:
    >>> controller = SegmentationController(lambda: new_parameter_node(scene), load_volume)  # doctest: +SKIP
    >>> controller.params.input_volume = volume_node                                      # doctest: +SKIP
    >>> controller.params.set("Model", "demo-sc-lesion")                                  # doctest: +SKIP
    >>> controller.start_apply(confirm=lambda question: True)                             # doctest: +SKIP
    >>> while not controller.poll().finished: time.sleep(0.2)                              # doctest: +SKIP
    >>> controller.move_slider("lesion", 0.3, confirm=lambda question: True)               # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Union

from ..models.catalogue import load_catalogue
from ..rounds.correction import SavedCorrection, plan_outputs
from ..inference.devices import DeviceChoice, device_choices
from .edit_tracking import overwrite_question
from ..inference.engine import InferenceOptions
from ..errors import CancelledError, ModelInstallError, SpinalCordSegError
from ..imaging.image_io import write_image_atomic
from ..models.install_plan import InstallOutcome, dependency_status, install_plan, install_question, missing_packages, \
    run_install
from ..inference.job_runner import ApplyRun, BackgroundTask, LocateRun, PlannedJob, parse_folds, plan_jobs
from .model_selector import ModelItem, ModelSelectorState, catalogue_model_entries
from .slicer_scene import PROBABILITY_MAP_ATTRIBUTE, ResultScene, SceneParameters, image_from_volume, mask_image, \
    scan_source_name, segment_look, segment_mask_array, volume_file_path
from ..imaging.binarization import SLIDER_RANGE
from ..imaging.thresholds import format_volume

Confirm = Callable[[str], bool]

#: The panel's defaults, where the parameter node holds nothing yet.
_INFERENCE = InferenceOptions()  # the panel's defaults are the engine's, as on the command line
DEFAULTS = {"Device": _INFERENCE.device, "UseTTA": _INFERENCE.use_mirroring, "TileStepSize": _INFERENCE.tile_step_size,
            "Folds": "", "Crop": _INFERENCE.crop, "CropMargin": _INFERENCE.crop_margin_mm, "SaveSoftMaps": False}
#: How each option is stored (the widgets give Qt's types).
_OPTION_TYPES = {"Device": str, "UseTTA": bool, "TileStepSize": float, "Folds": lambda text: str(text).strip(),
                 "Crop": bool, "CropMargin": float, "SaveSoftMaps": bool}
#: Extensions whose installers the set-up prefers (see install_plan).
SLICER_NNUNET_MODULE = "SlicerNNUNetLib"
PYTORCH_EXTENSION_MODULE = "PyTorchUtils"
REPLACE_EDITS_QUESTION = "Replace the current results? Your manual edits will be lost."
NEXT_CASE_QUESTION = "Open the next case? Unsaved edits of the current case stay in the scene only."


@dataclass
class Controls:
    """Which controls the user can use now."""

    apply: bool
    next_case: bool
    cancel: bool
    results: bool
    correction: bool
    save: bool
    keep_largest_cord: bool
    restrict_lesions: bool
    locate: bool = False  # "Locate only": show the crop box before predicting


@dataclass
class StructureRow:
    """One row of the results: map selector, threshold slider, volume."""

    structure: str
    name: str
    threshold: float
    volume: str
    map_shown: bool


@dataclass
class PollResult:
    """Where the Apply stands after a timer tick."""

    progress: int  # percent
    message: str
    finished: bool = False  # no run in progress any more (done, failed or cancelled)
    error: Optional[str] = None  # shown to the user when the run failed
    detail: str = ""  # the worker's traceback, for the error dialog's details


@dataclass
class SaveResult:
    status: str
    correction: SavedCorrection  # the files written and the correction log
    worklist_status: Optional[str] = None  # None: the worklist line stays as it is


@dataclass
class PanelState:
    """Everything the panel shows, from the parameter node and the run."""

    input_volume: object
    model: Optional[str]
    model_info: str
    device: str
    options: Dict[str, object]
    opacity: float
    keep_largest_cord: bool
    restrict_lesions: bool
    rows: List[StructureRow] = field(default_factory=list)
    controls: Optional[Controls] = None
    output_plan: str = ""


class SegmentationController:
    """The panel's state and decisions for the module's parameter node.

    Args:
        parameter_node: returns the module's parameter node (Slicer:
            ``ScriptedLoadableModuleLogic.getParameterNode``); a new node (a
            new scene) gives new results.
        load_volume: loads a scan file into the scene, returns its node
            (Slicer: ``slicer.util.loadVolume``).
        worker_client: makes the warm worker's client (``worker.WorkerClient``);
            called once, on the first Apply.
        resolve_model: ``model_store.resolve_model`` (may download; asks to trust); run in a
            background task (:class:`~..inference.job_runner.BackgroundTask`).
        temp_root: where each Apply's work folder is made (Slicer's temporary folder).
        save_undo_state: called before an automatic update overwrites manual
            edits (Slicer: ``qMRMLSegmentEditorWidget.saveStateForUndo``), so
            that the segment editor's Undo brings the edits back.
    """

    #: The threshold sliders' (minimum, maximum).
    SLIDER_RANGE = SLIDER_RANGE

    def __init__(self, parameter_node: Callable[[], object], load_volume: Callable[[str], object],
                 worker_client: Optional[Callable[[], object]] = None,
                 resolve_model: Optional[Callable] = None, temp_root: Optional[Union[str, Path]] = None,
                 save_undo_state: Optional[Callable[[], None]] = None) -> None:
        self._parameter_node = parameter_node
        self._load_volume = load_volume
        self._make_client = worker_client or _default_worker_client
        self._resolve_model = resolve_model
        self.temp_root = str(temp_root) if temp_root is not None else None
        self._client = None
        self._results: Optional[ResultScene] = None
        self._models: Optional[ModelSelectorState] = None
        self._devices: Optional[List[DeviceChoice]] = None
        self.run: Optional[ApplyRun] = None
        self.run_dir: Optional[str] = None  # the Apply's work folder, owned (and removed) here
        self._run_volume = None
        self._preparing: Optional[BackgroundTask] = None  # the model's resolution, before the worker jobs
        self._start_run: Optional[Callable] = None
        self._run_confirm: Confirm = lambda question: False
        self.save_undo_state = save_undo_state or (lambda: None)

    # -- scene ------------------------------------------------------------------------------

    @property
    def results(self) -> ResultScene:
        """The results of the scene's parameter node (recreated after the scene closes)."""
        node = self._parameter_node()
        if self._results is None or self._results.params.node is not node:
            if self._results is not None:
                self._results.close()
            self._results = ResultScene(node)
            self._results.before_overwrite = lambda: self.save_undo_state()
        return self._results

    @property
    def params(self) -> SceneParameters:
        return self.results.params

    def option(self, key: str):
        return self.params.get(key, DEFAULTS[key])

    def scene_opened(self, scene) -> None:
        """A scene (re)opened: pick its first scan (never one of the module's probability maps) when none is chosen."""
        if self.params.input_volume is None:
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
                node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
                if node.GetAttribute(PROBABILITY_MAP_ATTRIBUTE) is None and not node.IsA("vtkMRMLLabelMapVolumeNode"):
                    self.params.input_volume = node
                    return

    def scene_imported(self) -> None:
        """A scene file was loaded into the scene: MRML copied its parameters into the module's node.

        The results are rebuilt from the node as loaded: its edited
        structures, its segmentation (observed from now on), its crop box.
        """
        if self._results is not None:
            self._results.close()
            self._results = None

    def scene_closing(self) -> None:
        """The scene closes: stop any run and forget the scene's results."""
        self.end_run()
        if self._results is not None:
            self._results.close()
            self._results = None

    def set_options(self, values: Mapping[str, object]) -> None:
        """The Apply options typed in the panel (keys of :data:`DEFAULTS`).

        The device stays as the scene has it until the device list is filled
        (until then the panel's device box is empty).
        """
        node = self.params.node
        was_modifying = node.StartModify()
        for key, value in values.items():
            if key not in DEFAULTS:
                raise KeyError(f"unknown panel option {key!r}")
            if key == "Device" and not self.devices_loaded:
                continue
            self.params.set(key, _OPTION_TYPES[key](value))
        node.EndModify(was_modifying)

    # -- models and devices ----------------------------------------------------------------

    def model_items(self) -> List[ModelItem]:
        """The model combo box; picks the default model when none is chosen."""
        catalogue = load_catalogue()
        installed, current = [], None
        try:
            from ..models.model_store import ModelStore

            store = ModelStore(catalogue=catalogue)
            installed = store.installed()
            current = (store.current() or {}).get("model")
        except ModelInstallError as error:  # an unreadable current.json: no default from it, say why
            logging.warning("SpinalCordSeg: %s", error)
        except ImportError as error:  # before the first-run set-up the model store cannot load
            logging.info("SpinalCordSeg: installed models are listed after the set-up (%s)", error)
        self._models = ModelSelectorState(catalogue_model_entries(catalogue, installed, current),
                                          self.params.get("CustomFolders", []))
        if self.params.get("Model") is None:
            self.params.set("Model", self._models.default_key())
        return self._models.items()

    def wants_folder(self, key: Optional[str]) -> bool:
        """True when the picked item is "Custom nnU-Net folder..." (ask the user for a folder)."""
        return ModelSelectorState.is_custom_choice(key)

    def pick_model(self, key: Optional[str]) -> bool:
        """The user picked ``key`` (a model id, or a folder for the custom item); True when the list changed."""
        if not key:
            return False  # the folder dialog was cancelled: the model in use stays
        if self._models is None:
            self.model_items()
        added = key not in self._models.custom_folders and not any(e.id == key for e in self._models.entries)
        if added:
            self._models.add_custom_folder(key)
            self.params.set("CustomFolders", self._models.custom_folders)
        self.params.set("Model", key)
        return added

    def model_info(self) -> str:
        key = self.params.get("Model")
        entry = next((e for e in (self._models.entries if self._models else []) if e.id == key), None)
        return "" if entry is None or entry.installed else \
            "Not installed yet: it is downloaded and installed when you press Apply."

    def device_choices(self, find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[DeviceChoice]:
        """The device list (imports PyTorch when it is installed, so only when first needed)."""
        if self._devices is None:
            reasons = None
            if find_spec("torch") is not None:
                from ..inference.engine import available_devices

                reasons = available_devices()
            self._devices = device_choices(reasons)
        return self._devices

    @property
    def devices_loaded(self) -> bool:
        """Until the list is filled, the scene's device choice stands (the combo box is empty)."""
        return self._devices is not None

    # -- first-run set-up --------------------------------------------------------------------

    @staticmethod
    def dependency_status(find_spec: Callable[[str], object] = importlib.util.find_spec) -> str:
        """The set-up line of the panel ('' once everything is installed: then it and the button hide)."""
        return dependency_status(missing_packages(find_spec))

    @staticmethod
    def ensure_dependencies(confirm: Confirm, installers: Mapping[str, Callable[[str], bool]],
                            report: Callable[[str], None], restart: Callable[[], None],
                            show_error: Callable[[str], None],
                            find_spec: Callable[[str], object] = importlib.util.find_spec) -> bool:
        """Offer to install what is missing; True when everything is there.

        ``installers``: install method -> function(requirement) returning True
        when Slicer must restart (see ``install_plan.InstallStep``). A failed
        install is shown with ``show_error`` and never leaves ``report`` on
        "Installing..."; when a restart is needed the user is asked first.
        """
        steps = install_plan(missing_packages(find_spec), find_spec(SLICER_NNUNET_MODULE) is not None,
                             find_spec(PYTORCH_EXTENSION_MODULE) is not None)
        if not steps:
            return True
        if not confirm(install_question(steps)):
            return False
        outcome: InstallOutcome = run_install(steps, lambda step: installers[step.method](step.requirement),
                                              report, find_spec)
        if outcome.restart_needed and not outcome.error:
            if confirm(outcome.message() + " Restart now?"):
                restart()
        elif outcome.message():
            show_error(outcome.message())
        return outcome.ready

    # -- Apply -------------------------------------------------------------------------------

    def inference_options(self) -> dict:
        """The worker's options (``engine.InferenceOptions`` fields) from the panel."""
        return {
            "device": self.option("Device"),
            "use_mirroring": self.option("UseTTA"),
            "tile_step_size": self.option("TileStepSize"),
            "folds": parse_folds(self.option("Folds")),
            "crop": self.option("Crop"),
            "crop_margin_mm": self.option("CropMargin"),
        }

    def start_apply(self, confirm: Confirm) -> Optional[str]:
        """Start an Apply; return a message for the status line (None: nothing started).

        The model is resolved (downloaded on first use, its files checked)
        in a background task, so the GUI never waits: questions (download,
        trust) come through :meth:`poll`, which asks them with ``confirm``
        and then starts the worker jobs. Raises SpinalCordSegError at once
        for what needs no model (no volume, no model chosen, bad folds); a
        model that cannot be resolved fails the run (``poll``'s error).
        """
        if self.busy:
            return None
        results = self.results
        volume = self.params.input_volume
        if volume is None:
            raise SpinalCordSegError("choose an input volume first")
        same_case = results.has_results and self.params.result_volume is volume
        if same_case and results.edited and not confirm(REPLACE_EDITS_QUESTION):
            return None
        try:
            options = self.inference_options()
        except ValueError as error:
            raise SpinalCordSegError(str(error)) from error
        model = self.params.get("Model")
        if not model:
            raise SpinalCordSegError("choose a model first")
        user_box = results.user_crop_box(volume)
        has_cord = same_case and results.state.cord is not None and user_box is None
        crop = self.option("Crop")
        resolve = self._resolve_model or _default_resolve_model

        def prepare(ask: Confirm, progress) -> tuple:  # in the background: no MRML here
            main = resolve(model, confirm=ask, progress=progress)
            jobs, warning = plan_jobs(model, crop, main.crop_with, has_cord, user_box is not None)
            models = [main if job.model == model else resolve(job.model, confirm=ask, progress=progress)
                      for job in jobs]
            return jobs, models, warning

        def start(prepared: tuple) -> str:
            jobs, models, warning = prepared
            with self._new_run(volume) as work:
                scan = write_image_atomic(image_from_volume(volume), work / f"{scan_source_name(volume)}.nii.gz")
                crop_mask = None
                if any(job.crop == "segment" for job in jobs):
                    mask = segment_mask_array(self.params.segmentation, results.state.cord, volume)
                    crop_mask = write_image_atomic(mask_image(mask, volume), work / "cord_mask.nii.gz")
                self.run = ApplyRun(self._worker(), scan, jobs, models, options, work, segment_crop_mask=crop_mask,
                                    crop_box=user_box)
                self.run.start()
            if user_box is not None:
                return warning or f"{model}: starting, inside your crop box"
            return warning or f"{model}: starting"

        self._preparing = BackgroundTask(prepare)
        self._start_run, self._run_confirm, self._run_volume = start, confirm, volume
        return f"{model}: checking the model"

    def start_locate(self, confirm: Confirm) -> Optional[str]:
        """"Locate only": find the crop box the model would predict in and show it, without predicting.

        The user may then move or resize the box before Apply. Runs like :meth:`start_apply`.
        """
        if self.busy:
            return None
        volume = self.params.input_volume
        if volume is None:
            raise SpinalCordSegError("choose an input volume first")
        model = self.params.get("Model")
        if not model:
            raise SpinalCordSegError("choose a model first")
        try:
            options = self.inference_options()
        except ValueError as error:
            raise SpinalCordSegError(str(error)) from error
        resolve = self._resolve_model or _default_resolve_model

        def start(resolved) -> str:
            with self._new_run(volume) as work:
                scan = write_image_atomic(image_from_volume(volume), work / f"{scan_source_name(volume)}.nii.gz")
                self.run = LocateRun(self._worker(), scan, PlannedJob(model, "segment", None), resolved, options)
                self.run.start()
            return f"{model}: locating the cord"

        self._preparing = BackgroundTask(lambda ask, progress: resolve(model, confirm=ask, progress=progress))
        self._start_run, self._run_confirm, self._run_volume = start, confirm, volume
        return f"{model}: checking the model"

    @property
    def busy(self) -> bool:
        """A run is being prepared (model resolution) or runs in the worker."""
        return self.run is not None or self._preparing is not None

    def _poll_preparing(self) -> PollResult:
        """The background model resolution: ask its questions, then start the worker jobs."""
        task = self._preparing
        try:
            if not task.poll(self._run_confirm):
                return PollResult(int(round(100 * task.fraction)), task.message)
            if self._preparing is not task:  # a tick during the question's dialog handled it already
                return PollResult(0, task.message)
            self._preparing = None
            return PollResult(0, self._start_run(task.result))
        except CancelledError:
            self.end_run()
            return PollResult(0, "Cancelled.", finished=True)
        except Exception as error:  # shown to the user; the detail goes to the log
            import traceback

            detail = traceback.format_exc()
            logging.error("SpinalCordSeg: cannot use the model\n%s", detail)
            self.end_run()
            return PollResult(0, "Failed.", finished=True, error=f"Cannot use the model: {error}", detail=detail)

    def _worker(self):
        if self._client is None:
            self._client = self._make_client()
        return self._client

    @contextmanager
    def _new_run(self, volume) -> Iterator[Path]:
        """The run's work folder; anything failing inside removes it and ends the run."""
        self.run_dir = tempfile.mkdtemp(prefix="SpinalCordSeg-", dir=self.temp_root)
        try:
            yield Path(self.run_dir)
        except BaseException:
            self.end_run()
            raise
        self._run_volume = volume

    def poll(self, opacity: float = 0.5) -> PollResult:
        """One timer tick: handle the background task or the worker's events; show the results once ready."""
        if self._preparing is not None:
            return self._poll_preparing()
        run = self.run
        if run is None:
            return PollResult(0, "", finished=True)
        try:
            update = run.poll()
        except CancelledError:
            self.end_run()
            return PollResult(0, "Cancelled.", finished=True)
        except SpinalCordSegError as error:
            logging.error("SpinalCordSeg: %s\n%s", error, run.detail)
            self.end_run()
            return PollResult(0, "Failed.", finished=True, error=f"Segmentation failed: {error}", detail=run.detail)
        progress = int(round(100 * update.fraction))
        if not update.finished:
            return PollResult(progress, update.message)
        try:
            import SimpleITK as sitk

            if update.soft_maps:
                soft_maps = {s: sitk.ReadImage(path) for s, path in update.soft_maps.items()}
                self.results.show(self._run_volume, soft_maps, update.provenance, opacity=opacity)
            self.results.show_crop_box(update.crop_box, self._run_volume)
        except Exception as error:  # shown to the user; the detail goes to the log
            import traceback

            detail = traceback.format_exc()
            logging.error("SpinalCordSeg: cannot show the results\n%s", detail)
            return PollResult(100, "Failed.", finished=True, error=f"Cannot show the results: {error}", detail=detail)
        finally:
            self.end_run()
        if not update.soft_maps:  # "locate only"
            found = "Crop box shown: move or resize it, then Apply." if update.crop_box else \
                "No crop box: the model would predict on the whole field of view."
            return PollResult(100, " ".join([found] + update.warnings), finished=True)
        return PollResult(100, " ".join(["Done."] + update.warnings), finished=True)

    def cancel(self) -> str:
        """Stop the run (the worker is killed and restarts on the next Apply)."""
        if not self.busy:
            return ""
        self.end_run()
        return "Cancelled."

    def end_run(self) -> None:
        """Stop the model's resolution, kill a running job and remove the Apply's work folder."""
        if self._preparing is not None:
            self._preparing.cancel()
            self._preparing = None
        if self.run is not None:
            self.run.cancel()
        self.run = None
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir = None
        self._run_volume = None

    # -- thresholds and display -----------------------------------------------------------------

    def move_slider(self, structure: str, value: float, confirm: Confirm, settled: bool = True) -> bool:
        """A threshold slider moved (``settled`` False while dragged); asks before overwriting edits.

        The question comes on release only: a dialog opened during a drag
        would take the mouse release (the slider would stay "changing" and
        the settled update never run). While dragging over edited
        structures, only their overlay follows the slider. Accepted: the
        state before the overwrite is saved for Undo. False: the slider must
        go back.
        """
        results = self.results
        blocked = results.set_threshold(structure, value, settled=settled)
        if not blocked:
            return True
        if not settled:
            results.preview_threshold(structure, value)
            return True
        if confirm(overwrite_question(blocked)):
            results.set_threshold(structure, value, overwrite_edits=True, settled=settled)
            return True
        results.preview_threshold(structure)
        return False

    def set_mask_options(self, keep_largest_cord: bool, restrict_lesions: bool, confirm: Confirm) -> None:
        """The mask options changed; asks before overwriting edits (declined: nothing changes)."""
        results = self.results
        blocked = results.set_options(keep_largest_cord, restrict_lesions)
        if blocked and confirm(overwrite_question(blocked)):
            results.set_options(keep_largest_cord, restrict_lesions, overwrite_edits=True)

    def show_map(self, structure: str, opacity: float) -> None:
        self.results.show_map(structure, opacity)

    def set_opacity(self, opacity: float) -> None:
        """The opacity slider moved: the map shown keeps its place (the last structure's by default)."""
        results = self.results
        if results.has_results:
            overlay = self.params.get("Overlay", {})
            results.show_map(overlay.get("structure", results.state.structures[-1]), opacity)

    # -- what the panel shows ----------------------------------------------------------------------

    def structure_names(self) -> List[str]:
        """The structures of the results, in order (the rows to build)."""
        state = self.results.state
        return list(state.structures) if state is not None else []

    def rows(self) -> List[StructureRow]:
        results = self.results
        state = results.state
        if state is None:
            return []
        overlay = self.params.get("Overlay", {})
        volumes = results.volumes_mm3()
        rows = []
        for index, structure in enumerate(state.structures):
            name, _, _ = segment_look(structure, index)
            edited = " (edited)" if structure in results.edited else ""
            rows.append(StructureRow(structure, name, state.thresholds[structure],
                                     format_volume(volumes.get(structure, 0.0)) + edited,
                                     overlay.get("structure") == structure))
        return rows

    def controls(self, worklist: str) -> Controls:
        """The enable rules of the panel."""
        results = self.results
        running = self.busy
        has_results = results.has_results
        state = results.state
        has_cord = has_results and state.cord is not None
        return Controls(
            apply=self.params.input_volume is not None and not running,
            next_case=bool(worklist) and not running,
            cancel=running,
            results=has_results,
            correction=has_results,
            save=has_results and not running,
            keep_largest_cord=has_cord,
            restrict_lesions=has_cord and bool(state.lesions),
            locate=self.params.input_volume is not None and not running,
        )

    def panel(self, worklist: str, output_folder: str) -> PanelState:
        """Everything the panel shows now."""
        state = self.results.state
        return PanelState(
            input_volume=self.params.input_volume,
            model=self.params.get("Model"),
            model_info=self.model_info(),
            device=self.option("Device"),
            options={key: self.option(key) for key in DEFAULTS},
            opacity=self.params.get("Overlay", {}).get("opacity", 0.5),
            keep_largest_cord=bool(state and state.keep_largest_cord),
            restrict_lesions=bool(state and state.restrict_lesions_to_cord),
            rows=self.rows(),
            controls=self.controls(worklist),
            output_plan=self.output_plan(output_folder),
        )

    # -- save and worklist ---------------------------------------------------------------------------

    def output_plan(self, output_folder: str) -> str:
        """Where Save writes, or why it cannot."""
        volume = self.params.result_volume or self.params.input_volume
        try:
            plan = plan_outputs(volume_file_path(volume) if volume else None, output_folder or None)
        except SpinalCordSegError as error:
            return str(error)
        return f"Saves to {'BIDS derivatives: ' if plan.bids else ''}{plan.folder}"

    def save(self, rater: str, output_folder: str, worklist: str) -> SaveResult:
        """Save the correction (masks, sidecars, log) and mark its case corrected in the worklist."""
        results = self.results
        plan = plan_outputs(volume_file_path(self.params.result_volume), output_folder or None)
        saved = results.save(plan, rater, self.option("SaveSoftMaps"), self.params.get("Model"))
        changes = ", ".join(f"{s}: +{st.added}/-{st.removed} voxels, Dice {st.dice:.3f}"
                            for s, st in saved.stats.items())
        result = SaveResult(f"Saved {len(saved.files)} files to {plan.folder} ({changes}); log: {saved.log}", saved)
        if worklist:
            from ..rounds.worklist import Worklist  # pandas: installed by the set-up

            marked = Worklist.load(worklist).apply_correction_log(saved.log)
            if marked:
                result.worklist_status = f"{', '.join(marked)} marked corrected in {worklist}"
        return result

    def open_next_case(self, worklist: str, rater: str, opacity: float, confirm: Confirm) -> Optional[str]:
        """Load the worklist's next case (scan and saved predictions) marked in correction.

        Returns the worklist line, or None when the user kept the current case.
        """
        results = self.results
        if results.has_results and results.edited and not confirm(NEXT_CASE_QUESTION):
            return None
        from ..rounds.worklist import Worklist  # pandas: installed by the set-up

        case = Worklist.load(worklist).open_next(rater)
        if case is None:
            return "No case is waiting for correction."
        volume = self._load_volume(str(case.scan))
        self.params.input_volume = volume
        results.show_case(volume, case, opacity)
        return f"Correcting {case.case} ({case.scan})"

    def close(self) -> None:
        """Stop the run, the worker and the observation of the segmentation."""
        self.end_run()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._results is not None:
            self._results.close()


def _default_worker_client():
    from ..inference.worker import WorkerClient

    return WorkerClient()


def _default_resolve_model(spec: str, confirm: Optional[Confirm] = None, progress=None):
    from ..models.model_store import resolve_model  # platformdirs, tqdm: installed by the set-up

    return resolve_model(spec, confirm=confirm, progress=progress)
