"""Active-learning rounds: batch over a BIDS cohort, worklist, ranking, export to nnU-Net."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.rounds.cohort import find_scans, in_shard, parse_shard, run_batch
from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.rounds.nnunet_export import export_round, subject_splits, verify_dataset
from SpinalCordSegLib.measures.uncertainty import uncertainty
from SpinalCordSegLib.rounds.worklist import Worklist

pytestmark = pytest.mark.slow

#: BIDS file -> shared scan (and its cord / lesion masks, used as "corrections").
COHORT = {
    "sub-01/ses-01/anat/sub-01_ses-01_T2w.nii.gz": ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", None),
    "sub-01/ses-02/anat/sub-01_ses-02_T2w.nii.gz": ("t2s/t2s.nii.gz", "t2s/t2s_seg-deepseg.nii.gz", None),
    "sub-02/anat/sub-02_T2w.nii.gz": ("t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz", None),
    "sub-03/anat/sub-03_T2w.nii.gz": ("mt/mt1.nii.gz", "mt/mt1_seg.nii.gz", None),
    "sub-04/anat/sub-04_T2w.nii.gz": ("t2/t2_fake_lesion.nii.gz", "t2/t2_fake_lesion_sc_seg.nii.gz",
                                      "t2/t2_fake_lesion_lesion_seg.nii.gz"),
}
OPTIONS = InferenceOptions(device="cpu", use_mirroring=False)


def make_bids(shared_data, root):
    for relative, (scan, _, _) in COHORT.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "sct_testing_data" / scan, root / relative)
    (root / "dataset_description.json").write_text('{"Name": "test", "BIDSVersion": "1.9.0"}')
    return root


@pytest.fixture
def bids(shared_data, tmp_path):
    return make_bids(shared_data, tmp_path / "bids")


@pytest.fixture(scope="module")
def engine(tiny_region_model):
    return SegmentationEngine(tiny_region_model, OPTIONS)


@pytest.fixture(scope="module")
def predicted_template(shared_data, engine, tmp_path_factory):
    """The cohort after one batch run (predicted once per module, copied for each test)."""
    root = make_bids(shared_data, tmp_path_factory.mktemp("predicted") / "bids")
    run_batch(find_scans(root), engine, root / "derivatives" / "spinalcordseg", {"sc": 0.5, "lesion": 0.5})
    return root


@pytest.fixture
def predicted(predicted_template, tmp_path):
    """A fresh copy of the predicted cohort; the worklist's relative paths follow it."""
    return Path(shutil.copytree(predicted_template, tmp_path / "bids"))


def test_discovery_reads_bids_entities(bids):
    scans = find_scans(bids)
    assert [s.relative for s in scans] == sorted(COHORT)
    first = scans[0]
    assert (first.subject, first.session, first.case) == ("01", "01", "sub-01_ses-01_T2w")
    assert first.derivative_folder(bids / "derivatives" / "x") == bids / "derivatives/x/sub-01/ses-01/anat"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_cover_every_case_exactly_once(n):
    cases = [f"sub-{i:03d}/anat/sub-{i:03d}_T2w.nii.gz" for i in range(60)]
    counts = {c: sum(in_shard(c, k, n) for k in range(1, n + 1)) for c in cases}
    assert set(counts.values()) == {1}
    if n > 1:
        assert all(any(in_shard(c, k, n) for c in cases) for k in range(1, n + 1))


def test_shard_argument():
    assert parse_shard("3/10") == (3, 10) and parse_shard(None) == (1, 1)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(SpinalCordSegError, match="K/N"):
            parse_shard(bad)


def test_batch_skips_done_scans_and_records_failures(bids, engine):
    broken = bids / "sub-05/anat/sub-05_T2w.nii.gz"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an image")
    derivatives = bids / "derivatives" / "spinalcordseg"
    thresholds = {"sc": 0.5, "lesion": 0.5}
    first = run_batch(find_scans(bids), engine, derivatives, thresholds)
    assert sorted(first.predicted) == sorted(COHORT) and list(first.failed) == ["sub-05/anat/sub-05_T2w.nii.gz"]
    seg = derivatives / "sub-01/ses-02/anat/sub-01_ses-02_T2w_label-lesion_seg.nii.gz"
    assert seg.is_file()
    step = json.loads(seg.with_name("sub-01_ses-02_T2w_label-lesion_seg.json").read_text())["GeneratedBy"][0]
    assert step["Input"] == "sub-01/ses-02/anat/sub-01_ses-02_T2w.nii.gz" and len(step["InputSha256"]) == 64
    failures = pd.read_csv(derivatives / "failures.csv")
    assert list(failures["scan"]) == ["sub-05/anat/sub-05_T2w.nii.gz"]

    second = run_batch(find_scans(bids), engine, derivatives, thresholds)
    assert second.predicted == [] and sorted(second.skipped) == sorted(COHORT)
    # A changed scan is predicted again.
    shutil.copy(bids / "sub-03/anat/sub-03_T2w.nii.gz", bids / "sub-02/anat/sub-02_T2w.nii.gz")
    third = run_batch(find_scans(bids), engine, derivatives, thresholds)
    assert third.predicted == ["sub-02/anat/sub-02_T2w.nii.gz"]

    worklist = pd.read_csv(derivatives / "worklist.csv")
    assert sorted(worklist["case"]) == sorted(p.split("/")[-1][:-7] for p in COHORT)
    assert set(worklist["status"]) == {"predicted"}
    for _, row in worklist.iterrows():
        soft = sitk.ReadImage(str(derivatives / row["sc_probseg"]))
        assert row["sc_entropy"] == pytest.approx(uncertainty(soft)[0], abs=1e-4)


def _finished(derivatives):
    """Cases whose every output and sidecar is on disk (the lesion mask's sidecar is written last)."""
    finished = set()
    for relative in COHORT:
        folder, case = derivatives / Path(relative).parent, Path(relative).name[: -len(".nii.gz")]
        names = [f"{case}_label-{label}_{kind}" for label in ("SC", "lesion") for kind in ("probseg", "seg")]
        if all((folder / f"{name}.nii.gz").is_file() and (folder / f"{name}.json").is_file() for name in names):
            finished.add(relative)
    return finished


def test_interrupted_batch_finishes_only_the_remaining_cases(bids, tiny_region_model, engine):
    """A real batch killed (SIGKILL) once its first case is complete; the rerun predicts exactly the rest.

    The kill waits for the first case's last file, its lesion mask sidecar, not for a
    count of masks: killed between a mask and its sidecar, a case is not finished and
    is rightly predicted again, which made the old version of this test flaky.
    """
    derivatives = bids / "derivatives" / "spinalcordseg"
    command = [sys.executable, "-m", "SpinalCordSegLib.cli", "batch", "-i", str(bids), "-o", str(derivatives),
               "-m", str(tiny_region_model), "--device", "cpu", "--no-tta", "--trust"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = derivatives / "sub-01/ses-01/anat/sub-01_ses-01_T2w_label-lesion_seg.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not last.is_file():
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = _finished(derivatives)
    assert "sub-01/ses-01/anat/sub-01_ses-01_T2w.nii.gz" in finished and len(finished) < len(COHORT)

    report = run_batch(find_scans(bids), engine, derivatives, {"sc": 0.5, "lesion": 0.5})
    assert sorted(report.skipped) == sorted(finished) and report.failed == {}
    assert sorted(report.predicted) == sorted(set(COHORT) - finished)
    worklist = Worklist.load(derivatives / "worklist.csv")
    assert sorted(worklist.table["case"]) == sorted(Path(p).name[: -len(".nii.gz")] for p in COHORT)
    assert not [p for p in derivatives.rglob(".*")], "no temporary file is left"


def test_batch_adds_finished_cases_missing_from_the_worklist(predicted, engine):
    """Killed after a case's outputs were written but before the worklist was saved: the rerun adds it."""
    derivatives = predicted / "derivatives" / "spinalcordseg"
    worklist = Worklist.load(derivatives / "worklist.csv")
    complete = worklist.table.set_index("case")
    table = worklist.table[~worklist.table["case"].isin(["sub-02_T2w", "sub-04_T2w"])].reset_index(drop=True)
    # A re-prediction killed before its save leaves a row older than the outputs on disk.
    table.loc[table["case"] == "sub-03_T2w", ["predicted_at", "sc_entropy"]] = ["2000-01-01 00:00:00", "9"]
    worklist.table = table
    worklist.save()

    report = run_batch(find_scans(predicted), engine, derivatives, {"sc": 0.5, "lesion": 0.5})
    assert report.predicted == [] and len(report.skipped) == len(COHORT)
    assert sorted(report.recovered) == ["sub-02/anat/sub-02_T2w.nii.gz", "sub-03/anat/sub-03_T2w.nii.gz",
                                        "sub-04/anat/sub-04_T2w.nii.gz"]
    after = Worklist.load(derivatives / "worklist.csv").table.set_index("case")
    assert sorted(after.index) == sorted(complete.index)
    columns = [c for c in complete.columns if c.endswith(("_probseg", "_seg", "_entropy", "_uncertain_mm3"))]
    pd.testing.assert_frame_equal(after.loc[complete.index, columns + ["status"]], complete[columns + ["status"]])
    assert run_batch(find_scans(predicted), engine, derivatives, {"sc": 0.5, "lesion": 0.5}).recovered == []


def test_uncertainty_score():
    spacing = (0.5, 0.5, 2.0)
    unsure = sitk.GetImageFromArray(np.full((4, 5, 6), 0.5, np.float32))
    unsure.SetSpacing(spacing)
    assert uncertainty(unsure) == pytest.approx((1.0, 120 * 0.5))
    confident = sitk.GetImageFromArray(np.where(np.arange(120).reshape(4, 5, 6) % 2, 0.99, 0.01).astype(np.float32))
    assert uncertainty(confident) == (0.0, 0.0)
    mixed = np.zeros((4, 5, 6), np.float32)
    mixed[0, 0, :2] = [0.2, 0.8]
    assert uncertainty(sitk.GetImageFromArray(mixed))[0] == pytest.approx(0.7219, abs=1e-4)


def _worklist(tmp_path, entropies):
    worklist = Worklist.load(tmp_path / "worklist.csv", create=True)
    for index, entropy in enumerate(entropies):
        outputs = {"sc": {"probseg": "p", "seg": "s", "entropy": entropy, "uncertain_mm3": 1.0}}
        worklist.record_prediction(f"sub-{index:02d}_T2w", f"{index:02d}", "", f"sub-{index:02d}.nii.gz", outputs)
    worklist.save()
    return Worklist.load(tmp_path / "worklist.csv")


def test_rank_mark_and_next(tmp_path):
    entropies = [0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.05]
    worklist = _worklist(tmp_path, entropies)
    worklist.rank(random_fraction=0.0)
    assert list(worklist.table["uncertainty"].astype(float)) == sorted(entropies, reverse=True)
    worklist.rank(random_fraction=0.5, seed=3)
    mixed = list(worklist.table["case"])
    worklist.rank(random_fraction=0.5, seed=3)
    assert list(worklist.table["case"]) == mixed  # seeded
    by_uncertainty = list(worklist.table.sort_values("uncertainty", ascending=False)["case"])
    assert mixed != by_uncertainty and sorted(mixed) == sorted(by_uncertainty)
    assert mixed[0] == by_uncertainty[0]  # uncertainty picks first, random picks every second place

    first = worklist.next_case()
    assert first == mixed[0]
    worklist.mark(first, "corrected", rater="jd")
    assert worklist.next_case() == mixed[1]
    with pytest.raises(SpinalCordSegError, match="needs a reason"):
        worklist.mark(mixed[1], "excluded")
    worklist.mark(mixed[1], "excluded", reason="motion")
    reloaded = Worklist.load(tmp_path / "worklist.csv")
    row = reloaded.table[reloaded.table["case"] == mixed[1]].iloc[0]
    assert (row["status"], row["reason"]) == ("excluded", "motion")
    with pytest.raises(SpinalCordSegError, match="unknown status"):
        reloaded.mark(first, "done")


def test_subject_splits_keep_sessions_together():
    cases = {f"sub-{s}_ses-{v}": s for s in "ABCDEFG" for v in (1, 2)}
    splits = subject_splits(cases, folds=3)
    assert len(splits) == 3
    assert sorted(c for split in splits for c in split["val"]) == sorted(cases)
    for split in splits:
        assert {cases[c] for c in split["val"]}.isdisjoint({cases[c] for c in split["train"]})


def _correct(bids, shared_data, relative):
    """Write the shared ground truth as the correction of a case in derivatives/labels."""
    scan, cord, lesion = COHORT[relative]
    folder = (bids / "derivatives" / "labels" / relative).parent
    folder.mkdir(parents=True, exist_ok=True)
    case = relative.split("/")[-1][:-7]
    shutil.copy(shared_data / "sct_testing_data" / cord, folder / f"{case}_label-SC_seg.nii.gz")
    if lesion:
        shutil.copy(shared_data / "sct_testing_data" / lesion, folder / f"{case}_label-lesion_seg.nii.gz")
    return case


def test_export_round_validates_with_nnunet(predicted, shared_data, tmp_path):
    bids = predicted
    derivatives = bids / "derivatives" / "spinalcordseg"
    worklist = Worklist.load(derivatives / "worklist.csv")
    corrected = [_correct(bids, shared_data, r) for r in sorted(COHORT)[:2] + ["sub-04/anat/sub-04_T2w.nii.gz"]]
    for case in corrected:
        worklist.mark(case, "corrected", rater="jd")
    worklist.mark("sub-03_T2w", "approved", rater="jd")
    with pytest.raises(SpinalCordSegError, match="no corrected cord mask"):
        export_round(worklist, tmp_path / "raw" / "Dataset123_Round2")
    assert not (tmp_path / "raw" / "Dataset123_Round2").exists() and not list((tmp_path / "raw").iterdir())

    _correct(bids, shared_data, "sub-03/anat/sub-03_T2w.nii.gz")
    folder = export_round(worklist, tmp_path / "raw" / "Dataset123_Round2", folds=2)
    verify_dataset(folder)  # nnU-Net's own check, again, on the final folder
    broken = Path(shutil.copytree(folder, tmp_path / "raw" / "Dataset124_Broken"))
    labels = sitk.ReadImage(str(broken / "labelsTr" / "sub-03_T2w.nii.gz"))
    sitk.WriteImage(labels + 2, str(broken / "labelsTr" / "sub-03_T2w.nii.gz"))  # labels 2 and 3: 3 is unknown
    with pytest.raises(SpinalCordSegError, match="Dataset124_Broken: nnU-Net's dataset integrity check failed"):
        verify_dataset(broken)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "sc": [1, 2], "lesion": 2} and dataset["numTraining"] == 4
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "sub-04_T2w.nii.gz")))
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(
        str(shared_data / "sct_testing_data/t2/t2_fake_lesion_lesion_seg.nii.gz"))) > 0
    assert (labels[lesion] == 2).all() and set(np.unique(labels)) == {0, 1, 2}
    splits = json.loads((folder / "splits_final.json").read_text())
    for split in splits:
        sessions = [c for c in split["val"] if c.startswith("sub-01")]
        assert sessions in ([], ["sub-01_ses-01_T2w", "sub-01_ses-02_T2w"])
    with pytest.raises(SpinalCordSegError, match="already exists"):
        export_round(worklist, folder)


def test_round_commands(predicted, tmp_path, capsys):
    from SpinalCordSegLib.cli import main

    bids = predicted
    derivatives = bids / "derivatives" / "spinalcordseg"
    worklist = str(derivatives / "worklist.csv")
    assert main(["round", "rank", "-w", worklist, "--random-fraction", "0"]) == 0
    table = pd.read_csv(worklist)
    assert list(table["rank"]) == [1, 2, 3, 4, 5]
    assert list(table["uncertainty"]) == sorted(table["uncertainty"], reverse=True)
    capsys.readouterr()
    assert main(["round", "next", "-w", worklist]) == 0
    assert capsys.readouterr().out.strip() == table["case"][0]
    assert main(["round", "mark", "-w", worklist, table["case"][0], "approved", "--rater", "jd"]) == 0
    assert pd.read_csv(worklist)["status"][0] == "approved"


def test_open_next_case_and_save_correction_marks_it_corrected(predicted, shared_data):
    """The Slicer module's flow, without Slicer: open the next case, save a correction, sync."""
    from SpinalCordSegLib.rounds.correction import plan_outputs, save_correction
    from SpinalCordSegLib.imaging.naming import source_name

    bids = predicted
    derivatives = bids / "derivatives" / "spinalcordseg"
    worklist = Worklist.load(derivatives / "worklist.csv")
    worklist.rank(random_fraction=0.0)
    worklist.save()
    opened = worklist.open_next(rater="jd")
    assert opened.case == worklist.table["case"][0] and opened.scan.is_file()
    assert sorted(opened.soft_maps) == ["lesion", "sc"] and all(p.is_file() for p in opened.soft_maps.values())
    assert Worklist.load(derivatives / "worklist.csv").table["status"][0] == "in correction"
    assert worklist.next_case() == opened.case  # still the one to finish
    provenance = opened.provenance()
    assert provenance["sc"]["InputSha256"] and opened.thresholds() == {"sc": 0.5, "lesion": 0.5}

    # The rater replaces the automatic cord with the manual one: what the Slicer save writes.
    relative = opened.scan.relative_to(bids).as_posix()
    manual = sitk.ReadImage(str(shared_data / "sct_testing_data" / COHORT[relative][1]))
    automatic = {s: sitk.ReadImage(str(p)) for s, p in opened.masks.items()}
    manual.CopyInformation(automatic["sc"])
    plan = plan_outputs(opened.scan)
    saved = save_correction({"sc": manual}, automatic, provenance, opened.thresholds(), source_name(opened.scan),
                            plan, rater="jd", scan_path=opened.scan)
    assert worklist.apply_correction_log(saved.log) == [opened.case]
    row = Worklist.load(derivatives / "worklist.csv").table.iloc[0]
    assert (row["status"], row["rater"]) == ("corrected", "jd")
    assert float(row["sc_correction_dice"]) == pytest.approx(saved.stats["sc"].dice, abs=1e-5)
    assert worklist.next_case() != opened.case

    # An approved case is not downgraded by a later sync; the CLI finds the dataset's log itself.
    from SpinalCordSegLib.cli import main

    worklist.mark(opened.case, "approved", rater="nr")
    assert main(["round", "sync", "-w", str(derivatives / "worklist.csv")]) == 0
    assert Worklist.load(derivatives / "worklist.csv").table["status"][0] == "approved"


def test_worklist_paths_follow_the_cohort_when_it_moves(predicted, tmp_path):
    bids = predicted
    moved = tmp_path / "elsewhere"
    shutil.move(str(bids), str(moved))
    case = Worklist.load(moved / "derivatives/spinalcordseg/worklist.csv").case("sub-01_ses-01_T2w")
    assert case.scan == moved / "sub-01/ses-01/anat/sub-01_ses-01_T2w.nii.gz" and case.scan.is_file()
    assert case.masks["sc"].is_file()


class OutOfMemoryOnce:
    """Test double: the real engine, but the second scan fails as a GPU out of memory would.

    A real out-of-memory error cannot be provoked reliably on this CPU machine.
    """

    def __init__(self, engine):
        self.engine, self.calls = engine, 0
        self.structures, self.checkpoint_sha256 = engine.structures, engine.checkpoint_sha256
        self.provenance = engine.provenance

    def predict(self, image, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("CUDA out of memory")
        return self.engine.predict(image, **kwargs)


def test_batch_records_unexpected_errors_and_goes_on(bids, engine):
    derivatives = bids / "derivatives" / "spinalcordseg"
    scans = find_scans(bids)[:3]
    report = run_batch(scans, OutOfMemoryOnce(engine), derivatives, {"sc": 0.5, "lesion": 0.5})
    assert report.predicted == [scans[0].relative, scans[2].relative]
    assert "RuntimeError: CUDA out of memory" in report.failed[scans[1].relative]
    assert list(pd.read_csv(derivatives / "failures.csv")["scan"]) == [scans[1].relative]


def test_batch_command_refuses_one_crop_mask_for_a_cohort(bids, tiny_region_model, capsys):
    from SpinalCordSegLib.cli import main

    code = main(["batch", "-i", str(bids), "-o", str(bids / "derivatives/x"), "-m", str(tiny_region_model),
                 "--trust", "--crop-mask", str(bids / "sub-02/anat/sub-02_T2w.nii.gz")])
    assert code != 0 and "--crop-with" in capsys.readouterr().err
    assert not (bids / "derivatives/x").exists()


def test_sharded_batch_worklists_merge_into_one(predicted, tmp_path, capsys):
    """Each shard keeps its own worklist (no two jobs write one file); merge gathers them."""
    from SpinalCordSegLib.cli import main

    derivatives = predicted / "derivatives" / "spinalcordseg"
    whole = Worklist.load(derivatives / "worklist.csv")
    shards = []
    for k in (1, 2):
        shard = Worklist.load(derivatives / f"worklist-shard{k}of2.csv", create=True)
        shard.table = whole.table[[in_shard(s, k, 2) for s in whole.table["scan"]]].copy()
        shard.save()
        shards.append(str(shard.path))
    merged = tmp_path / "round" / "worklist.csv"  # another folder: paths are rewritten
    with pytest.raises(SpinalCordSegError, match="no worklist there"):
        Worklist.load(merged)
    assert main(["round", "merge", "-w", str(merged)] + shards) == 0
    result = Worklist.load(merged)
    assert sorted(result.table["case"]) == sorted(whole.table["case"])
    assert all(result.case(c).scan.is_file() and result.case(c).soft_maps["sc"].is_file() for c in result.table["case"])
    result.mark(result.table["case"][0], "approved", rater="jd")
    assert main(["round", "merge", "-w", str(merged)] + shards) == 0  # again: nothing new, nothing lost
    assert Worklist.load(merged).table["status"].tolist().count("approved") == 1
    assert len(Worklist.load(merged).table) == len(whole.table)
