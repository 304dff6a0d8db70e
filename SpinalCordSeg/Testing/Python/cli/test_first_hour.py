"""The first hour of a new user, command by command (issue 28, part 3): what they meet must be true and useful.

Real models (the tiny nnU-Net folders and the embedded demo models), the real
bundled sample scan, the real command line in process.
"""

import csv
import json
import re
import shlex
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.imaging.grid import same_grid


def _bids(tmp_path, sample_data):
    """A one-scan BIDS dataset holding the sample as ``sub-01_T2w``."""
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(sample_data.scan, anat / "sub-01_T2w.nii.gz")
    return tmp_path / "bids"


def test_save_cropbox_writes_the_box_also_when_it_is_the_whole_scan(tiny_region_model, sample_data, tmp_path):
    code = main(["segment", "-i", str(sample_data.scan), "-m", str(tiny_region_model), "-o", str(tmp_path / "out"),
                 "--trust", "--no-crop", "--save-cropbox"])
    assert code == 0
    box = sitk.ReadImage(str(tmp_path / "out" / "sample_T2w_cropbox.nii.gz"))
    assert same_grid(box, sitk.ReadImage(str(sample_data.scan)))
    assert sitk.GetArrayViewFromImage(box).min() == 1  # the model ran on the whole field of view


def test_the_trust_hint_after_an_install_is_a_command_that_works(tiny_model, tmp_path, capsys):
    assert main(["models", "install", "mine", "--from", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    hint = re.search(r"run '(spinalcordseg [^']+)'", out)
    assert hint, out
    argv = shlex.split(hint.group(1))[1:]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mine: already installed" in out and "mine: trusted (user)" in out


def test_a_batch_with_no_matching_scan_fails_and_says_so(tiny_model, tmp_path, capsys):
    (tmp_path / "bids" / "sub-01" / "anat").mkdir(parents=True)
    code = main(["batch", "-i", str(tmp_path / "bids"), "-o", str(tmp_path / "derivatives"), "-m", str(tiny_model),
                 "--trust", "--include", "sub-*_T1w.nii.gz"])
    assert code == 1
    assert "no scan matches --include 'sub-*_T1w.nii.gz'" in capsys.readouterr().err
    assert not (tmp_path / "derivatives").exists()


def test_batch_derivatives_describe_themselves_and_round_commands_are_friendly(
        tiny_region_model, sample_data, tmp_path, capsys):
    bids = _bids(tmp_path, sample_data)
    derivatives = bids / "derivatives" / "spinalcordseg"
    assert main(["batch", "-i", str(bids), "-o", str(derivatives), "-m", str(tiny_region_model), "--trust",
                 "--no-crop"]) == 0
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "SpinalCordSeg" and description["GeneratedBy"][0]["Version"]
    worklist = str(derivatives / "worklist.csv")
    capsys.readouterr()

    # nothing corrected yet: nothing to sync is not a failure
    assert main(["round", "sync", "-w", worklist]) == 0
    assert "nothing to sync: no correction saved yet" in capsys.readouterr().out
    # a log the user names must exist
    assert main(["round", "sync", "-w", worklist, "--log", str(tmp_path / "none.csv")]) == 1

    # one word, and the old quoted spelling
    for spelling in ("in-correction", "in correction"):
        assert main(["round", "mark", "-w", worklist, "sub-01_T2w", "predicted"]) == 0
        assert main(["round", "mark", "-w", worklist, "sub-01_T2w", spelling]) == 0
        with open(worklist, newline="") as stream:
            assert next(csv.DictReader(stream))["status"] == "in correction"


def test_an_empty_worklist_has_nothing_to_sync(tmp_path, capsys):
    worklist = tmp_path / "worklist.csv"
    assert main(["round", "merge", "-w", str(worklist), str(worklist)]) == 0
    assert main(["round", "sync", "-w", str(worklist)]) == 0
    assert "nothing to sync" in capsys.readouterr().out


def test_an_existing_dataset_description_is_kept(tiny_region_model, sample_data, tmp_path):
    bids = _bids(tmp_path, sample_data)
    derivatives = bids / "derivatives" / "spinalcordseg"
    derivatives.mkdir(parents=True)
    (derivatives / "dataset_description.json").write_text('{"Name": "mine"}')
    assert main(["batch", "-i", str(bids), "-o", str(derivatives), "-m", str(tiny_region_model), "--trust",
                 "--no-crop"]) == 0
    assert json.loads((derivatives / "dataset_description.json").read_text()) == {"Name": "mine"}


def test_an_explicit_missing_gpu_is_an_error_and_auto_says_it_uses_the_cpu(
        tiny_model, sample_data, tmp_path, capsys, caplog):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the missing-device error cannot happen here")
    code = main(["segment", "-i", str(sample_data.scan), "-m", str(tiny_model), "-o", str(tmp_path / "gpu"),
                 "--trust", "--device", "cuda", "--no-crop"])
    assert code == 1
    assert "device cuda is not available" in capsys.readouterr().err
    assert not (tmp_path / "gpu").exists()
    with caplog.at_level("INFO"):
        assert main(["segment", "-i", str(sample_data.scan), "-m", str(tiny_model), "-o", str(tmp_path / "auto"),
                     "--trust", "--no-crop"]) == 0
    assert any(r.getMessage().startswith("device auto: using the CPU") for r in caplog.records)


def test_crop_with_the_same_demo_model_says_its_note_once_and_shows_the_first_pass(
        sample_data, tmp_path, capsys, caplog):
    code = main(["segment", "-i", str(sample_data.scan), "-m", "demo-sc", "--crop-with", "demo-sc",
                 "-o", str(tmp_path / "out")])
    assert code == 0
    notes = [r for r in caplog.records if "demo-sc is a demo model" in r.getMessage()]
    assert len(notes) == 1
    assert "sample_T2w: cord for the crop: " in capsys.readouterr().err


def test_a_run_where_every_scan_fails_leaves_no_empty_folder(tiny_model, sample_data, tmp_path):
    scan = sitk.ReadImage(str(sample_data.scan), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(scan)
    array[3, 4, 5] = np.nan  # the header is fine; the voxels are not
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(scan)
    sitk.WriteImage(bad, str(tmp_path / "nan.nii.gz"))
    argv = ["segment", "-i", str(tmp_path / "nan.nii.gz"), "-m", str(tiny_model), "--trust", "--no-crop"]
    assert main(argv + ["-o", str(tmp_path / "new" / "out")]) == 1
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    assert main(argv + ["-o", str(tmp_path / "mine")]) == 1
    assert (tmp_path / "mine").is_dir()  # the user's folder stays


def test_a_renamed_results_folder_is_explained(tiny_model, sample_data, tmp_path, capsys):
    renamed = shutil.copytree(tiny_model, tmp_path / "mymodel_results")
    code = main(["segment", "-i", str(sample_data.scan), "-m", str(renamed), "-o", str(tmp_path / "out"), "--trust"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no configuration 'mymodel_results'" in err
    assert "must keep nnU-Net's <Trainer>__<Plans>__<configuration> form" in err


@pytest.mark.parametrize("argv, text", [
    (["demo", "--help"], "an explicit cuda or mps that is missing is an error"),
    (["segment", "--help"], "an explicit cuda or mps that is missing is an error"),
    (["round", "--help"], "Work through an active-learning round's worklist"),
    (["round", "mark", "--help"], "in-correction"),
])
def test_help_texts(argv, text, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    assert text in " ".join(capsys.readouterr().out.split())
