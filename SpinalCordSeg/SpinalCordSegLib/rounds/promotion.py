"""The gate before a trained model becomes the round's model (``round promote``).

``round promote CANDIDATE --against PARENT --frozen BIDS`` runs ``drift`` on the frozen set
(parent as reference) and judges its ``summary.csv`` with :func:`gate_problems`:

- the mean across-contrast CSA SD may exceed the parent's by ``max_std_increase`` mm2 at most;
- the CSA scaling factor against the parent may be off 1 by ``max_scaling_deviation`` at most;
- the mean Dice on the scans with a manual mask may be below the parent's by ``max_dice_drop`` at most;
- the candidate must measure every scan the parent measures.

The defaults and their reasons are in ``docs/active-learning-loop.md``.

Example:
    >>> import pandas as pd
    >>> summary = pd.DataFrame([
    ...     {"model": "v1", "reference": True, "n_measured": 4, "std_increase_mm2": float("nan"),
    ...      "scaling_factor": float("nan"), "scaling_deviation": float("nan"), "dice_mean": 0.90},
    ...     {"model": "v2", "reference": False, "n_measured": 4, "std_increase_mm2": 0.1,
    ...      "scaling_factor": 1.08, "scaling_deviation": 0.08, "dice_mean": 0.91}])
    >>> gate_problems(summary, GateSettings())
    ['v2: CSA scaling factor 1.0800 vs the reference (tolerance +/-0.03)']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, List

from .drift import check_tolerances

if TYPE_CHECKING:  # pandas is imported where it is used (Slicer import rule)
    import pandas as pd

PROMOTION_FILE = "promotion.json"


@dataclass(frozen=True)
class GateSettings:
    """The gate's tolerances (see the module docstring)."""

    max_std_increase: float = 0.5
    max_scaling_deviation: float = 0.03
    max_dice_drop: float = 0.02

    def as_dict(self) -> dict:
        """The settings as JSON for the promotion record."""
        return asdict(self)


def gate_problems(summary: "pd.DataFrame", settings: GateSettings) -> List[str]:
    """Why the candidate (the non-reference row of a two-model drift summary) fails the gate; empty: it passes."""
    problems = check_tolerances(summary, settings.max_std_increase, settings.max_scaling_deviation)
    reference = summary[summary["reference"]].iloc[0]
    for _, row in summary[~summary["reference"]].iterrows():
        if math.isnan(reference["dice_mean"]):
            continue  # no manual mask in the frozen set: nothing to compare
        if math.isnan(row["dice_mean"]):
            problems.append(f"{row['model']}: no Dice (no cord found where the parent's Dice is "
                            f"{reference['dice_mean']:.3f})")
        elif reference["dice_mean"] - row["dice_mean"] > settings.max_dice_drop:
            problems.append(f"{row['model']}: mean Dice {row['dice_mean']:.3f} against the manual masks, the "
                            f"parent's {reference['dice_mean']:.3f} (tolerance -{settings.max_dice_drop:g})")
    return problems
