"""Analysis of a session's rater tables: scores per source, paired tests, agreement.

The rater tables are merged with the session's key (which source is behind
every anonymous item, which case a session case shows, first showing or
repeat); each (rater, case, item, structure) counts with its latest revision.
Items flagged as excluded (image unusable) and rows without a score are left
out. Repeats enter the intra-rater table only; every other statistic uses
first showings. Then, per structure, every table with the number of items or
pairs it used:

- ``summary.csv``: per source, the number of scores, mean, SD and median, for all
  raters together (``rater = "all"``) and per rater.
- ``wilcoxon.csv``: paired Wilcoxon signed-rank test between every two sources
  (pingouin over SciPy), with the matched-pairs rank-biserial correlation (Kerby
  2014) as effect size, positive when ``source_b`` scores higher. The pairs are the
  same case scored by the same rater; ``rater = "all"`` pools every rater's pairs.
- ``kappa_pairwise.csv``: Cohen's kappa between every two raters on the items both
  scored: unweighted, linear and quadratic weights (scikit-learn).
- ``agreement.csv``: all raters together: Fleiss' kappa (statsmodels) and ICC(2,1),
  ICC(2,k) with 95 % confidence intervals (pingouin; two-way random effects,
  absolute agreement, Shrout & Fleiss 1979) on the items every rater scored;
  Krippendorff's alpha for ordinal data (``krippendorff``) on every item scored
  by two raters or more.
- ``intra_rater.csv``: per rater, the first and the repeated score of the same case
  and source (``make-session --repeat-fraction``): percent agreement, Cohen's kappa
  unweighted, linear and quadratic.
- ``ratings.csv``: the merged long table, with sources.
- ``scores_<structure>.png``: violin and box per source, all raters and per rater,
  with each group's Wilcoxon p-value above it; ``agreement_heatmap.png``: linear
  weighted kappa between raters (intra-rater kappa on the diagonal); with
  ``by=COLUMN``, ``summary_by_<COLUMN>.csv``, ``wilcoxon_by_<COLUMN>.csv`` and
  ``by_<COLUMN>_<structure>.png``, stratified by a manifest metadata column.

statsmodels, pingouin, krippendorff and matplotlib are imported where used:
the Slicer module never loads this file.

Example:
    >>> from LesionQCLib.analysis import analyze_session
    >>> result = analyze_session("qc-session", "qc-results", by="contrast")   # doctest: +SKIP
    >>> result.wilcoxon[["source_a", "source_b", "n_pairs", "p_value", "rank_biserial"]]  # doctest: +SKIP
"""

from __future__ import annotations

import io
import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score
from SpinalCordSegLib.imaging.fileutil import write_csv_atomic, write_text_atomic

from .errors import LesionQCError, RaterTableError
from .rater_table import RaterTable, load_rater_table
from .scales import Scale
from .session import (PathLike, SessionKey, SessionView, find_key, is_portable_name, load_key,
                      refuse_output_in_session)

ALL_RATERS = "all"
ZERO_METHODS = ("wilcox", "pratt", "zsplit")
RATING_COLUMNS = ["rater", "case", "shown_as", "showing", "item", "source", "structure", "score", "flags",
                  "comment", "revision", "seconds", "excluded"]
WILCOXON_COLUMNS = ["structure", "rater", "source_a", "source_b", "n_pairs", "n_different", "mean_a", "mean_b",
                    "median_difference", "statistic", "p_value", "rank_biserial", "zero_method"]
KAPPA_WEIGHTS = {"kappa": None, "kappa_linear": "linear", "kappa_quadratic": "quadratic"}



@dataclass
class AnalysisResult:
    """The tables of an analysis (pandas DataFrames) and the plots written."""

    ratings: pd.DataFrame
    summary: pd.DataFrame
    wilcoxon: pd.DataFrame
    kappa_pairwise: pd.DataFrame
    agreement: pd.DataFrame
    intra_rater: pd.DataFrame
    stratified: Dict[str, pd.DataFrame] = field(default_factory=dict)  # "summary_by_X", "wilcoxon_by_X"
    plots: List[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- inputs


def load_inputs(session_dir: PathLike, key_path: Optional[PathLike] = None,
                table_paths: Optional[Sequence[PathLike]] = None):
    """Load and cross-check a session, its key and its rater tables (all of ``ratings/`` by default).

    The key is looked for where make-session puts it (:func:`session.find_key`)
    unless ``key_path`` says. Returns ``(session, key, tables)``; raises a
    LesionQCError naming the file at fault.
    """
    session = SessionView.load(session_dir)
    key = load_key(Path(key_path) if key_path is not None else find_key(session), session)
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
    """One row per rater, session case, item and structure (latest revision), with case and source.

    ``case`` is the real case, ``shown_as`` the session's case id, ``showing`` 1 or 2 (repeat).
    """
    excluding = {flag.id for flag in session.scale.flags if flag.excludes}
    rows = [
        {
            "rater": r.rater, "case": key.case_of.get(r.case, r.case), "shown_as": r.case,
            "showing": key.showing.get(r.case, 1), "item": r.item, "source": key.source(r.case, r.item),
            "structure": r.structure, "score": r.score, "flags": "|".join(r.flags), "comment": r.comment,
            "revision": r.revision, "seconds": r.seconds, "excluded": bool(excluding & set(r.flags)),
        }
        for table in tables for r in table.latest().values()
    ]
    frame = pd.DataFrame(rows, columns=RATING_COLUMNS)
    frame["score"] = frame["score"].astype("Int64")
    order = {s: i for i, s in enumerate(session.scale.structure_ids)}  # tables and plots in the scale's order
    return frame.sort_values(["structure", "rater", "case", "showing", "item"], ignore_index=True,
                             key=lambda c: c.map(order) if c.name == "structure" else c)


def usable_scores(ratings: pd.DataFrame) -> pd.DataFrame:
    """The rows that enter the statistics: a score given and the item not excluded."""
    frame = ratings[ratings["score"].notna() & ~ratings["excluded"]].copy()
    frame["score"] = frame["score"].astype(int)
    return frame


def first_showings(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores of first showings (repeats count for intra-rater agreement only)."""
    return scores[scores["showing"] == 1]


def with_metadata(scores: pd.DataFrame, key: SessionKey, column: str) -> pd.DataFrame:
    """``scores`` with the manifest metadata ``column`` of every case; an error if no case has it."""
    values = {shown: meta.get(column, "") for shown, meta in key.metadata.items()}
    if not any(values.values()):
        known = sorted({name for meta in key.metadata.values() for name in meta})
        raise LesionQCError(f"{key.path}: no case has a value in column {column!r} (columns: {known})")
    return scores.assign(**{column: scores["shown_as"].map(values).replace("", "(none)")})


# --------------------------------------------------------------------------- statistics


def _structure_order(scores: pd.DataFrame):
    order = list(scores["structure"].unique())
    return lambda column: column.map(order.index)


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD (n - 1), median and count per structure and source, all raters and per rater."""
    pooled = scores.assign(rater=ALL_RATERS)
    frame = pd.concat([pooled, scores], ignore_index=True)
    summary = (frame.groupby(["structure", "rater", "source"], sort=False)["score"]
               .agg(n="count", mean="mean", sd="std", median="median").reset_index())
    # Structures as they come, then "all" before the raters in name order, then sources.
    order = summary["rater"].map(lambda rater: (rater != ALL_RATERS, rater))
    return (summary.assign(_rater=order).sort_values(["_rater", "source"], kind="stable")
            .sort_values("structure", key=_structure_order(scores), kind="stable")
            .drop(columns="_rater").reset_index(drop=True))


def wilcoxon_pair(x: np.ndarray, y: np.ndarray, zero_method: str = "wilcox") -> Dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of paired scores and its rank-biserial correlation.

    pingouin (SciPy's test; Kerby's matched-pairs rank-biserial correlation,
    positive when ``y`` is higher). NaN where every pair is equal (nothing to rank).
    """
    if len(x) == 0 or not np.any(x != y):
        return {"statistic": np.nan, "p_value": np.nan, "rank_biserial": np.nan}
    import pingouin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample notes; the n columns say it
        # correction=False: SciPy's default (pingouin's is a continuity correction).
        result = pingouin.wilcoxon(y, x, zero_method=zero_method, correction=False).iloc[0]
    # pingouin 0.7 names the columns W_val and p_val; the releases for Python 3.9 and 3.10, W-val and p-val.
    return {"statistic": float(result.get("W_val", result.get("W-val"))),
            "p_value": float(result.get("p_val", result.get("p-val"))), "rank_biserial": float(result["RBC"])}


def wilcoxon_tests(scores: pd.DataFrame, zero_method: str = "wilcox") -> pd.DataFrame:
    """Paired Wilcoxon signed-rank test between every two sources, all raters and per rater.

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
                rows.append({
                    "structure": structure, "rater": rater, "source_a": a, "source_b": b,
                    "n_pairs": len(pairs), "n_different": int(np.sum(x != y)),
                    "mean_a": x.mean() if len(x) else np.nan, "mean_b": y.mean() if len(y) else np.nan,
                    "median_difference": float(np.median(y - x)) if len(x) else np.nan,
                    **wilcoxon_pair(x, y, zero_method), "zero_method": zero_method,
                })
    return pd.DataFrame(rows, columns=WILCOXON_COLUMNS)


def _kappas(a: Sequence[int], b: Sequence[int], scale: Scale) -> Dict[str, float]:
    """Cohen's kappa of two score lists: unweighted, linear and quadratic (NaN where undefined)."""
    kappas = {}
    for name, weights in KAPPA_WEIGHTS.items():
        value = np.nan
        if len(a):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined kappa (one category only) stays NaN
                value = cohen_kappa_score(a, b, labels=list(scale.values), weights=weights)
        kappas[name] = float(value)
    agreement = 100.0 * float(np.mean(np.asarray(a) == np.asarray(b))) if len(a) else np.nan
    return {"percent_agreement": agreement, **kappas}


def pairwise_kappa(scores: pd.DataFrame, scale: Scale) -> pd.DataFrame:
    """Cohen's kappa of every two raters, on the items (case, source) both scored."""
    rows = []
    for structure, group in scores.groupby("structure", sort=False):
        wide = group.pivot_table(index=["case", "source"], columns="rater", values="score", aggfunc="first")
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            both = wide[[a, b]].dropna().astype(int)
            rows.append({"structure": structure, "rater_a": a, "rater_b": b, "n_items": len(both),
                         **_kappas(list(both[a]), list(both[b]), scale)})
    return pd.DataFrame(rows, columns=["structure", "rater_a", "rater_b", "n_items", "percent_agreement",
                                       *KAPPA_WEIGHTS])


def intra_rater(scores: pd.DataFrame, scale: Scale) -> pd.DataFrame:
    """Each rater's first against repeated score of the same case and source (empty without repeats)."""
    rows = []
    for (structure, rater), group in scores.groupby(["structure", "rater"], sort=False):
        wide = group.pivot_table(index=["case", "source"], columns="showing", values="score", aggfunc="first")
        if 2 not in wide.columns:
            continue
        pairs = wide[[1, 2]].dropna().astype(int)
        rows.append({"structure": structure, "rater": rater, "n_pairs": len(pairs),
                     **_kappas(list(pairs[1]), list(pairs[2]), scale)})
    return pd.DataFrame(rows, columns=["structure", "rater", "n_pairs", "percent_agreement", *KAPPA_WEIGHTS])


def fleiss_kappa(counts: pd.DataFrame) -> float:
    """Fleiss' kappa (statsmodels) of a units x categories table of rating counts.

    Fleiss, J. L. (1971). Measuring nominal scale agreement among many raters.
    Psychological Bulletin, 76(5), 378-382. NaN when undefined (one category only).
    """
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

    table = counts.to_numpy(dtype=float)
    raters = table.sum(axis=1)
    if len(table) == 0 or np.any(raters != raters[0]) or raters[0] < 2:
        raise LesionQCError("Fleiss' kappa needs at least one unit and the same number (2 or more) of raters per unit")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(statsmodels_fleiss_kappa(table, method="fleiss"))


def krippendorff_alpha(scores: pd.DataFrame, scale: Scale) -> float:
    """Krippendorff's alpha for ordinal data (``krippendorff``) of a (rater, unit, score) table.

    Units scored by one rater only carry no information and are ignored by the
    coefficient; missing scores are allowed. NaN when undefined.
    """
    import krippendorff

    wide = scores.pivot_table(index="rater", columns="unit", values="score", aggfunc="first")
    if wide.shape[0] < 2 or wide.notna().sum().max() < 2:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(krippendorff.alpha(reliability_data=wide.to_numpy(float), level_of_measurement="ordinal",
                                        value_domain=list(scale.values)))


def icc_two_way(scores: pd.DataFrame) -> Dict[str, float]:
    """ICC(2,1) and ICC(2,k), two-way random effects, absolute agreement, with 95 % CIs (pingouin).

    ``scores`` has columns unit, rater, score, every unit scored by every rater.
    Shrout, P. E., & Fleiss, J. L. (1979). Intraclass correlations: uses in
    assessing rater reliability. Psychological Bulletin, 86(2), 420-428.
    """
    names = ["icc2_1", "icc2_1_ci_low", "icc2_1_ci_high", "icc2_k", "icc2_k_ci_low", "icc2_k_ci_high"]
    if scores["unit"].nunique() < 2 or scores["rater"].nunique() < 2:
        return dict.fromkeys(names, np.nan)
    import pingouin

    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = pingouin.intraclass_corr(scores.assign(score=scores["score"].astype(float)), targets="unit",
                                         raters="rater", ratings="score").set_index("Type")
    values = {}
    # pingouin's names of ICC(2,1) and ICC(2,k): ICC(A,1), ICC(A,k) since 0.7; ICC2, ICC2k before.
    for name, kinds in (("icc2_1", ("ICC(A,1)", "ICC2")), ("icc2_k", ("ICC(A,k)", "ICC2k"))):
        kind = next(k for k in kinds if k in table.index)
        low, high = table.at[kind, "CI95" if "CI95" in table.columns else "CI95%"]
        values.update({name: float(table.at[kind, "ICC"]), f"{name}_ci_low": float(low),
                       f"{name}_ci_high": float(high)})
    return values


def agreement(scores: pd.DataFrame, scale: Scale) -> pd.DataFrame:
    """Agreement of all raters per structure: Fleiss' kappa, ICC (complete items), Krippendorff's alpha."""
    rows = []
    for structure, group in scores.groupby("structure", sort=False):
        units = group.assign(unit=group["case"].astype(str) + "/" + group["source"].astype(str))
        raters = units["rater"].nunique()
        per_unit = units.groupby("unit")["rater"].nunique()
        complete = units[units["unit"].isin(per_unit[per_unit == raters].index)]
        kappa = np.nan
        if raters >= 2 and len(complete):
            counts = pd.crosstab(complete["unit"], complete["score"]).reindex(columns=scale.values, fill_value=0)
            kappa = fleiss_kappa(counts)
        rows.append({
            "structure": structure, "n_raters": raters, "n_items": complete["unit"].nunique(),
            "fleiss_kappa": kappa, **icc_two_way(complete),
            "n_items_alpha": int((per_unit >= 2).sum()), "krippendorff_alpha_ordinal": krippendorff_alpha(units, scale),
        })
    return pd.DataFrame(rows)


def stratified(scores: pd.DataFrame, column: str, zero_method: str = "wilcox") -> Dict[str, pd.DataFrame]:
    """Summary and Wilcoxon tables per value of a metadata ``column`` (see :func:`with_metadata`)."""
    summaries, tests = [], []
    for value, group in scores.groupby(column, sort=True):
        summaries.append(summarize(group).assign(**{column: value}))
        tests.append(wilcoxon_tests(group, zero_method).assign(**{column: value}))
    tables = {f"summary_by_{column}": pd.concat(summaries, ignore_index=True),
              f"wilcoxon_by_{column}": pd.concat(tests, ignore_index=True)}
    return {name: frame[[column] + [c for c in frame.columns if c != column]] for name, frame in tables.items()}


# --------------------------------------------------------------------------- plots and files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _p_text(p_value: float, n_pairs: int) -> str:
    if np.isnan(p_value):
        return f"p n/a\nn={n_pairs}"
    return (f"p={p_value:.2g}" if p_value >= 0.001 else "p<0.001") + f"\nn={n_pairs}"


def _violin_groups(axis, groups, sources: List[str], scale: Scale, tests: pd.DataFrame, scope_column: str) -> None:
    """Violins with boxes and jittered points, one group per scope (rater or stratum), p above each pair."""
    colours = [f"C{i}" for i in range(len(sources))]
    width = 0.8 / len(sources)
    rng = np.random.default_rng(0)  # jitter only; the same picture every run
    low, high = min(scale.values), max(scale.values)
    for g, (scope, data) in enumerate(groups):
        for s, source in enumerate(sources):
            values = data.loc[data["source"] == source, "score"].to_numpy(float)
            if not len(values):
                continue
            position = g + (s - (len(sources) - 1) / 2) * width
            if np.ptp(values) > 0:  # a density needs spread
                parts = axis.violinplot([values], positions=[position], widths=width * 0.95, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colours[s])
                    body.set_alpha(0.35)
            axis.boxplot([values], positions=[position], widths=width * 0.3, showfliers=False,
                         medianprops={"color": "black"}, boxprops={"color": colours[s]},
                         whiskerprops={"color": colours[s]}, capprops={"color": colours[s]})
            axis.scatter(position + rng.uniform(-width * 0.25, width * 0.25, len(values)),
                         values + rng.uniform(-0.08, 0.08, len(values)), s=6, color=colours[s], alpha=0.6, zorder=3)
        rows = tests[tests[scope_column] == scope] if len(tests) else tests
        text = "\n".join(
            (f"{r.source_a} vs {r.source_b}: " if len(sources) > 2 else "") + _p_text(r.p_value, r.n_pairs).replace(
                "\n", ", " if len(sources) > 2 else "\n")
            for r in rows.itertuples())
        axis.text(g, high + 0.35, text, ha="center", va="bottom", fontsize=7)
    axis.set_xticks(range(len(groups)), [str(scope) for scope, _ in groups], fontsize=8)
    axis.set_yticks(list(scale.values), [f"{p.value} {p.anchor}" for p in scale.points], fontsize=7)
    lines = max(1, len(list(itertools.combinations(sources, 2))) if len(sources) > 2 else 2)
    axis.set_ylim(low - 0.6, high + 0.5 + 0.3 * lines)
    axis.set_xlim(-0.6, len(groups) - 0.4)
    handles = [axis.scatter([], [], color=c, label=s) for c, s in zip(colours, sources)]
    axis.legend(handles=handles, fontsize=7, title="source", title_fontsize=7, loc="upper left",
                bbox_to_anchor=(1.0, 1.0))  # outside: points reach every corner


def _save(figure, path: Path) -> Path:
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    _pyplot().close(figure)
    return write_text_atomic(png.getvalue(), path)


def plot_scores(scores: pd.DataFrame, wilcoxon: pd.DataFrame, scale: Scale, out_dir: Path) -> List[Path]:
    """One PNG per structure: violin and box per source, all raters then each rater, Wilcoxon p above."""
    plt = _pyplot()
    written = []
    sources = sorted(scores["source"].unique())
    for structure, group in scores.groupby("structure", sort=False):
        groups = [(ALL_RATERS, group)] + sorted(group.groupby("rater"), key=lambda item: item[0])
        figure, axis = plt.subplots(figsize=(1.6 + 1.5 * len(groups) * max(1, len(sources) / 2), 4.2))
        _violin_groups(axis, groups, sources, scale, wilcoxon[wilcoxon["structure"] == structure], "rater")
        axis.set_xlabel("rater")
        axis.set_title(f"{scale.title}: {structure}\n(Wilcoxon signed-rank p and number of paired cases above"
                       " each group)", fontsize=9)
        figure.tight_layout()
        written.append(_save(figure, out_dir / f"scores_{structure}.png"))
    return written


def plot_stratified(scores: pd.DataFrame, tests: pd.DataFrame, column: str, scale: Scale,
                    out_dir: Path) -> List[Path]:
    """One PNG per structure: violin and box per source for each value of ``column``, all raters pooled."""
    plt = _pyplot()
    written = []
    sources = sorted(scores["source"].unique())
    pooled = tests[tests["rater"] == ALL_RATERS]
    for structure, group in scores.groupby("structure", sort=False):
        groups = sorted(group.groupby(column), key=lambda item: str(item[0]))
        figure, axis = plt.subplots(figsize=(1.6 + 1.5 * len(groups) * max(1, len(sources) / 2), 4.2))
        _violin_groups(axis, groups, sources, scale, pooled[pooled["structure"] == structure], column)
        axis.set_xlabel(column)
        axis.set_title(f"{scale.title}: {structure} by {column} (all raters)", fontsize=9)
        figure.tight_layout()
        written.append(_save(figure, out_dir / f"by_{column}_{structure}.png"))
    return written


def plot_agreement(kappas: pd.DataFrame, intra: pd.DataFrame, out_dir: Path) -> Optional[Path]:
    """Heat map of linear weighted kappa between raters per structure; intra-rater kappa on the diagonal."""
    if kappas.empty:
        return None
    plt = _pyplot()
    structures = list(kappas["structure"].unique())
    raters = sorted(set(kappas["rater_a"]) | set(kappas["rater_b"]))
    size = 1.0 + 0.7 * len(raters)
    figure, axes = plt.subplots(1, len(structures), figsize=(size * len(structures) + 1.6, size + 0.9),
                                squeeze=False)
    for axis, structure in zip(axes[0], structures):
        matrix = np.full((len(raters), len(raters)), np.nan)
        counts = np.zeros((len(raters), len(raters)), int)
        for row in kappas[kappas["structure"] == structure].itertuples():
            i, j = raters.index(row.rater_a), raters.index(row.rater_b)
            matrix[i, j] = matrix[j, i] = row.kappa_linear
            counts[i, j] = counts[j, i] = row.n_items
        for row in intra[intra["structure"] == structure].itertuples():
            i = raters.index(row.rater) if row.rater in raters else None
            if i is not None:
                matrix[i, i], counts[i, i] = row.kappa_linear, row.n_pairs
        image = axis.imshow(matrix, vmin=-1, vmax=1, cmap="RdYlGn")
        for i, j in itertools.product(range(len(raters)), repeat=2):
            if counts[i, j]:
                text = "n/a" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
                axis.text(j, i, f"{text}\nn={counts[i, j]}", ha="center", va="center", fontsize=7)
        axis.set_xticks(range(len(raters)), raters, fontsize=8)
        axis.set_yticks(range(len(raters)), raters, fontsize=8)
        axis.tick_params(labelleft=axis is axes[0][0])  # names once, at the left
        axis.set_title(structure, fontsize=9)
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="Cohen's kappa, linear weights")
    figure.suptitle("Agreement between raters\n(diagonal: each rater with itself on repeated cases)", fontsize=9)
    return _save(figure, out_dir / "agreement_heatmap.png")


def analyze(session: SessionView, key: SessionKey, tables: Sequence[RaterTable],
            zero_method: str = "wilcox", by: Optional[str] = None) -> AnalysisResult:
    """Compute every table of the analysis (no files written)."""
    ratings = merge_ratings(session, key, tables)
    scores = usable_scores(ratings)
    if scores.empty:
        raise LesionQCError(f"{session.folder}: no scores to analyse (no rater table holds a usable score)")
    first = first_showings(scores)
    by_column = with_metadata(first, key, by) if by is not None else None
    result = AnalysisResult(
        ratings=ratings,
        summary=summarize(first),
        wilcoxon=wilcoxon_tests(first, zero_method),
        kappa_pairwise=pairwise_kappa(first, session.scale),
        agreement=agreement(first, session.scale),
        intra_rater=intra_rater(scores, session.scale),
    )
    if by_column is not None:
        result.stratified = stratified(by_column, by, zero_method)
    return result


def analyze_session(session_dir: PathLike, out_dir: PathLike, key_path: Optional[PathLike] = None,
                    table_paths: Optional[Sequence[PathLike]] = None, zero_method: str = "wilcox",
                    by: Optional[str] = None) -> AnalysisResult:
    """Load, check, analyse and write the CSV tables and PNG plots to ``out_dir``.

    Every input is checked before the first file is written; ``out_dir`` may not be
    in a session folder (the tables name the sources: raters must never see them).
    """
    refuse_output_in_session(out_dir, "the analysis")
    if by is not None and not is_portable_name(by):
        raise LesionQCError(f"column {by!r} cannot name the files of a stratified analysis (summary_by_{by}.csv):"
                            " use a column named with letters, digits, '.', '_' or '-'")
    session, key, tables = load_inputs(session_dir, key_path, table_paths)
    result = analyze(session, key, tables, zero_method, by)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, pd.DataFrame] = {
        "ratings": result.ratings, "summary": result.summary, "wilcoxon": result.wilcoxon,
        "kappa_pairwise": result.kappa_pairwise, "agreement": result.agreement, "intra_rater": result.intra_rater,
        **result.stratified,
    }
    for name, frame in files.items():
        write_csv_atomic(frame, out_dir / f"{name}.csv")
    first = first_showings(usable_scores(result.ratings))
    result.plots = plot_scores(first, result.wilcoxon, session.scale, out_dir)
    heat_map = plot_agreement(result.kappa_pairwise, result.intra_rater, out_dir)
    result.plots += [heat_map] if heat_map is not None else []
    if by is not None:
        result.plots += plot_stratified(with_metadata(first, key, by), result.stratified[f"wilcoxon_by_{by}"], by,
                                        session.scale, out_dir)
    return result
