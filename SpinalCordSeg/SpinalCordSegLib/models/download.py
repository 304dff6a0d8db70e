"""Download release files: mirrors in turn, resume, progress, size and sha256 checks.

A download goes to ``cache_dir()/downloads`` under a name derived from its
URL. When the connection drops, the partial file stays there and the next
request asks for the rest (HTTP ``Range``), in the same call (a few attempts)
or in a later one. A file that fails its size or sha256 check is deleted, and
the next mirror is tried.

Example:
    >>> from SpinalCordSegLib.models.download import download
    >>> result = download(["https://example.org/model.zip"], sha256=None)  # doctest: +SKIP
    >>> result.path, result.url, result.sha256  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence
from urllib.parse import unquote, urlparse

import requests
from tqdm import tqdm

from ..errors import ModelInstallError
from ..imaging.fileutil import disk_full_hint
from .model_folder import sha256_of_file
from ..paths import cache_dir

logger = logging.getLogger(__name__)

# Small enough that a dropped connection loses little of what arrived (the last chunk is lost).
CHUNK_SIZE = 64 * 1024
# Seconds to wait for a connection, and then for each chunk of data.
TIMEOUT = (15.0, 60.0)
# Tries per URL when the connection drops part-way; each try resumes.
ATTEMPTS = 3

Progress = Callable[[int, Optional[int]], None]  # (bytes done, total bytes or None)


@dataclass(frozen=True)
class Download:
    """A complete, verified file: where it is, which URL gave it, its sha256."""

    path: Path
    url: str
    sha256: str


class _Dropped(Exception):
    """The connection ended before the end of the file: resume."""


def partial_path(url: str) -> Path:
    """Where the download of ``url`` is kept (partial or complete) in the cache."""
    name = unquote(Path(urlparse(url).path).name) or "download"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "downloads" / f"{key}-{name}"


def _write_error(path: Path, error: OSError) -> ModelInstallError:
    return ModelInstallError(f"cannot write {path}{disk_full_hint(error)}: {error}")


def _content_range_total(response: requests.Response) -> Optional[int]:
    match = re.match(r"bytes (\*|\d+)-?\d*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(2)) if match else None


def _fetch_once(url: str, part: Path, progress: Optional[Progress]) -> None:
    """One request for the rest of ``url`` into ``part``; raise _Dropped when cut short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.RequestException as error:
        raise ModelInstallError(f"{url}: cannot connect ({error})") from error
    with response:
        if response.status_code == 416 and offset:
            # Nothing left after `offset`: complete if that is the file's length.
            if _content_range_total(response) == offset:
                return
            part.unlink(missing_ok=True)
            raise _Dropped(f"{url}: the server has a different file than the partial download")
        if response.status_code >= 400:
            raise ModelInstallError(f"{url}: HTTP error {response.status_code} {response.reason}")
        resumed = response.status_code == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink(missing_ok=True)
            raise _Dropped(f"{url}: the server resumed at the wrong offset")
        start = offset if resumed else 0  # a plain 200 answer sends the whole file again
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        done = start
        try:
            with open(part, "ab" if resumed else "wb") as stream, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.split("-", 1)[-1], leave=False, disable=None,
            ) as bar:
                for chunk in response.iter_content(CHUNK_SIZE):
                    stream.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
                    if progress is not None:
                        progress(done, total)
        except requests.RequestException as error:
            raise _Dropped(f"{url}: connection lost after {done} bytes ({error})") from error
        except OSError as error:
            part.unlink(missing_ok=True)
            raise _write_error(part, error) from error
        if total is not None and done != total:
            raise _Dropped(f"{url}: connection closed after {done} of {total} bytes")


def _fetch(url: str, part: Path, progress: Optional[Progress]) -> None:
    """Fetch ``url`` into ``part``, resuming up to ATTEMPTS times."""
    last: Optional[_Dropped] = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _fetch_once(url, part, progress)
            return
        except _Dropped as error:
            logger.warning("%s (attempt %d of %d)", error, attempt, ATTEMPTS)
            last = error
    size = part.stat().st_size if part.exists() else 0
    kept = f"; {size} bytes kept in {part} to resume next time" if size else ""
    raise ModelInstallError(f"{last}{kept}")


def verify_file(path: Path, *, sha256: Optional[str], size: Optional[int], name: str) -> str:
    """Return the sha256 of ``path``; raise ModelInstallError naming ``name`` when it is not the expected file."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ModelInstallError(f"{name}: size {actual_size} bytes does not match the expected {size}")
    digest = sha256_of_file(path)
    if sha256 is not None and digest != sha256:
        raise ModelInstallError(f"{name}: sha256 {digest} does not match the expected {sha256}")
    return digest


def download(
    urls: Sequence[str],
    *,
    sha256: Optional[str] = None,
    size: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> Download:
    """Download the first mirror in ``urls`` that gives the expected file.

    Args:
        urls: mirror URLs of the same file, tried in order.
        sha256, size: expected hex sha256 and size when known; a mismatch
            deletes the file and moves on to the next mirror.
        progress: called with (bytes done, total or None) as data arrives
            (a progress bar in Slicer); a tqdm bar is shown on terminals.

    Raises ModelInstallError listing each URL and its problem when none works.
    """
    problems: List[str] = []
    for url in urls:
        part = partial_path(url)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _write_error(part.parent, error) from error
        try:
            _fetch(url, part, progress)
            try:
                return Download(part, url, verify_file(part, sha256=sha256, size=size, name=url))
            except ModelInstallError as error:
                part.unlink(missing_ok=True)  # a wrong file: never resume from it
                raise ModelInstallError(f"{error}; downloaded file deleted") from None
        except ModelInstallError as error:
            logger.warning("%s", error)
            problems.append(str(error))
    raise ModelInstallError("download failed: " + "; ".join(problems))
