"""``spinalcordseg batch`` and ``spinalcordseg round merge|rank|mark|next|sync|export``.

Example:
    $ spinalcordseg batch -i /data/bids -m demo-sc-lesion -o /data/bids/derivatives/spinalcordseg --shard 3/10
    $ spinalcordseg batch -i /data/bids -m demo-sc-lesion -o /data/bids/derivatives/spinalcordseg --levels-with labels
    $ spinalcordseg round merge -w /data/bids/derivatives/spinalcordseg/worklist.csv worklist-shard*.csv
    $ spinalcordseg round rank -w /data/bids/derivatives/spinalcordseg/worklist.csv --random-fraction 0.2
    $ spinalcordseg round mark -w worklist.csv sub-01_T2w in-correction --rater jd
    $ spinalcordseg round sync -w worklist.csv   # cases saved in the Slicer module become corrected
    $ spinalcordseg round export -w worklist.csv -o nnUNet_raw/Dataset102_SCround2
    $ spinalcordseg round train nnUNet_raw/Dataset102_SCround2 --parent demo-sc --name sc-round2 --epochs 50
    $ spinalcordseg round promote sc-round2 --against demo-sc --frozen /data/frozen
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..imaging.binarization import parse_thresholds
from .arguments import number
from .segment import add_inference_arguments, mask_options
from ..rounds.cohort import LEVELS_WITH
from ..rounds.worklist import STATUSES, Worklist

logger = logging.getLogger(__name__)
#: The statuses as typed on the command line: one word each (``in-correction``); the worklist keeps its own.
CLI_STATUSES = [status.replace(" ", "-") for status in STATUSES]


def _status_word(text: str) -> str:
    """``in-correction`` for ``in-correction`` and the older spelling ``"in correction"``."""
    return "-".join(text.split())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``batch`` and ``round`` commands."""
    batch = subparsers.add_parser("batch", help="predict every scan of a BIDS dataset (resumable, shardable)",
                                  description="Predict every matching scan of a BIDS dataset into a BIDS "
                                              "derivatives folder; skip scans already done; record failures.")
    batch.add_argument("-i", "--input", required=True, help="BIDS root folder")
    batch.add_argument("-o", "--output", required=True, help="derivatives folder (e.g. BIDS/derivatives/spinalcordseg)")
    batch.add_argument("--include", default="sub-*_T2w.nii.gz", help="file name pattern (default: sub-*_T2w.nii.gz)")
    batch.add_argument("--shard", help="K/N: process only shard K of N (e.g. $SLURM_ARRAY_TASK_ID/10)")
    batch.add_argument("--worklist", help="worklist CSV (default: OUTPUT/worklist.csv, or "
                                          "OUTPUT/worklist-shardKofN.csv with --shard, for 'round merge')")
    batch.add_argument("--levels-with", choices=LEVELS_WITH,
                       help="also write <scan>_levels.csv (cord CSA and lesions per vertebral level) beside the "
                            "masks, from the labels folder's disc labels (<scan>_label-discs_dlabel.nii.gz) or "
                            "labelled cords; 'spine': TotalSpineSeg's discs where there are none")
    batch.add_argument("--labels", type=Path,
                       help="disc labels and labelled cords for --levels-with (default: INPUT/derivatives/labels)")
    add_inference_arguments(batch)
    batch.set_defaults(func=run_batch_command)

    rounds = subparsers.add_parser(
        "round", help="active-learning round: merge, rank, mark, next, sync, export, train, promote",
        description="Work through an active-learning round's worklist (the worklist.csv that 'batch' writes): "
                    "merge the worklists of a sharded batch, rank the cases by uncertainty, mark a case's "
                    "status, print the next case to correct, bring in corrections saved in Slicer (sync), and "
                    "export the corrected cases as an nnU-Net v2 raw dataset, fine-tune the next model version "
                    "on it (train) and gate it on the drift of cord measures before it becomes the round's "
                    "model (promote).")
    actions = rounds.add_subparsers(dest="action", metavar="ACTION", required=True)
    rank = actions.add_parser("rank", help="order cases by uncertainty, with a random share")
    rank.add_argument("-w", "--worklist", required=True)
    rank.add_argument("--random-fraction", type=number(float, minimum=0, maximum=1), default=0.2,
                      help="share of random picks (default 0.2)")
    rank.add_argument("--seed", type=number(int, minimum=0), default=0)
    rank.set_defaults(func=run_rank)
    mark = actions.add_parser("mark", help="set a case's status")
    mark.add_argument("-w", "--worklist", required=True)
    mark.add_argument("case")
    mark.add_argument("status", type=_status_word, choices=CLI_STATUSES,
                      help=f"one of {', '.join(CLI_STATUSES)} ('in correction', quoted, is accepted too)")
    mark.add_argument("--rater", default="")
    mark.add_argument("--reason", default="", help="why a case is excluded")
    mark.set_defaults(func=run_mark)
    following = actions.add_parser("next", help="print the next case to correct")
    following.add_argument("-w", "--worklist", required=True)
    following.set_defaults(func=run_next)
    merge = actions.add_parser("merge", help="gather the worklists of a sharded batch into one")
    merge.add_argument("-w", "--worklist", required=True, help="the round's worklist (created if absent)")
    merge.add_argument("inputs", nargs="+", help="worklists to add (e.g. worklist-shard*.csv)")
    merge.set_defaults(func=run_merge)
    sync = actions.add_parser("sync", help="mark the cases of a correction log corrected")
    sync.add_argument("-w", "--worklist", required=True)
    sync.add_argument("--log", help="correction log CSV (default: derivatives/labels/correction_log.csv "
                                    "of the cohort's BIDS dataset, where the Slicer module writes it)")
    sync.set_defaults(func=run_sync)
    export = actions.add_parser("export", help="corrected cases as an nnU-Net v2 raw dataset")
    export.add_argument("-w", "--worklist", required=True)
    export.add_argument("-o", "--output", required=True, help="nnUNet_raw/DatasetNNN_Name")
    export.add_argument("--cord-only", action="store_true", help="label scheme of a cord model (sc = 1)")
    export.add_argument("--folds", type=number(int, minimum=1), default=5)
    export.add_argument("--seed", type=number(int, minimum=0), default=0)
    export.set_defaults(func=run_export)
    _register_train(actions)
    _register_promote(actions)


def _register_train(actions: argparse._SubParsersAction) -> None:
    from ..rounds.training import DEFAULT_ITERATIONS

    train = actions.add_parser(
        "train", help="fine-tune a model on exported rounds with nnU-Net; install it with its lineage",
        description="Fine-tune PARENT on one or more nnU-Net raw datasets ('round export'), with nnU-Net's "
                    "preprocessing and trainer and the parent's plans, in a separate process (resumable: run the "
                    "same command again), and install the result as model NAME with its lineage.")
    train.add_argument("datasets", nargs="+", metavar="DATASET", type=Path,
                       help="nnU-Net raw dataset folders (dataset.json, imagesTr, labelsTr), earliest round first")
    train.add_argument("--parent", required=True, help="model to start from (catalogue id, installed id, folder)")
    train.add_argument("--name", required=True, help="id of the new model")
    train.add_argument("--epochs", type=int, default=50, help="nnU-Net epochs (default 50)")
    train.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                       help=f"training iterations per epoch (default {DEFAULT_ITERATIONS}, nnU-Net's)")
    train.add_argument("--val-iterations", type=int, default=50, help="validation iterations per epoch (default 50)")
    train.add_argument("--learning-rate", type=float, default=1e-2,
                       help="nnU-Net's initial learning rate (default 0.01, nnU-Net's; lower stays closer to "
                            "the parent)")
    train.add_argument("--reset-heads", action="store_true",
                       help="start the output heads at random (nnU-Net's -pretrained_weights); default: the parent's")
    train.add_argument("--folds", nargs="+", default=["all"],
                       help="'all' (every case, the default) or fold numbers of the subject splits")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    train.add_argument("--work-dir", type=Path, help="work folder (default: the cache folder's training/NAME)")
    train.add_argument("--round", help="round label for the lineage (default: the last dataset's folder name)")
    train.add_argument("--no-install", action="store_true", help="train only (a SLURM array task)")
    slurm = train.add_argument_group("SLURM")
    slurm.add_argument("--slurm", action="store_true",
                       help="write WORK/train.sbatch (one fold per array task) and WORK/install.sbatch; train nothing")
    slurm.add_argument("--submit", action="store_true", help="with --slurm: submit both (install after the array)")
    slurm.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per task (default 1; 0: no GPU request)")
    slurm.add_argument("--slurm-time", default="24:00:00", help="time limit per task (default 24:00:00)")
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per task (default 8)")
    slurm.add_argument("--slurm-mem", default="32G", help="memory per task (default 32G)")
    slurm.add_argument("--slurm-partition", help="partition (default: the cluster's)")
    train.set_defaults(func=run_train)


def _register_promote(actions: argparse._SubParsersAction) -> None:
    from ..rounds.promotion import GateSettings

    defaults = GateSettings()
    promote = actions.add_parser(
        "promote", help="gate a trained model on a frozen set (drift) and make it the round's model",
        description="Run 'drift' with PARENT as reference and CANDIDATE on a frozen BIDS set, write the report into "
                    "the candidate's folder, and make CANDIDATE the round's model ('-m current') only if it passes; "
                    "exit code 1 and the failed measures otherwise.")
    promote.add_argument("candidate", help="installed model to promote (e.g. a 'round train' NAME)")
    promote.add_argument("--against", required=True, help="the parent (reference) model")
    promote.add_argument("--frozen", required=True, type=Path, help="BIDS root of the frozen test set")
    promote.add_argument("--force", action="store_true", help="promote even if the gate fails (recorded)")
    promote.add_argument("--include", default="sub-*.nii.gz", help="scan file pattern (default: sub-*.nii.gz)")
    promote.add_argument("--max-std-increase", type=float, default=defaults.max_std_increase, metavar="MM2",
                         help=f"across-contrast CSA SD above the parent's (default {defaults.max_std_increase})")
    promote.add_argument("--max-scaling-deviation", type=float, default=defaults.max_scaling_deviation,
                         metavar="FRACTION", help=f"CSA scaling off 1 (default {defaults.max_scaling_deviation})")
    promote.add_argument("--max-dice-drop", type=float, default=defaults.max_dice_drop,
                         help=f"mean Dice on manual masks below the parent's (default {defaults.max_dice_drop})")
    promote.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    promote.add_argument("--drift-option", action="append", default=[], metavar="OPTION",
                         help="more 'drift' options, e.g. --drift-option=--no-tta (repeatable)")
    promote.set_defaults(func=run_promote)


def run_batch_command(args: argparse.Namespace) -> int:
    """Check options, scans, model, output folder and worklist; then load the model and predict."""
    from .segment import check_options, load_engines, prepare_output_folder, resolve_models
    from ..rounds.cohort import WORKLIST_FILE, find_scans, in_shard, parse_shard, run_batch, write_level_tables
    from ..errors import SpinalCordSegError

    if args.crop_mask:
        raise SpinalCordSegError("--crop-mask gives one mask for every scan; in a batch use --crop-with CORD_MODEL")
    check_options(args)
    if args.levels_with == "spine":
        from ..inference.spine import require_spine

        require_spine()  # before the predictions, not after
    k, n = parse_shard(args.shard)
    skipped: dict = {}
    found = find_scans(args.input, args.include, skipped)
    if not found and not skipped:
        raise SpinalCordSegError(f"{args.input}: no scan matches --include {args.include!r} (derivatives/, "
                                 "sourcedata/ and code/ are not searched); nothing was run")
    scans = [s for s in found if in_shard(s.relative, k, n)]
    if not scans:  # a small cohort leaves some shards of an array empty: not a failure of this job
        print(f"shard {k}/{n}: none of the {len(found)} usable scan(s) falls in this shard; nothing to do")
        return 1 if skipped else 0
    resolved, cord = resolve_models(args)
    output = Path(args.output)
    prepare_output_folder(output)
    # Shards run at the same time: each keeps its own worklist, merged afterwards.
    worklist = Path(args.worklist or (output / (f"worklist-shard{k}of{n}.csv" if n > 1 else WORKLIST_FILE)))
    if worklist.is_dir():
        raise SpinalCordSegError(f"--worklist {worklist}: is a folder; give a CSV file")
    prepare_output_folder(worklist.parent, "the worklist's folder")
    Worklist.load(worklist, create=True)  # a damaged worklist is refused now, not after the model loaded
    engine, crop_engine = load_engines(args, resolved, cord)
    report = run_batch(scans, engine, output, parse_thresholds(args.threshold, engine.structures),
                       worklist, crop_engine=crop_engine, options=mask_options(args))
    rebinarized = f", masks remade with this run's thresholds {len(report.rebinarized)}" if report.rebinarized else ""
    unusable = f", file names skipped {len(skipped)}" if skipped else ""
    print(f"shard {k}/{n}: {len(scans)} scan(s); predicted {len(report.predicted)}, "
          f"already done {len(report.skipped)}{rebinarized}, failed {len(report.failed)}{unusable}")
    if args.levels_with:
        done = [s for s in scans if s.relative not in report.failed]
        thresholds = parse_thresholds(args.threshold, engine.structures)
        outcome = write_level_tables(done, output, engine.structures, thresholds,
                                     args.labels or Path(args.input) / "derivatives" / "labels", args.levels_with)
        for scan, what in outcome.items():
            print(f"{scan}: {what}")
    return 1 if report.failed or skipped else 0


def run_rank(args: argparse.Namespace) -> int:
    worklist = Worklist.load(args.worklist)
    worklist.rank(args.random_fraction, args.seed)
    worklist.save()
    print(worklist.table[["rank", "case", "uncertainty", "status"]].to_string(index=False))
    return 0


def run_mark(args: argparse.Namespace) -> int:
    Worklist.load(args.worklist).mark(args.case, STATUSES[CLI_STATUSES.index(args.status)], args.rater, args.reason)
    return 0


def run_next(args: argparse.Namespace) -> int:
    case = Worklist.load(args.worklist).next_case()
    if case is None:
        print("no case waiting for correction")
        return 1
    print(case)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    worklist = Worklist.load(args.worklist, create=True)
    added = worklist.merge([Worklist.load(path) for path in args.inputs if Path(path) != Path(args.worklist)])
    worklist.save()
    print(f"{len(added)} case(s) added; {len(worklist.table)} in {args.worklist}")
    return 0


def run_sync(args: argparse.Namespace) -> int:
    from ..rounds.correction import plan_outputs

    worklist = Worklist.load(args.worklist)
    if worklist.table.empty:
        print(f"nothing to sync: {args.worklist} has no case")
        return 0
    log = args.log or plan_outputs(worklist.case(worklist.table["case"].iloc[0]).scan).log
    if not args.log and not Path(log).exists():  # no correction saved in Slicer yet; a --log given must exist
        print(f"nothing to sync: no correction saved yet ({log} does not exist)")
        return 0
    changed = worklist.apply_correction_log(log)
    print(f"{len(changed)} case(s) marked corrected from {log}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..rounds.nnunet_export import export_round

    folder = export_round(Worklist.load(args.worklist), args.output, region_based=not args.cord_only,
                          folds=args.folds, seed=args.seed)
    print(f"nnU-Net raw dataset written to {folder} (checked with nnU-Net's verify_dataset_integrity)")
    return 0


def _training_device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def run_train(args: argparse.Namespace) -> int:
    from ..paths import cache_dir
    from ..rounds import training

    request = training.TrainingRequest(
        datasets=[p.resolve() for p in args.datasets], parent=args.parent, name=args.name,
        work=(args.work_dir or cache_dir() / "training" / args.name).resolve(), epochs=args.epochs,
        iterations=args.iterations, val_iterations=args.val_iterations,
        learning_rate=args.learning_rate, reset_heads=args.reset_heads, folds=training.parse_folds(args.folds),
        device=_training_device(args.device), round=args.round)
    if args.submit and not args.slurm:
        raise training.TrainingError("--submit goes with --slurm")
    if not args.slurm:
        installed = training.train_round(request, install=not args.no_install)
        if installed is not None:
            dice = installed.record["lineage"]["validation_dice"]
            print(f"installed model '{installed.id}' in {installed.path} (trained from "
                  f"{installed.record['lineage']['parent']}; validation Dice {dice})")
        return 0
    from ..models.model_store import ModelStore

    # Merged and planned once, here: the array tasks would race on it.
    training.prepare(request, training.resolve_parent(request, ModelStore()))
    command = [sys.executable, "-m", "SpinalCordSegLib.cli", "round", "train", *map(str, request.datasets),
               "--parent", args.parent, "--name", args.name, "--epochs", str(args.epochs), "--iterations",
               str(args.iterations), "--val-iterations", str(args.val_iterations),
               "--learning-rate", str(args.learning_rate), *(["--reset-heads"] if args.reset_heads else []),
               "--device", request.device,
               "--work-dir", str(request.work), "--round", request.round or request.datasets[-1].name]
    array = request.work / "train.sbatch"
    array.write_text(training.slurm_script(request, command, args.slurm_gpus, args.slurm_time, args.slurm_cpus,
                                           args.slurm_mem, args.slurm_partition))
    install = request.work / "install.sbatch"
    install.write_text(training.install_script(request, command, args.slurm_partition))
    print(f"wrote {array} ({len(request.folds)} array task(s)) and {install}")
    if args.submit:
        job = training.submit(array)
        after = training.submit(install, dependency=job)
        print(f"submitted job {job} (training) and {after} (install, after {job})")
    else:
        print(f"submit with: job=$(sbatch --parsable {array}) && sbatch --dependency=afterok:$job {install}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import build_parser
    from .drift import run_drift
    from ..imaging.fileutil import write_json_atomic
    from ..models.catalogue import is_valid_id
    from ..models.model_store import CURRENT, ModelStore
    from ..rounds.promotion import PROMOTION_FILE, GateSettings, gate_problems
    from ..rounds.training import TrainingError

    store = ModelStore()
    candidate = store.get_installed(args.candidate)
    if candidate is None:
        raise TrainingError(f"no installed model '{args.candidate}' in {store.models_dir} (see 'models list')")
    settings = GateSettings(args.max_std_increase, args.max_scaling_deviation, args.max_dice_drop)
    if args.against == CURRENT:  # the lineage names the model, not the pointer that moves
        args.against = (store.current() or {}).get("model", CURRENT)
    parent_name = args.against if is_valid_id(args.against) and args.against != candidate.id else "parent"
    output = candidate.path / "drift"
    drift_args = build_parser("drift").parse_args(
        ["drift", "-i", str(args.frozen), "-m", args.against, candidate.id, "-o", str(output),
         "--names", parent_name, candidate.id, "--include", args.include, "--device", args.device,
         "--max-std-increase", str(settings.max_std_increase),
         "--max-scaling-deviation", str(settings.max_scaling_deviation), *args.drift_option])
    run_drift(drift_args)  # its exit code is the two CSA tolerances; the gate judges all three below
    problems = gate_problems(pd.read_csv(output / "summary.csv"), settings)
    passed = not problems
    promotion = {"against": args.against, "frozen": str(args.frozen.resolve()), "gate": settings.as_dict(),
                 "passed": passed, "problems": problems, "forced": bool(args.force and not passed),
                 "drift_report": str(output / "report.md")}
    write_json_atomic(promotion, output / PROMOTION_FILE)
    for problem in problems:
        print(f"GATE FAILED: {problem}")
    if candidate.record.get("source") == "trained":
        store.update_lineage(candidate.id, promotion=promotion)
    if problems and not args.force:
        print(f"'{candidate.id}' is not promoted; the round's model stays "
              f"{(store.current() or {}).get('model', 'unset')} (report: {output / 'report.md'})")
        return 1
    store.set_current(candidate.id, against=args.against, forced=promotion["forced"],
                      drift_report=promotion["drift_report"])
    print(f"'{candidate.id}' is the round's model (-m current)" + (" (forced past the gate)" if problems else ""))
    return 0
