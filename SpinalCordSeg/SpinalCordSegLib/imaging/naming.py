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
from typing import Dict, List, Mapping, Union

from ..errors import SpinalCordSegError

# Structure names of dataset.json -> BIDS label entities used by the field.
BIDS_LABELS = {"sc": "SC", "spinalcord": "SC", "cord": "SC", "lesion": "lesion"}
#: Display colours (RGB 0-255) by BIDS label: Slicer's terminology colours for the cord
#: (DICOM master list) and lesions, shared by the Slicer scene and the PNG overlays.
STRUCTURE_COLOURS = {"SC": (244, 214, 49), "lesion": (230, 41, 41)}
#: BIDS subject and session entities, as folder names and as parts of a file name (use ``fullmatch``:
#: ``$`` would also match before a final newline).
SUBJECT = re.compile(r"sub-[A-Za-z0-9]+")
SESSION = re.compile(r"ses-[A-Za-z0-9]+")
#: An id that names a file or folder (model, structure, case): a letter or digit first, then letters,
#: digits, '_', '.' or '-'; so no '/', no '..', no control character, and at most 100 characters.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: A three-letter orientation code (``RAS``, ``LPI``...): one letter of each axis.
_ORIENTATION = re.compile(r"(?=.*[LR])(?=.*[AP])(?=.*[IS])[LRAPIS]{3}")
_OTHER_COLOURS = [(62, 146, 204), (101, 189, 96), (170, 104, 204), (240, 140, 40)]


def is_safe_id(text: object) -> bool:
    """True when ``text`` may name a file or folder (see :data:`SAFE_ID`); checked in full.

    >>> is_safe_id("sub-01_T2w"), is_safe_id("c1\\n"), is_safe_id(".."), is_safe_id("a/b")
    (True, False, False, False)
    """
    return isinstance(text, str) and SAFE_ID.fullmatch(text) is not None


def is_orientation_code(text: str) -> bool:
    """True for a three-letter orientation code with one letter of each axis, in full (upper case).

    >>> is_orientation_code("LAS"), is_orientation_code("RAR"), is_orientation_code("RAS\\n")
    (True, False, False)
    """
    return _ORIENTATION.fullmatch(text) is not None


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


def refuse_name_collisions(outputs: Mapping[str, str], what: str = "inputs") -> None:
    """Refuse ``outputs`` (input -> name its outputs get) where two inputs would write the same files.

    Names are compared case-insensitively: they collide on the file systems of macOS and
    Windows. Raises SpinalCordSegError naming every colliding input, before anything runs.

    >>> refuse_name_collisions({"a/scan.nii.gz": "scan", "b/scan.nii.gz": "scan"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SpinalCordSegLib.errors.SpinalCordSegError: 2 inputs would write the same output ...: scan <- a/scan.nii.gz, ...
    """
    by_name: Dict[str, List[str]] = {}
    for source, name in outputs.items():
        by_name.setdefault(name.casefold(), []).append(source)
    clashes = [(outputs[sources[0]], sources) for sources in by_name.values() if len(sources) > 1]
    if clashes:
        listed = "; ".join(f"{name} <- {', '.join(sources)}" for name, sources in clashes)
        raise SpinalCordSegError(f"{sum(len(s) for _, s in clashes)} {what} would write the same output files "
                                 f"(nothing was run): {listed}; rename one or give them to separate runs")
