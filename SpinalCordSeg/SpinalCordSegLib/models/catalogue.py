"""The model catalogue: the nnU-Net v2 models SpinalCordSeg installs by id.

The catalogue is a JSON file shipped with the module
(``Resources/models.json``); the environment variable
``SPINALCORDSEG_CATALOGUE`` points to another one (a site catalogue with
internal mirrors, or a test catalogue). Each entry says where the release
assets are (mirror URLs, tried in order), their sha256 when known, what the
model segments, which orientation it expects and whether its input must be
cropped around the cord first.

Built-in models (``"builtin": true``) have no assets: their ``path`` is a
folder relative to the ``Models`` folder next to the catalogue file, which for
the shipped catalogue is :func:`SpinalCordSegLib.resources.embedded_models_dir`.

``files_sha256`` pins every file of a model's results folder that nnU-Net
reads (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_*.pth``), by path
relative to that folder; a built-in model needs it. A folder whose files all
match is trusted without asking.

Example:
    >>> from SpinalCordSegLib.models.catalogue import load_catalogue
    >>> catalogue = load_catalogue()
    >>> catalogue["lesion_sci_t2"].name
    'SCI lesion + cord (T2w)'
    >>> [asset.fold for asset in catalogue["lesion_ms"].assets]
    ['0', '1', '2', '3', '4']
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, List, Optional, Tuple, Union

from ..errors import SpinalCordSegError
from ..imaging.fileutil import read_json
from ..imaging.naming import is_orientation_code, is_safe_id
from ..resources import resources_dir

#: The embedded model that `spinalcordseg demo`, the panel and the self-test use by default.
DEMO_MODEL = "demo-sc-lesion"

CATALOGUE_ENV = "SPINALCORDSEG_CATALOGUE"
#: Packages that run a catalogue model themselves (``"runner"``): TotalSpineSeg, SCT's ``spine`` task.
RUNNERS = ("totalspineseg",)
CATALOGUE_FORMAT = 1
#: What every output of a demo model (``"demo": true``) says: command line, sidecar, overlay, Slicer panel.
DEMO_NOTE = "demo model: not for clinical use"

_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_PATTERN = re.compile(r"fold_[^/]+/checkpoint_(final|best)\.pth")
_PINNED_NEEDS = ("dataset.json", "plans.json")


class CatalogueError(SpinalCordSegError):
    """The catalogue file is missing, unreadable or inconsistent."""


#: What ``-m current`` means: the round's promoted model (``round promote``).
CURRENT = "current"
#: The file in the models folder that records the promoted model.
CURRENT_FILE = "current.json"


def is_valid_id(text: str) -> bool:
    """True when ``text`` can be a model id (and so a folder name)."""
    return is_safe_id(text)  # ids name folders in the models directory


def reserved_id_problem(model_id: str) -> Optional[str]:
    """Why ``model_id`` cannot name a model (:data:`CURRENT` or :data:`CURRENT_FILE`), or None when it can.

    Compared in any case: ``Current`` is ``current`` on macOS and Windows.

    >>> reserved_id_problem("current")
    "model id 'current' is reserved: it names the promoted model (-m current)"
    >>> reserved_id_problem("sct-deepseg-v3") is None
    True
    """
    if model_id.lower() == CURRENT:
        return f"model id {model_id!r} is reserved: it names the promoted model (-m {CURRENT})"
    if model_id.lower() == CURRENT_FILE:
        return f"model id {model_id!r} is reserved: {CURRENT_FILE} in the models folder records the promoted model"
    return None


@dataclass(frozen=True)
class Asset:
    """One release file of a model.

    Attributes:
        name: file name (``model_fold0.zip``...).
        urls: mirror URLs, tried in order.
        sha256: hex sha256 of the file, None when unknown.
        size: size in bytes, None when unknown.
        fold: the fold this file holds for per-fold releases, else None.
    """

    name: str
    urls: Tuple[str, ...]
    sha256: Optional[str]
    size: Optional[int]
    fold: Optional[str]


@dataclass(frozen=True)
class CatalogueEntry:
    """A model of the catalogue (see the ``about`` notes of ``models.json``)."""

    id: str
    name: str
    description: str
    task: str
    structures: Tuple[str, ...]
    contrasts: Tuple[str, ...]
    orientation: Optional[str]
    cropped_input: bool
    crop_with: Optional[str]
    crop_note: Optional[str]
    version: Optional[str]
    folds: Optional[Tuple[str, ...]]
    assets: Tuple[Asset, ...]
    files_sha256: Optional[Dict[str, str]]
    citation: Optional[str]
    licence: Optional[str]
    homepage: Optional[str]
    sct_model: Optional[str]
    builtin: bool = False
    path: Optional[Path] = None  # absolute folder of a built-in model
    demo: bool = False
    runner: Optional[str] = None  # a package that runs the model itself (no nnU-Net folder here)

    @property
    def note(self) -> Optional[str]:
        """The one-line note shown with this model's outputs (demo models), else None."""
        if not self.demo:
            return None
        return (f"{self.id} is a {DEMO_NOTE}: trained on a handful of public test scans to try the tools;"
                " for real scans use the field's models ('spinalcordseg models list')")

    @property
    def runner_note(self) -> Optional[str]:
        """How a model run by another package (``runner``) is installed, else None."""
        if self.runner is None:
            return None
        return (f"'{self.id}' runs through the {self.runner} package ({self.licence or 'its licence'}), not as an "
                f"nnU-Net folder here: pip install {self.runner}; it installs its own weights on first use")

    @property
    def assets_pinned(self) -> bool:
        """True when every asset has a known sha256."""
        return bool(self.assets) and all(asset.sha256 for asset in self.assets)

    @property
    def checkpoint_sha256(self) -> Dict[str, str]:
        """The pinned checkpoints of ``files_sha256``, fold name to sha256."""
        return {name.split("/")[0][len("fold_"):]: digest for name, digest in (self.files_sha256 or {}).items()
                if _CHECKPOINT_PATTERN.fullmatch(name)}

    @property
    def download_size(self) -> Optional[int]:
        """Total size of the assets in bytes, None when any is unknown."""
        sizes = [asset.size for asset in self.assets]
        return sum(sizes) if sizes and None not in sizes else None  # type: ignore[arg-type]


class _Reader:
    """Typed access to one JSON object, with errors naming the file and the entry."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise CatalogueError(f"{where}: expected a JSON object")
        self.data = data
        self.where = where

    def get(self, key: str, kind: Union[type, Tuple[type, ...]], required: bool = True):
        if key not in self.data:
            if required:
                raise CatalogueError(f"{self.where}: missing '{key}'")
            return None
        value = self.data[key]
        if value is None and not required:
            return None
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise CatalogueError(f"{self.where}: '{key}' has the wrong type ({type(value).__name__})")
        return value

    def strings(self, key: str, required: bool = True) -> Optional[Tuple[str, ...]]:
        value = self.get(key, list, required)
        if value is None:
            return None
        if not value or not all(isinstance(item, str) and item for item in value):
            raise CatalogueError(f"{self.where}: '{key}' must be a non-empty list of strings")
        return tuple(value)

    def sha256(self, value: object, key: str) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, str) or not _SHA256_PATTERN.fullmatch(value):
            raise CatalogueError(f"{self.where}: '{key}' is not a lower-case hex sha256 (or null): {value!r}")
        return value


def _parse_asset(data: object, where: str) -> Asset:
    reader = _Reader(data, where)
    urls = reader.strings("urls")
    bad = [url for url in urls if not url.startswith(("https://", "http://"))]
    if bad:
        raise CatalogueError(f"{where}: not an http(s) URL: {bad[0]}")
    size = reader.get("size", int, required=False)
    if size is not None and size <= 0:
        raise CatalogueError(f"{where}: 'size' must be positive")
    fold = reader.get("fold", str, required=False)
    return Asset(reader.get("name", str), urls, reader.sha256(reader.data.get("sha256"), "sha256"), size, fold)


def _builtin_path(relative: str, models_root: Path, where: str) -> Path:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts or "\\" in relative:
        raise CatalogueError(f"{where}: 'path' must be a relative folder without '..': {relative!r}")
    return models_root.joinpath(*parts)


def _parse_entry(data: object, where: str, models_root: Path) -> CatalogueEntry:
    reader = _Reader(data, where)
    model_id = reader.get("id", str)
    if not is_valid_id(model_id):
        raise CatalogueError(f"{where}: id {model_id!r} must be letters, digits, '_', '-' or '.'")
    if reserved_id_problem(model_id):
        raise CatalogueError(f"{where}: {reserved_id_problem(model_id)}")
    where = f"{where} ({model_id})"
    reader.where = where
    builtin = bool(reader.get("builtin", bool, required=False))
    runner = reader.get("runner", str, required=False)
    if runner is not None and runner not in RUNNERS:
        raise CatalogueError(f"{where}: 'runner' must be one of {RUNNERS}, not {runner!r}")
    if "checkpoint_sha256" in reader.data:
        raise CatalogueError(f"{where}: 'checkpoint_sha256' is replaced by 'files_sha256', which also pins "
                             "dataset.json and plans.json (nnU-Net imports names from plans.json)")
    pins = reader.get("files_sha256", dict, required=False)
    if pins is not None:
        pins = {name: reader.sha256(value, f"files_sha256.{name}") for name, value in pins.items()}
        missing = [name for name in _PINNED_NEEDS if name not in pins]
        if missing or not any(_CHECKPOINT_PATTERN.fullmatch(name) for name in pins):
            raise CatalogueError(f"{where}: 'files_sha256' must pin dataset.json, plans.json and each "
                                 f"fold_*/checkpoint_*.pth (missing: {', '.join(missing) or 'checkpoints'})")
    assets = tuple(
        _parse_asset(item, f"{where} asset {index}")
        for index, item in enumerate(reader.get("assets", list, required=not (builtin or runner)) or [])
    )
    if builtin and (assets or not pins):
        raise CatalogueError(f"{where}: a built-in model has no 'assets' and needs 'files_sha256'")
    if runner and (assets or pins or builtin):
        raise CatalogueError(f"{where}: a model run by '{runner}' has no 'assets', 'files_sha256' or 'builtin'")
    if not builtin and not runner and not assets:
        raise CatalogueError(f"{where}: 'assets' is empty")
    folds = reader.strings("folds", required=False)
    per_fold = [asset.fold for asset in assets if asset.fold is not None]
    if per_fold and (len(per_fold) != len(assets) or not folds or sorted(per_fold) != sorted(folds)):
        raise CatalogueError(f"{where}: per-fold assets {per_fold} do not match 'folds' {folds}")
    orientation = reader.get("orientation", str, required=False)
    if orientation is not None and not is_orientation_code(orientation):
        raise CatalogueError(f"{where}: 'orientation' must be three letters such as RAS: {orientation!r}")
    return CatalogueEntry(
        id=model_id,
        name=reader.get("name", str),
        description=reader.get("description", str),
        task=reader.get("task", str),
        structures=reader.strings("structures"),
        contrasts=reader.strings("contrasts"),
        orientation=orientation,
        cropped_input=bool(reader.get("cropped_input", bool, required=False)),
        crop_with=reader.get("crop_with", str, required=False),
        crop_note=reader.get("crop_note", str, required=False),
        version=reader.get("version", str, required=False),
        folds=folds,
        assets=assets,
        files_sha256=pins,
        citation=reader.get("citation", str, required=False),
        licence=reader.get("licence", str, required=False),
        homepage=reader.get("homepage", str, required=False),
        sct_model=reader.get("sct_model", str, required=False),
        builtin=builtin,
        path=_builtin_path(reader.get("path", str), models_root, where) if builtin else None,
        demo=bool(reader.get("demo", bool, required=False)),
        runner=runner,
    )


@dataclass(frozen=True)
class Catalogue:
    """The parsed catalogue: entries by id, in file order."""

    path: Path
    entries: Tuple[CatalogueEntry, ...]

    def get(self, model_id: str) -> Optional[CatalogueEntry]:
        """The entry with this id, or None."""
        return next((entry for entry in self.entries if entry.id == model_id), None)

    def __getitem__(self, model_id: str) -> CatalogueEntry:
        entry = self.get(model_id)
        if entry is None:
            raise CatalogueError(f"{self.path}: no model '{model_id}'; known ids: {', '.join(self.ids)}")
        return entry

    def __iter__(self) -> Iterator[CatalogueEntry]:
        return iter(self.entries)

    @property
    def ids(self) -> List[str]:
        """Every id, in file order."""
        return [entry.id for entry in self.entries]


def catalogue_path() -> Path:
    """The catalogue in use: ``$SPINALCORDSEG_CATALOGUE``, else the shipped one."""
    value = os.environ.get(CATALOGUE_ENV)
    return Path(value).expanduser() if value else resources_dir() / "models.json"


def model_note(model_id: Optional[str]) -> Optional[str]:
    """The note to show with a model's outputs (see :attr:`CatalogueEntry.note`); None for others.

    >>> model_note("demo-sc-lesion").startswith("demo-sc-lesion is a demo model: not for clinical use")
    True
    """
    entry = load_catalogue().get(model_id) if model_id else None
    return entry.note if entry is not None else None


def load_catalogue(path: Union[str, Path, None] = None) -> Catalogue:
    """Read and check a catalogue file (default: :func:`catalogue_path`)."""
    path = Path(path) if path is not None else catalogue_path()
    data = read_json(path, "the model catalogue", CatalogueError)
    reader = _Reader(data, str(path))
    if reader.get("format", int) != CATALOGUE_FORMAT:
        raise CatalogueError(
            f"{path}: unsupported catalogue format {data['format']} (expected {CATALOGUE_FORMAT})"
        )
    models_root = path.resolve().parent / "Models"
    entries = tuple(
        _parse_entry(item, f"{path} model {index}", models_root)
        for index, item in enumerate(reader.get("models", list))
    )
    ids = [entry.id for entry in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CatalogueError(f"{path}: duplicate model id(s) {duplicates}")
    unknown = [(e.id, e.crop_with) for e in entries if e.crop_with is not None and e.crop_with not in ids]
    if unknown:
        raise CatalogueError(f"{path}: model '{unknown[0][0]}' crops with unknown model '{unknown[0][1]}'")
    return Catalogue(path, entries)
