"""Read, check, reorient and write 3D scans with SimpleITK.

Every scan that reaches the engine goes through :func:`read_scan` or
:func:`check_scan`, so that 2D or 4D images, NaNs and constant images are
refused with a message naming the file. Writes are atomic: a file appears
under its final name only once it is complete.

Example:
    >>> from SpinalCordSegLib.image_io import read_scan, orientation_of
    >>> scan = read_scan("sub-01_T2w.nii.gz")  # doctest: +SKIP
    >>> orientation_of(scan)  # doctest: +SKIP
    'PSR'
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError
from .fileutil import write_atomic

PathLike = Union[str, Path]


def orientation_of(image: sitk.Image) -> str:
    """Three-letter orientation code of ``image`` (nibabel's and SimpleITK's convention).

    Each letter is the direction the axis points to: ``RAS`` means x grows to
    the right. The Spinal Cord Toolbox writes the opposite ("from") letters,
    so SCT's ``RPI`` is ``LAS`` here.
    """
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    """Return ``image`` permuted and flipped to ``orientation`` (no resampling)."""
    if orientation_of(image) == orientation.upper():
        return image
    return sitk.DICOMOrient(image, orientation.upper())


def check_scan(image: sitk.Image, name: str = "image") -> sitk.Image:
    """Return ``image`` as a single-component 3D image, or raise InputImageError.

    ``name`` (usually the file path) is used in the messages. A 4D image whose
    last axis has length 1 is squeezed to 3D.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(colour or vector image); a single-channel 3D scan is needed"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        detail = "a 4D series: split it into 3D volumes first" if image.GetDimension() == 4 else "not 3D"
        raise InputImageError(f"{name}: image is {image.GetDimension()}D with size {image.GetSize()} ({detail})")
    if min(image.GetSize()) < 2:
        raise InputImageError(f"{name}: image of size {image.GetSize()} is a single slice, not a 3D volume")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputImageError(f"{name}: {bad} of {array.size} voxels are NaN or infinite")
    if array.size and array.min() == array.max():
        raise InputImageError(f"{name}: image is constant (every voxel is {array.flat[0]}); nothing to segment")
    return image


def read_scan(path: PathLike) -> sitk.Image:
    """Read a scan with SimpleITK and check it (see :func:`check_scan`)."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputImageError(f"{path}: cannot read image ({first_line})") from error
    return check_scan(image, str(path))


def write_image_atomic(image: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically, verified (see ``fileutil.write_atomic``); return ``path``.

    The temporary name keeps the extension so that SimpleITK picks the same
    writer. SimpleITK does not report a full disk for ``.nii.gz``: the written
    file is checked instead (gzip stream complete and intact; a NIfTI holds
    every voxel; other formats are read back and compared). Raises
    FileWriteError naming ``path``.
    """
    path = Path(path)

    def write(temporary: Path) -> None:
        try:
            sitk.WriteImage(image, str(temporary), compress)
        except RuntimeError as error:
            raise OSError(str(error).strip().splitlines()[-1] if str(error).strip() else "SimpleITK error") from error

    suffix = "".join(path.suffixes) or ".nii.gz"
    return write_atomic(path, write, lambda temporary: _verify_image_file(temporary, image),
                        suffix=f".part{suffix}", what="image")


def _verify_image_file(path: Path, image: sitk.Image) -> None:
    """Raise ValueError unless ``path`` holds all of ``image`` (a NIfTI) or reads back equal to it."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        if not np.array_equal(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))),
                              sitk.GetArrayViewFromImage(image)):
            raise ValueError("it does not read back as the image written")
        return
    if name.endswith(".gz"):
        header, size = _gunzipped_size(path)
    else:
        with open(path, "rb") as stream:
            header = stream.read(544)
        size = path.stat().st_size
    voxels = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    expected = _nifti_data_offset(header) + voxels
    if size != expected:
        raise ValueError(f"{size} bytes of NIfTI data where {expected} were written")


def _gunzipped_size(path: Path) -> "tuple[bytes, int]":
    """(first 544 bytes, length) of a gzip file's content; ValueError when its stream is cut or damaged.

    zlib checks the stream's CRC and length at its end; output is taken in bounded pieces.
    """
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    header, size = b"", 0
    try:
        with open(path, "rb") as stream:
            data = stream.read(1 << 20)
            while data and not inflate.eof:
                piece = inflate.decompress(data, 1 << 24)
                header, size = header or piece[:544], size + len(piece)
                data = inflate.unconsumed_tail or stream.read(1 << 20)
            size += len(inflate.flush())
    except zlib.error as error:
        raise ValueError(f"damaged gzip stream ({error})") from error
    if not inflate.eof:
        raise ValueError("the gzip stream ends early")
    return header, size


def _nifti_data_offset(header: bytes) -> int:
    """Where the voxels start in a NIfTI-1 or NIfTI-2 header (either byte order)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(f"{order}i", header[:4])[0] == 348:
            return int(struct.unpack(f"{order}f", header[108:112])[0])
        if len(header) >= 540 and struct.unpack(f"{order}i", header[:4])[0] == 540:
            return int(struct.unpack(f"{order}q", header[168:176])[0])
    raise ValueError("no NIfTI header")


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-5) -> bool:
    """True when two images share size, spacing, origin and direction."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )
