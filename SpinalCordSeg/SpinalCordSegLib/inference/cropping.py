"""Crop boxes around the cord: padding per anatomical face, crop, uncrop, truncation.

A :class:`CropBox` is a block of voxels of the scan's own grid (SimpleITK
index order x, y, z). It is grown by a padding in mm per anatomical face,
the way the Spinal Cord Toolbox pads the box of its sc-crop detector
(``crop_metadata.json`` of a model release: ``pad_superior``,
``pad_inferior``, ``pad_left``, ``pad_right``, ``pad_anterior``,
``pad_posterior``): each face moves out by ``ceil(mm / spacing)`` voxels
and stops at the image border. Which index end of an axis is "left" or
"superior" comes from the scan's direction cosines, so a box means the same
anatomy in every orientation.

This module imports only numpy and SimpleITK: the Slicer panel uses it to
show the box as an ROI and to read the user's ROI back (:func:`box_to_roi`,
:func:`box_from_roi`).

Example:
    >>> import SimpleITK as sitk
    >>> image = sitk.Image([100, 80, 20], sitk.sitkFloat32)
    >>> box = pad_box(CropBox((40, 30, 5), (10, 10, 5), "mask"), image, uniform_padding(3.0))
    >>> box.index, box.size
    ((37, 27, 2), (16, 16, 11))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, ModelFolderError
from ..imaging.fileutil import read_json

#: The padding keys of ``crop_metadata.json`` (SCT's ``CROP_PAD_KEYS``), in mm.
CROP_PAD_KEYS = ("pad_superior", "pad_inferior", "pad_left", "pad_right", "pad_anterior", "pad_posterior")
CROP_METADATA_FILE = "crop_metadata.json"
#: How many folders above a results folder ``crop_metadata.json`` may sit (the
#: release zip's root; the same depth the results folder is searched at).
_METADATA_SEARCH_DEPTH = 3
#: SCT's names of the box faces, by image axis: (low-index face, high-index face).
FACE_KEYS = (("xmin", "xmax"), ("ymin", "ymax"), ("zmin", "zmax"))
# SimpleITK's physical space is LPS: +x points left, +y posterior, +z superior.
_TOWARD = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))


@dataclass(frozen=True)
class CropBox:
    """Voxels ``index`` to ``index + size - 1`` of the scan's grid (x, y, z), and where the box came from.

    ``source`` is ``"sc-crop"``, ``"localizer"``, ``"mask"`` or ``"user"``.
    """

    index: Tuple[int, int, int]
    size: Tuple[int, int, int]
    source: str

    @property
    def upper(self) -> Tuple[int, int, int]:
        """One past the last voxel of each axis."""
        return tuple(i + s for i, s in zip(self.index, self.size))

    def covers(self, image_size: Sequence[int]) -> bool:
        """True when the box is the whole image."""
        return tuple(self.index) == (0, 0, 0) and tuple(self.size) == tuple(int(s) for s in image_size)

    def to_dict(self) -> dict:
        """JSON form for the sidecar and the worker: SCT's inclusive ``xmin`` ... ``zmax`` and the source."""
        data: Dict[str, object] = {"source": self.source}
        for axis, (low, high) in enumerate(FACE_KEYS):
            data[low], data[high] = int(self.index[axis]), int(self.index[axis] + self.size[axis] - 1)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "CropBox":
        """Inverse of :meth:`to_dict` (``source`` defaults to ``"user"``)."""
        try:
            low = [int(data[k]) for k, _ in FACE_KEYS]
            high = [int(data[k]) for _, k in FACE_KEYS]
        except (KeyError, TypeError, ValueError) as error:
            raise InputImageError(f"crop box {dict(data)!r}: needs integer xmin..zmax ({error})") from None
        if any(h < lo for lo, h in zip(low, high)):
            raise InputImageError(f"crop box {dict(data)!r}: a max is below its min")
        return cls(tuple(low), tuple(h - lo + 1 for lo, h in zip(low, high)), str(data.get("source", "user")))

    def clipped(self, image_size: Sequence[int]) -> "CropBox":
        """The part of the box inside an image of ``image_size``; raises InputImageError when none is."""
        low = [max(0, int(i)) for i in self.index]
        high = [min(int(n), int(u)) for n, u in zip(image_size, self.upper)]
        if any(h <= lo for lo, h in zip(low, high)):
            raise InputImageError(f"crop box {self.to_dict()} lies outside the image ({list(image_size)} voxels)")
        return replace(self, index=tuple(low), size=tuple(h - lo for lo, h in zip(low, high)))


def uniform_padding(margin_mm: float) -> Dict[str, float]:
    """The same margin on all six faces."""
    return {key: float(margin_mm) for key in CROP_PAD_KEYS}


def axis_faces(image: sitk.Image) -> List[Tuple[str, str]]:
    """(low-index face, high-index face) of each image axis, e.g. ``("right", "left")`` for an L axis.

    Oblique scans take the closest anatomical axis, as nibabel's ``io_orientation`` does.
    """
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    faces = []
    for axis in range(3):
        column = direction[:, axis]
        world = int(np.argmax(np.abs(column)))
        negative, positive = _TOWARD[world]
        faces.append((negative, positive) if column[world] > 0 else (positive, negative))
    return faces


def superior_inferior_axis(image: sitk.Image) -> int:
    """The image axis that runs along the body (superior-inferior)."""
    return next(axis for axis, faces in enumerate(axis_faces(image)) if "superior" in faces)


def pad_box(box: CropBox, image: sitk.Image, padding_mm: Mapping[str, float]) -> CropBox:
    """Grow ``box`` by ``padding_mm`` (``pad_<face>`` -> mm) on each anatomical face, within the image.

    A face moves out by ``ceil(mm / spacing)`` voxels, as sc-crop pads its box.
    """
    spacing, size = image.GetSpacing(), image.GetSize()
    low, high = list(box.index), list(box.upper)
    for axis, (low_face, high_face) in enumerate(axis_faces(image)):
        low[axis] = max(0, low[axis] - int(math.ceil(float(padding_mm[f"pad_{low_face}"]) / spacing[axis])))
        high[axis] = min(size[axis], high[axis] + int(math.ceil(float(padding_mm[f"pad_{high_face}"]) / spacing[axis])))
    return replace(box, index=tuple(low), size=tuple(h - lo for lo, h in zip(low, high)))


def box_of_mask(mask: sitk.Image, image: sitk.Image, source: str) -> Optional[CropBox]:
    """The tight box of ``mask > 0`` on ``image``'s grid (resampled there if needed), or None when empty."""
    from ..imaging.grid import same_grid

    if not same_grid(image, mask):
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    array = sitk.GetArrayViewFromImage(mask) > 0
    if not array.any():
        return None
    nonzero = np.nonzero(array)  # numpy order z, y, x
    low = [int(nonzero[2 - axis].min()) for axis in range(3)]
    high = [int(nonzero[2 - axis].max()) + 1 for axis in range(3)]
    return CropBox(tuple(low), tuple(h - lo for lo, h in zip(low, high)), source)


def crop(image: sitk.Image, box: CropBox) -> sitk.Image:
    """The voxels of ``box`` (origin moved so they keep their physical place)."""
    return sitk.RegionOfInterest(image, [int(s) for s in box.size], [int(i) for i in box.index])


def uncrop(cropped: sitk.Image, reference: sitk.Image, box: CropBox) -> sitk.Image:
    """``cropped`` pasted at ``box`` into a float32 image of zeros on ``reference``'s grid."""
    full = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
    full.CopyInformation(reference)
    return sitk.Paste(full, sitk.Cast(cropped, sitk.sitkFloat32), cropped.GetSize(), [0, 0, 0],
                      [int(i) for i in box.index])


def truncated_faces(mask: np.ndarray, box: CropBox, image_size: Sequence[int]) -> List[str]:
    """Box faces (SCT's keys ``xmin`` ... ``zmax``) inside the image that ``mask`` touches.

    ``mask`` is the binarized prediction on the whole grid (numpy order z, y, x),
    as sc-crop's ``check_seg_truncation`` reads it: a structure on an inner face
    of the box probably goes on beyond it.
    """
    touched = []
    for axis, (low_key, high_key) in enumerate(FACE_KEYS):
        numpy_axis = 2 - axis
        if box.upper[axis] < image_size[axis] and np.take(mask, box.upper[axis] - 1, axis=numpy_axis).any():
            touched.append(high_key)
        if box.index[axis] > 0 and np.take(mask, box.index[axis], axis=numpy_axis).any():
            touched.append(low_key)
    return touched


def face_names(keys: Sequence[str], image: sitk.Image) -> List[str]:
    """Anatomical names of SCT's face keys on this scan (``zmax`` -> ``superior``...)."""
    faces = axis_faces(image)
    return [faces["xyz".index(key[0])][key.endswith("max")] for key in keys]


def cropbox_image(box: CropBox, reference: sitk.Image) -> sitk.Image:
    """The box as a uint8 mask (1 inside) on ``reference``'s grid: SCT's ``*_cropbox.nii.gz``."""
    array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
    (x0, y0, z0), (x1, y1, z1) = box.index, box.upper
    array[z0:z1, y0:y1, x0:x1] = 1
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def load_crop_metadata(model_path: Union[str, Path], required: bool = False) -> Optional[Dict[str, float]]:
    """The padding (mm per face) in a model's ``crop_metadata.json``, or None when the model has none.

    The file sits at the root of the release zip, so it is looked for in the
    results folder and up to three folders above it. Every key of
    :data:`CROP_PAD_KEYS` must be there (as SCT requires, so that the crop
    never depends on a detector's own defaults).

    Raises ModelFolderError naming the file when ``required`` (the catalogue
    says the model was trained on cropped scans) and it is missing, or when
    it is unreadable or incomplete.
    """
    folder = Path(model_path)
    candidates = [folder, *list(folder.parents)[:_METADATA_SEARCH_DEPTH]]
    path = next((c / CROP_METADATA_FILE for c in candidates if (c / CROP_METADATA_FILE).is_file()), None)
    if path is None:
        if required:
            raise ModelFolderError(
                f"{folder / CROP_METADATA_FILE}: not found; this model was trained on scans cropped around the "
                "cord and its release must carry this file (the crop padding). Reinstall the model "
                "('spinalcordseg models install ID --force') or check its release assets."
            )
        return None
    data = read_json(path, "JSON", ModelFolderError)
    missing = [key for key in CROP_PAD_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise ModelFolderError(f"{path}: padding key(s) {missing} missing; all of {list(CROP_PAD_KEYS)} are needed")
    padding = {}
    for key in CROP_PAD_KEYS:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1000:
            raise ModelFolderError(f"{path}: {key} must be a number of mm between 0 and 1000, not {value!r}")
        padding[key] = float(value)
    return padding


def _ras_corners(box: CropBox, image: sitk.Image) -> np.ndarray:
    """RAS points of the outer voxel edges of the box (8 x 3)."""
    corners = []
    for x in (box.index[0] - 0.5, box.upper[0] - 0.5):
        for y in (box.index[1] - 0.5, box.upper[1] - 0.5):
            for z in (box.index[2] - 0.5, box.upper[2] - 0.5):
                lps = image.TransformContinuousIndexToPhysicalPoint((x, y, z))
                corners.append((-lps[0], -lps[1], lps[2]))
    return np.array(corners)


def box_to_roi(box: CropBox, image: sitk.Image) -> Tuple[List[float], List[float]]:
    """(centre, size) in RAS mm of the axis-aligned ROI that holds the box: a Slicer ROI node's values.

    >>> image = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    >>> box_to_roi(CropBox((2, 2, 2), (4, 4, 4), "user"), image)
    ([-3.5, -3.5, 3.5], [4.0, 4.0, 4.0])
    """
    corners = _ras_corners(box, image)
    low, high = corners.min(axis=0), corners.max(axis=0)
    return [float(v) for v in (low + high) / 2], [float(v) for v in high - low]


def box_from_roi(center_ras: Sequence[float], size_ras: Sequence[float], image: sitk.Image,
                 source: str = "user") -> CropBox:
    """The voxels of ``image`` inside an axis-aligned RAS ROI (Slicer's ROI node), within the image.

    Raises InputImageError when the ROI misses the image.
    """
    center, half = np.asarray(center_ras, float), np.abs(np.asarray(size_ras, float)) / 2
    indices = []
    for corner in np.array(np.meshgrid(*[(-1, 1)] * 3)).reshape(3, -1).T:
        ras = center + corner * half
        indices.append(image.TransformPhysicalPointToContinuousIndex((-ras[0], -ras[1], ras[2])))
    indices = np.array(indices)
    # Voxel centres inside the ROI; the tolerance keeps a box -> ROI -> box round trip exact.
    low = np.floor(indices.min(axis=0) + 0.5 + 1e-6).astype(int)
    high = np.ceil(indices.max(axis=0) - 0.5 - 1e-6).astype(int) + 1
    return CropBox(tuple(int(v) for v in low), tuple(int(v) for v in high - low), source).clipped(image.GetSize())
