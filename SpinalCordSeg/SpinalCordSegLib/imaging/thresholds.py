"""Thresholds of the soft maps and the binary masks they give, as the panel shows them.

:class:`ThresholdState` holds one threshold per structure and the mask
options (keep only the largest cord component, restrict lesions to the cord);
a slider move asks it which masks change.

Example:
    >>> import numpy as np
    >>> from SpinalCordSegLib.imaging.thresholds import ThresholdState
    >>> from SpinalCordSegLib.imaging.binarization import MaskOptions
    >>> state = ThresholdState(["sc", "lesion"], options=MaskOptions(restrict_lesions_to_cord=True))
    >>> state.set_threshold("sc", 0.3)
    ['sc', 'lesion']
    >>> soft = {"sc": np.array([0.2, 0.4, 0.9]), "lesion": np.array([0.9, 0.1, 0.8])}
    >>> {k: v.tolist() for k, v in state.masks(soft).items()}
    {'sc': [False, True, True], 'lesion': [False, False, True]}
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .binarization import (
    DEFAULT_THRESHOLD,
    MaskOptions,
    binary_masks,
    clamp_to_slider,
    cord_structure,
    dependents,
    lesion_structures,
)


class ThresholdState:
    """Thresholds of the soft maps and the binary masks they define (the rule of :mod:`.binarization`).

    Args:
        structures: the model's structure names, in output order.
        defaults: default threshold per structure (from the model); 0.5 otherwise.
        options: mask options; the field's defaults (:class:`~.binarization.MaskOptions`) otherwise.
    """

    def __init__(
        self,
        structures: Sequence[str],
        defaults: Optional[Mapping[str, float]] = None,
        options: Optional[MaskOptions] = None,
    ) -> None:
        if not structures:
            raise ValueError("a model gives at least one structure")
        self.structures = list(structures)
        defaults = defaults or {}
        self.thresholds: Dict[str, float] = {
            s: clamp_to_slider(defaults.get(s, DEFAULT_THRESHOLD)) for s in self.structures
        }
        self.options = options if options is not None else MaskOptions()

    @property
    def keep_largest_cord(self) -> bool:
        """Whether only the largest cord component is kept."""
        return self.options.keep_largest_cord

    @property
    def restrict_lesions_to_cord(self) -> bool:
        """Whether lesion voxels outside the cord mask are removed."""
        return self.options.restrict_lesions_to_cord

    @property
    def cord(self) -> Optional[str]:
        """The cord structure, if the model has one."""
        return cord_structure(self.structures)

    @property
    def lesions(self) -> List[str]:
        """The lesion structures."""
        return lesion_structures(self.structures)

    def dependents(self, structure: str) -> List[str]:
        """Structures whose mask changes when ``structure``'s threshold changes (itself first)."""
        if structure not in self.thresholds:
            raise KeyError(f"unknown structure {structure!r}; the model has {self.structures}")
        return dependents(structure, self.structures, self.options)

    def set_threshold(self, structure: str, value: float) -> List[str]:
        """Set one threshold (clamped to the slider); return the structures whose masks must be updated."""
        affected = self.dependents(structure)
        self.thresholds[structure] = clamp_to_slider(value)
        return affected

    def set_options(self, keep_largest_cord: bool, restrict_lesions_to_cord: bool) -> List[str]:
        """Change the options; return the structures whose masks must be updated."""
        changed = []
        if bool(keep_largest_cord) != self.keep_largest_cord and self.cord is not None:
            changed = self.dependents(self.cord)
        if bool(restrict_lesions_to_cord) != self.restrict_lesions_to_cord:
            changed += [s for s in self.lesions if s not in changed]
        self.options = MaskOptions(bool(keep_largest_cord), bool(restrict_lesions_to_cord))
        return [s for s in self.structures if s in changed]

    def masks(
        self, soft_maps: Mapping[str, np.ndarray], structures: Optional[Iterable[str]] = None,
        settled: bool = True,
    ) -> Dict[str, np.ndarray]:
        """Boolean masks of ``structures`` (default: all) from their soft-map arrays.

        The rule of :func:`~.binarization.binary_masks`; ``settled`` False while
        a slider still moves (the largest-component step waits for the release).
        """
        return binary_masks(soft_maps, self.thresholds, self.options, structures, settled)

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
        return cls(data["structures"], data.get("thresholds"),
                   MaskOptions(bool(data.get("keep_largest_cord")), bool(data.get("restrict_lesions_to_cord"))))


def volume_mm3(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in mm3 given the voxel spacing in mm."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing))


def format_volume(mm3: float) -> str:
    """``'1234 mm3'`` below 10 000 mm3, else ``'12.3 cm3'``."""
    return f"{mm3:.0f} mm3" if mm3 < 10000 else f"{mm3 / 1000:.1f} cm3"
