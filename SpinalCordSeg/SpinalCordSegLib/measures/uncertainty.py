"""Uncertainty of a soft map, to put the cases a model is least sure about first.

The score of a structure is the mean binary entropy (bits) of its soft map over
the voxels where the model hesitates (0.05 < p < 0.95), together with the
volume of that region: a confident model has a thin hesitant rim; an unsure one
a thick rim of high entropy.

Example:
    >>> import numpy as np, SimpleITK as sitk
    >>> from SpinalCordSegLib.measures.uncertainty import uncertainty
    >>> soft = sitk.GetImageFromArray(np.full((4, 4, 4), 0.5, np.float32))
    >>> uncertainty(soft)
    (1.0, 64.0)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk

LOW, HIGH = 0.05, 0.95


def uncertainty(soft_map: sitk.Image, low: float = LOW, high: float = HIGH) -> Tuple[float, float]:
    """(mean binary entropy in bits inside low < p < high, volume of that region in mm3).

    A map with no hesitant voxel scores (0.0, 0.0).
    """
    p = sitk.GetArrayViewFromImage(soft_map).astype(np.float64)
    hesitant = (p > low) & (p < high)
    if not hesitant.any():
        return 0.0, 0.0
    q = p[hesitant]
    entropy = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    voxel_mm3 = float(np.prod(soft_map.GetSpacing()))
    return float(entropy.mean()), float(hesitant.sum() * voxel_mm3)
