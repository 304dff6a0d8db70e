"""Lesion morphometrics: one row per lesion, as SCT's ``sct_analyze_lesion``.

Lesions are the 26-connected components of the binarized lesion map (values
above the threshold). With a cord mask or soft map on the same grid, the cord
centreline (see :mod:`SpinalCordSegLib.measures.morphometrics`) corrects for the cord's
angle to the slices:

- ``volume_mm3``: number of voxels times the voxel volume.
- ``length_mm``: sum over the axial slices holding the lesion of the slice
  thickness divided by cos(angle), the length along the cord.
- ``max_equivalent_diameter_mm``: diameter of the disc whose area is the
  lesion's largest angle-corrected axial area.
- ``max_axial_damage_ratio``: largest lesion area over cord area on the same
  axial slice (Smith et al., Spinal Cord 2021). The cord area counts the cord
  and every lesion voxel, so a cord map that leaves lesions out (a softmax
  "cord" class) still gives the whole cord section.
- ``share_in_cord``: fraction of the lesion's voxels inside the binarized cord,
  meaningful for region-based models whose cord region includes the lesions.
- ``mean_probability`` / ``max_probability``: confidence of soft lesion maps
  over the lesion's voxels (NaN for binary masks).

Without a cord only volume, length (slices times thickness), diameter and
probabilities are given.

Example (SCT's testing data, a synthetic lesion in a T2w scan):
    >>> import SimpleITK as sitk
    >>> from SpinalCordSegLib.measures.lesion_metrics import lesion_metrics, lesion_totals
    >>> lesions = sitk.ReadImage("t2/t2_fake_lesion_lesion_seg.nii.gz")  # doctest: +SKIP
    >>> cord = sitk.ReadImage("t2/t2_fake_lesion_sc_seg.nii.gz")  # doctest: +SKIP
    >>> table = lesion_metrics(lesions, cord)  # doctest: +SKIP
    >>> table[["lesion", "volume_mm3", "length_mm", "max_axial_damage_ratio"]].round(2)  # doctest: +SKIP
       lesion  volume_mm3  length_mm  max_axial_damage_ratio
    0       1       83.46      10.46                    0.28
    >>> lesion_totals(table)["count"]  # doctest: +SKIP
    1
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ..imaging.binarization import DEFAULT_THRESHOLD, above
from ..imaging.grid import check_same_grid
from .morphometrics import (
    DEFAULT_CENTRELINE_DEGREE,
    AxialVolume,
    Centreline,
    check_probabilities,
    cord_centreline,
    to_axial_volume,
)

LESION_COLUMNS = (
    "lesion",
    "n_voxels",
    "volume_mm3",
    "length_mm",
    "max_equivalent_diameter_mm",
    "max_axial_damage_ratio",
    "share_in_cord",
    "mean_probability",
    "max_probability",
    "first_slice",
    "last_slice",
    "centroid_R_mm",
    "centroid_A_mm",
    "centroid_S_mm",
)


def label_lesions(binary: np.ndarray) -> np.ndarray:
    """Label the 26-connected components of a 3D binary array (0 = background).

    Labels follow the array's order: on an :class:`AxialVolume`, lesion 1 is
    the one reaching the most inferior slice.
    """
    labels, _ = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    return labels


def lesion_metrics(lesion: sitk.Image, cord: Optional[sitk.Image] = None, *,
                   threshold: float = DEFAULT_THRESHOLD,
                   centreline_degree: int = DEFAULT_CENTRELINE_DEGREE,
                   name: str = "lesion", cord_name: str = "cord") -> pd.DataFrame:
    """Per-lesion metrics (columns :data:`LESION_COLUMNS`); an empty table when there is no lesion.

    ``lesion`` and ``cord`` are binary masks or soft maps in [0, 1] on the
    same grid. ``first_slice``/``last_slice`` count axial slices from inferior
    to superior (as the cord table); ``centroid_*_mm`` is the lesion centre in
    RAS coordinates (Slicer's), to jump to it.
    """
    volume = to_axial_volume(lesion, name)
    check_probabilities(volume)
    cord_volume: Optional[AxialVolume] = None
    centreline: Optional[Centreline] = None
    if cord is not None:
        check_same_grid(lesion, cord, name, cord_name)
        cord_volume = to_axial_volume(cord, cord_name)
        check_probabilities(cord_volume)
        centreline = cord_centreline(cord_volume, threshold, centreline_degree)
    binary = above(volume.data, threshold)
    labels = label_lesions(binary)
    # Cosine of the cord's angle to the slice normal, per slice (1 without a cord).
    cosines = np.ones(volume.data.shape[0])
    if centreline is not None:
        cosines = centreline.tangent(np.arange(volume.data.shape[0]) * volume.spacing[2])[:, 2]
    soft = bool(np.any((volume.data > 0) & (volume.data < 1)))
    rows = [_measure_lesion(index, box, labels, volume, cord_volume, binary, cosines, soft, threshold)
            for index, box in enumerate(ndimage.find_objects(labels), start=1)]
    return pd.DataFrame(rows, columns=list(LESION_COLUMNS))


def lesion_totals(table: pd.DataFrame) -> Dict[str, float]:
    """Per-scan totals: lesion count, total and largest volume (mm3), largest axial damage ratio."""
    if table.empty:
        return {"count": 0, "total_volume_mm3": 0.0, "largest_volume_mm3": math.nan,
                "max_axial_damage_ratio": math.nan}
    return {
        "count": len(table),
        "total_volume_mm3": float(table["volume_mm3"].sum()),
        "largest_volume_mm3": float(table["volume_mm3"].max()),
        "max_axial_damage_ratio": float(table["max_axial_damage_ratio"].max()),
    }


def lesions_per_level(lesion: sitk.Image, level_per_slice: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD,
                      name: str = "lesion") -> pd.DataFrame:
    """Lesion count and volume per vertebral level (columns ``level``, ``n_lesions``, ``lesion_volume_mm3``).

    ``level_per_slice`` holds the level of each axial slice of ``lesion``'s
    grid, inferior to superior, 0 where none (see
    :func:`SpinalCordSegLib.measures.levels.levels_per_slice`). A level's
    volume counts the lesion voxels on its slices; its count, the lesions
    (26-connected) with a voxel there, so that a lesion across a disc counts
    at both levels (per-level volumes add up to the total, counts may not).
    Voxels on slices without a level make a row with level <NA>. The totals
    are in ``table.attrs`` (``total_lesions``, ``total_volume_mm3``).

    Example:
        >>> lesions_per_level(lesion, levels).query("level == 3")  # doctest: +SKIP
    """
    volume = to_axial_volume(lesion, name)
    check_probabilities(volume)
    levels = np.asarray(level_per_slice)
    if levels.shape != (volume.data.shape[0],):
        raise ValueError(f"{name}: {len(levels)} slice levels for {volume.data.shape[0]} axial slices")
    labels = label_lesions(above(volume.data, threshold))
    rows = []
    for level in sorted(set(levels[np.flatnonzero(labels.any(axis=(1, 2)))].tolist())):
        on_level = labels[levels == level]
        found = on_level[on_level > 0]
        rows.append({"level": level if level > 0 else pd.NA, "n_lesions": len(np.unique(found)),
                     "lesion_volume_mm3": float(found.size * volume.voxel_volume)})
    table = pd.DataFrame(rows, columns=["level", "n_lesions", "lesion_volume_mm3"])
    table["level"] = table["level"].astype("Int64")
    table.attrs.update(total_lesions=int(labels.max()),
                       total_volume_mm3=float((labels > 0).sum() * volume.voxel_volume))
    return table


def _measure_lesion(index: int, box: tuple, labels: np.ndarray, volume: AxialVolume,
                    cord_volume: Optional[AxialVolume], all_lesions: np.ndarray,
                    cosines: np.ndarray, soft: bool, threshold: float) -> Dict[str, float]:
    """Metrics of lesion ``index`` whose bounding box (slices) is ``box``."""
    voxels = labels[box] == index
    first = box[0].start
    slice_ids = first + np.flatnonzero(voxels.any(axis=(1, 2)))
    areas = voxels.sum(axis=(1, 2))[slice_ids - first] * volume.pixel_area
    values = volume.data[box][voxels]
    centre = np.mean(np.nonzero(voxels), axis=1) + [s.start for s in box]  # (k, j, i)
    lps = volume.image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre[::-1]])
    row: Dict[str, float] = {
        "lesion": index,
        "n_voxels": int(voxels.sum()),
        "volume_mm3": float(voxels.sum() * volume.voxel_volume),
        "length_mm": float(np.sum(volume.spacing[2] / cosines[slice_ids])),
        "max_equivalent_diameter_mm": float(2.0 * math.sqrt(np.max(areas * cosines[slice_ids]) / math.pi)),
        "max_axial_damage_ratio": math.nan,
        "share_in_cord": math.nan,
        "mean_probability": float(values.mean()) if soft else math.nan,
        "max_probability": float(values.max()) if soft else math.nan,
        "first_slice": int(slice_ids[0]),
        "last_slice": int(slice_ids[-1]),
        "centroid_R_mm": -lps[0],
        "centroid_A_mm": -lps[1],
        "centroid_S_mm": lps[2],
    }
    if cord_volume is not None:
        cord = above(cord_volume.data[box[0]], threshold)
        row["share_in_cord"] = float(cord[:, box[1], box[2]][voxels].sum() / voxels.sum())
        cord_pixels = (cord | all_lesions[box[0]]).sum(axis=(1, 2))[slice_ids - first]
        has_cord = cord.any(axis=(1, 2))[slice_ids - first]
        if has_cord.any():
            # Slices without any cord (lesion beyond the cord mask) have no ratio.
            ratios = areas[has_cord] / (cord_pixels[has_cord] * volume.pixel_area)
            row["max_axial_damage_ratio"] = float(ratios.max())
    return row
