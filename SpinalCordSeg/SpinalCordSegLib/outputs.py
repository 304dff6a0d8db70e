"""Output files: BIDS derivative names, binarization and JSON provenance sidecars.

Names follow BIDS derivatives as the field uses them:
``<source>_label-SC_probseg.nii.gz`` (soft map) and
``<source>_label-SC_seg.nii.gz`` (binary mask), each with a ``.json`` sidecar
whose ``GeneratedBy`` list has the automatic step first and one ``Manual``
entry per correction (the Spinal Cord Toolbox's manual-correction format).

Example:
    >>> from SpinalCordSegLib.outputs import output_name, source_name
    >>> source_name("/data/sub-01_T2w.nii.gz")
    'sub-01_T2w'
    >>> output_name("sub-01_T2w", "sc", "seg")
    'sub-01_T2w_label-SC_seg.nii.gz'
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import SimpleITK as sitk

from .fileutil import write_text_atomic
from .image_io import write_image_atomic

# Structure names of dataset.json -> BIDS label entities used by the field.
BIDS_LABELS = {"sc": "SC", "spinalcord": "SC", "cord": "SC", "lesion": "lesion"}
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Display colours (RGB 0-255) by BIDS label: Slicer's terminology colours for the cord
#: (DICOM master list) and lesions, shared by the Slicer scene and the PNG overlays.
STRUCTURE_COLOURS = {"SC": (244, 214, 49), "lesion": (230, 41, 41)}
_OTHER_COLOURS = [(62, 146, 204), (101, 189, 96), (170, 104, 204), (240, 140, 40)]


def source_name(path: Union[str, Path]) -> str:
    """The scan's file name without its image extension(s)."""
    name = Path(path).name
    for extension in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gz"):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem


def bids_label(structure: str) -> str:
    """BIDS ``label-`` value of a structure: ``SC`` for the cord, ``lesion``..."""
    return BIDS_LABELS.get(structure.lower(), structure)


def structure_colour(structure: str, index: int = 0) -> tuple:
    """Display colour (RGB 0-1) of a structure; ``index`` picks one for unknown structures."""
    rgb = STRUCTURE_COLOURS.get(bids_label(structure), _OTHER_COLOURS[index % len(_OTHER_COLOURS)])
    return tuple(c / 255.0 for c in rgb)


def output_name(source: str, structure: str, kind: str) -> str:
    """File name of a ``probseg`` (soft) or ``seg`` (binary) output."""
    if kind not in ("probseg", "seg"):
        raise ValueError(f"kind must be 'probseg' or 'seg', not {kind!r}")
    return f"{source}_label-{bids_label(structure)}_{kind}.nii.gz"


def binarize(soft_map: sitk.Image, threshold: float) -> sitk.Image:
    """Binary uint8 mask of ``soft_map >= threshold`` on the same grid."""
    return sitk.Cast(sitk.GreaterEqual(soft_map, float(threshold)), sitk.sitkUInt8)


def now() -> str:
    """The current local time in the sidecar date format."""
    return datetime.datetime.now().strftime(DATE_FORMAT)


def manual_entry(author: str, date: Optional[str] = None) -> dict:
    """A ``GeneratedBy`` entry for a manual correction."""
    return {"Name": "Manual", "Author": author, "Date": date or now()}


def write_sidecar(image_path: Union[str, Path], generated_by: List[dict], **extra: object) -> Path:
    """Write the JSON sidecar next to an output image and return its path."""
    image_path = Path(image_path)
    sidecar = image_path.with_name(source_name(image_path) + ".json")
    content = {"GeneratedBy": generated_by, **extra}
    return write_text_atomic(json.dumps(content, indent=2) + "\n", sidecar)


def read_sidecar(image_path: Union[str, Path]) -> dict:
    """Read the JSON sidecar of an output image ({} when there is none)."""
    image_path = Path(image_path)
    sidecar = image_path.with_name(source_name(image_path) + ".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


def write_outputs(
    soft_maps: Mapping[str, sitk.Image],
    source: str,
    output_dir: Union[str, Path],
    thresholds: Mapping[str, float],
    provenance: dict,
    write_soft: bool = True,
) -> Dict[str, Path]:
    """Write soft maps and binary masks with sidecars; return ``{file key: path}``.

    Keys are ``"<structure>_probseg"`` and ``"<structure>_seg"``. ``provenance``
    is the automatic step's ``GeneratedBy`` entry; the thresholds are added.
    """
    output_dir = Path(output_dir)
    step = dict(provenance, Thresholds={k: float(thresholds[k]) for k in soft_maps})
    written: Dict[str, Path] = {}
    for structure, soft in soft_maps.items():
        if write_soft:
            path = write_image_atomic(soft, output_dir / output_name(source, structure, "probseg"))
            write_sidecar(path, [step], Structure=structure)
            written[f"{structure}_probseg"] = path
        mask = binarize(soft, thresholds[structure])
        path = write_image_atomic(mask, output_dir / output_name(source, structure, "seg"))
        write_sidecar(path, [step], Structure=structure, Threshold=float(thresholds[structure]))
        written[f"{structure}_seg"] = path
    return written
