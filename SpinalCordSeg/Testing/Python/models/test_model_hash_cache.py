"""Model files are hashed once per process while unchanged (issue 30, item 5), and again whenever anything changed.

Which files are read is seen through Python's own audit hook (``open``
events), on a real nnU-Net results folder and the real model store.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

from SpinalCordSegLib.errors import UntrustedModelError
from SpinalCordSegLib.models.model_folder import ModelFolder, sha256_of_file
from SpinalCordSegLib.models.model_store import ModelStore

_WATCHED = []  # (folder, list of opened paths) while a test watches


def _audit(event, args):
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        folder, opened = _WATCHED[-1]
        path = os.fsdecode(args[0])
        if path.startswith(folder):
            opened.append(path)


sys.addaudithook(_audit)  # hooks cannot be removed; it records only while _WATCHED holds a folder


def _opened_while(folder: Path, action):
    opened = []
    _WATCHED.append((str(folder.resolve()), opened))
    try:
        result = action()
    finally:
        _WATCHED.pop()
    return result, opened


@pytest.fixture
def model(tmp_path, tiny_model):
    return Path(shutil.copytree(tiny_model, tmp_path / "copy" / tiny_model.name))


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size and path.stat().st_mtime_ns == info.st_mtime_ns


def test_an_unchanged_model_is_not_read_again(model):
    folder = ModelFolder.open(model)
    first, opened = _opened_while(model, folder.file_sha256)
    assert any(p.endswith(".pth") for p in opened)
    second, opened = _opened_while(model, ModelFolder.open(model).file_sha256)
    assert second == first and not [p for p in opened if p.endswith(".pth")]
    checkpoint = model / folder.checkpoint_file(folder.folds[0])
    assert first[folder.checkpoint_file(folder.folds[0])] == sha256_of_file(checkpoint)


def test_a_file_rewritten_with_its_size_and_mtime_put_back_is_hashed_again(model):
    folder = ModelFolder.open(model)
    name = folder.checkpoint_file(folder.folds[0])
    before = folder.file_sha256()[name]
    _rewrite_keeping_size_and_mtime(model / name)
    after = folder.file_sha256()[name]
    assert after != before and after == sha256_of_file(model / name)


def test_a_trusted_model_resolves_without_rereading_and_a_tampered_one_is_refused(model, tmp_path):
    store = ModelStore(models_dir=tmp_path / "store")
    store.resolve(str(model), trust=True)
    resolved, opened = _opened_while(model, lambda: store.resolve(str(model)))
    assert resolved.trusted_because == "user"
    assert not [p for p in opened if p.endswith(".pth")]  # the checkpoints were not read again
    folder = ModelFolder.open(model)
    _rewrite_keeping_size_and_mtime(model / folder.checkpoint_file(folder.folds[0]))
    with pytest.raises(UntrustedModelError, match="changed"):
        store.resolve(str(model))
