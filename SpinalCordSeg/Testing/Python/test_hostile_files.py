"""Hostile files, third round (issue 27): what a user's folder, a BIDS tree or a scan header can hold.

Every test runs on real files (real MRI from the shared data, real NIfTI headers written byte by
byte, real processes for the dead writers) and checks that nothing of the user's is deleted or
overwritten and that each bad file is refused with its name.
"""

import gzip
import logging
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.cli.segment import prepare_output_folder
from SpinalCordSegLib.errors import InputImageError, SpinalCordSegError
from SpinalCordSegLib.imaging.fileutil import make_staging_folder, owner_tag, remove_stale_temporaries
from SpinalCordSegLib.imaging.image_io import read_scan
from SpinalCordSegLib.imaging.sidecar import Sidecar
from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
from SpinalCordSegLib.rounds.cohort import find_scans, run_batch

#: Names a user's files may have that look like temporary files (issue 27, item 1).
USERS_HIDDEN_FILES = (".thesis.chapter3.part.docx", ".report.20241201.tmp", ".notes.abcdefgh.part.nii.gz",
                      ".worklist.csv.k2j4_x9q.tmp", ".x_seg.nii.gz.4242@another-node.abcd1234.part.nii.gz")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _users_files(folder: Path) -> dict:
    """The user's hidden files, last changed a week ago (older than any stale temporary file)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {folder / name: f"the user's {name}".encode() for name in USERS_HIDDEN_FILES}
    week_ago = time.time() - 7 * 24 * 3600
    for path, content in files.items():
        path.write_bytes(content)
        os.utime(path, (week_ago, week_ago))
    return files


def test_stale_temporary_clean_up_removes_only_this_tools_names(tmp_path, caplog):
    """segment's output folder and batch's derivatives (recursive): the user's hidden files stay."""
    myproj = tmp_path / "myproj"
    derivatives = tmp_path / "derivatives"
    users = {**_users_files(myproj), **_users_files(derivatives / "sub-01" / "anat")}
    dead = _dead_pid()
    orphans = [myproj / f".t2_label-SC_seg.nii.gz.{owner_tag(dead)}.0a1b2c3d.part.nii.gz",
               derivatives / "sub-01" / "anat" / f".worklist.csv.{owner_tag(dead)}.0a1b2c3d.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"left by a killed run")

    with caplog.at_level(logging.WARNING):
        prepare_output_folder(myproj)  # what 'segment -o myproj' does first
        run_batch([], None, derivatives, {})  # what 'batch -o derivatives' does first (recursively)
    for path, content in users.items():
        assert path.read_bytes() == content, f"{path.name}: the user's file was touched"
        assert str(path) not in caplog.text
    assert not any(orphan.exists() for orphan in orphans)
    assert all(f"removed {orphan} (" in caplog.text for orphan in orphans)
    assert remove_stale_temporaries(myproj, recursive=True) == []


def test_stale_clean_up_never_follows_links(tmp_path):
    """A link named like a stale staging folder, or a link to a folder with stale files: what they point to stays."""
    from SpinalCordSegLib.imaging.fileutil import remove_stale

    elsewhere = tmp_path / "elsewhere"
    outside = elsewhere / f".x.nii.gz.{owner_tag(_dead_pid())}.0a1b2c3d.part.nii.gz"
    _users_files(elsewhere)
    outside.write_bytes(b"not in the cleaned folder")
    folder = tmp_path / "derivatives"
    folder.mkdir()
    (folder / "sub-01").symlink_to(elsewhere, target_is_directory=True)
    (folder / f".Dataset1_A.{owner_tag(_dead_pid())}.0a1b2c3d").symlink_to(elsewhere, target_is_directory=True)
    assert remove_stale_temporaries(folder, recursive=True) == []
    assert remove_stale(folder, "a test", folders=True) == []
    assert outside.exists() and len(list(elsewhere.iterdir())) == len(USERS_HIDDEN_FILES) + 1


#: A child that draws a drift figure and is SIGKILLed when the figure is renamed into place: the
#: os.replace hook only picks the worst moment to die, the kill and the files are real.
_KILLED_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
from matplotlib.figure import Figure
from SpinalCordSegLib.rounds import drift
figure = Figure()
figure.add_subplot().plot([0, 1], [1, 0])
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
drift._save_figure(figure, Path(sys.argv[1]))
"""


def test_a_drift_figure_killed_while_saved_leaves_only_what_the_next_run_removes(tmp_path):
    folder = tmp_path / "drift"
    folder.mkdir()
    _users_files(folder)
    run = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, str(folder / "csa_per_contrast.png")],
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = [p for p in folder.iterdir() if p.name not in USERS_HIDDEN_FILES]
    assert len(left) == 1 and not (folder / "csa_per_contrast.png").exists()  # the half-published figure
    assert remove_stale_temporaries(folder) == left  # what 'drift' does first (write_drift)
    assert sorted(p.name for p in folder.iterdir()) == sorted(USERS_HIDDEN_FILES)


# -- a killed 'round export' ----------------------------------------------------------------------

def _corrected_cohort(sample_data, root: Path, count: int) -> Path:
    """A BIDS cohort of ``count`` copies of the sample scan, each corrected; its worklist's path."""
    import pandas as pd

    from SpinalCordSegLib.rounds.worklist import BASE_COLUMNS, TAIL_COLUMNS, Worklist

    rows = []
    for number in range(1, count + 1):
        subject = f"sub-{number:02d}"
        scan = root / subject / "anat" / f"{subject}_T2w.nii.gz"
        labels = root / "derivatives" / "labels" / subject / "anat"
        scan.parent.mkdir(parents=True)
        labels.mkdir(parents=True)
        shutil.copy(sample_data.scan, scan)
        shutil.copy(sample_data.cord, labels / f"{subject}_T2w_label-SC_seg.nii.gz")
        rows.append({"case": f"{subject}_T2w", "subject": subject, "session": "", "scan": str(scan),
                     "status": "corrected", "rater": "jd"})
    worklist = Worklist(root / "derivatives" / "spinalcordseg" / "worklist.csv",
                        pd.DataFrame(rows, columns=BASE_COLUMNS + TAIL_COLUMNS, dtype=object).fillna(""))
    worklist.save()
    return worklist.path


def test_a_killed_round_export_leaves_nothing_that_the_next_export_keeps(sample_data, tmp_path, kill_when):
    worklist = _corrected_cohort(sample_data, tmp_path / "bids", 24)
    raw = tmp_path / "nnUNet_raw"
    output = raw / "Dataset123_Round2"
    command = [sys.executable, "-m", "SpinalCordSegLib.cli", "round", "export", "-w", str(worklist), "-o",
               str(output), "--cord-only"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def staging_with_two_scans():
        staging = [p for p in raw.glob(".Dataset123_Round2.*") if (p / "imagesTr").is_dir()]
        return staging[0] if staging and len(list((staging[0] / "imagesTr").glob("*_0000.nii.gz"))) >= 2 else None

    staging = kill_when(command, env, staging_with_two_scans, "export")
    assert staging.is_dir() and not output.exists()  # what the kill leaves

    # A live export's staging folder (this process's) and the user's look-alike folders must stay.
    live = make_staging_folder(raw, ".Dataset123_Round2")
    users = [raw / ".Dataset123_Round2.notes", raw / f".Dataset123_Round2.{_dead_pid()}@node1.0a1b2c3d"]
    for folder in users:
        (folder / "imagesTr").mkdir(parents=True)
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not staging.exists()
    assert f"removed {staging} (" in run.stderr and "left by an interrupted 'round export'" in run.stderr
    assert live.is_dir() and all((folder / "imagesTr").is_dir() for folder in users)
    assert len(list((output / "imagesTr").iterdir())) == 24


# -- item 2: output name collisions -------------------------------------------------------------

def test_segment_refuses_two_inputs_with_one_output_name(sample_data, tiny_model, tmp_path, capsys):
    t2 = sample_data.scan
    first, second = tmp_path / "a" / "scan.nii.gz", tmp_path / "b" / "scan.nii.gz"
    upper = tmp_path / "c" / "SCAN.nii.gz"  # the same file on macOS and Windows
    for path in (first, second, upper):
        path.parent.mkdir()
        shutil.copy(t2, path)
    out = tmp_path / "out"
    code = main(["segment", "-i", str(first), str(second), str(upper), "-o", str(out), "-m", str(tiny_model),
                 "--trust", "--device", "cpu", "--no-crop"])
    error = capsys.readouterr().err
    assert code == 1
    assert "3 inputs would write the same output files" in error
    assert all(str(path) in error for path in (first, second, upper))
    assert not out.exists()  # refused before any prediction
    code = main(["segment", "-i", str(first), str(first), "-o", str(out), "-m", str(tiny_model), "--trust"])
    assert code == 1 and f"given more than once (nothing was run): {first}" in capsys.readouterr().err


def test_batch_refuses_scans_that_share_a_case_id(sample_data, tmp_path, caplog):
    """A session folder without the session in the file name: one case id for two scans."""
    root = tmp_path / "bids"
    for relative in ("sub-01/anat/sub-01_T2w.nii.gz", "sub-01/ses-2/anat/sub-01_T2w.nii.gz"):
        (root / relative).parent.mkdir(parents=True)
        shutil.copy(sample_data.scan, root / relative)
    with pytest.raises(SpinalCordSegError) as refused:
        find_scans(root)
    message = str(refused.value)
    assert "sub-01/anat/sub-01_T2w.nii.gz" in message and "sub-01/ses-2/anat/sub-01_T2w.nii.gz" in message
    assert "would write the same output files" in message


# -- item 10: non-UTF-8 file names ---------------------------------------------------------------

def test_a_file_name_that_is_not_utf8_is_reported_and_the_others_go_on(sample_data, tiny_model, tmp_path,
                                                                       caplog, capsys):
    root = tmp_path / "bids"
    good = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    good.parent.mkdir(parents=True)
    shutil.copy(sample_data.scan, good)
    for raw in (b"sub-02/anat/sub-02\xff_T2w.nii.gz", b"sub-0\xe93/anat/sub-03_T2w.nii.gz"):
        bad = os.path.join(os.fsencode(root), raw)
        os.makedirs(os.path.dirname(bad), exist_ok=True)
        shutil.copy(good, bad)
    out = tmp_path / "derivatives"
    code = main(["batch", "-i", str(root), "-o", str(out), "-m", str(tiny_model), "--trust", "--device", "cpu",
                 "--no-crop"])
    printed = capsys.readouterr().out
    assert code == 1  # something was left out: the run says so
    assert "sub-02\\xff_T2w.nii.gz: the file name is not valid UTF-8" in caplog.text
    assert "sub-0\\xe93/anat/sub-03_T2w.nii.gz: the file name is not valid UTF-8" in caplog.text
    assert "predicted 1" in printed and "file names skipped 2" in printed
    assert (out / "sub-01" / "anat" / "sub-01_T2w_label-SC_seg.nii.gz").is_file()


# -- item 12: absurd geometry --------------------------------------------------------------------

def _with_pixdim(source: Path, target: Path, value: float) -> Path:
    """``source`` (a NIfTI-1 .nii.gz) with its first spatial pixdim set to ``value``, byte by byte."""
    data = bytearray(gzip.decompress(source.read_bytes()))
    order = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    data[80:84] = struct.pack(f"{order}f", value)
    target.write_bytes(gzip.compress(bytes(data)))
    return target


@pytest.mark.parametrize("value", [math.nan, 0.0, -1.0, math.inf, 1e30, 1e-30])
def test_absurd_voxel_spacing_is_refused_naming_the_file(sample_data, tmp_path, value):
    path = _with_pixdim(sample_data.scan, tmp_path / f"pixdim_{value}.nii.gz", value)
    with pytest.raises(InputImageError, match=r"pixdim_.*\.nii\.gz: voxel spacing .* is not usable"):
        read_scan(path)


def test_absurd_spacing_of_an_image_in_memory_is_refused(sample_data):
    """The Slicer panel hands images, not files, to the engine: check_scan sees them."""
    image = sitk.ReadImage(str(sample_data.scan))
    image.SetSpacing((1e-30, 1.0, 1.0))
    with pytest.raises(InputImageError, match="panel volume: voxel spacing"):
        from SpinalCordSegLib.imaging.image_io import check_scan
        check_scan(image, "panel volume")


def test_segment_refuses_absurd_spacing_before_the_model_loads(sample_data, tiny_model, tmp_path, capsys, caplog):
    bad = _with_pixdim(sample_data.scan, tmp_path / "zero.nii.gz", 0.0)
    code = main(["segment", "-i", str(bad), "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--trust"])
    assert code == 1
    assert f"{bad}: voxel spacing (0.0, " in caplog.text and "mm is not usable" in caplog.text
    assert "nothing was run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- item 14: a batch rerun with other thresholds or mask options --------------------------------

def test_batch_rerun_with_other_thresholds_remakes_masks_from_the_soft_maps(sample_data, tiny_region_model,
                                                                             tmp_path):
    root = tmp_path / "bids"
    scan = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    scan.parent.mkdir(parents=True)
    shutil.copy(sample_data.scan, scan)
    out = tmp_path / "derivatives"
    engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", crop=False))
    predictions = []
    real_predict = engine.predict
    engine.predict = lambda *a, **k: predictions.append(1) or real_predict(*a, **k)
    first = run_batch(find_scans(root), engine, out, {"sc": 0.5, "lesion": 0.5})
    assert first.predicted == ["sub-01/anat/sub-01_T2w.nii.gz"] and len(predictions) == 1
    anat = out / "sub-01" / "anat"
    soft = sitk.GetArrayFromImage(sitk.ReadImage(str(anat / "sub-01_T2w_label-lesion_probseg.nii.gz")))
    soft_written = (anat / "sub-01_T2w_label-lesion_probseg.nii.gz").stat().st_mtime_ns

    again = run_batch(find_scans(root), engine, out, {"sc": 0.5, "lesion": 0.2})
    assert again.rebinarized == ["sub-01/anat/sub-01_T2w.nii.gz"] and again.skipped == []
    assert len(predictions) == 1  # no prediction: the stored soft maps were used
    seg = anat / "sub-01_T2w_label-lesion_seg.nii.gz"
    assert Sidecar.read(seg).threshold == 0.2
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(seg))) == (soft >= 0.2)).all()
    assert (anat / "sub-01_T2w_label-lesion_probseg.nii.gz").stat().st_mtime_ns == soft_written

    from SpinalCordSegLib.imaging.binarization import MaskOptions
    options = MaskOptions(keep_largest_cord=False)
    third = run_batch(find_scans(root), engine, out, {"sc": 0.5, "lesion": 0.2}, options=options)
    assert third.rebinarized == ["sub-01/anat/sub-01_T2w.nii.gz"]
    assert Sidecar.read(anat / "sub-01_T2w_label-SC_seg.nii.gz").mask_options == options
    fourth = run_batch(find_scans(root), engine, out, {"sc": 0.5, "lesion": 0.2}, options=options)
    assert fourth.skipped == ["sub-01/anat/sub-01_T2w.nii.gz"] and fourth.rebinarized == []
    assert len(predictions) == 1
    assert np.isfinite(soft).all()
