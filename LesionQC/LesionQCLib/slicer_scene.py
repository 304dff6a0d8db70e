"""A review case in the MRML scene, every item displayed the same way.

The only module of LesionQCLib that imports ``slicer``; it touches MRML only
(no Qt, no application), so that it runs in Slicer and on ``slicer-core``.

Blinding rests on the display: every item's segmentation gets the same node
name pattern (``"sub-03 item A"``), the same segment names and colours (by label
value, from the session's labels), the same opacities and the same 2D-only
representation. Only the item being rated is visible.

Example:
    >>> import slicer
    >>> from LesionQCLib.session import SessionView
    >>> from LesionQCLib.slicer_scene import load_case, show_item, show_in_slice_views, remove_case
    >>> session = SessionView.load("qc-session")                          # doctest: +SKIP
    >>> nodes = load_case(session.cases[0], session.labels, slicer.mrmlScene)  # doctest: +SKIP
    >>> show_in_slice_views(slicer.mrmlScene, nodes)                      # doctest: +SKIP
    >>> show_item(nodes, "B")                                             # doctest: +SKIP
    >>> remove_case(slicer.mrmlScene, nodes)                              # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional

import slicer

from .errors import SessionError
from .session import CaseView, segment_color

#: Display of every item: outline plus a light fill, 2D views only.
FILL_OPACITY = 0.3
OUTLINE_OPACITY = 1.0


@dataclass
class CaseNodes:
    """The MRML nodes of a loaded case."""

    case_id: str
    volume: object
    volume2: Optional[object]
    segmentations: Dict[str, object] = field(default_factory=dict)  # item id -> segmentation node


def _read_volume(scene, path: Path, name: str, class_name: str, displayed: bool = True):
    node = scene.AddNewNodeByClass(class_name, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not path.is_file() or not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise SessionError(f"{path}: cannot load this file into Slicer")
    if displayed:
        node.CreateDefaultDisplayNodes()
    return node


def _read_item(scene, path: Path, name: str, reference, labels: Mapping[int, str]):
    labelmap = _read_volume(scene, path, name, "vtkMRMLLabelMapVolumeNode", displayed=False)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation, ""):
            raise SessionError(f"{path}: cannot import this label map as a segmentation")
    except BaseException:
        scene.RemoveNode(segmentation)
        raise
    finally:
        # The label map was only the way in: the segmentation keeps the voxels.
        storage = labelmap.GetStorageNode()
        scene.RemoveNode(labelmap)
        scene.RemoveNode(storage)
    contents = segmentation.GetSegmentation()
    for index in range(contents.GetNumberOfSegments()):
        segment = contents.GetNthSegment(index)
        value = segment.GetLabelValue()
        segment.SetName(labels.get(value, f"label {value}"))
        segment.SetColor(*segment_color(value))
    segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetOpacity2DFill(FILL_OPACITY)
    display.SetOpacity2DOutline(OUTLINE_OPACITY)
    display.SetVisibility3D(False)  # a 3D surface would take time and draw attention to one item
    display.SetVisibility(False)
    return segmentation


def load_case(case: CaseView, labels: Mapping[int, str], scene=None) -> CaseNodes:
    """Load a case's image(s) and every item as hidden, identically displayed segmentations."""
    scene = scene if scene is not None else slicer.mrmlScene
    volume = _read_volume(scene, case.image, f"{case.case_id} image", "vtkMRMLScalarVolumeNode")
    nodes = CaseNodes(case.case_id, volume, None)
    try:
        if case.image2 is not None:
            nodes.volume2 = _read_volume(scene, case.image2, f"{case.case_id} image 2", "vtkMRMLScalarVolumeNode")
        for item in case.items:
            nodes.segmentations[item.item_id] = _read_item(
                scene, item.path, f"{case.case_id} item {item.item_id}", volume, labels)
    except BaseException:
        remove_case(scene, nodes)
        raise
    return nodes


def show_item(nodes: CaseNodes, item_id: str) -> None:
    """Make ``item_id`` the only visible segmentation of the case."""
    if item_id not in nodes.segmentations:
        raise SessionError(f"case {nodes.case_id!r} has no item {item_id!r}")
    for other, segmentation in nodes.segmentations.items():
        segmentation.GetDisplayNode().SetVisibility(other == item_id)


def show_in_slice_views(scene, nodes: CaseNodes) -> None:
    """Every slice view shows the case's image as background (the second image, if any, as foreground, hidden)."""
    # GetNth... rather than GetNodesByClass, whose new collection Python's wrapping never releases.
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(nodes.volume.GetID())
        composite.SetForegroundVolumeID(nodes.volume2.GetID() if nodes.volume2 is not None else None)
        composite.SetForegroundOpacity(0.0)
        composite.SetLabelVolumeID(None)


def remove_case(scene, nodes: CaseNodes) -> None:
    """Remove a case's nodes (and their storage and display nodes) from the scene."""
    for node in [nodes.volume, nodes.volume2] + list(nodes.segmentations.values()):
        if node is None or node.GetScene() is None:
            continue
        helpers = [node.GetStorageNode()] + [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None:
                scene.RemoveNode(helper)
    nodes.segmentations.clear()
