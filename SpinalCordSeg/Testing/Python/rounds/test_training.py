"""``round train`` and ``round promote``: the active-learning loop closed, with real nnU-Net training.

The fast tests check the pieces (dataset merge and hash, label checks, SLURM script,
gate, trust of a trained model, the ``current`` pointer); the slow one plays the whole
loop on the shared scans: batch, corrections saved as the Slicer module saves them,
export, train from ``demo-sc`` (1 epoch of 2 iterations on the CPU), the new version
listed with its lineage, promote passing, and a sabotaged candidate refused.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.errors import ModelInstallError, UntrustedModelError
from SpinalCordSegLib.models.catalogue import load_catalogue
from SpinalCordSegLib.models.model_folder import ModelFolder
from SpinalCordSegLib.models.model_store import ModelStore
from SpinalCordSegLib.rounds.promotion import GateSettings, gate_problems
from SpinalCordSegLib.rounds.training import (TrainingError, TrainingRequest, merge_datasets, parse_folds,
                                              slurm_script, subject_of)

#: case -> (shared scan, its cord mask): small scans, so that nnU-Net's validation is quick.
CASES = {
    "sub-01_ses-01_T2w": ("t2s/t2s.nii.gz", "t2s/t2s_seg-deepseg.nii.gz"),
    "sub-02_T2w": ("mt/mt1.nii.gz", "mt/mt1_seg.nii.gz"),
}


def demo_sc() -> ModelFolder:
    return ModelFolder.open(load_catalogue()["demo-sc"].path)


def raw_dataset(shared_data: Path, folder: Path, cases=CASES, labels=None) -> Path:
    """A one-channel nnU-Net raw dataset of shared scans, as 'round export --cord-only' writes it."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case, (scan, mask) in cases.items():
        shutil.copy(shared_data / "sct_testing_data" / scan, folder / "imagesTr" / f"{case}_0000.nii.gz")
        image = sitk.Cast(sitk.ReadImage(str(shared_data / "sct_testing_data" / mask)) > 0, sitk.sitkUInt8)
        sitk.WriteImage(image, str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset = {"channel_names": {"0": "T2w"}, "labels": labels or {"background": 0, "sc": 1},
               "numTraining": len(cases), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


# ------------------------------------------------------------------ pieces

def test_merge_reorients_hashes_and_lets_a_later_round_replace_a_case(shared_data, tmp_path):
    first = raw_dataset(shared_data, tmp_path / "Dataset101_R1")
    second = raw_dataset(shared_data, tmp_path / "Dataset102_R2", {"sub-02_T2w": CASES["sub-02_T2w"]})
    merged = merge_datasets([first], demo_sc(), tmp_path / "a")
    again = merge_datasets([first], demo_sc(), tmp_path / "b")
    assert merged.sha256 == again.sha256 and sorted(merged.cases) == sorted(CASES)
    image = sitk.ReadImage(str(merged.folder / "imagesTr" / "sub-01_ses-01_T2w_0000.nii.gz"))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "LAS"
    label = sitk.ReadImage(str(merged.folder / "labelsTr" / "sub-01_ses-01_T2w.nii.gz"))
    assert label.GetSize() == image.GetSize()
    assert json.loads((merged.folder / "dataset.json").read_text())["image_orientation"] == "LAS"
    both = merge_datasets([first, second], demo_sc(), tmp_path / "c")
    assert both.cases["sub-02_T2w"] == str(second) and both.cases["sub-01_ses-01_T2w"] == str(first)
    # The replacing case is a different file: the hash says the training data changed.
    mask = sitk.ReadImage(str(second / "labelsTr" / "sub-02_T2w.nii.gz"))
    sitk.WriteImage(sitk.BinaryDilate(mask, [1, 1, 0]), str(second / "labelsTr" / "sub-02_T2w.nii.gz"))
    assert merge_datasets([first, second], demo_sc(), tmp_path / "d").sha256 != merged.sha256


def test_labels_of_another_scheme_are_refused_by_name(shared_data, tmp_path):
    region = raw_dataset(shared_data, tmp_path / "Dataset101_R1", labels={"background": 0, "sc": [1, 2], "lesion": 2})
    with pytest.raises(TrainingError, match=r"Dataset101_R1/dataset.json: labels .* differ .*--cord-only"):
        merge_datasets([region], demo_sc(), tmp_path / "out")
    with pytest.raises(TrainingError, match="no dataset.json"):
        merge_datasets([tmp_path], demo_sc(), tmp_path / "out2")
    (tmp_path / "Dataset101_R1" / "labelsTr" / "sub-02_T2w.nii.gz").unlink()
    (tmp_path / "Dataset101_R1" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T2w"}, "labels": {"background": 0, "sc": 1}, "file_ending": ".nii.gz"}))
    with pytest.raises(TrainingError, match="sub-02_T2w_0000.nii.gz: no label sub-02_T2w.nii.gz"):
        merge_datasets([region], demo_sc(), tmp_path / "out3")


def test_folds_and_subjects():
    assert parse_folds(None) == ["all"] and parse_folds(["0", "2", "0"]) == ["0", "2"]
    for bad in (["x"], ["all", "0"]):
        with pytest.raises(TrainingError):
            parse_folds(bad)
    assert subject_of("sub-01_ses-02_T2w") == "sub-01" and subject_of("case7") == "case7"


def test_slurm_script_has_one_task_per_fold_and_an_optional_gpu(tmp_path):
    request = TrainingRequest([tmp_path], "demo-sc", "sc-r2", tmp_path / "work", folds=["0", "1", "2"])
    script = slurm_script(request, ["python", "-m", "SpinalCordSegLib.cli", "round", "train", "a b"])
    assert "#SBATCH --array=0-2" in script and "#SBATCH --gres=gpu:1" in script
    assert "FOLDS=(0 1 2)" in script and "round train 'a b' --folds \"$FOLD\" --no-install" in script
    assert "--gres" not in slurm_script(request, ["x"], gpus=0)


def summary(dice_candidate=0.90, scaling=1.0, std_increase=0.1, measured=4):
    return pd.DataFrame([
        {"model": "parent", "reference": True, "n_measured": 4, "std_increase_mm2": np.nan,
         "scaling_factor": np.nan, "scaling_deviation": np.nan, "dice_mean": 0.90},
        {"model": "candidate", "reference": False, "n_measured": measured, "std_increase_mm2": std_increase,
         "scaling_factor": scaling, "scaling_deviation": abs(scaling - 1), "dice_mean": dice_candidate}])


def test_gate_names_each_failed_measure():
    assert gate_problems(summary(), GateSettings()) == []
    assert gate_problems(summary(dice_candidate=0.885), GateSettings()) == []  # within the default 0.02
    assert any("mean Dice 0.850" in p for p in gate_problems(summary(dice_candidate=0.85), GateSettings()))
    assert any("scaling factor 1.0500" in p for p in gate_problems(summary(scaling=1.05), GateSettings()))
    assert any("SD up by 0.800" in p for p in gate_problems(summary(std_increase=0.8), GateSettings()))
    assert any("measured 3 scan(s)" in p for p in gate_problems(summary(measured=3), GateSettings()))
    assert any("no Dice" in p for p in gate_problems(summary(dice_candidate=np.nan), GateSettings()))
    assert gate_problems(summary(scaling=1.05), GateSettings(max_scaling_deviation=0.06)) == []


def install_copy_of_demo_sc(store: ModelStore, tmp_path: Path, model_id: str, change=None) -> None:
    """Install demo-sc's files (changed by ``change(checkpoint dict)``) as a model trained by 'round train'."""
    import torch

    folder = Path(shutil.copytree(demo_sc().path, tmp_path / model_id / demo_sc().path.name))
    if change is not None:
        checkpoint_path = folder / "fold_all" / "checkpoint_final.pth"
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        change(checkpoint)
        torch.save(checkpoint, checkpoint_path)
    lineage = {"parent": "demo-sc", "round": "test", "folds": ["all"],
               "files_sha256": ModelFolder.open(folder).file_sha256()}
    store.install_trained(folder, model_id, lineage)


def test_a_trained_model_is_pinned_by_its_recorded_hashes_and_current_only_by_promote(tmp_path):
    store = ModelStore()
    install_copy_of_demo_sc(store, tmp_path, "r2")
    model = store.get_installed("r2")
    assert store.trust_status(model).status == "trained" and store.resolve("r2").trusted_because == "trained"
    assert model.source == "trained from demo-sc on test"
    with pytest.raises(ModelInstallError, match="taken"):
        install_copy_of_demo_sc(store, tmp_path / "again", "r2")
    with pytest.raises(ModelInstallError, match="no current model"):
        store.resolve("current")
    store.set_current("r2", against="demo-sc")
    assert store.resolve("current").model_id == "r2"
    plans = model.results_folder() / "plans.json"
    plans.write_text(plans.read_text() + " ")
    with pytest.raises(UntrustedModelError, match="plans.json changed"):
        store.resolve("r2")


# ------------------------------------------------------------------ the whole loop

FROZEN = ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz", "sub-01/anat/sub-01_T2starw.nii.gz",
          "sub-01/anat/sub-01_acq-MTon_MTS.nii.gz")


def frozen_set(shared_data: Path, root: Path) -> Path:
    """Four contrasts of one participant, cropped around the cord, with manual masks (test_drift's set)."""
    import importlib.util

    # The drift tests' frozen set (tests are imported by path: --import-mode=importlib).
    spec = importlib.util.spec_from_file_location("drift_tests", Path(__file__).with_name("test_drift.py"))
    drift_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift_tests)
    bids = drift_tests.make_dataset(shared_data, root)
    shutil.rmtree(bids / "sub-02")
    return bids


@pytest.mark.slow
def test_the_loop_batch_correct_export_train_promote(shared_data, tmp_path, capsys):
    from SpinalCordSegLib.imaging.naming import source_name
    from SpinalCordSegLib.rounds.correction import plan_outputs, save_correction
    from SpinalCordSegLib.rounds.worklist import Worklist

    bids = tmp_path / "bids"
    for case, (scan, _) in CASES.items():
        folder = bids / "/".join(part for part in case.split("_")[:-1]) / "anat"
        folder.mkdir(parents=True)
        shutil.copy(shared_data / "sct_testing_data" / scan, folder / f"{case}.nii.gz")
    (bids / "dataset_description.json").write_text('{"Name": "round", "BIDSVersion": "1.9.0"}')
    derivatives = bids / "derivatives" / "spinalcordseg"
    assert main(["batch", "-i", str(bids), "-o", str(derivatives), "-m", "demo-sc", "--device", "cpu",
                 "--no-tta"]) == 0
    worklist_path = str(derivatives / "worklist.csv")
    assert main(["round", "rank", "-w", worklist_path, "--random-fraction", "0"]) == 0

    # The rater corrects each case in turn; the save is the Slicer module's (correction.save_correction).
    worklist = Worklist.load(worklist_path)
    while worklist.next_case() is not None:
        opened = worklist.open_next(rater="jd")
        manual = sitk.ReadImage(str(shared_data / "sct_testing_data" / CASES[opened.case][1]))
        automatic = {s: sitk.ReadImage(str(p)) for s, p in opened.masks.items()}
        manual = sitk.Cast(manual > 0, sitk.sitkUInt8)
        manual.CopyInformation(automatic["sc"])
        save_correction({"sc": manual}, automatic, opened.provenance(), opened.thresholds(),
                        source_name(opened.scan), plan_outputs(opened.scan), rater="jd", scan_path=opened.scan)
        worklist = Worklist.load(worklist_path)
        worklist.apply_correction_log(plan_outputs(opened.scan).log)
    raw = tmp_path / "nnUNet_raw" / "Dataset101_Round1"
    assert main(["round", "export", "-w", worklist_path, "-o", str(raw), "--cord-only"]) == 0

    assert main(["round", "train", str(raw), "--parent", "demo-sc", "--name", "sc-round1", "--epochs", "1",
                 "--iterations", "2", "--val-iterations", "1", "--device", "cpu",
                 "--learning-rate", "1e-4", "--work-dir", str(tmp_path / "work")]) == 0
    store = ModelStore()
    lineage = store.get_installed("sc-round1").record["lineage"]
    assert lineage["parent"] == "demo-sc" and sorted(lineage["cases"]) == sorted(CASES)
    assert lineage["parent_files_sha256"] == demo_sc().file_sha256()
    assert lineage["epochs"] == 1 and lineage["device"] == "cpu" and lineage["nnunet_version"]
    assert 0.5 < lineage["validation_dice"]["all"] <= 1.0 and lineage["training_seconds"] > 0
    assert lineage["files_sha256"] == ModelFolder.open(store.get_installed("sc-round1").path).file_sha256()
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("demo-sc ", "sc-round1"))]
    assert len(listed) == 2 and "trained" in listed[1] and "trained from demo-sc on Dataset101_Round1" in listed[1]
    assert main(["models", "info", "sc-round1"]) == 0
    assert "lineage: parent demo-sc, round Dataset101_Round1, 2 case(s)" in capsys.readouterr().out
    # The same command again finds the model installed: nothing is overwritten.
    assert main(["round", "train", str(raw), "--parent", "demo-sc", "--name", "sc-round1",
                 "--work-dir", str(tmp_path / "work")]) == 1

    frozen = frozen_set(shared_data, tmp_path / "frozen")
    promote = ["round", "promote", "--against", "demo-sc", "--frozen", str(frozen), "--device", "cpu",
               "--drift-option=--no-tta"]
    assert main([*promote[:2], "sc-round1", *promote[2:]]) == 0
    assert store.current()["model"] == "sc-round1"
    assert (store.get_installed("sc-round1").path / "drift" / "report.md").is_file()
    assert store.get_installed("sc-round1").record["lineage"]["promotion"]["passed"] is True

    # A sabotaged candidate: the cord logit raised, so the cord grows (CSA scaled): refused, current unchanged.
    def inflate(checkpoint):
        for name, tensor in checkpoint["network_weights"].items():
            if ".seg_layers." in name and name.endswith("bias"):
                tensor[1] += 3.0

    install_copy_of_demo_sc(store, tmp_path, "sabotaged", inflate)
    capsys.readouterr()
    assert main([*promote[:2], "sabotaged", *promote[2:]]) == 1
    out = capsys.readouterr().out
    assert "GATE FAILED: sabotaged: CSA scaling factor" in out
    assert store.current()["model"] == "sc-round1"
    assert store.get_installed("sabotaged").record["lineage"]["promotion"]["passed"] is False
    assert main([*promote[:2], "sabotaged", *promote[2:], "--force"]) == 0
    assert store.current() == {**store.current(), "model": "sabotaged", "forced": True}
    assert store.get_installed("sabotaged").record["lineage"]["promotion"]["forced"] is True


# ------------------------------------------------------------------ SLURM

SLURM_CONF = """ClusterName=scstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def slurm(tmp_path_factory, monkeypatch):
    """A real single-node SLURM (munged, slurmctld, slurmd) with one CPU partition, configured in a tmp folder.

    Skips, saying why, where it cannot start: not root (slurmd runs jobs as their users),
    Debian's ``slurm-wlm`` and ``munge`` not installed (``.ci/run`` installs them), a daemon
    that dies or a node that does not come up in 60 s (its log is in the reason).
    """
    import os
    import socket
    import subprocess
    import time

    if os.geteuid() != 0:
        pytest.skip("a single-node SLURM needs root (slurmd); CI runs as root")
    missing = [tool for tool in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"SLURM or munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    root = Path("/tmp") / f"scs-slurm-{os.getpid()}"  # munge's socket path must be short
    shutil.rmtree(root, ignore_errors=True)
    for name in ("state", "spool"):
        (root / name).mkdir(parents=True)
    root.chmod(0o755)
    host = socket.gethostname().split(".")[0]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 ** 20 // 2
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, ctld_port=_free_port(), d_port=_free_port(),
                                      cpus=os.cpu_count() or 1, memory=memory))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    processes = []

    def start(command):
        log = open(root / f"{Path(command[0]).name}.out", "w")
        processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))

    def logs() -> str:
        return "\n".join(f"{p.name}: {p.read_text()[-600:]}" for p in sorted(root.glob("*.out")) + sorted(
            root.glob("*.log")))

    try:
        subprocess.run(["mungekey", "-c", "-k", str(root / "munge.key")], check=True, capture_output=True)
        start(["munged", "-F", "--force", f"--key-file={root / 'munge.key'}", f"--socket={root / 'munge.sock'}",
               f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munge.seed'}",
               f"--log-file={root / 'munged.log'}"])
        time.sleep(1)
        start(["slurmctld", "-D", "-i", "-f", str(conf)])
        time.sleep(2)
        start(["slurmd", "-D", "-f", str(conf)])
        deadline = time.time() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
            if state.startswith("idle"):
                break
            dead = [p.args[0] for p in processes if p.poll() is not None]
            if dead or time.time() > deadline:
                pytest.skip(f"single-node SLURM did not come up ({', '.join(dead) or 'node ' + repr(state)}):\n"
                            f"{logs()}")
            time.sleep(1)
        yield root
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_generated_sbatch_scripts_train_and_install_through_real_slurm(slurm, shared_data, tmp_path, capsys):
    """``--slurm --submit`` on a CPU partition: the GPU request is left out with ``--slurm-gpus 0``."""
    import subprocess
    import time

    raw = raw_dataset(shared_data, tmp_path / "Dataset101_R1")
    work = tmp_path / "work"
    assert main(["round", "train", str(raw), "--parent", "demo-sc", "--name", "sc-slurm", "--epochs", "1",
                 "--iterations", "1", "--val-iterations", "1", "--device", "cpu", "--work-dir", str(work),
                 "--slurm", "--submit", "--slurm-gpus", "0", "--slurm-cpus", "1", "--slurm-mem", "500M",
                 "--slurm-time", "00:30:00"]) == 0
    out = capsys.readouterr().out
    assert "--gres" not in (work / "train.sbatch").read_text()
    training, install = re.search(r"submitted job (\d+) \(training\) and (\d+) \(install", out).groups()
    deadline = time.time() + 900
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", f"{training},{install}", "-o", "%i %T %r"],
                               capture_output=True, text=True, check=True).stdout.strip()
        if not queue:
            break
        assert time.time() < deadline, f"SLURM jobs still queued or running after 15 min: {queue}"
        time.sleep(3)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(work.glob("slurm-*.out")))
    logs += "\n" + (slurm / "slurmd.log").read_text()[-2000:]
    installed = ModelStore().get_installed("sc-slurm")
    assert installed is not None, logs
    assert installed.record["lineage"]["parent"] == "demo-sc" and "Mean Validation Dice" in logs
