"""Rater tables: one append-only CSV per rater that never loses a submitted score.

Long format, one row per scored item and structure::

    session,rater,case,item,structure,score,scale,flags,comment,started,submitted,seconds,revision
    lqc-3f2a...,alice,sub-07,B,overall,4,likert5,image_artefact,"small gap at C3",2025-05-02T10:01:12+02:00,...,1

- Every row is written with a single ``write`` on a file opened in append mode,
  then flushed to disk (``fsync``) before the call returns: a score the panel
  shows as saved survives a crash or a power cut.
- Nothing is ever rewritten: a changed score (or changed flags or comment) is a
  new row with the next ``revision``; the highest revision wins.
- A row is one line (line breaks in comments become spaces), so a crash in the
  middle of a write leaves a last line without its newline: :func:`load_rater_table`
  ignores that torn line and keeps every row before it, and the next writer cuts
  it off before appending.
- ``score`` is empty when a flag that excludes the item (image unusable) stands
  in for it, or when a score was withdrawn.

Example:
    >>> from LesionQCLib.session import SessionView
    >>> from LesionQCLib.rater_table import load_rater_table, rater_table_path, RaterTableWriter
    >>> session = SessionView.load("qc-session")                       # doctest: +SKIP
    >>> table = load_rater_table(rater_table_path(session, "alice"), session)  # doctest: +SKIP
    >>> table.latest()[("sub-07", "B", "overall")].score               # doctest: +SKIP
    4
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


from .errors import RaterTableError, ScoreError
from .session import SessionView, is_portable_name

log = logging.getLogger(__name__)

COLUMNS = (
    "session", "rater", "case", "item", "structure", "score", "scale", "flags", "comment",
    "started", "submitted", "seconds", "revision",
)
FLAG_SEPARATOR = "|"
#: Longest comment: far above any note a rater types, far below the csv module's field limit (131072).
MAX_COMMENT_LENGTH = 10000

RatingKey = Tuple[str, str, str]  # case, item, structure


def validate_rater_id(rater: str) -> str:
    """Return ``rater`` stripped if it can name a table file on every platform (:func:`is_portable_name`)."""
    rater = (rater or "").strip()
    if not is_portable_name(rater):
        raise RaterTableError(
            f"rater id {rater!r} must be 1 to 64 letters, digits, '.', '_' or '-', not end with '.' and not be a"
            " name that Windows reserves (CON, PRN, AUX, NUL, COM1, LPT1...): it names the rater's table file"
        )
    return rater


def rater_table_path(session: SessionView, rater: str) -> Path:
    """``SESSION/ratings/<rater>.csv``."""
    return session.ratings_dir / f"{validate_rater_id(rater)}.csv"


@dataclass(frozen=True)
class Rating:
    """One row of a rater table."""

    session: str
    rater: str
    case: str
    item: str
    structure: str
    score: Optional[int]
    scale: str
    flags: Tuple[str, ...]
    comment: str
    started: str
    submitted: str
    seconds: float
    revision: int

    @property
    def key(self) -> RatingKey:
        return (self.case, self.item, self.structure)

    def to_line(self) -> bytes:
        """The row as one CSV line, newline included; a comment that a spreadsheet would run is quoted."""
        # Imported here: LesionQC.py loads this module before Slicer has loaded SpinalCordSeg's folder.
        from SpinalCordSegLib.imaging.fileutil import csv_text

        return csv_text([[
            self.session, self.rater, self.case, self.item, self.structure,
            "" if self.score is None else str(self.score), self.scale, FLAG_SEPARATOR.join(self.flags),
            " ".join(self.comment.splitlines()), self.started, self.submitted, f"{self.seconds:.1f}",
            str(self.revision),
        ]]).encode("utf-8")

    @classmethod
    def from_cells(cls, cells: Sequence[str], where: str) -> "Rating":
        """Parse a row's cells (types only; :func:`check_rating` checks them against the session)."""
        if len(cells) != len(COLUMNS):
            raise RaterTableError(f"{where}: {len(cells)} cells, expected {len(COLUMNS)}")
        row = dict(zip(COLUMNS, cells))
        try:
            score = int(row["score"]) if row["score"] != "" else None
        except ValueError:
            raise ScoreError(f"{where}: score {row['score']!r} is not an integer") from None
        try:
            seconds, revision = float(row["seconds"]), int(row["revision"])
        except ValueError:
            raise RaterTableError(f"{where}: 'seconds' and 'revision' must be numbers") from None
        flags = tuple(f for f in row["flags"].split(FLAG_SEPARATOR) if f)
        from SpinalCordSegLib.imaging.fileutil import spreadsheet_value  # see to_line

        return cls(row["session"], row["rater"], row["case"], row["item"], row["structure"], score, row["scale"],
                   flags, spreadsheet_value(row["comment"]), row["started"], row["submitted"], seconds, revision)


def check_rating(rating: Rating, session: SessionView, where: str) -> None:
    """Raise RaterTableError / ScoreError unless ``rating`` fits ``session`` and its scale."""
    if not is_portable_name(rating.rater):
        raise RaterTableError(f"{where}: rater id {rating.rater!r} is not a name (letters, digits, '.', '_', '-')")
    if rating.session != session.session_id:
        raise RaterTableError(
            f"{where}: rating of session {rating.session!r}, but the session is {session.session_id!r}"
            " (a rater table from another session?)"
        )
    if rating.scale != session.scale.id:
        raise ScoreError(f"{where}: scale {rating.scale!r}, but the session uses {session.scale.id!r}")
    case_ids = {case.case_id: case for case in session.cases}
    if rating.case not in case_ids or rating.item not in case_ids[rating.case].item_ids:
        raise RaterTableError(f"{where}: case {rating.case!r} item {rating.item!r} is not in the session")
    if rating.revision < 1:
        raise RaterTableError(f"{where}: revision {rating.revision} must be 1 or more")
    if len(rating.comment) > MAX_COMMENT_LENGTH:
        raise RaterTableError(f"{where}: comment of {len(rating.comment)} characters; at most {MAX_COMMENT_LENGTH}")
    try:
        for flag in rating.flags:
            session.scale.flag(flag)
        if rating.score is not None:
            session.scale.validate_score(rating.score, rating.structure)
        elif rating.structure not in session.scale.structure_ids:
            raise ScoreError(f"structure {rating.structure!r} is not rated on scale {session.scale.id!r}")
    except ScoreError as error:
        raise ScoreError(f"{where}: {error}") from None


@dataclass
class RaterTable:
    """A loaded rater table.

    Attributes:
        path: the CSV file.
        session: the session it was checked against.
        ratings: every complete row, in file order.
        torn_tail: bytes after the last complete line (a write cut short by a crash), else b"".
        complete_size: size in bytes of the complete lines (where the next row goes).
        exists: whether the file existed when it was loaded (a writer creates it only if not).
    """

    path: Path
    session: SessionView
    ratings: List[Rating] = field(default_factory=list)
    torn_tail: bytes = b""
    complete_size: int = 0
    exists: bool = True

    @property
    def rater(self) -> Optional[str]:
        return self.ratings[0].rater if self.ratings else None

    def latest(self) -> Dict[RatingKey, Rating]:
        """The current row of every (case, item, structure): highest revision, later row on ties."""
        current: Dict[RatingKey, Rating] = {}
        for rating in self.ratings:
            previous = current.get(rating.key)
            if previous is None or rating.revision >= previous.revision:
                current[rating.key] = rating
        return current


def load_rater_table(path: Path, session: SessionView) -> RaterTable:
    """Read and check a rater table; a missing file is an empty table.

    A torn last line is left out (and logged); a malformed complete line, a row
    of another session or rater, or a score outside the scale is an error
    naming the file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return RaterTable(path, session, exists=False)
    except OSError as error:
        raise RaterTableError(f"{path}: cannot read the rater table ({error})") from None
    complete_size = data.rfind(b"\n") + 1
    table = RaterTable(path, session, torn_tail=data[complete_size:], complete_size=complete_size)
    if table.torn_tail:
        log.warning("%s: ignoring an incomplete last line of %d bytes (a write cut short)", path, len(table.torn_tail))
    lines = data[:complete_size].split(b"\n")[:-1]
    if not lines:
        return table
    if _cells(lines[0], f"{path} line 1") != list(COLUMNS):
        raise RaterTableError(f"{path}: not a LesionQC rater table (expected the header {','.join(COLUMNS)})")
    for number, line in enumerate(lines[1:], start=2):
        where = f"{path} line {number}"
        rating = Rating.from_cells(_cells(line, where), where)
        check_rating(rating, session, where)
        if table.ratings and rating.rater != table.ratings[0].rater:
            raise RaterTableError(f"{where}: rater {rating.rater!r} in the table of {table.ratings[0].rater!r}")
        table.ratings.append(rating)
    return table


def _cells(line: bytes, where: str) -> List[str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RaterTableError(f"{where}: not UTF-8 text") from None
    try:
        return next(csv.reader([text]), [])
    except csv.Error as error:
        raise RaterTableError(f"{where}: malformed CSV ({error})") from None


class RaterTableWriter:
    """Appends rows to a loaded rater table, each flushed to disk before returning.

    The writer cuts off a torn last line first, and refuses to write when the
    file changed since it was loaded or another writer has it open (the same
    rater open twice): it creates a new table with ``O_EXCL`` (two panels must not
    both write a header) and holds an exclusive lock on it (``flock``, where the
    system has it) until it is closed.

    Example:
        >>> with RaterTableWriter(table) as writer:   # doctest: +SKIP
        ...     writer.append(rating)
    """

    def __init__(self, table: RaterTable) -> None:
        self.table = table
        path = table.path
        path.parent.mkdir(parents=True, exist_ok=True)
        twice = (f"{path}: changed since it was loaded, or another program writes it"
                 " (is this rater's session open twice?)")
        # Imported here: LesionQC.py loads this module before Slicer has loaded SpinalCordSeg's folder.
        from SpinalCordSegLib.imaging.fileutil import fsync_folder, open_locked

        try:
            # A new table with O_EXCL (two panels must not both write a header), locked without waiting.
            self._fd, created = open_locked(path, create=not table.exists, wait=False)
        except (FileExistsError, FileNotFoundError, BlockingIOError):
            raise RaterTableError(twice) from None  # created, removed or held by someone else since it was loaded
        except OSError as error:
            raise RaterTableError(f"{path}: cannot open the rater table for writing ({error})") from None
        try:
            size = os.fstat(self._fd).st_size
            if size != table.complete_size + len(table.torn_tail):
                raise RaterTableError(twice)
            table.exists = True
            if table.torn_tail:
                os.ftruncate(self._fd, table.complete_size)
                log.warning("%s: cut off an incomplete last line of %d bytes", path, len(table.torn_tail))
                table.torn_tail = b""
            if table.complete_size == 0:
                self._write((",".join(COLUMNS) + "\n").encode("utf-8"))
            if created:
                fsync_folder(path.parent)  # the new file's entry must survive a power cut too
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, rating: Rating) -> None:
        """Check ``rating`` against the session, then write and fsync it as one line."""
        if self._fd < 0:
            raise RaterTableError(f"{self.table.path}: the writer is closed; load the table again")
        check_rating(rating, self.table.session, str(self.table.path))
        if self.table.rater is not None and rating.rater != self.table.rater:
            raise RaterTableError(f"{self.table.path}: rater {rating.rater!r} in the table of {self.table.rater!r}")
        self._write(rating.to_line())
        self.table.ratings.append(rating)

    def _write(self, data: bytes) -> None:
        # One write call per row: the kernel appends it at the end of the file in one piece
        # unless the process dies during it, which leaves a torn last line.
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # short writes (signals, full disk) go on where they stopped
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as error:
            # The row may be half written: stop here, so that the next writer (after a
            # reload) cuts it off instead of appending behind it.
            self.close()
            raise RaterTableError(f"{self.table.path}: cannot write the rating ({error})") from None
        self.table.complete_size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RaterTableWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
