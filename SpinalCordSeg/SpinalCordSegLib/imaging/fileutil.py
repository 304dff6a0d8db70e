"""File helpers shared by both Libs: sizes, write errors, atomic writes, clean-up of interrupted writes.

Every file that SpinalCordSeg or LesionQC publishes goes through
:func:`write_atomic` (text and bytes: :func:`write_text_atomic`; images:
``image_io.write_image_atomic``): the content goes to a hidden temporary file
beside the target, is flushed, fsync'd and **verified** (a full disk does not
always raise: SimpleITK's gzip writer ignores ENOSPC), and only then renamed
over the target. On any failure the temporary file is removed and
:class:`~SpinalCordSegLib.errors.FileWriteError` names the file. Published
files get the mode the user's umask gives (not ``mkstemp``'s private 0600),
so that a shared derivatives or models folder stays readable by colleagues.

Temporary names carry this tool's owner tag, a marker and their writer's
process id and host (``.<name>.scs-<pid>@<host>.<8 hex>.part.nii.gz`` or
``.tmp``), so that :func:`remove_stale_temporaries` removes only those left
by a killed process of this tool: never one a live process is still writing,
and never a user's file that merely looks temporary (``.thesis.chapter3.part.docx``).

Example:
    >>> from SpinalCordSegLib.imaging.fileutil import format_size
    >>> format_size(1536)
    '1.5 KiB'
    >>> write_text_atomic("case,status\\n", "derivatives/worklist.csv")  # doctest: +SKIP
    PosixPath('derivatives/worklist.csv')
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..errors import FileWriteError, SpinalCordSegError

logger = logging.getLogger(__name__)

#: What every path argument of the Lib packages accepts.
PathLike = Union[str, Path]
#: A temporary file or staging folder whose writer cannot be checked (another host)
#: is stale once untouched for this long.
STALE_AGE_S = 24 * 3600
#: Marks the owner tag of this tool's temporary files and staging folders (see :func:`owner_tag`).
OWNER_MARKER = "scs"
#: ``<prefix>.scs-<pid>@<host>.<8 hex>[<suffix>]``: a name made by :func:`owner_tag` and a random part.
_OWNED = re.compile(
    rf"(?P<prefix>.+)\.{OWNER_MARKER}-(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[0-9a-f]{{8}}(?P<suffix>.*)")
#: What ends the name of a temporary file of :func:`write_atomic`.
_TEMPORARY_SUFFIX = re.compile(r"\.part(?:\.\w+)+|\.tmp")


def format_size(size: Optional[int]) -> str:
    """Human-readable size (``'12.3 MiB'``), or ``'size unknown'`` for None."""
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def disk_full_hint(error: OSError) -> str:
    """``' (disk full)'`` when ``error`` says so, else ``''``: the words users search for."""
    return " (disk full)" if error.errno == errno.ENOSPC else ""


def owner_tag(pid: Optional[int] = None) -> str:
    """``scs-<pid>@<host>``: this tool and the process (default: this one) that writes a temporary name.

    >>> owner_tag(42).startswith("scs-42@")
    True
    """
    return f"{OWNER_MARKER}-{os.getpid() if pid is None else pid}@{_host()}"


def owned_prefix(name: str, suffix: Optional[re.Pattern] = None) -> Optional[str]:
    """The part before the owner tag when ``name`` is one of this tool's temporary names, else None.

    ``suffix`` must match what follows the random part in full (default: nothing follows, as
    in a staging folder's name).

    >>> owned_prefix(f".install-m.{owner_tag(42)}.0a1b2c3d")
    '.install-m'
    >>> owned_prefix(".thesis.chapter3.part.docx") is None
    True
    """
    match = _OWNED.fullmatch(name)
    if not match or not (suffix.fullmatch(match.group("suffix")) if suffix else not match.group("suffix")):
        return None
    return match.group("prefix")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def _process_running(pid: int) -> Optional[bool]:
    """Whether process ``pid`` of this host runs; None where it cannot be told (Windows)."""
    if sys.platform == "win32":
        return None  # os.kill(pid, 0) would terminate the process there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def is_stale(path: Path, now: Optional[float] = None) -> bool:
    """True when ``path`` (a temporary file or staging folder) is this tool's and nobody can still write it.

    Its name carries :func:`owner_tag`, whose ``<pid>@<host>`` names a process of this
    host that no longer runs; or, when the writer cannot be checked (another host), it
    has not been modified for :data:`STALE_AGE_S`. A name without this tool's owner tag
    is never stale: it may be the user's.
    """
    owner = _OWNED.fullmatch(path.name)
    if owner is None:
        return False
    if owner.group("host") == _host():
        running = _process_running(int(owner.group("pid")))
        if running is not None:
            return not running
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AGE_S


def _create_temporary(path: Path, suffix: str) -> Path:
    """Create an empty hidden file beside ``path``, with the umask's mode (mkstemp's is 0600)."""
    while True:
        temporary = path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
            return temporary
        except FileExistsError:
            continue


def make_staging_folder(parent: PathLike, prefix: str) -> Path:
    """Create a new folder ``<prefix>.<pid>@<host>.<random>`` in ``parent``; return it.

    Like ``tempfile.mkdtemp``, but with the umask's mode (mkdtemp's 0700 would follow the
    folder when it is renamed into place) and an owner that :func:`is_stale` can check.
    """
    while True:
        folder = Path(parent) / f"{prefix}.{owner_tag()}.{secrets.token_hex(4)}"
        try:
            os.mkdir(folder, 0o777)
            return folder
        except FileExistsError:
            continue


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a new or renamed file) to disk, where the system can."""
    if sys.platform == "win32":
        return  # folders cannot be opened there; NTFS journals the entry
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        # Some network and FUSE file systems cannot flush a folder: the file itself is on disk.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES):
            raise


def lock_file(fd: int, wait: bool = True) -> None:
    """Take an exclusive lock on the open file ``fd``; it is released when the file is closed or its process dies.

    ``wait=False`` raises BlockingIOError when another process holds it. Where the system
    has no locks (Windows, some network mounts) this returns without one: the
    ``O_EXCL`` creation of :func:`open_locked` remains.
    """
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        raise
    except OSError as error:
        logger.debug("cannot lock file descriptor %d (%s)", fd, error)


def open_locked(path: PathLike, create: Optional[bool] = None, wait: bool = True) -> Tuple[int, bool]:
    """Open ``path`` to read and append, locked (:func:`lock_file`); return the descriptor and whether it was created.

    ``create=True`` makes a new file only (``O_EXCL``: FileExistsError when it exists),
    ``False`` opens an existing one only (FileNotFoundError), ``None`` either: a missing
    file is created with ``O_EXCL``, so that of the processes that open it at once exactly
    one is told it created it. Whoever gets the lock on an empty file writes its header.

    Example:
        >>> fd, created = open_locked("derivatives/failures.csv")  # doctest: +SKIP
    """
    flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0)
    for attempt in range(3):
        try:
            if create is False:
                fd, created = os.open(path, flags), False
            else:
                try:
                    fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
                except FileExistsError:
                    if create:
                        raise
                    fd, created = os.open(path, flags), False
            break
        except FileNotFoundError:
            if create is not None or attempt == 2:
                if os.path.islink(path):  # O_EXCL never follows a link: a dangling one exists and is missing
                    raise FileNotFoundError(errno.ENOENT, "a link to a missing file", str(path)) from None
                raise
            # removed between the two opens: create it again
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device would block or swallow the rows
        os.close(fd)
        raise OSError(errno.EINVAL, "not a plain file", str(path))
    try:
        lock_file(fd, wait)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def append_csv_rows(path: PathLike, rows, header: Sequence[str], what: str = "log",
                    error: type = SpinalCordSegError) -> Path:
    """Append ``rows`` to the CSV log ``path`` (created with ``header``), flushed to disk; return ``path``.

    The file is opened with :func:`open_locked`: writers that start at once write one
    header and all their rows, one after the other. A row that a killed writer left
    without its line end is ended first. ``error`` names the file when it cannot be
    written or has another header (the file is then left as it is).

    Example:
        >>> append_csv_rows("derivatives/failures.csv", [["2025-01-01", "sub-01", "bad"]],
        ...                 ["date", "scan", "error"], "failure log")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, created = open_locked(path)
    except OSError as problem:
        raise error(f"{path}: cannot append to the {what}{disk_full_hint(problem)} ({problem})") from problem
    try:
        with open(fd, "r+b", buffering=0) as stream:  # O_APPEND: every write goes to the end
            size = os.fstat(fd).st_size
            prefix = b""
            if size:
                first = stream.readline().decode("utf-8", "replace")
                columns = next(csv.reader([first]), [])
                if columns != list(header):
                    raise error(f"{path}: existing {what} has columns {columns}, expected {list(header)}; "
                                "move it aside or choose another output folder")
                stream.seek(-1, os.SEEK_END)
                if stream.read(1) != b"\n":
                    prefix = b"\n"  # a killed writer left a partial line: start a new one
            data = prefix + csv_text(rows, header=None if size else header).encode("utf-8")
            written = 0
            while written < len(data):  # short writes (signals, full disk) go on where they stopped
                written += stream.write(data[written:])
            os.fsync(fd)
        if created:
            fsync_folder(path.parent)  # the new file's entry must survive a power cut too
    except OSError as problem:
        raise error(f"{path}: cannot append to the {what}{disk_full_hint(problem)} ({problem})") from problem
    return path


def _space_hint(folder: Path) -> str:
    """``' (disk full)'`` when ``folder``'s file system has less than a block free."""
    try:
        return " (disk full)" if shutil.disk_usage(folder).free < 64 * 1024 else ""
    except OSError:
        return ""


def write_atomic(path: PathLike, write: Callable[[Path], None], verify: Callable[[Path], None],
                 suffix: str = ".tmp", replace: bool = True, what: str = "file") -> Path:
    """Publish ``path`` only once complete: ``write(temporary)``, fsync, ``verify(temporary)``, rename.

    ``verify`` raises ``ValueError`` (or OSError) when the temporary file is not
    what was meant (short, truncated gzip...). ``suffix`` ends the temporary
    name (image writers pick their format from it). ``replace=False`` refuses to
    replace an existing file (FileExistsError, even against a concurrent writer).
    Any failure removes the temporary file and raises FileWriteError naming
    ``path`` (with ``(disk full)`` when so); ``what`` names the kind of file in it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _create_temporary(path, suffix)
    except OSError as error:
        raise FileWriteError(f"{path}: cannot write {what}{disk_full_hint(error)} ({error})") from error
    try:
        write(temporary)
        fd = os.open(temporary, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows' fsync needs write access
        try:
            os.fsync(fd)  # also reports delayed write errors (ENOSPC on NFS, quota)
        finally:
            os.close(fd)
        verify(temporary)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the path appeared meanwhile, unlike os.replace
            os.unlink(temporary)
    except FileExistsError:
        temporary.unlink(missing_ok=True)
        raise
    except ValueError as error:
        hint = _space_hint(path.parent)  # before the temporary file frees its space
        temporary.unlink(missing_ok=True)
        raise FileWriteError(
            f"{path}: cannot write {what}{hint}: the written file is incomplete ({error}); "
            "nothing was written under this name"
        ) from error
    except OSError as error:
        temporary.unlink(missing_ok=True)
        failure = FileWriteError(f"{path}: cannot write {what}{disk_full_hint(error)} ({error})")
        failure.errno = error.errno
        raise failure from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    try:
        fsync_folder(path.parent)
    except OSError as error:  # published, but its entry may not survive a power cut
        logger.warning("%s: written, but its folder could not be flushed to disk (%s)", path, error)
    return path


def write_text_atomic(text: Union[str, bytes], path: PathLike, replace: bool = True) -> Path:
    """Write ``text`` (str, as UTF-8; or bytes, e.g. a PNG) to ``path`` atomically; return ``path``.

    The file is read back and compared before it is renamed into place (see
    :func:`write_atomic` for ``replace`` and the errors).

    >>> write_text_atomic(json.dumps({"a": 1}), "out/a.json")  # doctest: +SKIP
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            stream.write(data)

    def verify(temporary: Path) -> None:
        written = temporary.read_bytes()
        if written != data:
            raise ValueError(f"{len(written)} bytes on disk, {len(data)} written")

    return write_atomic(path, write, verify, replace=replace)


def read_json(path: PathLike, what: str = "JSON", error: type = SpinalCordSegError) -> object:
    """The JSON content of ``path``; ``error`` (a SpinalCordSegError class) names the file and the problem.

    Unreadable files, bad UTF-8, bad JSON and JSON nested past Python's recursion limit
    (``[[[[...``, which the json module reports as RecursionError) all end the same way,
    so that a hostile file is one clear error, not a traceback.

    >>> read_json("model/plans.json", "the plans")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise error(f"{path}: cannot read {what} (JSON nested too deeply)") from None
    except (OSError, ValueError) as problem:  # ValueError: bad UTF-8 and bad JSON
        raise error(f"{path}: cannot read {what} ({problem})") from problem


def write_json_atomic(data: object, path: PathLike) -> Path:
    """Write ``data`` as indented JSON with sorted keys (see :func:`write_text_atomic`)."""
    return write_text_atomic(json.dumps(data, indent=2, sort_keys=True), path)


#: A text cell that a spreadsheet runs as a formula: it starts with one of ``= + - @``, a tab
#: or a line break (OWASP's list), after any number of quotes (so that the quoting can be undone).
_FORMULA = re.compile(r"'*[=+\-@\t\r\n]")
#: ... unless it is a plain number ("-1.5" is a number to a spreadsheet too, not a formula).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_safe(value: object) -> object:
    """``value`` as a CSV cell that no spreadsheet runs as a formula: a quote before a text that would be one.

    Comments, metadata, rater ids and reasons reach tables that people open in
    Excel or LibreOffice, where ``=HYPERLINK(...)`` or ``=cmd|...`` would run. Numbers
    and other values are returned as they are; :func:`spreadsheet_value` undoes it.

    Example:
        >>> spreadsheet_safe("=1+1"), spreadsheet_safe("-0.5"), spreadsheet_safe("'=x"), spreadsheet_safe(3)
        ("'=1+1", '-0.5', "''=x", 3)
    """
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def spreadsheet_value(cell: str) -> str:
    """The true value of a cell that :func:`spreadsheet_safe` wrote.

    Example:
        >>> spreadsheet_value("'=1+1"), spreadsheet_value("''=x"), spreadsheet_value("'quoted")
        ('=1+1', "'=x", "'quoted")
    """
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") and _FORMULA.match(cell[1:]) else cell


def _csv_lines(rows) -> str:
    """Rows of text cells as CSV lines ending in ``\\n``; a cell holding a line break or CR is quoted.

    The csv module quotes only the characters of its line terminator: with ``\\n`` alone, a
    bare CR in a cell would end the row for every reader (and start a new one, formula first).
    """
    lines = []
    for row in rows:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerow(row)
        lines.append(buffer.getvalue()[:-2] + "\n")
    return "".join(lines)


def csv_text(rows, header=None) -> str:
    """Rows (sequences of cells) as CSV text with ``\\n`` line ends, every cell :func:`spreadsheet_safe`.

    For the tables that are appended to row by row (rater tables, logs); whole tables
    go through :func:`write_csv_atomic`.

    Example:
        >>> csv_text([["alice", "=1+1", 2]], header=["rater", "comment", "score"])
        "rater,comment,score\\nalice,'=1+1,2\\n"
    """
    return _csv_lines([spreadsheet_safe(cell) for cell in row] for row in ([header] if header is not None else [])
                      + list(rows))


def spreadsheet_safe_table(table):
    """A copy of a pandas ``table`` whose text cells and column names are :func:`spreadsheet_safe`."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    safe = table.rename(columns=spreadsheet_safe)
    for position, dtype in enumerate(safe.dtypes):
        if is_object_dtype(dtype) or is_string_dtype(dtype):  # numbers stay numbers
            safe.isetitem(position, safe.iloc[:, position].map(spreadsheet_safe))
    return safe


def write_csv_atomic(table, path: PathLike) -> Path:
    """Write a pandas ``table`` to ``path`` as CSV without its index (see :func:`write_text_atomic`).

    Every CSV table of both Libs is written here: text cells that a spreadsheet
    would run as formulas are quoted (:func:`spreadsheet_safe`), cells with line
    breaks or CRs are in double quotes; :func:`read_csv_table` reads the true values back.
    """
    # pandas formats the cells (numbers as it always has); the csv module's CRLF terminator makes it
    # quote every CR and line break, and _csv_lines writes the rows back with the usual \n.
    text = spreadsheet_safe_table(table).to_csv(index=False, lineterminator="\r\n")
    return write_text_atomic(_csv_lines(csv.reader(io.StringIO(text, newline=""))), path)


def read_csv_table(path: PathLike):
    """Read a table that :func:`write_csv_atomic` wrote: every cell as text, as written, true values.

    Raises OSError or ValueError (pandas' parser errors) as ``pandas.read_csv`` does.

    Example:
        >>> read_csv_table("derivatives/spinalcordseg/worklist.csv")  # doctest: +SKIP
    """
    import pandas as pd

    # Everything as text, as written: ids like "01" must not become numbers.
    table = pd.read_csv(path, dtype=object, keep_default_na=False)
    table = table.rename(columns=spreadsheet_value)
    for position in range(table.shape[1]):
        table.isetitem(position, table.iloc[:, position].map(spreadsheet_value))
    return table


def stale_owned(folder: PathLike, prefix: Callable[[str], bool] = lambda name: True,
                suffix: Optional[re.Pattern] = None, folders: bool = False, recursive: bool = False) -> List[Path]:
    """This tool's temporary files (with ``folders``: staging folders) in ``folder`` that nobody can still write.

    The one walker of every clean-up: an entry counts when its name carries the owner tag
    (:func:`owned_prefix`, with ``suffix``), ``prefix`` accepts the part before the tag, it
    is a plain file (a folder), not a link, and :func:`is_stale` calls it stale. A user's
    look-alike name never counts. ``recursive`` looks in sub-folders too, without following
    links to folders.

    Example:
        >>> stale_owned("nnUNet_raw", lambda name: name.startswith(".Dataset"), folders=True)  # doctest: +SKIP
        [PosixPath('nnUNet_raw/.Dataset123_R2.scs-4242@node1.0a1b2c3d')]
    """
    found: List[Path] = []
    now = time.time()
    for root, dirs, files in os.walk(folder):  # nothing when folder is not a readable folder
        for name in dirs if folders else files:
            path = Path(root) / name
            owned = owned_prefix(name, suffix)
            if (owned is None or not prefix(owned) or path.is_symlink()
                    or not (path.is_dir() if folders else path.is_file()) or not is_stale(path, now)):
                continue
            found.append(path)
        if not recursive:
            break
        dirs[:] = [name for name in dirs if Path(root) / name not in found]  # a stale folder goes whole
    return sorted(found)


def _size(path: Path) -> int:
    """Bytes in a file, or in the plain files under a folder (links not followed)."""
    if not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def remove_stale(folder: PathLike, left_by: str, before: Optional[Callable[[Path], None]] = None,
                 **which) -> List[Path]:
    """Remove what :func:`stale_owned` (given ``which``) finds in ``folder``; return (and log) it.

    ``left_by`` ends the log line (``removed X (1.2 MiB), left by an interrupted install``);
    ``before(path)`` runs first on each (e.g. to move back what it holds of the user's).

    Example:
        >>> remove_stale("nnUNet_raw", "an interrupted 'round export'", folders=True)  # doctest: +SKIP
    """
    removed = []
    for path in stale_owned(folder, **which):
        try:
            if before is not None:
                before(path)
            size = _size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another clean-up got it first
        logger.warning("removed %s (%s), left by %s", path, format_size(size), left_by)
        removed.append(path)
    return removed


def remove_stale_temporaries(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Remove the temporary files that killed writers left in ``folder``; return (and log) them.

    Only names that :func:`write_atomic` makes (``.<name>.scs-<pid>@<host>.<8 hex>.part.nii.gz``
    or ``....tmp``) and that :func:`is_stale` calls stale are removed: never a file a live
    process is still writing, never a name without this tool's owner tag.
    """
    return remove_stale(folder, "an interrupted write", suffix=_TEMPORARY_SUFFIX, recursive=recursive)
