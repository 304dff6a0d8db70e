"""``spinalcordseg drift`` on a small BIDS test set built from the shared SCT scans.

The SCT testing scans t1/t2/t2s/mt stand in for the contrasts of one
participant (sub-01) and t2_fake_lesion plus the mean DWI for a second
(sub-02); their masks are the ``derivatives/labels`` ground truth. The two
embedded models play two versions of a cord model. Scans and masks are
cropped around the cord (12 mm margin) to keep inference short. Level images are made by
the test from the manual masks (the shared data has none): the cord's top
third is C2, the middle C3, the bottom C4; sub-02 has none, so its scans are
averaged over every slice. Every number of the tables is computed again here
with NumPy/SciPy, independently of the project's morphometrics.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.rounds.drift import DRIFT_FILES, contrast_of, overlap_metrics

pytestmark = pytest.mark.slow

MODELS = ("demo-sc", "demo-sc-lesion")
#: BIDS file -> (shared scan, its cord mask or None, level image made from the mask)
DATASET = {
    "sub-01/anat/sub-01_T1w.nii.gz": ("t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz", True),
    "sub-01/anat/sub-01_T2w.nii.gz": ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", True),
    "sub-01/anat/sub-01_T2starw.nii.gz": ("t2s/t2s.nii.gz", "t2s/t2s_seg-deepseg.nii.gz", True),
    "sub-01/anat/sub-01_acq-MTon_MTS.nii.gz": ("mt/mt1.nii.gz", "mt/mt1_seg.nii.gz", True),
    "sub-02/anat/sub-02_T2w.nii.gz": ("t2/t2_fake_lesion.nii.gz", "t2/t2_fake_lesion_sc_seg.nii.gz", False),
    "sub-02/dwi/sub-02_rec-average_dwi.nii.gz": ("dmri/dwi_mean.nii.gz", None, False),
}
MARGIN_MM = 12.0
FAST = ["--device", "cpu", "--no-tta", "--binary", "--no-angle-correction"]


def level_image(mask: sitk.Image) -> sitk.Image:
    """The mask's voxels labelled 2, 3, 4 by thirds of its axial slices, from superior down."""
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(mask.GetDirection())
    las = sitk.DICOMOrient(mask, "LAS")  # array axes (S, A, L), slice 0 inferior
    data = sitk.GetArrayFromImage(las) > 0
    levels = np.zeros(data.shape, np.uint8)
    present = np.flatnonzero(data.any(axis=(1, 2)))[::-1]
    for level, chunk in zip((2, 3, 4), np.array_split(present, 3)):
        levels[chunk] = data[chunk] * level
    image = sitk.GetImageFromArray(levels)
    image.CopyInformation(las)
    image = sitk.DICOMOrient(image, orientation)
    image.CopyInformation(mask)
    return image


def around_cord(image: sitk.Image, mask: sitk.Image, margin_mm: float = MARGIN_MM) -> sitk.Image:
    """``image`` cropped to the mask's bounding box plus a margin: small scans, fast inference."""
    box = sitk.LabelShapeStatisticsImageFilter()
    box.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    x = box.GetBoundingBox(1)
    start = [max(0, x[i] - int(margin_mm / image.GetSpacing()[i])) for i in range(3)]
    stop = [min(image.GetSize()[i], x[i] + x[i + 3] + int(margin_mm / image.GetSpacing()[i])) for i in range(3)]
    return sitk.RegionOfInterest(image, [b - a for a, b in zip(start, stop)], start)


def make_dataset(shared_data: Path, root: Path) -> Path:
    scans = shared_data / "sct_testing_data"
    for relative, (scan, mask, with_levels) in DATASET.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        if mask is None:
            shutil.copy(scans / scan, root / relative)
            continue
        truth = sitk.ReadImage(str(scans / mask))
        sitk.WriteImage(around_cord(sitk.ReadImage(str(scans / scan)), truth), str(root / relative))
        labels = root / "derivatives" / "labels" / Path(relative).parent
        labels.mkdir(parents=True, exist_ok=True)
        case = Path(relative).name[: -len(".nii.gz")]
        sitk.WriteImage(around_cord(truth, truth), str(labels / f"{case}_label-SC_seg.nii.gz"))
        if with_levels:
            sitk.WriteImage(around_cord(level_image(truth), truth), str(labels / f"{case}_label-SC_seg_labeled.nii.gz"))
    (root / "dataset_description.json").write_text('{"Name": "frozen test set", "BIDSVersion": "1.9.0"}')
    return root


def drift_command(bids: Path, out: Path, *extra: str) -> list:
    return ["drift", "-i", str(bids), "-m", *MODELS, "-o", str(out), *FAST, *extra]


@pytest.fixture(scope="module")
def frozen(shared_data, tmp_path_factory):
    """The test set, predicted and analysed once by one ``drift`` run: (BIDS root, output folder)."""
    root = tmp_path_factory.mktemp("drift")
    bids = make_dataset(shared_data, root / "bids")
    assert main(drift_command(bids, root / "out")) == 0
    return bids, root / "out"


@pytest.fixture
def copied(frozen, tmp_path):
    """A fresh output folder holding the fixture's predictions, for analyses with other options."""
    bids, out = frozen
    shutil.copytree(out / "predictions", tmp_path / "out" / "predictions")
    return bids, tmp_path / "out"


# ------------------------------------------------------------------ the same numbers, by hand

def _axial(path: Path) -> np.ndarray:
    """Array (S, A, L) of an image, slice 0 inferior, and its in-plane pixel area."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LAS")
    return sitk.GetArrayFromImage(image), image.GetSpacing()[0] * image.GetSpacing()[1]


def csa_by_hand(seg: Path, levels: Path = None) -> pd.DataFrame:
    """Per axial slice: pixel count times pixel area (binary mask, no angle correction) and whether averaged."""
    mask, pixel = _axial(seg)
    counts = (mask > 0).sum(axis=(1, 2))
    present = np.flatnonzero(counts)
    rows = np.arange(present[0], present[-1] + 1)
    area = np.where(counts[rows] > 0, counts[rows] * pixel, np.nan)
    in_range = counts[rows] > 0
    if levels is not None:
        labels, _ = _axial(levels)
        # SCT's rule: a slice's level is the rounded mean of its non-zero labels.
        level = np.array([np.round(p[p > 0].mean()) if (p > 0).any() else 0 for p in labels[rows]])
        in_range &= np.isin(level, [2, 3])
    return pd.DataFrame({"slice": rows, "area": area, "in_range": in_range})


def surface_distance_by_hand(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Mean distance of both surfaces (face-connected, the image edge excluded) to the other one."""
    surfaces = [m & ~ndimage.binary_erosion(m, border_value=1) for m in (a, b)]
    d_ab = ndimage.distance_transform_edt(~surfaces[1], sampling=spacing)[surfaces[0]]
    d_ba = ndimage.distance_transform_edt(~surfaces[0], sampling=spacing)[surfaces[1]]
    return float(np.concatenate([d_ab, d_ba]).mean())


def by_hand(bids: Path, out: Path):
    """drift.csv's numbers and per-slice CSA tables, computed from the files alone."""
    rows, slices = [], {}
    for relative, (_, mask, with_levels) in DATASET.items():
        case = Path(relative).name[: -len(".nii.gz")]
        labels = bids / "derivatives/labels" / Path(relative).parent
        levels = labels / f"{case}_label-SC_seg_labeled.nii.gz" if with_levels else None
        for model in MODELS:
            seg = out / "predictions" / model / Path(relative).parent.parent / "anat" / f"{case}_label-SC_seg.nii.gz"
            table = csa_by_hand(seg, levels)
            slices[relative, model] = table
            selected = table.loc[table["in_range"], "area"]
            row = {"scan": relative, "model": model, "n_slices": len(selected),
                   "csa_mean_mm2": selected.mean(), "csa_sd_mm2": np.std(selected)}
            if mask is not None:
                predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(seg))) > 0
                truth_image = sitk.ReadImage(str(labels / f"{case}_label-SC_seg.nii.gz"))
                truth = sitk.GetArrayFromImage(truth_image) > 0
                row["dice"] = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
                row["asd_mm"] = surface_distance_by_hand(predicted, truth, truth_image.GetSpacing()[::-1])
                row["rve_percent"] = 100 * (predicted.sum() - truth.sum()) / truth.sum()
            rows.append(row)
    return pd.DataFrame(rows), slices


def test_every_file_is_written(frozen):
    _, out = frozen
    for name in DRIFT_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in ("csa_per_contrast.png", "contrast_std.png", "scaling.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for figure in ("csa_per_contrast.png", "contrast_std.png", "scaling.png"):
        assert f"]({figure})" in report
    assert "Reference model: `demo-sc`" in report and "No tolerance set" in report
    assert not list(out.glob(".*tmp*"))  # no temporary file left
    # Predictions went through batch: BIDS derivatives with their worklist.
    for model in MODELS:
        assert len(pd.read_csv(out / "predictions" / model / "worklist.csv")) == len(DATASET)


def test_drift_table_matches_an_independent_computation(frozen):
    bids, out = frozen
    drift = pd.read_csv(out / "drift.csv", dtype={"subject": str, "session": str}, keep_default_na=False,
                        na_values=[""])
    expected, _ = by_hand(bids, out)
    assert len(drift) == len(DATASET) * len(MODELS)
    merged = drift.merge(expected, on=["scan", "model"], suffixes=("", "_expected"))
    assert len(merged) == len(drift)
    assert (merged["n_slices"] == merged["n_slices_expected"]).all()
    for column in ("csa_mean_mm2", "csa_sd_mm2", "dice", "rve_percent"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_expected"], rtol=1e-9, err_msg=column)
    np.testing.assert_allclose(merged["asd_mm"], merged["asd_mm_expected"], rtol=1e-5)  # float32 distance map
    assert merged.loc[merged["scan"].str.contains("dwi"), "dice"].isna().all()  # no manual mask
    by_scan = drift.set_index(["scan", "model"])
    assert by_scan.loc[("sub-01/anat/sub-01_acq-MTon_MTS.nii.gz", "demo-sc"), "contrast"] == "acq-MTon_MTS"
    assert set(drift.loc[drift["subject"] == "01", "range"]) == {"levels 2-3"}
    assert set(drift.loc[drift["subject"] == "02", "range"]) == {"all slices"}


def test_summary_and_scaling_match_an_independent_computation(frozen):
    bids, out = frozen
    summary = pd.read_csv(out / "summary.csv").set_index("model")
    scaling = pd.read_csv(out / "scaling.csv")
    expected, slices = by_hand(bids, out)
    expected["subject"] = [s.split("/")[0] for s in expected["scan"]]
    std = {m: expected[expected["model"] == m].groupby("subject")["csa_mean_mm2"].std(ddof=1).sort_index()
           for m in MODELS}
    reference, new = (std[m].to_numpy() for m in MODELS)
    assert summary.loc["demo-sc", "contrast_std_mm2"] == pytest.approx(reference.mean(), rel=1e-9)
    assert summary.loc["demo-sc-lesion", "contrast_std_mm2"] == pytest.approx(new.mean(), rel=1e-9)
    assert summary.loc["demo-sc-lesion", "std_increase_mm2"] == pytest.approx((new - reference).mean(), rel=1e-9)
    test = stats.wilcoxon(new, reference)
    assert summary.loc["demo-sc-lesion", "wilcoxon_p"] == pytest.approx(test.pvalue)
    assert summary.loc["demo-sc-lesion", "wilcoxon_statistic"] == pytest.approx(test.statistic)
    assert np.isnan(summary.loc["demo-sc", "wilcoxon_p"]) and bool(summary.loc["demo-sc", "reference"])
    for column, values in (("dice_mean", "dice"), ("rve_mean_percent", "rve_percent")):
        assert summary.loc["demo-sc", column] == pytest.approx(expected[expected["model"] == "demo-sc"][values].mean())

    # Scaling: per slice measured by both, new CSA over reference CSA.
    factors = []
    for relative in DATASET:
        ref, other = slices[relative, "demo-sc"], slices[relative, "demo-sc-lesion"]
        both = ref.merge(other, on="slice", suffixes=("_ref", ""))
        both = both[(both["area_ref"] > 0) & both["area"].notna()]
        rows = scaling[scaling["scan"] == relative].sort_values("slice")
        assert list(rows["slice"]) == list(both["slice"])
        np.testing.assert_allclose(rows["ratio"], both["area"] / both["area_ref"], rtol=1e-9)
        selected = both[both["in_range"] & both["in_range_ref"]]
        factors.append((selected["area"] / selected["area_ref"]).mean())
    assert set(scaling["model"]) == {"demo-sc-lesion"}
    assert summary.loc["demo-sc-lesion", "scaling_factor"] == pytest.approx(np.median(factors), rel=1e-9)
    assert summary.loc["demo-sc-lesion", "scaling_deviation"] == pytest.approx(abs(np.median(factors) - 1))


def test_exit_code_flips_when_a_tolerance_is_crossed(frozen, copied, capsys):
    bids, out = copied
    summary = pd.read_csv(frozen[1] / "summary.csv").set_index("model").loc["demo-sc-lesion"]
    increase, deviation = summary["std_increase_mm2"], summary["scaling_deviation"]
    margin = 1e-3
    assert main(drift_command(bids, out, "--merge", "--max-std-increase", str(increase + margin))) == 0
    assert "No drift beyond tolerance" in (out / "report.md").read_text()
    assert main(drift_command(bids, out, "--merge", "--max-std-increase", str(increase - margin))) == 1
    assert "DRIFT: demo-sc-lesion: across-contrast CSA SD up by" in capsys.readouterr().out
    assert "Drift beyond tolerance" in (out / "report.md").read_text()
    assert main(drift_command(bids, out, "--merge", "--max-scaling-deviation", str(deviation + margin))) == 0
    assert main(drift_command(bids, out, "--merge", "--max-scaling-deviation", str(deviation - margin))) == 1
    assert "CSA scaling factor" in capsys.readouterr().out


def test_sharded_runs_merge_to_the_same_result_as_one_run(frozen, tmp_path, capsys):
    bids, single = frozen
    out = tmp_path / "out"
    assert main(drift_command(bids, out, "--shard", "1/2")) == 0
    assert not (out / "drift.csv").exists()  # a shard only predicts
    with pytest.raises(SystemExit):  # --shard and --merge exclude each other
        main(drift_command(bids, out, "--shard", "1/2", "--merge"))
    capsys.readouterr()
    assert main(drift_command(bids, out, "--merge")) == 1  # shard 2 not done yet
    assert "prediction(s) missing" in capsys.readouterr().err
    assert main(drift_command(bids, out, "--shard", "2/2")) == 0
    for model in MODELS:
        shards = [pd.read_csv(out / "predictions" / model / f"worklist-shard{k}of2.csv") for k in (1, 2)]
        assert sorted(pd.concat(shards)["case"]) == sorted(Path(r).name[:-7] for r in DATASET)
    assert main(drift_command(bids, out, "--merge")) == 0
    for name in ("drift.csv", "summary.csv", "scaling.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(single / name), obj=name)


def test_default_measure_is_the_soft_angle_corrected_csa(copied):
    from SpinalCordSegLib.measures.morphometrics import cord_morphometrics, summarize_cord

    bids, out = copied
    command = [a for a in drift_command(bids, out, "--merge") if a not in ("--binary", "--no-angle-correction")]
    assert main(command) == 0
    drift = pd.read_csv(out / "drift.csv").set_index(["scan", "model"])
    relative = "sub-02/anat/sub-02_T2w.nii.gz"  # no level image: every slice with cord
    soft = sitk.ReadImage(str(out / "predictions/demo-sc/sub-02/anat/sub-02_T2w_label-SC_probseg.nii.gz"))
    expected = summarize_cord(cord_morphometrics(soft))
    assert drift.loc[(relative, "demo-sc"), "csa_mean_mm2"] == pytest.approx(expected.loc[0, "area_mm2_mean"])
    assert "soft maps, angle-corrected" in (out / "report.md").read_text()


def test_bad_inputs_are_named(copied, capsys):
    bids, out = copied
    truth = bids / "derivatives/labels/sub-01/anat/sub-01_T2w_label-SC_seg.nii.gz"
    saved = truth.read_bytes()
    try:
        shutil.copy(bids / "derivatives/labels/sub-01/anat/sub-01_T1w_label-SC_seg.nii.gz", truth)
        assert main(drift_command(bids, out, "--merge")) == 1
        assert f"{truth} is not on the grid of" in capsys.readouterr().err
    finally:
        truth.write_bytes(saved)
    assert main(["drift", "-i", str(bids), "-m", "demo-sc", "-o", str(out), "--merge"]) == 1
    assert "at least two" in capsys.readouterr().err
    assert main(drift_command(bids, out, "--merge", "--names", "a", "a")) == 1
    assert "two models are named 'a'" in capsys.readouterr().err
    assert not (out / "drift.csv").exists()  # nothing half-written


def test_contrast_names():
    assert contrast_of("sub-01_ses-02_acq-MTon_MTS") == "acq-MTon_MTS"
    assert contrast_of("sub-01_T2w") == "T2w"


def test_overlap_metrics_of_empty_masks():
    empty = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    full = empty + 1
    metrics = overlap_metrics(empty, full)
    assert metrics["dice"] == 0.0 and np.isnan(metrics["asd_mm"]) and metrics["rve_percent"] == -100.0


def test_a_model_that_loses_the_cord_drifts(tmp_path):
    """Synthetic cylinders: model 'new' finds no cord in one scan; the gate must not pass it."""
    from SpinalCordSegLib.rounds.cohort import Scan
    from SpinalCordSegLib.rounds.drift import (DriftSettings, ModelPredictions, analyse_drift, check_tolerances,
                                               write_drift)

    k, j, i = np.indices((10, 20, 20))
    cylinder = ((j - 10) ** 2 + (i - 10) ** 2 <= 16).astype(np.float32)
    scans = [Scan(tmp_path / f"sub-01_{c}.nii.gz", f"sub-01/anat/sub-01_{c}.nii.gz", "01", "") for c in ("T1w", "T2w")]
    models = [ModelPredictions(name, tmp_path / name, "sc") for name in ("old", "new")]
    for model in models:
        for scan in scans:
            data = cylinder * (0.0 if (model.name, scan.case) == ("new", "sub-01_T2w") else 1.0)
            for path in model.files(scan):
                path.parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    result = analyse_drift(scans, models, DriftSettings(binary=True), max_std_increase=100.0)
    drift = result.drift.set_index(["model", "contrast"])
    assert drift.loc[("new", "T2w"), "note"] == "no cord found" and np.isnan(drift.loc[("new", "T2w"), "csa_mean_mm2"])
    assert drift.loc[("old", "T2w"), "csa_mean_mm2"] == pytest.approx(cylinder[0].sum())
    assert result.violations == ["new: measured 1 scan(s), the reference 2",
                                 "new: std_increase_mm2 cannot be computed (no participant with two measured "
                                 "contrasts in both models)"]
    assert check_tolerances(result.summary) == []  # no tolerance, no verdict
    written = write_drift(result, tmp_path / "report")  # figures of a partly failed model, atomically written
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(p.name for p in written)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written if p.suffix == ".png")
