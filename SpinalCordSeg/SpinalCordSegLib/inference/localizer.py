"""Where is the cord? The fast localizer pass, and sc-crop when it is installed.

Two ways to find the cord's box before a model runs:

- :class:`CordLocalizer`: the embedded ``demo-sc`` model in a coarse pass:
  the scan is resampled to twice the model's own spacing (6 x 1.8 x 1.8 mm
  for ``demo-sc``) and given to the network as if it were at its own
  spacing, so the network sees the body at half size (the 10 mm cord as
  5 voxels, enough to find it) and runs on an eighth of the voxels, in one
  pass over the whole coarse scan (no tiles), no mirroring: about a second
  on a CPU. Of its cord map, the connected piece that runs through the most
  axial slices is kept (the cord is a tube along the body, false detections
  are blobs), and where the network lost the cord before an end of the scan
  (the thoracic cord of a long sagittal scan, darker and thinner), its path
  is carried on to that end (:func:`extend_along_body`), so the box follows
  the cord's curve.
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

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..imaging.binarization import DEFAULT_THRESHOLD, binarize, cord_structure
from .cropping import CropBox, superior_inferior_axis
from ..errors import ModelInstallError
from ..imaging.image_io import orientation_of, reorient

LOCALIZER_MODEL = "demo-sc"
#: How much coarser than its model's own grid the localizer looks, on every axis (see the module's docstring).
COARSE_FACTOR = 2.0
#: The most voxels of a coarse scan the localizer's network takes in one pass (16 feature maps of float32: 256 MB).
ONE_PASS_VOXELS = 4_000_000
#: The length of found cord, at each end, whose straight line carries the cord on where the network lost it.
EXTEND_FIT_MM = 40.0
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
        """A uint8 cord mask on a coarse grid over ``image``'s space (resample it to use it), or None when no cord
        is found."""
        coarse = self.coarse_image(image)
        # The network is told the coarse grid is its own: it sees the anatomy at 1 / COARSE_FACTOR of its size.
        alias = sitk.Image(coarse)
        alias.SetSpacing(self.model_spacing(coarse))
        # One pass over the whole coarse scan: tiles side by side would overlap to cover it (t2_ms: 8 tiles of the
        # patch, 2.7 times its voxels). Never below the model's patch (a smaller input, with its zero padding, loses
        # small scans' cords); beyond ONE_PASS_VOXELS (memory), the model's own tiles.
        one_pass = [max(int(p), int(math.ceil(n / d) * d)) for n, d, p in
                    zip(alias.GetSize()[::-1], self.engine.downsampling, self.engine.patch_size)]
        if np.prod(one_pass) <= ONE_PASS_VOXELS:
            with self.engine.tiles_of(one_pass):
                maps = self.engine.predict(alias, name=name).soft_maps
        else:
            maps = self.engine.predict(alias, name=name).soft_maps
        mask = binarize(maps[cord_structure(maps)], DEFAULT_THRESHOLD)
        mask.CopyInformation(coarse)
        tube = tube_along_body(mask, coarse)
        return extend_along_body(tube) if tube is not None else None

    def model_spacing(self, image: sitk.Image) -> Tuple[float, float, float]:
        """The network's spacing along ``image``'s axes (x, y, z), ``image`` being in the model's orientation."""
        return tuple(float(v) for v in self.engine.spacing[::-1])

    def coarse_image(self, image: sitk.Image) -> sitk.Image:
        """``image`` in the model's orientation, linearly resampled to COARSE_FACTOR times the model's spacing."""
        work = reorient(image, self.engine.orientation or orientation_of(image))
        spacing = [COARSE_FACTOR * s for s in self.model_spacing(work)]
        size = [max(1, int(round(n * old / new))) for n, old, new in zip(work.GetSize(), work.GetSpacing(), spacing)]
        # The corner of the first voxel stays where it is: the coarse grid covers the same field of view.
        corner = work.TransformContinuousIndexToPhysicalPoint([-0.5] * 3)
        direction = np.array(work.GetDirection()).reshape(3, 3)
        origin = np.array(corner) + direction @ (np.array(spacing) / 2)
        return sitk.Resample(sitk.Cast(work, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                             origin.tolist(), spacing, work.GetDirection(), 0.0, sitk.sitkFloat32)


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


def extend_along_body(mask: sitk.Image, fit_mm: float = EXTEND_FIT_MM) -> sitk.Image:
    """``mask`` with the cord carried on in a straight line from each end of it to that end of the scan.

    The line at an end is fitted to the in-plane centres of the last
    ``fit_mm`` of the cord; each slice beyond gets a block of the cord's
    usual in-plane size about the line. The network of the localizer loses a
    cord that turns darker or thinner (the lower thoracic cord of a long
    sagittal scan) while the cord goes on curving (backwards, in the thoracic
    kyphosis): the box then follows that curve instead of missing it.

    >>> image = sitk.Image([20, 20, 30], sitk.sitkUInt8)
    >>> image[5:8, 10:13, 10:20] = 1  # a cord found on slices 10 to 19 only
    >>> bool(sitk.GetArrayViewFromImage(extend_along_body(image)).any(axis=(1, 2)).all())
    True
    """
    along = superior_inferior_axis(mask)
    array = np.moveaxis(sitk.GetArrayFromImage(mask) > 0, 2 - along, 0)  # slices along the body first
    found = np.flatnonzero(array.any(axis=(1, 2)))
    if len(found) == 0:
        return mask
    centres = np.array([np.argwhere(array[s]).mean(axis=0) for s in found])
    extents = np.array([np.ptp(np.argwhere(array[s]), axis=0) + 1 for s in found])
    half = np.median(extents, axis=0) / 2
    window = max(2, int(math.ceil(fit_mm / mask.GetSpacing()[along])))
    result = array.copy()
    for ends, beyond in ((slice(None, window), range(0, found[0])),
                         (slice(-window, None), range(found[-1] + 1, len(array)))):
        if not beyond:
            continue
        slices, points = found[ends], centres[ends]
        slope = np.polyfit(slices, points, 1)[0] if len(slices) > 1 else np.zeros(2)
        for s in beyond:
            centre = points.mean(axis=0) + slope * (s - slices.mean())
            low = np.clip(np.floor(centre - half).astype(int), 0, array.shape[1:])
            high = np.clip(np.ceil(centre + half).astype(int) + 1, 0, array.shape[1:])
            result[s, low[0]:high[0], low[1]:high[1]] = True
    extended = sitk.GetImageFromArray(np.moveaxis(result, 0, 2 - along).astype(np.uint8))
    extended.CopyInformation(mask)
    return extended


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

