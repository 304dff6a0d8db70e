"""``spinalcordseg drift``: does a new model change the cord measures? (see :mod:`SpinalCordSegLib.rounds.drift`)

Predicts every matching scan of a frozen BIDS test set with each model
(``spinalcordseg batch`` into ``OUT/predictions/<model>/``: scans already done
are skipped), then measures and compares them and writes ``drift.csv``,
``summary.csv``, ``scaling.csv``, three PNG figures and ``report.md`` into
``OUT``. The exit code is 1 when a model drifts beyond ``--max-std-increase``
or ``--max-scaling-deviation`` (or on an error), so that a CI job can gate a
release on it. With ``--shard K/N`` a job only predicts its share;
``--merge`` then analyses the predictions of every shard.

Example:
    $ spinalcordseg drift -i /data/frozen -m contrast_agnostic ./round3/model.zip -o drift/ \\
        --max-std-increase 0.5 --max-scaling-deviation 0.03
    $ spinalcordseg drift -i /data/frozen -m A B -o drift/ --shard "$SLURM_ARRAY_TASK_ID/8"
    $ spinalcordseg drift -i /data/frozen -m A B -o drift/ --merge
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import List, Tuple

from ..imaging.binarization import parse_thresholds
from .arguments import number
from .segment import add_inference_arguments, mask_options
from ..rounds.cohort import DISCS_SUFFIX, LEVELS_SUFFIX, LEVELS_WITH
from ..rounds.drift import DEFAULT_VERT, TRUTH_SUFFIX
from ..errors import SpinalCordSegError

PREDICTIONS = "predictions"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``drift`` command."""
    from .measure import _parse_range  # FIRST:LAST as 'measure --vert'

    parser = subparsers.add_parser(
        "drift", help="compare model versions' cord CSA on a frozen BIDS test set (CI gate)",
        description="Predict a frozen BIDS test set with each model (the first is the reference), measure the "
                    "cord CSA over C2-C3 (level images) or a slice range, compare the across-contrast SD and "
                    "the scaling of the CSA; exit code 1 when a model drifts beyond the tolerances.",
        conflict_handler="resolve",  # -m takes several models here
    )
    parser.add_argument("-i", "--input", required=True, help="BIDS root folder of the frozen test set")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="folder for the predictions (OUTPUT/predictions/<model>) and the results")
    add_inference_arguments(parser)
    parser.add_argument("-m", "--model", nargs="+", required=True, metavar="MODEL",
                        help="two or more catalogue ids, model folders or zips; the first is the reference")
    parser.add_argument("--names", nargs="+", help="a short name per model for the tables "
                                                   "(default: the catalogue id or the file name)")
    parser.add_argument("--include", default="sub-*.nii.gz", help="scan file pattern (default: sub-*.nii.gz)")
    parser.add_argument("--labels", type=Path, help="manual masks and level images "
                                                    "(default: INPUT/derivatives/labels)")
    parser.add_argument("--truth-suffix", default=TRUTH_SUFFIX,
                        help=f"manual cord mask: <scan><suffix>.nii.gz (default {TRUTH_SUFFIX})")
    parser.add_argument("--levels-suffix", default=LEVELS_SUFFIX,
                        help=f"vertebral level image (as 'measure --levels'): <scan><suffix>.nii.gz "
                             f"(default {LEVELS_SUFFIX})")
    parser.add_argument("--discs-suffix", default=DISCS_SUFFIX,
                        help=f"single-voxel disc labels (SCT's numbering, 3 = C2-C3; as 'measure --discs'): "
                             f"<scan><suffix>.nii.gz, used before the level image (default {DISCS_SUFFIX})")
    parser.add_argument("--levels-with", choices=LEVELS_WITH, default="labels",
                        help="where levels come from: the labels folder only (default), or 'spine': "
                             "TotalSpineSeg's disc labels for scans without any (needs the totalspineseg package)")
    parser.add_argument("--vert", type=_parse_range, default=DEFAULT_VERT, metavar="FIRST:LAST",
                        help="levels to average where the scan has levels (default 2:3, C2-C3)")
    parser.add_argument("--slices", type=_parse_range, metavar="FIRST:LAST",
                        help="axial slices to average (from inferior; default: all with cord)")
    parser.add_argument("--binary", action="store_true", help="measure the binary masks, not the soft maps")
    parser.add_argument("--no-angle-correction", dest="angle_correction", action="store_false",
                        help="take the cord as perpendicular to the slices")
    parser.add_argument("--max-std-increase", type=number(float), metavar="MM2",
                        help="fail when a model's mean across-contrast CSA SD exceeds the reference's by more")
    parser.add_argument("--max-scaling-deviation", type=number(float), metavar="FRACTION",
                        help="fail when a model's mean CSA ratio to the reference is off 1 by more (0.03 = 3%%)")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--shard", help="K/N: only predict shard K of N (a SLURM array task); then run --merge")
    steps.add_argument("--merge", action="store_true",
                       help="predict nothing: analyse the predictions of every shard (each must be done)")
    parser.set_defaults(func=run_drift)


def model_names(specs: List[str], names: List[str], ids: List[str]) -> List[str]:
    """A unique short name per model: ``names``, else the catalogue id, else the file or folder name."""
    from ..imaging.naming import source_name

    if names and len(names) != len(specs):
        raise SpinalCordSegError(f"--names: {len(names)} name(s) for {len(specs)} model(s)")
    chosen = names or [model_id or source_name(Path(spec).resolve()) for spec, model_id in zip(specs, ids)]
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise SpinalCordSegError(f"two models are named {duplicates[0]!r}: give a name to each with --names")
    for name in chosen:
        if not name or "/" in name or name in (".", ".."):
            raise SpinalCordSegError(f"--names: {name!r} cannot name a folder")
    return chosen


def _models(args: argparse.Namespace) -> List[Tuple[str, argparse.Namespace, object]]:
    """(name, one-model arguments, ModelFolder) per model."""
    from .segment import _confirm_on_terminal
    from ..models.model_folder import ModelFolder
    from ..models.model_store import resolve_model

    if len(args.model) < 2:
        raise SpinalCordSegError("drift compares models: give at least two with -m (the first is the reference)")
    confirm = (lambda message: True) if args.yes else _confirm_on_terminal
    resolved = [resolve_model(spec, trust=args.trust, offline=args.offline, confirm=confirm) for spec in args.model]
    names = model_names(args.model, args.names, [r.model_id for r in resolved])
    models = []
    for spec, name, model in zip(args.model, names, resolved):
        single = copy.copy(args)
        single.model = spec
        models.append((name, single, ModelFolder.open(model.folder)))
    return models


def _cord_structure(name: str, folder) -> str:
    from ..imaging.naming import bids_label

    cords = [s for s in folder.structures if bids_label(s) == "SC"]
    if not cords:
        raise SpinalCordSegError(f"model {name} ({folder.path}) has no cord output; its structures are "
                                 f"{folder.structures}")
    return cords[0]


def run_drift(args: argparse.Namespace) -> int:
    """Predict (unless --merge), then (unless --shard) analyse and write; return the exit code."""
    from ..rounds.cohort import find_scans, in_shard, is_done, parse_shard, run_batch
    from .segment import engines_from_arguments
    from ..rounds.drift import DriftSettings, ModelPredictions, analyse_drift, write_drift
    from ..models.model_folder import sha256_of_file

    if args.crop_mask:
        raise SpinalCordSegError("--crop-mask gives one mask for every scan; in drift use --crop-with CORD_MODEL")
    if args.levels_with == "spine" and not args.shard:
        from ..inference.spine import require_spine

        require_spine()  # before hours of predictions, not after
    k, n = parse_shard(args.shard)
    scans = find_scans(args.input, args.include)
    if not scans:
        raise SpinalCordSegError(f"{args.input}: no scan matches {args.include!r}")
    models = _models(args)
    predictions = args.output / PREDICTIONS
    if not args.merge:
        failed = {}
        share = [s for s in scans if in_shard(s.relative, k, n)]
        for name, single, _ in models:
            engine, crop_engine = engines_from_arguments(single)
            # Shards run at the same time: each keeps its own worklist (as 'batch --shard').
            worklist = predictions / name / f"worklist-shard{k}of{n}.csv" if n > 1 else None
            report = run_batch(share, engine, predictions / name, parse_thresholds(args.threshold, engine.structures),
                               worklist, crop_engine=crop_engine, options=mask_options(args))
            engine.close()
            failed.update({f"{name}: {scan}": error for scan, error in report.failed.items()})
            print(f"{name}: {len(share)} scan(s); predicted {len(report.predicted)}, "
                  f"already done {len(report.skipped)}, failed {len(report.failed)}")
        if failed:
            raise SpinalCordSegError("prediction failed, no analysis:\n" + "\n".join(failed.values()))
        if n > 1:
            print(f"shard {k}/{n} done; when every shard is, run the same command with --merge instead of --shard")
            return 0
    missing = []
    checkpoints = {name: folder.checkpoint_sha256(folder.select_folds(args.folds)) for name, _, folder in models}
    for scan in scans:
        input_sha = sha256_of_file(scan.path)
        for name, _, folder in models:
            if not is_done(scan, predictions / name, folder.structures, input_sha, checkpoints[name]):
                missing.append(f"{name}: {scan.relative}")
    if missing:
        shown = "\n".join(missing[:20]) + (f"\n... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise SpinalCordSegError(f"{len(missing)} prediction(s) missing or made from another scan or model "
                                 f"version; run the shards (or drift without --merge) first:\n{shown}")
    thresholds = {name: parse_thresholds(args.threshold, folder.structures) for name, _, folder in models}
    structures = {name: _cord_structure(name, folder) for name, _, folder in models}
    reference = models[0][0]
    settings = DriftSettings(
        labels=args.labels or Path(args.input) / "derivatives" / "labels", vert=tuple(args.vert),
        slices=args.slices, binary=args.binary, angle_correction=args.angle_correction,
        threshold=thresholds[reference][structures[reference]], truth_suffix=args.truth_suffix,
        levels_suffix=args.levels_suffix, discs_suffix=args.discs_suffix, levels_with=args.levels_with,
    )
    result = analyse_drift(scans, [ModelPredictions(name, predictions / name, structures[name])
                                   for name, _, _ in models], settings,
                           args.max_std_increase, args.max_scaling_deviation)
    tolerances = {"max std increase (mm2)": args.max_std_increase,
                  "max scaling deviation": args.max_scaling_deviation}
    written = write_drift(result, args.output, tolerances)
    print(result.summary[["model", "n_measured", "csa_mean_mm2", "contrast_std_mm2", "std_increase_mm2",
                          "wilcoxon_p", "scaling_factor"]].to_string(index=False))
    print("Wrote " + ", ".join(str(path) for path in written))
    for problem in result.violations:
        print(f"DRIFT: {problem}")
    return 1 if result.violations else 0
