"""Fine-tune an installed model on a round's corrected cases with nnU-Net's own pipeline (``round train``).

The steps, in a work folder (``--work-dir``; a rerun with the same arguments resumes):

1. :func:`merge_datasets`: the rounds' nnU-Net raw datasets (``round export``) become one raw
   dataset, reoriented to the parent model's orientation (as the engine predicts), with the
   parent's label scheme (checked); a later round's case replaces an earlier one of the same
   name. Its sha256 (of every case's image and label) and case list go in the lineage.
2. :func:`carry_plans`: the parent's ``plans.json`` becomes the dataset's plans, renamed to it
   (what ``nnUNetv2_move_plans_between_datasets`` does): same patch, spacing, network, and
   normalisation, so the parent's weights fit.
3. In a separate process (``python -m SpinalCordSegLib.rounds.training WORK FOLD``): nnU-Net's
   fingerprint and preprocessing (``extract_fingerprint_dataset``, ``preprocess_dataset``, once, under a
   lock), then nnU-Net's training loop
   (``nnUNetTrainer`` with the epochs and iterations asked, a checkpoint each epoch) from the
   parent's weights, then nnU-Net's validation of the fold (``perform_actual_validation``).
   A killed run continues from ``checkpoint_latest.pth`` (nnU-Net's ``--c``).
4. :func:`export_model`: the final checkpoints, stripped to what inference needs, become a
   results folder that any nnU-Net loads as ``nnUNetTrainer`` (the network is nnU-Net's own);
   ``ModelStore.install_trained`` installs it with its :class:`lineage <Lineage>`.

On a cluster, :func:`slurm_script` writes an sbatch array (one fold per task) running the same
command, and an install job that runs after the array.

Example:
    >>> from SpinalCordSegLib.rounds.training import TrainingRequest, train_round
    >>> request = TrainingRequest(datasets=[Path("nnUNet_raw/Dataset102_SCround2")], parent="demo-sc",
    ...                           name="sc-round2", work=Path("/scratch/sc-round2"), epochs=50)  # doctest: +SKIP
    >>> train_round(request).id  # doctest: +SKIP
    'sc-round2'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import SpinalCordSegError
from ..imaging.fileutil import make_staging_folder, write_json_atomic
from ..imaging.image_io import read_image, reorient
from ..imaging.naming import SUBJECT
from ..models.model_folder import ModelFolder, sha256_of_file
from .nnunet_export import subject_splits, verify_dataset

logger = logging.getLogger(__name__)

#: One dataset per work folder: nnU-Net's id and name for it there.
DATASET_ID = 900
DATASET_NAME = f"Dataset{DATASET_ID}_SpinalCordSegRound"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
#: The trainer class the training process builds (its epochs and iterations from the request).
TRAINER = "nnUNetTrainer_SpinalCordSegRound"
#: The exported model's trainer: the network is nnU-Net's standard one, so any nnU-Net loads it by this name.
EXPORTED_TRAINER = "nnUNetTrainer"
REQUEST_FILE = "request.json"
LINEAGE_FILE = "lineage.json"
DEFAULT_ITERATIONS = 250  # nnU-Net's own per epoch


class TrainingError(SpinalCordSegError):
    """A training input is unusable, or the training process failed."""


@dataclass
class TrainingRequest:
    """What ``round train`` was asked: the datasets, the parent, the budget.

    Attributes:
        datasets: nnU-Net raw dataset folders, earliest round first.
        parent: the parent model as given (catalogue id, installed id, folder).
        name: the new model's id.
        work: the work folder (nnU-Net's raw, preprocessed and results folders; resumable).
        epochs, iterations, val_iterations: nnU-Net's epochs, training and validation
            iterations per epoch.
        learning_rate: nnU-Net's initial learning rate (its default 0.01; its poly schedule follows).
        reset_heads: start the output heads at random, as nnU-Net's ``-pretrained_weights`` does.
        folds: ``"all"`` or fold numbers of the datasets' subject splits.
        device: ``cuda``, ``cpu`` or ``mps``.
        round: a round label for the lineage (default: the last dataset's name).
        parent_folder: the parent's results folder (filled when resolved).
        parent_id: the parent's id (filled when resolved).
        parent_files_sha256: the parent's file hashes when it was resolved (trusted).
    """

    datasets: List[Path]
    parent: str
    name: str
    work: Path
    epochs: int = 50
    iterations: int = DEFAULT_ITERATIONS
    val_iterations: int = 50
    learning_rate: float = 1e-2
    reset_heads: bool = False
    folds: List[str] = field(default_factory=lambda: ["all"])
    device: str = "cuda"
    round: Optional[str] = None
    parent_folder: Optional[Path] = None
    parent_id: Optional[str] = None
    parent_files_sha256: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The request as JSON (paths as text)."""
        data = asdict(self)
        data["datasets"] = [str(p) for p in self.datasets]
        data["work"], data["parent_folder"] = str(self.work), str(self.parent_folder) if self.parent_folder else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainingRequest":
        """The request written by :meth:`to_json`."""
        data = dict(data)
        data["datasets"] = [Path(p) for p in data["datasets"]]
        data["work"] = Path(data["work"])
        data["parent_folder"] = Path(data["parent_folder"]) if data.get("parent_folder") else None
        return cls(**data)

    def fold_folder(self, fold: str) -> Path:
        """nnU-Net's output folder of ``fold`` in the work folder."""
        return self.work / "nnUNet_results" / DATASET_NAME / f"{TRAINER}__{PLANS}__{CONFIGURATION}" / f"fold_{fold}"


def parse_folds(values: Optional[Sequence[str]]) -> List[str]:
    """``["all"]`` or fold numbers as text, from ``--folds`` (default: all)."""
    folds = [str(v) for v in (values or ["all"])]
    for fold in folds:
        if fold != "all" and not fold.isdigit():
            raise TrainingError(f"--folds: {fold!r} is neither a fold number nor 'all'")
    if "all" in folds and len(folds) > 1:
        raise TrainingError("--folds: 'all' trains on every case; give it alone")
    return sorted(set(folds), key=folds.index)


def _sha256_text(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{folder}: not an nnU-Net raw dataset (no dataset.json); give the folder that "
                            "'spinalcordseg round export' wrote") from None
    except (OSError, ValueError) as error:
        raise TrainingError(f"{path}: unreadable ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise TrainingError(f"{path}: no 'labels' object; not an nnU-Net v2 dataset.json")
    return data


def _cases_of(folder: Path, ending: str) -> Dict[str, Tuple[Path, Path]]:
    """case -> (image, label) of a raw dataset with one channel; every image needs its label."""
    cases = {}
    for image in sorted((folder / "imagesTr").glob(f"*_0000{ending}")):
        case = image.name[: -len(f"_0000{ending}")]
        label = folder / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise TrainingError(f"{image}: no label {label.name} in {folder / 'labelsTr'}")
        cases[case] = (image, label)
    if not cases:
        raise TrainingError(f"{folder / 'imagesTr'}: no training image (*_0000{ending})")
    return cases


def subject_of(case: str) -> str:
    """The BIDS subject of a case name (``sub-01_ses-02_T2w`` -> ``sub-01``), else the case itself."""
    first = case.split("_")[0]
    return first if SUBJECT.match(first) else case


@dataclass(frozen=True)
class MergedDataset:
    """The raw dataset made for training: its folder, cases (case -> source dataset), sha256."""

    folder: Path
    cases: Dict[str, str]
    sha256: str


def merge_datasets(datasets: Sequence[Path], parent: ModelFolder, raw_root: Path) -> MergedDataset:
    """Write the rounds' cases as one raw dataset ``raw_root/DATASET_NAME`` for ``parent``'s label scheme.

    Images and labels are reoriented to the parent's orientation (``image_orientation``
    of its dataset.json), as the engine reorients scans before predicting. The sha256 is
    of the cases' names and source files, so the same cases give the same hash.
    """
    chosen: Dict[str, Tuple[Path, Path, Path]] = {}
    for folder in datasets:
        folder = Path(folder)
        data = _read_dataset_json(folder)
        if data["labels"] != parent.labels:
            raise TrainingError(
                f"{folder / 'dataset.json'}: labels {data['labels']} differ from the parent model's "
                f"{parent.labels} ({parent.path}); export the round with the parent's label scheme "
                "('round export --cord-only' for a cord model)")
        if len(data.get("channel_names", {})) != parent.num_channels:
            raise TrainingError(f"{folder / 'dataset.json'}: {len(data.get('channel_names', {}))} channel(s), the "
                                f"parent model takes {parent.num_channels}")
        for case, (image, label) in _cases_of(folder, data.get("file_ending", ".nii.gz")).items():
            if case in chosen:
                logger.info("case %s: the one of %s replaces the one of %s", case, folder, chosen[case][2])
            chosen[case] = (image, label, folder)
    target = raw_root / DATASET_NAME
    shutil.rmtree(target, ignore_errors=True)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    lines = []
    for case, (image, label, _) in sorted(chosen.items()):
        lines.append(f"{case}\t{sha256_of_file(image)}\t{sha256_of_file(label)}")
        for source, destination in ((image, target / "imagesTr" / f"{case}_0000.nii.gz"),
                                    (label, target / "labelsTr" / f"{case}.nii.gz")):
            picture = read_image(source)
            if parent.image_orientation:
                picture = reorient(picture, parent.image_orientation)
            sitk.WriteImage(picture, str(destination), True)
    dataset = {"channel_names": parent.dataset["channel_names"], "labels": parent.labels,
               "numTraining": len(chosen), "file_ending": ".nii.gz", "name": DATASET_NAME}
    for key in ("regions_class_order", "image_orientation"):
        if key in parent.dataset:
            dataset[key] = parent.dataset[key]
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2))
    verify_dataset(target)
    return MergedDataset(target, {case: str(source) for case, (_, _, source) in sorted(chosen.items())},
                         _sha256_text(lines))


def carry_plans(parent: ModelFolder, preprocessed_root: Path, cases: Sequence[str], folds: int, seed: int = 0) -> Path:
    """The parent's plans as the dataset's (renamed to it) and subject splits; return the plans file.

    nnU-Net's fine-tuning recipe: the target dataset gets the pretraining dataset's
    plans (``nnUNetv2_move_plans_between_datasets``), so the network is the same.
    """
    plans = json.loads((parent.path / "plans.json").read_text(encoding="utf-8"))
    if CONFIGURATION not in plans.get("configurations", {}):
        raise TrainingError(f"{parent.path / 'plans.json'}: no {CONFIGURATION} configuration to fine-tune")
    plans["dataset_name"], plans["plans_name"] = DATASET_NAME, PLANS
    folder = preprocessed_root / DATASET_NAME
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plans, folder / f"{PLANS}.json")
    subjects = {case: subject_of(case) for case in cases}
    write_json_atomic(subject_splits(subjects, folds, seed), folder / "splits_final.json")
    return folder / f"{PLANS}.json"


def _fold_count(folds: Sequence[str]) -> int:
    numbered = [int(f) for f in folds if f != "all"]
    return max(numbered) + 1 if numbered else 1


def prepare(request: TrainingRequest, parent: ModelFolder) -> MergedDataset:
    """Steps 1 and 2 in the work folder; a rerun with other cases is refused (it would mix two trainings)."""
    work = request.work
    work.mkdir(parents=True, exist_ok=True)
    staging = make_staging_folder(work, ".raw")
    try:
        merged = merge_datasets(request.datasets, parent, staging)
        previous = _load_json_or_none(work / "dataset.json")
        if previous is not None and previous.get("sha256") != merged.sha256:
            raise TrainingError(
                f"{work}: holds a training on other cases (dataset sha256 {previous.get('sha256')}, these are "
                f"{merged.sha256}); choose another --work-dir")
        numbered = [int(f) for f in request.folds if f != "all"]
        folds = max(5, _fold_count(request.folds)) if numbered else 5
        subjects = {subject_of(c) for c in merged.cases}
        if numbered and max(numbered) >= min(folds, len(subjects)):
            raise TrainingError(f"--folds {max(numbered)}: the cases have {len(subjects)} subject(s), so "
                                f"{min(folds, len(subjects))} fold(s) at most (or 'all')")
        raw = work / "nnUNet_raw" / DATASET_NAME
        if previous is None:
            shutil.rmtree(raw, ignore_errors=True)
            raw.parent.mkdir(parents=True, exist_ok=True)
            os.rename(merged.folder, raw)
        merged = MergedDataset(raw, merged.cases, merged.sha256)
        plans = carry_plans(parent, work / "nnUNet_preprocessed", list(merged.cases), folds)
        shutil.copyfile(raw / "dataset.json", plans.parent / "dataset.json")  # what nnU-Net's fingerprint step copies
        write_json_atomic({"sha256": merged.sha256, "cases": merged.cases}, work / "dataset.json")
        write_json_atomic(request.to_json(), work / REQUEST_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return merged


def _load_json_or_none(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise TrainingError(f"{path}: unreadable ({error}); remove the work folder to start again") from error


def nnunet_environment(work: Path) -> Dict[str, str]:
    """The environment of a training process: nnU-Net's three folders inside ``work``."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    # nnU-Net starts 8 export and 12 augmentation processes whatever the machine; no more than its cores.
    cores = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    for name, default in (("nnUNet_def_n_proc", 8), ("nnUNet_n_proc_DA", 12)):
        env.setdefault(name, str(min(default, int(cores))))
    return env


def fold_command(work: Path, fold: str) -> List[str]:
    """The training process of one fold (what the CLI runs, and what a SLURM task runs through the CLI)."""
    return [sys.executable, "-m", "SpinalCordSegLib.rounds.training", str(work), fold]


def run_fold(request: TrainingRequest, fold: str) -> None:
    """Train ``fold`` in a separate process, its output (nnU-Net's per-epoch log) passed through."""
    if (request.fold_folder(fold) / "validation" / "summary.json").is_file():
        print(f"fold {fold}: already trained and validated in {request.fold_folder(fold)}", flush=True)
        return
    env = nnunet_environment(request.work)
    # The child imports this package: give it the same one, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    result = subprocess.run(fold_command(request.work, fold), env=env)
    if result.returncode != 0:
        raise TrainingError(f"training of fold {fold} failed (exit code {result.returncode}); its log is in "
                            f"{request.fold_folder(fold)}; run the same command again to resume")


# ------------------------------------------------------------------ the training process

def _trainer_class(epochs: int, iterations: int, val_iterations: int, learning_rate: float):
    """nnUNetTrainer with this budget and a checkpoint every epoch (so a killed run loses one epoch at most)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainer_SpinalCordSegRound(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
        """nnU-Net's trainer; only the number of epochs and iterations differ (as its ``_Xepochs`` variants)."""

        # nnUNetTrainer records its own arguments by name: keep its signature.
        def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations
            self.initial_lr = learning_rate
            self.save_every = 1

    return nnUNetTrainer_SpinalCordSegRound


def load_parent_weights(network, checkpoint: Path) -> None:
    """The parent's whole network, output heads included (the label schemes are the same).

    nnU-Net's ``load_pretrained_weights`` (``-pretrained_weights``) leaves the heads at
    their random start because pretraining there is on other labels; a round refines
    the same labels, so dropping the parent's heads would only lose what it learned.
    Shapes are checked as nnU-Net checks them.
    """
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    module = getattr(network, "module", network)
    module = getattr(module, "_orig_mod", module)
    state = module.state_dict()
    for key, tensor in state.items():
        if key not in saved or saved[key].shape != tensor.shape:
            raise TrainingError(f"{checkpoint}: {key} missing or of another shape; the parent's network does not "
                                "fit its own plans")
    module.load_state_dict({key: saved[key] for key in state})


def train_fold_in_process(request: TrainingRequest, fold: str) -> None:
    """The body of the training process (nnU-Net's ``run_training``, single device, with the parent's weights)."""
    import fcntl

    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
    from nnunetv2.run.run_training import maybe_load_checkpoint

    work = request.work
    with open(work / "preprocess.lock", "w") as lock:  # array tasks: one preprocesses, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / "preprocessed.done").is_file():
            # nnU-Net's fine-tuning recipe: the target's fingerprint, the source's plans, then preprocessing.
            extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=False, clean=True,
                                        verbose=False)
            preprocess_dataset(DATASET_ID, PLANS, (CONFIGURATION,), [1], show_progress_bar=False)
            (work / "preprocessed.done").write_text(datetime.now(timezone.utc).isoformat())
    if request.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    folder = request.fold_folder(fold)
    resume = (folder / "checkpoint_latest.pth").is_file() or (folder / "checkpoint_final.pth").is_file()
    plans["continue_training"] = resume
    trainer_class = _trainer_class(request.epochs, request.iterations, request.val_iterations,
                                   request.learning_rate)
    trainer = trainer_class(plans, CONFIGURATION, fold if fold == "all" else int(fold), dataset_json,
                            device=torch.device(request.device))
    maybe_load_checkpoint(trainer, resume, False, None)
    if not resume:
        trainer.initialize()
        parent = ModelFolder.open(request.parent_folder)
        checkpoint = parent.checkpoint_path(fold if fold in parent.folds else parent.folds[0])
        if request.reset_heads:
            from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

            load_pretrained_weights(trainer.network, str(checkpoint))
        else:
            load_parent_weights(trainer.network, checkpoint)
        trainer.print_to_log_file(f"initial weights: the parent {request.parent_id} ({request.parent_folder})")
    started = time.perf_counter()
    if not (folder / "checkpoint_final.pth").is_file():
        trainer.run_training()
    trainer.perform_actual_validation(False)
    timing = _load_json_or_none(folder / "timing.json") or {"seconds": 0.0}
    write_json_atomic({"seconds": timing["seconds"] + time.perf_counter() - started}, folder / "timing.json")


# ------------------------------------------------------------------ the model and its lineage

@dataclass(frozen=True)
class Lineage:
    """Where a trained model comes from (``lineage.json`` beside its install record)."""

    parent: str
    parent_files_sha256: Dict[str, str]
    round: str
    dataset_sha256: str
    cases: Dict[str, str]
    nnunet_version: str
    trainer: str
    epochs: int
    iterations_per_epoch: int
    folds: List[str]
    device: str
    trained_at: str
    training_seconds: float
    validation_dice: Dict[str, Optional[float]]
    files_sha256: Dict[str, str]
    promotion: Optional[dict] = None


def validation_dice(fold_folder: Path) -> Optional[float]:
    """nnU-Net's mean foreground Dice of the fold's validation (``validation/summary.json``)."""
    summary = _load_json_or_none(fold_folder / "validation" / "summary.json")
    if not summary:
        return None
    value = summary.get("foreground_mean", {}).get("Dice")
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def export_model(request: TrainingRequest, target: Path) -> Path:
    """Strip each fold's final checkpoint to what inference needs; write a results folder under ``target``."""
    import torch

    results = target / f"{EXPORTED_TRAINER}__{PLANS}__{CONFIGURATION}"
    for fold in request.folds:
        checkpoint = torch.load(request.fold_folder(fold) / "checkpoint_final.pth", map_location="cpu",
                                weights_only=False)
        init_args = checkpoint["init_args"]
        (results / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        torch.save({
            "network_weights": checkpoint["network_weights"],
            "init_args": {key: init_args[key] for key in ("plans", "configuration", "fold", "dataset_json")},
            "trainer_name": EXPORTED_TRAINER,
            "inference_allowed_mirroring_axes": checkpoint["inference_allowed_mirroring_axes"],
            "current_epoch": checkpoint.get("current_epoch"),
        }, results / f"fold_{fold}" / "checkpoint_final.pth")
        if fold == request.folds[0]:
            (results / "plans.json").write_text(json.dumps(init_args["plans"], indent=2))
            (results / "dataset.json").write_text(json.dumps(init_args["dataset_json"], indent=2))
    return results


def make_lineage(request: TrainingRequest, files_sha256: Dict[str, str]) -> Lineage:
    """The lineage of the model trained by ``request`` (read from the work folder)."""
    from importlib.metadata import version

    merged = json.loads((request.work / "dataset.json").read_text())
    seconds = sum((_load_json_or_none(request.fold_folder(f) / "timing.json") or {"seconds": 0.0})["seconds"]
                  for f in request.folds)
    return Lineage(
        parent=request.parent_id or request.parent, parent_files_sha256=request.parent_files_sha256,
        round=request.round or request.datasets[-1].name, dataset_sha256=merged["sha256"], cases=merged["cases"],
        nnunet_version=version("nnunetv2"),
        trainer=f"nnUNetTrainer ({request.epochs} epochs x {request.iterations} iterations, initial learning rate "
                f"{request.learning_rate:g}, " + ("output heads reset, " if request.reset_heads else "")
                + "from the parent's weights; plans carried from the parent)",
        epochs=request.epochs, iterations_per_epoch=request.iterations, folds=list(request.folds),
        device=request.device, trained_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training_seconds=round(seconds, 1),
        validation_dice={f: validation_dice(request.fold_folder(f)) for f in request.folds},
        files_sha256=files_sha256,
    )


def resolve_parent(request: TrainingRequest, store) -> ModelFolder:
    """The parent model, trusted (``store.resolve``); its folder, id and file hashes go into ``request``."""
    resolved = store.resolve(request.parent)
    parent = ModelFolder.open(resolved.folder)
    request.parent_folder, request.parent_id = parent.path, resolved.model_id or request.parent
    request.parent_files_sha256 = resolved.files_sha256
    return parent


def train_round(request: TrainingRequest, install: bool = True, store=None):
    """Prepare, train every fold (resuming), and install the model with its lineage; return it (or None)."""
    from ..models.model_store import ModelStore

    store = store or ModelStore()
    if store.get_installed(request.name) is not None or store.catalogue.get(request.name) is not None:
        raise TrainingError(f"a model '{request.name}' exists already; choose another --name")
    merged = prepare(request, resolve_parent(request, store))
    print(f"{len(merged.cases)} case(s) from {len(request.datasets)} dataset(s), sha256 {merged.sha256[:12]}; "
          f"plans of {request.parent_id}; work folder {request.work}", flush=True)
    for fold in request.folds:
        run_fold(request, fold)
    if not install:
        return None
    staging = make_staging_folder(request.work, ".export")
    try:
        results = export_model(request, staging)
        lineage = make_lineage(request, ModelFolder.open(results).file_sha256())
        return store.install_trained(results, request.name, asdict(lineage))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------ SLURM

def slurm_script(request: TrainingRequest, command: Sequence[str], gpus: int = 1, time_limit: str = "24:00:00",
                 cpus: int = 8, memory: str = "32G", partition: Optional[str] = None) -> str:
    """An sbatch array script: task i trains fold ``request.folds[i]`` with ``command`` (``round train ...``).

    ``command`` is the ``round train`` command line without ``--folds``/``--slurm``; each
    task adds its fold and ``--no-install``. ``gpus`` 0 leaves out the GPU request
    (a CPU partition).
    """
    folds = " ".join(request.folds)
    lines = ["#!/bin/bash", f"#SBATCH --job-name=scs-train-{request.name}",
             f"#SBATCH --array=0-{len(request.folds) - 1}", f"#SBATCH --time={time_limit}",
             f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --mem={memory}",
             f"#SBATCH --output={request.work}/slurm-%A_%a.out"]
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail", f"FOLDS=({folds})", 'FOLD="${FOLDS[$SLURM_ARRAY_TASK_ID]}"',
              " ".join(shlex.quote(word) for word in command) + ' --folds "$FOLD" --no-install']
    return "\n".join(lines) + "\n"


def install_script(request: TrainingRequest, command: Sequence[str], partition: Optional[str] = None) -> str:
    """The job after the array: the same command with every fold (all trained, so it only installs)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=scs-install-{request.name}", "#SBATCH --time=01:00:00",
             f"#SBATCH --output={request.work}/slurm-install-%j.out"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail", " ".join(shlex.quote(word) for word in command)
              + " --folds " + " ".join(request.folds)]
    return "\n".join(lines) + "\n"


def submit(script: Path, dependency: Optional[str] = None) -> str:
    """``sbatch --parsable`` the script; return the job id."""
    command = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{dependency}"] if dependency else []) + [str(script)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise TrainingError("sbatch not found: run on a SLURM login node, or without --submit") from None
    if result.returncode != 0:
        raise TrainingError(f"sbatch {script} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The training process: ``python -m SpinalCordSegLib.rounds.training WORK FOLD``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or not re.fullmatch(r"all|\d+", argv[1]):
        print("usage: python -m SpinalCordSegLib.rounds.training WORK_FOLDER FOLD", file=sys.stderr)
        return 2
    work = Path(argv[0])
    request = TrainingRequest.from_json(json.loads((work / REQUEST_FILE).read_text()))
    train_fold_in_process(request, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
