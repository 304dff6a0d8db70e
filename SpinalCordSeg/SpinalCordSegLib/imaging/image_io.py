"""Read, check, reorient and write 3D scans with SimpleITK.

Every image file is checked by :func:`check_image_file` before SimpleITK
allocates it (:func:`read_image`, :func:`read_scan`): a voxel count past the
cap (``SPINALCORDSEG_MAX_VOXELS``), a NIfTI file shorter than its header
declares (ITK would fill the missing voxels with zeros) and NaN or infinite
values stored in a NIfTI file (ITK's NIfTI reader turns them into 0) are
refused with a message naming the file. Every scan that reaches the engine
goes through :func:`read_scan` or :func:`check_scan`, so that 2D or 4D
images, NaNs and constant images are refused too. Writes are atomic: a file
appears under its final name only once it is complete.

Example:
    >>> from SpinalCordSegLib.imaging.image_io import read_scan, orientation_of
    >>> scan = read_scan("sub-01_T2w.nii.gz")  # doctest: +SKIP
    >>> orientation_of(scan)  # doctest: +SKIP
    'PSR'
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, SpinalCordSegError
from .fileutil import PathLike, write_atomic


MAX_VOXELS_ENV = "SPINALCORDSEG_MAX_VOXELS"
# 2**28 voxels: 1 GiB as float32, several times a whole-spine 3D scan; the engine holds a few copies.
DEFAULT_MAX_VOXELS = 2 ** 28
# Bytes per voxel of each NIfTI datatype code, and the float type of those that can hold NaN.
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}
_NIFTI_FLOATS = {16: "f4", 32: "f4", 64: "f8", 1792: "f8"}  # complex types: pairs of floats
_SINGLE_FILE = {1, 4}  # nifti_type of .nii (NIfTI-1 and -2); the others keep the voxels in a .img file
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data more than this
# .nii.gz files up to this size are decompressed once more in full to verify their gzip checksum (a
# fraction of SimpleITK's own read); larger ones are checked by gzip's recorded length alone.
FULL_CHECK_BYTES = 32 << 20
_CHUNK = 4 << 20
_NIFTI_HEADER_BYTES = 544  # a NIfTI-2 header and its extension flag; a NIfTI-1 header is shorter
#: Voxel spacings (mm) outside this range are a damaged header, not a scan: 1 micrometre to 1 metre.
SPACING_RANGE_MM = (1e-3, 1e3)


def max_voxels() -> int:
    """The voxel cap: ``$SPINALCORDSEG_MAX_VOXELS``, else :data:`DEFAULT_MAX_VOXELS`."""
    value = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_VOXELS
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap <= 0:
        raise SpinalCordSegError(f"{MAX_VOXELS_ENV}={value!r}: must be a positive whole number of voxels")
    return cap


def _too_many(path: Path, reader: sitk.ImageFileReader, voxels: int, cap: int) -> InputImageError:
    return InputImageError(
        f"{path}: its header declares {' x '.join(map(str, reader.GetSize()))} = {voxels:,} voxels, more than "
        f"the limit of {cap:,}; if the image is real, raise the limit with {MAX_VOXELS_ENV}=<voxels>"
    )


def _short(path: Path, shape: Tuple[int, ...], per_voxel: int, expected: int, present: int, how: str) -> InputImageError:
    return InputImageError(
        f"{path}: truncated or damaged: its header declares {' x '.join(map(str, shape))} voxels of {per_voxel} "
        f"byte(s), {expected} bytes with the header, but the file holds {present} bytes{how}; "
        "SimpleITK would fill the missing voxels with zeros"
    )


class _BrokenGzip(Exception):
    """The gzip data ends early."""


class _Corrupt(Exception):
    """The gzip data is corrupt (zlib's message)."""


def _chunks(path: Path, compressed: bool) -> Iterator[bytes]:
    """The file's bytes (decompressed), a bounded chunk at a time; _BrokenGzip where gzip data breaks."""
    with open(path, "rb") as raw:
        if not compressed:
            yield from iter(lambda: raw.read(_CHUNK), b"")
            return
        inflater = zlib.decompressobj(wbits=31)
        pending = b""
        while True:
            if not pending:
                pending = raw.read(_CHUNK)
                if not pending:
                    if inflater.eof:
                        return
                    raise _BrokenGzip("its gzip data is cut short")
            if inflater.eof:  # another gzip member follows (concatenated or block-gzipped files)
                if not pending.strip(b"\0"):
                    return  # zero padding after the last member
                inflater = zlib.decompressobj(wbits=31)
            try:
                chunk = inflater.decompress(pending, _CHUNK)
            except zlib.error as error:
                raise _Corrupt(str(error)) from None
            pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if chunk:
                yield chunk


def _scan(path: Path, compressed: bool, offset: int, expected: int,
          dtype: Optional[np.dtype]) -> Tuple[int, int, int, str]:
    """Read the file once: (bytes present, NaN count, infinite count among the voxels, how gzip data broke or "").

    Raises InputImageError for corrupt gzip data (a wrong checksum or an invalid stream).
    """
    present = nans = infinities = 0
    carry = b""
    try:
        for chunk in _chunks(path, compressed):
            start, present = present, present + len(chunk)
            if dtype is None or present <= offset or start >= expected:
                continue
            data = carry + chunk[max(offset - start, 0):max(min(expected - start, len(chunk)), 0)]
            usable = len(data) - len(data) % dtype.itemsize
            values = np.frombuffer(data[:usable], dtype=dtype)
            nans += int(np.count_nonzero(np.isnan(values)))
            infinities += int(np.count_nonzero(np.isinf(values)))
            carry = data[usable:]
    except _BrokenGzip as error:
        return present, nans, infinities, f" ({error})"
    except _Corrupt as error:
        raise InputImageError(
            f"{path}: damaged: its gzip data is corrupt ({error}); SimpleITK would read wrong voxel values"
        ) from None
    return present, nans, infinities, ""


def spacing_problem(spacing: Sequence[float]) -> Optional[str]:
    """Why voxel ``spacing`` (mm) cannot be a scan's (NaN, zero, negative, outside :data:`SPACING_RANGE_MM`), or None.

    >>> spacing_problem((0.5, 0.5, 3.0)) is None, spacing_problem((1.0, 0.0, 1.0))
    (True, 'voxel spacing (1.0, 0.0, 1.0) mm is not usable (each must be finite, between 0.001 and 1000 mm)')
    """
    low, high = SPACING_RANGE_MM
    if all(math.isfinite(value) and low <= value <= high for value in spacing):
        return None
    shown = tuple(float(f"{value:.6g}") for value in spacing)
    return f"voxel spacing {shown} mm is not usable (each must be finite, between {low:g} and {high:g} mm)"


def _nifti_pixdims(path: Path) -> Tuple[float, ...]:
    """The spatial ``pixdim`` values stored in a NIfTI header (ITK reads 0 and NaN there as 1 mm)."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
        header = stream.read(_NIFTI_HEADER_BYTES)
    order = _nifti_layout(header)[0]
    if struct.unpack(f"{order}i", header[:4])[0] == 348:
        ndim = struct.unpack(f"{order}h", header[40:42])[0]
        values = struct.unpack(f"{order}8f", header[76:108])
    else:
        ndim = struct.unpack(f"{order}q", header[16:24])[0]
        values = struct.unpack(f"{order}8d", header[104:168])
    return tuple(abs(v) if math.isfinite(v) else v for v in values[1:1 + min(max(ndim, 0), 3)])


def _check_nifti(path: Path, reader: sitk.ImageFileReader, voxels: int, cap: int) -> None:
    """Compare the bytes a NIfTI header declares with those present; count stored NaN / Inf in float data."""
    try:
        problem = spacing_problem(_nifti_pixdims(path))
    except (OSError, ValueError, EOFError, struct.error, zlib.error):
        problem = None  # a header ITK reads but this does not: ITK's own spacing is checked instead
    if problem:
        raise InputImageError(f"{path}: {problem} in its NIfTI header; fix the header (pixdim) first")
    meta = {key: reader.GetMetaData(key) for key in ("datatype", "vox_offset", "nifti_type", "dim[0]")}
    try:
        datatype, nifti_type, ndim = int(meta["datatype"]), int(meta["nifti_type"]), int(meta["dim[0]"])
        offset = int(float(meta["vox_offset"]))
        shape = tuple(int(reader.GetMetaData(f"dim[{axis}]")) for axis in range(1, ndim + 1))
    except (RuntimeError, ValueError):
        return  # a header ITK describes differently: ITK's own reading decides
    if datatype not in _NIFTI_BYTES:
        return
    data_file = path
    if nifti_type not in _SINGLE_FILE:  # .hdr + .img pair: the voxels are in the .img file
        name = path.name.lower()
        data_file = path.with_name(path.name[: name.rfind(".hdr")] + ".img" + path.name[name.rfind(".hdr") + 4:])
        if not data_file.is_file():
            return
    per_voxel = _NIFTI_BYTES[datatype]
    expected = offset + math.prod(shape) * per_voxel
    with open(data_file, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        size = os.fstat(raw.fileno()).st_size
        if compressed:
            raw.seek(max(size - 4, 0))
            trailer = int.from_bytes(raw.read(4), "little")  # gzip ISIZE: uncompressed length mod 2**32
    if not compressed and size < expected:
        raise _short(data_file, shape, per_voxel, expected, size, "")
    certainly_short = compressed and size * _DEFLATE_MAX_RATIO < expected
    if voxels > cap and not certainly_short:
        raise _too_many(path, reader, voxels, cap)
    dtype = _NIFTI_FLOATS.get(datatype)
    length_known = not compressed or (trailer == expected % 2 ** 32 and size > FULL_CHECK_BYTES)
    if length_known and dtype is None:
        return  # the length is right (file size, or gzip's own record of it) and no stored value can be NaN
    numpy_type = np.dtype(_byte_order(path) + dtype) if dtype else None
    present, nans, infinities, broken = _scan(data_file, compressed, offset, expected, numpy_type)
    if present < expected or broken:
        raise _short(data_file, shape, per_voxel, expected, present, broken)
    if nans or infinities:
        raise InputImageError(
            f"{path}: {nans + infinities} of {math.prod(shape)} stored values are NaN ({nans}) or infinite "
            f"({infinities}); SimpleITK's NIfTI reader would turn them into 0. Fix or mask them first"
        )


def _byte_order(path: Path) -> str:
    """``<`` or ``>``, the byte order of a NIfTI file's header."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as header:
        return _nifti_layout(header.read(_NIFTI_HEADER_BYTES))[0]


def check_image_file(path: PathLike, voxel_limit: Optional[int] = None) -> None:
    """Refuse a damaged or hostile image file before SimpleITK allocates it.

    Reads the header only (SimpleITK) and, for NIfTI, compares the bytes it
    declares with those present: for ``.nii`` from the file size, for
    ``.nii.gz`` from gzip's recorded length (a full read only when that
    disagrees; files up to :data:`FULL_CHECK_BYTES` are decompressed in full to
    verify gzip's checksum too). Float NIfTI data is read once, raw, for NaN
    and infinities, which ITK's NIfTI reader would turn into 0. Raises InputImageError naming
    the file: voxel count past ``voxel_limit`` (default :func:`max_voxels`),
    expected vs present bytes, NaN / infinite values.

    Example:
        >>> check_image_file("sub-01_T2w.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    cap = max_voxels() if voxel_limit is None else voxel_limit
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputImageError(f"{path}: cannot be read as an image ({reason})") from error
    voxels = math.prod(reader.GetSize())
    problem = spacing_problem(reader.GetSpacing())
    if problem:
        raise InputImageError(f"{path}: {problem}")
    if reader.HasMetaDataKey("nifti_type"):  # ITK's NIfTI reader describes the header with these keys
        _check_nifti(path, reader, voxels, cap)
    elif voxels > cap:
        raise _too_many(path, reader, voxels, cap)


def read_image(path: PathLike) -> sitk.Image:
    """Read any image file (scan or mask) after :func:`check_image_file`; InputImageError names the file."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: file not found")
    check_image_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputImageError(f"{path}: cannot be read as an image ({reason})") from error


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
    problem = spacing_problem(image.GetSpacing())
    if problem:
        raise InputImageError(f"{name}: {problem}")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputImageError(f"{name}: {bad} of {array.size} voxels are NaN or infinite")
    if array.size and array.min() == array.max():
        raise InputImageError(f"{name}: image is constant (every voxel is {array.flat[0]}); nothing to segment")
    return image


def read_scan(path: PathLike) -> sitk.Image:
    """Read a scan (see :func:`read_image`) and check it (see :func:`check_scan`)."""
    return check_scan(read_image(path), str(path))


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
    header, size = b"", 0
    try:
        for chunk in _chunks(path, compressed=name.endswith(".gz")):  # bounded pieces; zlib checks CRC and length
            header += chunk[:_NIFTI_HEADER_BYTES - len(header)]
            size += len(chunk)
    except _BrokenGzip:
        raise ValueError("the gzip stream ends early") from None
    except _Corrupt as error:
        raise ValueError(f"damaged gzip stream ({error})") from None
    voxels = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    expected = _nifti_layout(header)[1] + voxels
    if size != expected:
        raise ValueError(f"{size} bytes of NIfTI data where {expected} were written")


def _nifti_layout(header: bytes) -> Tuple[str, int]:
    """(byte order, where the voxels start) of a NIfTI-1 or NIfTI-2 header; its own size (348 or 540) tells the order."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(f"{order}i", header[:4])[0] == 348:
            return order, int(struct.unpack(f"{order}f", header[108:112])[0])
        if len(header) >= 540 and struct.unpack(f"{order}i", header[:4])[0] == 540:
            return order, int(struct.unpack(f"{order}q", header[168:176])[0])
    raise ValueError("no NIfTI header")
