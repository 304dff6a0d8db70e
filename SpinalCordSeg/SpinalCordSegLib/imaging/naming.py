"""Names of output files and structures: BIDS derivative names, label entities and display colours.

Names follow BIDS derivatives as the field uses them:
``<source>_label-SC_probseg.nii.gz`` (soft map) and
``<source>_label-SC_seg.nii.gz`` (binary mask).

Example:
    >>> from SpinalCordSegLib.imaging.naming import output_name, source_name
    >>> source_name("/data/sub-01_T2w.nii.gz")
    'sub-01_T2w'
    >>> output_name("sub-01_T2w", "sc", "seg")
    'sub-01_T2w_label-SC_seg.nii.gz'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

# Structure names of dataset.json -> BIDS label entities used by the field.
BIDS_LABELS = {"sc": "SC", "spinalcord": "SC", "cord": "SC", "lesion": "lesion"}
#: Display colours (RGB 0-255) by BIDS label: Slicer's terminology colours for the cord
#: (DICOM master list) and lesions, shared by the Slicer scene and the PNG overlays.
STRUCTURE_COLOURS = {"SC": (244, 214, 49), "lesion": (230, 41, 41)}
#: BIDS subject and session entities, as folder names and as parts of a file name.
SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
SESSION = re.compile(r"^ses-[A-Za-z0-9]+$")
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
