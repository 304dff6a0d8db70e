"""Trust in nnU-Net model folders, remembered by the sha256 of every file nnU-Net reads.

nnU-Net loads checkpoints with ``torch.load(weights_only=False)`` (unpickling
can run code stored in the file) and builds the network from names in
``plans.json``. A model folder is loaded only when the sha256 of all its files
(``dataset.json``, ``plans.json``, each checkpoint) are pinned (catalogue,
built-in model) or the user said they trust exactly those files; that decision
is kept in ``config_dir()/trusted_models.json``, written atomically. Trust in
one checkpoint says nothing about another plans file beside it. Before the
user decides, :func:`check_weights_only` tells whether PyTorch's safe loader
can read each checkpoint: if it can, the file holds only tensors and plain data.

Example:
    >>> from SpinalCordSegLib.models.trust import TrustStore
    >>> store = TrustStore("/tmp/scs-trust.json")
    >>> store.is_trusted({"plans.json": "0" * 64})
    False
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

from ..errors import SpinalCordSegError
from ..imaging.fileutil import read_json, write_json_atomic
from ..paths import config_dir

# Format 1 (trusted_checkpoints.json) trusted checkpoints alone; it is not read, so such models are asked about again.
TRUST_FILE = "trusted_models.json"
TRUST_FORMAT = 2


class TrustStoreError(SpinalCordSegError):
    """The trust store file cannot be read or written."""


@dataclass(frozen=True)
class WeightsOnlyCheck:
    """Whether ``torch.load(path, weights_only=True)`` reads a checkpoint.

    ``loadable`` is None when PyTorch is not installed (not checked).
    """

    path: Path
    loadable: Optional[bool]
    detail: str


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_weights_only(path: Union[str, Path]) -> WeightsOnlyCheck:
    """Try PyTorch's safe loader on ``path`` (it never runs code from the file).

    When it refuses, ``detail`` keeps PyTorch's whole explanation (which global
    it refused, and why), without terminal colour codes.
    """
    path = Path(path)
    try:
        import torch
    except ImportError:
        return WeightsOnlyCheck(path, None, "not checked: PyTorch is not installed")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any refusal or read error means "not weights-only"
        reason = " ".join(_ANSI.sub("", str(error)).split()) or type(error).__name__
        return WeightsOnlyCheck(
            path, False,
            "NOT readable with torch.load(weights_only=True): it holds other Python objects, and loading it can "
            f"run code. PyTorch says: {reason}",
        )
    return WeightsOnlyCheck(
        path, True, "readable with torch.load(weights_only=True): it holds only tensors and plain data"
    )


def folder_digest(files: Mapping[str, str]) -> str:
    """One sha256 for a model folder: of its files' relative paths and sha256, sorted."""
    text = "\n".join(f"{name}\t{digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_files(before: Mapping[str, str], now: Mapping[str, str]) -> Dict[str, str]:
    """What differs between two ``{relative path: sha256}`` listings: path -> a phrase saying how."""
    changes = {}
    for name in sorted(set(before) | set(now)):
        if name not in now:
            changes[name] = f"{name} is gone"
        elif name not in before:
            changes[name] = f"{name} is new"
        elif before[name] != now[name]:
            changes[name] = f"{name} changed (sha256 {before[name]} is now {now[name]})"
    return changes


def untrusted_message(label: str, reason: str, checks: Sequence[WeightsOnlyCheck],
                      changes: Sequence[str] = ()) -> str:
    """Explain why ``label`` needs the user's trust: what changed, and the weights-only check of each checkpoint."""
    lines = [f"{label} is not trusted yet: {reason}."]
    lines += [f"  {change}" for change in changes]
    lines += [
        "nnU-Net loads checkpoints with torch.load(weights_only=False), which can run code stored in the file.",
    ]
    lines += [f"  {check.path}: {check.detail}" for check in checks]
    return "\n".join(lines)


class TrustStore:
    """The model folders the user trusts (a JSON file, default in ``config_dir()``).

    Each entry is keyed by :func:`folder_digest` of the folder's files and
    keeps those files' sha256, so that a later refusal can say which file
    changed.
    """

    def __init__(self, path: Union[str, Path, None] = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / TRUST_FILE

    def _load(self) -> dict:
        if not self.path.exists():
            return {"format": TRUST_FORMAT, "models": {}}
        data = read_json(self.path, "the trust store (fix or delete it)", TrustStoreError)
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise TrustStoreError(f"{self.path}: not a SpinalCordSeg trust store (no 'models' object)")
        return data

    def is_trusted(self, files: Mapping[str, str]) -> bool:
        """True when the user trusted a folder with exactly these files (False for none)."""
        return bool(files) and folder_digest(files) in self._load()["models"]

    def trusted_before(self, folder: Union[str, Path]) -> Optional[Dict[str, str]]:
        """The files of the last trusted version of ``folder`` (its path), or None."""
        where = str(Path(folder).resolve())
        entries = [e for e in self._load()["models"].values() if e.get("folder") == where]
        latest = max(entries, key=lambda e: e.get("trusted_at", ""), default=None)
        return dict(latest["files"]) if latest and isinstance(latest.get("files"), dict) else None

    def trust(self, folder: Union[str, Path], files: Mapping[str, str], checks: Sequence[WeightsOnlyCheck],
              source: str) -> None:
        """Remember that the user trusts the model ``folder`` with these files (relative path -> sha256)."""
        data = self._load()
        data["models"][folder_digest(files)] = {
            "source": source,
            "folder": str(Path(folder).resolve()),
            "files": dict(files),
            "trusted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights_only_loadable": {str(check.path): check.loadable for check in checks},
        }
        try:
            write_json_atomic(data, self.path)
        except OSError as error:
            raise TrustStoreError(f"{self.path}: cannot write the trust store ({error})") from error
