"""How soft maps become masks: the one rule of the command line, batch, the Slicer panel and the measures.

- **Bounds**: a threshold lies strictly between 0 and 1 (:data:`THRESHOLD_BOUNDS`);
  the panel's slider spans :data:`SLIDER_RANGE` inside them.
- **Default**: :data:`DEFAULT_THRESHOLD` (0.5, nnU-Net's own decision level),
  unless the model gives its own.
- **Comparison**: a voxel is inside when its probability is *at least* the
  threshold (:func:`above`).
- **Roles**: the structure the field labels ``SC`` is the cord, ``lesion`` a
  lesion (:func:`is_cord`, :func:`is_lesion`).
- **Options** (:class:`MaskOptions`): keep only the largest cord component
  (26-connected), restrict lesions to the cord mask. Defaults follow the field:
  the Spinal Cord Toolbox keeps the largest object of its ``spinalcord`` task
  (the cord is one object; stray voxels on muscle or fat are false positives)
  and keeps every lesion as predicted, so lesions are not restricted unless a
  model or the user asks.

Example:
    >>> import numpy as np
    >>> from SpinalCordSegLib.imaging.binarization import MaskOptions, binary_masks
    >>> soft = {"sc": np.array([0.9, 0.1, 0.6]), "lesion": np.array([0.2, 0.8, 0.7])}
    >>> masks = binary_masks(soft, {"sc": 0.5, "lesion": 0.5},
    ...                      MaskOptions(keep_largest_cord=False, restrict_lesions_to_cord=True))
    >>> {k: v.tolist() for k, v in masks.items()}
    {'sc': [True, False, True], 'lesion': [False, False, True]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..errors import SpinalCordSegError
from .naming import bids_label

if TYPE_CHECKING:  # the rule loads with the command line; arrays only when masks are made
    import numpy as np
    import SimpleITK as sitk

#: Open interval of valid thresholds: 0 would keep every voxel, 1 none.
THRESHOLD_BOUNDS = (0.0, 1.0)
#: nnU-Net's own decision level (argmax of two classes, sigmoid > 0.5 of a region).
DEFAULT_THRESHOLD = 0.5
#: What the panel's sliders span (a threshold nearer 0 or 1 is allowed from the command line).
SLIDER_RANGE = (0.01, 0.99)


def check_threshold(value: float, what: str = "threshold") -> float:
    """``value`` as a float if it is a valid threshold, else an error naming ``what``.

    >>> check_threshold(0.3)
    0.3
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpinalCordSegError(f"{what}: {value!r} is not a number") from None
    low, high = THRESHOLD_BOUNDS
    if not (math.isfinite(number) and low < number < high):
        raise SpinalCordSegError(f"{what}: {value!r} must lie strictly between {low:g} and {high:g}")
    return number


def clamp_to_slider(value: float) -> float:
    """A threshold within the slider's range :data:`SLIDER_RANGE`."""
    low, high = SLIDER_RANGE
    return float(min(high, max(low, float(value))))


def threshold_items(text: Optional[str], what: str = "--threshold") -> List[Tuple[str, float]]:
    """Parse ``"sc=0.5,lesion=0.3"`` (or one number for all) into checked (name, value) pairs; '' names all.

    >>> threshold_items("0.4,lesion=0.3")
    [('', 0.4), ('lesion', 0.3)]
    """
    items: List[Tuple[str, float]] = []
    for item in (part.strip() for part in (text or "").split(",") if part.strip()):
        name, _, value = item.rpartition("=")
        items.append((name, check_threshold(value, f"{what}: {item!r}")))
    return items


def parse_thresholds(text: Optional[str], structures: Sequence[str],
                     defaults: Optional[Mapping[str, float]] = None, what: str = "--threshold") -> Dict[str, float]:
    """Parse ``"sc=0.5,lesion=0.3"`` (or one number for all) into a threshold per structure.

    Structures not named keep their default (``defaults``, else :data:`DEFAULT_THRESHOLD`).

    >>> parse_thresholds("lesion=0.3", ["sc", "lesion"])
    {'sc': 0.5, 'lesion': 0.3}
    """
    thresholds = {s: float((defaults or {}).get(s, DEFAULT_THRESHOLD)) for s in structures}
    for name, number in threshold_items(text, what):
        if not name:
            thresholds = {s: number for s in structures}
        elif name not in thresholds:
            raise SpinalCordSegError(f"{what}: unknown structure {name!r}; the model has {list(structures)}")
        else:
            thresholds[name] = number
    return thresholds


def is_cord(structure: str) -> bool:
    """True for the structure the field labels ``SC`` (``sc``, ``cord``, ``spinalcord``)."""
    return bids_label(structure) == "SC"


def is_lesion(structure: str) -> bool:
    """True for lesion structures."""
    return bids_label(structure) == "lesion"


def cord_structure(structures: Iterable[str]) -> Optional[str]:
    """The cord among ``structures`` (the first one the field labels ``SC``), or None."""
    return next((s for s in structures if is_cord(s)), None)


def lesion_structures(structures: Iterable[str]) -> List[str]:
    """The lesion structures among ``structures``, in their order."""
    return [s for s in structures if is_lesion(s)]


def above(soft: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the voxels whose probability is at least ``threshold``."""
    import numpy as np

    return np.asarray(soft) >= threshold


def binarize(soft_map: sitk.Image, threshold: float) -> sitk.Image:
    """Binary uint8 mask of ``soft_map >= threshold`` on the same grid (no options applied)."""
    import SimpleITK as sitk

    return sitk.Cast(sitk.GreaterEqual(soft_map, float(threshold)), sitk.sitkUInt8)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest component of a boolean mask, corners connecting (26-connected in 3D).

    Labelling runs inside the mask's bounding box, and component sizes are
    counted inside each component's own box: a compact cord in a large field
    of view costs little.
    """
    import numpy as np
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    box = _bounding_box(mask)
    if box is None:
        return mask
    labels, count = ndimage.label(mask[box], structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if count <= 1:
        return mask
    objects = ndimage.find_objects(labels)
    sizes = [np.count_nonzero(labels[region] == index) for index, region in enumerate(objects, start=1)]
    keep = int(np.argmax(sizes)) + 1
    result = np.zeros_like(mask)
    inner = tuple(slice(b.start + r.start, b.start + r.stop) for b, r in zip(box, objects[keep - 1]))
    result[inner] = labels[objects[keep - 1]] == keep
    return result


def _bounding_box(mask: np.ndarray) -> Optional[tuple]:
    """Slices of the smallest box holding every True voxel (None when there is none)."""
    import numpy as np

    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


@dataclass(frozen=True)
class MaskOptions:
    """How the binary masks are cleaned after thresholding.

    Args:
        keep_largest_cord: keep only the largest connected component of the cord.
        restrict_lesions_to_cord: remove lesion voxels outside the cord mask.
    """

    keep_largest_cord: bool = True
    restrict_lesions_to_cord: bool = False

    def to_sidecar(self) -> Dict[str, bool]:
        """The options as recorded in a mask's JSON sidecar."""
        return {"KeepLargestCord": self.keep_largest_cord, "RestrictLesionsToCord": self.restrict_lesions_to_cord}

    @classmethod
    def from_sidecar(cls, sidecar: Mapping[str, object]) -> "MaskOptions":
        """Inverse of :meth:`to_sidecar`; a sidecar written before options were recorded had none on."""
        return cls(bool(sidecar.get("KeepLargestCord", False)), bool(sidecar.get("RestrictLesionsToCord", False)))


def dependents(structure: str, structures: Sequence[str], options: MaskOptions) -> List[str]:
    """Structures whose mask changes when ``structure``'s threshold changes (itself first)."""
    cord, lesions = cord_structure(structures), lesion_structures(structures)
    if structure == cord and options.restrict_lesions_to_cord and lesions:
        return [structure] + lesions
    return [structure]


def binary_masks(
    soft_maps: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    options: MaskOptions = MaskOptions(),
    structures: Optional[Iterable[str]] = None,
    settled: bool = True,
) -> Dict[str, np.ndarray]:
    """Boolean masks of ``structures`` (default: all of ``soft_maps``) from soft-map arrays.

    Args:
        soft_maps: structure -> probabilities in [0, 1] (all on one grid).
        thresholds: structure -> threshold (see :func:`check_threshold`).
        options: largest cord component, lesions restricted to the cord.
        structures: the masks wanted; the cord is computed too when a lesion needs it.
        settled: False while a slider is still moving: the largest-component
            step (a 3D labelling) waits until the value settles.
    """
    everything = list(soft_maps)
    wanted = list(structures) if structures is not None else everything
    cord, lesions = cord_structure(everything), lesion_structures(everything)
    restricting = options.restrict_lesions_to_cord and cord is not None
    cord_mask = None
    if cord is not None and (cord in wanted or (restricting and any(s in lesions for s in wanted))):
        cord_mask = above(soft_maps[cord], thresholds[cord])
        if options.keep_largest_cord and settled:
            cord_mask = largest_component(cord_mask)
    result: Dict[str, np.ndarray] = {}
    for structure in wanted:
        if structure == cord:
            result[structure] = cord_mask
            continue
        mask = above(soft_maps[structure], thresholds[structure])
        if restricting and structure in lesions:
            mask &= cord_mask
        result[structure] = mask
    return result


def binary_mask_images(soft_maps: Mapping[str, sitk.Image], thresholds: Mapping[str, float],
                       options: MaskOptions = MaskOptions()) -> Dict[str, sitk.Image]:
    """:func:`binary_masks` for SimpleITK soft maps: uint8 masks on each map's own grid."""
    import numpy as np
    import SimpleITK as sitk

    arrays = {s: sitk.GetArrayViewFromImage(image) for s, image in soft_maps.items()}
    masks = {}
    for structure, mask in binary_masks(arrays, thresholds, options).items():
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(soft_maps[structure])
        masks[structure] = image
    return masks
