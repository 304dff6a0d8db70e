"""Spinal cord morphometrics: cross-sectional area (CSA) and shape per axial slice.

The measures follow the Spinal Cord Toolbox (SCT, ``sct_process_segmentation``)
so that values compare with the field's:

- The mask is reoriented (SimpleITK ``DICOMOrient``) so that its axes increase
  toward Left, Anterior and Superior (SCT's "RPI"): slice ``k`` is the k-th
  axial slice from inferior to superior, as in SCT's per-slice tables.
- ``area_uncorrected_mm2`` = sum of the soft values of the slice times the pixel
  area (partial-volume aware; a binary mask gives the pixel count times the
  pixel area); ``area_binary_mm2`` is the angle-corrected area of the
  binarized slice (pixels above the threshold), equal to ``area_mm2`` for a
  binary mask.
- A centreline is fitted through the per-slice centroids (polynomials x(z) and
  y(z) in mm, SCT's ``polyfit``); ``angle_deg`` is the angle between its tangent
  and the slice normal, and ``area_mm2`` = ``area_uncorrected_mm2 * cos(angle)``,
  the area in the plane perpendicular to the cord.
- Diameters, eccentricity and orientation come from the second moments of the
  slice mapped onto that perpendicular plane (the ellipse with the same moments,
  as ``skimage.measure.regionprops``); the major/minor axis is the RL or AP
  diameter depending on whether it lies within 45 degrees of the RL axis (SCT's
  rule). Solidity is the area inside the cord outline over that of its convex
  hull.

Example (SCT's testing data, manual cord mask of a T2w scan):
    >>> import SimpleITK as sitk
    >>> from SpinalCordSegLib.measures.morphometrics import cord_morphometrics, summarize_cord
    >>> cord = sitk.ReadImage("t2/t2_seg-manual.nii.gz")  # doctest: +SKIP
    >>> per_slice = cord_morphometrics(cord)  # one row per slice: plot area_mm2 over z_mm  # doctest: +SKIP
    >>> summarize_cord(per_slice)[["n_slices", "area_mm2_mean", "area_mm2_sd"]].round(2)  # doctest: +SKIP
       n_slices  area_mm2_mean  area_mm2_sd
    0        55          77.48         4.04
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage import measure

from ..imaging.binarization import DEFAULT_THRESHOLD, above
from ..errors import InputImageError
from ..imaging.grid import check_same_grid
from ..imaging.image_io import read_image

logger = logging.getLogger(__name__)

# DICOM/ITK letters name the direction in which each axis increases: L, A, S is
# SCT's "RPI" (named after where each axis starts), so slice numbers match SCT.
AXIAL_ORIENTATION = "LAS"
# SCT's default polynomial degree for its "polyfit" centreline.
DEFAULT_CENTRELINE_DEGREE = 5
# Soft values are summed within this many pixels of the binarized cord: the
# partial-volume rim is kept, far-away network noise (tiny probabilities over
# thousands of pixels) is not.
RIM_PIXELS = 3
# Tolerance on values slightly outside [0, 1] after resampling or float storage.
_VALUE_TOLERANCE = 1e-4

# Per-slice metrics, in table order; summarize_cord() averages these.
CORD_METRICS = (
    "area_mm2",
    "area_uncorrected_mm2",
    "area_binary_mm2",
    "diameter_AP_mm",
    "diameter_RL_mm",
    "eccentricity",
    "orientation_deg",
    "solidity",
    "angle_deg",
    "angle_AP_deg",
    "angle_RL_deg",
    "length_mm",
)


@dataclass(frozen=True)
class AxialVolume:
    """A 3D image as a stack of axial slices (array axes: S, A, L).

    ``data[k, j, i]`` is voxel (i toward Left, j toward Anterior) of slice ``k``
    (counted from inferior to superior). ``spacing`` is (x, y, z) in mm.
    ``z_mm`` is each slice's position along the slice normal, which is the
    superior (S) coordinate for scans aligned with the body axes.
    ``image`` is the reoriented SimpleITK image, for index-to-physical mapping.
    """

    data: np.ndarray
    spacing: Tuple[float, float, float]
    z_mm: np.ndarray
    image: sitk.Image
    name: str

    @property
    def pixel_area(self) -> float:
        """Area of one in-plane pixel in mm2."""
        return self.spacing[0] * self.spacing[1]

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm3."""
        return self.spacing[0] * self.spacing[1] * self.spacing[2]


@dataclass(frozen=True)
class Centreline:
    """Smooth cord centreline x(z), y(z) in mm, fitted on slices z_min..z_max (mm)."""

    x: np.polynomial.Polynomial
    y: np.polynomial.Polynomial
    z_min: float
    z_max: float

    def tangent(self, z: np.ndarray) -> np.ndarray:
        """Unit tangent vectors (n, 3) at heights ``z`` (mm, slice index times z spacing).

        Outside the fitted range the tangent of the nearest end is used, so that
        lesions beyond the cord mask do not get an extrapolated polynomial's angle.
        """
        z = np.clip(np.atleast_1d(np.asarray(z, dtype=float)), self.z_min, self.z_max)
        vectors = np.stack([self.x.deriv()(z), self.y.deriv()(z), np.ones_like(z)], axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load_image(path: Union[str, Path]) -> sitk.Image:
    """Read an image file (see ``image_io.read_image``); raise InputImageError naming the file if it cannot be used."""
    return read_image(path)


def to_axial_volume(image: sitk.Image, name: str = "image") -> AxialVolume:
    """Reorient a 3D scalar image to axial slices ordered inferior to superior.

    Raises InputImageError (naming ``name``) for non-3D, multi-component or non-finite images.
    """
    if image.GetDimension() != 3:
        raise InputImageError(f"{name}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{name}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} components"
        )
    reoriented = sitk.DICOMOrient(image, AXIAL_ORIENTATION)
    data = sitk.GetArrayFromImage(reoriented).astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise InputImageError(f"{name}: contains NaN or infinite values")
    spacing = tuple(float(s) for s in reoriented.GetSpacing())
    normal = np.array(reoriented.GetDirection()).reshape(3, 3)[:, 2]
    z_mm = float(np.dot(reoriented.GetOrigin(), normal)) + np.arange(data.shape[0]) * spacing[2]
    return AxialVolume(data=data, spacing=spacing, z_mm=z_mm, image=reoriented, name=name)


def check_probabilities(volume: AxialVolume) -> None:
    """Raise InputImageError unless the values are a binary mask or a probability map in [0, 1]."""
    low, high = float(volume.data.min()), float(volume.data.max())
    if low < -_VALUE_TOLERANCE or high > 1 + _VALUE_TOLERANCE:
        raise InputImageError(
            f"{volume.name}: values must lie in [0, 1] (a binary mask or a probability map); "
            f"found {low:g} to {high:g}"
        )


def fit_centreline(z: np.ndarray, x: np.ndarray, y: np.ndarray,
                   degree: int = DEFAULT_CENTRELINE_DEGREE) -> Optional[Centreline]:
    """Fit x(z) and y(z) polynomials (all in mm); None with fewer than two points.

    The degree is capped at half the number of points, so that a few thick
    slices (e.g. 5 slices of 17 mm) get a line or a parabola, not an
    interpolating polynomial that follows the centroids' pixel noise.
    """
    if len(z) < 2:
        return None
    degree = min(degree, max(1, (len(z) - 1) // 2))
    return Centreline(
        x=np.polynomial.Polynomial.fit(z, x, degree),
        y=np.polynomial.Polynomial.fit(z, y, degree),
        z_min=float(np.min(z)),
        z_max=float(np.max(z)),
    )


def slice_weights(volume: AxialVolume, k: int,
                  threshold: float = DEFAULT_THRESHOLD) -> Tuple[np.ndarray, np.ndarray]:
    """Soft weights of slice ``k`` restricted to the cord's neighbourhood, and its binarized mask."""
    values = volume.data[k]
    binary = above(values, threshold)
    rim = ndimage.binary_dilation(binary, structure=np.ones((3, 3), bool), iterations=RIM_PIXELS)
    return np.where(rim, values, 0.0), binary


def cord_centreline(volume: AxialVolume, threshold: float = DEFAULT_THRESHOLD,
                    degree: int = DEFAULT_CENTRELINE_DEGREE) -> Optional[Centreline]:
    """Centreline through the soft-weighted centroids of the slices holding cord (None below two)."""
    heights, xs, ys = [], [], []
    for k in np.flatnonzero(above(volume.data, threshold).any(axis=(1, 2))):
        weights, _ = slice_weights(volume, k, threshold)
        x_mm, y_mm = _centroid(weights, volume.spacing[:2])
        heights.append(k * volume.spacing[2])
        xs.append(x_mm)
        ys.append(y_mm)
    centreline = fit_centreline(np.array(heights), np.array(xs), np.array(ys), degree)
    if centreline is None:
        logger.warning("%s: cord on fewer than two slices: no angle correction", volume.name)
    return centreline


def perpendicular_basis(tangent: np.ndarray) -> np.ndarray:
    """Matrix (2, 2) mapping in-slice offsets (x, y in mm) to the plane perpendicular to the cord.

    Row 0 is the cord's own RL axis (the image x axis with its tangent part
    removed), row 1 its AP axis. Points of the slice are projected along the
    cord, so an oblique cut through a cylinder maps back to its true section;
    the determinant is cos(angle between the tangent and the slice normal).
    """
    tangent = tangent / np.linalg.norm(tangent)
    rl = np.array([1.0, 0.0, 0.0]) - tangent[0] * tangent
    rl /= np.linalg.norm(rl)
    ap = np.cross(tangent, rl)
    return np.array([rl[:2], ap[:2]])


def tangent_angles(tangent: np.ndarray) -> Dict[str, float]:
    """Angles (degrees) between the centreline tangent and the slice normal.

    ``angle_deg`` is the 3D angle; ``angle_AP_deg`` is its part about the AP
    axis (in the coronal plane) and ``angle_RL_deg`` its part about the RL axis
    (in the sagittal plane), SCT's angle_AP and angle_RL.
    """
    return {
        "angle_deg": math.degrees(math.acos(min(1.0, abs(tangent[2])))),
        "angle_AP_deg": math.degrees(math.atan2(tangent[0], tangent[2])),
        "angle_RL_deg": math.degrees(math.atan2(tangent[1], tangent[2])),
    }


def slice_shape(weights: np.ndarray, pixel: Tuple[float, float], tangent: np.ndarray,
                threshold: float = DEFAULT_THRESHOLD) -> Dict[str, float]:
    """Area and shape of one axial slice of the cord, in the plane perpendicular to ``tangent``.

    ``weights`` are the soft (or binary) values of the slice, ``pixel`` the
    (x, y) pixel size in mm, ``threshold`` the level of the cord's outline
    (for solidity).
    """
    basis = perpendicular_basis(tangent)
    cos_angle = abs(np.linalg.det(basis))
    area_slice = float(weights.sum()) * pixel[0] * pixel[1]
    # Second moments of the slice, mapped onto the perpendicular plane.
    covariance = basis @ _covariance(weights, pixel) @ basis.T
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    minor, major = (4.0 * math.sqrt(max(value, 0.0)) for value in eigenvalues)
    major_axis = eigenvectors[:, 1]
    # Angle of the major axis from the RL axis, in [0, 90] degrees.
    orientation = math.degrees(math.atan2(abs(major_axis[1]), abs(major_axis[0])))
    if orientation < 45.0:
        diameter_rl, diameter_ap = major, minor
    else:
        diameter_rl, diameter_ap = minor, major
    return {
        "area_mm2": area_slice * cos_angle,
        "area_uncorrected_mm2": area_slice,
        "diameter_AP_mm": diameter_ap,
        "diameter_RL_mm": diameter_rl,
        "eccentricity": math.sqrt(max(0.0, 1.0 - eigenvalues[0] / eigenvalues[1])) if major > 0 else 0.0,
        "orientation_deg": orientation,
        "solidity": solidity(weights, threshold),
    }


def solidity(values: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Area inside the ``threshold`` iso-contour of a slice over the area of its convex hull.

    The contour is traced with sub-pixel precision (marching squares), as SCT
    measures solidity on a 5-times upsampled slice; holes count as missing
    area. A ratio of areas, it is the same in the slice and in the plane
    perpendicular to the cord (the projection between them is linear), and the
    same in pixel units as in mm.
    """
    contours = measure.find_contours(np.pad(values, 1), threshold, fully_connected="high",
                                     positive_orientation="high")
    if not contours:
        return math.nan
    # Shoelace formula: contours around holes wind the other way and subtract.
    area = abs(sum(0.5 * np.sum(c[:, 1] * np.roll(c[:, 0], -1) - np.roll(c[:, 1], -1) * c[:, 0])
                   for c in contours))
    points = np.concatenate(contours)
    if area == 0.0 or np.linalg.matrix_rank(points - points.mean(axis=0)) < 2:
        return math.nan
    return float(area / ConvexHull(points).volume)  # a 2D hull's "volume" is its area


def slice_levels(levels: sitk.Image, reference: sitk.Image, levels_name: str = "levels",
                 reference_name: str = "cord") -> np.ndarray:
    """Vertebral level of each axial slice (0 where none), from a level label image.

    The level of a slice is the rounded mean of its non-zero labels (SCT's
    rule), e.g. from ``sct_label_vertebrae`` (``*_labeled.nii.gz``: the cord
    mask whose voxels hold their level, 2 = C2, 8 = T1).
    """
    check_same_grid(reference, levels, reference_name, levels_name)
    data = to_axial_volume(levels, levels_name).data
    if data.min() < 0 or not np.allclose(data, np.round(data)):
        raise InputImageError(f"{levels_name}: a level image must hold non-negative integer labels")
    result = np.zeros(data.shape[0], dtype=int)
    for k, plane in enumerate(data):
        labels = plane[plane > 0]
        if labels.size:
            result[k] = int(np.round(labels.mean()))
    return result


def cord_morphometrics(cord: sitk.Image, levels: Optional[sitk.Image] = None, *,
                       threshold: float = DEFAULT_THRESHOLD, angle_correction: bool = True,
                       centreline_degree: int = DEFAULT_CENTRELINE_DEGREE,
                       name: str = "cord", levels_name: str = "levels",
                       level_per_slice: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Per-slice cord morphometrics, one row per axial slice from the first to the last slice with cord.

    ``cord`` is a binary mask or a soft (probability) map in [0, 1]; a slice
    holds cord where a value exceeds ``threshold``. Columns: ``slice`` (index
    from inferior to superior, SCT's numbering), ``z_mm`` (slice position along
    the S axis), ``level`` (when ``levels`` is given; <NA> where none),
    ``n_objects`` (2D connected pieces of the binarized cord; more than one
    hints at a false positive), then :data:`CORD_METRICS`. Slices inside the
    range without cord have NaN metrics. With ``angle_correction=False`` the
    cord is taken as perpendicular to the slices (SCT's ``-angle-corr 0``).
    ``level_per_slice`` (one level per axial slice, 0 = none; see
    :mod:`SpinalCordSegLib.measures.levels`) gives the levels instead of ``levels``.
    """
    volume = to_axial_volume(cord, name)
    check_probabilities(volume)
    present = np.flatnonzero(above(volume.data, threshold).any(axis=(1, 2)))
    if present.size == 0:
        raise InputImageError(f"{name}: the cord mask is empty (no value above {threshold:g})")
    centreline = cord_centreline(volume, threshold, centreline_degree) if angle_correction else None
    rows = []
    for k in range(present[0], present[-1] + 1):
        weights, binary = slice_weights(volume, k, threshold)
        row: Dict[str, float] = {"slice": k, "z_mm": float(volume.z_mm[k])}
        row["n_objects"] = ndimage.label(binary, structure=np.ones((3, 3), bool))[1]
        if row["n_objects"]:
            tangent = (centreline.tangent(k * volume.spacing[2])[0] if centreline is not None
                       else np.array([0.0, 0.0, 1.0]))
            row.update(slice_shape(weights, volume.spacing[:2], tangent, threshold))
            row.update(tangent_angles(tangent))
            row["area_binary_mm2"] = float(binary.sum()) * volume.pixel_area * math.cos(math.radians(row["angle_deg"]))
            row["length_mm"] = volume.spacing[2] / math.cos(math.radians(row["angle_deg"]))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["slice", "z_mm", "n_objects", *CORD_METRICS])
    if levels is not None:
        level_per_slice = slice_levels(levels, cord, levels_name, name)
    if level_per_slice is not None:
        per_slice = np.asarray(level_per_slice)[table["slice"].to_numpy()]
        table.insert(2, "level", pd.array([level if level > 0 else pd.NA for level in per_slice],
                                          dtype="Int64"))
    return table


def summarize_cord(per_slice: pd.DataFrame, slices: Optional[Tuple[int, int]] = None,
                   levels: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """Mean and SD of each metric over the selected slices: one row for all, one per level.

    ``slices`` is an inclusive (first, last) range of slice indices (SCT's
    ``-z``); ``levels`` keeps the slices of these vertebral levels (SCT's
    ``-vert``; needs the table's ``level`` column). SD is the population SD
    (SCT's). NaN slices are skipped. Columns: ``level`` (<NA> on the row for the
    whole selection), ``first_slice``, ``last_slice``, ``n_slices``, then
    ``<metric>_mean`` and ``<metric>_sd``. Raises InputImageError when the
    selection holds no measured slice.
    """
    selected = per_slice[per_slice["area_mm2"].notna()]
    if slices is not None:
        selected = selected[selected["slice"].between(slices[0], slices[1])]
    if levels is not None:
        if "level" not in selected.columns:
            raise InputImageError("levels were requested but no level image was given")
        selected = selected[selected["level"].isin(list(levels))]
    if selected.empty:
        measured = per_slice.loc[per_slice["area_mm2"].notna()]
        present = sorted(int(v) for v in measured["level"].dropna().unique()) if "level" in measured else []
        raise InputImageError(
            f"no measured cord slice in the selection (slices {slices}, levels {levels}); measured slices "
            f"{int(measured['slice'].min())} to {int(measured['slice'].max())}, levels present {present}"
        )
    groups: List[Tuple[object, pd.DataFrame]] = [(pd.NA, selected)]
    if "level" in selected.columns:
        groups += [(int(level), group) for level, group in selected.dropna(subset=["level"]).groupby("level")]
    rows = []
    for level, group in groups:
        row = {"level": level, "first_slice": int(group["slice"].min()),
               "last_slice": int(group["slice"].max()), "n_slices": len(group)}
        for metric in CORD_METRICS:
            row[f"{metric}_mean"] = group[metric].mean()
            row[f"{metric}_sd"] = group[metric].std(ddof=0)
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["level"] = summary["level"].astype("Int64")
    return summary


def _centroid(weights: np.ndarray, pixel: Tuple[float, float]) -> Tuple[float, float]:
    """Weighted centroid (x, y) in mm of a 2D slice, x along columns."""
    rows, columns = np.indices(weights.shape)
    total = weights.sum()
    return (float((columns * weights).sum() / total * pixel[0]),
            float((rows * weights).sum() / total * pixel[1]))


def _covariance(weights: np.ndarray, pixel: Tuple[float, float]) -> np.ndarray:
    """Weighted 2x2 covariance (x, y) in mm2 of the pixel centres of a slice (as regionprops)."""
    rows, columns = np.nonzero(weights)
    values = weights[rows, columns]
    points = np.stack([columns * pixel[0], rows * pixel[1]])
    centred = points - (points @ values / values.sum())[:, None]
    return (centred * values) @ centred.T / values.sum()
