"""``spinalcordseg measure``: cord CSA and shape per slice, and lesion metrics.

Writes, from ``-o table.csv``:

- ``table.csv``: one row per axial slice (see
  :func:`SpinalCordSegLib.measures.morphometrics.cord_morphometrics`);
- ``table_summary.csv``: mean and SD over the selected slices, and per
  vertebral level when levels are given (``--discs`` disc labels,
  ``--bodies`` mid-vertebral labels or ``--levels`` a labelled cord; see
  :mod:`SpinalCordSegLib.measures.levels`), with the lesion count and volume
  per level when ``--lesion`` is given too;
- ``table_pam50.csv`` (with ``--pam50``): the per-slice metrics resampled onto
  the PAM50 template's slices of each level;
- ``table_lesions.csv`` (with ``--lesion``): one row per lesion (see
  :func:`SpinalCordSegLib.measures.lesion_metrics.lesion_metrics`);

and prints a short summary.

Example:
    $ spinalcordseg measure -i sub-01_T2w_label-SC_probseg.nii.gz \\
        --lesion sub-01_T2w_label-lesion_seg.nii.gz --discs sub-01_T2w_label-discs_dlabel.nii.gz \\
        --vert 2:4 --pam50 -o results/sub-01.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ..imaging.binarization import DEFAULT_THRESHOLD, check_threshold
from ..errors import InputImageError, SpinalCordSegError
from ..imaging.fileutil import write_csv_atomic

if TYPE_CHECKING:  # pandas loads with the measures, not with --help
    import pandas as pd


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``measure`` sub-command."""
    parser = subparsers.add_parser(
        "measure",
        help="cord cross-sectional area and shape per slice; lesion volume, length, damage ratio",
        description=(
            "Measure the spinal cord (CSA, diameters, eccentricity, solidity per axial slice, "
            "angle-corrected from the cord centreline) and, with --lesion, each lesion, "
            "as the Spinal Cord Toolbox's sct_process_segmentation and sct_analyze_lesion."
        ),
    )
    parser.add_argument("-i", "--input", required=True, type=Path, metavar="MASK_OR_SOFTMAP",
                        help="cord binary mask or probability map (NIfTI), values in [0, 1]")
    parser.add_argument("--lesion", type=Path, metavar="LESION",
                        help="lesion binary mask or probability map on the same grid")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--discs", type=Path, metavar="DISC_LABELS",
                        help="single-voxel intervertebral disc labels, SCT's numbering (3 = C2-C3), e.g. "
                             "*_label-discs_dlabel.nii.gz from sct_deepseg spine, TotalSpineSeg or the panel")
    levels.add_argument("--bodies", type=Path, metavar="BODY_LABELS",
                        help="single-voxel labels at mid-vertebral bodies (3 = C3; sct_label_utils -vert-body)")
    levels.add_argument("--levels", type=Path, metavar="LEVELS",
                        help="vertebral level label image on the same grid (e.g. sct_label_vertebrae's "
                             "*_labeled.nii.gz; 2 = C2)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="TABLE_CSV",
                        help="per-slice table; the summary and lesion tables go next to it "
                             "(<stem>_summary.csv, <stem>_lesions.csv)")
    parser.add_argument("--slices", type=_parse_range, metavar="FIRST:LAST",
                        help="average over these axial slices only (inclusive, counted from inferior)")
    parser.add_argument("--vert", type=_parse_range, metavar="FIRST:LAST",
                        help="average over these vertebral levels only (needs --discs, --bodies or --levels)")
    parser.add_argument("--pam50", action="store_true",
                        help="also write <stem>_pam50.csv: per-slice metrics on the PAM50 template's slices "
                             "(SCT's -normalize-PAM50; needs levels)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"a voxel at or above this value is cord or lesion (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--no-angle-correction", dest="angle_correction", action="store_false",
                        help="take the cord as perpendicular to the slices")
    parser.set_defaults(func=run_measure)


def level_source(args: argparse.Namespace):
    """The level image given (``--discs``, ``--bodies`` or ``--levels``) as a LevelSource, or None."""
    from ..measures.levels import LevelSource

    for kind, path in (("discs", args.discs), ("bodies", args.bodies), ("labelled", args.levels)):
        if path is not None:
            return LevelSource.read(kind, path)
    return None


def run_measure(args: argparse.Namespace) -> int:
    """Measure, write the tables, print the summary; return the exit code."""
    source_given = any(getattr(args, key) is not None for key in ("discs", "bodies", "levels"))
    if args.vert is not None and not source_given:
        raise SpinalCordSegError("--vert needs vertebral levels (--discs, --bodies or --levels)")
    if args.pam50 and not source_given:
        raise SpinalCordSegError("--pam50 needs vertebral levels (--discs, --bodies or --levels)")
    from ..measures.lesion_metrics import lesion_metrics
    from ..measures.levels import level_tables
    from ..measures.morphometrics import cord_morphometrics, load_image, summarize_cord

    check_threshold(args.threshold, "--threshold")
    paths = output_paths(args.output)
    cord = load_image(args.input)
    lesion = load_image(args.lesion) if args.lesion is not None else None
    source = level_source(args)
    vert = list(range(args.vert[0], args.vert[1] + 1)) if args.vert is not None else None
    tables: Dict[str, pd.DataFrame] = {}
    try:
        if source is None:
            per_slice = cord_morphometrics(cord, threshold=args.threshold, angle_correction=args.angle_correction,
                                           name=str(args.input))
            summary = summarize_cord(per_slice, slices=args.slices)
        else:
            result = level_tables(cord, source, lesion, threshold=args.threshold,
                                  angle_correction=args.angle_correction, pam50=args.pam50, slices=args.slices,
                                  levels=vert, name=str(args.input), lesion_name=str(args.lesion))
            per_slice, summary = result.per_slice, result.per_level
    except InputImageError as error:
        message = str(error)
        raise InputImageError(message if message.startswith(str(args.input)) else f"{args.input}: {message}") \
            from error
    tables.update(slices=per_slice, summary=summary)
    if source is not None and args.pam50:
        tables["pam50"] = result.pam50
    if lesion is not None:
        tables["lesions"] = lesion_metrics(lesion, cord, threshold=args.threshold,
                                           name=str(args.lesion), cord_name=str(args.input))
    paths["slices"].parent.mkdir(parents=True, exist_ok=True)
    for key, table in tables.items():
        write_csv_atomic(table, paths[key])
    print("\n".join(summary_lines(summary, tables.get("lesions"), [paths[key] for key in tables])))
    return 0


def output_paths(table: Path) -> Dict[str, Path]:
    """Paths of the per-slice, summary and lesion tables for ``-o table``."""
    if table.is_dir():
        raise SpinalCordSegError(f"{table}: is a folder; give a file name such as {table / 'table.csv'}")
    stem = table.with_suffix("") if table.suffix.lower() == ".csv" else table
    return {
        "slices": table,
        "summary": stem.with_name(stem.name + "_summary.csv"),
        "lesions": stem.with_name(stem.name + "_lesions.csv"),
        "pam50": stem.with_name(stem.name + "_pam50.csv"),
    }


def summary_lines(summary: pd.DataFrame, lesions: Optional[pd.DataFrame], written: List[Path]) -> List[str]:
    """Human-readable summary: mean CSA overall and per level, lesion totals, files written."""
    import pandas as pd

    from ..measures.lesion_metrics import lesion_totals

    lines = []
    for _, row in summary.iterrows():
        scope = "all selected slices" if pd.isna(row["level"]) else f"level {int(row['level'])}"
        if pd.notna(row["level"]) and row.get("level_name"):
            scope += f" ({row['level_name']})"
        lines.append(
            f"Cord, {scope} (slices {row['first_slice']}-{row['last_slice']}, n={row['n_slices']}): "
            f"CSA {row['area_mm2_mean']:.2f} +/- {row['area_mm2_sd']:.2f} mm2, "
            f"AP {row['diameter_AP_mm_mean']:.2f} mm, RL {row['diameter_RL_mm_mean']:.2f} mm, "
            f"angle {row['angle_deg_mean']:.1f} deg"
            + (f"; lesions {row['n_lesions']}, {row['lesion_volume_mm3']:.1f} mm3" if "n_lesions" in row else "")
        )
    if lesions is not None:
        totals = lesion_totals(lesions)
        line = f"Lesions: {totals['count']}, total volume {totals['total_volume_mm3']:.1f} mm3"
        if totals["count"]:
            line += (f", largest {totals['largest_volume_mm3']:.1f} mm3, "
                     f"max axial damage ratio {totals['max_axial_damage_ratio']:.2f}")
        lines.append(line)
    lines.append("Wrote " + ", ".join(str(path) for path in written))
    return lines


def _parse_range(text: str) -> Tuple[int, int]:
    """Parse ``FIRST:LAST`` (or a single ``N``) into an inclusive integer range."""
    try:
        bounds = [int(part) for part in text.split(":")]
    except ValueError:
        bounds = []
    if len(bounds) not in (1, 2) or bounds[0] > bounds[-1]:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST with FIRST <= LAST, got {text!r}")
    return bounds[0], bounds[-1]
