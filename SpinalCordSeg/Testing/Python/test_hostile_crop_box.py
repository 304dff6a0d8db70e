"""Hostile crop boxes in the Slicer panel: a box off the scan, rotated, transformed or with NaN corners.

Each is refused before anything runs, with a message naming the box and
what to do; the scene and the work folder stay as they were. Real MRML
(slicer-core) and real Markups ROI nodes.
"""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from SpinalCordSegLib.errors import InputImageError  # noqa: E402
from SpinalCordSegLib.inference.cropping import CropBox  # noqa: E402
from SpinalCordSegLib.panel.segmentation_controller import SegmentationController  # noqa: E402
from SpinalCordSegLib.panel.slicer_scene import add_volume_from_image, new_parameter_node  # noqa: E402


def never(question):
    raise AssertionError(f"the panel asked: {question}")


@pytest.fixture
def shown(mrml_scene, tmp_path):
    """A controller with results and the crop box shown as an ROI."""
    (tmp_path / "temp").mkdir()
    controller = SegmentationController(lambda: new_parameter_node(mrml_scene), None, temp_root=tmp_path / "temp")
    soft = np.zeros((6, 8, 8), np.float32)
    soft[1:5, 2:6, 2:6] = 0.9
    image = sitk.GetImageFromArray(soft)
    volume = add_volume_from_image(mrml_scene, image, "scan")
    controller.params.input_volume = volume
    controller.params.set("Model", "demo-sc-lesion")
    controller.results.show(volume, {"sc": image}, {"sc": {"Name": "SpinalCordSeg"}})
    roi = controller.results.show_crop_box(CropBox((1, 1, 1), (4, 4, 3), "localizer").to_dict(), volume)
    yield controller, roi, tmp_path / "temp"
    controller.close()


def _refused(controller, work, match):
    with pytest.raises(InputImageError, match=match):
        controller.start_apply(never)
    assert not controller.busy and not list(work.iterdir())


def test_a_box_moved_off_the_scan_is_refused(shown):
    controller, roi, work = shown
    roi.SetCenter([500.0, 500.0, 500.0])
    _refused(controller, work, "lies outside the image")


def test_a_rotated_box_is_refused(shown):
    controller, roi, work = shown
    roi.SetAndObserveObjectToNodeMatrix(vtk_rotation(30.0))  # the ROI's rotation handles
    _refused(controller, work, "is rotated")


def test_a_box_under_a_transform_is_refused(shown, mrml_scene):
    controller, roi, work = shown
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    roi.SetAndObserveTransformNodeID(transform.GetID())
    _refused(controller, work, "under a transform")


def test_a_box_with_nan_corners_is_refused(shown):
    controller, roi, work = shown
    roi.SetSize([float("nan")] * 3)
    _refused(controller, work, "not a number")


def vtk_rotation(degrees):
    import vtk

    transform = vtk.vtkTransform()
    transform.RotateZ(degrees)
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(transform.GetMatrix())
    return matrix
