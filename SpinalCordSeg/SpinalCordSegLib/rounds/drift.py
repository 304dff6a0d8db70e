"""Morphometric drift between model versions on a frozen BIDS test set.

Each model's cord predictions of the same scans (written by
:func:`SpinalCordSegLib.rounds.cohort.run_batch`) are measured with the project's
morphometrics (:func:`SpinalCordSegLib.measures.morphometrics.cord_morphometrics`,
SCT's per-slice CSA) and compared with the first model, the reference:

- per scan and model: the mean and SD of the CSA over a vertebral range
  (C2-C3 by default) when the scan has vertebral levels, else over a slice
  range (or every slice with cord, which the report flags: the CSA then
  depends on each scan's field of view). Levels come from the labels folder,
  first disc labels (``<case>_label-discs_dlabel.nii.gz``, SCT's numbering),
  then a labelled cord (``<case>_label-SC_seg_labeled.nii.gz``), or, with
  ``levels_with="spine"``, from TotalSpineSeg's disc labels
  (:mod:`SpinalCordSegLib.inference.spine`). Discs are projected onto the
  reference model's cord (the first model with cord in the scan), so that
  every model is averaged over the same slices; Dice, average symmetric
  surface distance and relative volume error against a manual mask in
  ``derivatives/labels`` when there is one;
- per participant (subject and session) and model: the standard deviation of
  the CSA across contrasts (sample SD); per model its mean over participants
  and the paired difference to the reference (Wilcoxon signed-rank test);
- per slice: the ratio of each model's CSA to the reference's (the scaling
  factor along the cord); per model, the median over scans of its mean over
  the averaged range.

Example:
    >>> from SpinalCordSegLib.rounds.cohort import find_scans
    >>> from SpinalCordSegLib.rounds.drift import DriftSettings, ModelPredictions, analyse_drift, write_drift
    >>> scans = find_scans("/data/frozen", "sub-*.nii.gz")  # doctest: +SKIP
    >>> models = [ModelPredictions("v3.0", Path("out/predictions/v3.0"), "sc"),
    ...           ModelPredictions("v3.1", Path("out/predictions/v3.1"), "sc")]  # doctest: +SKIP
    >>> result = analyse_drift(scans, models, DriftSettings(labels=Path("/data/frozen/derivatives/labels")))  # doctest: +SKIP
    >>> result.summary[["model", "contrast_std_mm2", "std_increase_mm2", "wilcoxon_p"]]  # doctest: +SKIP
    >>> write_drift(result, "out")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, SpinalCordSegError
from ..imaging.fileutil import remove_stale_temporaries, write_csv_atomic, write_text_atomic
from ..imaging.naming import SESSION, SUBJECT, output_name
from .cohort import DISCS_SUFFIX, LEVELS_SUFFIX, level_source

if TYPE_CHECKING:  # pandas is imported where it is used (Slicer import rule)
    import pandas as pd

    from .cohort import Scan

DRIFT_FILES = ("drift.csv", "summary.csv", "scaling.csv", "csa_per_contrast.png", "contrast_std.png",
               "scaling.png", "report.md")
DEFAULT_VERT = (2, 3)
TRUTH_SUFFIX = "_label-SC_seg"
NO_LEVELS_NOTE = "no vertebral levels: every slice with cord"


@dataclass(frozen=True)
class ModelPredictions:
    """A model's predictions of the cohort: a batch derivatives folder and its cord structure."""

    name: str
    folder: Path
    structure: str

    def files(self, scan: "Scan") -> Tuple[Path, Path]:
        """(soft map, binary mask) of the cord of ``scan``."""
        folder = scan.derivative_folder(self.folder)
        return (folder / output_name(scan.case, self.structure, "probseg"),
                folder / output_name(scan.case, self.structure, "seg"))


@dataclass(frozen=True)
class DriftSettings:
    """How the CSA is measured and averaged.

    Attributes:
        labels: the dataset's ``derivatives/labels`` (manual masks, level images); None: none.
        vert: vertebral levels averaged where a scan has a level image (inclusive).
        slices: axial slice range (inclusive, from inferior) averaged otherwise, and
            also applied with levels; None: every slice with cord.
        binary: measure the binary masks instead of the soft maps.
        angle_correction: correct the CSA for the cord's angle to the slices.
        threshold: the cord's level in the soft map (slices with cord, outline).
        truth_suffix / levels_suffix / discs_suffix: file names in ``labels`` are
            ``<case><suffix>.nii.gz`` in the scan's own folder layout.
        levels_with: ``"labels"`` (level files only) or ``"spine"`` (TotalSpineSeg's
            disc labels where the labels folder has none).
    """

    labels: Optional[Path] = None
    vert: Tuple[int, int] = DEFAULT_VERT
    slices: Optional[Tuple[int, int]] = None
    binary: bool = False
    angle_correction: bool = True
    threshold: float = 0.5
    truth_suffix: str = TRUTH_SUFFIX
    levels_suffix: str = LEVELS_SUFFIX
    discs_suffix: str = DISCS_SUFFIX
    levels_with: str = "labels"

    def label_file(self, scan: "Scan", suffix: str) -> Optional[Path]:
        """``labels/<scan's folders>/<case><suffix>.nii.gz`` when it exists, else None."""
        if self.labels is None:
            return None
        path = self.labels / Path(scan.relative).parent / f"{scan.case}{suffix}.nii.gz"
        return path if path.is_file() else None


@dataclass
class DriftResult:
    """The tables of a drift analysis (pandas DataFrames) and the reference's name."""

    reference: str
    drift: "pd.DataFrame"
    summary: "pd.DataFrame"
    scaling: "pd.DataFrame"
    settings: DriftSettings
    violations: List[str] = field(default_factory=list)


def contrast_of(case: str) -> str:
    """The scan's name without its subject and session: ``sub-01_acq-MTon_MTS`` -> ``acq-MTon_MTS``."""
    entities = (SUBJECT, SESSION)
    return "_".join(part for part in case.split("_") if not any(e.fullmatch(part) for e in entities)) or case


def overlap_metrics(prediction: sitk.Image, truth: sitk.Image) -> Dict[str, float]:
    """Dice, average symmetric surface distance (mm) and relative volume error (%) of two masks.

    Both are binary images on the same grid (non-zero is inside). Surfaces are
    the voxels with a face neighbour outside (the scan's edge is not a
    surface: a cord cut by the field of view is not a boundary); the surface
    distance is the mean, over the voxels of both surfaces, of the distance
    to the other surface. It is NaN when either mask is empty, as is the
    relative volume error of an empty manual mask.
    """
    from .correction import correction_stats

    masks = [sitk.Cast(sitk.NotEqual(image, 0), sitk.sitkUInt8) for image in (prediction, truth)]
    arrays = [sitk.GetArrayViewFromImage(mask).astype(bool) for mask in masks]
    stats = correction_stats(arrays[0], arrays[1])
    volumes = [int(np.count_nonzero(a)) for a in arrays]
    result = {"dice": stats.dice, "asd_mm": math.nan,
              "rve_percent": 100.0 * (volumes[0] - volumes[1]) / volumes[1] if volumes[1] else math.nan}
    if not all(volumes):
        return result
    surfaces = [sitk.LabelContour(mask, fullyConnected=False) for mask in masks]
    distances = []
    for surface, other in ((surfaces[0], surfaces[1]), (surfaces[1], surfaces[0])):
        to_other = sitk.Abs(sitk.SignedMaurerDistanceMap(other, insideIsPositive=False, squaredDistance=False,
                                                         useImageSpacing=True))
        distances.append(sitk.GetArrayViewFromImage(to_other)[sitk.GetArrayViewFromImage(surface) > 0])
    result["asd_mm"] = float(np.concatenate(distances).mean())
    return result


def _per_slice(cord: sitk.Image, levels: Optional[np.ndarray], settings: DriftSettings,
               name: str) -> Tuple["pd.DataFrame", str]:
    """Per-slice morphometrics with ``level`` and ``in_range`` columns, and a note ('' or why nothing was measured)."""
    import pandas as pd

    from ..measures.morphometrics import cord_morphometrics

    try:
        table = cord_morphometrics(cord, threshold=settings.threshold, angle_correction=settings.angle_correction,
                                   name=name, level_per_slice=levels)
    except InputImageError as error:
        if "is empty" not in str(error):
            raise
        return pd.DataFrame(columns=["slice", "z_mm", "level", "area_mm2", "in_range"]), "no cord found"
    if "level" not in table:
        table["level"] = pd.array([pd.NA] * len(table), dtype="Int64")
    in_range = table["area_mm2"].notna()
    if settings.slices is not None:
        in_range &= table["slice"].between(*settings.slices)
    if levels is not None:
        in_range &= table["level"].isin(list(range(settings.vert[0], settings.vert[1] + 1))).fillna(False)
    table["in_range"] = in_range.astype(bool)
    note = "" if table["in_range"].any() else "no measured slice in the range"
    return table, note


def _range_text(settings: DriftSettings, has_levels: bool) -> str:
    parts = []
    if has_levels:
        first, last = settings.vert
        parts.append(f"levels {first}-{last}" if first != last else f"level {first}")
    if settings.slices is not None:
        parts.append(f"slices {settings.slices[0]}-{settings.slices[1]}")
    return ", ".join(parts) or "all slices"


def measure_scan(scan: "Scan", models: Sequence[ModelPredictions], settings: DriftSettings,
                 spine: Optional[Callable[[Path], sitk.Image]] = None
                 ) -> Tuple[List[dict], Dict[str, "pd.DataFrame"]]:
    """Rows of ``drift.csv`` for one scan (one per model) and each model's per-slice table."""
    from ..measures.levels import levels_per_slice
    from ..measures.morphometrics import load_image, summarize_cord

    source = level_source(scan, settings.labels, settings.levels_with, spine, settings.discs_suffix,
                          settings.levels_suffix)
    truth_path = settings.label_file(scan, settings.truth_suffix)
    truth = load_image(truth_path) if truth_path else None
    cords, segs = {}, {}
    for model in models:
        soft_path, seg_path = model.files(scan)
        segs[model.name] = (load_image(seg_path), seg_path)
        cord_path = seg_path if settings.binary else soft_path
        cords[model.name] = (segs[model.name][0] if settings.binary else load_image(soft_path), cord_path)
    levels = None
    if source is not None:
        for cord, cord_path in cords.values():  # the reference's cord, or the next model's where it found none
            try:
                levels = levels_per_slice(cord, source, settings.threshold, name=str(cord_path))
                break
            except InputImageError as error:
                if "is empty" not in str(error):
                    raise
    rows, tables = [], {}
    for model in models:
        cord, cord_path = cords[model.name]
        table, note = _per_slice(cord, levels, settings, str(cord_path))
        if source is None and not note:
            note = NO_LEVELS_NOTE
        tables[model.name] = table
        row = {"subject": scan.subject, "session": scan.session, "contrast": contrast_of(scan.case),
               "scan": scan.relative, "model": model.name, "range": _range_text(settings, levels is not None),
               "levels": source.kind if source is not None else "none",
               "n_slices": 0, "csa_mean_mm2": math.nan, "csa_sd_mm2": math.nan,
               "dice": math.nan, "asd_mm": math.nan, "rve_percent": math.nan, "note": note}
        if table["in_range"].any():
            summary = summarize_cord(table.loc[table["in_range"]])
            row.update(n_slices=int(summary.loc[0, "n_slices"]), csa_mean_mm2=float(summary.loc[0, "area_mm2_mean"]),
                       csa_sd_mm2=float(summary.loc[0, "area_mm2_sd"]))
        if truth is not None:
            from ..imaging.grid import check_same_grid

            seg, seg_path = segs[model.name]
            check_same_grid(seg, truth, str(seg_path), str(truth_path))
            row.update(overlap_metrics(seg, truth))
        rows.append(row)
    return rows, tables


def _contrast_std(drift: "pd.DataFrame") -> "pd.DataFrame":
    """Per model and participant (subject, session) with two or more measured contrasts: CSA SD across them."""
    measured = drift.dropna(subset=["csa_mean_mm2"])
    grouped = measured.groupby(["model", "subject", "session"], sort=False)["csa_mean_mm2"]
    table = grouped.agg(contrast_std_mm2="std", n_contrasts="count").reset_index()
    return table[table["n_contrasts"] >= 2]


def summarize_drift(drift: "pd.DataFrame", scaling: "pd.DataFrame", reference: str,
                    models: Sequence[str]) -> "pd.DataFrame":
    """``summary.csv``: per model, CSA, across-contrast SD and its paired test, scaling, agreement."""
    import pandas as pd
    from scipy.stats import wilcoxon

    stds = _contrast_std(drift)
    by_participant = stds.pivot_table(index=["subject", "session"], columns="model", values="contrast_std_mm2")
    rows = []
    for model in models:
        scans = drift[drift["model"] == model]
        own = stds[stds["model"] == model]
        row = {"model": model, "reference": model == reference, "n_scans": len(scans),
               "n_measured": int(scans["csa_mean_mm2"].notna().sum()), "csa_mean_mm2": scans["csa_mean_mm2"].mean(),
               "n_participants": len(own), "contrast_std_mm2": own["contrast_std_mm2"].mean(),
               "n_paired": 0, "std_increase_mm2": math.nan, "wilcoxon_statistic": math.nan, "wilcoxon_p": math.nan,
               "scaling_factor": math.nan, "scaling_deviation": math.nan,
               "dice_mean": scans["dice"].mean(), "asd_mean_mm": scans["asd_mm"].mean(),
               "rve_mean_percent": scans["rve_percent"].mean()}
        if model != reference and {model, reference} <= set(by_participant.columns):
            pairs = by_participant[[model, reference]].dropna()
            row["n_paired"] = len(pairs)
            if len(pairs):
                row["std_increase_mm2"] = float((pairs[model] - pairs[reference]).mean())
            if len(pairs) >= 2:  # SciPy refuses a test on one pair
                with warnings.catch_warnings():  # few pairs: SciPy warns, the p-value says it
                    warnings.simplefilter("ignore", RuntimeWarning)
                    test = wilcoxon(pairs[model], pairs[reference])
                row["wilcoxon_statistic"], row["wilcoxon_p"] = float(test.statistic), float(test.pvalue)
        ratios = scaling[(scaling["model"] == model) & scaling["in_range"]]
        if len(ratios):
            # Median over scans: one scan the model fails on (a few slices, ratios of 5) does not make the factor.
            row["scaling_factor"] = float(ratios.groupby("scan")["ratio"].mean().median())
            row["scaling_deviation"] = abs(row["scaling_factor"] - 1.0)
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_rows(scan: "Scan", tables: Dict[str, "pd.DataFrame"], reference: str) -> "pd.DataFrame":
    """``scaling.csv`` rows of one scan: per model and slice measured by it and the reference, CSA ratio."""
    import pandas as pd

    base = tables[reference][["slice", "z_mm", "level", "area_mm2", "in_range"]]
    parts = []
    for model, table in tables.items():
        if model == reference:
            continue
        both = base.merge(table[["slice", "area_mm2", "in_range"]], on="slice", suffixes=("_reference", ""))
        both = both[both["area_mm2_reference"].gt(0) & both["area_mm2"].notna()]
        parts.append(pd.DataFrame({
            "subject": scan.subject, "session": scan.session, "contrast": contrast_of(scan.case),
            "scan": scan.relative, "model": model, "slice": both["slice"], "z_mm": both["z_mm"],
            "level": both["level"], "csa_reference_mm2": both["area_mm2_reference"], "csa_mm2": both["area_mm2"],
            "ratio": both["area_mm2"] / both["area_mm2_reference"],
            "in_range": both["in_range"] & both["in_range_reference"],
        }))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SCALING_COLUMNS)


SCALING_COLUMNS = ("subject", "session", "contrast", "scan", "model", "slice", "z_mm", "level",
                   "csa_reference_mm2", "csa_mm2", "ratio", "in_range")


def check_tolerances(summary: "pd.DataFrame", max_std_increase: Optional[float] = None,
                     max_scaling_deviation: Optional[float] = None) -> List[str]:
    """Why the non-reference models drift beyond the tolerances (empty: no drift).

    With any tolerance set, a model that measures fewer scans than the
    reference (no cord found, nothing in the range) drifts too, and so does
    one whose measure of that tolerance cannot be computed.
    """
    if max_std_increase is None and max_scaling_deviation is None:
        return []
    reference = summary[summary["reference"]].iloc[0]
    problems = []
    for _, row in summary[~summary["reference"]].iterrows():
        if row["n_measured"] < reference["n_measured"]:
            problems.append(f"{row['model']}: measured {row['n_measured']} scan(s), the reference "
                            f"{reference['n_measured']}")
        for tolerance, column, what in ((max_std_increase, "std_increase_mm2", "no participant with two measured "
                                          "contrasts in both models"),
                                         (max_scaling_deviation, "scaling_deviation", "no slice measured by both")):
            if tolerance is not None and math.isnan(row[column]):  # a gate that cannot judge must not pass
                problems.append(f"{row['model']}: {column} cannot be computed ({what})")
        if max_std_increase is not None and row["std_increase_mm2"] > max_std_increase:
            problems.append(f"{row['model']}: across-contrast CSA SD up by {row['std_increase_mm2']:.3f} mm2 "
                            f"(tolerance {max_std_increase:g} mm2)")
        if max_scaling_deviation is not None and row["scaling_deviation"] > max_scaling_deviation:
            problems.append(f"{row['model']}: CSA scaling factor {row['scaling_factor']:.4f} vs the reference "
                            f"(tolerance +/-{max_scaling_deviation:g})")
    return problems


def analyse_drift(scans: Sequence["Scan"], models: Sequence[ModelPredictions], settings: DriftSettings,
                  max_std_increase: Optional[float] = None,
                  max_scaling_deviation: Optional[float] = None,
                  spine: Optional[Callable[[Path], sitk.Image]] = None) -> DriftResult:
    """Measure every scan with every model and compare them with the first model (the reference).

    ``spine`` (scan path -> disc label image) stands for TotalSpineSeg with
    ``settings.levels_with == "spine"``; None: :func:`SpinalCordSegLib.inference.spine.spine_disc_labels`.
    """
    import pandas as pd

    if len(models) < 2:
        raise SpinalCordSegError("drift compares models: give at least two (the first is the reference)")
    if not scans:
        raise SpinalCordSegError("no scan to measure")
    reference = models[0].name
    rows, scaling = [], []
    for scan in scans:
        scan_rows, tables = measure_scan(scan, models, settings, spine)
        rows += scan_rows
        scaling.append(scaling_rows(scan, tables, reference))
    drift = pd.DataFrame(rows)
    scaling_table = pd.concat(scaling, ignore_index=True)
    summary = summarize_drift(drift, scaling_table, reference, [m.name for m in models])
    return DriftResult(reference, drift, summary, scaling_table, settings,
                       check_tolerances(summary, max_std_increase, max_scaling_deviation))


# ------------------------------------------------------------------ plots and report

def _save_figure(figure, path: Path) -> Path:
    """Save a matplotlib figure with the atomic writer: no half-written PNG, no temporary file a rerun keeps."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    return write_text_atomic(png.getvalue(), path)


def plot_drift(result: DriftResult, folder: Path) -> Dict[str, Path]:
    """The three PNG figures of a drift analysis; returns name -> path."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in Slicer and on a cluster

    models = list(result.summary["model"])
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    drift = result.drift.dropna(subset=["csa_mean_mm2"])
    contrasts = sorted(drift["contrast"].unique())
    paths = {}

    figure = Figure(figsize=(max(6.0, 1.6 * len(contrasts) * max(1, len(models)) / 2), 4.5), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(models)
    rng = np.random.default_rng(0)  # jitter of the points, the same on every run
    for i, model in enumerate(models):
        positions = np.arange(len(contrasts)) + (i - (len(models) - 1) / 2) * width
        values = [drift[(drift["model"] == model) & (drift["contrast"] == c)]["csa_mean_mm2"].to_numpy()
                  for c in contrasts]
        kept = [(p, v) for p, v in zip(positions, values) if len(v)]
        if kept:
            axes.boxplot([v for _, v in kept], positions=[p for p, _ in kept], widths=width * 0.8,
                         patch_artist=True, boxprops={"facecolor": colours[model], "alpha": 0.35},
                         medianprops={"color": colours[model]}, showfliers=False)
        for position, value in kept:
            axes.scatter(position + rng.uniform(-width / 5, width / 5, len(value)), value, s=14,
                         color=colours[model], zorder=3)
        axes.plot([], [], "s", color=colours[model], label=model)
    axes.set_xticks(range(len(contrasts)), contrasts)
    axes.set_xlim(-0.5, len(contrasts) - 0.5)
    axes.set_ylabel("CSA (mm²)")
    axes.set_title(f"Cord CSA per contrast and model ({_range_label(result)})")
    axes.legend(title="model")
    paths["csa_per_contrast"] = _save_figure(figure, folder / "csa_per_contrast.png")

    stds = _contrast_std(result.drift)
    figure = Figure(figsize=(max(4.5, 1.5 * len(models)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    values = [stds[stds["model"] == m]["contrast_std_mm2"].to_numpy() for m in models]
    kept = [i for i, v in enumerate(values) if len(v)]
    if kept:
        boxes = axes.boxplot([values[i] for i in kept], positions=kept, widths=0.5, patch_artist=True,
                             showfliers=False)
        for i, box in zip(kept, boxes["boxes"]):
            box.set(facecolor=colours[models[i]], alpha=0.35)
    # One line per participant across the models: the pairing of the Wilcoxon test.
    wide = stds.pivot_table(index=["subject", "session"], columns="model", values="contrast_std_mm2")
    for _, participant in wide.reindex(columns=models).iterrows():
        axes.plot(range(len(models)), participant.to_numpy(), "o-", color="0.4", alpha=0.7, markersize=4)
    axes.set_xticks(range(len(models)), models)
    axes.set_xlim(-0.5, len(models) - 0.5)
    axes.set_ylabel("SD of CSA across contrasts (mm²)")
    axes.set_title("Across-contrast CSA SD per participant")
    paths["contrast_std"] = _save_figure(figure, folder / "contrast_std.png")

    others = [m for m in models if m != result.reference]
    figure = Figure(figsize=(7.0, 3.2 * len(others) + 0.8), layout="constrained")
    for index, model in enumerate(others):
        axes = figure.add_subplot(len(others), 1, index + 1)
        rows = result.scaling[result.scaling["model"] == model]
        for i, (scan, group) in enumerate(rows.groupby("scan", sort=True)):
            line, = axes.plot(group["z_mm"], group["ratio"], "-", color=f"C{i % 10}", alpha=0.5,
                              label=f"sub-{group['subject'].iloc[0]} {group['contrast'].iloc[0]}")
            selected = group[group["in_range"]]
            axes.plot(selected["z_mm"], selected["ratio"], "o", color=line.get_color(), markersize=3)
        axes.axhline(1.0, color="k", linewidth=0.8)
        factor = result.summary.set_index("model").loc[model, "scaling_factor"]
        if not math.isnan(factor):
            axes.axhline(factor, color="C3", linestyle="--", linewidth=1, label=f"scaling factor {factor:.3f}")
        # A few slices at the cord's ends or of a failed scan have ratios of 5 or 0: keep the bulk readable.
        spread = np.abs(rows["ratio"].to_numpy(dtype=float) - 1.0)
        half = max(0.2, 1.2 * float(np.percentile(spread, 90))) if len(spread) else 0.5
        clipped = bool((spread > half).any())
        axes.set_ylim(1.0 - half, 1.0 + half)
        axes.set_ylabel(f"CSA {model} / {result.reference}")
        axes.set_title(f"Scaling factor along the cord: {model} vs {result.reference}\n"
                       f"(dots: averaged range{'; some slices beyond the axis' if clipped else ''})", fontsize=10)
        axes.legend(fontsize=7, ncol=2)
    if others:
        axes.set_xlabel("slice position, superior coordinate (mm)")
    paths["scaling"] = _save_figure(figure, folder / "scaling.png")
    return paths


def _range_label(result: DriftResult) -> str:
    ranges = sorted(result.drift["range"].unique())
    return "; ".join(ranges)


def _levels_warning(result: DriftResult) -> List[str]:
    """Report lines naming the scans measured without vertebral levels (empty when every scan has levels)."""
    if "levels" not in result.drift:
        return []
    without = sorted(result.drift.loc[result.drift["levels"] == "none", "scan"].unique())
    if not without:
        return []
    return [f"**{len(without)} scan(s) without vertebral levels**: their CSA is averaged over every slice with "
            "cord (or the --slices range), so it depends on each scan's field of view and is not comparable "
            "across contrasts at C2-C3. Add disc labels (`<case>" + result.settings.discs_suffix + ".nii.gz`, "
            "e.g. clicked in the Slicer panel) or run with `--levels-with spine` (TotalSpineSeg): "
            + ", ".join(f"`{scan}`" for scan in without) + ".", ""]


def report_markdown(result: DriftResult, tolerances: Dict[str, Optional[float]]) -> str:
    """``report.md``: verdict, settings, summary and per-scan tables, the three figures."""
    settings = result.settings
    verdict = ("**Drift beyond tolerance:**\n\n" + "\n".join(f"- {p}" for p in result.violations)
               if result.violations else
               "**No drift beyond tolerance.**" if any(v is not None for v in tolerances.values()) else
               "No tolerance set: no verdict.")
    tolerance_text = ", ".join(f"{name} {value:g}" for name, value in tolerances.items() if value is not None)
    lines = [
        "# Morphometric drift report", "",
        f"Reference model: `{result.reference}`; compared: "
        + ", ".join(f"`{m}`" for m in result.summary["model"] if m != result.reference) + ".", "",
        verdict, "",
        *_levels_warning(result),
        "## Settings", "",
        f"- CSA from the {'binary masks' if settings.binary else 'soft maps'}"
        f"{', angle-corrected' if settings.angle_correction else ', not angle-corrected'}"
        f" (threshold {settings.threshold:g}); ranges averaged (per scan): {_range_label(result)}.",
        f"- Vertebral levels {settings.vert[0]}-{settings.vert[1]} (2 = C2) where the scan has levels: disc labels "
        f"`<case>{settings.discs_suffix}.nii.gz` (SCT's numbering, projected onto the reference's cord centreline), "
        f"else a labelled cord `<case>{settings.levels_suffix}.nii.gz`, in `{settings.labels}`"
        + (", else TotalSpineSeg's disc labels" if settings.levels_with == "spine" else "")
        + f"; manual masks `<case>{settings.truth_suffix}.nii.gz` there give Dice, ASD and RVE.",
        f"- Tolerances: {tolerance_text or 'none'}.", "",
        "## Summary per model", "",
        result.summary.to_markdown(index=False, floatfmt=".4g"), "",
        "`contrast_std_mm2`: mean over participants of the SD of the CSA across their contrasts; "
        "`std_increase_mm2`: mean paired difference to the reference (Wilcoxon signed-rank test); "
        "`scaling_factor`: median over scans of the mean CSA ratio to the reference over the averaged slices.", "",
        "## Figures", "",
        "![CSA per contrast and model](csa_per_contrast.png)", "",
        "![Across-contrast SD per model](contrast_std.png)", "",
        "![Scaling factor along the cord](scaling.png)", "",
        "## Per scan", "",
        result.drift.to_markdown(index=False, floatfmt=".4g"), "",
    ]
    return "\n".join(lines)


def write_drift(result: DriftResult, folder: Union[str, Path],
                tolerances: Optional[Dict[str, Optional[float]]] = None) -> List[Path]:
    """Write the CSV tables, the figures and ``report.md`` into ``folder``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # left by a killed run; each one is logged
    written = []
    for name, table in (("drift.csv", result.drift), ("summary.csv", result.summary),
                        ("scaling.csv", result.scaling)):
        write_csv_atomic(table, folder / name)
        written.append(folder / name)
    written += plot_drift(result, folder).values()
    written.append(write_text_atomic(report_markdown(result, tolerances or {}), folder / "report.md"))
    return written
