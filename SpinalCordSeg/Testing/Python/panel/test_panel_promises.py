"""The panel's promises (issue 30), each played on a real MRML scene (slicer-core).

- Corrections are never lost: the segment editor's real undo history
  (``vtkSegmentationHistory``, which ``qMRMLSegmentEditorWidget`` drives:
  ``saveStateForUndo`` is its ``SaveState``, Undo its ``RestorePreviousState``)
  brings back edits a slider overwrote, and edits restored by Undo are
  tracked; a saved scene loaded into the open scene (``vtkMRMLScene.Import``,
  as File > Load scene does) keeps its edits tracked; no question comes in
  the middle of a slider drag.
- A clean scene: a whole session leaves no temporary label map, colour
  table or orphaned display/storage node.
- The crop box: shown as a Markups ROI after a run, a moved ROI is used as
  the user's box (``Source: user`` in the sidecar), "locate only" shows it
  before predicting.

The only stand-in is the segment editor widget itself (Qt): the history it
owns is driven directly, as its Undo button and its effects drive it.
"""

import collections
import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from SpinalCordSegLib.imaging.binarization import MaskOptions  # noqa: E402
from SpinalCordSegLib.imaging.sidecar import Sidecar  # noqa: E402
from SpinalCordSegLib.inference.cropping import CropBox  # noqa: E402
from SpinalCordSegLib.models.catalogue import DEMO_MODEL  # noqa: E402
from SpinalCordSegLib.panel.edit_tracking import overwrite_question  # noqa: E402
from SpinalCordSegLib.panel.segmentation_controller import SegmentationController  # noqa: E402
from SpinalCordSegLib.panel.slicer_scene import (  # noqa: E402
    add_volume_from_image,
    new_parameter_node,
    segment_mask_array,
    set_segment_mask,
)
from SpinalCordSegLib.resources import sample_scan_path  # noqa: E402

PROVENANCE = {"Name": "SpinalCordSeg", "Version": "test", "ModelId": "synthetic", "Date": "2026-01-01 00:00:00"}
SHAPE = (6, 8, 8)


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


def _soft_maps():
    cord = np.zeros(SHAPE, np.float32)
    cord[1:5, 2:6, 2:6] = 0.9
    cord[1:5, 0, 7] = 0.9  # a small second component: the default keeps the largest only
    lesion = np.zeros(SHAPE, np.float32)
    lesion[2:4, 3:5, 3:5] = 0.6
    return {"sc": sitk.GetImageFromArray(cord), "lesion": sitk.GetImageFromArray(lesion)}


def _session(scene, tmp_path, **kwargs):
    """A controller showing results of a small synthetic case (as after an Apply)."""
    (tmp_path / "temp").mkdir(exist_ok=True)
    controller = SegmentationController(lambda: new_parameter_node(scene), None, temp_root=tmp_path / "temp",
                                        **kwargs)
    images = _soft_maps()
    volume = add_volume_from_image(scene, images["sc"], "scan")
    controller.params.input_volume = volume
    controller.results.show(volume, images, {s: PROVENANCE for s in images})
    return controller, volume


def _history(controller):
    """The segment editor's undo history on the results' segmentation (the editor's saveStateForUndo)."""
    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(controller.params.segmentation.GetSegmentation())
    controller.save_undo_state = history.SaveState
    return history


def _paint(controller, volume, history, structure, mask):
    """A segment editor stroke: the editor saves the state for Undo, then changes the segment."""
    history.SaveState()
    set_segment_mask(controller.params.segmentation, structure, mask, volume)


# ------------------------------------------------------------------ corrections never lost

def test_undo_brings_back_edits_that_a_slider_overwrote(mrml_scene, tmp_path):
    controller, volume = _session(mrml_scene, tmp_path)
    history = _history(controller)
    segmentation = controller.params.segmentation
    painted = np.zeros(SHAPE, bool)
    painted[2, 2:4, 2:4] = True
    _paint(controller, volume, history, "lesion", painted)
    answers = Answers(True)
    assert controller.move_slider("lesion", 0.7, answers)
    assert "Undo in the segment editor brings them back" in answers.questions[0]
    assert not segment_mask_array(segmentation, "lesion", volume).any()  # 0.6 < 0.7: the edit is overwritten

    history.RestorePreviousState()  # the editor's Undo button
    np.testing.assert_array_equal(segment_mask_array(segmentation, "lesion", volume), painted)
    # Undo copied the segments back (SegmentModified only): the restored edits are edits again.
    assert controller.results.edited == {"lesion"}  # the cord came back unchanged: not an edit
    answers = Answers(False)
    assert controller.move_slider("lesion", 0.5, answers) is False
    assert answers.questions == [overwrite_question(["lesion"])]
    np.testing.assert_array_equal(segment_mask_array(segmentation, "lesion", volume), painted)


def test_a_colour_change_is_not_an_edit(mrml_scene, tmp_path):
    controller, _ = _session(mrml_scene, tmp_path)
    controller.params.segmentation.GetSegmentation().GetSegment("sc").SetColor(1.0, 0.0, 0.0)
    assert controller.results.edited == set()


def _save_scene(scene, folder):
    """Write every node's data and the .mrml file, as Slicer's File > Save does."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if not node.GetSaveWithScene():
            continue
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        extension = ".seg.nrrd" if node.IsA("vtkMRMLSegmentationNode") else (
            ".mrk.json" if node.IsA("vtkMRMLMarkupsNode") else ".nrrd")
        node.GetStorageNode().SetFileName(str(folder / f"node{index}{extension}"))
        assert node.GetStorageNode().WriteData(node), node.GetName()
    scene.SetURL(str(folder / "case.mrml"))
    assert scene.Commit()
    return folder / "case.mrml"


def test_a_scene_loaded_while_the_panel_is_open_keeps_its_edits_tracked(mrml_scene, tmp_path):
    saved_scene = slicer.vtkMRMLScene()
    controller, volume = _session(saved_scene, tmp_path)
    edited = np.zeros(SHAPE, bool)
    edited[1:3, 1:3, 1:3] = True
    set_segment_mask(controller.params.segmentation, "sc", edited, volume)
    assert controller.results.edited == {"sc"}
    path = _save_scene(saved_scene, tmp_path)
    controller.close()
    saved_scene.Clear(True)

    # The panel is open on an empty scene (its parameter node exists), then the file is loaded into it.
    panel = SegmentationController(lambda: new_parameter_node(mrml_scene), None, temp_root=tmp_path / "temp")
    assert panel.results.state is None
    mrml_scene.SetURL(str(path))
    assert mrml_scene.Import()
    panel.scene_imported()  # the widget's EndImportEvent observer
    try:
        results = panel.results
        assert results.edited == {"sc"} and results.state.thresholds["sc"] == pytest.approx(0.5)
        loaded = panel.params.segmentation
        np.testing.assert_array_equal(segment_mask_array(loaded, "sc", panel.params.result_volume), edited)
        answers = Answers(False)
        assert panel.move_slider("sc", 0.3, answers) is False and len(answers.questions) == 1
        np.testing.assert_array_equal(segment_mask_array(loaded, "sc", panel.params.result_volume), edited)
        # The loaded segmentation is observed: an edit of the lesion is seen too.
        set_segment_mask(loaded, "lesion", edited, panel.params.result_volume)
        assert results.edited == {"sc", "lesion"}
    finally:
        panel.close()


def test_no_question_while_a_slider_is_dragged_over_edits(mrml_scene, tmp_path):
    controller, volume = _session(mrml_scene, tmp_path)
    segmentation = controller.params.segmentation
    edited = np.zeros(SHAPE, bool)
    edited[3, 3, 3] = True
    set_segment_mask(segmentation, "sc", edited, volume)
    overlay = controller.results.soft_map_node("sc").GetDisplayNode()
    for value in (0.55, 0.6, 0.65):  # the drag: valueIsChanging
        assert controller.move_slider("sc", value, never, settled=False)
        assert overlay.GetLowerThreshold() == pytest.approx(value)  # the overlay follows
    np.testing.assert_array_equal(segment_mask_array(segmentation, "sc", volume), edited)  # the edit stays
    assert controller.results.state.thresholds["sc"] == pytest.approx(0.5)
    answers = Answers(False)
    assert controller.move_slider("sc", 0.65, answers) is False  # the release asks, once
    assert len(answers.questions) == 1
    assert overlay.GetLowerThreshold() == pytest.approx(0.5)  # declined: back to the threshold in use


# ------------------------------------------------------------------ a clean scene

def _orphans(scene):
    """Display and storage nodes no node of the scene refers to."""
    referenced = set()
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLDisplayableNode"):
            referenced.update(node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes()))
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNodeID():
            referenced.add(node.GetStorageNodeID())
    helpers = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [n.GetName() for n in helpers
            if (n.IsA("vtkMRMLDisplayNode") or n.IsA("vtkMRMLStorageNode")) and n.GetID() not in referenced]


def _classes(scene):
    return collections.Counter(scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes()))


def test_a_whole_session_leaves_only_what_the_user_sees(mrml_scene, tmp_path):
    from SpinalCordSegLib.rounds.correction import plan_outputs

    controller, volume = _session(mrml_scene, tmp_path)
    scan_path = tmp_path / "sub-01_T2w.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(SHAPE, np.float32)), str(scan_path))
    colours = _classes(mrml_scene)["vtkMRMLColorTableNode"]
    for _ in range(3):
        segment_mask_array(controller.params.segmentation, "sc", volume)
    controller.move_slider("sc", 0.3, never)
    controller.results.save(plan_outputs(None, str(tmp_path / "out")), "rater")
    images = _soft_maps()
    controller.results.show(volume, {"sc": images["sc"]}, {"sc": PROVENANCE})  # a cord-only model, same case
    classes = _classes(mrml_scene)
    assert classes["vtkMRMLLabelMapVolumeNode"] == 0
    assert classes["vtkMRMLColorTableNode"] == colours  # no colour table per export
    assert classes["vtkMRMLScalarVolumeNode"] == 2  # the scan and the cord's probability map
    assert _orphans(mrml_scene) == []


# ------------------------------------------------------------------ default input, self-test masks

def test_the_default_input_is_never_a_probability_map(mrml_scene, tmp_path):
    controller, volume = _session(mrml_scene, tmp_path)
    scene = mrml_scene
    controller.results.params.input_volume = None
    scene.RemoveNode(volume)  # the scan is gone; only the module's probability maps are left
    second = add_volume_from_image(scene, _soft_maps()["sc"], "another scan")
    controller.scene_opened(scene)
    assert controller.params.input_volume is second


def test_the_cord_segment_is_the_controllers_mask_not_the_plain_threshold(mrml_scene, tmp_path):
    """The self-test's comparison: the default keeps the largest cord component."""
    controller, volume = _session(mrml_scene, tmp_path)
    soft = slicer.util.arrayFromVolume(controller.results.soft_map_node("sc"))
    segment = segment_mask_array(controller.params.segmentation, "sc", volume)
    assert not np.array_equal(segment, soft >= np.float32(0.5))  # the island is dropped
    automatic = sitk.GetArrayFromImage(controller.results.automatic_masks()["sc"]) != 0
    np.testing.assert_array_equal(segment, automatic)


# ------------------------------------------------------------------ the crop box

def test_a_moved_crop_box_becomes_the_users_box(mrml_scene, tmp_path):
    from SpinalCordSegLib.panel.slicer_scene import roi_geometry

    controller, volume = _session(mrml_scene, tmp_path)
    results = controller.results
    roi = results.show_crop_box(CropBox((2, 2, 1), (4, 4, 4), "localizer").to_dict(), volume)
    assert roi.IsA("vtkMRMLMarkupsROINode") and roi.GetDisplayNode() is not None
    assert results.user_crop_box(volume) is None  # unmoved: the next Apply finds its own box
    assert results.show_crop_box(CropBox((1, 1, 1), (5, 5, 4), "mask").to_dict(), volume) is roi  # reused
    geometry = roi_geometry(roi)
    roi.SetCenter([c + 1.0 for c in geometry["center"]])  # the user drags it one voxel
    box = results.user_crop_box(volume)
    assert box["source"] == "user"
    moved = CropBox.from_dict(box)
    assert moved.size == (5, 5, 4) and moved.index != (1, 1, 1)
    other = add_volume_from_image(mrml_scene, _soft_maps()["sc"], "another scan")
    assert results.user_crop_box(other) is None  # a box drawn on another scan is not used
    results.show_crop_box(None, volume)
    assert results.crop_roi is None and mrml_scene.GetNodeByID(roi.GetID()) is None and _orphans(mrml_scene) == []


def _wait(controller, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = controller.poll()
        if result.finished:
            return result
        time.sleep(0.2)
    raise AssertionError(f"the run did not finish in {timeout} s")


def _load(scene, path):
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    return logic.AddArchetypeVolume(str(path), "scan", 0)


@pytest.mark.slow
def test_locate_only_then_apply_inside_the_moved_box(mrml_scene, tmp_path):
    """In the real worker with the embedded model: locate, move the ROI, Apply; the sidecar says Source: user."""
    from SpinalCordSegLib.panel.slicer_scene import roi_geometry
    from SpinalCordSegLib.rounds.correction import plan_outputs

    (tmp_path / "temp").mkdir()
    controller = SegmentationController(lambda: new_parameter_node(mrml_scene), None, temp_root=tmp_path / "temp")
    try:
        volume = _load(mrml_scene, sample_scan_path())
        controller.scene_opened(mrml_scene)
        controller.params.set("Model", DEMO_MODEL)
        controller.set_options({"UseTTA": False, "Crop": False})
        assert controller.controls("").locate
        assert controller.start_locate(never) == f"{DEMO_MODEL}: checking the model"
        located = _wait(controller)
        assert located.error is None, located.detail
        assert located.message.startswith("Crop box shown"), located.message
        roi = controller.results.crop_roi
        assert roi is not None and not controller.results.has_results  # nothing predicted
        geometry = roi_geometry(roi)
        roi.SetSize([s * 0.8 for s in geometry["size"]])  # the user shrinks it
        user_box = controller.results.user_crop_box(volume)

        assert controller.start_apply(never) == f"{DEMO_MODEL}: checking the model"
        started = _poll_until(controller, lambda result: controller.run is not None or result.finished)
        assert started.message.endswith("inside your crop box"), started.message
        done = _wait(controller)
        assert done.error is None, done.detail
        crop = controller.results.provenance["sc"]["Crop"]
        assert crop["Source"] == "user" and crop["Box"] == user_box
        assert controller.results.params.get("CropBox")["box"] == user_box  # the ROI shows the box used
        saved = controller.results.save(plan_outputs(None, str(tmp_path / "out")), "rater")
        sidecar = Sidecar.read(saved.files["sc_seg"]).to_json()
        assert sidecar["GeneratedBy"][0]["Crop"]["Source"] == "user"
    finally:
        controller.close()


# ------------------------------------------------------------------ a GUI that never blocks

def _poll_until(controller, condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        result = controller.poll()
        if condition(result):
            return result
        assert time.monotonic() < deadline, result.message
        time.sleep(0.02)


def test_apply_checks_the_model_in_the_background_and_asks_on_the_polling_thread(mrml_scene, tmp_path, tiny_model):
    """A model folder never trusted: the trust question comes from poll (the GUI timer), not from Apply."""
    import threading

    controller, _ = _session(mrml_scene, tmp_path)
    controller.params.set("Model", str(tiny_model))
    asked = []

    def decline(question):
        asked.append((threading.current_thread(), question))
        return False

    try:
        assert controller.start_apply(decline) == f"{tiny_model}: checking the model"
        assert asked == [] and controller.controls("").cancel and not controller.controls("").apply
        result = _poll_until(controller, lambda r: r.finished)
        assert [thread for thread, _ in asked] == [threading.main_thread()] and "Trust" in asked[0][1]
        assert result.error.startswith("Cannot use the model:") and "not trusted" in result.error
        assert not controller.busy and not list((tmp_path / "temp").iterdir())

        # Cancel while the model is being checked: nothing starts, nothing is left.
        controller.start_apply(never)
        assert controller.cancel() == "Cancelled." and not controller.busy
        assert controller.poll().finished and controller.run is None
    finally:
        controller.close()
