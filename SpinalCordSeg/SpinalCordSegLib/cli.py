"""The ``spinalcordseg`` command line.

Each feature keeps its sub-commands in its own ``cli_*.py`` module, which
exposes ``register(subparsers)``; this file only assembles them. Heavy
libraries (PyTorch, nnU-Net) are imported inside the commands, so that
``spinalcordseg --help`` stays fast.

Example:
    $ spinalcordseg segment -i sub-01_T2w.nii.gz -m demo-sc-lesion -o out/
"""

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from . import __version__
from .errors import SpinalCordSegError

# Sub-command modules, in the order they appear in --help.
COMMAND_MODULES = (
    "cli_segment",
    "cli_models",
    "cli_measure",
    "cli_rounds",
    "cli_drift",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="spinalcordseg",
        description="Spinal cord and lesion segmentation with nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__package__}.{name}":
                raise
            continue  # feature not present in this build
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpinalCordSegError as error:
        print(f"spinalcordseg: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spinalcordseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
