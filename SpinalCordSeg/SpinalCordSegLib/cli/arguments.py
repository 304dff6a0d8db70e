"""Argument types shared by the commands: numbers that are finite and in range.

``float("nan")`` and ``float("inf")`` parse, and every comparison with NaN is
False, so a check such as ``value < 0`` lets NaN through. :func:`number` refuses
them (and values out of range) while the command line is parsed: argparse prints
``argument --crop-margin: ...`` and exits with status 2 before anything loads.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--crop-margin", type=number(float, minimum=0))
    >>> parser.parse_args(["--crop-margin", "12.5"]).crop_margin
    12.5
    >>> number(float, minimum=0)("nan")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 'nan' is not a finite number
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Union

Number = Union[int, float]


def number(kind: type = float, minimum: Optional[Number] = None, maximum: Optional[Number] = None,
           above: Optional[Number] = None) -> Callable[[str], Number]:
    """An argparse ``type``: ``kind`` (int or float) parsed from text, finite, ``minimum <= value <= maximum``.

    ``above`` is an exclusive lower bound (``--step-size`` must be above 0).
    """

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"{text}: must be above {above}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text}: must be at most {maximum}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return parse
