"""The ``lesionqc`` command line: build blinded review sessions and analyse the ratings.

Sub-commands:

- ``make-session``: manifest (CSV or JSON), or a batch's worklist -> session folder and key.
- ``status``: progress of every rater of a session.
- ``analyze``: rater tables + key -> CSV tables and PNG plots.
- ``to-worklist``: cases whose model item scored <= 2 go first in the round's worklist.
- ``qc-fail``: the same cases as the Spinal Cord Toolbox's ``qc_fail.yml``.
- ``serve``: the rating page in a web browser (127.0.0.1, or a lab server with per-rater tokens).

Example:
    $ lesionqc make-session manifest.csv -o qc-session --seed 2025 --sample 40 --stratify-by contrast
    $ lesionqc make-session --from-worklist derivatives/spinalcordseg/worklist.csv -o qc-round2 --repeat-fraction 0.1
    $ lesionqc status qc-session
    $ lesionqc analyze qc-session -o qc-results --by contrast
    $ lesionqc to-worklist qc-round2 -w derivatives/spinalcordseg/worklist.csv
    $ lesionqc serve qc-session                      # http://127.0.0.1:8765/
    $ lesionqc serve qc-session --host 0.0.0.0 --rater alice --rater bob
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import LesionQCError


def _label(text: str):
    value, separator, name = text.partition("=")
    if not separator or not value.strip().isdigit() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected VALUE=NAME such as 1=cord, got {text!r}")
    return int(value), name.strip()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="lesionqc", description="Blinded Likert review of segmentations.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    make = commands.add_parser("make-session", help="build a blinded session folder from a manifest or a worklist")
    make.add_argument("manifest", type=Path, nargs="?",
                      help="CSV (case_id,image[,image2],seg:<source>...) or JSON manifest")
    make.add_argument("--from-worklist", type=Path, metavar="WORKLIST",
                      help="instead of a manifest: the predictions of 'spinalcordseg batch' (source 'model'), and"
                           " the corrected masks of derivatives/labels (source 'manual') where every case has them")
    make.add_argument("-o", "--output", type=Path, required=True, help="session folder to create (new or empty)")
    make.add_argument("--seed", type=int, help="random seed of sample, case order and item letters"
                                               " (random and recorded in the key if omitted)")
    make.add_argument("--sample", type=int, metavar="N", help="review N randomly chosen cases")
    make.add_argument("--stratify-by", metavar="COLUMN", help="keep the proportions of this manifest column"
                                                              " (for example contrast) in the sample")
    make.add_argument("--scale", type=Path, help="scale JSON (default: 5-point Likert, 1 very poor ... 5 excellent)")
    make.add_argument("--key", type=Path, help="where to write the key (default: SESSION-key.json beside the"
                                               " session folder); keep it away from the raters")
    make.add_argument("--key-inside-session", action="store_true",
                      help="allow the key inside the session folder (then never hand that folder to raters as is)")
    make.add_argument("--repeat-fraction", type=float, default=0.0, metavar="F",
                      help="show this share of the cases a second time, later and blinded like the rest, for"
                           " intra-rater agreement (default 0)")
    make.add_argument("--label", type=_label, action="append", default=[], metavar="VALUE=NAME",
                      help="name of a label value shown in Slicer, e.g. --label 1=cord --label 2=lesion")
    make.set_defaults(func=_make_session)

    status = commands.add_parser("status", help="show the progress of every rater")
    status.add_argument("session", type=Path, help="session folder")
    status.set_defaults(func=_status)

    analyze = commands.add_parser("analyze", help="merge rater tables with the key; statistics and plots")
    analyze.add_argument("session", type=Path, help="session folder")
    analyze.add_argument("-o", "--output", type=Path, required=True, help="folder for the CSV tables and PNG plots")
    analyze.add_argument("--key", type=Path, help="key file (default: SESSION-key.json beside the session)")
    analyze.add_argument("--ratings", type=Path, nargs="+", metavar="CSV",
                         help="rater tables (default: every SESSION/ratings/*.csv)")
    analyze.add_argument("--zero-method", default="wilcox", choices=("wilcox", "pratt", "zsplit"),
                         help="how the Wilcoxon test treats equal pairs (SciPy's zero_method; default wilcox)")
    analyze.add_argument("--by", metavar="COLUMN", help="also tables and plots per value of this manifest column"
                                                        " (contrast, site, level...)")
    analyze.set_defaults(func=_analyze)

    for name, helptext in (("to-worklist", "put the cases whose model item scored low first in a round's worklist"),
                           ("qc-fail", "write the cases whose model item scored low as SCT's qc_fail.yml")):
        failed = commands.add_parser(name, help=helptext)
        failed.add_argument("session", type=Path, help="session folder")
        if name == "to-worklist":
            failed.add_argument("-w", "--worklist", type=Path, required=True, help="the round's worklist.csv")
        else:
            failed.add_argument("-o", "--output", type=Path, required=True, help="YAML file to write (qc_fail.yml)")
        failed.add_argument("--key", type=Path, help="key file (default: SESSION-key.json beside the session)")
        failed.add_argument("--ratings", type=Path, nargs="+", metavar="CSV",
                            help="rater tables (default: every SESSION/ratings/*.csv)")
        failed.add_argument("--threshold", type=int, default=2,
                            help="a case fails when any rater scored its model item at or below this (default 2)")
        failed.add_argument("--source", help="the source that is the model's output (default: the key's, 'model'"
                                             " for sessions made from a worklist)")
        failed.add_argument("--structure", action="append", metavar="ID",
                            help="only these structures' scores (repeatable; default: all of the scale's)")
        failed.set_defaults(func=_failed)

    serve = commands.add_parser("serve", help="serve the blinded rating page to web browsers")
    serve.add_argument("session", type=Path, help="session folder")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free port)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only, raters give their id);"
                            " any other needs a token per rater (--rater)")
    serve.add_argument("--rater", action="append", default=[], metavar="ID",
                       help="with --host: a rater to give a token (printed once); repeatable")
    serve.add_argument("--new-token", action="append", default=[], metavar="ID",
                       help="with --host: replace this rater's token (a lost link); repeatable")
    serve.set_defaults(func=_serve)
    return parser


def _make_session(args: argparse.Namespace) -> int:
    from .scales import load_scale
    from .session import find_key, make_session

    if (args.manifest is None) == (args.from_worklist is None):
        raise LesionQCError("give either a manifest or --from-worklist WORKLIST")
    options = dict(seed=args.seed, sample=args.sample, stratify_by=args.stratify_by,
                   scale=load_scale(args.scale) if args.scale else None, key_path=args.key,
                   repeat_fraction=args.repeat_fraction, key_inside=args.key_inside_session)
    if args.label:
        options["label_names"] = dict(args.label)
    if args.from_worklist is not None:
        from .rounds import session_from_worklist

        view = session_from_worklist(args.from_worklist, args.output, **options)
    else:
        view = make_session(args.manifest, args.output, **options)
    key = args.key.resolve() if args.key else find_key(view)
    items = sum(len(case.items) for case in view.cases)
    print(f"session {view.session_id}: {len(view.cases)} cases, {items} items, scale {view.scale.id}")
    print(f"  rating folder: {view.folder}")
    print(f"  key:           {key}  (do not share it with the raters)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .rater_table import load_rater_table
    from .review_state import ReviewState
    from .session import SessionView

    view = SessionView.load(args.session)
    tables = sorted(view.ratings_dir.glob("*.csv"))
    print(f"session {view.session_id}: {len(view.cases)} cases, {len(tables)} rater table(s)")
    for path in tables:
        table = load_rater_table(path, view)
        if table.rater is None:
            print(f"  {path.stem}: no rating yet")
            continue
        state = ReviewState(view, table.rater)
        note = f"; incomplete last line of {len(table.torn_tail)} bytes ignored" if table.torn_tail else ""
        last = table.ratings[-1].submitted
        print(f"  {table.rater}: {state.done_count} / {state.item_count} items done, last at {last}{note}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import ALL_RATERS, analyze_session

    result = analyze_session(args.session, args.output, key_path=args.key, table_paths=args.ratings,
                             zero_method=args.zero_method, by=args.by)
    overall = result.wilcoxon[result.wilcoxon["rater"] == ALL_RATERS]
    for row in overall.itertuples():
        print(f"{row.structure}: {row.source_a} {row.mean_a:.2f} vs {row.source_b} {row.mean_b:.2f},"
              f" Wilcoxon p = {row.p_value:.4g}, rank-biserial r = {row.rank_biserial:.2f} ({row.n_pairs} pairs)")
    for row in result.agreement.itertuples():
        print(f"{row.structure}: Fleiss' kappa {row.fleiss_kappa:.3f}, ICC(2,1) {row.icc2_1:.3f}"
              f" ({row.n_raters} raters, {row.n_items} items); Krippendorff's alpha (ordinal)"
              f" {row.krippendorff_alpha_ordinal:.3f} ({row.n_items_alpha} items)")
    for row in result.intra_rater.itertuples():
        print(f"{row.structure}: {row.rater} against itself, linear kappa {row.kappa_linear:.3f}"
              f" ({row.n_pairs} repeated items)")
    print(f"results written to {Path(args.output).resolve()}")
    return 0


def _failed(args: argparse.Namespace) -> int:
    from .analysis import load_inputs
    from .rounds import failed_cases, mark_for_correction, write_qc_fail

    session, key, tables = load_inputs(args.session, args.key, args.ratings)
    failures = failed_cases(session, key, tables, args.threshold, args.source, args.structure)
    for failure in failures:
        print(f"{failure.case}: {failure.reason}")
    if args.command == "qc-fail":
        path = write_qc_fail(failures, args.output, session.labels)
        print(f"{len(failures)} failed case(s) written to {path}")
        return 0
    outcome = mark_for_correction(args.worklist, failures)
    print(f"{len(outcome['marked'])} case(s) put first in {args.worklist}")
    for what in ("not waiting", "not in worklist"):
        if outcome[what]:
            print(f"  left as they are ({what}): {', '.join(outcome[what])}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from .web import serve
    except ImportError as error:
        raise LesionQCError(f"lesionqc serve needs Flask and waitress ({error}): pip install flask waitress") from None
    if args.host == "127.0.0.1" and (args.rater or args.new_token):
        raise LesionQCError("--rater and --new-token are for --host: on 127.0.0.1 raters give their id on the page")
    serve(args.session, host=args.host, port=args.port, raters=args.rater, renew=args.new_token)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the process exit code."""
    from SpinalCordSegLib.commandline import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command("lesionqc", build_parser(), argv, (LesionQCError,))


if __name__ == "__main__":
    sys.exit(main())
