"""The module's MRML operations on a real MRML scene (slicer-core) with the shared scans.

Scans are loaded with Slicer's own reader (``vtkSlicerVolumesLogic``), which
stores left-handed scans (PSR, LAS) with flipped axes: saved masks must still
land voxel for voxel on the scan file's grid. Expected masks are computed on
the file grid with SimpleITK and NumPy only, independently of the module.
"""

import csv
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from SpinalCordSegLib.imaging.binarization import MaskOptions  # noqa: E402
from SpinalCordSegLib.rounds.correction import plan_outputs  # noqa: E402
from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine  # noqa: E402
from SpinalCordSegLib.errors import InputImageError  # noqa: E402
from SpinalCordSegLib.imaging.grid import same_grid  # noqa: E402
from SpinalCordSegLib.imaging.image_io import orientation_of, reorient  # noqa: E402
from SpinalCordSegLib.imaging.binarization import binarize  # noqa: E402
from SpinalCordSegLib.imaging.sidecar import Sidecar  # noqa: E402
from SpinalCordSegLib.panel.slicer_scene import (  # noqa: E402
    FALLBACK_COLOUR_ID,
    ResultScene,
    add_volume_from_image,
    image_from_volume,
    ijk_to_ras,
    new_parameter_node,
    segment_editor_node,
    SegmentEditObserver,
    register_terminology,
    segment_mask_array,
    set_segment_mask,
    soft_map_colour_node,
)

# scan -> (orientation, cord mask shipped with it); "sample" is the bundled one, the others are shared scans
SCANS = {
    "sample": ("PSR", "sample_T2w_label-SC_seg.nii.gz"),
    "sct_testing_data/t1/t1w.nii.gz": ("RAS", "t1w_seg-manual.nii.gz"),
    "sct_testing_data/t2s/t2s.nii.gz": ("LAS", "t2s_seg-deepseg.nii.gz"),
}
PROVENANCE = {"Name": "SpinalCordSeg", "Version": "test", "ModelId": "synthetic", "Date": "2026-01-01 00:00:00"}


def load_volume(scene, path, name="scan", labelmap=False):
    """Load a file as Slicer does (File > Add Data)."""
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
    assert node is not None, path
    return node


def write_like(array, scan, path):
    """Write a (z, y, x) array with the scan file's header."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(scan)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def scan_file(request, sample_data):
    """``relative`` -> its path: the bundled sample for "sample", else a shared scan (skips without them)."""
    def resolve(relative):
        return sample_data.scan if relative == "sample" else request.getfixturevalue("shared_data") / relative
    return resolve


def copy_into_bids(path, root):
    scan_path = root / "ds/sub-01/anat/sub-01_T2w.nii.gz"
    scan_path.parent.mkdir(parents=True)
    shutil.copy(path, scan_path)
    return scan_path


# ------------------------------------------------------------------ volumes

@pytest.mark.parametrize("relative", sorted(SCANS))
def test_volume_to_image_matches_the_file(mrml_scene, scan_file, relative):
    path = scan_file(relative)
    node = load_volume(mrml_scene, path)
    image = image_from_volume(node)
    scan = sitk.ReadImage(str(path))
    assert orientation_of(scan) == SCANS[relative][0]
    back = reorient(image, orientation_of(scan))
    assert same_grid(back, scan)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(scan))
    # Image -> new node -> image keeps voxels and geometry.
    copy = image_from_volume(add_volume_from_image(mrml_scene, scan, "copy"))
    assert same_grid(copy, scan)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(copy), sitk.GetArrayFromImage(scan))


def test_ras_scan_matrix_equals_slicer_reader(mrml_scene, sample_data, tmp_path):
    """Right-handed scans are stored unflipped: our matrix must be Slicer's exactly."""
    path = tmp_path / "ras.nii.gz"
    sitk.WriteImage(reorient(sitk.ReadImage(str(sample_data.scan)), "RAS"), str(path))
    ours = add_volume_from_image(mrml_scene, sitk.ReadImage(str(path)), "ours")
    np.testing.assert_allclose(ijk_to_ras(ours), ijk_to_ras(load_volume(mrml_scene, path)), atol=1e-4)


def test_transformed_volumes_are_refused(mrml_scene, sample_data):
    node = load_volume(mrml_scene, sample_data.scan)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputImageError, match="harden the transform"):
        image_from_volume(node)


# ------------------------------------------------------------------ display

def test_soft_maps_use_viridis_when_slicer_has_it_else_iron(mrml_scene):
    fallback = soft_map_colour_node(mrml_scene)
    assert fallback.GetName() == "Iron" and soft_map_colour_node(mrml_scene) is fallback
    logic = slicer.vtkSlicerColorLogic()
    logic.SetMRMLScene(mrml_scene)  # Slicer's default colour nodes (the colour files are absent here)
    assert soft_map_colour_node(mrml_scene).GetID() == FALLBACK_COLOUR_ID
    viridis = slicer.vtkMRMLColorTableNode()  # Slicer loads Viridis.txt under this name
    viridis.SetTypeToGrey()
    viridis.SetName("Viridis")
    mrml_scene.AddNode(viridis)
    assert soft_map_colour_node(mrml_scene) is viridis


def test_engine_soft_maps_are_shown_and_thresholded(mrml_scene, sample_data, tiny_region_model):
    scan_node = load_volume(mrml_scene, sample_data.scan)
    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # one slice view
    engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", use_mirroring=False))
    prediction = engine.predict(image_from_volume(scan_node))
    results = ResultScene(new_parameter_node(mrml_scene))

    state = results.show(scan_node, prediction.soft_maps, {s: prediction.provenance for s in prediction.structures},
                         defaults={"lesion": 0.3}, opacity=0.4)

    assert state.thresholds == {"sc": 0.5, "lesion": 0.3}
    segmentation = results.params.segmentation
    for structure, soft in prediction.soft_maps.items():
        node = results.soft_map_node(structure)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(soft))
        np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(scan_node))
        display = node.GetDisplayNode()
        assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(state.thresholds[structure])
        assert display.GetColorNodeID() == soft_map_colour_node(mrml_scene).GetID()
        mask = binarize(soft, state.thresholds[structure])
        if structure == "sc":  # the default keeps the largest 26-connected piece of the cord
            mask = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True)) == 1
        expected = sitk.GetArrayFromImage(mask) > 0
        np.testing.assert_array_equal(segment_mask_array(segmentation, structure, scan_node), expected)
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(2)] == ["Spinal cord", "Lesion"]
    cord = segments.GetSegment("sc")
    assert "~SCT^123037004^Anatomical Structure~SCT^2748008^Spinal cord~" in cord.GetTerminology()
    assert np.allclose(cord.GetColor(), (244 / 255, 214 / 255, 49 / 255))
    assert composite.GetBackgroundVolumeID() == scan_node.GetID()
    assert composite.GetForegroundVolumeID() == results.soft_map_node("lesion").GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)

    # One slider move: segment and overlay follow, the volume beside the slider too.
    assert results.set_threshold("sc", 0.2) == []
    sc_soft = sitk.GetArrayFromImage(prediction.soft_maps["sc"])
    np.testing.assert_array_equal(segment_mask_array(segmentation, "sc", scan_node), sc_soft >= np.float32(0.2))
    assert results.soft_map_node("sc").GetDisplayNode().GetLowerThreshold() == pytest.approx(0.2)
    voxel_mm3 = float(np.prod(prediction.soft_maps["sc"].GetSpacing()))
    assert results.volumes_mm3()["sc"] == pytest.approx(np.count_nonzero(sc_soft >= np.float32(0.2)) * voxel_mm3)


def test_soft_maps_on_another_grid_are_refused(mrml_scene, sample_data):
    scan_node = load_volume(mrml_scene, sample_data.scan)
    wrong = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    with pytest.raises(InputImageError, match="not on the grid"):
        ResultScene(new_parameter_node(mrml_scene)).show(scan_node, {"sc": wrong}, {"sc": PROVENANCE})


# ------------------------------------------------------------------ the whole correction flow

@pytest.mark.parametrize("relative", sorted(SCANS))
def test_threshold_edit_and_save_land_on_the_scan_grid(mrml_scene, scan_file, tmp_path, relative):
    scan_path = copy_into_bids(scan_file(relative), tmp_path)
    scan = sitk.ReadImage(str(scan_path))
    cord = sitk.ReadImage(str(scan_file(relative).parent / SCANS[relative][1])) > 0
    # Soft maps on the file grid: a blurred cord, and a "lesion" fading along the last array axis.
    soft_sc = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.Cast(cord, sitk.sitkFloat32), 1.0))
    soft_sc = np.clip(soft_sc, 0, 1).astype(np.float32)
    soft_lesion = (soft_sc * np.linspace(0, 1, soft_sc.shape[2], dtype=np.float32)).astype(np.float32)
    add = np.zeros(soft_sc.shape, np.uint8)
    remove = np.zeros(soft_sc.shape, np.uint8)
    z, y, x = (s // 2 for s in soft_sc.shape)
    add[:, :2, :2] = 1  # a corner far from the cord
    remove[z, :, :] = 1  # one slice of the cord
    files = {name: write_like(array, scan, tmp_path / f"{name}.nii.gz")
             for name, array in [("sc", soft_sc), ("lesion", soft_lesion), ("add", add), ("remove", remove)]}

    # In Slicer: the scan, soft maps as the engine returns them (on the scan node's grid), user edits.
    scan_node = load_volume(mrml_scene, scan_path)
    soft_images = {s: image_from_volume(load_volume(mrml_scene, files[s], s)) for s in ("sc", "lesion")}
    clock = [1000.0]
    results = ResultScene(new_parameter_node(mrml_scene), clock=lambda: clock[0])
    results.show(scan_node, soft_images, {s: PROVENANCE for s in soft_images}, options=MaskOptions(False, False))
    assert results.set_threshold("lesion", 0.3) == []
    assert results.set_threshold("sc", 0.4) == []
    segmentation = results.params.segmentation
    add_node = load_volume(mrml_scene, files["add"], "add", labelmap=True)
    remove_node = load_volume(mrml_scene, files["remove"], "remove", labelmap=True)
    edited = segment_mask_array(segmentation, "sc", scan_node)
    edited |= slicer.util.arrayFromVolume(add_node) > 0
    edited &= slicer.util.arrayFromVolume(remove_node) == 0
    set_segment_mask(segmentation, "sc", edited, scan_node)  # as the segment editor would
    assert results.tracker.edited == {"sc"}
    assert results.set_threshold("sc", 0.7) == ["sc"]  # the slider asks before overwriting edits
    np.testing.assert_array_equal(segment_mask_array(segmentation, "sc", scan_node), edited)
    assert results.state.thresholds["sc"] == 0.4
    clock[0] += 90.0

    saved = results.save(plan_outputs(scan_node.GetStorageNode().GetFileName()), "Rater One",
                         save_soft_maps=True)

    soft_file = {s: sitk.GetArrayFromImage(sitk.ReadImage(str(files[s]))) for s in ("sc", "lesion")}
    automatic_sc = soft_file["sc"] >= np.float32(0.4)
    expected = {"sc": (automatic_sc | (add > 0)) & (remove == 0), "lesion": soft_file["lesion"] >= np.float32(0.3)}
    labels = {"sc": "SC", "lesion": "lesion"}
    folder = tmp_path / "ds/derivatives/labels/sub-01/anat"
    for structure in ("sc", "lesion"):
        seg_path = folder / f"sub-01_T2w_label-{labels[structure]}_seg.nii.gz"
        assert saved.files[f"{structure}_seg"] == seg_path
        written = sitk.ReadImage(str(seg_path))
        assert same_grid(written, scan)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected[structure].astype(np.uint8))
        soft_written = sitk.ReadImage(str(folder / f"sub-01_T2w_label-{labels[structure]}_probseg.nii.gz"))
        assert same_grid(soft_written, scan)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(soft_written), soft_file[structure])
        generated_by = Sidecar.read(seg_path).to_json()["GeneratedBy"]
        assert generated_by[0] == dict(PROVENANCE, Thresholds={structure: {"sc": 0.4, "lesion": 0.3}[structure]})
        assert (generated_by[1]["Name"], generated_by[1]["Author"]) == ("Manual", "Rater One")

    with open(saved.log, newline="") as stream:
        rows = {row["structure"]: row for row in csv.DictReader(stream)}
    added = int(np.count_nonzero(expected["sc"] & ~automatic_sc))
    removed = int(np.count_nonzero(automatic_sc & ~expected["sc"]))
    assert added > 0 and removed > 0
    assert (int(rows["sc"]["voxels_added"]), int(rows["sc"]["voxels_removed"])) == (added, removed)
    overlap = np.count_nonzero(automatic_sc & expected["sc"])
    assert float(rows["sc"]["dice"]) == pytest.approx(2 * overlap / (automatic_sc.sum() + expected["sc"].sum()),
                                                      abs=1e-6)
    assert (rows["lesion"]["voxels_added"], rows["lesion"]["voxels_removed"], rows["lesion"]["dice"]) == \
        ("0", "0", "1.000000")
    assert (rows["sc"]["case"], rows["sc"]["rater"], rows["sc"]["seconds"], rows["sc"]["model"]) == \
        ("sub-01_T2w", "Rater One", "90.0", "synthetic")


def test_options_restrict_lesions_and_respect_edits(mrml_scene):
    soft_sc = np.zeros((6, 8, 8), np.float32)
    soft_sc[1:5, 2:6, 2:6] = 0.9
    soft_sc[1:5, 0, 7] = 0.9  # a small separate island
    soft_lesion = np.zeros_like(soft_sc)
    soft_lesion[2:4, 3:5, 3:5] = 0.8
    soft_lesion[2:4, 7, 0] = 0.8  # outside the cord
    images = {}
    for name, array in (("sc", soft_sc), ("lesion", soft_lesion)):
        images[name] = sitk.GetImageFromArray(array)
        images[name].SetSpacing((0.5, 0.5, 2.0))
    volume = add_volume_from_image(mrml_scene, images["sc"], "scan")
    results = ResultScene(new_parameter_node(mrml_scene))
    results.show(volume, images, {"sc": PROVENANCE, "lesion": PROVENANCE}, options=MaskOptions(False, False))
    assert results.volumes_mm3() == pytest.approx({"sc": (64 + 4) * 0.5, "lesion": (8 + 2) * 0.5})
    segmentation = results.params.segmentation

    assert results.set_options(keep_largest_cord=True, restrict_lesions_to_cord=True) == []
    assert segment_mask_array(segmentation, "sc", volume).sum() == 64
    assert segment_mask_array(segmentation, "lesion", volume).sum() == 8
    set_segment_mask(segmentation, "lesion", np.zeros_like(soft_sc, bool), volume)  # the user erases lesions
    assert results.set_options(keep_largest_cord=True, restrict_lesions_to_cord=False) == ["lesion"]
    assert segment_mask_array(segmentation, "lesion", volume).sum() == 0
    assert results.set_options(True, False, overwrite_edits=True) == []
    assert segment_mask_array(segmentation, "lesion", volume).sum() == 10
    assert results.tracker.edited == set()


def _two_structure_results(scene):
    soft = np.zeros((6, 8, 8), np.float32)
    soft[1:5, 2:6, 2:6] = 0.9
    images = {"sc": sitk.GetImageFromArray(soft), "lesion": sitk.GetImageFromArray(soft * 0.5)}
    volume = add_volume_from_image(scene, images["sc"], "scan")
    results = ResultScene(new_parameter_node(scene))
    results.show(volume, images, {"sc": PROVENANCE, "lesion": PROVENANCE})
    return results, volume


def test_an_edit_marks_only_the_segment_whose_voxels_changed(mrml_scene):
    """The segment events' call data (a segment ID or an object pointer) is never read."""
    results, volume = _two_structure_results(mrml_scene)
    segmentation = results.params.segmentation
    painted = np.zeros((6, 8, 8), bool)
    painted[2, 2:4, 2:4] = True
    set_segment_mask(segmentation, "lesion", painted, volume)  # as a paint stroke would
    assert results.tracker.edited == {"lesion"}
    seen = []
    observer = SegmentEditObserver(segmentation, seen.append)
    segmentation.GetSegmentation().InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified)
    observer.stop()
    assert seen == [None]  # nothing moved: unknown, so every structure counts as edited
    assert results.tracker.edited == {"sc", "lesion"}


def test_segments_carry_a_terminology_that_slicer_resolves(mrml_scene):
    """Slicer's own lists have no "Lesion": the extension's terminology file gives its name and colour."""
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = register_terminology(logic)
    assert register_terminology(logic) == context  # loaded once
    results, _ = _two_structure_results(mrml_scene)
    segmentation = results.params.segmentation.GetSegmentation()
    for structure, meaning in (("sc", "Spinal cord"), ("lesion", "Lesion")):
        segment = segmentation.GetSegment(structure)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
        assert logic.UpdateEntryFromLoadedTerminologies(entry, [], [])
        kind = entry.GetTypeObject()
        assert (entry.GetTerminologyContextName(), kind.GetCodeMeaning()) == (context, meaning)
        colour = tuple(round(c * 255) for c in segment.GetColor())
        assert tuple(kind.GetRecommendedDisplayRGBValue()) == colour


def save_scene(scene, folder):
    """Write every node's data and the .mrml file, as Slicer's File > Save does."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if not node.GetSaveWithScene():
            continue
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        extension = ".seg.nrrd" if node.IsA("vtkMRMLSegmentationNode") else ".nrrd"
        node.GetStorageNode().SetFileName(str(folder / f"node{index}{extension}"))
        assert node.GetStorageNode().WriteData(node), node.GetName()
    scene.SetURL(str(folder / "case.mrml"))
    assert scene.Commit()
    return folder / "case.mrml"


def test_a_saved_scene_reopens_where_it_was(mrml_scene, sample_data, tmp_path):
    scan_node = load_volume(mrml_scene, sample_data.scan)
    scan = image_from_volume(scan_node)
    soft = sitk.Cast(sitk.RescaleIntensity(sitk.Cast(scan, sitk.sitkFloat32), 0.0, 1.0), sitk.sitkFloat32)
    results = ResultScene(new_parameter_node(mrml_scene), clock=lambda: 500.0)
    results.show(scan_node, {"sc": soft}, {"sc": PROVENANCE}, options=MaskOptions(False, False))
    results.set_threshold("sc", 0.35)
    edited = np.zeros(slicer.util.arrayFromVolume(scan_node).shape, bool)
    edited[10:20, 10:20, 10:20] = True
    set_segment_mask(results.params.segmentation, "sc", edited, scan_node)
    path = save_scene(mrml_scene, tmp_path)

    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(path))
    assert reopened.Import()
    again = ResultScene(reopened.GetSingletonNode("SpinalCordSeg", "vtkMRMLScriptedModuleNode"), clock=lambda: 530.0)
    try:
        assert again.state.thresholds == {"sc": 0.35}
        assert again.provenance == {"sc": PROVENANCE}
        assert again.tracker.edited == {"sc"} and again.tracker.seconds_spent() == pytest.approx(30.0)
        volume = again.params.result_volume
        np.testing.assert_array_equal(segment_mask_array(again.params.segmentation, "sc", volume), edited)
        # The reopened case still refuses to overwrite the edits, then follows the slider once allowed.
        assert again.set_threshold("sc", 0.6) == ["sc"]
        assert again.set_threshold("sc", 0.6, overwrite_edits=True) == []
        expected = slicer.util.arrayFromVolume(again.soft_map_node("sc")) >= np.float32(0.6)
        np.testing.assert_array_equal(segment_mask_array(again.params.segmentation, "sc", volume), expected)
    finally:
        again.close()
        reopened.Clear(True)


def test_segment_editor_lets_lesions_overlap_the_cord(mrml_scene):
    node = segment_editor_node(mrml_scene)
    assert node.GetOverwriteMode() == node.OverwriteNone
    assert segment_editor_node(mrml_scene) is node


def test_a_new_run_reuses_the_case_nodes_and_another_scan_gets_its_own(mrml_scene):
    soft = sitk.GetImageFromArray(np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    first = add_volume_from_image(mrml_scene, soft, "first")
    second = add_volume_from_image(mrml_scene, soft, "second")
    results = ResultScene(new_parameter_node(mrml_scene))
    results.show(first, {"sc": soft, "lesion": soft}, {"sc": PROVENANCE, "lesion": PROVENANCE})
    sc_node, lesion_node = results.soft_map_node("sc"), results.soft_map_node("lesion")
    segmentation = results.params.segmentation

    results.show(first, {"sc": soft}, {"sc": PROVENANCE})  # same scan, a cord-only model
    assert results.soft_map_node("sc") is sc_node and results.params.segmentation is segmentation
    assert mrml_scene.GetNodeByID(lesion_node.GetID()) is None and results.soft_map_node("lesion") is None
    assert segmentation.GetSegmentation().GetSegmentIDs() == ("sc",)

    results.show(second, {"sc": soft}, {"sc": PROVENANCE})
    assert results.params.result_volume is second
    assert results.soft_map_node("sc") is not sc_node and results.params.segmentation is not segmentation
    assert mrml_scene.GetNodeByID(sc_node.GetID()) is sc_node  # the first case stays in the scene


def test_worklist_case_opens_on_the_scan_grid_and_its_save_marks_it_corrected(
        mrml_scene, sample_data, tmp_path, tiny_region_model):
    """The module's "Next case" and "Save correction" on a batch prediction of a PSR scan."""
    from SpinalCordSegLib.rounds.cohort import find_scans, run_batch
    from SpinalCordSegLib.rounds.worklist import Worklist

    scan_path = copy_into_bids(sample_data.scan, tmp_path)
    derivatives = tmp_path / "ds/derivatives/spinalcordseg"
    engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", use_mirroring=False))
    run_batch(find_scans(tmp_path / "ds"), engine, derivatives, {"sc": 0.5, "lesion": 0.3})
    worklist = Worklist.load(derivatives / "worklist.csv")
    case = worklist.open_next(rater="jd")
    assert case.scan == scan_path

    scan_node = load_volume(mrml_scene, case.scan)
    results = ResultScene(new_parameter_node(mrml_scene))
    state = results.show_case(scan_node, case)
    assert state.thresholds == {"sc": 0.5, "lesion": 0.3}
    plan = plan_outputs(scan_path)
    saved = results.save(plan, "jd")  # no edit: the saved masks are the batch's masks, on the file grid
    for structure in ("sc", "lesion"):
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(case.masks[structure])))
        written = sitk.ReadImage(str(saved.files[f"{structure}_seg"]))
        assert same_grid(written, sitk.ReadImage(str(scan_path)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
    assert worklist.apply_correction_log(saved.log) == [case.case]
    assert worklist.table.loc[0, "sc_correction_dice"] == "1.000000"
