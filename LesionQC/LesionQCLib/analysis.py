"""Analysis of a session's rater tables: scores per source, paired tests, agreement.

The rater tables are merged with the session's key (which source is behind
every anonymous item); each (rater, case, item, structure) counts with its
latest revision. Items flagged as excluded (image unusable) and rows without a
score are left out. Then, per structure:

- ``summary.csv``: per source, the number of scores, mean, SD and median, for all
  raters together (``rater = "all"``) and per rater.
- ``wilcoxon.csv``: paired Wilcoxon signed-rank test (SciPy) between every two
  sources. The pairs are the same case scored by the same rater; ``rater = "all"``
  pools every rater's pairs, the other rows use one rater's pairs.
- ``kappa_pairwise.csv``: Cohen's kappa between every two raters on the items both
  scored, unweighted and linearly weighted (scikit-learn's ``cohen_kappa_score``).
- ``agreement.csv``: Fleiss' kappa for all raters, on the items every rater scored.
  No installed library has it (statsmodels is not a dependency), so
  :func:`fleiss_kappa` applies Fleiss (1971)'s formula to a pandas crosstab.
- ``ratings.csv``: the merged long table, with sources.
- ``distribution_<structure>.png``: score counts per source, all raters and per rater.

Example:
    >>> from LesionQCLib.analysis import analyze_session
    >>> result = analyze_session("qc-session", "qc-results")   # doctest: +SKIP
    >>> result.wilcoxon[["source_a", "source_b", "p_value"]]  # doctest: +SKIP
"""

from __future__ import annotations

import io
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import cohen_kappa_score
from SpinalCordSegLib.fileutil import write_text_atomic

from .errors import LesionQCError, RaterTableError
from .rater_table import RaterTable, load_rater_table
from .scales import Scale
from .session import KEY_FILE, SessionKey, SessionView, load_key

ALL_RATERS = "all"
ZERO_METHODS = ("wilcox", "pratt", "zsplit")
RATING_COLUMNS = ["rater", "case", "item", "source", "structure", "score", "flags", "comment", "revision",
                  "seconds", "excluded"]

PathLike = Union[str, Path]


@dataclass
class AnalysisResult:
    """The tables of an analysis (pandas DataFrames) and the plots written."""

    ratings: pd.DataFrame
    summary: pd.DataFrame
    wilcoxon: pd.DataFrame
    kappa_pairwise: pd.DataFrame
    agreement: pd.DataFrame
    plots: List[Path]


# --------------------------------------------------------------------------- inputs


def load_inputs(session_dir: PathLike, key_path: Optional[PathLike] = None,
                table_paths: Optional[Sequence[PathLike]] = None):
    """Load and cross-check a session, its key and its rater tables (all of ``ratings/`` by default).

    Returns ``(session, key, tables)``; raises a LesionQCError naming the file at fault.
    """
    session = SessionView.load(session_dir)
    key = load_key(Path(key_path) if key_path is not None else session.folder / KEY_FILE, session)
    paths = [Path(p) for p in table_paths] if table_paths else sorted(session.ratings_dir.glob("*.csv"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RaterTableError(f"rater tables not found: {', '.join(missing)}")
    tables = [load_rater_table(path, session) for path in paths]
    tables = [table for table in tables if table.ratings]
    raters = [table.rater for table in tables]
    for rater in sorted({r for r in raters if raters.count(r) > 1}):
        files = [str(t.path) for t in tables if t.rater == rater]
        raise RaterTableError(f"rater {rater!r} has several tables: {', '.join(files)}")
    return session, key, tables


def merge_ratings(session: SessionView, key: SessionKey, tables: Sequence[RaterTable]) -> pd.DataFrame:
    """One row per rater, case, item and structure (latest revision), with the item's source."""
    excluding = {flag.id for flag in session.scale.flags if flag.excludes}
    rows = [
        {
            "rater": r.rater, "case": r.case, "item": r.item, "source": key.source(r.case, r.item),
            "structure": r.structure, "score": r.score, "flags": "|".join(r.flags), "comment": r.comment,
            "revision": r.revision, "seconds": r.seconds, "excluded": bool(excluding & set(r.flags)),
        }
        for table in tables for r in table.latest().values()
    ]
    frame = pd.DataFrame(rows, columns=RATING_COLUMNS)
    frame["score"] = frame["score"].astype("Int64")
    return frame.sort_values(["rater", "case", "item", "structure"], ignore_index=True)


def usable_scores(ratings: pd.DataFrame) -> pd.DataFrame:
    """The rows that enter the statistics: a score given and the item not excluded."""
    frame = ratings[ratings["score"].notna() & ~ratings["excluded"]].copy()
    frame["score"] = frame["score"].astype(int)
    return frame


# --------------------------------------------------------------------------- statistics


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD (n - 1), median and count per structure and source, all raters and per rater."""
    pooled = scores.assign(rater=ALL_RATERS)
    frame = pd.concat([pooled, scores], ignore_index=True)
    summary = (frame.groupby(["structure", "rater", "source"], sort=False)["score"]
               .agg(n="count", mean="mean", sd="std", median="median").reset_index())
    # Structures as they come, then "all" before the raters in name order, then sources.
    order = summary["rater"].map(lambda rater: (rater != ALL_RATERS, rater))
    return (summary.assign(_rater=order).sort_values(["_rater", "source"], kind="stable")
            .sort_values("structure", key=lambda s: s.map(list(scores["structure"].unique()).index), kind="stable")
            .drop(columns="_rater").reset_index(drop=True))


def wilcoxon_tests(scores: pd.DataFrame, zero_method: str = "wilcox") -> pd.DataFrame:
    """Paired Wilcoxon signed-rank test between every two sources (SciPy, two-sided).

    ``zero_method`` is SciPy's: ``"wilcox"`` (SciPy's default) drops pairs with equal
    scores, ``"pratt"`` keeps them in the ranking.
    """
    if zero_method not in ZERO_METHODS:
        raise LesionQCError(f"zero method {zero_method!r} is not one of {ZERO_METHODS}")
    rows = []
    for structure, group in scores.groupby("structure", sort=False):
        sources = sorted(group["source"].unique())
        wide = group.pivot_table(index=["rater", "case"], columns="source", values="score", aggfunc="first")
        scopes = [(ALL_RATERS, wide)] + [(r, wide.xs(r, level="rater", drop_level=False))
                                         for r in sorted(group["rater"].unique())]
        for rater, table in scopes:
            for a, b in itertools.combinations(sources, 2):
                pairs = table[[a, b]].dropna()
                x, y = pairs[a].to_numpy(float), pairs[b].to_numpy(float)
                statistic = p_value = np.nan
                if np.any(x != y):  # SciPy has nothing to rank when every pair is equal
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # small-sample notes; the n columns say it
                        result = stats.wilcoxon(x, y, zero_method=zero_method)
                    statistic, p_value = float(result.statistic), float(result.pvalue)
                rows.append({
                    "structure": structure, "rater": rater, "source_a": a, "source_b": b,
                    "n_pairs": len(pairs), "n_different": int(np.sum(x != y)),
                    "mean_a": x.mean() if len(x) else np.nan, "mean_b": y.mean() if len(y) else np.nan,
                    "median_difference": float(np.median(y - x)) if len(x) else np.nan,
                    "statistic": statistic, "p_value": p_value, "zero_method": zero_method,
                })
    columns = ["structure", "rater", "source_a", "source_b", "n_pairs", "n_different", "mean_a", "mean_b",
               "median_difference", "statistic", "p_value", "zero_method"]
    return pd.DataFrame(rows, columns=columns)


def pairwise_kappa(scores: pd.DataFrame, scale: Scale) -> pd.DataFrame:
    """Cohen's kappa (unweighted and linear) of every two raters, on the items both scored."""
    rows = []
    for structure, group in scores.groupby("structure", sort=False):
        wide = group.pivot_table(index=["case", "item"], columns="rater", values="score", aggfunc="first")
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            both = wide[[a, b]].dropna()
            kappa = linear = np.nan
            if len(both):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # undefined kappa (one category only) stays NaN
                    kappa = cohen_kappa_score(both[a], both[b], labels=list(scale.values))
                    linear = cohen_kappa_score(both[a], both[b], labels=list(scale.values), weights="linear")
            rows.append({"structure": structure, "rater_a": a, "rater_b": b, "n_items": len(both),
                         "percent_agreement": 100.0 * float(np.mean(both[a] == both[b])) if len(both) else np.nan,
                         "kappa": float(kappa), "kappa_linear": float(linear)})
    return pd.DataFrame(rows, columns=["structure", "rater_a", "rater_b", "n_items", "percent_agreement", "kappa",
                                       "kappa_linear"])


def fleiss_kappa(counts: pd.DataFrame) -> float:
    """Fleiss' kappa of a units x categories table of rating counts (same number of raters per unit).

    Fleiss, J. L. (1971). Measuring nominal scale agreement among many raters.
    Psychological Bulletin, 76(5), 378-382. NaN when undefined (one category only).
    """
    table = counts.to_numpy(dtype=float)
    raters = table.sum(axis=1)
    if len(table) == 0 or np.any(raters != raters[0]) or raters[0] < 2:
        raise LesionQCError("Fleiss' kappa needs at least one unit and the same number (2 or more) of raters per unit")
    n = raters[0]
    observed = ((table ** 2).sum(axis=1) - n) / (n * (n - 1))
    proportions = table.sum(axis=0) / table.sum()
    expected = float(np.sum(proportions ** 2))
    if expected == 1.0:
        return float("nan")
    return float((observed.mean() - expected) / (1.0 - expected))


def agreement(scores: pd.DataFrame, scale: Scale) -> pd.DataFrame:
    """Fleiss' kappa of all raters per structure, on the items that every rater scored."""
    rows = []
    for structure, group in scores.groupby("structure", sort=False):
        raters = group["rater"].nunique()
        per_item = group.groupby(["case", "item"])["rater"].nunique()
        complete = per_item[per_item == raters].index
        kept = group.set_index(["case", "item"]).loc[complete].reset_index() if len(complete) else group.iloc[:0]
        kappa = np.nan
        if raters >= 2 and len(kept):
            counts = pd.crosstab([kept["case"], kept["item"]], kept["score"]).reindex(columns=scale.values,
                                                                                      fill_value=0)
            kappa = fleiss_kappa(counts)
        rows.append({"structure": structure, "n_raters": raters, "n_items": len(complete), "fleiss_kappa": kappa})
    return pd.DataFrame(rows, columns=["structure", "n_raters", "n_items", "fleiss_kappa"])


# --------------------------------------------------------------------------- plots and files


def plot_distributions(scores: pd.DataFrame, scale: Scale, out_dir: Path) -> List[Path]:
    """One PNG per structure: score counts per source, for all raters and for each rater."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    written = []
    sources = sorted(scores["source"].unique())
    width = 0.8 / max(1, len(sources))
    for structure, group in scores.groupby("structure", sort=False):
        panels = [(f"all raters (n={len(group)})", group)] + [
            (f"rater {r}", g) for r, g in sorted(group.groupby("rater"), key=lambda item: item[0])]
        figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharey=True, squeeze=False)
        for axis, (title, data) in zip(axes[0], panels):
            counts = pd.crosstab(data["score"], data["source"]).reindex(index=scale.values, columns=sources,
                                                                         fill_value=0)
            positions = np.arange(len(scale.values))
            for index, source in enumerate(sources):
                axis.bar(positions + (index - (len(sources) - 1) / 2) * width, counts[source], width, label=source)
            axis.set_xticks(positions, [f"{p.value}\n{p.anchor}" for p in scale.points], fontsize=7)
            axis.set_title(title, fontsize=9)
        axes[0][0].set_ylabel("number of scores")
        axes[0][-1].legend(fontsize=7, title="source", title_fontsize=7)
        figure.suptitle(f"{scale.title}: {structure}", fontsize=10)
        figure.tight_layout()
        path = out_dir / f"distribution_{structure}.png"
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        write_text_atomic(png.getvalue(), path)
        plt.close(figure)
        written.append(path)
    return written


def analyze(session: SessionView, key: SessionKey, tables: Sequence[RaterTable],
            zero_method: str = "wilcox") -> AnalysisResult:
    """Compute every table of the analysis (no files written)."""
    ratings = merge_ratings(session, key, tables)
    scores = usable_scores(ratings)
    if scores.empty:
        raise LesionQCError(f"{session.folder}: no scores to analyse (no rater table holds a usable score)")
    return AnalysisResult(
        ratings=ratings,
        summary=summarize(scores),
        wilcoxon=wilcoxon_tests(scores, zero_method),
        kappa_pairwise=pairwise_kappa(scores, session.scale),
        agreement=agreement(scores, session.scale),
        plots=[],
    )


def analyze_session(session_dir: PathLike, out_dir: PathLike, key_path: Optional[PathLike] = None,
                    table_paths: Optional[Sequence[PathLike]] = None, zero_method: str = "wilcox") -> AnalysisResult:
    """Load, check, analyse and write the CSV tables and PNG plots to ``out_dir``.

    Every input is checked before the first file is written.
    """
    session, key, tables = load_inputs(session_dir, key_path, table_paths)
    result = analyze(session, key, tables, zero_method)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, pd.DataFrame] = {
        "ratings.csv": result.ratings, "summary.csv": result.summary, "wilcoxon.csv": result.wilcoxon,
        "kappa_pairwise.csv": result.kappa_pairwise, "agreement.csv": result.agreement,
    }
    for name, frame in files.items():
        write_text_atomic(frame.to_csv(index=False), out_dir / name)
    result.plots = plot_distributions(usable_scores(result.ratings), session.scale, out_dir)
    return result
