"""The ``spinalcordseg`` command line.

Each feature keeps its sub-commands in its own module of this package, which
exposes ``register(subparsers)``; this file only assembles them, and imports
a module only when one of its commands runs: ``spinalcordseg --help`` lists
every command from :data:`COMMANDS` without importing any, and
``spinalcordseg segment ...`` imports ``cli.segment`` alone. The modules import
their heavy libraries (PyTorch, nnU-Net, pandas) inside the commands, so that
help and argument errors come back at once.

Example:
    $ spinalcordseg segment -i sub-01_T2w.nii.gz -m demo-sc-lesion -o out/
"""

import argparse
import importlib
import sys
from typing import List, Optional

from .. import __version__
from ..commandline import run_command
from ..errors import SpinalCordSegError

#: Every command, in the order of ``--help``: name -> (module that registers it, its
#: one-line help). The help is written here so that listing the commands imports
#: nothing; a test checks it against what each module registers.
COMMANDS = {
    "segment": ("segment", "segment one or more scans"),
    "demo": ("segment", "segment the bundled sample scan with the embedded model"),
    "models": ("models", "list, install, inspect and remove models"),
    "measure": ("measure", "cord cross-sectional area and shape per slice; lesion volume, length, damage ratio"),
    "batch": ("rounds", "predict every scan of a BIDS dataset (resumable, shardable)"),
    "round": ("rounds", "active-learning round: merge, rank, mark, next, sync, export, train, promote"),
    "drift": ("drift", "compare model versions' cord CSA on a frozen BIDS test set (CI gate)"),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """Return the argument parser, with the real sub-parsers of ``command``'s module.

    The other commands are listed with their help only; with ``command`` None
    (or unknown) no command module is imported.
    """
    parser = argparse.ArgumentParser(
        prog="spinalcordseg",
        description="Spinal cord and lesion segmentation with nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = COMMANDS[command][0] if command in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        if name in subparsers.choices:
            continue  # registered with the other commands of its module
        if module == wanted:
            importlib.import_module(f"{__package__}.{module}").register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_of(argv: List[str]) -> Optional[str]:
    """The command named in ``argv``: its first word that is not an option (no top-level option takes a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command("spinalcordseg", build_parser(_command_of(argv)), argv, (SpinalCordSegError,))

