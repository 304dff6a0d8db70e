"""Extract model zips safely; check model folders the same way (:func:`check_plain_folder`).

Release zips come from the network: every member is checked before anything
is written. Refused: absolute paths and drive letters, ``..`` components,
symbolic links (named as pointing outside the archive when they do),
duplicate names, and archives that would expand past a size limit, past a
compression ratio (zip bombs: a member, or the whole archive, expanding far
more than model files do) or past the free disk space. Extract into a temporary folder: on error, that folder
may hold part of the files and the caller deletes it.

Example:
    >>> from SpinalCordSegLib.models.archive import extract_zip
    >>> extract_zip("model.zip", "/tmp/models/.install-x/asset0")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Dict, Union

from ..errors import ModelInstallError
from ..imaging.fileutil import disk_full_hint, format_size

# The field's largest nnU-Net release zips expand to a few GiB at most.
DEFAULT_MAX_BYTES = 16 * 1024 ** 3
# Checkpoints (float weights) compress about 1.1:1 and JSON about 10:1; deflate cannot exceed
# about 1032:1, which is what zip bombs use. Members smaller than RATIO_FLOOR are not held to it.
DEFAULT_MAX_RATIO = 100
RATIO_FLOOR = 1024 ** 2
_COPY_CHUNK = 1 << 20


def _member_parts(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; raise for absolute paths and ``..``."""
    name = info.filename
    # Backslashes act as separators when such a zip is extracted on Windows.
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ModelInstallError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in parts:
        raise ModelInstallError(
            f"{archive}: member {name!r} points outside the archive ('..'); refusing to extract"
        )
    return PurePosixPath(*[part for part in parts if part not in ("", ".")])


def _check_link(archive: Path, zip_file: zipfile.ZipFile, info: zipfile.ZipInfo, member: PurePosixPath) -> None:
    """Raise for a symbolic link member, saying whether it points outside."""
    target = zip_file.read(info).decode("utf-8", "replace")
    resolved = posixpath.normpath(posixpath.join(str(member.parent), target))
    if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise ModelInstallError(
            f"{archive}: member {info.filename!r} is a link to {target!r}, outside the archive; "
            "refusing to extract"
        )
    raise ModelInstallError(
        f"{archive}: member {info.filename!r} is a symbolic link (to {target!r}); model archives must hold "
        "plain files"
    )


def _check_ratio(archive: Path, name: str, expanded: int, compressed: int, max_ratio: float) -> None:
    if expanded > RATIO_FLOOR and expanded > max_ratio * max(compressed, 1):
        raise ModelInstallError(
            f"{archive}: {name} expands {format_size(compressed)} to {format_size(expanded)} "
            f"(ratio {expanded / max(compressed, 1):.0f}:1, limit {max_ratio:.0f}:1): a zip bomb, not a model; "
            "refusing to extract"
        )


def _plan(archive: Path, zip_file: zipfile.ZipFile, max_bytes: int,
          max_ratio: float) -> Dict[PurePosixPath, zipfile.ZipInfo]:
    """Check every member; return them by relative path."""
    members: Dict[PurePosixPath, zipfile.ZipInfo] = {}
    total = 0
    for info in zip_file.infolist():
        member = _member_parts(archive, info)
        if stat.S_ISLNK(info.external_attr >> 16):
            _check_link(archive, zip_file, info, member)
        if not member.parts:
            continue  # the archive root itself ("./")
        if member in members:
            raise ModelInstallError(f"{archive}: member {info.filename!r} appears twice; refusing to extract")
        members[member] = info
        _check_ratio(archive, f"member {info.filename!r}", info.file_size, info.compress_size, max_ratio)
        total += info.file_size
        if total > max_bytes:
            raise ModelInstallError(
                f"{archive}: expands to more than the limit of {format_size(max_bytes)}; refusing to extract"
            )
    # Members may share compressed data (overlapping entries): hold the whole archive to the ratio too.
    _check_ratio(archive, "the archive", total, archive.stat().st_size, max_ratio)
    return members


def check_plain_folder(folder: Union[str, Path], max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Refuse a model folder holding anything but plain files and folders; return its size in bytes.

    The rule of the zip path, for a folder given to ``models install --from``: a symbolic link
    (to a secret file, to ``/root``...) or a special file (``/dev/zero``, a FIFO, a socket)
    would be copied into the model store, or never end. Nothing is followed. Raises
    ModelInstallError naming the entry; a folder past ``max_bytes`` is refused too.

    >>> check_plain_folder("results/Dataset101_SC/nnUNetTrainer__nnUNetPlans__3d_fullres")  # doctest: +SKIP
    """
    folder = Path(folder)
    total = 0
    for root, folders, files in os.walk(folder, onerror=_raise):  # os.walk does not follow links
        for name in folders + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ModelInstallError(f"{path}: is a symbolic link (to {os.readlink(path)!r}); model folders must "
                                        "hold plain files: refusing to install")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ModelInstallError(f"{path}: is a special file (device, FIFO or socket), not a model file: "
                                        "refusing to install")
            total += path.lstat().st_size if stat.S_ISREG(mode) else 0
            if total > max_bytes:
                raise ModelInstallError(f"{folder}: holds more than the limit of {format_size(max_bytes)}; "
                                        "refusing to install")
    return total


def _raise(error: OSError) -> None:
    raise ModelInstallError(f"{error.filename}: cannot read ({error.strerror or error})") from error


def extract_zip(
    archive: Union[str, Path], destination: Union[str, Path], *, max_bytes: int = DEFAULT_MAX_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> None:
    """Extract ``archive`` into ``destination`` (created) after checking every member.

    Raises ModelInstallError naming the archive (and member) and the problem.
    The sizes checked against ``max_bytes`` and ``max_ratio`` (uncompressed
    to compressed) are those of the zip directory, which ``zipfile``
    enforces while reading (a member that inflates past its declared size
    fails its check).
    """
    archive, destination = Path(archive), Path(destination)
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = _plan(archive, zip_file, max_bytes, max_ratio)
            needed = sum(info.file_size for info in members.values())
            destination.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(destination).free
            if needed > free:
                raise ModelInstallError(
                    f"{archive}: needs {format_size(needed)} but only {format_size(free)} is free in "
                    f"{destination} (disk full)"
                )
            for member, info in members.items():
                target = destination.joinpath(*member.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zip_file.open(info) as source, open(target, "wb") as output:
                    shutil.copyfileobj(source, output, _COPY_CHUNK)
    except (zipfile.BadZipFile, zlib.error) as error:
        raise ModelInstallError(f"{archive}: not a valid zip file or corrupt ({error})") from error
    except (RuntimeError, NotImplementedError) as error:  # encrypted members, unknown compression
        raise ModelInstallError(f"{archive}: cannot read ({error})") from error
    except OSError as error:
        raise ModelInstallError(
            f"{archive}: cannot extract into {destination}{disk_full_hint(error)}: {error}"
        ) from error
