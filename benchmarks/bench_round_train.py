"""Does ``round train`` train as nnU-Net's own ``nnUNetv2_train`` does? Validation Dice of both, same budget.

Both start from ``demo-sc`` on the same cases (the shared scans with a cord mask), the same
plans (the parent's, carried by ``round train``), the same preprocessed data, fold 0 of the
same subject splits, the same epochs, iterations and learning rate:

- ``round train ... --reset-heads`` (nnU-Net's ``-pretrained_weights`` behaviour, so that the
  start is the same) in its own work folder;
- the body of ``nnUNetv2_train 900 3d_fullres 0 -tr nnUNetTrainer_Bench -pretrained_weights PARENT``
  (nnU-Net's ``run_training``: the trainer, ``maybe_load_checkpoint`` with the pretrained
  weights, ``run_training``, ``perform_actual_validation``), on a copy of that work folder's raw
  and preprocessed data, with a trainer that sets the same epochs, iterations and learning rate.
  (``nnUNetv2_train`` itself finds a custom trainer by importing every trainer module of
  nnU-Net first; in this environment one of them fails on torchvision, so its body is run.)

nnU-Net has no seed: each is run ``--repeats`` times; the difference of the means is
compared with the spread of the repeats (the noise). Prints one JSON line.

Usage:
    .venv/bin/python benchmarks/bench_round_train.py [--epochs 2] [--iterations 10] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpinalCordSeg"))
DATA = Path(os.environ.get("SPINALCORDSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "sct_testing_data"
#: case -> (scan, cord mask): two subjects per split side at least.
CASES = {
    "sub-01_T2w": ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz"),
    "sub-02_T2starw": ("t2s/t2s.nii.gz", "t2s/t2s_seg-deepseg.nii.gz"),
    "sub-03_T1w": ("t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz"),
    "sub-04_MTS": ("mt/mt1.nii.gz", "mt/mt1_seg.nii.gz"),
    "sub-05_T2w": ("t2/t2_fake_lesion.nii.gz", "t2/t2_fake_lesion_sc_seg.nii.gz"),
}
TRAINER = '''import json, os, sys
import torch
from nnunetv2.run.run_training import maybe_load_checkpoint
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Bench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch = {epochs}, {iterations}
        self.num_val_iterations_per_epoch, self.initial_lr = {val_iterations}, {learning_rate}


if __name__ == "__main__":  # nnU-Net's validation spawns processes that import this file again
    folder = os.path.join(os.environ["nnUNet_preprocessed"], "Dataset900_SpinalCordSegRound")
    plans = json.load(open(os.path.join(folder, "nnUNetPlans.json")))
    plans["continue_training"] = False
    trainer = nnUNetTrainer_Bench(plans, "3d_fullres", 0, json.load(open(os.path.join(folder, "dataset.json"))),
                                  device=torch.device(sys.argv[2]))
    maybe_load_checkpoint(trainer, False, False, sys.argv[1])
    trainer.run_training()
    trainer.perform_actual_validation(False)
'''


def raw_dataset(folder: Path) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case, (scan, mask) in CASES.items():
        shutil.copy(DATA / scan, folder / "imagesTr" / f"{case}_0000.nii.gz")
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(DATA / mask)) > 0, sitk.sitkUInt8),
                        str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "sc": 1}, "numTraining": len(CASES),
               "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def dice(fold_folder: Path) -> float:
    return json.loads((fold_folder / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--val-iterations", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-round-train-"))
    env = {**os.environ, "SPINALCORDSEG_HOME": str(root / "home"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "SpinalCordSeg"), os.environ.get("PYTHONPATH", "")])}
    raw = raw_dataset(root / "Dataset101_Bench")
    from SpinalCordSegLib.models.catalogue import load_catalogue
    from SpinalCordSegLib.models.model_folder import ModelFolder
    from SpinalCordSegLib.rounds.training import TrainingRequest, nnunet_environment

    parent = ModelFolder.open(load_catalogue()["demo-sc"].path).checkpoint_path("all")
    budget = ["--epochs", str(args.epochs), "--iterations", str(args.iterations), "--val-iterations",
              str(args.val_iterations), "--learning-rate", str(args.learning_rate), "--device", args.device]
    ours, theirs, seconds = [], [], {"round train": [], "nnUNetv2_train": []}
    for repeat in range(args.repeats):
        work = root / f"ours{repeat}"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "SpinalCordSegLib.cli", "round", "train", str(raw), "--parent",
                        "demo-sc", "--name", f"bench{repeat}", "--folds", "0", "--reset-heads", "--work-dir",
                        str(work), *budget], env=env, check=True, stdout=subprocess.DEVNULL)
        seconds["round train"].append(time.perf_counter() - started)
        ours.append(dice(TrainingRequest([raw], "demo-sc", "x", work).fold_folder("0")))
        # nnU-Net's own run on the same raw, plans and preprocessed data (copied, results folder fresh).
        theirs_work = root / f"theirs{repeat}"
        for name in ("nnUNet_raw", "nnUNet_preprocessed"):
            shutil.copytree(work / name, theirs_work / name)
        runner = root / "nnunet_train.py"
        runner.write_text(TRAINER.format(epochs=args.epochs, iterations=args.iterations,
                                         val_iterations=args.val_iterations, learning_rate=args.learning_rate))
        started = time.perf_counter()
        subprocess.run([sys.executable, str(runner), str(parent), args.device], env=nnunet_environment(theirs_work),
                       check=True, stdout=subprocess.DEVNULL)
        seconds["nnUNetv2_train"].append(time.perf_counter() - started)
        results = theirs_work / "nnUNet_results"
        theirs.append(dice(next(results.glob("*/nnUNetTrainer_Bench__nnUNetPlans__3d_fullres/fold_0"))))
        print(json.dumps({"repeat": repeat, "round_train_dice": ours[-1], "nnunetv2_train_dice": theirs[-1],
                          "seconds": {k: v[-1] for k, v in seconds.items()}}), flush=True)
    spread = [abs(a - b) for a, b in ((ours[0], ours[-1]), (theirs[0], theirs[-1]))] if args.repeats > 1 else []
    print(json.dumps({
        "epochs": args.epochs, "iterations": args.iterations, "learning_rate": args.learning_rate,
        "device": args.device, "round_train_dice": ours, "nnunetv2_train_dice": theirs,
        "mean_difference": statistics.mean(ours) - statistics.mean(theirs),
        "repeat_spread": spread, "seconds": seconds, "cases": len(CASES),
    }))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
