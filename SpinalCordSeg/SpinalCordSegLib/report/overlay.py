"""PNG overlays of masks on a scan, laid out the way a radiology viewer shows them.

Whatever the scan's orientation, the views follow the radiological convention:
in the axial views the patient's right is on the screen's left and anterior is
up; in the sagittal view anterior is on the left and superior is up. Every view
has its orientation letters, a scale bar and its position (RAS millimetres, as
Slicer shows them, and the slice number counted from inferior, as ``measure``
counts them); the sagittal view marks where the axial views cut. The axial
views are taken where the structures are: one through the largest lesion (at
its largest axial section) when there are lesions, one through the middle of
the cord. A demo model's note stands under the title; below the views: each
structure's full name and volume, the model, the thresholds and the date.

Example:
    >>> from SpinalCordSegLib.report.overlay import save_overlay_png
    >>> save_overlay_png(scan, {"sc": cord_mask, "lesion": lesion_mask}, "overlay.png",
    ...                  title="sub-01_T2w", provenance=prediction.provenance)  # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..imaging.image_io import orientation_of, reorient
from ..imaging.naming import bids_label, structure_colour

#: The display grid. SimpleITK's array of an LPS image is indexed [k, j, i] with k
from ..imaging.sidecar import now

#: The display grid. SimpleITK's array of an LPS image is indexed [k, j, i] with k
#: from inferior to superior, j from anterior to posterior and i from right to left:
#: an axial plane drawn with row 0 at the top has anterior up and the patient's
#: right on the left; a sagittal plane drawn with row 0 at the bottom has superior
#: up and anterior on the left. Both are the radiological views.
DISPLAY_ORIENTATION = "LPS"

#: Full names by BIDS label (the segment names of the Slicer module).
FULL_NAMES = {"SC": "Spinal cord", "lesion": "Lesions"}

#: Letters at the (left, right, top, bottom) edges of each view.
EDGE_LETTERS = {"axial": ("R", "L", "A", "P"), "sagittal": ("A", "P", "S", "I")}

_SCALE_LENGTHS_MM = (1, 2, 5, 10, 20, 50, 100, 200)
_AXIAL_MIN_HALF_WIDTH_MM = 30.0  # a 6 cm field at least: the cord with its surroundings
_AXIAL_MARGIN_MM = 10.0
_MIN_PANEL_RATIO = 0.8
_MIN_FIGURE_WIDTH = 10.0
_LETTER_COLOUR = "#ffd54f"
_REFERENCE_COLOUR = "#4fc3f7"
_WARNING_COLOUR = "#ff8a65"


@dataclass(frozen=True)
class View:
    """One panel of the overlay.

    Attributes:
        plane: ``"axial"`` or ``"sagittal"``.
        index: slice index in the display grid (axial: counted from inferior;
            sagittal: counted from the patient's right).
        purpose: why this slice was chosen, shown in its title.
    """

    plane: str
    index: int
    purpose: str


def full_name(structure: str) -> str:
    """Display name of a structure: ``sc`` -> ``Spinal cord``; unknown names unchanged."""
    return FULL_NAMES.get(bids_label(structure), structure)


def choose_views(arrays: Mapping[str, np.ndarray]) -> List[View]:
    """The sagittal view and the axial views for masks on the display grid ([k, j, i], LPS).

    The cord is the largest connected part of the cord mask (false positives
    elsewhere do not move the views). The sagittal slice goes through it (the
    median left-right position of its voxels); the axial views go through the
    largest lesion's largest section, when there are lesions, and through the
    middle of the cord's extent. Without a cord mask, the union of all masks
    stands for it; without any structure, the middle of the scan is shown.
    """
    from ..measures.lesion_metrics import label_lesions

    shape = next(iter(arrays.values())).shape if arrays else None
    cord = _union(a for s, a in arrays.items() if bids_label(s) == "SC")
    lesions = _union(a for s, a in arrays.items() if bids_label(s) == "lesion")
    if cord is None or not cord.any():
        cord = _union(arrays.values())
    if cord is None or not cord.any():
        middle = [n // 2 for n in shape] if shape else [0, 0, 0]
        return [View("sagittal", middle[2], "middle of the scan (no structure found)"),
                View("axial", middle[0], "middle of the scan (no structure found)")]
    cord = _largest_part(label_lesions(cord))
    views = [View("sagittal", int(np.median(np.nonzero(cord)[2])), "through the cord")]
    if lesions is not None and lesions.any():
        areas = _largest_part(label_lesions(lesions)).sum(axis=(1, 2))
        views.append(View("axial", int(np.argmax(areas)), "largest lesion"))
    cord_slices = np.flatnonzero(cord.any(axis=(1, 2)))
    middle = (cord_slices[0] + cord_slices[-1]) / 2.0
    cord_middle = int(cord_slices[np.argmin(np.abs(cord_slices - middle))])
    if len(views) == 2 and views[1].index == cord_middle:
        views[1] = View("axial", cord_middle, "largest lesion and cord middle")
    else:
        views.append(View("axial", cord_middle, "middle of the cord"))
    return views


def save_overlay_png(
    scan: sitk.Image,
    masks: Dict[str, sitk.Image],
    path: Union[str, Path],
    title: str = "",
    provenance: Optional[Mapping[str, object]] = None,
) -> Path:
    """Write the overlay PNG (see :func:`draw_overlay`) and return its path."""
    figure, _ = draw_overlay(scan, masks, title, provenance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi="figure", facecolor=figure.get_facecolor())
    return path


def draw_overlay(
    scan: sitk.Image,
    masks: Dict[str, sitk.Image],
    title: str = "",
    provenance: Optional[Mapping[str, object]] = None,
):
    """Draw the overlay: one sagittal and one or two axial views, then the text (see the module notes).

    Args:
        scan: the scan, any orientation.
        masks: binary masks on the scan's grid, by structure name (``sc``, ``lesion``...).
        title: shown at the top (usually the scan's name).
        provenance: the ``GeneratedBy`` entry of the automatic step; its
            ``Note`` (demo models) is printed under the title, its
            ``ModelId``/``Model``, ``Thresholds`` and ``Date`` under the views.

    Returns:
        (matplotlib Figure, [(View, its Axes), ...]).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    provenance = provenance or {}
    display = reorient(scan, DISPLAY_ORIENTATION)
    image = sitk.GetArrayFromImage(display).astype(np.float32)
    arrays = {s: sitk.GetArrayFromImage(reorient(m, DISPLAY_ORIENTATION)) > 0 for s, m in masks.items()}
    spacing = display.GetSpacing()  # along i, j, k
    views = choose_views(arrays)
    low, high = np.percentile(image, [1, 99.5])
    colours = {s: structure_colour(s, n) for n, s in enumerate(arrays)}
    fields = [_field(view, arrays, spacing, image.shape) for view in views]
    ratios = [(x1 - x0) / (y1 - y0) for x0, x1, y0, y1 in fields]  # panels keep the views' true shapes
    width = max(_MIN_FIGURE_WIDTH, 3.8 * sum(ratios) + 0.6)
    figure = Figure(figsize=(width, 6.6), dpi=110, facecolor="black")
    note = provenance.get("Note")
    grid = figure.add_gridspec(2, len(views), width_ratios=ratios, height_ratios=[4.0, 1.1],
                               left=0.02, right=0.98, top=0.82 if note else 0.87, bottom=0.01, wspace=0.08,
                               hspace=0.14)
    panels = []
    for column, (view, field) in enumerate(zip(views, fields)):
        axis = figure.add_subplot(grid[0, column])
        _draw_view(axis, view, views, image, arrays, colours, spacing, (low, high), display, field)
        panels.append((view, axis))
    _draw_text(figure.add_subplot(grid[1, :]), arrays, colours, spacing, provenance, scan)
    figure.suptitle(title or "SpinalCordSeg", color="white", fontsize=13, y=0.985)
    if note:  # a demo model: said first, under the title
        figure.text(0.5, 0.945, textwrap.fill(str(note), int(width * 11)), color=_WARNING_COLOUR, fontsize=9.5,
                    fontweight="bold", ha="center", va="top")
    return figure, panels


def _largest_part(labels: np.ndarray) -> np.ndarray:
    """The largest labelled component of a label array, as a boolean array."""
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def _union(arrays) -> Optional[np.ndarray]:
    result = None
    for array in arrays:
        result = array.copy() if result is None else result | array
    return result


def _field(view: View, arrays: Mapping[str, np.ndarray], spacing: Tuple[float, ...],
           shape: Tuple[int, ...]) -> Tuple[float, float, float, float]:
    """(x0, x1, y0, y1): the part of the view's plane shown, in mm from the plane's first corner.

    The sagittal view shows its whole plane. An axial view is centred on the
    structures of its slice and wide enough to show every one of them (a false
    positive on a muscle too), 6 cm at least, within the plane. A field
    narrower than ``_MIN_PANEL_RATIO`` is widened, so that its title fits.
    """
    if view.plane == "sagittal":
        width, height = shape[1] * spacing[1], shape[0] * spacing[2]
        x0, x1, y0, y1 = 0.0, width, 0.0, height
    else:
        width, height = shape[2] * spacing[0], shape[1] * spacing[1]
        x0, x1, y0, y1 = 0.0, width, 0.0, height
        union = _union(a[view.index] for a in arrays.values())
        if union is not None and union.any():
            rows, columns = np.nonzero(union)
            xs, ys = (columns + 0.5) * spacing[0], (rows + 0.5) * spacing[1]
            cx, cy = float(np.mean(xs)), float(np.mean(ys))
            half = max(_AXIAL_MIN_HALF_WIDTH_MM, float(np.max(np.abs(xs - cx))) + _AXIAL_MARGIN_MM,
                       float(np.max(np.abs(ys - cy))) + _AXIAL_MARGIN_MM)
            x0, x1 = max(0.0, cx - half), min(width, cx + half)
            y0, y1 = max(0.0, cy - half), min(height, cy + half)
    extra = _MIN_PANEL_RATIO * (y1 - y0) - (x1 - x0)
    if extra > 0:
        x0, x1 = x0 - extra / 2, x1 + extra / 2
    return x0, x1, y0, y1


def _world(display: sitk.Image, index: Tuple[float, float, float]) -> Tuple[float, float, float]:
    """RAS millimetres (Slicer's coordinates) of a continuous index of the display grid."""
    x, y, z = display.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])
    return -x, -y, z  # ITK's physical space is LPS


def _axial_name(view: View, views: List[View]) -> str:
    axials = [v for v in views if v.plane == "axial"]
    return f"Axial {axials.index(view) + 1}" if len(axials) > 1 else "Axial"


def _draw_view(axis, view: View, views: List[View], image: np.ndarray, arrays: Mapping[str, np.ndarray],
               colours: Mapping[str, tuple], spacing: Tuple[float, ...], window: Tuple[float, float],
               display: sitk.Image, field: Tuple[float, float, float, float]) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    nk, nj, ni = image.shape
    if view.plane == "axial":
        plane, planes = image[view.index], {s: a[view.index] for s, a in arrays.items()}
        # Row 0 (anterior) at the top, column 0 (the patient's right) on the left.
        origin, extent = "upper", (0.0, ni * spacing[0], nj * spacing[1], 0.0)
        position = f"S {_world(display, ((ni - 1) / 2, (nj - 1) / 2, view.index))[2]:+.1f} mm"
        number = f"slice {view.index + 1}/{nk} from inferior"
        name = _axial_name(view, views)
    else:
        plane, planes = image[:, :, view.index], {s: a[:, :, view.index] for s, a in arrays.items()}
        # Row 0 (inferior) at the bottom, column 0 (anterior) on the left.
        origin, extent = "lower", (0.0, nj * spacing[1], 0.0, nk * spacing[2])
        position = f"R {_world(display, (view.index, (nj - 1) / 2, (nk - 1) / 2))[0]:+.1f} mm"
        number = f"slice {view.index + 1}/{ni} from the right"
        name = "Sagittal"
    axis.set_facecolor("black")
    axis.imshow(plane, cmap="gray", vmin=window[0], vmax=window[1], origin=origin, extent=extent,
                interpolation="nearest")
    for structure, mask in planes.items():
        if not mask.any():
            continue
        rgba = np.zeros(mask.shape + (4,))
        rgba[mask] = (*colours[structure], 0.35)
        axis.imshow(rgba, origin=origin, extent=extent, interpolation="nearest")
        axis.contour(mask.astype(float), levels=[0.5], colors=[colours[structure]], linewidths=0.9,
                     origin=origin, extent=extent)
    # Reference lines: where the other views cut this one.
    for other in views:
        if view.plane == "sagittal" and other.plane == "axial":
            height = (other.index + 0.5) * spacing[2]
            axis.axhline(height, color=_REFERENCE_COLOUR, lw=0.8, ls="--")
            axis.text(0.08, height, _axial_name(other, views).lower(), transform=axis.get_yaxis_transform(),
                      color=_REFERENCE_COLOUR, fontsize=8, va="bottom", ha="left")  # clear of the letters
        elif view.plane == "axial" and other.plane == "sagittal":
            axis.axvline((other.index + 0.5) * spacing[0], color=_REFERENCE_COLOUR, lw=0.6, ls=":")
    axis.set_xlim(field[0], field[1])
    if view.plane == "axial":
        axis.set_ylim(field[3], field[2])  # anterior (row 0) at the top
    else:
        axis.set_ylim(field[2], field[3])  # inferior (row 0) at the bottom
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_color("#444444")
    left, right, top, bottom = EDGE_LETTERS[view.plane]
    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]  # readable over any tissue
    style = dict(transform=axis.transAxes, color=_LETTER_COLOUR, fontsize=13, fontweight="bold",
                 path_effects=outline)
    axis.text(0.015, 0.5, left, ha="left", va="center", **style)
    axis.text(0.985, 0.5, right, ha="right", va="center", **style)
    axis.text(0.5, 0.985, top, ha="center", va="top", **style)
    axis.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)
    shown = field[1] - field[0]
    length = max((n for n in _SCALE_LENGTHS_MM if n <= shown / 4), default=_SCALE_LENGTHS_MM[0])
    axis.add_artist(AnchoredSizeBar(axis.transData, length, f"{length} mm", "lower right", color="white",
                                    frameon=False, size_vertical=shown / 120, pad=0.3, borderpad=0.5,
                                    fontproperties={"size": 8}))
    axis.set_title(f"{name}: {view.purpose}\n{position}, {number}", color="white", fontsize=8.5)


def _structure_line(structure: str, mask: np.ndarray, voxel_mm3: float) -> str:
    from ..measures.lesion_metrics import label_lesions

    volume = mask.sum() * voxel_mm3
    if bids_label(structure) != "lesion":
        return f"{full_name(structure)}: {volume:.1f} mm\u00b3"
    labels = label_lesions(mask)
    count = int(labels.max())
    if count == 0:
        return f"{full_name(structure)}: none found"
    largest = np.bincount(labels.ravel())[1:].max() * voxel_mm3
    if count == 1:
        return f"{full_name(structure)}: 1 ({volume:.1f} mm\u00b3)"
    return f"{full_name(structure)}: {count}, {volume:.1f} mm\u00b3 in all, largest {largest:.1f} mm\u00b3"


def _model_line(provenance: Mapping[str, object]) -> str:
    from ..models.catalogue import load_catalogue

    model_id = provenance.get("ModelId")
    entry = load_catalogue().get(str(model_id)) if model_id else None
    if entry is not None:
        version = f", version {entry.version}" if entry.version else ""
        return f"Model: {entry.id} ({entry.name}{version})"
    if provenance.get("Model"):
        return f"Model: {provenance['Model']}"
    return "Model: not recorded"


def _draw_text(axis, arrays: Mapping[str, np.ndarray], colours: Mapping[str, tuple],
               spacing: Tuple[float, ...], provenance: Mapping[str, object], scan: sitk.Image) -> None:
    """Structures (colour, full name, volume) on the left; model, thresholds, date and scan on the right."""
    axis.set_facecolor("black")
    axis.axis("off")
    voxel_mm3 = float(np.prod(spacing))
    for row, (structure, mask) in enumerate(arrays.items()):
        y = 0.88 - row * 0.22
        axis.add_patch(_rectangle((0.005, y - 0.07), 0.012, 0.14, colours[structure], axis))
        axis.text(0.025, y, _structure_line(structure, mask, voxel_mm3), color="white", fontsize=10,
                  va="center", transform=axis.transAxes)
    thresholds = provenance.get("Thresholds") or {}
    lines = [_model_line(provenance)]
    if thresholds:
        lines.append("Thresholds: " + ", ".join(f"{full_name(s).lower()} {float(v):g}"
                                                for s, v in dict(thresholds).items()))
    size = "x".join(str(n) for n in scan.GetSize())
    voxel = "x".join(f"{s:.3g}" for s in scan.GetSpacing())
    lines.append(f"Scan: {size} voxels of {voxel} mm, stored {orientation_of(scan)}")
    lines.append(f"Date: {provenance.get('Date') or now()}")
    axis.text(0.36, 0.98, "\n".join(lines), color="white", fontsize=8.5, va="top", ha="left",
              transform=axis.transAxes, linespacing=1.45)


def _rectangle(xy: Tuple[float, float], width: float, height: float, colour: tuple, axis):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, color=colour, transform=axis.transAxes)
