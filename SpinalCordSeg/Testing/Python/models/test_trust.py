"""Trust store and the weights-only check (SpinalCordSegLib.models.trust)."""

import json
from pathlib import PurePosixPath

import pytest
import torch

from SpinalCordSegLib.imaging import fileutil
from SpinalCordSegLib.paths import config_dir
from SpinalCordSegLib.models.trust import (
    TrustStore, TrustStoreError, WeightsOnlyCheck, changed_files, check_weights_only, untrusted_message,
)


def _check(path="/m/fold_0/checkpoint_final.pth", loadable=True):
    return WeightsOnlyCheck(PurePosixPath(path), loadable, "detail")


FILES = {"dataset.json": "a" * 64, "plans.json": "b" * 64, "fold_0/checkpoint_final.pth": "c" * 64}


def test_default_store_lives_in_the_config_folder():
    assert TrustStore().path == config_dir() / "trusted_models.json"


def test_trust_is_remembered_for_exactly_these_files(tmp_path):
    path = tmp_path / "config" / "trusted.json"
    store = TrustStore(path)
    assert not store.is_trusted(FILES)
    store.trust("/m", FILES, [_check(), _check("/m/fold_1/checkpoint_final.pth", False)], source="my model")
    again = TrustStore(path)
    assert again.is_trusted(FILES) and again.is_trusted(dict(reversed(list(FILES.items()))))
    # The same checkpoint beside another plans file, or with a file more or less, is another model.
    assert not again.is_trusted({**FILES, "plans.json": "d" * 64})
    assert not again.is_trusted({**FILES, "fold_1/checkpoint_final.pth": "e" * 64})
    assert not again.is_trusted({"fold_0/checkpoint_final.pth": "c" * 64})
    assert not again.is_trusted({})
    [record] = json.loads(path.read_text())["models"].values()
    assert record["source"] == "my model" and record["folder"] == "/m" and record["files"] == FILES
    assert record["weights_only_loadable"] == {"/m/fold_0/checkpoint_final.pth": True,
                                               "/m/fold_1/checkpoint_final.pth": False}
    assert again.trusted_before("/m") == FILES and again.trusted_before("/other") is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["trusted.json"]  # no temporary file left


def test_changed_files_names_each_file_and_both_checksums():
    changes = changed_files(FILES, {**FILES, "plans.json": "d" * 64, "fold_1/checkpoint_final.pth": "e" * 64})
    assert changes == {"fold_1/checkpoint_final.pth": "fold_1/checkpoint_final.pth is new",
                       "plans.json": f"plans.json changed (sha256 {'b' * 64} is now {'d' * 64})"}
    assert changed_files(FILES, {"plans.json": "b" * 64})["dataset.json"] == "dataset.json is gone"


def test_failed_write_keeps_the_previous_store(tmp_path, monkeypatch):
    path = tmp_path / "trusted.json"
    store = TrustStore(path)
    store.trust("/m", FILES, [_check()], source="first")
    before = path.read_bytes()

    # Test double: the data cannot reach the disk, as on a full disk (fsync failing after the write).
    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileutil.os, "fsync", failing_fsync)
    with pytest.raises(TrustStoreError, match="cannot write the trust store.*No space left"):
        store.trust("/n", {**FILES, "plans.json": "d" * 64}, [_check()], source="second")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trusted.json"]


@pytest.mark.parametrize("content, problem", [("{broken", "cannot read the trust store"),
                                              ('{"format": 2}', "no 'models' object")])
def test_corrupt_store_names_the_file(tmp_path, content, problem):
    path = tmp_path / "trusted.json"
    path.write_text(content)
    with pytest.raises(TrustStoreError) as error:
        TrustStore(path).is_trusted(FILES)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_weights_only_check_accepts_an_nnunet_checkpoint(tiny_model):
    check = check_weights_only(tiny_model / "fold_0" / "checkpoint_final.pth")
    assert check.loadable is True and "only tensors and plain data" in check.detail


def test_weights_only_check_refuses_other_objects(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    # A pathlib object is not on PyTorch's weights-only allow-list: the safe loader must refuse it.
    torch.save({"network_weights": {"w": torch.zeros(2)}, "extra": PurePosixPath("/x")}, path)
    check = check_weights_only(path)
    assert check.loadable is False and "NOT readable with torch.load(weights_only=True)" in check.detail
    # PyTorch's explanation is kept whole (which global it refused, and what to do), without colour codes.
    assert "Unsupported global: GLOBAL pathlib.PurePosixPath was not an allowed global" in check.detail
    assert "Check the documentation of torch.load" in check.detail and "\x1b[" not in check.detail


def test_weights_only_check_on_a_damaged_file(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(b"not a checkpoint")
    assert check_weights_only(path).loadable is False


def test_untrusted_message_says_why_and_lists_each_check():
    text = untrusted_message("model 'x'", "it is not from the catalogue", [
        WeightsOnlyCheck(PurePosixPath("/m/a.pth"), True, "readable"),
        WeightsOnlyCheck(PurePosixPath("/m/b.pth"), False, "NOT readable"),
    ], ["plans.json changed (sha256 b... is now d...)"])
    assert text.splitlines()[0] == "model 'x' is not trusted yet: it is not from the catalogue."
    assert text.splitlines()[1] == "  plans.json changed (sha256 b... is now d...)"
    assert "weights_only=False" in text
    assert "/m/a.pth: readable" in text and "/m/b.pth: NOT readable" in text
