"""Rating scales: the points a rater can give, what they mean, and what is rated.

A scale is a JSON file (the default one is
``LesionQC/Resources/Scales/default_likert5.json``)::

    {
      "id": "likert5", "version": 1, "title": "Segmentation quality, 5-point Likert scale",
      "points": [{"value": 1, "anchor": "very poor", "description": "..."}, ...],
      "structures": [{"id": "overall", "label": "Overall", "required": true},
                     {"id": "cord", "label": "Spinal cord", "required": false}],
      "flags": [{"id": "image_unusable", "label": "Image unusable", "scope": "case", "excludes": true}],
      "comment": true
    }

- ``points``: integer values in increasing order, each with an anchor word and a
  one-line description (shown as tooltip and help in the rating panel).
- ``structures``: what gets a score for every item; an item is done when every
  ``required`` structure has one. Optional structures (cord, lesion) may be left out.
- ``flags``: check boxes. ``scope: "case"`` flags describe the image, so setting one
  sets it on every item of the case; ``excludes: true`` means the item needs no
  score and is left out of the analysis (an unusable image).
- ``comment``: whether the panel shows a free-text comment.

Example:
    >>> from LesionQCLib.scales import default_scale
    >>> scale = default_scale()
    >>> scale.values
    (1, 2, 3, 4, 5)
    >>> scale.point(3).anchor
    'acceptable'
    >>> scale.validate_score("5", "overall")
    5
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .errors import ScaleError, ScoreError

#: Identifiers of scales, structures and flags: safe in CSV cells, file names and Qt object names.
#: Always ``fullmatch``: ``$`` would let a trailing line break through.
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,39}")
FLAG_SCOPES = ("case", "item")


def default_scale_path() -> Path:
    """The default 5-point Likert scale shipped with the module (``Resources/Scales``)."""
    # The Lib package sits next to the module's Resources folder both in the source
    # tree and in a Slicer extension build.
    return Path(__file__).resolve().parent.parent / "Resources" / "Scales" / "default_likert5.json"


@dataclass(frozen=True)
class ScalePoint:
    """One point of the scale: its value, anchor word and description."""

    value: int
    anchor: str
    description: str


@dataclass(frozen=True)
class Structure:
    """A part of the segmentation that gets its own score (``overall``, ``cord``, ``lesion``)."""

    id: str
    label: str
    required: bool


@dataclass(frozen=True)
class Flag:
    """A check box a rater can tick (image artefact, image unusable)."""

    id: str
    label: str
    scope: str
    excludes: bool


@dataclass(frozen=True)
class Scale:
    """A validated scale definition. Build it with :meth:`from_dict` or :func:`load_scale`."""

    id: str
    version: int
    title: str
    points: Tuple[ScalePoint, ...]
    structures: Tuple[Structure, ...]
    flags: Tuple[Flag, ...]
    comment: bool

    @property
    def values(self) -> Tuple[int, ...]:
        """The point values, in increasing order."""
        return tuple(point.value for point in self.points)

    @property
    def structure_ids(self) -> Tuple[str, ...]:
        return tuple(structure.id for structure in self.structures)

    @property
    def required_structure_ids(self) -> Tuple[str, ...]:
        return tuple(structure.id for structure in self.structures if structure.required)

    @property
    def flag_ids(self) -> Tuple[str, ...]:
        return tuple(flag.id for flag in self.flags)

    def point(self, value: int) -> ScalePoint:
        """The point with this value (ScoreError when the scale has none)."""
        for point in self.points:
            if point.value == value:
                return point
        raise ScoreError(f"score {value!r} is not on scale {self.id!r} (points: {list(self.values)})")

    def flag(self, flag_id: str) -> Flag:
        """The flag with this id (ScoreError when the scale has none)."""
        for flag in self.flags:
            if flag.id == flag_id:
                return flag
        raise ScoreError(f"flag {flag_id!r} is not defined by scale {self.id!r} (flags: {list(self.flag_ids)})")

    def validate_score(self, value: Union[int, str], structure: str) -> int:
        """Return ``value`` as an int of the scale for ``structure``, else raise ScoreError."""
        if structure not in self.structure_ids:
            raise ScoreError(
                f"structure {structure!r} is not rated on scale {self.id!r} (structures: {list(self.structure_ids)})"
            )
        # bool is an int subclass: True must not pass for 1.
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ScoreError(f"score {value!r} is not an integer point of scale {self.id!r}")
        try:
            number = int(value)
        except ValueError:
            raise ScoreError(f"score {value!r} is not an integer point of scale {self.id!r}") from None
        return self.point(number).value

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (what :meth:`from_dict` reads)."""
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "points": [{"value": p.value, "anchor": p.anchor, "description": p.description} for p in self.points],
            "structures": [{"id": s.id, "label": s.label, "required": s.required} for s in self.structures],
            "flags": [{"id": f.id, "label": f.label, "scope": f.scope, "excludes": f.excludes} for f in self.flags],
            "comment": self.comment,
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "scale") -> "Scale":
        """Validate a scale's JSON data; ``origin`` (a file name) is named in errors."""

        def fail(problem: str) -> ScaleError:
            return ScaleError(f"{origin}: {problem}")

        if not isinstance(data, Mapping):
            raise fail("a scale must be a JSON object")
        scale_id = data.get("id")
        if not isinstance(scale_id, str) or not IDENTIFIER.fullmatch(scale_id):
            raise fail(f"'id' must be a lower-case identifier (letters, digits, '_'), got {scale_id!r}")
        version = data.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise fail(f"'version' must be a positive integer, got {version!r}")
        title = data.get("title", scale_id)
        if not isinstance(title, str):
            raise fail("'title' must be a string")

        points = []
        for index, entry in enumerate(_list(data, "points", fail)):
            value = entry.get("value") if isinstance(entry, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(f"points[{index}]: 'value' must be an integer")
            anchor, description = entry.get("anchor"), entry.get("description", "")
            if not isinstance(anchor, str) or not anchor.strip() or not isinstance(description, str):
                raise fail(f"points[{index}]: needs a non-empty 'anchor' and a string 'description'")
            points.append(ScalePoint(value, anchor.strip(), description.strip()))
        values = [p.value for p in points]
        if len(points) < 2 or values != sorted(set(values)):
            raise fail(f"'points' needs at least two values in strictly increasing order, got {values}")

        structures = []
        for index, entry in enumerate(_list(data, "structures", fail)):
            structure_id = _identifier(entry, f"structures[{index}]", fail)
            required = entry.get("required", True)
            if not isinstance(required, bool):
                raise fail(f"structures[{index}]: 'required' must be true or false")
            structures.append(Structure(structure_id, str(entry.get("label", structure_id)), required))
        if not structures or not any(s.required for s in structures):
            raise fail("'structures' needs at least one required structure")

        flags = []
        for index, entry in enumerate(data.get("flags", [])):
            flag_id = _identifier(entry, f"flags[{index}]", fail)
            scope, excludes = entry.get("scope", "item"), entry.get("excludes", False)
            if scope not in FLAG_SCOPES or not isinstance(excludes, bool):
                raise fail(f"flags[{index}]: 'scope' must be one of {FLAG_SCOPES} and 'excludes' true or false")
            flags.append(Flag(flag_id, str(entry.get("label", flag_id)), scope, excludes))

        for kind, ids in (("structure", [s.id for s in structures]), ("flag", [f.id for f in flags])):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            if duplicates:
                raise fail(f"duplicate {kind} ids: {duplicates}")
        comment = data.get("comment", True)
        if not isinstance(comment, bool):
            raise fail("'comment' must be true or false")
        return cls(scale_id, version, title, tuple(points), tuple(structures), tuple(flags), comment)


def _list(data: Mapping, key: str, fail) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise fail(f"'{key}' must be a list")
    return value


def _identifier(entry: Any, where: str, fail) -> str:
    identifier = entry.get("id") if isinstance(entry, Mapping) else None
    if not isinstance(identifier, str) or not IDENTIFIER.fullmatch(identifier):
        raise fail(f"{where}: 'id' must be a lower-case identifier (letters, digits, '_'), got {identifier!r}")
    return identifier


def load_scale(path: Optional[Union[str, Path]] = None) -> Scale:
    """Read and validate a scale JSON file (the default scale when ``path`` is None)."""
    path = Path(path) if path is not None else default_scale_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScaleError(f"{path}: scale file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScaleError(f"{path}: cannot read the scale ({error})") from None
    return Scale.from_dict(data, origin=str(path))


def default_scale() -> Scale:
    """The default 5-point Likert scale (1 very poor ... 5 excellent)."""
    return load_scale(None)
