"""The JSON sidecar of every output image: one schema that writes and reads it.

A sidecar sits beside its image (``sub-01_T2w_label-SC_seg.json`` beside
``sub-01_T2w_label-SC_seg.nii.gz``) and follows the Spinal Cord Toolbox's
manual-correction format: a ``GeneratedBy`` list with the automatic step first
(tool, version, model, checksums, thresholds, date) and one
``{"Name": "Manual", "Author": ..., "Date": ...}`` entry per correction. Beside
it: the structure, the threshold and mask options that made a binary mask, and
any further fields a step records (the crop box, a demo-model note...).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from SpinalCordSegLib.imaging.sidecar import Sidecar
    >>> image = Path(tempfile.mkdtemp()) / "sub-01_T2w_label-SC_seg.nii.gz"
    >>> Sidecar([{"Name": "SpinalCordSeg"}], structure="sc", threshold=0.5).write(image).name
    'sub-01_T2w_label-SC_seg.json'
    >>> Sidecar.read(image).with_correction("jd", "2026-12-01 10:00:00").authors
    ['jd']
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

from .binarization import MaskOptions
from ..errors import SpinalCordSegError
from .fileutil import read_json, write_text_atomic
from .naming import source_name

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Fields the schema knows; anything else in a sidecar is kept in :attr:`Sidecar.extra`.
_KNOWN = ("GeneratedBy", "Structure", "Threshold", "KeepLargestCord", "RestrictLesionsToCord")


def now() -> str:
    """The current local time in the sidecar date format."""
    return datetime.datetime.now().strftime(DATE_FORMAT)


def manual_entry(author: str, date: Optional[str] = None) -> dict:
    """A ``GeneratedBy`` entry for a manual correction."""
    return {"Name": "Manual", "Author": author, "Date": date or now()}


def sidecar_path(image_path: Union[str, Path]) -> Path:
    """Where the sidecar of ``image_path`` lives (same folder, ``.json``)."""
    image_path = Path(image_path)
    return image_path.with_name(source_name(image_path) + ".json")


@dataclass(frozen=True)
class Sidecar:
    """Provenance of one output image.

    Args:
        generated_by: the automatic step first, then one ``Manual`` entry per correction.
        structure: the structure the image shows (``sc``, ``lesion``...).
        threshold: for a binary mask, the threshold that made it.
        mask_options: for a binary mask, the options that cleaned it.
        extra: further fields, written as they are.
    """

    generated_by: List[dict] = field(default_factory=list)
    structure: Optional[str] = None
    threshold: Optional[float] = None
    mask_options: Optional[MaskOptions] = None
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def automatic_step(self) -> dict:
        """The first ``GeneratedBy`` entry ({} when there is none)."""
        return dict(self.generated_by[0]) if self.generated_by else {}

    @property
    def authors(self) -> List[str]:
        """Who corrected the image, in order."""
        return [e.get("Author", "") for e in self.generated_by[1:] if e.get("Name") == "Manual"]

    def with_correction(self, author: str, date: Optional[str] = None) -> "Sidecar":
        """This sidecar with one more ``Manual`` entry."""
        return replace(self, generated_by=list(self.generated_by) + [manual_entry(author, date)])

    def to_json(self) -> dict:
        """The sidecar as JSON data."""
        content: Dict[str, object] = {"GeneratedBy": list(self.generated_by)}
        if self.structure is not None:
            content["Structure"] = self.structure
        if self.threshold is not None:
            content["Threshold"] = float(self.threshold)
        if self.mask_options is not None:
            content.update(self.mask_options.to_sidecar())
        content.update(self.extra)
        return content

    @classmethod
    def from_json(cls, content: Mapping[str, object], name: str = "sidecar") -> "Sidecar":
        """Inverse of :meth:`to_json`; ``name`` is used in errors."""
        generated_by = content.get("GeneratedBy") or []
        if not isinstance(generated_by, list) or not all(isinstance(e, dict) for e in generated_by):
            raise SpinalCordSegError(f"{name}: 'GeneratedBy' must be a list of objects")
        threshold = content.get("Threshold")
        options = None
        if "KeepLargestCord" in content or "RestrictLesionsToCord" in content:
            options = MaskOptions.from_sidecar(content)
        return cls(generated_by=list(generated_by), structure=content.get("Structure"),
                   threshold=None if threshold is None else float(threshold), mask_options=options,
                   extra={k: v for k, v in content.items() if k not in _KNOWN})

    def write(self, image_path: Union[str, Path]) -> Path:
        """Write the sidecar beside ``image_path`` (atomically); return its path."""
        return write_text_atomic(json.dumps(self.to_json(), indent=2) + "\n", sidecar_path(image_path))

    @classmethod
    def read(cls, image_path: Union[str, Path]) -> "Sidecar":
        """The sidecar of ``image_path`` (empty when there is none); a damaged one is an error naming it."""
        path = sidecar_path(image_path)
        if not path.is_file():
            return cls()
        content = read_json(path, "the sidecar")
        if not isinstance(content, dict):
            raise SpinalCordSegError(f"{path}: a sidecar must hold a JSON object")
        return cls.from_json(content, str(path))


def automatic_step(provenance: Mapping[str, object], thresholds: Mapping[str, float]) -> dict:
    """The automatic step's ``GeneratedBy`` entry: the engine's provenance and the thresholds used.

    The mask options are fields of each mask's sidecar (:attr:`Sidecar.mask_options`).
    """
    return dict(provenance, Thresholds={k: float(v) for k, v in thresholds.items()})
