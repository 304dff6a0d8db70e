"""Install, list, remove and resolve nnU-Net models, with checks on trust.

Each installed model is a folder ``models_dir()/<id>/``: the extracted release
(its nnU-Net results folder somewhere below) and ``spinalcordseg-model.json``,
which records where it came from and the sha256 of its archives and of
every file nnU-Net reads (``dataset.json``, ``plans.json``, checkpoints). An
install is staged in a hidden temporary folder inside the models folder and
moved into place with one rename, so a failed or interrupted install leaves
the models folder as it was.

:func:`resolve_model` is what the ``segment`` command and the Slicer module
call: it turns a catalogue id, an installed model's id, a folder or a zip
into a validated results folder whose files are all trusted (pinned by the
catalogue or trusted by the user); otherwise the message says which file
changed since install or since the user trusted it.

Example:
    >>> from SpinalCordSegLib.models.model_store import resolve_model
    >>> model = resolve_model("lesion_sci_t2", confirm=lambda message: True)  # doctest: +SKIP
    >>> model.folder.name, model.trusted_because  # doctest: +SKIP
    ('nnUNetTrainer__nnUNetPlans__3d_fullres', 'user')
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .. import __version__

from .. import paths
from .archive import check_plain_folder, extract_zip
from .catalogue import (CURRENT, CURRENT_FILE, Catalogue, CatalogueEntry, is_valid_id, load_catalogue,
                        reserved_id_problem)
from .download import Progress, download, verify_file
from ..errors import ModelFolderError, ModelInstallError, SpinalCordSegError, UntrustedModelError
from ..imaging.fileutil import (disk_full_hint, format_size, make_staging_folder, owned_prefix, read_json,
                                remove_stale, write_json_atomic)
from .model_folder import ModelFolder, find_results_folder, sha256_of_file
from .trust import TrustStore, changed_files, check_weights_only, untrusted_message

logger = logging.getLogger(__name__)

RECORD_FILE = "spinalcordseg-model.json"
Confirm = Callable[[str], bool]


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load.

    Attributes:
        folder: the nnU-Net results folder.
        model_id: catalogue id, or the id of an installed custom model; None
            for a folder given by path.
        version: release version (catalogue or install record), if known.
        sha256: fold -> sha256 of its checkpoint.
        files_sha256: relative path -> sha256 of every file nnU-Net reads.
        trusted_because: ``"pinned"`` (catalogue checksums), ``"builtin"``
            (shipped with the module) or ``"user"`` (the user trusted it).
        orientation: the catalogue's orientation, for when dataset.json has none.
        crop_with: catalogue id of the cord model whose mask crops the input, or None.
    """

    folder: Path
    model_id: Optional[str]
    version: Optional[str]
    sha256: Dict[str, str]
    files_sha256: Dict[str, str]
    trusted_because: str
    orientation: Optional[str]
    crop_with: Optional[str]


@dataclass(frozen=True)
class TrustState:
    """Whether a model folder may be loaded, from the sha256 of its files now.

    Attributes:
        status: ``builtin``, ``pinned``, ``user``, ``trained`` (trained by ``round train``,
            its files as the training recorded them), ``not trusted`` or
            ``unusable`` (the folder fails its checks: ``problem`` says why).
        files: relative path -> sha256 now (empty when unusable).
        changes: relative path -> a phrase, for each file that differs from
            when it was trusted (or installed, or the catalogue's pins), e.g.
            ``plans.json changed (sha256 ... is now ...)``.
        since: what ``changes`` compare with (``"since you trusted it"``,
            ``"since install"``, ``"compared with the catalogue's pinned checksums"``).
        problem: why the state is ``unusable`` (the ModelFolderError) or ``unknown`` (the trust store is unreadable).
    """

    status: str
    files: Dict[str, str]
    changes: Dict[str, str]
    since: Optional[str] = None
    problem: Optional[str] = None

    @property
    def trusted(self) -> bool:
        """True when the model loads without asking."""
        return self.status in ("builtin", "pinned", "user", "trained")

    @property
    def summary(self) -> str:
        """One short line: the status, and which files changed (``not trusted: plans.json changed since install``)."""
        if self.changes:
            return f"{self.status}: {', '.join(self.changes)} changed {self.since}"
        return self.status

    def __str__(self) -> str:
        if self.problem:
            return f"{self.status}: {self.problem}"
        if self.changes:
            return f"{self.status}: {'; '.join(self.changes.values())} {self.since}"
        return self.status


@dataclass(frozen=True)
class InstalledModel:
    """A model folder in the models directory and its install record."""

    id: str
    path: Path
    record: dict

    @property
    def version(self) -> Optional[str]:
        """Version recorded at install (catalogue release), if any."""
        return self.record.get("version")

    @property
    def source(self) -> str:
        """Where the model came from, in words."""
        kind = self.record.get("source")
        if kind is None:
            return f"unknown (no {RECORD_FILE})"
        if kind == "trained":
            lineage = self.record.get("lineage") or {}
            return f"trained from {lineage.get('parent')} on {lineage.get('round')}"
        places = self.record.get("urls") or self.record.get("files") or []
        version = f" {self.version}" if self.version else ""
        return f"{kind}{version}: {', '.join(places)}"

    def size_bytes(self) -> int:
        """Total size of its files."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file() and not f.is_symlink())

    def results_folder(self) -> Path:
        """Its nnU-Net results folder (ModelFolderError when broken)."""
        return find_results_folder(self.path)


def _id_from_name(path: Path) -> str:
    name = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._") or "model"


def _check_id(model_id: str) -> None:
    if not is_valid_id(model_id):
        raise ModelInstallError(f"invalid model id {model_id!r}: use letters, digits, '_', '-' or '.'")


def _check_new_id(model_id: str, hint: str = "choose another id") -> None:
    """Refuse an id that cannot name a new model: not a name, or reserved (``current``: the promoted model)."""
    _check_id(model_id)
    problem = reserved_id_problem(model_id)
    if problem:
        raise ModelInstallError(f"{problem}; {hint}")


@contextmanager
def _named_after(source: Path, staged: Path) -> Iterator[None]:
    """Show errors about a temporary staging folder as errors about ``source``."""
    try:
        yield
    except ModelFolderError as error:
        raise ModelFolderError(str(error).replace(str(staged), str(source))) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelStore:
    """The models folder, the catalogue and the trust store, together.

    Args:
        models_dir: where models are installed (default ``paths.models_dir()``).
        catalogue: the catalogue (default :func:`load_catalogue`).
        trust_store: the user's trust decisions (default :class:`TrustStore`).
        offline: never touch the network (default ``paths.offline()``).
    """

    def __init__(
        self,
        models_dir: Union[str, Path, None] = None,
        catalogue: Optional[Catalogue] = None,
        trust_store: Optional[TrustStore] = None,
        offline: Optional[bool] = None,
    ) -> None:
        self.models_dir = Path(models_dir).expanduser() if models_dir else paths.models_dir()
        self.catalogue = catalogue if catalogue is not None else load_catalogue()
        self.trust_store = trust_store if trust_store is not None else TrustStore()
        self.offline = paths.offline() if offline is None else bool(offline)

    # -- listing ---------------------------------------------------------

    def installed(self) -> List[InstalledModel]:
        """Every installed model, by id (hidden staging folders skipped)."""
        if not self.models_dir.is_dir():
            return []
        return [
            self._installed_at(path) for path in sorted(self.models_dir.iterdir())
            if path.is_dir() and not path.name.startswith(".")
        ]

    def get_installed(self, model_id: str) -> Optional[InstalledModel]:
        """The installed model with this id, or None."""
        _check_id(model_id)
        path = self.models_dir / model_id
        return self._installed_at(path) if path.is_dir() else None

    @staticmethod
    def _installed_at(path: Path) -> InstalledModel:
        record_path = path / RECORD_FILE
        try:
            record = read_json(record_path, "the install record") if record_path.is_file() else {}
        except SpinalCordSegError as error:
            logger.warning("%s", error)
            record = {}
        return InstalledModel(path.name, path, record if isinstance(record, dict) else {})

    def trust_status(self, installed: InstalledModel) -> TrustState:
        """The trust state of an installed model, from the sha256 of its files now (they are hashed)."""
        return self.trust_state_of_folder(installed.path, self.catalogue.get(installed.id), installed)

    def trust_state_of_folder(self, folder: Path, entry: Optional[CatalogueEntry] = None,
                              installed: Optional[InstalledModel] = None) -> TrustState:
        """The trust state of a model folder (a built-in model's, for ``entry``), from its files now."""
        try:
            model = ModelFolder.open(folder)
        except ModelFolderError as error:
            return TrustState("unusable", {}, {}, problem=str(error))
        try:
            return self._trust_state(model, entry, installed)
        except SpinalCordSegError as error:  # the trust store cannot be read: say so for this model, list the others
            return TrustState("unknown", {}, {}, problem=str(error))

    def _trust_state(self, model: ModelFolder, entry: Optional[CatalogueEntry],
                     installed: Optional[InstalledModel]) -> TrustState:
        files = model.file_sha256()
        reason = self._pinned(entry, installed, files)
        if reason is None and self.trust_store.is_trusted(files):
            lineage = (installed.record.get("lineage") or {}) if installed is not None else {}
            # The trust store holds the hashes the training recorded; the lineage says which model made them.
            reason = "trained" if lineage and installed.record.get("source") == "trained" and lineage.get(
                "files_sha256") == files else "user"
        if reason is not None:
            return TrustState(reason, files, {})
        before, since = self.trust_store.trusted_before(model.path), "since you trusted it"
        if before is None and installed is not None and isinstance(installed.record.get("files_sha256"), dict):
            before, since = installed.record["files_sha256"], "since install"
        if before is None and entry is not None and entry.files_sha256:
            before = {name: digest for name, digest in entry.files_sha256.items() if name in files}
            since = "compared with the catalogue's pinned checksums"
        changes = changed_files(before, files) if before is not None else {}
        return TrustState("not trusted", files, changes, since if changes else None)

    # -- installing ------------------------------------------------------

    def install(
        self,
        model_id: str,
        *,
        files: Optional[Sequence[Union[str, Path]]] = None,
        progress: Optional[Progress] = None,
        force: bool = False,
    ) -> InstalledModel:
        """Install catalogue model ``model_id``, from its URLs or from downloaded ``files``.

        An installed model is returned as it is unless ``force``. ``files``
        are the release files (matched to the catalogue's by name, or any
        name when there is one of each); pinned sha256 are checked.
        """
        entry = self.catalogue[model_id]
        if entry.runner:
            raise ModelInstallError(entry.runner_note)
        if entry.builtin:
            raise ModelInstallError(f"'{model_id}' is built into SpinalCordSeg ({entry.path}); nothing to install")
        existing = self.get_installed(model_id)
        if existing is not None and not force:
            return existing
        record = {"source": "catalogue", "id": entry.id, "name": entry.name, "version": entry.version}
        if files:
            sources = self._check_local_files(entry, [Path(f).expanduser() for f in files])
            record.update(files=[str(path.resolve()) for path, _ in sources],
                          archive_sha256={a.name: digest for a, (_, digest) in zip(entry.assets, sources)})
            return self._install(entry.id, [path for path, _ in sources], record, entry.folds)
        if self.offline:
            raise ModelInstallError(self._offline_message(entry))
        downloads = [download(a.urls, sha256=a.sha256, size=a.size, progress=progress) for a in entry.assets]
        record.update(urls=[d.url for d in downloads],
                      archive_sha256={a.name: d.sha256 for a, d in zip(entry.assets, downloads)})
        try:
            return self._install(entry.id, [d.path for d in downloads], record, entry.folds)
        finally:
            # Complete downloads are kept for resuming only until they are used.
            for item in downloads:
                item.path.unlink(missing_ok=True)

    def install_from(self, source: Union[str, Path], model_id: Optional[str] = None, *,
                     force: bool = False) -> InstalledModel:
        """Install a custom model from a zip or a folder (copied) under ``model_id``.

        The id defaults to the file or folder name. Its checkpoints are not
        trusted until the user says so.
        """
        source = Path(source).expanduser()
        if not source.exists():
            raise ModelInstallError(f"{source}: no such file or folder")
        hint = "choose another id" if model_id else f"the id comes from the name of {source}; give another id"
        model_id = model_id or _id_from_name(source)
        _check_new_id(model_id, f"{hint}: 'spinalcordseg models install ID --from {source}'")
        if self.catalogue.get(model_id) is not None:
            raise ModelInstallError(
                f"'{model_id}' is a catalogue id: choose another id, or install the catalogue model from "
                f"downloaded files with 'spinalcordseg models install {model_id} --from FILE'"
            )
        if (self.models_dir / model_id).exists() and not force:
            raise ModelInstallError(
                f"a model '{model_id}' is already installed in {self.models_dir}; remove it, choose "
                "another id, or replace it (--force)"
            )
        record = {"source": "folder" if source.is_dir() else "zip", "id": model_id, "name": model_id,
                  "version": None, "files": [str(source.resolve())]}
        if not source.is_dir():
            record["archive_sha256"] = {source.name: sha256_of_file(source)}
        return self._install(model_id, [source], record, None)

    def install_trained(self, results: Union[str, Path], model_id: str, lineage: dict) -> InstalledModel:
        """Install a model trained by ``round train`` with its ``lineage``; trust exactly the files it recorded.

        The hashes are those of the training's output (``lineage["files_sha256"]``): if
        the installed files differ, the install is undone and refused.
        """
        _check_new_id(model_id)
        if self.catalogue.get(model_id) is not None or (self.models_dir / model_id).exists():
            raise ModelInstallError(f"'{model_id}' is taken (a catalogue id or an installed model); "
                                    "choose another name")
        record = {"source": "trained", "id": model_id, "name": model_id, "version": lineage.get("trained_at"),
                  "lineage": lineage}
        installed = self._install(model_id, [Path(results)], record, lineage.get("folds"))
        if installed.record.get("files_sha256") != lineage.get("files_sha256"):
            self.remove(model_id)
            raise ModelInstallError(f"'{model_id}': the installed files differ from the trained ones; not installed")
        model = ModelFolder.open(installed.results_folder())
        checks = [check_weights_only(model.checkpoint_path(fold)) for fold in model.folds]
        self.trust_store.trust(model.path, lineage["files_sha256"], checks,
                               source=f"trained by 'spinalcordseg round train' from {lineage.get('parent')}")
        return installed

    def update_lineage(self, model_id: str, **changes: object) -> InstalledModel:
        """Add ``changes`` to a trained model's lineage (e.g. its promotion), in its install record."""
        installed = self.get_installed(model_id)
        if installed is None or installed.record.get("source") != "trained":
            raise ModelInstallError(f"'{model_id}' is not a model trained by 'round train' in {self.models_dir}")
        record = dict(installed.record)
        record["lineage"] = {**record.get("lineage", {}), **changes}
        write_json_atomic(record, installed.path / RECORD_FILE)
        return self._installed_at(installed.path)

    def current(self) -> Optional[dict]:
        """The round's model as ``round promote`` recorded it (``{"model": id, ...}``), or None."""
        path = self.models_dir / CURRENT_FILE
        if not path.is_file():
            return None
        data = read_json(path, "the round's model record (promote a model again)", ModelInstallError)
        return data if isinstance(data, dict) and isinstance(data.get("model"), str) else None

    def set_current(self, model_id: str, **details: object) -> Path:
        """Make ``model_id`` the round's model (only ``round promote`` calls this)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        return write_json_atomic({"model": model_id, "promoted_at": _now(), **details},
                                 self.models_dir / CURRENT_FILE)

    def _check_local_files(self, entry: CatalogueEntry, files: List[Path]) -> List[Tuple[Path, str]]:
        """Match files to the entry's assets and check them; return (file, sha256) in asset order."""
        if len(entry.assets) == 1 and len(files) == 1:
            pairs = [(entry.assets[0], files[0])]
        else:
            by_name = {path.name: path for path in files}
            missing = [asset.name for asset in entry.assets if asset.name not in by_name]
            if missing:
                raise ModelInstallError(
                    f"'{entry.id}' is made of {', '.join(a.name for a in entry.assets)}; "
                    f"missing from the given files: {', '.join(missing)}"
                )
            pairs = [(asset, by_name[asset.name]) for asset in entry.assets]
        checked = []
        for asset, path in pairs:
            if not path.is_file():
                raise ModelInstallError(f"{path}: no such file")
            checked.append((path, verify_file(path, sha256=asset.sha256, size=asset.size, name=str(path))))
        return checked

    def _stage(self, source: Path, work: Path, index: int) -> Tuple[Path, Path]:
        """Copy or extract ``source`` into ``work``; return (staged tree, its results folder)."""
        staged = work / f"staged{index}"
        if source.is_dir():
            results = ModelFolder.open(source).path  # validate in place: errors name the user's folder
            check_plain_folder(results)  # no link or device is followed into the store
            shutil.copytree(results, staged / results.name, symlinks=True)
            return staged, staged / results.name
        extract_zip(source, staged)
        with _named_after(source, staged):
            results = find_results_folder(staged)
        if results == staged:
            # The zip holds the results folder's content: its name (the configuration) is the zip's name.
            nested = work / f"nested{index}"
            nested.mkdir()
            os.rename(staged, nested / source.stem)
            return nested, nested / source.stem
        return staged, results

    @staticmethod
    def _merge_folds(results: Path, into: Path, source: Path, first: Path) -> None:
        """Move the fold folders of ``results`` into ``into`` (per-fold release files)."""
        for name in ("dataset.json", "plans.json"):
            if (results / name).read_bytes() != (into / name).read_bytes():
                raise ModelFolderError(
                    f"{source}: {name} differs from the one in {first}; these files are not parts of one model"
                )
        for fold in sorted(p for p in results.glob("fold_*") if p.is_dir()):
            if (into / fold.name).exists():
                raise ModelFolderError(f"{source}: {fold.name} is also in {first}")
            os.rename(fold, into / fold.name)

    def _install(
        self,
        model_id: str,
        sources: Sequence[Path],
        record: dict,
        folds: Optional[Sequence[str]],
    ) -> InstalledModel:
        """Stage ``sources`` (zips or a folder), validate, record, and move into place."""
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self.remove_stale_staging()
            work = make_staging_folder(self.models_dir, f".install-{model_id}")
        except OSError as error:
            raise ModelInstallError(f"cannot create a folder in {self.models_dir}: {error}") from error
        try:
            root = work / "model"
            first = sources[0]
            for index, source in enumerate(sources):
                staged, results = self._stage(source, work, index)
                if index == 0:
                    os.rename(staged, root)
                    merged = root / results.relative_to(staged)
                else:
                    self._merge_folds(results, merged, source, first)
            with _named_after(first, root):
                model = ModelFolder.open(merged)
            missing = sorted(set(folds or ()) - set(model.folds))
            if missing:
                raise ModelInstallError(f"{first}: fold(s) {missing} missing; found {model.folds}")
            record.update(
                files_sha256=model.file_sha256(),
                installed_at=_now(),
                installed_by=f"SpinalCordSeg {__version__}",
            )
            write_json_atomic(record, root / RECORD_FILE)
            self._move_into_place(root, self.models_dir / model_id, work)
        except OSError as error:
            raise ModelInstallError(
                f"cannot install '{model_id}' into {self.models_dir}{disk_full_hint(error)}: {error}"
            ) from error
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("installed model '%s' in %s", model_id, self.models_dir / model_id)
        return self._installed_at(self.models_dir / model_id)

    def remove_stale_staging(self) -> List[Path]:
        """Delete the staging folders of killed installs and removals; return (and log) them.

        Only ``.install-*`` / ``.remove-*`` folders that ``fileutil.stale_owned`` finds
        (their process is gone, or untouched for a day): never a live install's.
        A model that a killed reinstall had moved aside is moved back first.
        """
        def restore(folder: Path) -> None:
            prefix = owned_prefix(folder.name) or ""
            target = self.models_dir / prefix[len(".install-"):] if prefix.startswith(".install-") else None
            if target and (folder / "previous").is_dir() and not target.exists():
                os.rename(folder / "previous", target)
                logger.warning("restored model %s, moved aside by an interrupted reinstall", target)

        return remove_stale(self.models_dir, "an interrupted install or removal", before=restore, folders=True,
                            prefix=lambda name: name.startswith((".install-", ".remove-")))

    @staticmethod
    def _move_into_place(new: Path, target: Path, work: Path) -> None:
        """Rename ``new`` to ``target``; a model already there is swapped out, and back on failure."""
        previous = work / "previous"
        if target.exists():
            os.rename(target, previous)
        try:
            os.rename(new, target)
        except OSError:
            if previous.exists():
                os.rename(previous, target)
            raise

    def remove(self, model_id: str) -> InstalledModel:
        """Delete an installed model (renamed away first, so it never stays half-deleted)."""
        entry = self.catalogue.get(model_id)
        if entry is not None and entry.builtin:
            raise ModelInstallError(f"'{model_id}' is built into SpinalCordSeg; it cannot be removed")
        installed = self.get_installed(model_id)
        if installed is None:
            raise ModelInstallError(f"no installed model '{model_id}' in {self.models_dir}")
        try:
            self.remove_stale_staging()
            trash = make_staging_folder(self.models_dir, f".remove-{model_id}")
            os.rename(installed.path, trash / model_id)
        except OSError as error:
            raise ModelInstallError(f"cannot remove {installed.path}: {error}") from error
        shutil.rmtree(trash, ignore_errors=True)
        return installed

    def _offline_message(self, entry: CatalogueEntry) -> str:
        return (
            f"model '{entry.id}' is not installed and offline mode is on ({paths.OFFLINE_ENV}=1 or --offline): "
            f"nothing is downloaded. Install it when online with 'spinalcordseg models install {entry.id}', or "
            f"from its downloaded release file(s) ({', '.join(a.name for a in entry.assets)}) with "
            f"'spinalcordseg models install {entry.id} --from FILE...'"
        )

    # -- resolving -------------------------------------------------------

    def _install_on_first_use(self, entry: CatalogueEntry, confirm: Optional[Confirm],
                              progress: Optional[Progress] = None) -> InstalledModel:
        if self.offline:
            raise ModelInstallError(self._offline_message(entry))
        if confirm is None:
            raise ModelInstallError(
                f"model '{entry.id}' ({entry.name}) is not installed; install it with "
                f"'spinalcordseg models install {entry.id}'"
            )
        more = f" and {len(entry.assets) - 1} more file(s)" if len(entry.assets) > 1 else ""
        question = (
            f"Model '{entry.name}' ({entry.id} {entry.version or ''}) is not installed. Download it "
            f"({format_size(entry.download_size)}) from {entry.assets[0].urls[0]}{more} into {self.models_dir}?"
        )
        if not confirm(question):
            raise ModelInstallError(f"model '{entry.id}' is not installed: download declined")
        return self.install(entry.id, progress=progress)

    def _installed_zip(self, archive: Path) -> InstalledModel:
        """The installed copy of a custom zip (same sha256), installing it when there is none."""
        digest = sha256_of_file(archive)
        for model in self.installed():
            archives = model.record.get("archive_sha256") or {}
            if model.record.get("source") == "zip" and digest in archives.values():
                return model
        model_id = _id_from_name(archive)
        if (self.models_dir / model_id).exists() or self.catalogue.get(model_id) is not None \
                or reserved_id_problem(model_id):
            model_id = f"{model_id}-{digest[:8]}"
        return self.install_from(archive, model_id)

    def _locate(self, spec: str, confirm: Optional[Confirm], progress: Optional[Progress] = None
                ) -> Tuple[Path, Optional[CatalogueEntry], Optional[InstalledModel]]:
        """(folder holding the model, catalogue entry, installed model) for ``spec``."""
        if spec == CURRENT:
            current = self.current()
            if current is None:
                raise ModelInstallError(f"no current model in {self.models_dir}: promote one with "
                                        "'spinalcordseg round promote'")
            spec = current["model"]
        entry = self.catalogue.get(spec)
        if entry is not None and entry.runner:
            raise ModelInstallError(f"{entry.runner_note}. It gives disc labels, not masks: use it through "
                                    "'measure --discs', 'drift/batch --levels-with spine' or the Slicer panel's "
                                    "Vertebral levels section")
        if entry is not None and entry.builtin:
            if not entry.path.is_dir():
                raise ModelInstallError(
                    f"built-in model '{spec}' is not part of this build ({entry.path} not found)"
                )
            return entry.path, entry, None
        if entry is not None:
            installed = self.get_installed(spec) or self._install_on_first_use(entry, confirm, progress)
            if installed.version != entry.version:
                logger.warning("model '%s': version %s is installed, the catalogue has %s; update it with "
                               "'spinalcordseg models install %s --force'", spec, installed.version,
                               entry.version, spec)
            return installed.path, entry, installed
        if is_valid_id(spec) and (self.models_dir / spec).is_dir():
            installed = self._installed_at(self.models_dir / spec)
            return installed.path, None, installed
        path = Path(spec).expanduser()
        if path.is_dir():
            return path, None, None
        if path.is_file():
            installed = self._installed_zip(path)
            return installed.path, None, installed
        raise ModelInstallError(
            f"unknown model {spec!r}: not a catalogue id (see 'spinalcordseg models list'), not a model "
            f"installed in {self.models_dir}, and no such folder or zip"
        )

    @staticmethod
    def _pinned(entry: Optional[CatalogueEntry], installed: Optional[InstalledModel],
                files: Dict[str, str]) -> Optional[str]:
        """``builtin`` / ``pinned`` when the catalogue's checksums vouch for every file, else None."""
        if entry is None or not files:
            return None
        pins = entry.files_sha256
        if pins and all(pins.get(name) == digest for name, digest in files.items()):
            return "builtin" if entry.builtin else "pinned"
        record = installed.record if installed is not None else {}
        archives = record.get("archive_sha256") or {}
        if (entry.assets_pinned and record.get("files_sha256") == files
                and all(archives.get(asset.name) == asset.sha256 for asset in entry.assets)):
            return "pinned"  # verified archives at install, every file unchanged since
        return None

    def resolve(self, spec: str, *, trust: bool = False, confirm: Optional[Confirm] = None,
                progress: Optional[Progress] = None) -> ResolvedModel:
        """See :func:`resolve_model`."""
        location, entry, installed = self._locate(spec, confirm, progress)
        model = ModelFolder.open(location)
        state = self._trust_state(model, entry, installed)
        reason = state.status
        if not state.trusted:
            if entry is not None:
                label = f"model '{entry.id}' ({entry.name}, {model.path})"
                why = ("its files do not match the catalogue's pinned checksums"
                       if entry.files_sha256 or entry.assets_pinned
                       else "the catalogue pins no checksum for this release")
            else:
                label = f"model '{installed.id}' ({model.path})" if installed else f"model folder {model.path}"
                why = "it is not from the catalogue and you have not trusted these files"
            if state.changes:
                why = f"{why}; {state.since}:"
            reason = self._ask_trust(label, why, model, state, trust, confirm)
        version = installed.version if installed is not None else (entry.version if entry else None)
        return ResolvedModel(
            folder=model.path,
            model_id=entry.id if entry else (installed.id if installed else None),
            version=version,
            sha256={fold: state.files[model.checkpoint_file(fold)] for fold in model.folds},
            files_sha256=state.files,
            trusted_because=reason,
            orientation=entry.orientation if entry else None,
            crop_with=entry.crop_with if entry else None,
        )

    def _ask_trust(self, label: str, why: str, model: ModelFolder, state: TrustState,
                   trust: bool, confirm: Optional[Confirm]) -> str:
        """Return ``"user"`` once the user trusts the folder's files; raise UntrustedModelError otherwise."""
        checks = [check_weights_only(model.checkpoint_path(fold)) for fold in model.folds]
        message = untrusted_message(label, why, checks, list(state.changes.values()))
        remembered = f"the decision is remembered by the checksums of its files in {self.trust_store.path}"
        if trust or (confirm is not None and confirm(f"{message}\nTrust this model folder? ({remembered})")):
            self.trust_store.trust(model.path, state.files, checks, source=label)
            logger.info("%s\ntrusted at the user's request; %s", message, remembered)
            return "user"
        raise UntrustedModelError(
            f"{message}\nIf you trust where it comes from, run again with --trust (command line) or accept "
            f"the question in Slicer; {remembered}."
        )


def resolve_model(
    spec: str,
    *,
    trust: bool = False,
    confirm: Optional[Callable[[str], bool]] = None,
    offline: Optional[bool] = None,
    progress: Optional[Progress] = None,
) -> ResolvedModel:
    """Return a trusted, validated model for ``spec``, installing it first when needed.

    Args:
        spec: a catalogue id (installed on first use), the id of an installed
            model, a results folder (used in place) or a zip (installed once,
            found again by its sha256).
        trust: trust the folder's files if they are not trusted yet, and
            remember it (the ``--trust`` flag).
        confirm: asked ``confirm(message) -> bool`` before downloading a
            catalogue model and before trusting a model folder (a dialog in
            Slicer, a prompt on a terminal). None: never ask; a missing
            catalogue model raises ModelInstallError saying how to install it.
        offline: never touch the network (default: ``SPINALCORDSEG_OFFLINE``).
        progress: called with (bytes done, total or None) while a first use
            downloads the model; it may raise (CancelledError) to stop.

    Raises:
        ModelInstallError: unknown spec; not installed and not confirmed or
            offline; download or install failure.
        ModelFolderError: not a valid nnU-Net results folder.
        UntrustedModelError: the folder's files are not trusted and not
            confirmed; the message says which file changed (when one did),
            what to do and whether weights-only loading works.
    """
    return ModelStore(offline=offline).resolve(spec, trust=trust, confirm=confirm, progress=progress)
