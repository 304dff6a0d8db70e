"""The SpinalCordSeg panel's decisions, played as a user would, on a real MRML scene (slicer-core).

The widget only forwards to ``SegmentationController``, so these sessions are
the panel's behaviour: pick a scan and a model, Apply in the real worker
with the embedded model, move each slider, edit, save, open the worklist's
next case. Written files are read back with Slicer's own reader and
compared voxel by voxel with the segments. The only stand-ins are the
answers to the panel's questions (scripted ``confirm``) and, in the set-up
tests, the installers: SlicerNNUnet, the PyTorch extension and pip cannot run
here without installing packages into this Python.
"""

import csv
import shutil
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from SpinalCordSegLib.models.catalogue import DEMO_MODEL  # noqa: E402
from SpinalCordSegLib.rounds.cohort import find_scans, run_batch  # noqa: E402
from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine  # noqa: E402
from SpinalCordSegLib.imaging.grid import same_grid  # noqa: E402
from SpinalCordSegLib.models.install_plan import REQUIRED_PACKAGES  # noqa: E402
from SpinalCordSegLib.imaging.naming import bids_label  # noqa: E402
from SpinalCordSegLib.imaging.sidecar import Sidecar  # noqa: E402
from SpinalCordSegLib.resources import sample_scan_path  # noqa: E402
from SpinalCordSegLib.panel.segmentation_controller import (  # noqa: E402
    NEXT_CASE_QUESTION,
    SegmentationController,
)
from SpinalCordSegLib.panel.slicer_scene import new_parameter_node, segment_mask_array, set_segment_mask  # noqa: E402
from SpinalCordSegLib.imaging.thresholds import format_volume, volume_mm3  # noqa: E402
from SpinalCordSegLib.rounds.worklist import WorklistCase  # noqa: E402


def load_volume(scene, path, labelmap=False):
    """Load a file as Slicer does (File > Add Data)."""
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddArchetypeVolume(str(path), "labels" if labelmap else "scan", 1 if labelmap else 0)
    assert node is not None, path
    return node


class Answers:
    """The user's answers to the panel's questions, in order; records every question."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.questions = []

    def __call__(self, question):
        self.questions.append(question)
        return self.answers.pop(0)


def never(question):
    raise AssertionError(f"the panel asked: {question}")


def as_read_by_slicer(scene, path):
    """A written mask as Slicer loads it, on the loaded scan's voxel order."""
    node = load_volume(scene, path, labelmap=True)
    try:
        return slicer.util.arrayFromVolume(node) != 0
    finally:
        scene.RemoveNode(node)


@pytest.fixture
def dataset(tmp_path):
    """A BIDS dataset of two copies of the sample scan (sub-01, sub-02)."""
    for subject in ("01", "02"):
        path = tmp_path / f"ds/sub-{subject}/anat/sub-{subject}_T2w.nii.gz"
        path.parent.mkdir(parents=True)
        shutil.copy(sample_scan_path(), path)
    return tmp_path / "ds"


def _controller(scene, tmp_path):
    (tmp_path / "temp").mkdir()
    return SegmentationController(lambda: new_parameter_node(scene), lambda path: load_volume(scene, path),
                                  temp_root=tmp_path / "temp")


def _wait(controller, timeout=900.0):
    deadline = time.monotonic() + timeout
    messages = []
    while time.monotonic() < deadline:
        result = controller.poll()
        messages.append(result.message)
        if result.finished:
            return result, messages
        time.sleep(0.2)
    raise AssertionError(f"the Apply did not finish in {timeout} s: {messages[-3:]}")


def _until_running(controller, timeout=120.0):
    """Poll until the model is checked and the worker job started."""
    deadline = time.monotonic() + timeout
    while controller.run is None:
        assert time.monotonic() < deadline and not controller.poll().finished
        time.sleep(0.05)


def _assert_segments_follow_thresholds(controller, volume):
    results = controller.results
    state = results.state
    masks = state.masks({s: slicer.util.arrayFromVolume(results.soft_map_node(s)) for s in state.structures})
    for structure, expected in masks.items():
        np.testing.assert_array_equal(segment_mask_array(results.params.segmentation, structure, volume), expected)
    return masks


@pytest.mark.slow
def test_a_whole_session_apply_sliders_edit_save_next_case(mrml_scene, dataset, tmp_path, tiny_region_model):
    controller = _controller(mrml_scene, tmp_path)
    try:
        # Before anything: Apply waits for a scan; nothing to save.
        controls = controller.controls(worklist="")
        assert not controls.apply and not controls.save and not controls.results and not controls.cancel

        # Pick the scan and the embedded model.
        scan_path = dataset / "sub-01/anat/sub-01_T2w.nii.gz"
        volume = load_volume(mrml_scene, scan_path)
        controller.scene_opened(mrml_scene)
        assert controller.params.input_volume is volume
        keys = [item.key for item in controller.model_items()]
        assert DEMO_MODEL in keys and keys[-1] == "custom-folder"
        assert controller.wants_folder("custom-folder") and not controller.wants_folder(DEMO_MODEL)
        assert controller.pick_model(DEMO_MODEL) is False  # a known model: the list stays
        controller.set_options({"UseTTA": False, "Crop": False, "Folds": " ", "TileStepSize": 0.5})
        assert controller.inference_options() == {"device": "auto", "use_mirroring": False, "tile_step_size": 0.5,
                                                  "folds": None, "crop": False, "crop_margin_mm": 10.0}
        assert controller.controls("").apply

        # Apply: the model is checked in the background, then the real worker runs; the run's work
        # folder lives under the temp root until it ends.
        assert controller.start_apply(never) == f"{DEMO_MODEL}: checking the model"
        assert controller.controls("").cancel and controller.start_apply(never) is None
        _until_running(controller)
        run_dir = controller.run_dir
        assert run_dir.startswith(str(tmp_path / "temp")) and (tmp_path / "temp").joinpath(run_dir).is_dir()
        running = controller.controls("")
        assert running.cancel and not running.apply and not running.save
        assert controller.start_apply(never) is None  # a second Apply while one runs does nothing
        result, messages = _wait(controller)
        assert result.error is None and result.progress == 100 and result.message.startswith("Done.")
        assert any("predicting tile" in m for m in messages)
        assert controller.run is None and not list((tmp_path / "temp").iterdir())  # work folder removed
        assert controller.structure_names() == ["sc", "lesion"]
        done = controller.controls("")
        assert done.save and done.results and done.keep_largest_cord and done.restrict_lesions
        _assert_segments_follow_thresholds(controller, volume)

        # Move each slider, then the mask options: the segments follow, voxel by voxel.
        for structure, value in (("sc", 0.3), ("lesion", 0.2)):
            assert controller.move_slider(structure, value, never)
            assert controller.results.state.thresholds[structure] == pytest.approx(value)
            masks = _assert_segments_follow_thresholds(controller, volume)
            row = next(r for r in controller.rows() if r.structure == structure)
            assert row.threshold == pytest.approx(value)
            assert row.volume == format_volume(volume_mm3(masks[structure], volume.GetSpacing()))
        controller.set_mask_options(True, True, never)
        masks = _assert_segments_follow_thresholds(controller, volume)
        assert not (masks["lesion"] & ~masks["sc"]).any()
        controller.show_map("sc", 0.7)
        controller.set_opacity(0.4)
        rows = {row.structure: row for row in controller.rows()}
        assert rows["sc"].map_shown and not rows["lesion"].map_shown
        assert controller.panel("", "").opacity == pytest.approx(0.4)

        # Edit the cord; the slider then asks before overwriting the edit, and "no" keeps it.
        edited = masks["sc"].copy()
        edited[edited.shape[0] // 2] = ~edited[edited.shape[0] // 2]
        set_segment_mask(controller.params.segmentation, "sc", edited, volume)  # as the segment editor would
        assert [r.volume for r in controller.rows() if r.structure == "sc"][0].endswith("(edited)")
        answers = Answers(False)
        assert controller.move_slider("sc", 0.6, answers) is False
        assert "edited sc by hand" in answers.questions[0]
        np.testing.assert_array_equal(segment_mask_array(controller.params.segmentation, "sc", volume), edited)

        # Save: BIDS derivatives of the scan, read back as Slicer reads them.
        plan_text = controller.output_plan("")
        assert plan_text.startswith("Saves to BIDS derivatives: ") and "derivatives/labels/sub-01/anat" in plan_text
        saved = controller.save("jd", "", "")
        assert saved.worklist_status is None and saved.status.startswith("Saved ")
        files = saved.correction.files
        scan_file = sitk.ReadImage(str(scan_path))
        for structure, expected in (("sc", edited), ("lesion", masks["lesion"])):
            assert same_grid(sitk.ReadImage(str(files[f"{structure}_seg"])), scan_file)
            np.testing.assert_array_equal(as_read_by_slicer(mrml_scene, files[f"{structure}_seg"]), expected)
        sidecar = Sidecar.read(files["sc_seg"]).to_json()
        assert [entry["Name"] for entry in sidecar["GeneratedBy"]] == ["SpinalCordSeg", "Manual"]
        assert sidecar["GeneratedBy"][0]["ModelId"] == DEMO_MODEL

        # The worklist: a batch of sub-02 (tiny model), opened as the next case at the batch's thresholds.
        derivatives = dataset / "derivatives/spinalcordseg"
        engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", use_mirroring=False))
        run_batch([s for s in find_scans(dataset) if "sub-02" in str(s.path)], engine, derivatives,
                  {"sc": 0.5, "lesion": 0.3})
        worklist = str(derivatives / "worklist.csv")
        assert controller.controls(worklist).next_case
        answers = Answers(True)  # the sub-01 edits are saved, but the panel still asks
        line = controller.open_next_case(worklist, "jd", 0.5, answers)
        assert answers.questions == [NEXT_CASE_QUESTION]
        assert line.startswith("Correcting sub-02_T2w")
        second = controller.params.result_volume
        assert second is not volume and controller.results.state.thresholds == {"sc": 0.5, "lesion": 0.3}
        recorded = WorklistCase("sub-02_T2w", Path(), {}, {
            s: derivatives / f"sub-02/anat/sub-02_T2w_label-{bids_label(s)}_seg.nii.gz" for s in ("sc", "lesion")})
        panel = controller.panel(worklist, "")  # the case opens with the batch's mask options
        assert (panel.keep_largest_cord, panel.restrict_lesions) == astuple(recorded.mask_options())
        for structure in ("sc", "lesion"):
            batch_mask = derivatives / f"sub-02/anat/sub-02_T2w_label-{bids_label(structure)}_seg.nii.gz"
            np.testing.assert_array_equal(segment_mask_array(controller.params.segmentation, structure, second),
                                          as_read_by_slicer(mrml_scene, batch_mask))
        lesion = segment_mask_array(controller.params.segmentation, "lesion", second)
        lesion[:] = False
        lesion[lesion.shape[0] // 2, 10:14, 10:14] = True
        set_segment_mask(controller.params.segmentation, "lesion", lesion, second)
        saved = controller.save("jd", "", worklist)
        assert saved.worklist_status == f"sub-02_T2w marked corrected in {worklist}"
        np.testing.assert_array_equal(as_read_by_slicer(mrml_scene, saved.correction.files["lesion_seg"]), lesion)
        with open(worklist, newline="") as stream:
            row = next(csv.DictReader(stream))
        assert (row["case"], row["status"], row["rater"]) == ("sub-02_T2w", "corrected", "jd")
        assert controller.open_next_case(worklist, "jd", 0.5, Answers(True)) == "No case is waiting for correction."

        # Cancel: the run stops and its work folder goes.
        controller.start_apply(Answers(True))  # the lesion edit of sub-02: "replace the results?" yes
        _until_running(controller)
        assert controller.run_dir is not None
        assert controller.cancel() == "Cancelled."
        assert controller.run is None and not list((tmp_path / "temp").iterdir())
        assert not controller.controls("").cancel
    finally:
        controller.close()


def test_apply_refuses_missing_input_model_and_bad_folds(mrml_scene, tmp_path):
    from SpinalCordSegLib.errors import SpinalCordSegError

    controller = _controller(mrml_scene, tmp_path)
    with pytest.raises(SpinalCordSegError, match="choose an input volume"):
        controller.start_apply(never)
    load_volume(mrml_scene, sample_scan_path())
    controller.scene_opened(mrml_scene)
    controller.set_options({"Folds": "0 first"})
    with pytest.raises(SpinalCordSegError, match="folds must be numbers"):
        controller.start_apply(never)
    controller.set_options({"Folds": ""})
    with pytest.raises(SpinalCordSegError, match="choose a model"):
        controller.start_apply(never)
    assert controller.run is None and not list((tmp_path / "temp").iterdir())
    with pytest.raises(KeyError, match="unknown panel option"):
        controller.set_options({"Threshold": 0.5})


class FakeEnvironment:
    """Which packages "exist" and the installers' record (stand-in: nothing is installed into this Python)."""

    def __init__(self, present, extensions=()):
        self.present = set(present) | set(extensions)
        self.calls = []
        self.reports = []
        self.errors = []
        self.restarted = False

    def find_spec(self, name):
        return object() if name in self.present else None

    def installer(self, method, restart=False, fail=False, provides=()):
        def install(requirement):
            self.calls.append((method, requirement))
            if fail:
                raise RuntimeError("no network")
            self.present.update(provides or [requirement])
            return restart
        return install


def _ensure(env, confirm, installers):
    return SegmentationController.ensure_dependencies(
        confirm, installers, env.reports.append, lambda: setattr(env, "restarted", True), env.errors.append,
        find_spec=env.find_spec)


def test_setup_installs_with_the_extensions_then_pip_and_reports_when_done():
    env = FakeEnvironment(present=[], extensions=["SlicerNNUNetLib", "PyTorchUtils"])
    assert "torch" in SegmentationController.dependency_status(env.find_spec)
    installers = {"slicer_nnunet": env.installer("slicer_nnunet", provides=["nnunetv2", "torch"]),
                  "pip": env.installer("pip")}
    answers = Answers(True)
    assert _ensure(env, answers, installers) is True
    assert "SlicerNNUnet" in answers.questions[0]
    assert env.calls == [("slicer_nnunet", "nnunetv2")] + [("pip", r) for n, r in REQUIRED_PACKAGES.items()
                                                          if n not in ("torch", "nnunetv2")]
    assert env.reports[-1] == "" and env.errors == [] and not env.restarted
    assert SegmentationController.dependency_status(env.find_spec) == ""
    assert _ensure(env, never, installers) is True  # nothing missing: no question


def test_a_declined_or_failed_setup_never_stays_on_installing():
    env = FakeEnvironment(present=[])
    assert _ensure(env, Answers(False), {}) is False and env.calls == []
    installers = {"pip": env.installer("pip", fail=True)}
    assert _ensure(env, Answers(True), installers) is False
    assert env.reports[0].startswith("Installing PyTorch") and env.reports[-1] == ""
    assert len(env.errors) == 1 and "torch: no network" in env.errors[0]


def test_a_setup_needing_a_restart_asks_before_restarting():
    env = FakeEnvironment(present=["pandas", "platformdirs", "tqdm"], extensions=["SlicerNNUNetLib", "PyTorchUtils"])
    installers = {"slicer_nnunet": env.installer("slicer_nnunet", restart=True, provides=["nnunetv2", "torch"])}
    answers = Answers(True, False)
    assert _ensure(env, answers, installers) is False  # not usable until Slicer restarts
    assert answers.questions[1] == "Slicer must restart to finish the set-up. Restart now?"
    assert not env.restarted and env.errors == []
    env = FakeEnvironment(present=["pandas", "platformdirs", "tqdm"], extensions=["SlicerNNUNetLib", "PyTorchUtils"])
    installers = {"slicer_nnunet": env.installer("slicer_nnunet", restart=True, provides=["nnunetv2", "torch"])}
    assert _ensure(env, Answers(True, True), installers) is False and env.restarted
