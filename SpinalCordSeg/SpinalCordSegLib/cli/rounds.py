"""``spinalcordseg batch`` and ``spinalcordseg round merge|rank|mark|next|sync|export``.

Example:
    $ spinalcordseg batch -i /data/bids -m demo-sc-lesion -o /data/bids/derivatives/spinalcordseg --shard 3/10
    $ spinalcordseg round merge -w /data/bids/derivatives/spinalcordseg/worklist.csv worklist-shard*.csv
    $ spinalcordseg round rank -w /data/bids/derivatives/spinalcordseg/worklist.csv --random-fraction 0.2
    $ spinalcordseg round mark -w worklist.csv sub-01_T2w corrected --rater jd
    $ spinalcordseg round sync -w worklist.csv   # cases saved in the Slicer module become corrected
    $ spinalcordseg round export -w worklist.csv -o nnUNet_raw/Dataset102_SCround2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..imaging.binarization import parse_thresholds
from .arguments import number
from .segment import add_inference_arguments, mask_options
from ..rounds.worklist import STATUSES, Worklist

logger = logging.getLogger(__name__)


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
    add_inference_arguments(batch)
    batch.set_defaults(func=run_batch_command)

    rounds = subparsers.add_parser("round", help="active-learning round: merge, rank, mark, next, sync, export")
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
    mark.add_argument("status", choices=STATUSES)
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


def run_batch_command(args: argparse.Namespace) -> int:
    """Check options, scans, model, output folder and worklist; then load the model and predict."""
    from .segment import check_options, load_engines, prepare_output_folder, resolve_models
    from ..rounds.cohort import WORKLIST_FILE, find_scans, in_shard, parse_shard, run_batch
    from ..errors import SpinalCordSegError

    if args.crop_mask:
        raise SpinalCordSegError("--crop-mask gives one mask for every scan; in a batch use --crop-with CORD_MODEL")
    check_options(args)
    k, n = parse_shard(args.shard)
    skipped: dict = {}
    scans = [s for s in find_scans(args.input, args.include, skipped) if in_shard(s.relative, k, n)]
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
    return 1 if report.failed or skipped else 0


def run_rank(args: argparse.Namespace) -> int:
    worklist = Worklist.load(args.worklist)
    worklist.rank(args.random_fraction, args.seed)
    worklist.save()
    print(worklist.table[["rank", "case", "uncertainty", "status"]].to_string(index=False))
    return 0


def run_mark(args: argparse.Namespace) -> int:
    Worklist.load(args.worklist).mark(args.case, args.status, args.rater, args.reason)
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
        print("the worklist is empty")
        return 1
    log = args.log or plan_outputs(worklist.case(worklist.table["case"].iloc[0]).scan).log
    changed = worklist.apply_correction_log(log)
    print(f"{len(changed)} case(s) marked corrected from {log}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..rounds.nnunet_export import export_round

    folder = export_round(Worklist.load(args.worklist), args.output, region_based=not args.cord_only,
                          folds=args.folds, seed=args.seed)
    print(f"nnU-Net raw dataset written to {folder} (checked with nnU-Net's verify_dataset_integrity)")
    return 0
