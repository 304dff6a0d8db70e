"""``round train`` / ``round promote`` against hostile input: a killed training, a reused work folder,
models that are not there, names that a shell would split."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.models.model_folder import ModelFolder
from SpinalCordSegLib.models.catalogue import load_catalogue
from SpinalCordSegLib.rounds.training import TrainingError, TrainingRequest, prepare

REPO = Path(__file__).resolve().parents[3]


def _training_tests():
    path = Path(__file__).parent / "rounds" / "test_training.py"
    spec = importlib.util.spec_from_file_location("training_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_work_folder_holding_another_training_is_refused(shared_data, tmp_path):
    tests = _training_tests()
    first = tests.raw_dataset(shared_data, tmp_path / "Dataset101 odd name")
    other = tests.raw_dataset(shared_data, tmp_path / "Dataset102_R2", {"sub-02_T2w": tests.CASES["sub-02_T2w"]})
    parent = ModelFolder.open(load_catalogue()["demo-sc"].path)
    prepare(TrainingRequest([first], "demo-sc", "x", tmp_path / "work"), parent)
    prepare(TrainingRequest([first], "demo-sc", "x", tmp_path / "work"), parent)  # the same: resumes
    with pytest.raises(TrainingError, match="holds a training on other cases"):
        prepare(TrainingRequest([other], "demo-sc", "x", tmp_path / "work"), parent)
    assert json.loads((tmp_path / "work" / "dataset.json").read_text())["cases"]["sub-02_T2w"].endswith("odd name")


def test_missing_models_and_datasets_are_named(tmp_path, capsys):
    assert main(["round", "promote", "nothing-here", "--against", "demo-sc", "--frozen", str(tmp_path)]) == 1
    assert "no installed model 'nothing-here'" in capsys.readouterr().err
    assert main(["round", "train", str(tmp_path / "nope"), "--parent", "demo-sc", "--name", "n",
                 "--work-dir", str(tmp_path / "w")]) == 1
    assert "nope: not an nnU-Net raw dataset (no dataset.json)" in capsys.readouterr().err
    assert main(["round", "train", str(tmp_path), "--parent", "demo-sc", "--name", "demo-sc"]) == 1
    assert "exists already" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_epoch(shared_data, tmp_path):
    tests = _training_tests()
    raw = tests.raw_dataset(shared_data, tmp_path / "Dataset101_R1")
    work = tmp_path / "work"
    command = [sys.executable, "-m", "SpinalCordSegLib.cli", "round", "train", str(raw), "--parent", "demo-sc",
               "--name", "resumed", "--epochs", "3", "--iterations", "1", "--val-iterations", "1", "--device", "cpu",
               "--work-dir", str(work)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "SpinalCordSeg"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    fold = TrainingRequest([raw], "demo-sc", "resumed", work).fold_folder("all")
    deadline = time.time() + 900
    while not (fold / "checkpoint_latest.pth").is_file():
        assert run.poll() is None and time.time() < deadline, "training ended or stalled before its first checkpoint"
        time.sleep(0.5)
    time.sleep(3)  # nnU-Net writes checkpoints in place: let the first one be whole
    os.killpg(run.pid, signal.SIGKILL)  # the CLI and its training process, as a job scheduler kills them
    run.wait()
    assert not (fold / "checkpoint_final.pth").is_file()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    log = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    epochs = re.findall(r": Epoch (\d+)\s*$", log, re.M)  # nnU-Net's log: one line per epoch started
    assert epochs.count("0") == 1, f"epoch 0 was trained again instead of resumed: {epochs}"
    assert "2" in epochs
