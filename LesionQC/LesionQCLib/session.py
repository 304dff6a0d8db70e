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
    SESSION/cases/<case>/image.nii.gz, image2.nii.gz, A.nii, B.nii, ...
    SESSION/ratings/                one table per rater (see rater_table.py)
    SESSION-key.json                item -> source per case, seed, metadata (or --key PATH),
                                    beside the folder handed to the raters, not in it

Segmentations are rewritten as uncompressed uint8 label maps on their image's
grid, with one timestamp for every file, so that neither file names, sizes,
times, data types nor header notes tell the source apart. The seed fixes the
sample, the case order, the letters of every case and the repeats (a share of
the cases shown again later, for intra-rater agreement; then every case has an
anonymous id, ``case-07``, so that a repeat looks like any other case). The
``session_id`` is random: it depends on nothing in the key.

Example:
    >>> from LesionQCLib.session import make_session, SessionView, find_key, load_key
    >>> view = make_session("manifest.csv", "qc-session", seed=7, sample=40, stratify_by="contrast")
    ... # doctest: +SKIP
    >>> view = SessionView.load("qc-session")          # the rating view  # doctest: +SKIP
    >>> key = load_key(find_key(view), view)          # analysis only    # doctest: +SKIP
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
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

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
#: Case ids, source names and rater ids become folder or file names and CSV cells.
#: Always ``fullmatch``: ``$`` would let a trailing line break through.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Device names that Windows reserves in every folder, whatever follows the first dot
#: ("CON.csv" opens the console): refused on every platform, so sessions move freely.
RESERVED_NAMES = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
                           + [f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789"])

PathLike = Union[str, Path]
#: Colour of a label value (1 = first colour...), the same for every item and case, in Slicer and in the browser.
SEGMENT_COLORS: Tuple[Tuple[float, float, float], ...] = (
    (1.0, 0.85, 0.1), (0.95, 0.25, 0.2), (0.2, 0.6, 1.0), (0.3, 0.85, 0.3), (0.8, 0.4, 0.9),
)


def segment_color(label_value: int) -> Tuple[float, float, float]:
    """The display colour of a label value (red, green, blue in 0-1).

    Example:
        >>> segment_color(1)
        (1.0, 0.85, 0.1)
    """
    return SEGMENT_COLORS[(label_value - 1) % len(SEGMENT_COLORS)]


def is_portable_name(name: str) -> bool:
    """True if ``name`` can name a file or folder on Linux, macOS and Windows alike.

    Letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit),
    no trailing dot (Windows drops it) and no reserved device name such as ``CON``.

    Example:
        >>> is_portable_name("sub-01"), is_portable_name("con"), is_portable_name("LPT1.a")
        (True, False, False)
    """
    return (isinstance(name, str) and bool(NAME.fullmatch(name)) and not name.endswith(".")
            and name.split(".")[0].upper() not in RESERVED_NAMES)


def default_key_path(session_dir: PathLike) -> Path:
    """Where a session's key goes by default: ``<session>-key.json`` beside the folder, never in it.

    Example:
        >>> default_key_path("/data/qc-session").name
        'qc-session-key.json'
    """
    session_dir = Path(session_dir).resolve()
    return session_dir.parent / f"{session_dir.name}-key.json"


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
    #: Sources made of one binary mask per label value (a batch's per-structure masks):
    #: source -> ((label value, mask), ...), later values painted over earlier ones.
    label_masks: Dict[str, Tuple[Tuple[int, Path], ...]] = field(default_factory=dict)

    @property
    def sources(self) -> List[str]:
        return sorted(set(self.segmentations) | set(self.label_masks))

    def files(self) -> List[Path]:
        """Every input file of the case."""
        masks = [path for parts in self.label_masks.values() for _, path in parts]
        return [f for f in [self.image, self.image2] + list(self.segmentations.values()) + masks if f is not None]


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
    check_cases(path, cases)
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
    problems = [f"no {name!r} column" for name in missing]
    problems += ["no 'seg:<source>' column (such as seg:model)"] if not sources else []
    problems += [f"duplicate columns {', '.join(map(repr, duplicates))}"] if duplicates else []
    if problems:
        raise ManifestError(
            f"{path}: {'; '.join(problems)}: the header needs 'case_id', 'image' and one 'seg:<source>' "
            f"column per source (the header is: {', '.join(header)})"
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


def check_cases(path: PathLike, cases: Sequence[ManifestCase]) -> None:
    """Raise ManifestError naming ``path`` and every problem: ids, sources, missing files."""
    if not cases:
        raise ManifestError(f"{path}: the manifest lists no case")
    problems = []
    # Folders named "sub-01" and "SUB-01" are one folder on macOS and Windows.
    ids = [case.case_id.lower() for case in cases]
    duplicates = sorted({case.case_id for case in cases if ids.count(case.case_id.lower()) > 1})
    if duplicates:
        problems.append(f"duplicate case ids: {duplicates}")
    first_sources = cases[0].sources
    rule = "must be letters, digits, '.', '_' or '-', not end with '.' nor be a reserved name such as CON"
    for case in cases:
        if not is_portable_name(case.case_id):
            problems.append(f"{case.where}: case id {case.case_id!r} {rule}")
        bad_sources = [s for s in case.sources if not is_portable_name(s)]
        if bad_sources:
            problems.append(f"{case.where}: source names {bad_sources} {rule}")
        if not case.sources:
            problems.append(f"{case.where}: no segmentation")
        elif case.sources != first_sources:
            # Paired comparisons need every source on every case.
            problems.append(f"{case.where}: sources {case.sources} differ from {first_sources}")
        if case.image == Path():
            problems.append(f"{case.where}: no image")
        missing = [str(f) for f in case.files() if f != Path() and not f.is_file()]
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
        raise ManifestError(f"cannot sample {count} cases: there are {len(cases)} case(s) to review"
                            + ("" if count >= 1 else "; --sample must be at least 1"))
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
        # Ids become CSV cells and file names of the rater tables: whole names only, no line breaks.
        bad = [f"session id {session_id!r}"] if not is_portable_name(session_id) else []
        bad += [f"case id {case.case_id!r}" for case in cases if not is_portable_name(case.case_id)]
        bad += [f"item id {item!r} of case {case.case_id!r}" for case in cases for item in case.item_ids
                if not is_portable_name(item)]
        if bad:
            raise SessionError(f"{path}: {', '.join(bad)}: not a name (letters, digits, '.', '_', '-')")
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


def session_folder_around(path: PathLike) -> Optional[Path]:
    """The session folder that ``path`` is (or is inside), links resolved; None when there is none.

    Raters are handed session folders: results that name sources must never go there.

    Example:
        >>> session_folder_around("/data/qc-session/results")   # doctest: +SKIP
        PosixPath('/data/qc-session')
    """
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if not (folder / SESSION_FILE).is_file():  # a FIFO or a device there must not block or flood the read
            continue
        try:
            with open(folder / SESSION_FILE, "rb") as stream:
                head = stream.read(1 << 20)  # make_session writes the format first
        except OSError:
            continue
        if SESSION_FORMAT.encode() in head:
            return folder
    return None


def refuse_output_in_session(path: PathLike, what: str) -> None:
    """Raise SessionError when ``path`` (an output of the analysis) is in a session folder."""
    folder = session_folder_around(path)
    if folder is not None:
        raise SessionError(
            f"{path}: {what} would be inside the session folder {folder}, which is handed to the raters and"
            " must not tell the sources; write it elsewhere (beside the session folder)")


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
    """Which source is behind every anonymous item (read by the analysis only).

    Cases are the session's case ids (what the raters see). In a session with
    repeats, those are anonymous (``case-07``); ``case_of`` gives the real case
    and ``showing`` tells the first showing (1) from the repeat (2).
    """

    path: Path
    session_id: str
    sources: Tuple[str, ...]
    items: Dict[str, Dict[str, str]]  # session case -> item -> source
    metadata: Dict[str, Dict[str, str]]  # session case -> column -> value
    case_of: Dict[str, str] = field(default_factory=dict)  # session case -> real case
    showing: Dict[str, int] = field(default_factory=dict)  # session case -> 1 (first) or 2 (repeat)
    images: Dict[str, str] = field(default_factory=dict)  # session case -> the original scan
    model_source: Optional[str] = None  # the source that is a model's output, where the key knows it

    def source(self, case_id: str, item_id: str) -> str:
        return self.items[case_id][item_id]


def find_key(session: SessionView) -> Path:
    """The key where :func:`make_session` puts it: beside the session, else inside (``key_inside``)."""
    outside, inside = default_key_path(session.folder), session.folder / KEY_FILE
    return inside if inside.is_file() and not outside.is_file() else outside


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
        entries = data["cases"].items()
        items = {str(c): {str(i): str(s) for i, s in entry["items"].items()} for c, entry in entries}
        metadata = {str(c): {str(k): str(v) for k, v in entry.get("metadata", {}).items()} for c, entry in entries}
        case_of = {str(c): str(entry.get("case", c)) for c, entry in entries}
        showing = {str(c): int(entry.get("showing", 1)) for c, entry in entries}
        images = {str(c): str(entry.get("image", "")) for c, entry in entries}
        model_source = data.get("model_source")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
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
    if model_source is not None and model_source not in sources:
        problems.append(f"model source {model_source!r} is not one of {sources}")
    if problems:
        raise KeyMismatchError(f"{path} does not match session {session.folder}: " + "; ".join(problems))
    return SessionKey(path, session.session_id, sources, items, metadata, case_of, showing, images, model_source)


# --------------------------------------------------------------------------- building


def make_session(manifest: PathLike, session_dir: PathLike, seed: Optional[int] = None,
                 sample: Optional[int] = None, stratify_by: Optional[str] = None,
                 scale: Optional[Scale] = None, key_path: Optional[PathLike] = None,
                 label_names: Optional[Mapping[int, str]] = None, repeat_fraction: float = 0.0,
                 key_inside: bool = False) -> SessionView:
    """Build a blinded session folder from a manifest; return its rating view.

    Args:
        manifest: CSV or JSON manifest (see the module docstring).
        session_dir: folder to create; it must not exist or be empty (nothing is overwritten).
        seed: fixes the sample, the case order, the item letters and the repeats; random (and
            recorded in the key) when None.
        sample: review only this many cases (all of them when None).
        stratify_by: metadata column whose strata keep their proportions in the sample.
        scale: rating scale (the default 5-point Likert scale when None).
        key_path: where to write the key; :func:`default_key_path` (beside the session folder)
            when None. Inside the session folder only with ``key_inside``.
        label_names: names of label values (``{1: "cord", 2: "lesion"}``) shown in Slicer.
        repeat_fraction: share of the cases shown a second time, later in the order, for
            intra-rater agreement (0 to 1).
        key_inside: allow the key inside the session folder (then do not hand the folder
            to raters as it is).
    """
    manifest = Path(manifest)
    _check_key_path(session_dir, key_path, key_inside)
    cases = read_manifest(manifest)
    return build_session(cases, session_dir, {"manifest": manifest}, seed=seed, sample=sample, stratify_by=stratify_by,
                         scale=scale, key_path=key_path, label_names=label_names,
                         repeat_fraction=repeat_fraction, key_inside=key_inside)


def _check_key_path(session_dir: PathLike, key_path: Optional[PathLike], key_inside: bool) -> Path:
    session_dir = Path(session_dir).resolve()
    key = Path(key_path).resolve() if key_path is not None else default_key_path(session_dir)
    if session_dir in key.parents or key == session_dir:
        if not key_inside:
            raise SessionError(
                f"{key}: the key would be inside the session folder handed to the raters; write it elsewhere"
                " (the default is beside the folder) or allow it explicitly (--key-inside-session)")
        if key.parent != session_dir:
            raise SessionError(f"{key}: a key inside the session folder goes directly in it, not in a subfolder")
    # Another session's raters must not be handed this session, nor its key.
    refuse_output_in_session(session_dir.parent, "the new session")
    if session_dir not in key.parents:
        refuse_output_in_session(key, "the key")
    return key


def _check_options(session_dir: Path, seed: Optional[int], sample: Optional[int], repeat_fraction: float) -> None:
    """Refuse, before anything is written, options that numpy or the file system would choke on."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 128):
        raise SessionError(f"seed {seed!r} must be an integer from 0 to 2**128 - 1")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise SessionError(f"sample size {sample!r} must be a positive integer")
    if not isinstance(repeat_fraction, (int, float)) or not 0.0 <= repeat_fraction <= 1.0:  # NaN fails too
        raise SessionError(f"repeat fraction {repeat_fraction!r} must be a number from 0 to 1")
    if any(not character.isprintable() for character in session_dir.name):
        raise SessionError(f"{str(session_dir)!r}: a session folder name with line breaks, tabs or other control"
                           " characters would be misread in lists and logs; choose another name")


#: The end of a build_session staging folder's prefix (``fileutil.make_staging_folder`` adds the owner tag).
_BUILDING = ".building"


def remove_stale_builds(parent: Path) -> List[Path]:
    """Remove the staging folders that killed session builds left in ``parent``; return (and log) them.

    Only folders named as :func:`build_session` names them whose process is gone
    (``fileutil.stale_owned``): never a live build's, never a folder of the user's.
    """
    from SpinalCordSegLib.imaging.fileutil import remove_stale  # see build_session

    return remove_stale(parent, "an interrupted 'lesionqc make-session'", folders=True,
                        prefix=lambda name: name.startswith(".") and name.endswith(_BUILDING))


def _showings(count: int, repeat_fraction: float, rng: np.random.Generator) -> List[Tuple[int, int]]:
    """Review order as (case index, showing): every case once, a seeded share twice, the repeat later.

    A repeat goes at a random place at least a quarter of the session after its
    first showing where the session is long enough, so that it is not seen while
    the first is still in mind.
    """
    repeats = int(round(repeat_fraction * count))
    if repeat_fraction > 0 and repeats == 0:
        repeats = 1
    gap = max(1, count // 4)  # first showings at least between a case and its repeat
    # Cases early enough to leave the gap before the end come first; the others only when needed.
    candidates = list(range(max(1, count - gap)))
    pool = candidates if repeats <= len(candidates) else list(range(count))
    slots: Dict[int, List[int]] = {}  # first showings' position -> repeats shown just before it
    for index in sorted(rng.choice(pool, size=repeats, replace=False)):
        slot = int(rng.integers(min(index + 1 + gap, count), count + 1))
        slots.setdefault(slot, []).append(int(index))
    order: List[Tuple[int, int]] = []
    for position in range(count + 1):
        order += [(index, 2) for index in slots.get(position, [])]
        if position < count:
            order.append((position, 1))
    return order


def build_session(cases: Sequence[ManifestCase], session_dir: PathLike, origin: Mapping[str, Path],
                  seed: Optional[int] = None, sample: Optional[int] = None, stratify_by: Optional[str] = None,
                  scale: Optional[Scale] = None, key_path: Optional[PathLike] = None,
                  label_names: Optional[Mapping[int, str]] = None, repeat_fraction: float = 0.0,
                  key_inside: bool = False, model_source: Optional[str] = None) -> SessionView:
    """Build a session from checked cases (:func:`check_cases`; :func:`make_session` does it from a manifest).

    ``origin`` names the file the cases came from (``{"manifest": path}``): its path
    and sha256 go into the key, with ``model_source``.
    """
    # Imported here: LesionQC.py loads this module before Slicer has loaded SpinalCordSeg's folder.
    from SpinalCordSegLib.imaging.fileutil import make_staging_folder, write_text_atomic

    session_dir = Path(session_dir).resolve()
    _check_options(session_dir, seed, sample, repeat_fraction)
    key_path = _check_key_path(session_dir, key_path, key_inside)
    scale = scale or default_scale()
    if stratify_by is not None and sample is None:
        raise SessionError(f"stratifying by {stratify_by!r} needs a sample size")
    if session_dir.exists() and (not session_dir.is_dir() or any(session_dir.iterdir())):
        raise SessionError(f"{session_dir}: already exists and is not empty; nothing was overwritten")
    if key_path.exists():
        raise SessionError(f"{key_path}: a key file already exists; nothing was overwritten")
    if seed is None:
        seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    chosen = sample_cases(cases, sample, rng, stratify_by) if sample is not None else list(cases)
    order = [chosen[i] for i in rng.permutation(len(chosen))]
    sources = order[0].sources
    letters = item_letters(len(sources))
    # Letters follow a random order of the sources, drawn case by case in review order.
    assignments = [dict(zip(letters, (sources[i] for i in rng.permutation(len(sources))))) for _ in order]
    showings = _showings(len(order), repeat_fraction, rng)
    repeat_letters = {i: dict(zip(letters, (sources[j] for j in rng.permutation(len(sources)))))
                      for i, showing in showings if showing == 2}
    # With repeats, real case ids would tell a repeat: every case gets an anonymous id in review order.
    width = len(str(len(showings)))
    shown_as = [order[i].case_id if not repeat_letters else f"case-{n:0{width}d}"
                for n, (i, _) in enumerate(showings, start=1)]

    session_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(session_dir.parent)
    building = make_staging_folder(session_dir.parent, f".{session_dir.name}{_BUILDING}")  # raters must read it
    external_key: Optional[Path] = None  # a key written outside the folder, removed if the build fails
    try:
        session_cases, key_cases, values = [], {}, set()
        for display, (index, showing) in zip(shown_as, showings):
            case = order[index]
            items = assignments[index] if showing == 1 else repeat_letters[index]
            entry, present = _write_case(building, display, case, items)
            session_cases.append(entry)
            values |= present
            key_cases[display] = {
                "case": case.case_id,
                "showing": showing,
                "items": items,
                "metadata": case.metadata,
                "image": str(case.image.resolve()),
                "image2": str(case.image2.resolve()) if case.image2 else None,
                "segmentations": {s: str(p.resolve()) for s, p in case.segmentations.items()},
                "label_masks": {s: {str(v): str(p.resolve()) for v, p in parts}
                                for s, parts in case.label_masks.items()},
            }
        labels = _label_names(values, label_names or {})
        # Random, so that nothing in it depends on the key (a digest of the items could be guessed).
        session_id = "lqc-" + secrets.token_hex(8)
        session = {"format": SESSION_FORMAT, "format_version": FORMAT_VERSION, "session_id": session_id,
                   "scale": scale.to_dict(), "labels": labels, "cases": session_cases}
        key = {
            "format": KEY_FORMAT, "format_version": FORMAT_VERSION, "session_id": session_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: v for name, path in origin.items()
               for k, v in ((name, str(Path(path).resolve())), (f"{name}_sha256", _sha256(Path(path))))},
            "seed": seed, "sample": {"count": sample, "stratify_by": stratify_by},
            "repeat_fraction": repeat_fraction, "model_source": model_source,
            "sources": sources, "cases": key_cases,
        }
        (building / RATINGS_DIR).mkdir()
        (building / SESSION_FILE).write_text(json.dumps(session, indent=2) + "\n", encoding="utf-8")
        _same_times(building)
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


def _same_times(folder: Path) -> None:
    """Give every file and folder one timestamp: write times must not tell the items apart."""
    stamp = time.time()
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (stamp, stamp))


def _write_case(building: Path, display: str, case: ManifestCase, items: Mapping[str, str]) -> Tuple[dict, set]:
    """Copy a case's images and write its items as anonymous label maps; return its session entry.

    Items are uncompressed uint8 NIfTI on the image's grid: the files of one case
    have the same size and header, whatever their content.
    """
    from SpinalCordSegLib.imaging.image_io import write_image_atomic  # see build_session

    folder = building / "cases" / display
    folder.mkdir(parents=True)
    image = _read_image(case.image, case.where)
    image_name = "image" + _suffix(case.image)
    shutil.copyfile(case.image, folder / image_name)  # the scan itself, byte for byte
    entry: Dict[str, Any] = {"case_id": display, "image": f"cases/{display}/{image_name}", "image2": None}
    if case.image2 is not None:
        _read_image(case.image2, case.where)
        image2_name = "image2" + _suffix(case.image2)
        shutil.copyfile(case.image2, folder / image2_name)
        entry["image2"] = f"cases/{display}/{image2_name}"
    entry["items"] = []
    values: set = set()
    for item_id in sorted(items):
        source = items[item_id]
        if source in case.segmentations:
            array = _labels_on_grid(case.segmentations[source], image, case.where)
        else:
            array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
            for value, path in case.label_masks[source]:
                array[_labels_on_grid(path, image, case.where) > 0] = value
        labelmap = sitk.GetImageFromArray(array)
        labelmap.CopyInformation(image)  # grid only: no metadata travels with it
        values |= {int(v) for v in np.unique(array) if v}
        write_image_atomic(labelmap, folder / f"{item_id}.nii", compress=False)
        entry["items"].append({"item": item_id, "path": f"cases/{display}/{item_id}.nii"})
    return entry, values


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _read_image(path: Path, where: str) -> sitk.Image:
    # SpinalCordSeg's checked read: a truncated or NaN-holding NIfTI is refused, not zero-filled and handed to raters.
    from SpinalCordSegLib.errors import InputImageError
    from SpinalCordSegLib.imaging.image_io import read_image

    try:
        image = read_image(path)
    except InputImageError as error:
        raise ManifestError(f"{where}: {error}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ManifestError(f"{where}: {path} is not a 3D single-channel image (size {image.GetSize()})")
    return image


def _labels_on_grid(path: Path, image: sitk.Image, where: str) -> np.ndarray:
    """A segmentation's voxels as uint8 labels, refused unless it is on the image's grid."""
    from SpinalCordSegLib.imaging.grid import grid_differences  # see build_session

    segmentation = _read_image(path, where)
    problems = grid_differences(image, segmentation)
    if problems:
        raise ManifestError(f"{where}: segmentation {path} is not on the grid of its image: " + "; ".join(problems))
    array = sitk.GetArrayFromImage(segmentation)
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or array.min() < 0 or array.max() > 255:
        raise ManifestError(f"{where}: segmentation {path} must hold integer labels 0-255 (binary or label map)")
    return array.astype(np.uint8)


def _label_names(values: set, names: Mapping[int, str]) -> Dict[str, str]:
    default = "segmentation" if values == {1} else None
    return {str(v): names.get(v) or default or f"label {v}" for v in sorted(values | set(names))}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


