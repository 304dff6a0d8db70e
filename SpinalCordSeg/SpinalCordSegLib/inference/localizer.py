"""Where is the cord? The fast localizer pass, and sc-crop when it is installed.

Two ways to find the cord's box before a model runs:

- :class:`CordLocalizer`: the embedded ``demo-sc`` model in a coarse pass
  (its own grid of 3 x 0.9 x 0.9 mm, to which nnU-Net resamples the
  scan; tiles side by side, no mirroring): a few seconds on a CPU. Of its
  cord map, the connected piece that runs through the most axial slices is
  kept: the cord is a tube along the body, false detections are blobs.
- :func:`sccrop_box`: NeuroPoly's sc-crop detector, the box the Spinal Cord
  Toolbox crops with for models trained on sc-crop boxes, when the
  ``sc-crop`` package is installed and its detector weights are here or can
  be downloaded (:func:`ensure_sccrop_weights`: sc-crop's pinned sha256,
  resumable, offline mode respected).

Example:
    >>> from SpinalCordSegLib.inference.engine import cord_localizer
    >>> mask = cord_localizer(device="cpu").cord_mask(scan)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import SimpleITK as sitk

from ..imaging.binarization import DEFAULT_THRESHOLD, binarize, cord_structure
from .cropping import CropBox, superior_inferior_axis
from ..errors import ModelInstallError

LOCALIZER_MODEL = "demo-sc"
#: sc-crop's detector files that its ``detect`` loads.
SCCROP_FILES = ("det_model.onnx", "cls_model.onnx")


class CordLocalizer:
    """A cord model in a coarse pass, kept warm: finds the cord to crop around.

    Args:
        engine: a ``SegmentationEngine`` (or anything with its ``predict``) of a
            trusted cord model that gives an ``sc`` map; the engine module
            builds it (see ``engine.cord_localizer``), so this module never
            imports the engine.
    """

    def __init__(self, engine) -> None:
        self.engine = engine

    def cord_mask(self, image: sitk.Image, name: str = "image") -> Optional[sitk.Image]:
        """A uint8 mask of the cord on ``image``'s grid, or None when no cord is found."""
        maps = self.engine.predict(image, name=name).soft_maps
        return tube_along_body(binarize(maps[cord_structure(maps)], DEFAULT_THRESHOLD), image)


def tube_along_body(mask: sitk.Image, image: sitk.Image) -> Optional[sitk.Image]:
    """The connected piece of ``mask`` that covers the most slices along the body (ties: the larger), or None."""
    labels = sitk.ConnectedComponent(sitk.Cast(mask, sitk.sitkUInt8))
    if not sitk.GetArrayViewFromImage(labels).any():
        return None
    along = 3 + superior_inferior_axis(image)  # the size entry of a bounding box along the body
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    best, best_key = 0, (-1, -1)
    for label in stats.GetLabels():
        box = stats.GetBoundingBox(label)  # x, y, z index then x, y, z size
        key = (box[along], stats.GetNumberOfPixels(label))
        if key > best_key:
            best, best_key = label, key
    result = sitk.Cast(labels == best, sitk.sitkUInt8)
    result.CopyInformation(image)
    return result


# ---------------------------------------------------------------- sc-crop

def sccrop_assets() -> Optional[Dict[str, dict]]:
    """sc-crop's pinned detector files (name -> ``{"url", "sha256"}``), or None when sc-crop is not installed."""
    try:
        from sc_crop import download as sc_download
    except ImportError:
        return None
    assets = getattr(sc_download, "_ASSETS", {})
    return {name: dict(assets[name]) for name in SCCROP_FILES if name in assets} or None


def sccrop_cache_dir() -> Path:
    """Where sc-crop looks for its detector files (it checks their sha256 on every load)."""
    from sc_crop import download as sc_download

    return Path(sc_download._CACHE_DIR)


def ensure_sccrop_weights(assets: Mapping[str, Mapping[str, str]], target: Path, offline: bool) -> Dict[str, Path]:
    """Put sc-crop's detector files in ``target``, verified against their pinned sha256.

    A file already there with the right sha256 is used as it is. Others are
    downloaded with SpinalCordSeg's downloader (resumable, into the user
    cache, size and sha256 checked) and copied into ``target``. Offline, a
    missing file is an error that says how to get it.

    Raises ModelInstallError.
    """
    from ..models.download import download
    from ..models.model_folder import sha256_of_file

    paths = {}
    for name, asset in assets.items():
        path = target / name
        if path.is_file() and sha256_of_file(path) == asset["sha256"]:
            paths[name] = path
            continue
        if offline:
            raise ModelInstallError(
                f"{path}: sc-crop's detector file is missing and offline mode is on; download {asset['url']} "
                f"(sha256 {asset['sha256']}) into {target}, or run once online")
        fetched = download([asset["url"]], sha256=asset["sha256"])
        target.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        os.close(handle)
        shutil.copyfile(fetched.path, temporary)
        os.replace(temporary, path)
        paths[name] = path
    return paths


def sccrop_box(image: sitk.Image, padding: Mapping[str, float], device: str = "cpu",
               offline: bool = False) -> Tuple[Optional[CropBox], str]:
    """(sc-crop's box with ``padding``, "") or (None, why sc-crop could not give one).

    sc-crop reads nibabel images: the scan goes through a temporary NIfTI
    file, whose voxel axes are SimpleITK's, so the box indices carry over.
    """
    assets = sccrop_assets()
    if assets is None:
        return None, "sc-crop is not installed (pip install sc-crop)"
    try:
        weights = ensure_sccrop_weights(assets, sccrop_cache_dir(), offline)
    except ModelInstallError as error:
        return None, f"sc-crop's detector weights are not available ({error})"
    import nibabel as nib
    import sc_crop

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "scan.nii.gz")
        sitk.WriteImage(image, str(path))
        try:
            bbox = sc_crop.detect(nib.load(str(path)), model_path=str(weights["det_model.onnx"]),
                                  device=device, **dict(padding))
        except RuntimeError as error:  # sc-crop's "No spinal cord detected"
            return None, f"sc-crop found no spinal cord ({error})"
    box = CropBox.from_dict({**{k: bbox[k] for k in ("xmin", "xmax", "ymin", "ymax", "zmin", "zmax")},
                             "source": "sc-crop"})
    return box.clipped(image.GetSize()), ""

