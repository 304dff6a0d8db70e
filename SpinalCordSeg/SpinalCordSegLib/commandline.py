"""What both command lines (``spinalcordseg``, ``lesionqc``) do around a command.

Logging set up once, the help when no command is given, one ``PROG: error: ...``
line for the tools' own errors (exit 1), Ctrl-C (exit 130), and a reader of the
output that went away (``spinalcordseg models list | head -1``): exit 141 quietly,
as ``cat`` does, instead of a BrokenPipeError traceback.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="tool")
    >>> _ = parser.add_argument("-v", "--verbose", action="store_true")
    >>> run_command("tool", parser, [], (ValueError,))  # doctest: +SKIP
    2
"""

import argparse
import logging
import os
import sys
from typing import List, Tuple, Type


def run_command(prog: str, parser: argparse.ArgumentParser, argv: List[str],
                errors: Tuple[Type[BaseException], ...]) -> int:
    """Parse ``argv`` and run the chosen command's ``func(args)``; return the process exit code.

    ``parser`` must define ``--verbose``; ``errors`` are the exceptions reported as one line.
    """
    try:
        try:
            return _run(prog, parser, argv, errors)
        finally:
            sys.stdout.flush()  # here, not at exit, where a closed pipe could not be caught
    except BrokenPipeError:
        return _stdout_closed()


def _run(prog: str, parser: argparse.ArgumentParser, argv: List[str],
         errors: Tuple[Type[BaseException], ...]) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # pandas' thread-count notice is noise here
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except errors as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """Point stdout at the null device (Python flushes it again at exit) and return 141 (128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded Python): nothing is flushed at exit
        pass
    return 141
