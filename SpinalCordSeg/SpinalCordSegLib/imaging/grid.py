"""Whether two images share a voxel grid: one function, one tolerance policy.

Two images are on the same grid when their sizes are equal and their spacing,
origin and direction agree within :data:`GRID_TOLERANCE`:

- spacing: relative 1e-4 (NIfTI stores it as float32; a resampled copy that
  round-trips through float32 differs by about 1e-7 relative);
- origin: 1e-3 mm absolute (float32 of a few hundred mm, and Slicer's RAS/LPS
  sign flips, move it by about 1e-5 mm; a real shift is a voxel fraction, 0.1 mm or more);
- direction: 1e-4 per cosine (a quaternion round trip; a real rotation of 0.01 degrees is 1.7e-4).

Example:
    >>> import SimpleITK as sitk
    >>> from SpinalCordSegLib.imaging.grid import grid_differences, same_grid
    >>> a = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    >>> b = sitk.Image(4, 4, 4, sitk.sitkFloat32)
    >>> same_grid(a, b)
    True
    >>> b.SetOrigin((0.5, 0.0, 0.0))
    >>> grid_differences(a, b)
    ['origin (0.5, 0.0, 0.0) vs (0.0, 0.0, 0.0)']
"""

from __future__ import annotations

from typing import List, NamedTuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError


class GridTolerance(NamedTuple):
    """Tolerances of :func:`same_grid` (see the module docstring for why)."""

    spacing_relative: float = 1e-4
    origin_mm: float = 1e-3
    direction: float = 1e-4


GRID_TOLERANCE = GridTolerance()


def grid_differences(reference: sitk.Image, other: sitk.Image,
                     tolerance: GridTolerance = GRID_TOLERANCE) -> List[str]:
    """How ``other``'s grid differs from ``reference``'s (empty when they are the same)."""
    problems = []
    if tuple(reference.GetSize()) != tuple(other.GetSize()):
        problems.append(f"size {other.GetSize()} vs {reference.GetSize()}")
    if not np.allclose(other.GetSpacing(), reference.GetSpacing(), rtol=tolerance.spacing_relative, atol=0):
        problems.append(f"spacing {other.GetSpacing()} vs {reference.GetSpacing()}")
    if not np.allclose(other.GetOrigin(), reference.GetOrigin(), rtol=0, atol=tolerance.origin_mm):
        problems.append(f"origin {other.GetOrigin()} vs {reference.GetOrigin()}")
    if not np.allclose(other.GetDirection(), reference.GetDirection(), rtol=0, atol=tolerance.direction):
        problems.append("direction differs")
    return problems


def same_grid(reference: sitk.Image, other: sitk.Image, tolerance: GridTolerance = GRID_TOLERANCE) -> bool:
    """True when both images share size, spacing, origin and direction (within ``tolerance``)."""
    return not grid_differences(reference, other, tolerance)


def check_same_grid(reference: sitk.Image, other: sitk.Image, reference_name: str, other_name: str) -> None:
    """Raise :class:`InputImageError` naming both images unless they share a grid."""
    problems = grid_differences(reference, other)
    if problems:
        raise InputImageError(f"{other_name} is not on the grid of {reference_name}: " + "; ".join(problems))
