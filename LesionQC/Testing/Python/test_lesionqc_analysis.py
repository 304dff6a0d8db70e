"""Analysis of rater tables: the statistics match independent computations and published examples.

The fixture is a real session (SCT's T2w scan; its manual cord mask, an eroded
and a dilated copy as three sources; a share of the cases repeated) rated by
three raters through the real rating state, with scores drawn from a seeded
generator and kept in the test as the reference. The library-backed statistics
(statsmodels, pingouin, krippendorff) are checked against the examples their
authors published: Fleiss (1971), Shrout & Fleiss (1979), Krippendorff (2011).
"""

import json
import shutil
import statistics

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from matplotlib import image as mpimg
from scipy import stats

from LesionQCLib.analysis import analyze_session, fleiss_kappa, icc_two_way, krippendorff_alpha
from LesionQCLib.cli import main
from LesionQCLib.errors import KeyMismatchError, LesionQCError, RaterTableError
from LesionQCLib.review_state import ReviewState
from LesionQCLib.scales import default_scale
from LesionQCLib.session import default_key_path, load_key, make_session

SOURCES = ("dilated", "eroded", "manual")
RATERS = ("r1", "r2", "r3")
MEAN_BY_SOURCE = {"manual": 4.2, "eroded": 3.0, "dilated": 3.6}
SITE = {f"c{i:02d}": "north" if i < 7 else "south" for i in range(12)}


@pytest.fixture(scope="module")
def rated(tmp_path_factory, sample_data):
    """(session folder, reference scores {(rater, case, source): score}, unusable (rater, case))."""
    root = tmp_path_factory.mktemp("analysis")
    manual = sitk.ReadImage(str(sample_data.cord))
    sitk.WriteImage(sitk.BinaryErode(manual, [1, 1, 1]), str(root / "eroded.nii.gz"))
    sitk.WriteImage(sitk.BinaryDilate(manual, [1, 1, 1]), str(root / "dilated.nii.gz"))
    manifest = root / "manifest.csv"
    manifest.write_text("case_id,image,site,seg:manual,seg:eroded,seg:dilated\n" + "".join(
        f"c{i:02d},{sample_data.scan},{SITE[f'c{i:02d}']},{sample_data.cord},eroded.nii.gz,"
        "dilated.nii.gz\n" for i in range(12)))
    view = make_session(manifest, root / "session", seed=21, repeat_fraction=0.25)
    key = load_key(default_key_path(root / "session"), view)

    rng = np.random.default_rng(5)
    reference, repeats = {}, {}  # first showings; repeats {(rater, case, source): score}
    for rater in RATERS:
        state = ReviewState(view, rater)
        while True:
            shown, item = state.case.case_id, state.item.item_id
            case, source = key.case_of[shown], key.source(shown, item)
            score = int(np.clip(round(MEAN_BY_SOURCE[source] + rng.normal(0, 0.9)), 1, 5))
            state.set_score(score)
            (reference if key.showing[shown] == 1 else repeats)[(rater, case, source)] = score
            if not state.go_next():
                break
        state.close()
    # r2 changes its mind once (a new revision) and finds one image unusable.
    firsts = [i for i, c in enumerate(view.cases) if key.showing[c.case_id] == 1]
    changed = ReviewState(view, "r2")
    changed.go_to_case(firsts[0])
    shown = changed.case.case_id
    reference_key = ("r2", key.case_of[shown], key.source(shown, "A"))
    new_score = 1 if reference[reference_key] != 1 else 2
    changed.set_score(new_score, "overall")
    reference[reference_key] = new_score
    changed.go_to_case(firsts[3])
    changed.set_flag("image_unusable", True)
    unusable = ("r2", key.case_of[changed.case.case_id])
    changed.close()
    return root / "session", reference, unusable, repeats


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def result(rated, results_dir):
    # The key beside the session, where make_session put it.
    return analyze_session(rated[0], results_dir, by="site")


def usable(rated):
    _, reference, unusable, _ = rated
    return {k: v for k, v in reference.items() if (k[0], k[1]) != unusable}


def test_wilcoxon_p_values_are_scipys(rated, result):
    scores = usable(rated)
    cases = sorted({case for _, case, _ in scores})
    checked = 0
    for row in result.wilcoxon.itertuples():
        raters = RATERS if row.rater == "all" else (row.rater,)
        pairs = [(scores[(r, c, row.source_a)], scores[(r, c, row.source_b)]) for r in raters for c in cases
                 if (r, c, row.source_a) in scores]
        x, y = np.array(pairs, dtype=float).T
        expected = stats.wilcoxon(x, y)
        assert row.n_pairs == len(pairs) and row.structure == "overall"
        assert row.p_value == pytest.approx(expected.pvalue, rel=1e-12)
        assert row.statistic == pytest.approx(expected.statistic)
        assert row.mean_a == pytest.approx(x.mean()) and row.median_difference == np.median(y - x)
        assert row.rank_biserial == pytest.approx(rank_biserial(x, y), abs=1e-12)
        checked += 1
    assert checked == 3 * (1 + len(RATERS))  # three source pairs, all raters and each rater
    pooled = result.wilcoxon[(result.wilcoxon.rater == "all") & (result.wilcoxon.source_a == "eroded")]
    assert pooled.p_value.iloc[0] < 0.05  # manual (4.2) is clearly better than eroded (3.0) here


def rank_biserial(x, y):
    """Kerby (2014)'s simple difference formula: (sum of ranks favouring y - the others) / all ranks."""
    d = y - x
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    return (ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum()


def textbook_kappa(a, b, categories, weighted):
    """Cohen's kappa from the confusion matrix: 1 - sum(w * observed) / sum(w * expected)."""
    index = {c: i for i, c in enumerate(categories)}
    observed = np.zeros((len(categories), len(categories)))
    for x, y in zip(a, b):
        observed[index[x], index[y]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    steps = np.abs(np.subtract.outer(np.arange(len(categories)), np.arange(len(categories))))
    weights = {"linear": steps / (len(categories) - 1), "quadratic": (steps / (len(categories) - 1)) ** 2,
               False: (steps > 0).astype(float)}[weighted]
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_pairwise_kappa_matches_the_textbook_formula(rated, result):
    scores = usable(rated)
    assert len(result.kappa_pairwise) == 3
    for row in result.kappa_pairwise.itertuples():
        common = sorted((c, s) for (r, c, s) in scores if r == row.rater_a and (row.rater_b, c, s) in scores)
        a = [scores[(row.rater_a, c, s)] for c, s in common]
        b = [scores[(row.rater_b, c, s)] for c, s in common]
        assert row.n_items == len(common)
        assert row.kappa == pytest.approx(textbook_kappa(a, b, [1, 2, 3, 4, 5], weighted=False), abs=1e-12)
        assert row.kappa_linear == pytest.approx(textbook_kappa(a, b, [1, 2, 3, 4, 5], "linear"), abs=1e-12)
        assert row.kappa_quadratic == pytest.approx(textbook_kappa(a, b, [1, 2, 3, 4, 5], "quadratic"), abs=1e-12)
        assert row.percent_agreement == pytest.approx(100 * np.mean(np.array(a) == np.array(b)))


def test_fleiss_kappa_reproduces_the_published_example():
    # Fleiss (1971) as worked in the literature: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
    counts = pd.DataFrame([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)


def test_krippendorff_alpha_reproduces_krippendorffs_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 observers,
    # 12 units, values 1-5, missing values; published ordinal alpha 0.815.
    data = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .",
            "1 2 3 3 2 4 4 1 2 5 1 ."]
    scores = pd.DataFrame([(f"obs{o}", unit, int(value)) for o, row in enumerate(data)
                           for unit, value in enumerate(row.split()) if value != "."],
                          columns=["rater", "unit", "score"])
    assert krippendorff_alpha(scores, default_scale()) == pytest.approx(0.815, abs=5e-4)


#: Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def anova_icc2(table):
    """ICC(2,1) and ICC(2,k) from the two-way ANOVA mean squares (Shrout & Fleiss's Table 1 formulas)."""
    x = np.asarray(table, dtype=float)
    n, k = x.shape
    grand = x.mean()
    bms = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    jms = n * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand
    ems = (residual ** 2).sum() / ((n - 1) * (k - 1))
    return ((bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n),
            (bms - ems) / (bms + (jms - ems) / n))


def test_icc_reproduces_shrout_and_fleiss_table():
    scores = pd.DataFrame([(f"t{t}", f"j{j}", v) for t, row in enumerate(SHROUT_FLEISS) for j, v in enumerate(row)],
                          columns=["unit", "rater", "score"])
    icc = icc_two_way(scores)
    # Published: ICC(2,1) = 0.29, ICC(2,4) = 0.62.
    assert round(icc["icc2_1"], 2) == 0.29 and round(icc["icc2_k"], 2) == 0.62
    single, average = anova_icc2(SHROUT_FLEISS)
    assert icc["icc2_1"] == pytest.approx(single, abs=1e-9) and icc["icc2_k"] == pytest.approx(average, abs=1e-9)
    for name in ("icc2_1", "icc2_k"):
        assert icc[f"{name}_ci_low"] < icc[name] < icc[f"{name}_ci_high"] <= 1


def test_agreement_of_the_session_uses_the_right_items(rated, result):
    scores = usable(rated)
    row = result.agreement.iloc[0]
    units = sorted({(c, s) for (_, c, s) in scores if all((r, c, s) in scores for r in RATERS)})
    assert row.n_items == len(units) == 11 * 3  # r2's unusable case is left out
    single, average = anova_icc2([[scores[(r, c, s)] for r in RATERS] for c, s in units])
    assert row.icc2_1 == pytest.approx(single, abs=1e-9) and row.icc2_k == pytest.approx(average, abs=1e-9)
    # Krippendorff's alpha takes every item two raters or more scored: here all 12 cases.
    assert row.n_items_alpha == 12 * 3
    long = pd.DataFrame([(r, f"{c}/{s}", v) for (r, c, s), v in scores.items()], columns=["rater", "unit", "score"])
    assert row.krippendorff_alpha_ordinal == pytest.approx(krippendorff_alpha(long, default_scale()))
    assert -1 <= row.krippendorff_alpha_ordinal <= 1


def test_intra_rater_agreement_on_repeats(rated, result):
    _, reference, unusable, repeats = rated
    table = result.intra_rater
    assert len(table) == len(RATERS) and len(repeats) == len(RATERS) * 3 * 3  # 3 of 12 cases, 3 sources
    for row in table.itertuples():
        pairs = [(reference[k], v) for k, v in repeats.items() if k[0] == row.rater and k in reference
                 and (k[0], k[1]) != unusable]
        first, second = zip(*pairs)
        assert row.n_pairs == len(pairs)
        assert row.kappa_linear == pytest.approx(textbook_kappa(first, second, [1, 2, 3, 4, 5], "linear"))
        assert row.kappa == pytest.approx(textbook_kappa(first, second, [1, 2, 3, 4, 5], False))
    # Repeats enter nothing else: the summary counts first showings only.
    assert result.summary[result.summary.rater == "all"]["n"].sum() == len(usable(rated))


def test_fleiss_kappa_of_the_session_uses_items_every_rater_scored(rated, result):
    scores = usable(rated)
    row = result.agreement.iloc[0]
    assert (row.structure, row.n_raters) == ("overall", 3)
    units = sorted({(c, s) for (_, c, s) in scores if all((r, c, s) in scores for r in RATERS)})
    counts = pd.DataFrame([[sum(scores[(r, c, s)] == v for r in RATERS) for v in range(1, 6)] for c, s in units])
    assert row.fleiss_kappa == pytest.approx(fleiss_kappa(counts))


def test_summary_per_source_overall_and_per_rater(rated, result):
    scores = usable(rated)
    assert len(result.summary) == 3 * (1 + len(RATERS))
    for row in result.summary.itertuples():
        values = [v for (r, c, s), v in scores.items() if s == row.source and row.rater in ("all", r)]
        assert row.n == len(values)
        assert row.mean == pytest.approx(statistics.mean(values))
        assert row.sd == pytest.approx(statistics.stdev(values))
        assert row.median == statistics.median(values)
    assert list(result.summary.rater[:3]) == ["all"] * 3


def test_merged_table_keeps_latest_revisions_and_marks_exclusions(rated, result):
    _, reference, unusable, repeats = rated
    ratings = result.ratings
    excluded = ratings[ratings.excluded]
    assert set(zip(excluded.rater, excluded.case)) == {unusable} and len(excluded) == 3
    assert excluded["flags"].eq("image_unusable").all()
    for row in ratings[~ratings.excluded].itertuples():
        assert row.score == (reference if row.showing == 1 else repeats)[(row.rater, row.case, row.source)]
    assert ratings.revision.max() == 2


def test_results_are_written_as_csv_and_png(result, results_dir):
    out = results_dir
    for name in ("ratings", "summary", "wilcoxon", "kappa_pairwise", "agreement", "intra_rater"):
        written = pd.read_csv(out / f"{name}.csv")
        assert len(written) == len(getattr(result, name)), name
    picture = mpimg.imread(out / "scores_overall.png")
    assert picture.shape[0] > 400 and picture.shape[1] > 600  # all raters + three raters side by side
    assert mpimg.imread(out / "agreement_heatmap.png").shape[0] > 300
    assert sorted(p.name for p in result.plots) == ["agreement_heatmap.png", "by_site_overall.png",
                                                    "scores_overall.png"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_stratified_view_by_a_manifest_column(rated, result, results_dir, tmp_path):
    scores = usable(rated)
    table = result.stratified["wilcoxon_by_site"]
    assert set(table.site) == {"north", "south"}
    for row in table[table.rater == "all"].itertuples():
        cases = [c for c in sorted({c for _, c, _ in scores}) if SITE[c] == row.site]
        pairs = [(scores[(r, c, row.source_a)], scores[(r, c, row.source_b)]) for r in RATERS for c in cases
                 if (r, c, row.source_a) in scores]
        x, y = np.array(pairs, dtype=float).T
        assert row.n_pairs == len(pairs) and row.p_value == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-12)
    assert (results_dir / "by_site_overall.png").is_file() and (results_dir / "summary_by_site.csv").is_file()
    with pytest.raises(LesionQCError, match="no case has a value in column 'scanner'.*'site'"):
        analyze_session(rated[0], tmp_path / "out2", by="scanner")
    assert not (tmp_path / "out2").exists()


def _copy_session(rated, tmp_path):
    copy = tmp_path / "session"
    shutil.copytree(rated[0], copy)
    shutil.copy(default_key_path(rated[0]), default_key_path(copy))
    return copy


def test_a_rater_table_from_another_session_is_refused(rated, tmp_path):
    copy = _copy_session(rated, tmp_path)
    data = json.loads((copy / "session.json").read_text())
    other_id = "lqc-ffffffffffffffff"
    (copy / "ratings/stranger.csv").write_text(
        (copy / "ratings/r1.csv").read_text().replace(data["session_id"], other_id).replace(",r1,", ",stranger,"))
    with pytest.raises(RaterTableError, match="stranger.csv line 2: .*another session"):
        analyze_session(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_rater_with_two_tables_is_refused(rated, tmp_path):
    copy = _copy_session(rated, tmp_path)
    shutil.copy(copy / "ratings/r1.csv", copy / "ratings/r1-laptop.csv")
    with pytest.raises(RaterTableError, match="rater 'r1' has several tables"):
        analyze_session(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_key_from_another_session_is_refused(rated, tmp_path):
    copy = _copy_session(rated, tmp_path)
    key = json.loads(default_key_path(copy).read_text())
    key["session_id"] = "lqc-0123456789abcdef"
    (tmp_path / "wrong_key.json").write_text(json.dumps(key))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.csv").write_text("earlier results")
    with pytest.raises(KeyMismatchError, match="wrong_key.json: key of session"):
        analyze_session(copy, tmp_path / "out", key_path=tmp_path / "wrong_key.json")
    assert (tmp_path / "out" / "summary.csv").read_text() == "earlier results"


def test_cli_analyze(rated, tmp_path, capsys):
    # One rater's table keeps it short (SciPy's exact Wilcoxon p with ties enumerates 2**n signs).
    assert main(["analyze", str(rated[0]), "-o", str(tmp_path / "out"), "--zero-method", "pratt",
                 "--ratings", str(rated[0] / "ratings" / "r1.csv")]) == 0
    out = capsys.readouterr().out
    assert "Wilcoxon p =" in out and "Fleiss' kappa" in out and "ICC(2,1)" in out and "r1 against itself" in out
    assert set(pd.read_csv(tmp_path / "out" / "wilcoxon.csv").zero_method) == {"pratt"}
    assert main(["analyze", str(rated[0]), "-o", str(tmp_path / "x"), "--ratings", str(tmp_path / "no.csv")]) == 1
    assert "rater tables not found" in capsys.readouterr().err
