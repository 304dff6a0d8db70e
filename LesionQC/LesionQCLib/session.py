"""Review sessions: from a manifest of cases to a blinded session folder, and back.

A manifest lists the cases to review. CSV, one row per case, one ``seg:<source>``
column per segmentation source; every other column (``contrast``...) is
metadata that sampling can stratify by::

    case_id,image,image2,contrast,seg:manual,seg:nnunet
    sub-01,sub-01/T2w.nii.gz,,T2w,sub-01/T2w_manual.nii.gz,sub-01/T2w_nnunet.nii.gz

or JSON::

    {"cases": [{"case_id": "sub-01", "image": "sub-01/T2w.nii.gz", "metadata": {"contrast": "T2w"},
                "segmentations": [{"source": "manual", "path": "sub-01/T2w_manual.nii.gz"},
                                  {"source": "nnunet", "path": "sub-01/T2w_nnunet.nii.gz"}]}]}

Relative paths are relative to the manifest's folder. :func:`make_session` writes::

    SESSION/session.json            what the rating view reads: scale, labels, case order,
                                    anonymous items (A, B, ...) and their files; no sources
    SESSION/cases/<case>/image.nii.gz, image2.nii.gz, A.nii.gz, B.nii.gz, ...
    SESSION/ratings/                one table per rater (see rater_table.py)
    SESSION/key.json                item -> source per case, seed, metadata (or --key PATH)

Segmentations are rewritten as plain uint8 label maps on their image's grid, so
that neither file names, data types nor header notes tell the source apart.
The seed fixes the sample, the case order and the letters of every case: the
same manifest and seed give the same session (same ``session_id``).

Example:
    >>> from LesionQCLib.session import make_session, SessionView, load_key
    >>> view = make_session("manifest.csv", "qc-session", seed=7, sample=40, stratify_by="contrast")
    ... # doctest: +SKIP
    >>> view = SessionView.load("qc-session")          # the rating view  # doctest: +SKIP
    >>> key = load_key("qc-session/key.json", view)    # analysis only    # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import secrets
import shutil
import string
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from SpinalCordSegLib.fileutil import make_staging_folder, write_text_atomic

from .errors import KeyMismatchError, ManifestError, SessionError
from .scales import Scale, default_scale

SESSION_FILE = "session.json"
KEY_FILE = "key.json"
RATINGS_DIR = "ratings"
SESSION_FORMAT = "lesionqc-session"
KEY_FORMAT = "lesionqc-key"
FORMAT_VERSION = 1
SEG_COLUMN_PREFIX = "seg:"
RESERVED_COLUMNS = ("case_id", "image", "image2")
#: Case ids and source names become folder names and CSV cells.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Grids that differ by less than this (mm, direction cosines) are the same grid.
GRID_TOLERANCE = 1e-3

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestCase:
    """One case of a manifest: its image(s), segmentations by source, metadata."""

    case_id: str
    image: Path
    image2: Optional[Path]
    segmentations: Dict[str, Path]
    metadata: Dict[str, str] = field(default_factory=dict)
    where: str = ""  # "manifest.csv line 3", for error messages


def read_manifest(path: PathLike) -> List[ManifestCase]:
    """Read a CSV or JSON manifest; check ids, sources and that every file exists.

    Raises ManifestError naming the manifest and every problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: spreadsheets add a BOM
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error})") from None
    if path.suffix.lower() == ".json":
        cases = _cases_from_json(path, text)
    elif path.suffix.lower() in (".csv", ".tsv"):
        cases = _cases_from_csv(path, text, "\t" if path.suffix.lower() == ".tsv" else ",")
    else:
        raise ManifestError(f"{path}: a manifest must be a .csv, .tsv or .json file")
    _check_cases(path, cases)
    return cases


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _cases_from_csv(path: Path, text: str, delimiter: str) -> List[ManifestCase]:
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise ManifestError(f"{path}: empty manifest")
    header = [name.strip() for name in header]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    missing = [name for name in ("case_id", "image") if name not in header]
    sources = [name[len(SEG_COLUMN_PREFIX):].strip() for name in header if name.startswith(SEG_COLUMN_PREFIX)]
    if duplicates or missing or not sources:
        raise ManifestError(
            f"{path}: the header needs 'case_id', 'image' and one 'seg:<source>' column per source"
            f" (missing: {missing}, duplicate columns: {duplicates}, sources: {sources})"
        )
    cases = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(values) != len(header):
            raise ManifestError(f"{path} line {line}: {len(values)} cells for {len(header)} columns")
        row = {name: value.strip() for name, value in zip(header, values)}
        where = f"{path} line {line}"
        segmentations = {}
        for name in header:
            if name.startswith(SEG_COLUMN_PREFIX):
                source = name[len(SEG_COLUMN_PREFIX):].strip()
                if not row[name]:
                    raise ManifestError(f"{where}: no segmentation for source {source!r} (empty cell)")
                segmentations[source] = _resolve(path.parent, row[name])
        metadata = {k: v for k, v in row.items() if k not in RESERVED_COLUMNS and not k.startswith(SEG_COLUMN_PREFIX)}
        cases.append(ManifestCase(
            case_id=row["case_id"],
            image=_resolve(path.parent, row["image"]) if row["image"] else Path(),
            image2=_resolve(path.parent, row["image2"]) if row.get("image2") else None,
            segmentations=segmentations,
            metadata=metadata,
            where=where,
        ))
    return cases


def _cases_from_json(path: Path, text: str) -> List[ManifestCase]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from None
    entries = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: expected a list of cases or {{\"cases\": [...]}}")
    cases = []
    for index, entry in enumerate(entries):
        where = f"{path} cases[{index}]"
        segmentations_list = entry.get("segmentations") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(segmentations_list, list):
            raise ManifestError(f"{where}: a case needs 'case_id', 'image' and a 'segmentations' list")
        segmentations = {}
        for seg in segmentations_list:
            if not isinstance(seg, dict) or not isinstance(seg.get("source"), str) or not seg.get("path"):
                raise ManifestError(f"{where}: each segmentation needs 'source' and 'path'")
            if seg["source"] in segmentations:
                raise ManifestError(f"{where}: source {seg['source']!r} given twice")
            segmentations[seg["source"]] = _resolve(path.parent, str(seg["path"]))
        metadata = entry.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ManifestError(f"{where}: 'metadata' must be an object")
        cases.append(ManifestCase(
            case_id=str(entry.get("case_id", "")),
            image=_resolve(path.parent, str(entry["image"])) if entry.get("image") else Path(),
            image2=_resolve(path.parent, str(entry["image2"])) if entry.get("image2") else None,
            segmentations=segmentations,
            metadata={str(k): str(v) for k, v in metadata.items()},
            where=where,
        ))
    return cases


def _check_cases(path: Path, cases: Sequence[ManifestCase]) -> None:
    if not cases:
        raise ManifestError(f"{path}: the manifest lists no case")
    problems = []
    ids = [case.case_id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"duplicate case ids: {duplicates}")
    first_sources = sorted(cases[0].segmentations)
    for case in cases:
        if not NAME.match(case.case_id):
            problems.append(f"{case.where}: case id {case.case_id!r} must be letters, digits, '.', '_' or '-'")
        bad_sources = [s for s in case.segmentations if not NAME.match(s)]
        if bad_sources:
            problems.append(f"{case.where}: source names {bad_sources} must be letters, digits, '.', '_' or '-'")
        if not case.segmentations:
            problems.append(f"{case.where}: no segmentation")
        elif sorted(case.segmentations) != first_sources:
            # Paired comparisons need every source on every case.
            problems.append(f"{case.where}: sources {sorted(case.segmentations)} differ from {first_sources}")
        if case.image == Path():
            problems.append(f"{case.where}: no image")
        files = [case.image, case.image2] + list(case.segmentations.values())
        missing = [str(f) for f in files if f is not None and f != Path() and not f.is_file()]
        if missing:
            problems.append(f"{case.where}: missing files: {', '.join(missing)}")
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))


# --------------------------------------------------------------------------- sampling


def sample_cases(cases: Sequence[ManifestCase], count: int, rng: np.random.Generator,
                 stratify_by: Optional[str] = None) -> List[ManifestCase]:
    """Draw ``count`` cases without replacement, in manifest order.

    With ``stratify_by`` (a metadata column), every stratum gets its share of
    ``count`` in proportion to its size (largest remainders get the rounding).
    """
    if not 1 <= count <= len(cases):
        raise ManifestError(f"cannot sample {count} cases from a manifest of {len(cases)}")
    if stratify_by is None:
        chosen = rng.choice(len(cases), size=count, replace=False)
        return [cases[i] for i in sorted(chosen)]
    strata: Dict[str, List[int]] = {}
    for index, case in enumerate(cases):
        value = case.metadata.get(stratify_by, "")
        if not value:
            raise ManifestError(f"{case.where}: no value in column {stratify_by!r} to stratify by")
        strata.setdefault(value, []).append(index)
    names = sorted(strata)
    exact = [count * len(strata[name]) / len(cases) for name in names]
    quotas = [int(share) for share in exact]
    by_remainder = sorted(range(len(names)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[:count - sum(quotas)]:
        quotas[i] += 1
    chosen = []
    for name, quota in zip(names, quotas):
        members = strata[name]
        chosen.extend(members[i] for i in rng.choice(len(members), size=quota, replace=False))
    return [cases[i] for i in sorted(chosen)]


def item_letters(count: int) -> List[str]:
    """Anonymous item ids: A, B, ... Z (a case has at most 26 sources)."""
    if count > len(string.ascii_uppercase):
        raise ManifestError(f"{count} sources per case; at most {len(string.ascii_uppercase)} are supported")
    return list(string.ascii_uppercase[:count])


# --------------------------------------------------------------------------- rating view


@dataclass(frozen=True)
class ItemView:
    """An anonymous segmentation of a case, as the rater sees it."""

    item_id: str
    path: Path


@dataclass(frozen=True)
class CaseView:
    """A case as the rater sees it: image(s) and anonymous items, in display order."""

    case_id: str
    image: Path
    image2: Optional[Path]
    items: Tuple[ItemView, ...]

    @property
    def item_ids(self) -> Tuple[str, ...]:
        return tuple(item.item_id for item in self.items)


@dataclass(frozen=True)
class SessionView:
    """What the rating view knows of a session (``session.json`` only; never the key)."""

    folder: Path
    session_id: str
    scale: Scale
    labels: Dict[int, str]
    cases: Tuple[CaseView, ...]

    @classmethod
    def load(cls, folder: PathLike) -> "SessionView":
        """Read and check ``folder/session.json``."""
        folder = Path(folder).resolve()
        path = folder / SESSION_FILE
        data = _read_json(path, SessionError, "session file")
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise SessionError(f"{path}: not a LesionQC session file")
        if data.get("format_version") != FORMAT_VERSION:
            raise SessionError(f"{path}: session format version {data.get('format_version')!r} is not supported")
        try:
            scale = Scale.from_dict(data["scale"], origin=f"{path} 'scale'")
            labels = {int(value): str(name) for value, name in data["labels"].items()}
            cases = tuple(
                CaseView(
                    case_id=str(case["case_id"]),
                    image=_inside(folder, case["image"], path),
                    image2=_inside(folder, case["image2"], path) if case.get("image2") else None,
                    items=tuple(ItemView(str(item["item"]), _inside(folder, item["path"], path))
                                for item in case["items"]),
                )
                for case in data["cases"]
            )
            session_id = str(data["session_id"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SessionError(f"{path}: malformed session file ({type(error).__name__}: {error})") from None
        ids = [case.case_id for case in cases]
        if not cases or len(set(ids)) != len(ids) or any(len(set(c.item_ids)) != len(c.item_ids) for c in cases):
            raise SessionError(f"{path}: no cases, or duplicate case or item ids")
        return cls(folder, session_id, scale, labels, cases)

    def case(self, case_id: str) -> CaseView:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise SessionError(f"{self.folder / SESSION_FILE}: no case {case_id!r}")

    @property
    def ratings_dir(self) -> Path:
        return self.folder / RATINGS_DIR


def _inside(folder: Path, relative: str, origin: Path) -> Path:
    """A session path: relative, and inside the session folder (sessions move between machines)."""
    candidate = (folder / relative).resolve()
    if Path(relative).is_absolute() or folder not in candidate.parents:
        raise SessionError(f"{origin}: path {relative!r} is not inside the session folder")
    return candidate


def _read_json(path: Path, error_class: type, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error_class(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise error_class(f"{path}: cannot read the {what} ({error})") from None


# --------------------------------------------------------------------------- key


@dataclass(frozen=True)
class SessionKey:
    """Which source is behind every anonymous item (read by the analysis only)."""

    path: Path
    session_id: str
    sources: Tuple[str, ...]
    items: Dict[str, Dict[str, str]]  # case -> item -> source
    metadata: Dict[str, Dict[str, str]]  # case -> column -> value

    def source(self, case_id: str, item_id: str) -> str:
        return self.items[case_id][item_id]


def load_key(path: PathLike, session: SessionView) -> SessionKey:
    """Read a key file and check that it belongs to ``session`` item for item."""
    path = Path(path)
    data = _read_json(path, KeyMismatchError, "key file")
    if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
        raise KeyMismatchError(f"{path}: not a LesionQC key file")
    if data.get("session_id") != session.session_id:
        raise KeyMismatchError(
            f"{path}: key of session {data.get('session_id')!r}, but {session.folder} is session"
            f" {session.session_id!r}"
        )
    try:
        sources = tuple(str(s) for s in data["sources"])
        items = {str(c): {str(i): str(s) for i, s in entry["items"].items()} for c, entry in data["cases"].items()}
        metadata = {str(c): dict(entry.get("metadata", {})) for c, entry in data["cases"].items()}
    except (KeyError, TypeError, AttributeError) as error:
        raise KeyMismatchError(f"{path}: malformed key file ({type(error).__name__}: {error})") from None
    problems = []
    session_cases = {case.case_id: case for case in session.cases}
    if set(items) != set(session_cases):
        problems.append(f"cases differ (only in key: {sorted(set(items) - set(session_cases))},"
                        f" only in session: {sorted(set(session_cases) - set(items))})")
    for case_id in sorted(set(items) & set(session_cases)):
        if set(items[case_id]) != set(session_cases[case_id].item_ids):
            problems.append(f"case {case_id!r}: key items {sorted(items[case_id])} but session items"
                            f" {sorted(session_cases[case_id].item_ids)}")
        unknown = sorted(set(items[case_id].values()) - set(sources))
        if unknown or len(set(items[case_id].values())) != len(items[case_id]):
            problems.append(f"case {case_id!r}: sources {sorted(items[case_id].values())} do not match {sources}")
    if problems:
        raise KeyMismatchError(f"{path} does not match session {session.folder}: " + "; ".join(problems))
    return SessionKey(path, session.session_id, sources, items, metadata)


# --------------------------------------------------------------------------- building


def make_session(manifest: PathLike, session_dir: PathLike, seed: Optional[int] = None,
                 sample: Optional[int] = None, stratify_by: Optional[str] = None,
                 scale: Optional[Scale] = None, key_path: Optional[PathLike] = None,
                 label_names: Optional[Mapping[int, str]] = None) -> SessionView:
    """Build a blinded session folder from a manifest; return its rating view.

    Args:
        manifest: CSV or JSON manifest (see the module docstring).
        session_dir: folder to create; it must not exist or be empty (nothing is overwritten).
        seed: fixes the sample, the case order and the item letters; random (and recorded
            in the key) when None.
        sample: review only this many cases (all of them when None).
        stratify_by: metadata column whose strata keep their proportions in the sample.
        scale: rating scale (the default 5-point Likert scale when None).
        key_path: where to write the key; ``session_dir/key.json`` when None. Keep it away from
            the raters, for example outside the folder handed to them.
        label_names: names of label values (``{1: "cord", 2: "lesion"}``) shown in Slicer.
    """
    manifest = Path(manifest)
    session_dir = Path(session_dir).resolve()
    key_path = Path(key_path).resolve() if key_path is not None else session_dir / KEY_FILE
    scale = scale or default_scale()
    if stratify_by is not None and sample is None:
        raise SessionError(f"stratifying by {stratify_by!r} needs a sample size")
    if session_dir in key_path.parents and key_path.parent != session_dir:
        raise SessionError(f"{key_path}: a key inside the session folder goes directly in it, not in a subfolder")
    cases = read_manifest(manifest)
    if session_dir.exists() and (not session_dir.is_dir() or any(session_dir.iterdir())):
        raise SessionError(f"{session_dir}: already exists and is not empty; nothing was overwritten")
    if key_path.exists():
        raise SessionError(f"{key_path}: a key file already exists; nothing was overwritten")
    if seed is None:
        seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    chosen = sample_cases(cases, sample, rng, stratify_by) if sample is not None else list(cases)
    order = [chosen[i] for i in rng.permutation(len(chosen))]
    sources = sorted(order[0].segmentations)
    letters = item_letters(len(sources))
    # Letters follow a random order of the sources, drawn case by case in review order.
    assignments = [dict(zip(letters, (sources[i] for i in rng.permutation(len(sources))))) for _ in order]

    session_dir.parent.mkdir(parents=True, exist_ok=True)
    building = make_staging_folder(session_dir.parent, f".{session_dir.name}.building")  # raters must read it
    external_key: Optional[Path] = None  # a key written outside the folder, removed if the build fails
    try:
        session_cases, key_cases, values = [], {}, set()
        for case, items in zip(order, assignments):
            entry, present = _write_case(building, case, items)
            session_cases.append(entry)
            values |= present
            key_cases[case.case_id] = {
                "items": items,
                "metadata": case.metadata,
                "image": str(case.image.resolve()),
                "image2": str(case.image2.resolve()) if case.image2 else None,
                "segmentations": {s: str(p.resolve()) for s, p in case.segmentations.items()},
            }
        labels = _label_names(values, label_names or {})
        content = {"scale": scale.to_dict(), "labels": labels, "cases": session_cases}
        session_id = _session_id(building, content, assignments)
        session = {"format": SESSION_FORMAT, "format_version": FORMAT_VERSION, "session_id": session_id, **content}
        key = {
            "format": KEY_FORMAT, "format_version": FORMAT_VERSION, "session_id": session_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "manifest": str(manifest.resolve()), "manifest_sha256": _sha256(manifest),
            "seed": seed, "sample": {"count": sample, "stratify_by": stratify_by},
            "sources": sources, "cases": key_cases,
        }
        (building / RATINGS_DIR).mkdir()
        (building / SESSION_FILE).write_text(json.dumps(session, indent=2) + "\n", encoding="utf-8")
        if key_path.parent == session_dir:
            (building / key_path.name).write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
        else:
            write_text_atomic(json.dumps(key, indent=2) + "\n", key_path, replace=False)
            external_key = key_path
        if session_dir.exists():
            session_dir.rmdir()  # empty, checked above
        os.rename(building, session_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        if external_key is not None:
            external_key.unlink()
        raise
    return SessionView.load(session_dir)


def _write_case(building: Path, case: ManifestCase, items: Mapping[str, str]) -> Tuple[dict, set]:
    """Copy a case's images and write its items as anonymous label maps; return its session entry."""
    folder = building / "cases" / case.case_id
    folder.mkdir(parents=True)
    image = _read_image(case.image, case.where)
    image_name = "image" + _suffix(case.image)
    shutil.copyfile(case.image, folder / image_name)  # the scan itself, byte for byte
    entry: Dict[str, Any] = {"case_id": case.case_id, "image": f"cases/{case.case_id}/{image_name}", "image2": None}
    if case.image2 is not None:
        _read_image(case.image2, case.where)
        image2_name = "image2" + _suffix(case.image2)
        shutil.copyfile(case.image2, folder / image2_name)
        entry["image2"] = f"cases/{case.case_id}/{image2_name}"
    entry["items"] = []
    values: set = set()
    for item_id in sorted(items):
        source_path = case.segmentations[items[item_id]]
        labelmap = _anonymous_labelmap(source_path, image, case.where)
        values |= {int(v) for v in np.unique(sitk.GetArrayViewFromImage(labelmap)) if v}
        sitk.WriteImage(labelmap, str(folder / f"{item_id}.nii.gz"), useCompression=True)
        entry["items"].append({"item": item_id, "path": f"cases/{case.case_id}/{item_id}.nii.gz"})
    return entry, values


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _read_image(path: Path, where: str) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ManifestError(f"{where}: cannot read {path} ({str(error).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ManifestError(f"{where}: {path} is not a 3D single-channel image (size {image.GetSize()})")
    return image


def _anonymous_labelmap(path: Path, image: sitk.Image, where: str) -> sitk.Image:
    """The segmentation as a uint8 label map on the image's grid, without its header notes."""
    segmentation = _read_image(path, where)
    same_grid = (
        segmentation.GetSize() == image.GetSize()
        and np.allclose(segmentation.GetSpacing(), image.GetSpacing(), atol=GRID_TOLERANCE)
        and np.allclose(segmentation.GetOrigin(), image.GetOrigin(), atol=GRID_TOLERANCE)
        and np.allclose(segmentation.GetDirection(), image.GetDirection(), atol=GRID_TOLERANCE)
    )
    if not same_grid:
        raise ManifestError(
            f"{where}: segmentation {path} is not on the grid of its image (size {segmentation.GetSize()} vs"
            f" {image.GetSize()}, spacing {segmentation.GetSpacing()} vs {image.GetSpacing()})"
        )
    array = sitk.GetArrayFromImage(segmentation)
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or array.min() < 0 or array.max() > 255:
        raise ManifestError(f"{where}: segmentation {path} must hold integer labels 0-255 (binary or label map)")
    labelmap = sitk.GetImageFromArray(array.astype(np.uint8))
    labelmap.CopyInformation(image)  # grid only: no metadata travels with it
    return labelmap


def _label_names(values: set, names: Mapping[int, str]) -> Dict[str, str]:
    default = "segmentation" if values == {1} else None
    return {str(v): names.get(v) or default or f"label {v}" for v in sorted(values | set(names))}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session_id(building: Path, content: Mapping[str, Any], assignments: Sequence[Mapping[str, str]]) -> str:
    """A digest of everything that defines the session: same manifest, files and seed -> same id."""
    files = {p.relative_to(building).as_posix(): _sha256(p) for p in building.rglob("*") if p.is_file()}
    payload = json.dumps({"content": content, "files": files, "key": list(assignments)}, sort_keys=True)
    return "lqc-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
