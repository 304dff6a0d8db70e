"""Safe extraction of model zips (SpinalCordSegLib.models.archive)."""

import errno
import stat
import zipfile
from pathlib import Path

import pytest

from SpinalCordSegLib.models import archive
from SpinalCordSegLib.models.archive import extract_zip
from SpinalCordSegLib.imaging.fileutil import format_size
from SpinalCordSegLib.errors import ModelInstallError


def _zip(path: Path, members: dict, links: dict = None) -> Path:
    """Write a zip: name -> bytes, plus symbolic links name -> target (Unix mode in external_attr)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zip_file:
        for name, data in members.items():
            zip_file.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zip_file.writestr(info, target)
    return path


def _tree(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_extracts_files_and_folders(tmp_path):
    source = _zip(tmp_path / "ok.zip", {"a/b/c.txt": b"hello", "a/d.bin": bytes(range(256)), "e/": b""})
    extract_zip(source, tmp_path / "out")
    assert (tmp_path / "out/a/b/c.txt").read_bytes() == b"hello"
    assert (tmp_path / "out/a/d.bin").read_bytes() == bytes(range(256))
    assert (tmp_path / "out/e").is_dir()


@pytest.mark.parametrize("name, problem", [
    ("../evil.txt", "'..'"),
    ("a/../../evil.txt", "'..'"),
    ("..\\evil.txt", "'..'"),
    ("/tmp/evil.txt", "absolute path"),
    ("C:/evil.txt", "absolute path"),
])
def test_zip_slip_is_refused_before_writing_anything(tmp_path, name, problem):
    source = _zip(tmp_path / "slip.zip", {"good.txt": b"fine", name: b"evil"})
    out = tmp_path / "box" / "out"
    with pytest.raises(ModelInstallError) as error:
        extract_zip(source, out)
    message = str(error.value)
    assert str(source) in message and repr(name) in message and problem in message
    assert not out.exists()  # checked before anything was written
    assert not (tmp_path / "box" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_link_pointing_outside_is_refused(tmp_path):
    source = _zip(tmp_path / "link.zip", {"model/dataset.json": b"{}"},
                  links={"model/escape": "../../../etc/passwd"})
    with pytest.raises(ModelInstallError, match="outside the archive") as error:
        extract_zip(source, tmp_path / "out")
    assert "model/escape" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_absolute_link_is_refused_as_outside(tmp_path):
    source = _zip(tmp_path / "link.zip", {}, links={"model/abs": "/etc/passwd"})
    with pytest.raises(ModelInstallError, match="outside the archive"):
        extract_zip(source, tmp_path / "out")


def test_link_inside_is_refused_as_not_a_plain_file(tmp_path):
    source = _zip(tmp_path / "link.zip", {"model/a.txt": b"x"}, links={"model/b.txt": "a.txt"})
    with pytest.raises(ModelInstallError, match="plain files"):
        extract_zip(source, tmp_path / "out")


def test_archive_expanding_past_the_limit_is_refused(tmp_path):
    # 2 MiB of zeros compresses to a few KiB: the limit applies to the expanded size.
    source = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(2 * 1024 * 1024)})
    assert source.stat().st_size < 64 * 1024
    with pytest.raises(ModelInstallError, match="expands to more than the limit of 1.0 MiB"):
        extract_zip(source, tmp_path / "out", max_bytes=1024 * 1024, max_ratio=2000)
    assert not (tmp_path / "out").exists()
    extract_zip(source, tmp_path / "out", max_bytes=3 * 1024 * 1024, max_ratio=2000)  # under both limits: fine
    assert (tmp_path / "out/zeros.bin").stat().st_size == 2 * 1024 * 1024


def test_zip_bomb_member_is_refused_by_its_compression_ratio(tmp_path):
    """A real zip whose checkpoint is 20 MiB of zeros in 20 KiB: far under the size limit, refused by ratio."""
    source = _zip(tmp_path / "bomb.zip", {"Dataset1/T__P__3d_fullres/plans.json": b"{}",
                                          "Dataset1/T__P__3d_fullres/fold_0/checkpoint_final.pth": bytes(20 << 20)})
    assert source.stat().st_size < 64 * 1024
    with pytest.raises(ModelInstallError) as error:
        extract_zip(source, tmp_path / "out")
    message = str(error.value)
    assert str(source) in message and "member 'Dataset1/T__P__3d_fullres/fold_0/checkpoint_final.pth'" in message
    assert "to 20.0 MiB (ratio" in message and "limit 100:1): a zip bomb" in message
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_archive_of_many_small_members_is_held_to_the_ratio_as_a_whole(tmp_path):
    # Each member is under the 1 MiB floor of the per-member check; together 40 MiB from ~50 KiB.
    source = _zip(tmp_path / "many.zip", {f"model/part{i}.bin": bytes(1 << 20) for i in range(40)})
    with pytest.raises(ModelInstallError, match="the archive expands .* to 40.0 MiB .*a zip bomb"):
        extract_zip(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_weights_pass_the_ratio_check(tmp_path):
    # Random float weights barely compress: a real checkpoint's ratio is near 1:1.
    import numpy as np

    weights = np.random.default_rng(0).standard_normal(600_000).astype(np.float32).tobytes()
    source = _zip(tmp_path / "ok.zip", {"model/fold_0/checkpoint_final.pth": weights, "model/plans.json": b"{}" * 10})
    extract_zip(source, tmp_path / "out")
    assert (tmp_path / "out/model/fold_0/checkpoint_final.pth").read_bytes() == weights


def test_duplicate_member_is_refused(tmp_path):
    source = tmp_path / "dup.zip"
    with zipfile.ZipFile(source, "w") as zip_file, pytest.warns(UserWarning, match="Duplicate name"):
        zip_file.writestr("model/a.txt", b"first")
        zip_file.writestr("model/a.txt", b"second")
    with pytest.raises(ModelInstallError, match="appears twice"):
        extract_zip(source, tmp_path / "out")


def test_not_a_zip(tmp_path):
    source = tmp_path / "model.zip"
    source.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ModelInstallError, match="not a valid zip file") as error:
        extract_zip(source, tmp_path / "out")
    assert str(source) in str(error.value)


def test_corrupt_member_is_reported(tmp_path):
    source = _zip(tmp_path / "model.zip", {"model/weights.bin": b"w" * 5000})
    data = bytearray(source.read_bytes())
    offset = data.index(b"model/weights.bin") + len("model/weights.bin") + 5  # inside the compressed data
    data[offset] ^= 0xFF
    source.write_bytes(bytes(data))
    with pytest.raises(ModelInstallError) as error:
        extract_zip(source, tmp_path / "out")
    assert str(source) in str(error.value)


def test_disk_full_while_writing(tmp_path, monkeypatch):
    # Test double: a full disk cannot be made here without root, so the copy raises ENOSPC as the OS would.
    def full_disk(source, target, length=0):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.shutil, "copyfileobj", full_disk)
    source = _zip(tmp_path / "model.zip", {"model/weights.bin": b"w" * 5000})
    with pytest.raises(ModelInstallError, match=r"disk full.*No space left on device") as error:
        extract_zip(source, tmp_path / "out")
    assert str(source) in str(error.value)


def test_root_entry_is_ignored(tmp_path):
    source = _zip(tmp_path / "model.zip", {"./": b"", "./model/a.txt": b"a"})
    extract_zip(source, tmp_path / "out")
    assert _tree(tmp_path / "out") == ["model", "model/a.txt"]


@pytest.mark.parametrize("size, text", [(None, "size unknown"), (512, "512 bytes"), (1536, "1.5 KiB"),
                                        (5 * 1024 ** 3, "5.0 GiB"), (3 * 1024 ** 4, "3.0 TiB")])
def test_format_size(size, text):
    assert format_size(size) == text
