"""nnU-Net v2 results folders: find, validate and describe them.

A results folder is what ``nnUNetv2_train`` writes and what the field's release
zips hold: ``<Trainer>__<Plans>__<configuration>/`` with ``dataset.json``,
``plans.json`` and ``fold_*/checkpoint_final.pth`` (or ``checkpoint_best.pth``).

Example:
    >>> from SpinalCordSegLib.models.model_folder import ModelFolder
    >>> model = ModelFolder.open("~/models/demo-sc-lesion")  # doctest: +SKIP
    >>> model.structures, model.folds  # doctest: +SKIP
    (['sc', 'lesion'], ['0'])
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..errors import ModelFolderError
from ..imaging.fileutil import read_json
from .plans_check import check_dataset, check_plans

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
# How deep below a given folder a results folder may sit (release zips nest it
# as <root>/<Dataset>/<Trainer__Plans__config>/).
_SEARCH_DEPTH = 3


def _is_results_folder(path: Path) -> bool:
    return (path / "dataset.json").is_file() and (path / "plans.json").is_file()


def _is_plain_folder(path: Path) -> bool:
    """A folder, not a link to one (nor a Windows junction, which Python before 3.12 does not call a link)."""
    return path.is_dir() and not path.is_symlink() and not getattr(path, "is_junction", lambda: False)()


def find_results_folder(path: Union[str, Path]) -> Path:
    """Return the single nnU-Net results folder at or below ``path``.

    The search does not follow links to folders below ``path`` (a link in a stranger's
    model folder may point anywhere, or back to itself); ``path`` itself may be one.
    Raises ModelFolderError when there is none, or more than one.

    >>> find_results_folder("Dataset101_SC/")  # doctest: +SKIP
    PosixPath('Dataset101_SC/nnUNetTrainer__nnUNetPlans__3d_fullres')
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelFolderError(f"{root}: model folder not found")
    if _is_results_folder(root):
        return root
    found: List[Path] = []
    level = [root]
    for _ in range(_SEARCH_DEPTH):
        level = [child for parent in level for child in sorted(parent.iterdir()) if _is_plain_folder(child)]
        found = [child for child in level if _is_results_folder(child)]
        if found:
            break
    if not found:
        raise ModelFolderError(
            f"{root}: no nnU-Net results folder (a folder with dataset.json and plans.json) found"
        )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise ModelFolderError(f"{root}: several nnU-Net results folders found ({names}); give one of them")
    return found[0]


def _load_json(path: Path) -> dict:
    data = read_json(path, "JSON", ModelFolderError)
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def _is_background(value: object) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(v == 0 for v in values)


def sha256_of_file(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: (real path, device, inode, size, mtime_ns, ctime_ns) -> sha256, for this process.
_DIGESTS: Dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple:
    real = os.path.realpath(path)
    info = os.stat(real)
    return real, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def cached_sha256(path: Union[str, Path]) -> str:
    """The sha256 of a file, read again only when the file changed since this process last read it.

    "Changed" is any difference in the file's real path, inode, size,
    modification time or status-change time: writing to a file (even one
    whose size and modification time are then put back) moves its
    ``ctime``, which no user can set, so the trust check still re-hashes
    a file anything changed. Kept in memory only: a new Slicer session
    hashes each model once.

    >>> cached_sha256(__file__) == sha256_of_file(__file__)
    True
    """
    key = _file_key(Path(path))
    with _DIGESTS_LOCK:
        digest = _DIGESTS.get(key)
    if digest is None:
        digest = sha256_of_file(key[0])
        if _file_key(Path(path)) == key:  # not changed while it was read
            with _DIGESTS_LOCK:
                _DIGESTS[key] = digest
    return digest


@dataclass(frozen=True)
class ModelFolder:
    """A validated nnU-Net v2 results folder.

    Opening it checks ``dataset.json`` and ``plans.json`` (fields inference
    reads, and the allow-list of names nnU-Net imports; see
    :mod:`SpinalCordSegLib.models.plans_check`) before nnU-Net ever sees them.

    Attributes:
        path: the ``Trainer__Plans__configuration`` folder.
        dataset: the parsed ``dataset.json``.
        plans: the parsed ``plans.json``.
        configuration: the configuration name (``3d_fullres``...).
        checkpoint_name: ``checkpoint_final.pth``, or ``checkpoint_best.pth``
            when no fold has a final checkpoint.
        folds: the folds with that checkpoint (``"0"``, ``"1"``, ``"all"``...).
    """

    path: Path
    dataset: dict
    plans: dict
    configuration: str
    checkpoint_name: str
    folds: List[str]

    @classmethod
    def open(cls, path: Union[str, Path]) -> "ModelFolder":
        """Find and validate the results folder at or below ``path``."""
        folder = find_results_folder(path)
        dataset = _load_json(folder / "dataset.json")
        plans = _load_json(folder / "plans.json")
        check_dataset(dataset, str(folder / "dataset.json"))
        configuration = folder.name.split("__")[-1]
        channels = len(dataset.get("channel_names") or dataset.get("modality"))
        check_plans(plans, str(folder / "plans.json"), configuration, channels)
        checkpoint_name, folds = cls._find_folds(folder)
        return cls(folder, dataset, plans, configuration, checkpoint_name, folds)

    @staticmethod
    def _find_folds(folder: Path) -> "tuple[str, List[str]]":
        fold_dirs = sorted(p for p in folder.glob("fold_*") if p.is_dir())
        if not fold_dirs:
            raise ModelFolderError(f"{folder}: no fold_* folder with a checkpoint")
        for name in CHECKPOINT_NAMES:
            folds = [p.name[len("fold_"):] for p in fold_dirs if (p / name).is_file()]
            if folds:
                empty = [f for f in folds if (folder / f"fold_{f}" / name).stat().st_size == 0]
                if empty:
                    raise ModelFolderError(f"{folder / f'fold_{empty[0]}' / name}: checkpoint file is empty")
                return name, folds
        raise ModelFolderError(
            f"{folder}: fold folders {[p.name for p in fold_dirs]} hold no "
            f"{' or '.join(CHECKPOINT_NAMES)}"
        )

    @property
    def labels(self) -> Dict[str, object]:
        """``dataset.json`` labels, name to value (an int or a list for regions)."""
        return dict(self.dataset["labels"])

    @property
    def is_region_based(self) -> bool:
        """True when labels are regions (sigmoid outputs), False for softmax classes."""
        return any(isinstance(v, list) for v in self.labels.values())

    @property
    def structures(self) -> List[str]:
        """Names of the output maps, background and ignore labels dropped, in output order."""
        labels = {k: v for k, v in self.labels.items() if k != "ignore"}
        if self.is_region_based:
            return [k for k, v in labels.items() if not _is_background(v)]
        by_value = sorted((v, k) for k, v in labels.items() if not _is_background(v))
        return [k for _, k in by_value]

    @property
    def num_channels(self) -> int:
        """Number of input images (channels) the model expects."""
        return len(self.dataset.get("channel_names") or self.dataset.get("modality"))

    @property
    def image_orientation(self) -> Optional[str]:
        """The orientation recorded in dataset.json (``image_orientation``), if any."""
        value = self.dataset.get("image_orientation")
        return str(value).upper() if value else None

    def checkpoint_path(self, fold: str) -> Path:
        """Path of the checkpoint used for ``fold``."""
        return self.path / f"fold_{fold}" / self.checkpoint_name

    def select_folds(self, folds: Optional[Sequence[Union[int, str]]]) -> List[str]:
        """Validate a fold selection (None means all present) and return it as strings."""
        if not folds:
            return list(self.folds)
        chosen = [str(f) for f in folds]
        missing = [f for f in chosen if f not in self.folds]
        if missing:
            raise ModelFolderError(
                f"{self.path}: fold(s) {missing} not found; available folds: {self.folds}"
            )
        return chosen

    def checkpoint_sha256(self, folds: Optional[Sequence[Union[int, str]]] = None) -> Dict[str, str]:
        """sha256 of each selected fold's checkpoint, fold name to hex digest."""
        return {f: cached_sha256(self.checkpoint_path(f)) for f in self.select_folds(folds)}

    def checkpoint_file(self, fold: str) -> str:
        """The checkpoint of ``fold`` as a path relative to the folder (a key of :meth:`file_sha256`)."""
        return f"fold_{fold}/{self.checkpoint_name}"

    def file_sha256(self) -> Dict[str, str]:
        """sha256 of every file nnU-Net reads from this folder, by relative path.

        ``dataset.json``, ``plans.json`` and each fold's checkpoint: what trust
        and pinned checksums must cover (a trusted checkpoint beside another
        plans file is another model). Unchanged files are not read again
        (:func:`cached_sha256`): each Apply checks the model without
        re-reading gigabytes of checkpoints.
        """
        names = ["dataset.json", "plans.json"] + [self.checkpoint_file(f) for f in self.folds]
        return {name: cached_sha256(self.path / name) for name in names}
