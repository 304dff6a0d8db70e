"""Locations of the files shipped with the SpinalCordSeg module.

The Lib package lives next to the module's ``Resources`` folder both in the
source tree (editable install, ``pip install -e .``) and in a Slicer extension
build, so resources are found relative to this file.

Example:
    >>> from SpinalCordSegLib.resources import resources_dir
    >>> resources_dir().name
    'Resources'
"""

from pathlib import Path


def resources_dir() -> Path:
    """Return the SpinalCordSeg module's ``Resources`` folder."""
    return Path(__file__).resolve().parent.parent / "Resources"


def embedded_models_dir() -> Path:
    """Return the folder holding the embedded demo models."""
    return resources_dir() / "Models"


def sample_scan_path() -> Path:
    """Return the bundled sample scan (a T2w scan with a lesion, from SCT's test data)."""
    return resources_dir() / "Sample" / "sample_T2w.nii.gz"
