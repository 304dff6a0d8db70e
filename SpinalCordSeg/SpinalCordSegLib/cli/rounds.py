"""``spinalcordseg batch`` and ``spinalcordseg round merge|rank|mark|next|sync|export``.

Example:
    $ spinalcordseg batch -i /data/bids -m demo-sc-lesion -o /data/bids/derivatives/spinalcordseg --shard 3/10
    $ spinalcordseg round merge -w /data/bids/derivatives/spinalcordseg/worklist.csv worklist-shard*.csv
    $ spinalcordseg round rank -w /data/bids/derivatives/spinalcordseg/worklist.csv --random-fraction 0.2
    $ spinalcordseg round mark -w worklist.csv sub-01_T2w in-correction --rater jd
    $ spinalcordseg round sync -w worklist.csv   # cases saved in the Slicer module become corrected
    $ spinalcordseg round export -w worklist.csv -o nnUNet_raw/Dataset102_SCround2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..imaging.binarization import parse_thresholds
from .segment import add_inference_arguments, mask_options
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
    add_inference_arguments(batch)
    batch.set_defaults(func=run_batch_command)

    rounds = subparsers.add_parser(
        "round", help="active-learning round: merge, rank, mark, next, sync, export",
        description="Work through an active-learning round's worklist (the worklist.csv that 'batch' writes): "
                    "merge the worklists of a sharded batch, rank the cases by uncertainty, mark a case's "
                    "status, print the next case to correct, bring in corrections saved in Slicer (sync), and "
                    "export the corrected cases as an nnU-Net v2 raw dataset for the next training.")
    actions = rounds.add_subparsers(dest="action", metavar="ACTION", required=True)
    rank = actions.add_parser("rank", help="order cases by uncertainty, with a random share")
    rank.add_argument("-w", "--worklist", required=True)
    rank.add_argument("--random-fraction", type=float, default=0.2, help="share of random picks (default 0.2)")
    rank.add_argument("--seed", type=int, default=0)
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
    export.add_argument("--folds", type=int, default=5)
    export.add_argument("--seed", type=int, default=0)
    export.set_defaults(func=run_export)


def run_batch_command(args: argparse.Namespace) -> int:
    from .segment import engines_from_arguments
    from ..rounds.cohort import find_scans, in_shard, parse_shard, run_batch
    from ..errors import SpinalCordSegError

    if args.crop_mask:
        raise SpinalCordSegError("--crop-mask gives one mask for every scan; in a batch use --crop-with CORD_MODEL")
    k, n = parse_shard(args.shard)
    found = find_scans(args.input, args.include)
    if not found:
        raise SpinalCordSegError(f"{args.input}: no scan matches --include {args.include!r} (derivatives/, "
                                 "sourcedata/ and code/ are not searched); nothing was run")
    scans = [s for s in found if in_shard(s.relative, k, n)]
    if not scans:  # a small cohort leaves some shards of an array empty: not a failure of this job
        print(f"shard {k}/{n}: none of the {len(found)} scan(s) falls in this shard; nothing to do")
        return 0
    engine, crop_engine = engines_from_arguments(args)
    # Shards run at the same time: each keeps its own worklist, merged afterwards.
    worklist = args.worklist or (Path(args.output) / f"worklist-shard{k}of{n}.csv" if n > 1 else None)
    report = run_batch(scans, engine, Path(args.output), parse_thresholds(args.threshold, engine.structures),
                       worklist, crop_engine=crop_engine, options=mask_options(args))
    print(f"shard {k}/{n}: {len(scans)} scan(s); predicted {len(report.predicted)}, "
          f"already done {len(report.skipped)}, failed {len(report.failed)}")
    return 1 if report.failed else 0


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
