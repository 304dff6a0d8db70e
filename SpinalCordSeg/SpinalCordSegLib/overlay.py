"""PNG overlays of masks on a scan, for a quick look without a viewer.

Example:
    >>> from SpinalCordSegLib.overlay import save_overlay_png
    >>> save_overlay_png(scan, {"sc": cord_mask, "lesion": lesion_mask}, "overlay.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np
import SimpleITK as sitk

from .image_io import reorient
from .outputs import structure_colour as _colour


def save_overlay_png(
    scan: sitk.Image,
    masks: Dict[str, sitk.Image],
    path: Union[str, Path],
    title: str = "",
) -> Path:
    """Write a sagittal and an axial view through the first mask's centre, masks overlaid.

    Everything is reoriented to RAS first, so superior is up and anterior is
    to the left in the sagittal view, whatever the scan's orientation.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scan = reorient(scan, "RAS")
    image = sitk.GetArrayFromImage(scan).astype(np.float32)  # z (I->S), y (P->A), x (L->R)
    arrays = {k: sitk.GetArrayFromImage(reorient(m, "RAS")) > 0 for k, m in masks.items()}
    spacing = scan.GetSpacing()
    reference = next((a for a in arrays.values() if a.any()), None)
    if reference is not None:
        centre = [int(round(c)) for c in np.argwhere(reference).mean(axis=0)]
    else:
        centre = [s // 2 for s in image.shape]
    low, high = np.percentile(image, [1, 99.5])

    views = [
        ("sagittal", image[:, :, centre[2]], {k: a[:, :, centre[2]] for k, a in arrays.items()}, spacing[2] / spacing[1]),
        ("axial", image[centre[0]], {k: a[centre[0]] for k, a in arrays.items()}, spacing[1] / spacing[0]),
    ]
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    for axis, (name, plane, planes, aspect) in zip(axes, views):
        axis.imshow(plane, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect)
        for index, (structure, mask) in enumerate(planes.items()):
            rgba = np.zeros(mask.shape + (4,))
            rgba[mask] = (*_colour(structure, index), 0.45)
            axis.imshow(rgba, origin="lower", aspect=aspect)
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=[_colour(structure, index)], linewidths=0.8)
        axis.set_title(name)
        axis.axis("off")
    handles = [plt.Line2D([], [], color=_colour(s, i), lw=4, label=s) for i, s in enumerate(arrays)]
    figure.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)))
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
