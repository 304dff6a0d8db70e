"""Hostile options and ids, third round (issue 27): refused cleanly, before the model loads.

Each case runs the real command line (in process, or as a real process where a pipe is
involved) and checks the exit status, the message and that no model was loaded.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.imaging.naming import is_safe_id
from SpinalCordSegLib.rounds.cohort import find_scans
from SpinalCordSegLib.rounds.correction import bids_location

REPO = Path(__file__).resolve().parents[3]
#: Ids that must never pass an id check (issue 27, item 6).
HOSTILE_IDS = ["c1\n", "c1\r", "c1\x00", "a/b", "..", "../x", "c1\n\n", "\nc1"]


@pytest.fixture
def bids(sample_data, tmp_path):
    root = tmp_path / "bids"
    scan = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    scan.parent.mkdir(parents=True)
    shutil.copy(sample_data.scan, scan)
    return root


# -- item 6: ids checked in full ------------------------------------------------------------------

@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_id_check_refuses_control_characters_separators_and_dots(hostile):
    assert not is_safe_id(hostile)
    assert is_safe_id(hostile.strip("\n\r\x00/.") or "x") or "/" in hostile


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_model_ids_are_checked_in_full(hostile, tiny_model, capsys):
    from SpinalCordSegLib.paths import models_dir

    assert main(["models", "install", hostile, "--from", str(tiny_model)]) == 1
    assert "invalid model id" in capsys.readouterr().err
    assert not models_dir().is_dir() or not [p for p in models_dir().iterdir() if not p.name.startswith(".")]
    assert main(["models", "info", hostile]) == 1


@pytest.mark.parametrize("label", ["sc\n", "../x", "a/b", "lesion\r", ".."])
def test_structure_names_are_checked_in_full(label, tiny_model, tmp_path):
    """A structure's name becomes part of output file names: dataset.json must not smuggle a path in."""
    import json

    from SpinalCordSegLib.errors import ModelFolderError
    from SpinalCordSegLib.models.model_folder import ModelFolder

    model = Path(shutil.copytree(tiny_model, tmp_path / "model" / tiny_model.name))
    dataset = json.loads((model / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, label: 1}
    (model / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelFolderError, match="is not a structure name"):
        ModelFolder.open(model)


def test_orientation_codes_are_checked_in_full(tiny_model, tmp_path):
    import json

    from SpinalCordSegLib.errors import ModelFolderError
    from SpinalCordSegLib.models.model_folder import ModelFolder

    model = Path(shutil.copytree(tiny_model, tmp_path / "model" / tiny_model.name))
    dataset = json.loads((model / "dataset.json").read_text())
    dataset["image_orientation"] = "RAS\n"
    (model / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelFolderError, match="image_orientation"):
        ModelFolder.open(model)


@pytest.mark.parametrize("name", ["sub-01_T2w\n.nii.gz", "sub-01_T2w\r.nii.gz", "sub-01_T 2w.nii.gz"])
def test_case_ids_that_cannot_name_files_are_skipped_by_name(bids, name, caplog):
    odd = bids / "sub-01" / "anat" / name
    shutil.copy(bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz", odd)
    skipped = {}
    scans = find_scans(bids, "sub-*.nii.gz", skipped)
    assert [scan.case for scan in scans] == ["sub-01_T2w"]
    assert list(skipped) == [str(odd)] and "cannot name output files" in caplog.text


def test_bids_subject_and_session_folders_are_matched_in_full(tmp_path):
    good = tmp_path / "bids" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz"
    assert bids_location(good) is not None
    assert bids_location(tmp_path / "bids" / "sub-01\n" / "anat" / "sub-01\n_T2w.nii.gz") is None
    location = bids_location(tmp_path / "bids" / "sub-01" / "ses-1\n" / "anat" / "sub-01_ses-1\n_T2w.nii.gz")
    assert location is None or location.session is None


# -- item 8: batch output and worklist checked before the model loads -------------------------------

def test_batch_output_and_worklist_are_checked_before_the_model_loads(bids, tiny_model, tmp_path, loads, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    model = ["-m", str(tiny_model), "--device", "cpu", "--trust"]
    cases = [
        (["-o", str(a_file)], f"{a_file}: the output folder exists and is not a folder"),
        (["-o", str(a_file / "d")], f"{a_file / 'd'}: cannot write to the output folder"),
        (["-o", "/proc/spinalcordseg-d"], "/proc/spinalcordseg-d: cannot write to the output folder"),
        (["-o", str(tmp_path / "o1"), "--worklist", str(a_file / "w.csv")],
         f"{a_file}: the worklist's folder exists and is not a folder"),
        (["-o", str(tmp_path / "o2"), "--worklist", str(tmp_path)], "is a folder; give a CSV file"),
        (["-o", str(tmp_path / "o3"), "--worklist", str(a_file)], f"{a_file}: not a worklist"),
        (["-o", str(tmp_path / "o4"), "--include", "../../*"], "--include '../../*': give a file name pattern"),
        (["-o", str(tmp_path / "o5"), "--include", "/etc/*"], "--include '/etc/*': give a file name pattern"),
    ]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        cases.append((["-o", str(readonly / "d")], f"{readonly / 'd'}: cannot write to the output folder"))
    for arguments, message in cases:
        assert main(["batch", "-i", str(bids), *arguments, *model]) == 1, arguments
        error = capsys.readouterr().err
        assert error.startswith("spinalcordseg: error: ") and message in error, (arguments, error)
        assert loads == [], f"{arguments}: the model was loaded before the check"
    assert a_file.read_text() == "not a folder"


# -- item 11: numbers finite and in range ----------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["--crop-margin", "nan"], "argument --crop-margin: 'nan' is not a finite number"),
    (["--crop-margin", "inf"], "argument --crop-margin: 'inf' is not a finite number"),
    (["--crop-margin", "-1"], "argument --crop-margin: -1: must be at least 0"),
    (["--crop-margin", "1e300"], "argument --crop-margin: 1e300: must be at most 1000.0"),
    (["--step-size", "nan"], "argument --step-size: 'nan' is not a finite number"),
    (["--step-size", "0"], "argument --step-size: 0: must be above 0"),
    (["--threads", "0"], "argument --threads: 0: must be at least 1"),
    (["--threads", "two"], "argument --threads: 'two' is not an integer"),
    (["--threshold", "nan"], "--threshold: 'nan': 'nan' must lie strictly between 0 and 1"),
])
def test_segment_numbers_must_be_finite_and_in_range(arguments, message, sample_data, tiny_model, tmp_path,
                                                     loads, capsys):
    scan = str(sample_data.scan)
    try:
        code = main(["segment", "-i", scan, "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--trust",
                     *arguments])
    except SystemExit as exit_:  # argparse refuses while parsing
        code = exit_.code
    assert code in (1, 2) and message in capsys.readouterr().err
    assert loads == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments, message", [
    (["round", "rank", "-w", "w.csv", "--seed", "-1"], "argument --seed: -1: must be at least 0"),
    (["round", "rank", "-w", "w.csv", "--random-fraction", "nan"], "'nan' is not a finite number"),
    (["round", "rank", "-w", "w.csv", "--random-fraction", "2"], "2: must be at most 1"),
    (["round", "export", "-w", "w.csv", "-o", "x", "--folds", "0"], "argument --folds: 0: must be at least 1"),
    (["round", "export", "-w", "w.csv", "-o", "x", "--seed", "-5"], "argument --seed: -5: must be at least 0"),
    (["drift", "--max-scaling-deviation", "nan"], "'nan' is not a finite number"),
])
def test_round_and_drift_numbers_must_be_finite_and_in_range(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_include_patterns_stay_inside_the_bids_root(bids):
    for pattern in ("../../*", "/etc/*", "sub-01/../../*", "C:/x/*"):
        with pytest.raises(SpinalCordSegError, match="give a file name pattern inside the BIDS folder"):
            find_scans(bids, pattern)
    assert [s.case for s in find_scans(bids, "sub-*/anat/*.nii.gz")] == ["sub-01_T2w"]


# -- item 15: a closed pipe ------------------------------------------------------------------------

@pytest.mark.parametrize("module, arguments", [
    ("SpinalCordSegLib.cli", ["models", "list"]), ("SpinalCordSegLib.cli", ["--help"]),
    ("SpinalCordSegLib.cli", ["segment", "--help"]), ("LesionQCLib.cli", ["--help"]),
    ("LesionQCLib.cli", ["make-session", "--help"]),
])
def test_a_closed_pipe_ends_quietly(module, arguments, tmp_path):
    """``spinalcordseg models list | head -0`` (and lesionqc's): the reader is gone before anything is written."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "SpinalCordSeg"), str(REPO / "LesionQC")]))
    reader, writer = os.pipe()
    os.close(reader)  # a real pipe whose reader has exited, as head's does
    try:
        done = subprocess.run([sys.executable, "-m", module, *arguments], stdout=writer,
                              stderr=subprocess.PIPE, env=env, cwd=tmp_path, timeout=120)
    finally:
        os.close(writer)
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert done.returncode in (0, 141), (done.returncode, stderr)


@pytest.mark.parametrize("case", ["../../escape", "c1\n", "a/b", ".."])
def test_a_worklist_with_a_case_id_that_is_a_path_is_refused(case, tmp_path):
    """``round export`` writes ``imagesTr/<case>_0000.nii.gz``: an edited worklist must not aim it elsewhere."""
    import pandas as pd

    from SpinalCordSegLib.rounds.worklist import Worklist

    path = tmp_path / "worklist.csv"
    pd.DataFrame([{"case": case, "subject": "01", "session": "", "scan": "x.nii.gz", "status": "corrected"}]
                 ).to_csv(path, index=False)
    with pytest.raises(SpinalCordSegError, match=f"{path}: case id .* cannot name files"):
        Worklist.load(path)
