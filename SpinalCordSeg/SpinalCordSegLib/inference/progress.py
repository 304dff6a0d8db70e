"""Progress of a scan on the command line: a bar of tiles on a terminal, a line per stage otherwise.

The engine reports ``(fraction, message)``; its tile messages read
``predicting tile I/N``. On a terminal they drive a tqdm bar; in a log
(no terminal) each new stage prints one plain line, so a batch log says
where each scan is without a line per tile.

Example:
    >>> import io
    >>> log = io.StringIO()
    >>> with ConsoleProgress("t2", stream=log) as progress:
    ...     for message in ("locating the cord", "predicting tile 1/2", "predicting tile 2/2", "done"):
    ...         progress(0.5, message)
    >>> print(log.getvalue(), end="")
    t2: locating the cord
    t2: predicting (2 tiles)
    t2: done
"""

from __future__ import annotations

import re
import sys
from typing import IO, Optional

_TILE = re.compile(r"predicting tile (\d+)/(\d+)")


class ConsoleProgress:
    """A ``progress(fraction, message)`` callback for one scan.

    Args:
        name: the scan's name, first on each line.
        stream: where to write (default: standard error).
        terminal: draw a bar (default: when ``stream`` is a terminal).
    """

    def __init__(self, name: str, stream: Optional[IO[str]] = None, terminal: Optional[bool] = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)()) if terminal is None else terminal
        self._stage: Optional[str] = None
        self._bar = None

    def __call__(self, fraction: float, message: str) -> None:
        tile = _TILE.match(message)
        if tile and self.terminal:
            self._tile_bar(int(tile.group(1)), int(tile.group(2)))
            return
        stage = f"predicting ({tile.group(2)} tiles)" if tile else message
        if stage != self._stage:
            self._stage = stage
            self._close_bar()
            print(f"{self.name}: {stage}", file=self.stream, flush=True)

    def _tile_bar(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total:
            self._close_bar()
            self._stage = "predicting"
            self._bar = tqdm(total=total, unit="tile", desc=f"{self.name}: predicting", leave=False,
                             file=self.stream, position=1)
        self._bar.update(done - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self._close_bar()
