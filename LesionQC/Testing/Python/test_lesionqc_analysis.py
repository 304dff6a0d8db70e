"""Analysis of rater tables: the statistics match independent computations.

The fixture is a real session (SCT's T2w scan; its manual cord mask, an eroded
and a dilated copy as three sources) rated by three raters through the real
rating state, with scores drawn from a seeded generator and kept in the test
as the reference.
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

from LesionQCLib.analysis import analyze_session, fleiss_kappa
from LesionQCLib.cli import main
from LesionQCLib.errors import KeyMismatchError, RaterTableError
from LesionQCLib.review_state import ReviewState
from LesionQCLib.session import load_key, make_session

SOURCES = ("dilated", "eroded", "manual")
RATERS = ("r1", "r2", "r3")
MEAN_BY_SOURCE = {"manual": 4.2, "eroded": 3.0, "dilated": 3.6}


@pytest.fixture(scope="module")
def rated(tmp_path_factory, shared_data):
    """(session folder, reference scores {(rater, case, source): score}, unusable (rater, case))."""
    root = tmp_path_factory.mktemp("analysis")
    folder = shared_data / "sct_testing_data/t2"
    manual = sitk.ReadImage(str(folder / "t2_seg-manual.nii.gz"))
    sitk.WriteImage(sitk.BinaryErode(manual, [1, 1, 1]), str(root / "eroded.nii.gz"))
    sitk.WriteImage(sitk.BinaryDilate(manual, [1, 1, 1]), str(root / "dilated.nii.gz"))
    manifest = root / "manifest.csv"
    manifest.write_text("case_id,image,seg:manual,seg:eroded,seg:dilated\n" + "".join(
        f"c{i:02d},{folder / 't2.nii.gz'},{folder / 't2_seg-manual.nii.gz'},eroded.nii.gz,dilated.nii.gz\n"
        for i in range(12)))
    view = make_session(manifest, root / "session", seed=21)
    key = load_key(root / "session" / "key.json", view)

    rng = np.random.default_rng(5)
    reference = {}
    for rater in RATERS:
        state = ReviewState(view, rater)
        while True:
            case, item = state.case.case_id, state.item.item_id
            source = key.source(case, item)
            score = int(np.clip(round(MEAN_BY_SOURCE[source] + rng.normal(0, 0.9)), 1, 5))
            state.set_score(score)
            reference[(rater, case, source)] = score
            if not state.go_next():
                break
        state.close()
    # r2 changes its mind once (a new revision) and finds one image unusable.
    changed = ReviewState(view, "r2")
    changed.go_to_case(0)
    new_score = 1 if reference[("r2", changed.case.case_id, key.source(changed.case.case_id, "A"))] != 1 else 2
    changed.set_score(new_score, "overall")
    reference[("r2", changed.case.case_id, key.source(changed.case.case_id, "A"))] = new_score
    changed.go_to_case(3)
    changed.set_flag("image_unusable", True)
    unusable = ("r2", changed.case.case_id)
    changed.close()
    return root / "session", reference, unusable


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def result(rated, results_dir):
    return analyze_session(rated[0], results_dir, key_path=rated[0] / "key.json")


def usable(rated):
    _, reference, unusable = rated
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
        checked += 1
    assert checked == 3 * (1 + len(RATERS))  # three source pairs, all raters and each rater
    pooled = result.wilcoxon[(result.wilcoxon.rater == "all") & (result.wilcoxon.source_a == "eroded")]
    assert pooled.p_value.iloc[0] < 0.05  # manual (4.2) is clearly better than eroded (3.0) here


def textbook_kappa(a, b, categories, weighted):
    """Cohen's kappa from the confusion matrix: 1 - sum(w * observed) / sum(w * expected)."""
    index = {c: i for i, c in enumerate(categories)}
    observed = np.zeros((len(categories), len(categories)))
    for x, y in zip(a, b):
        observed[index[x], index[y]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    steps = np.abs(np.subtract.outer(np.arange(len(categories)), np.arange(len(categories))))
    weights = steps / (len(categories) - 1) if weighted else (steps > 0).astype(float)
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
        assert row.kappa_linear == pytest.approx(textbook_kappa(a, b, [1, 2, 3, 4, 5], weighted=True), abs=1e-12)
        assert row.percent_agreement == pytest.approx(100 * np.mean(np.array(a) == np.array(b)))


def test_fleiss_kappa_reproduces_the_published_example():
    # Fleiss (1971) as worked in the literature: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
    counts = pd.DataFrame([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_of_the_session_uses_items_every_rater_scored(rated, result):
    scores = usable(rated)
    row = result.agreement.iloc[0]
    assert (row.structure, row.n_raters) == ("overall", 3)
    units = sorted({(c, s) for (_, c, s) in scores if all((r, c, s) in scores for r in RATERS)})
    assert row.n_items == len(units) == 11 * 3  # r2's unusable case is left out
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
    _, reference, unusable = rated
    ratings = result.ratings
    excluded = ratings[ratings.excluded]
    assert set(zip(excluded.rater, excluded.case)) == {unusable} and len(excluded) == 3
    assert excluded["flags"].eq("image_unusable").all()
    for row in ratings[~ratings.excluded].itertuples():
        assert row.score == reference[(row.rater, row.case, row.source)]
    assert ratings.revision.max() == 2


def test_results_are_written_as_csv_and_png(result, results_dir):
    out = results_dir
    for name in ("ratings.csv", "summary.csv", "wilcoxon.csv", "kappa_pairwise.csv", "agreement.csv"):
        written = pd.read_csv(out / name)
        assert len(written) == len(getattr(result, name[:-4])), name
    picture = mpimg.imread(out / "distribution_overall.png")
    assert picture.shape[0] > 200 and picture.shape[1] > 4 * 200  # all raters + three raters side by side
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def _copy_session(rated, tmp_path):
    copy = tmp_path / "session"
    shutil.copytree(rated[0], copy)
    return copy


def test_a_rater_table_from_another_session_is_refused(rated, tmp_path, shared_data):
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
    key = json.loads((copy / "key.json").read_text())
    key["session_id"] = "lqc-0123456789abcdef"
    (tmp_path / "wrong_key.json").write_text(json.dumps(key))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.csv").write_text("earlier results")
    with pytest.raises(KeyMismatchError, match="wrong_key.json: key of session"):
        analyze_session(copy, tmp_path / "out", key_path=tmp_path / "wrong_key.json")
    assert (tmp_path / "out" / "summary.csv").read_text() == "earlier results"


def test_cli_analyze(rated, tmp_path, capsys):
    assert main(["analyze", str(rated[0]), "-o", str(tmp_path / "out"), "--zero-method", "pratt"]) == 0
    out = capsys.readouterr().out
    assert "Wilcoxon p =" in out and "Fleiss' kappa" in out
    assert set(pd.read_csv(tmp_path / "out" / "wilcoxon.csv").zero_method) == {"pratt"}
    assert main(["analyze", str(rated[0]), "-o", str(tmp_path / "x"), "--ratings", str(tmp_path / "no.csv")]) == 1
    assert "rater tables not found" in capsys.readouterr().err
