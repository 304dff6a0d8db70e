"""MRML operations of the SpinalCordSeg module (the only SpinalCordSegLib file importing ``slicer``).

Everything here works on a bare ``vtkMRMLScene`` (no Qt, no application),
so it runs both in Slicer and, for tests, with ``slicer-core``:

- volume node <-> SimpleITK image through the IJK-to-RAS matrix (Slicer is
  RAS, ITK is LPS; Slicer also flips the axes of left-handed scans);
- soft maps as scalar volumes shown with a perceptual colour map, window
  0 to 1 and the threshold as lower display threshold;
- one segmentation node with a segment per structure, named and coloured
  after standard terminology, updated from thresholded arrays; manual
  edits seen as they happen, Undo and Redo included (:class:`SegmentEditObserver`);
- the crop box as a Markups ROI, and the user's moved box read back;
- nothing temporary left in the scene (exports, replaced volumes' display
  and storage nodes);
- the module's parameters in the scene (:class:`SceneParameters`) and
  :class:`ResultScene`, which ties them to the panel state so that a saved
  scene reopens where it was.

Example:
    >>> import slicer
    >>> from SpinalCordSegLib.panel.slicer_scene import ResultScene, new_parameter_node
    >>> scene = slicer.vtkMRMLScene()  # doctest: +SKIP
    >>> results = ResultScene(new_parameter_node(scene))  # doctest: +SKIP
    >>> results.show(volume_node, prediction.soft_maps, {s: prediction.provenance for s in prediction.soft_maps})  # doctest: +SKIP
    >>> results.set_threshold("lesion", 0.3)  # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

from ..rounds.correction import OutputPlan, SavedCorrection, on_grid, save_correction
from ..errors import InputImageError, SpinalCordSegError
from ..imaging.grid import same_grid
from ..imaging.image_io import read_image
from ..imaging.naming import bids_label, source_name, structure_colour
from ..resources import resources_dir
from .edit_tracking import EditTracker
from ..imaging.binarization import MaskOptions
from ..imaging.thresholds import ThresholdState, volume_mm3
from ..inference.cropping import CropBox, box_from_roi, box_to_roi

if TYPE_CHECKING:  # worklist needs pandas, which Slicer does not ship: imported where a case is opened
    from ..rounds.worklist import WorklistCase

MODULE_NAME = "SpinalCordSeg"
# ITK (LPS) and Slicer (RAS) differ by the signs of x and y; the matrix is its own inverse.
LPS_RAS = np.diag([-1.0, -1.0, 1.0])

#: Marks the module's probability-map volumes (never a default input).
PROBABILITY_MAP_ATTRIBUTE = "SpinalCordSeg.ProbabilityMap"
#: How close (mm) an ROI must stay to the box shown to count as unmoved.
ROI_TOLERANCE_MM = 1e-3

#: Perceptual colour maps Slicer ships (node ID, node name), first found wins.
SOFT_MAP_COLOURS = (("vtkMRMLColorTableNodeFileViridis.txt", "Viridis"),
                    ("vtkMRMLColorTableNodeFileInferno.txt", "Inferno"))
#: Used where Slicer's colour files are absent (slicer-core): a built-in sequential map.
FALLBACK_COLOUR_ID = "vtkMRMLColorTableNodeIron"

#: Slicer's terminology lists have the spinal cord but no "Lesion" type, so the extension ships
#: its own list (Resources/Terminology); :func:`register_terminology` loads it in Slicer.
TERMINOLOGY_CONTEXT = "SpinalCordSeg - spinal cord and lesions"
TERMINOLOGY_FILE = resources_dir() / "Terminology" / "SegmentationCategoryTypeModifier-SpinalCordSeg.json"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: BIDS label -> (segment name, category code, type code); SNOMED CT codes, as in TERMINOLOGY_FILE
#: (colours: outputs.STRUCTURE_COLOURS, the file's recommended colours).
TERMINOLOGY = {
    "SC": ("Spinal cord", "SCT^123037004^Anatomical Structure", "SCT^2748008^Spinal cord"),
    "lesion": ("Lesion", "SCT^49755003^Morphologically Altered Structure", "SCT^52988006^Lesion"),
}


# ------------------------------------------------------------------ volumes <-> SimpleITK

def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as a NumPy array."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _check_untransformed(volume_node) -> None:
    if volume_node.GetParentTransformNode() is not None:
        raise InputImageError(
            f"volume '{volume_node.GetName()}' is under a transform; harden the transform first "
            "(Data module, right-click > Harden transform)"
        )


def _geometry_of(volume_node) -> Dict[str, tuple]:
    """Spacing, origin and direction of a volume node in ITK's LPS convention."""
    matrix = ijk_to_ras(volume_node)
    columns = matrix[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    return {
        "spacing": tuple(spacing),
        "origin": tuple(LPS_RAS @ matrix[:3, 3]),
        "direction": tuple((LPS_RAS @ (columns / spacing)).ravel()),
    }


def _with_geometry(image: sitk.Image, volume_node) -> sitk.Image:
    geometry = _geometry_of(volume_node)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def image_from_volume(volume_node) -> sitk.Image:
    """A SimpleITK copy of a scalar volume node, on the node's grid (LPS geometry)."""
    _check_untransformed(volume_node)
    if volume_node.GetImageData() is None:
        raise InputImageError(f"volume '{volume_node.GetName()}' has no voxels")
    return _with_geometry(sitk.GetImageFromArray(slicer.util.arrayFromVolume(volume_node)), volume_node)


def update_volume_from_image(volume_node, image: sitk.Image) -> None:
    """Set a volume node's voxels and geometry from a SimpleITK image."""
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    columns = LPS_RAS @ np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix = np.eye(4)
    matrix[:3, :3] = columns
    matrix[:3, 3] = LPS_RAS @ np.array(image.GetOrigin())
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))


def add_volume_from_image(scene, image: sitk.Image, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Add a volume node holding ``image``; return it."""
    node = scene.AddNewNodeByClass(node_class, name)
    update_volume_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def volume_file_path(volume_node) -> Optional[str]:
    """The file a volume was loaded from, when it still exists."""
    storage = volume_node.GetStorageNode()
    path = storage.GetFileName() if storage is not None else None
    return path if path and os.path.isfile(path) else None


def scan_source_name(volume_node) -> str:
    """Name for output files: the loaded file's name, else the node's name."""
    path = volume_file_path(volume_node)
    name = source_name(path) if path else volume_node.GetName()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "scan"


# ------------------------------------------------------------------ soft maps

def soft_map_colour_node(scene):
    """Slicer's Viridis (or Inferno) colour node; Slicer's built-in Iron where those are absent."""
    for node_id, name in SOFT_MAP_COLOURS + ((FALLBACK_COLOUR_ID, "Iron"),):
        node = scene.GetNodeByID(node_id) or scene.GetFirstNode(name, "vtkMRMLColorTableNode")
        if node is not None:
            return node
    node = slicer.vtkMRMLColorTableNode()  # a bare scene (slicer-core) has no colour nodes at all
    node.SetTypeToIron()
    node.SetName("Iron")
    node.SetSaveWithScene(False)  # built in, as Slicer's own colour nodes: not written with the scene
    return scene.AddNode(node)


def set_soft_map_threshold(volume_node, threshold: float) -> None:
    """Show only voxels with probability >= ``threshold`` (the binarization rule)."""
    display = volume_node.GetDisplayNode()
    display.SetAutoThreshold(False)
    display.SetThreshold(float(threshold), 1.0)
    display.SetApplyThreshold(True)


def style_soft_map(volume_node, threshold: float) -> None:
    """Colour map, fixed 0-1 window and the threshold on a soft-map volume."""
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(soft_map_colour_node(volume_node.GetScene()).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    set_soft_map_threshold(volume_node, threshold)


def show_overlay(scene, background, foreground, opacity: float) -> None:
    """Show ``foreground`` over ``background`` in every slice view of the scene."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(float(opacity))


# ------------------------------------------------------------------ segmentation

def register_terminology(terminologies_logic) -> str:
    """Load the extension's terminology list into Slicer's terminologies logic (once); return its name.

    In Slicer: ``register_terminology(slicer.modules.terminologies.logic())``.
    """
    names = vtk.vtkStringArray()
    terminologies_logic.GetLoadedTerminologyNames(names)
    if TERMINOLOGY_CONTEXT not in {names.GetValue(i) for i in range(names.GetNumberOfValues())}:
        if not terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE)):
            raise SpinalCordSegError(f"Slicer cannot load the terminology file {TERMINOLOGY_FILE}")
    return TERMINOLOGY_CONTEXT


def ensure_segmentation_converters() -> None:
    """Register the labelmap/surface conversion rules; Slicer's Segmentations module does it at start-up."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = getattr(factory, "GetConverterRules", None)
    if rules is None:
        return  # not wrapped in some Slicer 5.8 builds; there the Segmentations module registered the rules
    if not rules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def segment_look(structure: str, index: int = 0):
    """(segment name, RGB 0-1, terminology entry or None) of a structure."""
    colour = structure_colour(structure, index)
    known = TERMINOLOGY.get(bids_label(structure))
    if known is None:
        return structure, colour, None
    name, category, kind = known
    entry = f"{TERMINOLOGY_CONTEXT}~{category}~{kind}~^^~{ANATOMIC_CONTEXT}~^^~^^"
    return name, colour, entry


def create_segmentation(scene, reference_volume, structures: Sequence[str], name: str):
    """A segmentation node on the reference volume's grid with one empty segment per structure.

    Segment IDs are the structure names; names, colours and terminology
    follow :data:`TERMINOLOGY`.
    """
    ensure_segmentation_converters()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    set_segments(node, reference_volume, structures)
    return node


def set_segments(segmentation_node, reference_volume, structures: Sequence[str]) -> None:
    """Make the segmentation hold exactly one empty segment per structure, on the reference grid."""
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    for index, structure in enumerate(structures):
        name, colour, terminology = segment_look(structure, index)
        segmentation.AddEmptySegment(structure, name, list(colour))
        # One labelmap layer per segment: an edit then changes only its own segment's voxels (see
        # observe_segment_edits), and the cord may contain the lesions.
        segmentation.SeparateSegmentLabelmap(structure)
        if terminology:
            segment = segmentation.GetSegment(structure)
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, reference_volume) -> None:
    """Replace a segment with a boolean array (z, y, x) on the reference volume's grid."""
    dimensions = reference_volume.GetImageData().GetDimensions()
    if mask.shape != tuple(reversed(dimensions)):
        raise ValueError(f"mask shape {mask.shape} does not match the volume's {tuple(reversed(dimensions))}")
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise SpinalCordSegError(f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}'")
    voxels = np.ascontiguousarray(mask if mask.dtype == bool else mask != 0).view(np.uint8)
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(dimensions)
    # No copy: ``voxels`` stays alive until the segmentation has copied it below.
    labelmap.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(voxels.ravel(), deep=False, array_type=vtk.VTK_UNSIGNED_CHAR))
    matrix = vtk.vtkMatrix4x4()
    reference_volume.GetIJKToRASMatrix(matrix)
    labelmap.SetImageToWorldMatrix(matrix)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, logic.MODE_REPLACE,
                                            labelmap.GetExtent()):
        raise SpinalCordSegError(f"cannot update segment '{segment_id}' of '{segmentation_node.GetName()}'")


def segment_mask_array(segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """A segment as a boolean array (z, y, x) on the reference volume's grid.

    The export goes through a temporary label map; it and everything the
    export adds with it (its display node, its colour table) leave the
    scene again, as Slicer's ``arrayFromSegmentBinaryLabelmap`` does.
    """
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise SpinalCordSegError(
            f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}' (was it deleted?)")
    scene = segmentation_node.GetScene()
    with _temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SpinalCordSeg_export__")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_volume):
            raise SpinalCordSegError(f"cannot export segment '{segment_id}' of '{segmentation_node.GetName()}'")
        return slicer.util.arrayFromVolume(labelmap) != 0


def _node_ids(scene) -> List[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@contextmanager
def _temporary_nodes(scene) -> Iterator[None]:
    """Remove every node added inside the block (singletons excepted: Slicer shares them), newest first."""
    before = set(_node_ids(scene))
    try:
        yield
    finally:
        for node_id in reversed(_node_ids(scene)):
            node = scene.GetNodeByID(node_id)
            if node_id not in before and node is not None and not node.GetSingletonTag():
                scene.RemoveNode(node)


def remove_data_node(node) -> None:
    """Remove a volume with its own display and storage nodes (``RemoveNode`` leaves them in the scene).

    Shared nodes it points to (its colour map) stay.
    """
    scene = node.GetScene()
    if scene is None:
        return
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    helpers.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is scene:
            scene.RemoveNode(helper)


def mask_image(mask: np.ndarray, reference_volume) -> sitk.Image:
    """A uint8 SimpleITK image of a (z, y, x) mask with the reference volume's geometry."""
    return _with_geometry(sitk.GetImageFromArray(mask.astype(np.uint8)), reference_volume)


def _source_stamps(segmentation) -> Dict[str, int]:
    """Segment ID -> modification time of its source representation (its voxels)."""
    name = segmentation.GetSourceRepresentationName()
    stamps = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        representation = segmentation.GetSegment(segment_id).GetRepresentation(name)
        stamps[segment_id] = representation.GetMTime() if representation is not None else 0
    return stamps


class SegmentEditObserver:
    """Calls ``callback(segment_id or None)`` whenever a segment's voxels change; collects Undo's changes.

    The segment editor and :func:`set_segment_mask` modify the source
    representation (``SourceRepresentationModified``): the segments whose
    voxels' modification time moved are the ones changed (segments sharing
    one labelmap layer change together); the event's call data (a segment ID
    or an object pointer) is not read, and when no stamp moved the change is
    reported as ``None`` (unknown). The editor's Undo and Redo
    (``vtkSegmentationHistory.RestoreState``) copy whole segments back,
    which fires only ``SegmentModified``; so do a new name or colour and
    saving (the writer merges the labelmap layers, through intermediate
    states). Those segments are only collected (:meth:`take_pending`): the
    owner decides whether their voxels really changed, when it needs to know.

    Example:
        >>> observer = SegmentEditObserver(segmentation_node, print)  # doctest: +SKIP
        >>> observer.take_pending(); observer.stop()  # doctest: +SKIP
    """

    def __init__(self, segmentation_node, callback: Callable[[Optional[str]], None]) -> None:
        self.node = segmentation_node
        self._callback = callback
        self._segmentation = segmentation_node.GetSegmentation()
        self._stamps = _source_stamps(self._segmentation)
        self._pending: Set[str] = set()
        self._tags = [segmentation_node.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified,
                                                    self._source_modified),
                      segmentation_node.AddObserver(slicer.vtkSegmentation.SegmentModified, self._segment_modified)]

    def _moved(self) -> List[str]:
        now = _source_stamps(self._segmentation)
        changed = [segment_id for segment_id, stamp in now.items() if self._stamps.get(segment_id) != stamp]
        self._stamps = now
        return changed

    def _source_modified(self, caller, event) -> None:
        changed = self._moved()
        self._pending.difference_update(changed)
        for segment_id in changed or [None]:
            self._callback(segment_id)

    def _segment_modified(self, caller, event) -> None:
        self._pending.update(self._moved())

    def take_pending(self) -> Set[str]:
        """The segments a ``SegmentModified`` touched since the last call (Undo, Redo, renaming, saving)."""
        pending, self._pending = self._pending, set()
        return pending

    def stop(self) -> None:
        for tag in self._tags:
            self.node.RemoveObserver(tag)
        self._tags = []


def segment_editor_node(scene, tag: str = MODULE_NAME):
    """The module's segment editor node; overlapping segments allowed (the cord contains the lesions)."""
    node = scene.GetSingletonNode(tag, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(tag)
        node = scene.AddNode(node)
    node.SetOverwriteMode(node.OverwriteNone)
    return node


# ------------------------------------------------------------------ crop box

def grid_image(volume_node) -> sitk.Image:
    """An empty image on the volume's grid (size and LPS geometry), for index <-> RAS conversions."""
    _check_untransformed(volume_node)
    if volume_node.GetImageData() is None:
        raise InputImageError(f"volume '{volume_node.GetName()}' has no voxels")
    return _with_geometry(sitk.Image(list(volume_node.GetImageData().GetDimensions()), sitk.sitkUInt8), volume_node)


def roi_geometry(roi_node) -> Dict[str, List[float]]:
    """``{"center": [R, A, S], "size": [mm x3]}`` of a Markups ROI; refuses transformed or rotated ROIs."""
    if roi_node.GetParentTransformNode() is not None:
        raise InputImageError(f"crop box '{roi_node.GetName()}' is under a transform; harden it or remove it")
    rotation = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToNodeMatrix())[:3, :3]
    if not np.allclose(rotation, np.eye(3), atol=1e-6):
        raise InputImageError(f"crop box '{roi_node.GetName()}' is rotated; the crop box follows the scan's "
                              "axes: reset its orientation (Markups module) or remove it")
    center = [0.0, 0.0, 0.0]
    roi_node.GetCenter(center)
    geometry = {"center": [float(v) for v in center], "size": [float(v) for v in roi_node.GetSize()]}
    if not np.isfinite(geometry["center"] + geometry["size"]).all():
        raise InputImageError(f"crop box '{roi_node.GetName()}': its centre or size is not a number "
                              f"({geometry}); delete it and press Locate only")
    return geometry


def set_roi_geometry(roi_node, box: CropBox, volume_node) -> Dict[str, List[float]]:
    """Place a Markups ROI around ``box`` (voxels of ``volume_node``); return its geometry."""
    center, size = box_to_roi(box, grid_image(volume_node))
    roi_node.SetCenter(center)
    roi_node.SetSize(size)
    return roi_geometry(roi_node)


# ------------------------------------------------------------------ parameters

def new_parameter_node(scene, module_name: str = MODULE_NAME):
    """A parameter node as Slicer's ScriptedLoadableModuleLogic makes it (tests; Slicer makes its own)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetAttribute("ModuleName", module_name)
        node.SetName(module_name)
        node = scene.AddNode(node)
    return node


def _role(prefix: str, structure: str) -> str:
    # MRML writes references as "role:id;", so roles keep to word characters.
    return prefix + re.sub(r"\W", "_", structure)


class SceneParameters:
    """The module's parameters in a ``vtkMRMLScriptedModuleNode``: JSON values and node references."""

    INPUT_VOLUME = "InputVolume"
    RESULT_VOLUME = "ResultVolume"
    SEGMENTATION = "Segmentation"
    SOFT_MAP = "SoftMap_"
    CROP_ROI = "CropROI"
    CROP_VOLUME = "CropVolume"

    def __init__(self, node) -> None:
        self.node = node

    def get(self, key: str, default=None):
        """A value stored with :meth:`set` (``default`` when absent)."""
        text = self.node.GetParameter(key)
        return json.loads(text) if text else default

    def set(self, key: str, value) -> None:
        """Store a JSON-serializable value (one Modified event only when it changes)."""
        text = json.dumps(value, sort_keys=True)
        if self.node.GetParameter(key) != text:
            self.node.SetParameter(key, text)

    def reference(self, role: str):
        return self.node.GetNodeReference(role)

    def set_reference(self, role: str, node) -> None:
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    @property
    def input_volume(self):
        return self.reference(self.INPUT_VOLUME)

    @input_volume.setter
    def input_volume(self, node) -> None:
        self.set_reference(self.INPUT_VOLUME, node)

    @property
    def result_volume(self):
        """The volume the current results belong to (the input may have changed since)."""
        return self.reference(self.RESULT_VOLUME)

    @result_volume.setter
    def result_volume(self, node) -> None:
        self.set_reference(self.RESULT_VOLUME, node)

    @property
    def segmentation(self):
        return self.reference(self.SEGMENTATION)

    @segmentation.setter
    def segmentation(self, node) -> None:
        self.set_reference(self.SEGMENTATION, node)

    def soft_map(self, structure: str):
        return self.reference(_role(self.SOFT_MAP, structure))

    def set_soft_map(self, structure: str, node) -> None:
        self.set_reference(_role(self.SOFT_MAP, structure), node)


# ------------------------------------------------------------------ results

class ResultScene:
    """Soft maps, thresholds, segmentation and edits of one case, kept in the scene.

    Everything a slider move, an edit or a save needs is read from and
    written to the parameter node, so a saved scene reopens where it was.

    Args:
        parameter_node: the module's ``vtkMRMLScriptedModuleNode``.
        clock: time source for the correction time (tests pass their own).
    """

    def __init__(self, parameter_node, clock: Callable[[], float] = time.time) -> None:
        self.params = SceneParameters(parameter_node)
        self.tracker = EditTracker(clock)
        self.tracker.edited.update(self.params.get("EditedStructures", []))
        self.tracker.started_at = self.params.get("ResultsShownAt")
        self._observer: Optional[SegmentEditObserver] = None
        #: Called before an automatic update overwrites manual edits (Slicer: the segment editor's
        #: ``saveStateForUndo``), so that Undo brings the edits back.
        self.before_overwrite: Callable[[], None] = lambda: None
        self._observe()

    # -- state ------------------------------------------------------------

    @property
    def state(self) -> Optional[ThresholdState]:
        """Thresholds and options of the current results (None before any result)."""
        data = self.params.get("ThresholdState")
        return ThresholdState.from_dict(data) if data else None

    def _store_state(self, state: ThresholdState) -> None:
        self.params.set("ThresholdState", state.to_dict())

    @property
    def provenance(self) -> Dict[str, dict]:
        """Structure -> ``GeneratedBy`` entry of the automatic step."""
        return self.params.get("Provenance", {})

    @property
    def has_results(self) -> bool:
        state = self.state
        return (state is not None and self.params.segmentation is not None and self.params.result_volume is not None
                and all(self.params.soft_map(s) is not None for s in state.structures))

    def soft_map_node(self, structure: str):
        return self.params.soft_map(structure)

    def _soft_arrays(self, state: ThresholdState) -> Dict[str, np.ndarray]:
        return {s: slicer.util.arrayFromVolume(self.params.soft_map(s)) for s in state.structures}

    # -- showing new results ----------------------------------------------

    def show(
        self,
        volume_node,
        soft_maps: Mapping[str, sitk.Image],
        provenance: Mapping[str, dict],
        defaults: Optional[Mapping[str, float]] = None,
        opacity: float = 0.5,
        options: Optional[MaskOptions] = None,
    ) -> ThresholdState:
        """Show new soft maps of ``volume_node`` and their thresholded segmentation.

        Soft maps must lie on the volume's grid (the engine guarantees it).
        A new run on the same volume reuses its soft-map volumes and
        segmentation; a run on another volume makes new ones and leaves the
        previous case's nodes in the scene. Mask options (largest cord
        component, lesions in cord) are ``options``, else the previous case's,
        else the field's defaults (:class:`~.binarization.MaskOptions`).
        """
        if not soft_maps:
            raise ValueError("no soft maps to show")
        scene = volume_node.GetScene()
        grid = image_from_volume(volume_node)
        for structure, soft in soft_maps.items():
            if not same_grid(grid, soft):
                raise InputImageError(
                    f"soft map '{structure}' is not on the grid of volume '{volume_node.GetName()}' "
                    f"(size {soft.GetSize()} vs {grid.GetSize()})")
        previous = self.state
        if options is None:
            options = previous.options if previous else MaskOptions()
        state = ThresholdState(list(soft_maps), defaults, options)
        with self._batch():
            same_case = self.params.result_volume is volume_node
            for structure in previous.structures if previous else []:
                if same_case and structure in soft_maps:
                    continue  # its volume is reused below
                node = self.params.soft_map(structure)
                if same_case and node is not None:
                    remove_data_node(node)  # a structure the new model does not give
                self.params.set_soft_map(structure, None)
            if not same_case:
                self.params.segmentation = None
            for structure, soft in soft_maps.items():
                node = self.params.soft_map(structure)
                if node is None:
                    name, _, _ = segment_look(structure, 0)
                    node = scene.AddNewNodeByClass(
                        "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{volume_node.GetName()} {name} probability"))
                    node.SetAttribute(PROBABILITY_MAP_ATTRIBUTE, structure)
                    self.params.set_soft_map(structure, node)
                slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(sitk.Cast(soft, sitk.sitkFloat32)))
                node.CopyOrientation(volume_node)  # exactly the scan node's grid, without float noise
                style_soft_map(node, state.thresholds[structure])
            segmentation = self.params.segmentation
            if segmentation is None:
                self.params.segmentation = create_segmentation(
                    scene, volume_node, state.structures,
                    scene.GenerateUniqueName(f"{volume_node.GetName()} segmentation"))
            else:
                with self.tracker.automatic():
                    set_segments(segmentation, volume_node, state.structures)
            self.params.result_volume = volume_node
            self.params.set("Provenance", {s: dict(provenance[s]) for s in state.structures})
            self._store_state(state)
            self._observe()
            self._update_masks(state, state.structures)
            self.tracker.start()
            self._store_tracker()
            self.show_map(state.structures[-1], opacity)
        return state

    def show_case(self, volume_node, case: WorklistCase, opacity: float = 0.5) -> ThresholdState:
        """Show the saved predictions of a worklist case on its loaded scan, at the batch's thresholds and options.

        The soft maps lie on the scan file's grid; Slicer may hold the scan
        with flipped axes, so they are put on the volume node's grid first.
        """
        grid = image_from_volume(volume_node)
        soft_maps = {s: on_grid(read_image(path), grid, sitk.sitkLinear) for s, path in case.soft_maps.items()}
        return self.show(volume_node, soft_maps, case.provenance(), case.thresholds(), opacity, case.mask_options())

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """One parameter-node Modified event for many changes (one GUI refresh per slider move)."""
        was_modifying = self.params.node.StartModify()
        try:
            yield
        finally:
            self.params.node.EndModify(was_modifying)

    def show_map(self, structure: str, opacity: float) -> None:
        """Show one structure's soft map over the scan in the slice views."""
        volume = self.params.result_volume
        show_overlay(volume.GetScene(), volume, self.params.soft_map(structure), opacity)
        self.params.set("Overlay", {"structure": structure, "opacity": float(opacity)})

    # -- thresholds ---------------------------------------------------------

    def edited_among(self, structures: Sequence[str]) -> List[str]:
        """Structures among ``structures`` the user edited by hand (Undo and Redo included)."""
        self._settle_edits()
        return self.tracker.needs_confirmation(structures)

    def set_threshold(self, structure: str, value: float, overwrite_edits: bool = False,
                      settled: bool = True) -> List[str]:
        """Move one slider: update the segment(s) and the overlay's lower threshold.

        Returns the edited structures that stop the update (nothing changed)
        unless ``overwrite_edits``; an empty list once done. ``settled`` False
        while the slider is dragged: the largest-component step waits for the
        release (see :func:`~.binarization.binary_masks`).
        """
        state = self._require_state()
        blocked = self.edited_among(state.dependents(structure))
        if blocked and not overwrite_edits:
            return blocked
        if blocked:
            self.before_overwrite()
        affected = state.set_threshold(structure, value)
        with self._batch():
            self._store_state(state)
            set_soft_map_threshold(self.params.soft_map(structure), state.thresholds[structure])
            self._update_masks(state, affected, settled)
        return []

    def preview_threshold(self, structure: str, value: Optional[float] = None) -> None:
        """Show ``value`` on the structure's overlay only (None: the threshold in use); no segment changes."""
        state = self._require_state()
        set_soft_map_threshold(self.params.soft_map(structure),
                               state.thresholds[structure] if value is None else value)

    def set_options(self, keep_largest_cord: bool, restrict_lesions_to_cord: bool,
                    overwrite_edits: bool = False) -> List[str]:
        """Change the mask options; same return value as :meth:`set_threshold`."""
        state = self._require_state()
        trial = ThresholdState.from_dict(state.to_dict())
        blocked = self.edited_among(trial.set_options(keep_largest_cord, restrict_lesions_to_cord))
        if blocked and not overwrite_edits:
            return blocked
        if blocked:
            self.before_overwrite()
        affected = state.set_options(keep_largest_cord, restrict_lesions_to_cord)
        with self._batch():
            self._store_state(state)
            self._update_masks(state, affected)
        return []

    def volumes_mm3(self) -> Dict[str, float]:
        """Volume of each structure's thresholded mask at the last update."""
        return self.params.get("VolumesMm3", {})

    def _update_masks(self, state: ThresholdState, structures: Sequence[str], settled: bool = True) -> None:
        if not structures:
            return
        volume = self.params.result_volume
        segmentation = self.params.segmentation
        masks = state.masks(self._soft_arrays(state), structures, settled)
        with self.tracker.automatic():
            for structure, mask in masks.items():
                set_segment_mask(segmentation, structure, mask, volume)
            if self._observer is not None:
                self._observer.take_pending()  # the module's own update (pending changes were settled before it)
        self.tracker.discard_edits(structures)
        self._store_tracker()
        spacing = volume.GetSpacing()
        volumes = dict(self.volumes_mm3())
        volumes.update({s: volume_mm3(m, spacing) for s, m in masks.items()})
        self.params.set("VolumesMm3", volumes)

    def _require_state(self) -> ThresholdState:
        state = self.state
        if state is None:
            raise SpinalCordSegError("no results yet: press Apply first")
        return state

    # -- edits --------------------------------------------------------------

    def _observe(self) -> None:
        segmentation = self.params.segmentation
        if segmentation is (self._observer.node if self._observer else None):
            return
        self.close()
        if segmentation is not None:
            self._observer = SegmentEditObserver(segmentation, self._segment_modified)

    def _settle_edits(self) -> None:
        """Segments that Undo or Redo touched count as edited when they differ from their automatic mask.

        Compared only when asked, so the module's own updates (every slider
        move) cost nothing more; a segment restored exactly as the
        thresholds give it is not an edit.
        """
        pending = self._observer.take_pending() if self._observer is not None else set()
        state = self.state
        if not pending or state is None or not self.has_results:
            return
        candidates = [s for s in sorted(pending) if s in state.structures and s not in self.tracker.edited]
        if not candidates:
            return
        volume, segmentation = self.params.result_volume, self.params.segmentation
        automatic = state.masks(self._soft_arrays(state), candidates)
        for structure in candidates:
            if not np.array_equal(segment_mask_array(segmentation, structure, volume), automatic[structure]):
                self._segment_modified(structure)

    @property
    def edited(self) -> Set[str]:
        """The structures edited by hand, Undo and Redo included."""
        self._settle_edits()
        return self.tracker.edited

    def _segment_modified(self, segment_id: Optional[str]) -> None:
        state = self.state
        if state is None or (segment_id is not None and segment_id not in state.structures):
            return
        before = set(self.tracker.edited)
        self.tracker.segment_modified(segment_id, state.structures)
        if self.tracker.edited != before:
            self._store_tracker()

    def _store_tracker(self) -> None:
        self.params.set("EditedStructures", sorted(self.tracker.edited))
        self.params.set("ResultsShownAt", self.tracker.started_at)

    def close(self) -> None:
        """Stop observing the segmentation (the widget calls it when the scene closes)."""
        if self._observer is not None:
            self._observer.stop()
        self._observer = None

    # -- crop box ---------------------------------------------------------------

    @property
    def crop_roi(self):
        """The Markups ROI showing the crop box (None before any box)."""
        return self.params.reference(SceneParameters.CROP_ROI)

    def show_crop_box(self, box: Optional[Mapping], volume_node) -> Optional[object]:
        """Show the box a run predicted in (``CropBox.to_dict()``) as a Markups ROI; None removes the ROI.

        The ROI is reused from run to run; what was shown is kept, so that a
        moved or resized ROI is recognised (:meth:`user_crop_box`).
        """
        roi = self.crop_roi
        if box is None:
            if roi is not None:
                remove_data_node(roi)
            self.params.set_reference(SceneParameters.CROP_ROI, None)
            self.params.set("CropBox", None)
            return None
        crop_box = CropBox.from_dict(box)
        scene = volume_node.GetScene()
        if roi is None:
            roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode",
                                          scene.GenerateUniqueName(f"{volume_node.GetName()} crop box"))
            roi.CreateDefaultDisplayNodes()
        with self._batch():
            geometry = set_roi_geometry(roi, crop_box, volume_node)
            self.params.set_reference(SceneParameters.CROP_ROI, roi)
            self.params.set_reference(SceneParameters.CROP_VOLUME, volume_node)
            self.params.set("CropBox", dict(geometry, box=crop_box.to_dict()))
        return roi

    def user_crop_box(self, volume_node) -> Optional[dict]:
        """The box to predict in when the user moved or resized the ROI (``source`` ``"user"``), else None.

        Once the user's box was used, it stays in use until the ROI is
        deleted; a box on another volume is ignored.
        """
        roi, shown = self.crop_roi, self.params.get("CropBox")
        if roi is None or shown is None or self.params.reference(SceneParameters.CROP_VOLUME) is not volume_node:
            return None
        geometry = roi_geometry(roi)
        moved = any(not np.allclose(geometry[key], shown[key], atol=ROI_TOLERANCE_MM) for key in ("center", "size"))
        if not moved and shown["box"].get("source") != "user":
            return None
        return box_from_roi(geometry["center"], geometry["size"], grid_image(volume_node), "user").to_dict()

    # -- masks and saving -----------------------------------------------------

    def automatic_masks(self) -> Dict[str, sitk.Image]:
        """The thresholded masks (before any edit) on the volume's grid."""
        state = self._require_state()
        volume = self.params.result_volume
        return {s: mask_image(m, volume) for s, m in state.masks(self._soft_arrays(state)).items()}

    def corrected_masks(self) -> Dict[str, sitk.Image]:
        """The segments as they are now (with the user's edits) on the volume's grid."""
        state = self._require_state()
        volume = self.params.result_volume
        segmentation = self.params.segmentation
        return {s: mask_image(segment_mask_array(segmentation, s, volume), volume) for s in state.structures}

    def soft_map_images(self) -> Dict[str, sitk.Image]:
        """The soft maps as SimpleITK images on the volume's grid."""
        state = self._require_state()
        volume = self.params.result_volume
        return {s: _with_geometry(sitk.GetImageFromArray(a), volume) for s, a in self._soft_arrays(state).items()}

    def save(self, plan: OutputPlan, rater: str, save_soft_maps: bool = False,
             model: Optional[str] = None) -> SavedCorrection:
        """Save the corrected masks on the scan file's grid, with sidecars, and log the correction."""
        state = self._require_state()
        volume = self.params.result_volume
        return save_correction(
            corrected=self.corrected_masks(),
            automatic=self.automatic_masks(),
            provenance=self.provenance,
            thresholds=state.thresholds,
            source=scan_source_name(volume),
            plan=plan,
            rater=rater,
            seconds=self.tracker.seconds_spent(),
            scan_path=volume_file_path(volume),
            soft_maps=self.soft_map_images() if save_soft_maps else None,
            model=model,
            options=state.options,
        )
