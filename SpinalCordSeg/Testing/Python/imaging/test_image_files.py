"""Damaged and hostile image files are refused before SimpleITK allocates them (image_io.check_image_file).

Every file here is real: the shared T2w scan cut short with ``head``'s arithmetic,
its raw NIfTI bytes, headers declaring more voxels than the file holds, NaN
written by SimpleITK and nibabel, a corrupt gzip stream. SimpleITK alone
zero-fills what is missing and reads NaN as 0; these tests fail without the checks.
"""

import csv
import gzip
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.errors import InputImageError
from SpinalCordSegLib.imaging.image_io import (
    DEFAULT_MAX_VOXELS, FULL_CHECK_BYTES, MAX_VOXELS_ENV, check_image_file, read_image, read_scan,
)


@pytest.fixture
def t2(sample_data) -> Path:
    return sample_data.scan  # SCT's t2/t2_fake_lesion.nii.gz


def _raw(t2: Path) -> bytes:
    return gzip.decompress(t2.read_bytes())  # the .nii bytes: 352-byte header, 99 x 99 x 29 int16


def test_half_of_a_gzip_nifti_is_refused_with_expected_and_present_bytes(t2, tmp_path):
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(cut))).shape == (29, 99, 99)  # ITK alone: zero-filled
    with pytest.raises(InputImageError) as error:
        read_scan(cut)
    message = str(error.value)
    assert message.startswith(f"{cut}: truncated or damaged")
    assert "99 x 99 x 29 voxels of 2 byte(s), 568810 bytes with the header, but the file holds" in message
    present = int(message.split("the file holds ")[1].split()[0])
    assert 0 < present < 568810 and "gzip data is cut short" in message


def test_short_uncompressed_nifti_is_refused(t2, tmp_path):
    raw = _raw(t2)
    short = tmp_path / "short.nii"
    short.write_bytes(raw[: len(raw) - 6000])
    with pytest.raises(InputImageError, match=r"568810 bytes with the header, but the file holds 562810 bytes"):
        read_image(short)
    (tmp_path / "whole.nii").write_bytes(raw)
    assert read_scan(tmp_path / "whole.nii").GetSize() == (99, 99, 29)


@pytest.mark.parametrize("compress", [False, True])
def test_small_file_declaring_a_billion_floats_is_refused_before_allocating(t2, tmp_path, compress):
    header = bytearray(_raw(t2)[:352])
    struct.pack_into("<8h", header, 40, 3, 1000, 1000, 1000, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", header, 70, 16, 32)  # datatype float32, bitpix
    data = bytes(header) + bytes(700)
    path = tmp_path / ("bomb.nii.gz" if compress else "bomb.nii")
    path.write_bytes(gzip.compress(data) if compress else data)
    # In a process that cannot allocate the 4 GB that ITK would: refused by the byte count, not by memory.
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from SpinalCordSegLib.errors import InputImageError
        from SpinalCordSegLib.imaging.image_io import read_scan
        try:
            read_scan({str(path)!r})
        except InputImageError as error:
            print(error)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 3, result.stderr[-2000:]
    assert "1000 x 1000 x 1000 voxels of 4 byte(s), 4000000352 bytes with the header, but the file holds 1052 " \
           "bytes" in result.stdout


def test_voxel_cap_has_a_setting_to_raise_it(t2, monkeypatch):
    assert DEFAULT_MAX_VOXELS == 2 ** 28
    monkeypatch.setenv(MAX_VOXELS_ENV, "100000")
    with pytest.raises(InputImageError) as error:
        read_scan(t2)
    declared = f"{t2}: its header declares 99 x 99 x 29 = 284,229 voxels, more than the limit of 100,000"
    assert declared in str(error.value)
    assert f"raise the limit with {MAX_VOXELS_ENV}=" in str(error.value)
    monkeypatch.setenv(MAX_VOXELS_ENV, "284229")
    assert read_scan(t2).GetSize() == (99, 99, 29)
    monkeypatch.setenv(MAX_VOXELS_ENV, "many")
    with pytest.raises(Exception, match="must be a positive whole number"):
        read_scan(t2)


def _with_nan(t2: Path, path: Path, fill) -> Path:
    image = sitk.Cast(sitk.ReadImage(str(t2)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    fill(array)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_partly_nan_nifti_is_refused_saying_nan(t2, tmp_path, suffix):
    path = _with_nan(t2, tmp_path / f"nan{suffix}", lambda a: a.__setitem__((slice(10, 20),), np.nan))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # ITK alone reads them as 0
    with pytest.raises(InputImageError) as error:
        read_scan(path)
    assert str(error.value).startswith(f"{path}: 98010 of 284229 stored values are NaN (98010) or infinite (0)")


def test_all_nan_nifti_is_reported_as_nan_not_constant(t2, tmp_path):
    path = _with_nan(t2, tmp_path / "allnan.nii.gz", lambda a: a.fill(np.nan))
    with pytest.raises(InputImageError, match="284229 of 284229 stored values are NaN") as error:
        read_scan(path)
    assert "constant" not in str(error.value)


def test_infinite_values_are_refused(t2, tmp_path):
    path = _with_nan(t2, tmp_path / "inf.nii.gz", lambda a: a.__setitem__((0, 0, slice(0, 5)), -np.inf))
    with pytest.raises(InputImageError, match=r"5 of 284229 stored values are NaN \(0\) or infinite \(5\)"):
        read_scan(path)


def test_big_endian_float_nifti_is_read_in_its_own_byte_order(tmp_path):
    """A big-endian file (nibabel writes one on request): finite values pass, a NaN is found."""
    data = np.linspace(1, 100, 8 * 9 * 10, dtype=">f4").reshape(8, 9, 10)
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(">f4")
    nib.save(nib.Nifti1Image(data, np.eye(4), header), tmp_path / "big_endian.nii.gz")
    assert read_scan(tmp_path / "big_endian.nii.gz").GetSize() == (8, 9, 10)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4), header), tmp_path / "big_endian_nan.nii.gz")
    with pytest.raises(InputImageError, match="1 of 720 stored values are NaN"):
        read_scan(tmp_path / "big_endian_nan.nii.gz")


def test_corrupt_gzip_data_is_refused(t2, tmp_path):
    data = bytearray(t2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputImageError, match="damaged: its gzip data is corrupt"):
        read_scan(path)
    assert path.stat().st_size < FULL_CHECK_BYTES  # files up to that size get the checksum verified


def test_concatenated_gzip_members_are_a_valid_file(t2, tmp_path):
    """Block-gzip writers (bgzip) store several gzip members: the file is whole, and read as such."""
    raw = _raw(t2)
    path = tmp_path / "blocks.nii.gz"
    path.write_bytes(b"".join(gzip.compress(raw[i:i + 65536]) for i in range(0, len(raw), 65536)))
    assert np.array_equal(sitk.GetArrayFromImage(read_scan(path)), sitk.GetArrayFromImage(sitk.ReadImage(str(t2))))


def test_every_shared_scan_and_mask_passes(shared_data):
    files = sorted(shared_data.glob("*/*/*.nii.gz"))
    assert len(files) >= 15
    for path in files:
        check_image_file(path)


def test_crop_mask_and_measure_inputs_are_checked_too(t2, tmp_path):
    from SpinalCordSegLib.inference.engine import load_crop_mask
    from SpinalCordSegLib.measures.morphometrics import load_image

    cut = tmp_path / "mask.nii.gz"
    cut.write_bytes(t2.read_bytes()[:20000])
    for read in (load_crop_mask, load_image):
        with pytest.raises(InputImageError, match="truncated or damaged"):
            read(cut)


def test_lesionqc_session_refuses_a_truncated_scan(t2, tmp_path, sample_data):
    """``lesionqc make-session`` copied a truncated scan to raters; it is refused, naming the case and file."""
    from LesionQCLib.errors import ManifestError
    from LesionQCLib.session import make_session

    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2])
    manual = sample_data.cord
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "image", "seg:manual", "seg:model"])
        writer.writerow(["sub-01", str(t2), str(manual), str(manual)])
        writer.writerow(["sub-02", str(cut), str(manual), str(manual)])
    with pytest.raises(ManifestError) as error:
        make_session(manifest, tmp_path / "session", seed=1, key_path=tmp_path / "key.json")
    assert f"{cut}: truncated or damaged" in str(error.value)
    assert not (tmp_path / "session").exists() or not any((tmp_path / "session").iterdir())
    json.dumps(str(error.value))  # a plain message
