"""Vertebral levels per axial slice, from disc labels, mid-vertebral labels or a labelled cord.

Three kinds of level images are read (``LEVEL_KINDS``):

- ``discs``: single-voxel intervertebral disc labels in the Spinal Cord
  Toolbox's numbering (``sct_label_utils``, ``sct_deepseg spine`` /
  TotalSpineSeg's ``step1_levels``, or discs clicked in the panel): a disc's
  value names the vertebra below it, 2 = C1-C2, 3 = C2-C3, 8 = C7-T1. Values
  49 and 50 (SCT's pontomedullary groove and junction) are not discs and are
  left out.
- ``bodies``: single-voxel labels at the middle of vertebral bodies
  (``sct_label_utils -vert-body``), 3 = C3.
- ``labelled``: a cord mask whose voxels hold their level
  (``sct_label_vertebrae``'s ``*_labeled.nii.gz``), read by
  :func:`SpinalCordSegLib.measures.morphometrics.slice_levels`.

SCT's rule for disc labels (``sct_process_segmentation -discfile``, SCT 7.x;
``spinalcordtoolbox.labels.project_centerline`` then
``label_regions_from_reference(..., centerline=True)``, and
``spinalcordtoolbox.template.get_slices_from_vertebral_levels``), which
:func:`levels_from_discs` follows:

1. the cord centreline has one point per axial slice, from the first to the
   last slice with cord;
2. each disc goes to the centreline point nearest to it in physical space;
3. with the discs sorted from inferior to superior along the centreline,
   a centreline point gets the value of the first disc at or above it (the
   vertebra below that disc); points above the top disc get its value minus
   one. So the slice of disc 3 (C2-C3) and the slices below it down to
   (not including) disc 4's slice are C3; slices above disc 3 are C2;
4. a slice's level is that of its centreline point (SCT rounds the mean of
   the labels on the slice, one here). Slices below the lowest disc keep its
   value, as in SCT.

Mid-vertebral labels have no rule in SCT's ``sct_process_segmentation`` (SCT
uses them to register to the PAM50 template); here (:func:`levels_from_bodies`)
each label is projected the same way and the centreline between labels is
mapped linearly onto the template's axis, so that levels between two labels
far apart (C2 and T2) follow the template's proportions.

The centreline is the project's (:func:`~SpinalCordSegLib.measures.morphometrics.cord_centreline`,
SCT's ``polyfit``); SCT's ``-discfile`` uses its ``bspline`` fit, which moves a
disc by at most one slice where two centreline points are nearly as close.

PAM50 normalization (:func:`normalize_to_pam50`) follows the idea of SCT's
``-normalize-PAM50`` (``spinalcordtoolbox.metrics_to_PAM50.interpolate_metrics``):
each complete level's slices are stretched linearly onto the PAM50 template's
slices of that level; the first and last levels present, which the field of
view may cut, are scaled by the mean stretch of the complete levels and
anchored at their disc inside the scan. The template's level extents
(:data:`PAM50_LEVEL_SLICES`) are constants of the PAM50 template (De Leener et
al., NeuroImage 2018; ``PAM50_levels.nii.gz``, MIT licence), as tabulated per
slice in the MIT-licensed ``spinalcordtoolbox/PAM50-normalized-metrics`` CSV
files (``Slice (I->S)``, ``VertLevel``).

Example:
    >>> import SimpleITK as sitk
    >>> from SpinalCordSegLib.measures.levels import LevelSource, level_tables
    >>> cord = sitk.ReadImage("sub-01_T2w_label-SC_probseg.nii.gz")  # doctest: +SKIP
    >>> source = LevelSource.read("discs", "sub-01_T2w_label-discs_dlabel.nii.gz")  # doctest: +SKIP
    >>> tables = level_tables(cord, source)  # doctest: +SKIP
    >>> tables.per_level[["level", "level_name", "area_mm2_mean"]]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.spatial import cKDTree

from ..errors import InputImageError
from ..imaging.binarization import DEFAULT_THRESHOLD, above
from ..imaging.grid import check_same_grid
from .morphometrics import (
    CORD_METRICS,
    DEFAULT_CENTRELINE_DEGREE,
    AxialVolume,
    _centroid,
    cord_centreline,
    cord_morphometrics,
    load_image,
    slice_levels,
    slice_weights,
    summarize_cord,
    to_axial_volume,
)

logger = logging.getLogger(__name__)

LEVEL_KINDS = ("discs", "bodies", "labelled")
#: SCT's labels that are landmarks, not discs (pontomedullary groove and junction).
NOT_DISCS = (49, 50)
#: More non-zero voxels than this is a mask, not point labels.
MAX_POINT_LABELS = 60
#: PAM50 template: slice thickness (mm) and, per vertebral level, its first and
#: last axial slice (from inferior, inclusive): PAM50_levels.nii.gz, 1 = C1 ... 20 = L1.
PAM50_SLICE_MM = 0.5
PAM50_LEVEL_SLICES: Dict[int, tuple] = {
    1: (939, 984), 2: (908, 938), 3: (871, 907), 4: (834, 870), 5: (801, 833), 6: (770, 800),
    7: (736, 769), 8: (693, 735), 9: (647, 692), 10: (601, 646), 11: (552, 600), 12: (501, 551),
    13: (450, 500), 14: (397, 449), 15: (343, 396), 16: (290, 342), 17: (232, 289), 18: (169, 231),
    19: (106, 168), 20: (40, 105),
}
_REGIONS = (("C", 1, 7), ("T", 8, 19), ("L", 20, 24), ("S", 25, 29))


def level_name(level: int) -> str:
    """Vertebra of a level number: 2 -> 'C2', 8 -> 'T1', 20 -> 'L1'; '' outside C1-S5."""
    for letter, first, last in _REGIONS:
        if first <= level <= last:
            return f"{letter}{level - first + 1}"
    return ""


def disc_name(disc: int) -> str:
    """Disc of SCT's disc number: 3 -> 'C2-C3' (the vertebra above, the one below it)."""
    above_name, below_name = level_name(disc - 1), level_name(disc)
    return f"{above_name}-{below_name}" if above_name and below_name else ""


@dataclass(frozen=True)
class PointLabel:
    """One point label: its value and its position (LPS, mm)."""

    value: int
    point: tuple


def point_labels(image: sitk.Image, name: str = "labels", skip: Sequence[int] = ()) -> List[PointLabel]:
    """The single-voxel labels of an image, sorted by value; values in ``skip`` are left out.

    Raises InputImageError (naming ``name``) for an image that is not made of a
    few positive integer labels, each value once.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{name}: expected a 3D label image with one value per voxel")
    data = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(data)):
        raise InputImageError(f"{name}: contains NaN or infinite values")
    where = np.argwhere(data != 0)
    if len(where) > MAX_POINT_LABELS:
        raise InputImageError(f"{name}: {len(where)} labelled voxels; point labels (discs, vertebral bodies) are "
                              f"single voxels. A cord labelled with its levels goes to --levels")
    values = data[tuple(where.T)]
    if np.any(values < 0) or not np.allclose(values, np.round(values)):
        raise InputImageError(f"{name}: labels must be positive integers (SCT's disc numbers, 3 = C2-C3)")
    labels = []
    for (k, j, i), value in zip(where, np.round(values).astype(int)):
        if value in skip:
            continue
        point = image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        labels.append(PointLabel(int(value), tuple(point)))
    counts = pd.Series([label.value for label in labels], dtype=int).value_counts()
    if (counts > 1).any():
        raise InputImageError(f"{name}: label(s) {sorted(counts[counts > 1].index.tolist())} appear on "
                              "several voxels; each disc or vertebra must be one voxel")
    if not labels:
        raise InputImageError(f"{name}: no disc or vertebra label (no non-zero voxel besides {list(skip)})")
    return sorted(labels, key=lambda label: label.value)


@dataclass(frozen=True)
class CordLine:
    """The cord centreline: one point (LPS, mm) per axial slice from the first to the last slice with cord."""

    slices: np.ndarray
    points: np.ndarray

    def nearest(self, labels: Sequence[PointLabel]) -> np.ndarray:
        """Index of the centreline point nearest to each label, in physical space (SCT's KD-tree query)."""
        _, indices = cKDTree(self.points).query(np.array([label.point for label in labels], float))
        return np.atleast_1d(indices)


def cord_line(volume: AxialVolume, threshold: float = DEFAULT_THRESHOLD,
              degree: int = DEFAULT_CENTRELINE_DEGREE) -> CordLine:
    """The centreline of a cord (binary or soft) as one physical point per slice (see :class:`CordLine`)."""
    present = np.flatnonzero(above(volume.data, threshold).any(axis=(1, 2)))
    if present.size == 0:
        raise InputImageError(f"{volume.name}: the cord mask is empty (no value above {threshold:g})")
    slices = np.arange(present[0], present[-1] + 1)
    centreline = cord_centreline(volume, threshold, degree)
    if centreline is None:  # cord on one slice: its centroid
        x_mm, y_mm = _centroid(slice_weights(volume, int(present[0]), threshold)[0], volume.spacing[:2])
        xs, ys = np.full(len(slices), x_mm), np.full(len(slices), y_mm)
    else:
        heights = slices * volume.spacing[2]
        xs, ys = centreline.x(heights), centreline.y(heights)
    points = np.array([volume.image.TransformContinuousIndexToPhysicalPoint(
        (float(x / volume.spacing[0]), float(y / volume.spacing[1]), float(k))) for x, y, k in zip(xs, ys, slices)])
    return CordLine(slices=slices, points=points)


def levels_from_discs(line: CordLine, discs: Sequence[PointLabel], name: str = "discs") -> np.ndarray:
    """Level of each centreline point from disc labels, by SCT's rule (see the module's docstring).

    Raises InputImageError when the discs' numbers do not decrease from
    inferior to superior (a misnumbered disc), which SCT would accept silently.
    """
    indices = line.nearest(discs)
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    values = np.array([discs[i].value for i in order])
    if np.any(np.diff(values) >= 0):
        listed = ", ".join(f"{v} at slice {line.slices[i]}" for v, i in zip(values, sorted_indices))
        raise InputImageError(f"{name}: disc numbers must decrease from inferior to superior along the cord; "
                              f"found (inferior first) {listed}")
    if len(set(sorted_indices.tolist())) < len(sorted_indices):
        logger.warning("%s: two discs project onto the same centreline point", name)
    regions = np.append(values, values[-1] - 1)
    return np.maximum(regions[np.searchsorted(sorted_indices, np.arange(len(line.slices)), side="left")], 0)


def levels_from_bodies(line: CordLine, bodies: Sequence[PointLabel], name: str = "bodies") -> np.ndarray:
    """Level of each centreline point from mid-vertebral labels (0 outside the labelled levels' reach).

    Between two labels the centreline is mapped linearly onto the PAM50
    template's axis, label centre onto level centre (what a registration to
    the template with these labels does along the cord), and a point takes
    the template's level there; beyond the end labels the neighbouring
    stretch goes on, up to the end levels' extents. Consecutive labels (C3,
    C4, C5) so split near halfway; two labels far apart (C2 and T2, SCT's
    usual registration labels) give every level between them in the
    template's proportions.
    """
    if len(bodies) < 2:
        raise InputImageError(f"{name}: mid-vertebral labels need at least two vertebrae to bound a level")
    outside = [b.value for b in bodies if b.value not in PAM50_LEVEL_SLICES]
    if outside:
        raise InputImageError(f"{name}: mid-vertebral label(s) {outside} are outside the PAM50 template's levels "
                              f"(1 = C1 to 20 = L1)")
    indices = line.nearest(bodies)
    order = np.argsort(indices, kind="stable")
    centres = indices[order].astype(float)
    values = np.array([bodies[i].value for i in order])
    if np.any(np.diff(values) >= 0) or np.any(np.diff(centres) == 0):
        listed = ", ".join(f"{v} at slice {line.slices[int(i)]}" for v, i in zip(values, centres))
        raise InputImageError(f"{name}: vertebra numbers must decrease from inferior to superior along the cord, "
                              f"one per position; found (inferior first) {listed}")
    template = np.array([np.mean(PAM50_LEVEL_SLICES[v]) for v in values])
    points = np.arange(len(line.slices), dtype=float)
    position = np.interp(points, centres, template)
    low, high = points < centres[0], points > centres[-1]
    position[low] = template[0] + (points[low] - centres[0]) * (template[1] - template[0]) / (centres[1] - centres[0])
    position[high] = template[-1] + (points[high] - centres[-1]) * (template[-1] - template[-2]) / (
        centres[-1] - centres[-2])
    # The template's levels from inferior to superior, each from first - 0.5 to last + 0.5.
    order_up = sorted(range(values.min(), values.max() + 1), key=lambda v: PAM50_LEVEL_SLICES[v][0])
    edges = [PAM50_LEVEL_SLICES[v][0] - 0.5 for v in order_up] + [PAM50_LEVEL_SLICES[order_up[-1]][1] + 0.5]
    slot = np.searchsorted(edges, position, side="right") - 1
    inside = (slot >= 0) & (slot < len(order_up))
    return np.where(inside, np.array(order_up)[np.clip(slot, 0, len(order_up) - 1)], 0)


@dataclass(frozen=True)
class LevelSource:
    """Where the levels come from: a kind (:data:`LEVEL_KINDS`), its image and a name for messages."""

    kind: str
    image: sitk.Image
    name: str = "levels"

    def __post_init__(self) -> None:
        if self.kind not in LEVEL_KINDS:
            raise ValueError(f"level kind {self.kind!r}: expected one of {LEVEL_KINDS}")

    @classmethod
    def read(cls, kind: str, path: Union[str, Path]) -> "LevelSource":
        """The level image at ``path`` (InputImageError naming it when it cannot be read)."""
        return cls(kind, load_image(path), str(path))


def levels_per_slice(cord: sitk.Image, source: LevelSource, threshold: float = DEFAULT_THRESHOLD,
                     degree: int = DEFAULT_CENTRELINE_DEGREE, name: str = "cord") -> np.ndarray:
    """Vertebral level of every axial slice of ``cord`` (inferior to superior; 0 where none)."""
    if source.kind == "labelled":
        return slice_levels(source.image, cord, source.name, name)
    volume = to_axial_volume(cord, name)
    line = cord_line(volume, threshold, degree)
    if source.kind == "discs":
        line_levels = levels_from_discs(line, point_labels(source.image, source.name, NOT_DISCS), source.name)
    else:
        line_levels = levels_from_bodies(line, point_labels(source.image, source.name), source.name)
    result = np.zeros(volume.data.shape[0], dtype=int)
    result[line.slices] = line_levels
    return result


def normalize_to_pam50(per_slice: pd.DataFrame, metrics: Sequence[str] = CORD_METRICS) -> pd.DataFrame:
    """Per-slice metrics resampled onto the PAM50 template's slices of each level (see the module's docstring).

    ``per_slice`` is a table of :func:`cord_morphometrics` with a ``level``
    column. Returns one row per PAM50 slice of the levels present (columns
    ``pam50_slice``, ``level``, ``level_name``, then ``metrics``), from
    inferior to superior; NaN where the scan does not reach. Levels outside
    the template (beyond L1) are left out.
    """
    if "level" not in per_slice.columns:
        raise InputImageError("PAM50 normalization needs vertebral levels (discs, vertebral bodies or a labelled cord)")
    table = per_slice.dropna(subset=["level"]).sort_values("slice")
    levels = sorted(int(v) for v in table["level"].unique() if int(v) in PAM50_LEVEL_SLICES)
    if not levels:
        raise InputImageError("PAM50 normalization: no slice at a level of the PAM50 template (C1 to L1)")
    counts = {level: int((table["level"] == level).sum()) for level in levels}
    pam_counts = {level: PAM50_LEVEL_SLICES[level][1] - PAM50_LEVEL_SLICES[level][0] + 1 for level in levels}
    complete = levels[1:-1]
    if complete:
        scale = float(np.mean([pam_counts[level] / counts[level] for level in complete]))
    else:  # no complete level to learn the stretch from: the slice thicknesses' ratio
        scale = float(np.median(np.diff(table["z_mm"]))) / PAM50_SLICE_MM if len(table) > 1 else 1.0
    parts = []
    for level in levels:
        rows = table[table["level"] == level]
        n = len(rows)
        first, last = PAM50_LEVEL_SLICES[level]
        pam = np.arange(first, last + 1)
        if level in complete:
            position = (pam - first) * ((n - 1) / (len(pam) - 1) if len(pam) > 1 else 0.0)
        elif level == levels[0]:  # the most superior level: anchored at its disc below
            position = (pam - first) / scale
        else:  # the most inferior level: anchored at its disc above
            position = (n - 1) - (last - pam) / scale
        valid = (position >= -1e-9) & (position <= n - 1 + 1e-9)
        part = {"pam50_slice": pam, "level": level, "level_name": level_name(level)}
        for metric in metrics:
            values = np.interp(position, np.arange(n), rows[metric].to_numpy(dtype=float))
            part[metric] = np.where(valid, values, np.nan)
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True).sort_values("pam50_slice", ignore_index=True)


@dataclass
class LevelTables:
    """Per-slice table (with ``level``), per-level summary (first row: every slice), optional PAM50 table."""

    per_slice: pd.DataFrame
    per_level: pd.DataFrame
    slice_levels: np.ndarray
    pam50: Optional[pd.DataFrame] = None


def level_tables(cord: sitk.Image, source: LevelSource, lesion: Optional[sitk.Image] = None, *,
                 threshold: float = DEFAULT_THRESHOLD, angle_correction: bool = True, pam50: bool = False,
                 slices: Optional[tuple] = None, levels: Optional[Sequence[int]] = None,
                 name: str = "cord", lesion_name: str = "lesion") -> LevelTables:
    """Cord metrics per slice and per vertebral level, lesions per level, and the PAM50 table.

    The per-level table is :func:`summarize_cord`'s (mean and SD of each
    metric, soft and binary CSA) with ``level_name`` and, with a lesion map,
    ``n_lesions`` and ``lesion_volume_mm3`` (see
    :func:`SpinalCordSegLib.measures.lesion_metrics.lesions_per_level`).
    """
    from .lesion_metrics import lesions_per_level

    if lesion is not None:
        check_same_grid(cord, lesion, name, lesion_name)
    per_slice_levels = levels_per_slice(cord, source, threshold, name=name)
    per_slice = cord_morphometrics(cord, threshold=threshold, angle_correction=angle_correction, name=name,
                                   level_per_slice=per_slice_levels)
    summary = summarize_cord(per_slice, slices=slices, levels=levels)
    summary.insert(1, "level_name", [level_name(int(v)) if pd.notna(v) else "all" for v in summary["level"]])
    if lesion is not None:
        counts = lesions_per_level(lesion, per_slice_levels, threshold=threshold, name=lesion_name)
        summary = summary.merge(counts, on="level", how="left")
        summary.loc[summary["level"].isna(), ["n_lesions", "lesion_volume_mm3"]] = [
            counts.attrs["total_lesions"], counts.attrs["total_volume_mm3"]]
        summary["n_lesions"] = summary["n_lesions"].fillna(0).astype(int)
        summary["lesion_volume_mm3"] = summary["lesion_volume_mm3"].fillna(0.0)
    return LevelTables(per_slice, summary, per_slice_levels,
                       normalize_to_pam50(per_slice) if pam50 else None)
