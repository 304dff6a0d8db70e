"""Trust in nnU-Net checkpoints, remembered by sha256.

nnU-Net loads checkpoints with ``torch.load(weights_only=False)``: unpickling
can run code stored in the file. A checkpoint is loaded only when its sha256
is pinned (catalogue, built-in model) or the user said they trust it; that
decision is kept by hash in ``config_dir()/trusted_checkpoints.json``, written
atomically. Before the user decides, :func:`check_weights_only` tells whether
PyTorch's safe loader can read the file: if it can, the file holds only
tensors and plain data.

Example:
    >>> from SpinalCordSegLib.trust import TrustStore
    >>> store = TrustStore("/tmp/scs-trust.json")
    >>> store.is_trusted(["0" * 64])
    False
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from .errors import SpinalCordSegError
from .fileutil import write_json_atomic
from .paths import config_dir

TRUST_FILE = "trusted_checkpoints.json"
TRUST_FORMAT = 1


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


def check_weights_only(path: Union[str, Path]) -> WeightsOnlyCheck:
    """Try PyTorch's safe loader on ``path`` (it never runs code from the file)."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        return WeightsOnlyCheck(path, None, "not checked: PyTorch is not installed")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any refusal or read error means "not weights-only"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return WeightsOnlyCheck(
            path, False,
            f"NOT readable with torch.load(weights_only=True) ({reason[:200]}): it holds other Python "
            "objects, and loading it can run code",
        )
    return WeightsOnlyCheck(
        path, True, "readable with torch.load(weights_only=True): it holds only tensors and plain data"
    )


def untrusted_message(label: str, reason: str, checks: Sequence[WeightsOnlyCheck]) -> str:
    """Explain why ``label`` needs the user's trust, with the weights-only check of each checkpoint."""
    lines = [
        f"{label} is not trusted yet: {reason}.",
        "nnU-Net loads checkpoints with torch.load(weights_only=False), which can run code stored in the file.",
    ]
    lines += [f"  {check.path}: {check.detail}" for check in checks]
    return "\n".join(lines)


class TrustStore:
    """The user's trusted checkpoint hashes (a JSON file, default in ``config_dir()``)."""

    def __init__(self, path: Union[str, Path, None] = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / TRUST_FILE

    def _load(self) -> dict:
        if not self.path.exists():
            return {"format": TRUST_FORMAT, "checkpoints": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TrustStoreError(
                f"{self.path}: cannot read the trust store ({error}); fix or delete it"
            ) from error
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
            raise TrustStoreError(f"{self.path}: not a SpinalCordSeg trust store (no 'checkpoints' object)")
        return data

    def is_trusted(self, hashes: Iterable[str]) -> bool:
        """True when every hash was trusted by the user (False for none)."""
        hashes = list(hashes)
        known = self._load()["checkpoints"]
        return bool(hashes) and all(digest in known for digest in hashes)

    def trust(self, checkpoints: Mapping[str, WeightsOnlyCheck], source: str) -> None:
        """Remember that the user trusts these checkpoints (sha256 -> its weights-only check)."""
        data = self._load()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for digest, check in checkpoints.items():
            data["checkpoints"][digest] = {
                "source": source,
                "file": str(check.path),
                "trusted_at": now,
                "weights_only_loadable": check.loadable,
            }
        try:
            write_json_atomic(data, self.path)
        except OSError as error:
            raise TrustStoreError(f"{self.path}: cannot write the trust store ({error})") from error
