"""Small file helpers shared by the model installer: sizes, write errors, atomic JSON.

Example:
    >>> from SpinalCordSegLib.fileutil import format_size
    >>> format_size(1536)
    '1.5 KiB'
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Optional


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


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    An OSError (disk full...) propagates after the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json_atomically(path: Path, data: object) -> None:
    """Write ``data`` as JSON atomically (see :func:`write_text_atomically`)."""
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True))
