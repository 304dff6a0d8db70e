"""Crop boxes: SCT's padding per anatomical face, crop/uncrop, truncation, crop_metadata.json, ROIs.

The box logic is checked on the bundled sample and, where present, the shared
scans, in all their orientations (and re-oriented copies): a box must mean the same anatomy whatever the voxel
order, which is what makes a model's ``crop_metadata.json`` padding land
where SCT puts it.
"""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.inference.cropping import (CROP_PAD_KEYS, CropBox, axis_faces, box_from_roi, box_of_mask, box_to_roi,
                                       crop, cropbox_image, face_names, load_crop_metadata, pad_box,
                                       truncated_faces, uncrop)
from SpinalCordSegLib.errors import InputImageError, ModelFolderError
from SpinalCordSegLib.imaging.grid import same_grid
from SpinalCordSegLib.imaging.image_io import orientation_of, read_scan, reorient

# Shared scan -> its cord mask (sct_testing_data).
CORD_SCANS = {
    "t2/t2.nii.gz": "t2/t2_seg-manual.nii.gz",
    "t1/t1w.nii.gz": "t1/t1w_seg-manual.nii.gz",
    "t2s/t2s.nii.gz": "t2s/t2s_seg-deepseg.nii.gz",
    "mt/mt1.nii.gz": "mt/mt1_seg.nii.gz",
}
ORIENTATIONS = ("RAS", "LPI", "PSR", "AIL", "SLA")
# Different on every face, as a release's crop_metadata.json may be (SCT's lesion_ms values).
PADDING = {"pad_superior": 40.0, "pad_inferior": 100.0, "pad_left": 15.0, "pad_right": 5.0,
           "pad_anterior": 10.0, "pad_posterior": 22.0}


def _scan_and_mask(shared_data, relative):
    scans = shared_data / "sct_testing_data"
    return read_scan(scans / relative), sitk.ReadImage(str(scans / CORD_SCANS[relative]))


def _sample_and_mask(sample_data):
    """The bundled sample (PSR, 0.8 mm) and its cord mask."""
    return read_scan(sample_data.scan), sitk.ReadImage(str(sample_data.cord))


def test_faces_follow_the_direction_cosines():
    image = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    assert axis_faces(reorient(image, "RAS")) == [("left", "right"), ("posterior", "anterior"),
                                                  ("inferior", "superior")]
    assert axis_faces(reorient(image, "PSR")) == [("anterior", "posterior"), ("inferior", "superior"),
                                                  ("left", "right")]


def test_padding_means_the_same_anatomy_in_every_orientation(sample_data):
    _check_padding(*_sample_and_mask(sample_data))


def test_padding_means_the_same_anatomy_on_every_shared_scan(shared_data):
    for relative in sorted(CORD_SCANS):  # other contrasts, spacings and orientations
        _check_padding(*_scan_and_mask(shared_data, relative))


def _check_padding(scan, mask):
    reference = reorient(scan, "RAS")
    tight = box_of_mask(reorient(mask, "RAS"), reference, "mask")
    padded = pad_box(tight, reference, PADDING)
    # In RAS, index grows toward right, anterior, superior: each low face takes the opposite face's padding.
    spacing, size = reference.GetSpacing(), reference.GetSize()
    for axis, (low_key, high_key) in enumerate([("pad_left", "pad_right"), ("pad_posterior", "pad_anterior"),
                                                ("pad_inferior", "pad_superior")]):
        low = max(0, tight.index[axis] - int(np.ceil(PADDING[low_key] / spacing[axis])))
        high = min(size[axis], tight.upper[axis] + int(np.ceil(PADDING[high_key] / spacing[axis])))
        assert (padded.index[axis], padded.upper[axis]) == (low, high)
    expected = sitk.GetArrayFromImage(cropbox_image(padded, reference))
    for orientation in ORIENTATIONS + (orientation_of(scan),):
        oriented, oriented_mask = reorient(scan, orientation), reorient(mask, orientation)
        box = pad_box(box_of_mask(oriented_mask, oriented, "mask"), oriented, PADDING)
        back = reorient(cropbox_image(box, oriented), "RAS")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected, err_msg=orientation)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_crop_and_uncrop_keep_the_grid_and_the_voxels(sample_data, orientation):
    scan, mask = _sample_and_mask(sample_data)
    scan, mask = reorient(scan, orientation), reorient(mask, orientation)
    box = pad_box(box_of_mask(mask, scan, "mask"), scan, PADDING)
    cropped = crop(scan, box)
    assert cropped.GetSize() == box.size
    # The cropped voxels keep their physical place.
    first = scan.TransformIndexToPhysicalPoint([int(i) for i in box.index])
    np.testing.assert_allclose(cropped.GetOrigin(), first, atol=1e-6)
    back = uncrop(cropped, scan, box)
    assert same_grid(back, scan)
    values, original = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(scan).astype(np.float32)
    inside = sitk.GetArrayFromImage(cropbox_image(box, scan)).astype(bool)
    np.testing.assert_array_equal(values[inside], original[inside])
    assert not values[~inside].any() and (~inside).any()


def test_truncation_names_only_inner_faces(sample_data):
    scan, mask = _sample_and_mask(sample_data)  # PSR: x posterior, y superior, z right
    box = CropBox((10, 0, 12), (30, 40, 20), "localizer")
    prediction = np.zeros(sitk.GetArrayViewFromImage(scan).shape, bool)
    prediction[20, 0:40, 10:40] = True  # numpy z, y, x: reaches x faces, y 0 (image border) and y max
    touched = truncated_faces(prediction, box, scan.GetSize())
    assert sorted(touched) == ["xmax", "xmin", "ymax"]
    assert face_names(["xmin", "xmax", "ymax", "zmin"], scan) == ["anterior", "posterior", "superior", "left"]
    inside = np.zeros_like(prediction)
    inside[20, 5:30, 15:30] = True
    assert truncated_faces(inside, box, scan.GetSize()) == []


def test_box_dict_round_trip_and_bad_boxes():
    box = CropBox((3, 4, 5), (10, 11, 12), "sc-crop")
    data = box.to_dict()
    assert data == {"source": "sc-crop", "xmin": 3, "xmax": 12, "ymin": 4, "ymax": 14, "zmin": 5, "zmax": 16}
    assert CropBox.from_dict(data) == box
    with pytest.raises(InputImageError, match="below its min"):
        CropBox.from_dict({**data, "xmax": 1})
    with pytest.raises(InputImageError, match="needs integer"):
        CropBox.from_dict({"xmin": 1})
    with pytest.raises(InputImageError, match="outside the image"):
        CropBox((50, 0, 0), (5, 5, 5), "user").clipped((40, 40, 40))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_roi_round_trip(sample_data, orientation):
    box = CropBox((2, 3, 1), (20, 15, 4), "localizer")
    # The sample's axes are the scanner's: box -> ROI -> box is exact.
    sample = read_scan(sample_data.scan)
    scan = reorient(sample, orientation)
    assert box_from_roi(*box_to_roi(box, scan), scan, "localizer") == box
    # An ROI reaching out of the scan is cut at its border.
    center, size = box_to_roi(box, scan)
    clipped = box_from_roi(center, [s * 100 for s in size], scan)
    assert clipped.covers(scan.GetSize()) and clipped.source == "user"
    # Tilted by 1 degree (slightly oblique, as t2s of SCT's data): the axis-aligned ROI holds the box and a little more.
    tilt = np.radians(1.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    sample.SetDirection((rotation @ np.array(sample.GetDirection()).reshape(3, 3)).ravel().tolist())
    oblique = reorient(sample, orientation)
    box = CropBox((1, 1, 1), tuple(n // 2 for n in oblique.GetSize()), "localizer")
    back = box_from_roi(*box_to_roi(box, oblique), oblique)
    assert all(b <= i for b, i in zip(back.index, box.index)) and all(b >= u for b, u in zip(back.upper, box.upper))
    assert sum(back.size) <= sum(box.size) + 8


def _results_folder_in_release(tiny_model, tmp_path):
    """A release layout: <root>/crop_metadata.json and <root>/<Dataset>/<results folder>."""
    root = tmp_path / "release"
    model = root / "Dataset900_Cord" / tiny_model.name
    shutil.copytree(tiny_model, model)
    return root, model


def test_crop_metadata_is_read_from_the_release_root(tiny_model, tmp_path):
    root, model = _results_folder_in_release(tiny_model, tmp_path)
    assert load_crop_metadata(model) is None
    with pytest.raises(ModelFolderError, match="crop_metadata.json: not found") as error:
        load_crop_metadata(model, required=True)
    assert str(model / "crop_metadata.json") in str(error.value)
    (root / "crop_metadata.json").write_text(json.dumps({**PADDING, "sc_crop_version": "0.12.1"}))
    assert load_crop_metadata(model, required=True) == PADDING
    (root / "crop_metadata.json").write_text(json.dumps({k: v for k, v in PADDING.items() if k != "pad_left"}))
    with pytest.raises(ModelFolderError, match=r"\['pad_left'\] missing") as error:
        load_crop_metadata(model)
    assert str(root / "crop_metadata.json") in str(error.value)
    (root / "crop_metadata.json").write_text(json.dumps({**PADDING, "pad_left": "15"}))
    with pytest.raises(ModelFolderError, match="pad_left must be a number"):
        load_crop_metadata(model)
    (root / "crop_metadata.json").write_text("{ broken")
    with pytest.raises(ModelFolderError, match="cannot read JSON"):
        load_crop_metadata(model)
    assert sorted(PADDING) == sorted(CROP_PAD_KEYS)
