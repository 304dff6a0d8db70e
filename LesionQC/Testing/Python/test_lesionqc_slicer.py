"""The Slicer side: the module file compiles; cases load into a real MRML scene (slicer-core).

The case is SCT's T2w scan with a fake lesion; its cord and lesion masks make a
two-label "manual" segmentation, and an eroded cord with the same lesion a
second source.
"""

import py_compile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LesionQCLib.errors import SessionError
from LesionQCLib.session import find_key, load_key, make_session

MODULE_FILE = Path(__file__).resolve().parents[2] / "LesionQC.py"
SOURCES = ("manualRef", "modelOut")


def test_the_module_file_compiles(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "LesionQC.pyc"), doraise=True)
    source = MODULE_FILE.read_text()
    assert "qt.QShortcut" in source and "slicer.util.childWidgetVariables" in source


@pytest.fixture
def session(tmp_path, sample_data):
    cord = sitk.ReadImage(str(sample_data.cord), sitk.sitkUInt8)
    lesion = sitk.ReadImage(str(sample_data.lesion), sitk.sitkUInt8)
    for name, cord_mask in (("manual", cord), ("model", sitk.BinaryErode(cord, [2, 2, 0]))):
        labels = sitk.Mask(cord_mask, sitk.Not(lesion)) + lesion * 2  # 1 cord, 2 lesion
        sitk.WriteImage(labels, str(tmp_path / f"{name}.nii.gz"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,image,seg:{SOURCES[0]},seg:{SOURCES[1]}\n"
                        f"sub-01,{sample_data.scan},manual.nii.gz,model.nii.gz\n")
    return make_session(manifest, tmp_path / "session", seed=4, label_names={1: "cord", 2: "lesion"})


def _segments(node):
    contents = node.GetSegmentation()
    return [(contents.GetNthSegment(i).GetName(), contents.GetNthSegment(i).GetLabelValue(),
             tuple(round(c, 6) for c in contents.GetNthSegment(i).GetColor()))
            for i in range(contents.GetNumberOfSegments())]


def _node_ids(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _display(node):
    display = node.GetDisplayNode()
    return (display.GetOpacity2DFill(), display.GetOpacity2DOutline(), display.GetVisibility2DFill(),
            display.GetVisibility2DOutline(), display.GetVisibility3D(), display.GetOpacity())


class _CollectionWatch:
    """The scene, keeping the collections ``GetNodesByClass`` hands out: the caller must release them.

    Python's wrapping adds its own reference to the new collection, so one
    that is still held twice after the call is leaked (its C++ reference was
    never released).
    """

    def __init__(self, scene):
        self._scene = scene
        self.collections = []

    def __getattr__(self, name):
        return getattr(self._scene, name)

    def GetNodesByClass(self, class_name):  # noqa: N802 (MRML's name)
        collection = self._scene.GetNodesByClass(class_name)
        self.collections.append(collection)
        return collection

    def leaked(self):
        return [c for c in self.collections if c.GetReferenceCount() > 1]


def test_slice_views_are_set_without_leaking_a_node_collection(mrml_scene):
    from LesionQCLib.slicer_scene import CaseNodes, show_in_slice_views

    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case")
    watched = _CollectionWatch(mrml_scene)
    show_in_slice_views(watched, CaseNodes("case", volume, None))
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert watched.leaked() == []


def test_a_case_loads_with_every_item_displayed_alike(mrml_scene, session):
    import slicer
    import vtk

    from LesionQCLib.slicer_scene import load_case, remove_case, show_in_slice_views, show_item

    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    case = session.cases[0]
    nodes = load_case(case, session.labels, mrml_scene)
    loaded = _node_ids(mrml_scene) - {composite.GetID()}
    assert len(loaded) == 7  # volume, its display and storage; two segmentations and their displays
    assert nodes.volume.GetImageData().GetDimensions() == sitk.ReadImage(str(case.image)).GetSize()

    items = nodes.segmentations
    assert sorted(items) == ["A", "B"]
    assert _segments(items["A"]) == _segments(items["B"])
    assert [(name, value) for name, value, _ in _segments(items["A"])] == [("cord", 1), ("lesion", 2)]
    assert _display(items["A"]) == _display(items["B"])
    assert [items[i].GetDisplayNode().GetVisibility() for i in "AB"] == [0, 0]
    for index in range(mrml_scene.GetNumberOfNodes()):
        name = mrml_scene.GetNthNode(index).GetName() or ""
        assert not any(source in name for source in SOURCES), name

    # Each item holds its source's voxels: export it and compare with the original label map
    # as Slicer reads it (Slicer's voxel order can differ from SimpleITK's for some orientations).
    key = load_key(find_key(session), session)
    for item_id, node in items.items():
        ids = vtk.vtkStringArray()
        for segment_index in range(node.GetSegmentation().GetNumberOfSegments()):
            ids.InsertNextValue(node.GetSegmentation().GetNthSegmentID(segment_index))
        exported = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, exported, nodes.volume)
        source_file = "manual.nii.gz" if key.source(case.case_id, item_id) == SOURCES[0] else "model.nii.gz"
        original = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(session.folder.parent / source_file))
        assert storage.ReadData(original)
        expected = slicer.util.arrayFromVolume(original)
        assert set(np.unique(expected)) == {0, 1, 2}
        assert np.array_equal(slicer.util.arrayFromVolume(exported), expected)
        for helper in (exported, original, storage):
            mrml_scene.RemoveNode(helper)

    show_item(nodes, "B")
    assert [items[i].GetDisplayNode().GetVisibility() for i in "AB"] == [0, 1]
    show_item(nodes, "A")
    assert [items[i].GetDisplayNode().GetVisibility() for i in "AB"] == [1, 0]
    with pytest.raises(SessionError, match="no item 'C'"):
        show_item(nodes, "C")

    show_in_slice_views(mrml_scene, nodes)
    assert composite.GetBackgroundVolumeID() == nodes.volume.GetID()
    assert composite.GetLabelVolumeID() is None

    remove_case(mrml_scene, nodes)
    assert not loaded & _node_ids(mrml_scene)


def test_a_missing_item_file_is_a_clear_error_and_leaves_no_node(mrml_scene, session):
    from LesionQCLib.slicer_scene import load_case

    case = session.cases[0]
    case.items[1].path.unlink()
    with pytest.raises(SessionError, match=f"{case.items[1].path.name}: cannot load"):
        load_case(case, session.labels, mrml_scene)
    assert mrml_scene.GetNumberOfNodes() == 0


def _rows(table):
    import csv

    with open(table, newline="") as stream:
        return list(csv.DictReader(stream))


def test_a_rater_scores_with_keys_goes_back_and_resumes(mrml_scene, session):
    """The panel's whole flow through ReviewController, as the widget drives it, on a real scene."""
    from LesionQCLib.review_controller import ReviewController, flag_tooltip, score_keys, structure_label

    controller = ReviewController(mrml_scene)
    assert controller.score_key(3).rating_enabled is False  # a key before any session does nothing
    scale = controller.open_session(session.folder, "jd")
    assert score_keys(scale) == [1, 2, 3, 4, 5]
    assert [structure_label(s) for s in scale.structures] == ["Overall", "Spinal cord (optional)", "Lesions (optional)"]
    assert [flag_tooltip(f) for f in scale.flags] == ["Applies to every item of this case."] * 2
    panel = controller.panel()
    first = controller.state.item.item_id
    assert (panel.item_count, panel.done_count, panel.can_go_previous) == (2, 0, False)
    assert set(panel.scores.values()) == {None}
    visible = [i for i, n in controller.case_nodes.segmentations.items() if n.GetDisplayNode().GetVisibility()]
    assert visible == [first]

    # Keys score the active structure, one after the other, each saved at once.
    required = [s.id for s in scale.structures if s.required]
    for value, structure in zip((4, 2, 5), required):
        assert controller.panel().active_structure == structure
        panel = controller.score_key(value, comment="blurry")
        assert panel.saved.startswith(f"Saved: {structure} = {value} (revision ")
    assert panel.done_count == 1 and panel.comment == "blurry"
    rows = _rows(controller.state.table_path)
    assert [(r["item"], r["structure"], r["score"]) for r in rows if r["score"]] == \
        [(first, s, str(v)) for v, s in zip((4, 2, 5), required)]

    panel = controller.navigate("next")
    second = controller.state.item.item_id
    assert second != first and panel.can_go_previous and set(panel.scores.values()) == {None}
    visible = [i for i, n in controller.case_nodes.segmentations.items() if n.GetDisplayNode().GetVisibility()]
    assert visible == [second]
    panel = controller.navigate("previous")  # back: the saved scores are shown, and can be changed
    assert controller.state.item.item_id == first and panel.scores[required[0]] == 4
    revisions = len(_rows(controller.state.table_path))
    panel = controller.score(3, required[0])
    assert panel.saved.startswith(f"Saved: {required[0]} = 3 (revision ")
    assert len(_rows(controller.state.table_path)) == revisions + 1  # a change is a new row, never a rewrite

    controller.close()
    assert controller.case_nodes is None and mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    resumed = ReviewController(mrml_scene)
    resumed.open_session(session.folder, "jd")  # resumes at the first item not scored yet
    panel = resumed.panel()
    assert resumed.state.item.item_id == second and panel.done_count == 1
    panel = resumed.score_key(1)
    assert panel.done_count == 2 and panel.session_status == "All 2 items are scored. Thank you!"
    assert not panel.can_go_next_open
    panel = resumed.navigate("previous")
    assert panel.scores[required[0]] == 3 and panel.comment == "blurry"  # the latest revision wins
    resumed.close()
