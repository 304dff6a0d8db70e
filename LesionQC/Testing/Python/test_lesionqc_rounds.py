"""QC feeds the correction round: batch -> blinded session -> two raters -> analysis -> worklist.

The batch is the real one (``spinalcordseg batch`` with the embedded ``demo-sc-lesion``
nnU-Net model) on three small scans of SCT's testing data; the corrected masks
that make the second source are written where the SpinalCordSeg module saves them
(``derivatives/labels``); the raters score through the real rating state.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from LesionQCLib.analysis import load_inputs
from LesionQCLib.cli import main as lesionqc
from LesionQCLib.review_state import ReviewState
from LesionQCLib.rounds import failed_cases
from LesionQCLib.session import default_key_path, load_key
from SpinalCordSegLib.imaging.image_io import reorient

pytestmark = pytest.mark.slow

#: Three scans made of the bundled sample: as it is, stored in LAS order, and its middle 21 slices.
SCANS = {"sub-01": lambda image: image,
         "sub-02": lambda image: reorient(image, "LAS"),
         "sub-03": lambda image: image[:, :, 4:25]}
#: Scores of the model's item by the two raters, for the cases the batch ranked first, second and
#: last: the QC finds the least uncertain case worst. The corrected (manual) items score 5 and 4.
MODEL_SCORES = ((4, 3), (3, 2), (1, 2))


@pytest.fixture(scope="module")
def predicted_template(sample_data, tmp_path_factory):
    from SpinalCordSegLib.cli import main as spinalcordseg

    root = tmp_path_factory.mktemp("round") / "bids"
    for subject, make in SCANS.items():
        (root / subject / "anat").mkdir(parents=True)
        image = make(sitk.ReadImage(str(sample_data.scan)))
        sitk.WriteImage(image, str(root / subject / "anat" / f"{subject}_T2w.nii.gz"))
    (root / "dataset_description.json").write_text('{"Name": "qc round", "BIDSVersion": "1.9.0"}')
    assert spinalcordseg(["batch", "-i", str(root), "-o", str(root / "derivatives/spinalcordseg"),
                          "-m", "demo-sc-lesion", "--device", "cpu"]) == 0
    return root


@pytest.fixture
def predicted(predicted_template, tmp_path):
    return Path(shutil.copytree(predicted_template, tmp_path / "bids"))


def write_corrections(worklist_path):
    """A corrected cord mask (the model's, dilated) and lesion mask per case, where the module saves them."""
    from SpinalCordSegLib.rounds.correction import plan_outputs
    from SpinalCordSegLib.imaging.naming import output_name
    from SpinalCordSegLib.rounds.worklist import Worklist

    worklist = Worklist.load(worklist_path)
    for case in worklist.table["case"]:
        opened = worklist.case(case)
        folder = plan_outputs(opened.scan).folder
        folder.mkdir(parents=True, exist_ok=True)
        for structure, mask in opened.masks.items():
            image = sitk.ReadImage(str(mask))
            if structure == "sc":
                image = sitk.BinaryDilate(image, [1, 1, 0])
            sitk.WriteImage(image, str(folder / output_name(case, structure, "seg")))


def test_failed_cases_go_first_in_the_round(predicted, tmp_path, capsys):
    from SpinalCordSegLib.cli import main as spinalcordseg
    from SpinalCordSegLib.rounds.worklist import Worklist

    worklist = predicted / "derivatives/spinalcordseg/worklist.csv"
    assert spinalcordseg(["round", "rank", "-w", str(worklist), "--random-fraction", "0"]) == 0
    ranked = list(Worklist.load(worklist).table["case"])
    model_scores = dict(zip(ranked, MODEL_SCORES))
    worst, second = ranked[2], ranked[1]
    write_corrections(worklist)

    # Session: the batch's masks ("model") and the corrections ("manual"), a third of the cases repeated.
    session = tmp_path / "qc"
    assert lesionqc(["make-session", "--from-worklist", str(worklist), "-o", str(session), "--seed", "4",
                     "--repeat-fraction", "0.34"]) == 0
    view = load_inputs(session)[0]
    key = load_key(default_key_path(session), view)
    assert set(key.sources) == {"manual", "model"} and key.model_source == "model"
    assert len(view.cases) == 4 and view.labels == {1: "sc", 2: "lesion"}
    assert sorted(set(key.case_of.values())) == sorted(ranked)

    # Two raters score every item, repeats included.
    for index, rater in enumerate(("r1", "r2")):
        state = ReviewState(view, rater)
        while True:
            case, source = key.case_of[state.case.case_id], key.source(state.case.case_id, state.item.item_id)
            state.set_score(model_scores[case][index] if source == "model" else 5 - index)
            if not state.go_next():
                break
        state.close()

    assert lesionqc(["analyze", str(session), "-o", str(tmp_path / "results"), "--by", "contrast"]) == 0
    wilcoxon = pd.read_csv(tmp_path / "results/wilcoxon.csv")
    pooled = wilcoxon[(wilcoxon.rater == "all") & (wilcoxon.structure == "overall")].iloc[0]
    assert (pooled.source_a, pooled.source_b, pooled.n_pairs) == ("manual", "model", 6)
    assert pooled.rank_biserial == -1.0  # every rater scored every model item below its correction
    intra = pd.read_csv(tmp_path / "results/intra_rater.csv")
    assert list(intra.n_pairs) == [2, 2] and np.allclose(intra.percent_agreement, 100)

    failures = failed_cases(*load_inputs(session))
    assert [f.case for f in failures] == [worst, second]  # worst first; 2 is at the threshold
    capsys.readouterr()
    assert lesionqc(["to-worklist", str(session), "-w", str(worklist)]) == 0
    assert "2 case(s) put first" in capsys.readouterr().out

    table = Worklist.load(worklist).table
    assert list(table["case"]) == [worst, second, ranked[0]]
    assert list(table["rank"]) == ["1", "2", "3"] and set(table["status"]) == {"predicted"}
    reason = table.loc[0, "reason"]
    assert view.session_id in reason and "overall 1 (r1), 2 (r2)" in reason and "(<= 2)" in reason
    assert spinalcordseg(["round", "next", "-w", str(worklist)]) == 0
    assert capsys.readouterr().out.strip() == worst
    # A case corrected meanwhile keeps its status; the next one is the second worst.
    Worklist.load(worklist).mark(worst, "corrected", rater="jd")
    assert lesionqc(["to-worklist", str(session), "-w", str(worklist)]) == 0
    assert f"not waiting): {worst}" in capsys.readouterr().out
    assert spinalcordseg(["round", "next", "-w", str(worklist)]) == 0
    assert capsys.readouterr().out.strip() == second

    # The same failures as SCT's qc_fail.yml, the config of its manual_correction.py.
    assert lesionqc(["qc-fail", str(session), "-o", str(tmp_path / "qc_fail.yml")]) == 0
    config = yaml.safe_load((tmp_path / "qc_fail.yml").read_text())
    names = [f"{worst}.nii.gz", f"{second}.nii.gz"]
    assert config == {"FILES_SEG": names, "FILES_LESION": names}
    assert lesionqc(["qc-fail", str(session), "-o", str(tmp_path / "strict.yml"), "--threshold", "1",
                     "--structure", "overall"]) == 0
    assert yaml.safe_load((tmp_path / "strict.yml").read_text())["FILES_SEG"] == [f"{worst}.nii.gz"]


def test_corrections_of_only_some_cases_give_a_model_only_session(predicted, tmp_path):
    from SpinalCordSegLib.rounds.correction import plan_outputs
    from SpinalCordSegLib.imaging.naming import output_name
    from SpinalCordSegLib.rounds.worklist import Worklist

    worklist_path = predicted / "derivatives/spinalcordseg/worklist.csv"
    worklist = Worklist.load(worklist_path)
    opened = worklist.case("sub-01_T2w")
    folder = plan_outputs(opened.scan).folder
    folder.mkdir(parents=True)
    shutil.copy(opened.masks["sc"], folder / output_name("sub-01_T2w", "sc", "seg"))
    # One item per case for every case: a second item on one case alone would tell the sources apart.
    assert lesionqc(["make-session", "--from-worklist", str(worklist_path), "-o", str(tmp_path / "qc")]) == 0
    view = load_inputs(tmp_path / "qc")[0]
    assert {len(case.items) for case in view.cases} == {1}
    assert load_key(default_key_path(tmp_path / "qc"), view).sources == ("model",)
    # Excluded cases are not reviewed.
    worklist.mark("sub-02_T2w", "excluded", reason="motion")
    assert lesionqc(["make-session", "--from-worklist", str(worklist_path), "-o", str(tmp_path / "qc2")]) == 0
    assert sorted(c.case_id for c in load_inputs(tmp_path / "qc2")[0].cases) == ["sub-01_T2w", "sub-03_T2w"]
