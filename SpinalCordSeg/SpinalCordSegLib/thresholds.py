"""Thresholds of the soft maps and the binary masks they give, as the panel shows them.

:class:`ThresholdState` holds one threshold per structure and the mask
options (keep only the largest cord component, restrict lesions to the cord);
a slider move asks it which masks change.

Example:
    >>> import numpy as np
    >>> from SpinalCordSegLib.thresholds import ThresholdState
    >>> state = ThresholdState(["sc", "lesion"], restrict_lesions_to_cord=True)
    >>> state.set_threshold("sc", 0.3)
    ['sc', 'lesion']
    >>> soft = {"sc": np.array([0.2, 0.4, 0.9]), "lesion": np.array([0.9, 0.1, 0.8])}
    >>> {k: v.tolist() for k, v in state.masks(soft).items()}
    {'sc': [False, True, True], 'lesion': [False, False, True]}
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from .outputs import bids_label

MIN_THRESHOLD = 0.01
MAX_THRESHOLD = 0.99
DEFAULT_THRESHOLD = 0.5


def clamp_threshold(value: float) -> float:
    """A threshold within the slider's range [0.01, 0.99]."""
    return float(min(MAX_THRESHOLD, max(MIN_THRESHOLD, float(value))))


def is_cord(structure: str) -> bool:
    """True for the structure the field labels ``SC`` (``sc``, ``cord``, ``spinalcord``)."""
    return bids_label(structure) == "SC"


def is_lesion(structure: str) -> bool:
    """True for lesion structures."""
    return bids_label(structure) == "lesion"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest component of a boolean mask, corners connecting (26-connected in 3D)."""
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(np.argmax(sizes))


class ThresholdState:
    """Thresholds of the soft maps and the binary masks they define.

    Args:
        structures: the model's structure names, in output order.
        defaults: default threshold per structure (from the model); 0.5 otherwise.
        keep_largest_cord: keep only the largest connected component of the cord.
        restrict_lesions_to_cord: remove lesion voxels outside the cord mask.
    """

    def __init__(
        self,
        structures: Sequence[str],
        defaults: Optional[Mapping[str, float]] = None,
        keep_largest_cord: bool = False,
        restrict_lesions_to_cord: bool = False,
    ) -> None:
        if not structures:
            raise ValueError("a model gives at least one structure")
        self.structures = list(structures)
        defaults = defaults or {}
        self.thresholds: Dict[str, float] = {
            s: clamp_threshold(defaults.get(s, DEFAULT_THRESHOLD)) for s in self.structures
        }
        self.keep_largest_cord = bool(keep_largest_cord)
        self.restrict_lesions_to_cord = bool(restrict_lesions_to_cord)

    @property
    def cord(self) -> Optional[str]:
        """The cord structure, if the model has one."""
        return next((s for s in self.structures if is_cord(s)), None)

    @property
    def lesions(self) -> List[str]:
        """The lesion structures."""
        return [s for s in self.structures if is_lesion(s)]

    def _restricting(self) -> bool:
        return self.restrict_lesions_to_cord and self.cord is not None and bool(self.lesions)

    def dependents(self, structure: str) -> List[str]:
        """Structures whose mask changes when ``structure``'s threshold changes (itself first)."""
        if structure not in self.thresholds:
            raise KeyError(f"unknown structure {structure!r}; the model has {self.structures}")
        if structure == self.cord and self._restricting():
            return [structure] + self.lesions
        return [structure]

    def set_threshold(self, structure: str, value: float) -> List[str]:
        """Set one threshold (clamped); return the structures whose masks must be updated."""
        affected = self.dependents(structure)
        self.thresholds[structure] = clamp_threshold(value)
        return affected

    def set_options(self, keep_largest_cord: bool, restrict_lesions_to_cord: bool) -> List[str]:
        """Change the options; return the structures whose masks must be updated."""
        changed = []
        if bool(keep_largest_cord) != self.keep_largest_cord and self.cord is not None:
            changed = self.dependents(self.cord)
        self.keep_largest_cord = bool(keep_largest_cord)
        if bool(restrict_lesions_to_cord) != self.restrict_lesions_to_cord:
            changed += [s for s in self.lesions if s not in changed]
        self.restrict_lesions_to_cord = bool(restrict_lesions_to_cord)
        return [s for s in self.structures if s in changed]

    def _cord_mask(self, soft: np.ndarray) -> np.ndarray:
        mask = soft >= self.thresholds[self.cord]
        return largest_component(mask) if self.keep_largest_cord else mask

    def masks(
        self, soft_maps: Mapping[str, np.ndarray], structures: Optional[Iterable[str]] = None
    ) -> Dict[str, np.ndarray]:
        """Boolean masks of ``structures`` (default: all) from their soft-map arrays.

        A voxel is inside when its probability is at least the threshold
        (as :func:`SpinalCordSegLib.outputs.binarize`).
        """
        wanted = list(structures) if structures is not None else list(self.structures)
        cord_mask = None
        if self.cord in wanted or (self._restricting() and any(s in self.lesions for s in wanted)):
            cord_mask = self._cord_mask(soft_maps[self.cord])
        result: Dict[str, np.ndarray] = {}
        for structure in wanted:
            if structure == self.cord:
                result[structure] = cord_mask
                continue
            mask = soft_maps[structure] >= self.thresholds[structure]
            if self._restricting() and structure in self.lesions:
                mask &= cord_mask
            result[structure] = mask
        return result

    def to_dict(self) -> dict:
        """Plain-JSON form (stored in the scene's parameter node)."""
        return {
            "structures": self.structures,
            "thresholds": self.thresholds,
            "keep_largest_cord": self.keep_largest_cord,
            "restrict_lesions_to_cord": self.restrict_lesions_to_cord,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ThresholdState":
        """Inverse of :meth:`to_dict`."""
        return cls(data["structures"], data.get("thresholds"), bool(data.get("keep_largest_cord")),
                   bool(data.get("restrict_lesions_to_cord")))


def volume_mm3(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in mm3 given the voxel spacing in mm."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing))


def format_volume(mm3: float) -> str:
    """``'1234 mm3'`` below 10 000 mm3, else ``'12.3 cm3'``."""
    return f"{mm3:.0f} mm3" if mm3 < 10000 else f"{mm3 / 1000:.1f} cm3"
