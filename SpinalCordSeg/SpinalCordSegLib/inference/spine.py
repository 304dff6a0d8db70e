"""TotalSpineSeg's disc labels (the catalogue's ``spine`` entry), where the package is installed.

TotalSpineSeg (Warszawer et al., 2025; LGPL-3.0; https://github.com/neuropoly/totalspineseg)
is the Spinal Cord Toolbox's ``sct_deepseg spine`` task. Its step 1 writes
``step1_levels/<scan>``: single-voxel disc labels in SCT's numbering (3 = C2-C3),
which SCT gives unchanged to ``sct_process_segmentation -discfile``
(``spinalcordtoolbox.deepseg.inference.segment_totalspineseg``). Here the
same output feeds :mod:`SpinalCordSegLib.measures.levels`.

The package is optional (``pip install totalspineseg``, the ``spine`` extra):
it is not a dependency, and where it is missing :func:`require_spine` says how
to get it. Its model folder has TotalSpineSeg's layout,
``<folder>/nnUNet/results/r<YYYYMMDD>/...`` (the newest release is used), in
``<models dir>/.totalspineseg``; its weights are fetched by TotalSpineSeg's own
installer (``totalspineseg.init_inference``), as SCT does: the weights' URLs
come from the package and carry no sha256 the project could pin offline.

Example:
    >>> from SpinalCordSegLib.inference.spine import spine_disc_labels
    >>> discs = spine_disc_labels("sub-01_T2w.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import SimpleITK as sitk

from ..errors import SpinalCordSegError
from ..imaging.image_io import read_image
from ..paths import models_dir

SPINE_ID = "spine"
SPINE_PACKAGE = "totalspineseg"
SPINE_LICENCE = "LGPL-3.0"
SPINE_HOMEPAGE = "https://github.com/neuropoly/totalspineseg"
INSTALL_HINT = (f"TotalSpineSeg (vertebral levels from disc labels, {SPINE_LICENCE}) is not installed. Install it "
                f"with: pip install {SPINE_PACKAGE} (in Slicer: slicer.util.pip_install('{SPINE_PACKAGE}')), or "
                "give disc labels instead (measure --discs, <case>_label-discs_dlabel.nii.gz in the labels "
                "folder, or click the discs in the Slicer panel's Vertebral levels section)")


class SpineNotInstalled(SpinalCordSegError):
    """The optional totalspineseg package is missing."""


def spine_available(find_spec: Callable[[str], object] = importlib.util.find_spec) -> bool:
    """True when the totalspineseg package can be imported."""
    return find_spec(SPINE_PACKAGE) is not None


def require_spine(find_spec: Callable[[str], object] = importlib.util.find_spec) -> None:
    """Raise SpineNotInstalled, saying how to get it, when totalspineseg is missing."""
    if not spine_available(find_spec):
        raise SpineNotInstalled(INSTALL_HINT)


def spine_model_folder() -> Path:
    """Where TotalSpineSeg's models live (its ``data_path``): ``<models dir>/.totalspineseg``.

    A hidden folder: the model store lists nnU-Net folders, and this is TotalSpineSeg's own layout.
    """
    return models_dir() / f".{SPINE_PACKAGE}"


def newest_release(folder: Union[str, Path]) -> str:
    """The newest ``r<YYYYMMDD>`` release in ``<folder>/nnUNet/results`` (SpinalCordSegError when none)."""
    results = Path(folder) / "nnUNet" / "results"
    releases = sorted(p.name for p in results.glob("r*") if p.is_dir() and p.name[1:].isdigit())
    if not releases:
        raise SpinalCordSegError(f"{folder}: not a TotalSpineSeg model folder (no nnUNet/results/rYYYYMMDD); "
                                 "run TotalSpineSeg once online to install its models")
    return releases[-1]


def _tss_inference(**kwargs) -> None:
    """TotalSpineSeg's own inference function (imported only here: the package is optional)."""
    from totalspineseg.inference import inference

    inference(**kwargs)


def spine_disc_labels(scan: Union[str, Path], folder: Optional[Union[str, Path]] = None, device: str = "cpu",
                      inference: Optional[Callable[..., None]] = None) -> sitk.Image:
    """Run TotalSpineSeg's step 1 on ``scan``; return its disc labels (``step1_levels``).

    ``inference`` defaults to ``totalspineseg.inference.inference`` (keyword
    arguments as SCT passes them); anything else with that signature (a test
    stand-in) may be given. Raises SpineNotInstalled when the package is
    missing and SpinalCordSegError when it wrote no disc labels.
    """
    scan = Path(scan)
    if inference is None:
        require_spine()
        inference = _tss_inference
    folder = Path(folder) if folder is not None else spine_model_folder()
    release = newest_release(folder)
    with tempfile.TemporaryDirectory(prefix="spinalcordseg-spine-") as work:
        copy = Path(work) / scan.name
        shutil.copyfile(scan, copy)
        output = Path(work) / "output"
        output.mkdir()
        inference(input_path=str(copy), output_path=str(output), data_path=str(folder), default_release=release,
                  device=device, max_workers=1, max_workers_nnunet=1, step1_only=True,
                  keep_only=["step1_levels"], quiet=True)
        labels = output / "step1_levels" / scan.name
        if not labels.is_file():
            found = sorted(os.listdir(output))
            raise SpinalCordSegError(f"{scan}: TotalSpineSeg wrote no disc labels (step1_levels/{scan.name}); "
                                     f"its output folder holds {found}")
        # Disc labels are read as physical points: their grid need not be the scan's.
        return read_image(labels)
