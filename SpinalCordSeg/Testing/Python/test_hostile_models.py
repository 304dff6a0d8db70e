"""Hostile model folders and JSON files, third round (issue 27): refused by name, never followed.

Real model folders (the synthetic nnU-Net layout), real symbolic links, a real FIFO and
``/dev/zero``, real JSON files nested past Python's recursion limit.
"""

import os
import shutil
from pathlib import Path

import pytest

from SpinalCordSegLib.cli import main
from SpinalCordSegLib.errors import ModelFolderError, ModelInstallError, SpinalCordSegError
from SpinalCordSegLib.imaging.fileutil import read_json
from SpinalCordSegLib.imaging.sidecar import Sidecar
from SpinalCordSegLib.models.model_folder import ModelFolder
from SpinalCordSegLib.models.model_store import RECORD_FILE, ModelStore
from SpinalCordSegLib.paths import config_dir, models_dir

#: A JSON text nested far past Python's recursion limit (``json`` raises RecursionError).
DEEP = "[" * 100000 + "]" * 100000


def _copy(model: Path, where: Path) -> Path:
    return Path(shutil.copytree(model, where / model.name))


# -- item 3: models install --from FOLDER -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["secret file", "folder", "dev zero", "fifo", "dangling"])
def test_install_from_a_folder_refuses_links_and_special_files(kind, tiny_model, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's password")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "id_rsa").write_text("key")
    model = _copy(tiny_model, tmp_path / "model")
    entry = model / "fold_0" / "extra"
    if kind == "secret file":
        entry.symlink_to(secret)
    elif kind == "folder":
        entry.symlink_to(tmp_path / "private", target_is_directory=True)
    elif kind == "dev zero":
        entry.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(entry)
    else:
        entry.symlink_to(tmp_path / "gone")
    code = main(["models", "install", "mine", "--from", str(model)])
    error = capsys.readouterr().err
    assert code == 1
    what = "is a special file" if kind == "fifo" else "is a symbolic link"
    assert f"spinalcordseg: error: {entry}: {what}" in error and "refusing to install" in error
    installed = [p for p in models_dir().rglob("*")] if models_dir().is_dir() else []
    assert installed == [], installed  # nothing copied, no staging folder left


def test_install_from_a_plain_folder_still_works(tiny_model, tmp_path):
    model = ModelStore().install_from(_copy(tiny_model, tmp_path / "model"), "mine")
    assert not [p for p in model.path.rglob("*") if p.is_symlink()]
    assert [m.id for m in ModelStore().installed()] == ["mine"]


# -- item 9: deeply nested JSON ---------------------------------------------------------------------

def test_the_json_reader_names_the_file_for_every_kind_of_bad_json(tmp_path):
    cases = {"deep.json": DEEP.encode(), "broken.json": b"{", "latin1.json": b'{"a": "\xe9"}'}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SpinalCordSegError, match=f"{name}: cannot read the test file"):
            read_json(tmp_path / name, "the test file")
    with pytest.raises(SpinalCordSegError, match=r"deep.json: cannot read the test file \(JSON nested too deeply\)"):
        read_json(tmp_path / "deep.json", "the test file")


@pytest.mark.parametrize("name", ["plans.json", "dataset.json"])
def test_deeply_nested_model_json_is_refused_naming_the_file(name, tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path / "model")
    (model / name).write_text(DEEP)
    with pytest.raises(ModelFolderError, match=f"{name}: cannot read JSON \\(JSON nested too deeply\\)"):
        ModelFolder.open(model)


def test_one_bad_model_never_hides_the_others_in_models_list(tiny_model, tmp_path, capsys, caplog):
    store = ModelStore()
    for model_id in ("good", "deep-plans", "deep-dataset", "deep-record"):
        store.install_from(tiny_model, model_id)
    (models_dir() / "deep-plans" / tiny_model.name / "plans.json").write_text(DEEP)
    (models_dir() / "deep-dataset" / tiny_model.name / "dataset.json").write_text(DEEP)
    (models_dir() / "deep-record" / RECORD_FILE).write_text(DEEP)

    assert main(["models", "list"]) == 0
    printed = capsys.readouterr().out
    for model_id in ("good", "deep-plans", "deep-dataset", "deep-record"):
        assert f"\n{model_id} " in printed, printed
    assert "deep-plans: unusable:" in printed and "plans.json: cannot read JSON (JSON nested too deeply)" in printed
    assert "dataset.json: cannot read JSON (JSON nested too deeply)" in printed
    assert f"{RECORD_FILE}: cannot read the install record (JSON nested too deeply)" in caplog.text

    config_dir().mkdir(parents=True, exist_ok=True)
    (config_dir() / "trusted_models.json").write_text(DEEP)
    assert main(["models", "list"]) == 0
    printed = capsys.readouterr().out
    assert "\ngood " in printed and "trusted_models.json: cannot read the trust store" in printed
    assert main(["models", "info", "good"]) == 0 and "JSON nested too deeply" in capsys.readouterr().out


def test_deeply_nested_sidecar_and_catalogue_are_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    mask = tmp_path / "sub-01_T2w_label-SC_seg.nii.gz"
    (tmp_path / "sub-01_T2w_label-SC_seg.json").write_text(DEEP)
    with pytest.raises(SpinalCordSegError, match="sub-01_T2w_label-SC_seg.json: cannot read the sidecar"):
        Sidecar.read(mask)
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(DEEP)
    monkeypatch.setenv("SPINALCORDSEG_CATALOGUE", str(catalogue))
    assert main(["models", "list"]) == 1
    assert f"spinalcordseg: error: {catalogue}: cannot read the model catalogue" in capsys.readouterr().err


# -- reserved model ids ------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", ["current", "CURRENT", "current.json"])
def test_install_refuses_a_reserved_id_naming_it(model_id, tiny_model, tmp_path, capsys):
    """'current' names the promoted model (``-m current``); current.json records it in the models folder."""
    store = ModelStore()
    store.set_current("promoted")
    record = (models_dir() / "current.json").read_bytes()
    model = _copy(tiny_model, tmp_path / "model")
    assert main(["models", "install", model_id, "--from", str(model), "--force"]) == 1
    error = capsys.readouterr().err
    assert f"spinalcordseg: error: model id '{model_id}' is reserved" in error
    assert sorted(p.name for p in models_dir().iterdir()) == ["current.json"]  # nothing installed, nothing moved
    assert (models_dir() / "current.json").read_bytes() == record
    with pytest.raises(ModelInstallError, match=f"model id '{model_id}' is reserved"):
        store.install_trained(model, model_id, {"files_sha256": {}})


def test_a_model_named_current_gets_another_id(tiny_model, tmp_path, capsys):
    """A folder or zip called 'current' without an id: the error says how to name it; a zip used with -m still works."""
    model = tmp_path / "current"
    shutil.copytree(tiny_model, model / tiny_model.name)
    assert main(["models", "install", "--from", str(model)]) == 1
    assert "model id 'current' is reserved" in capsys.readouterr().err
    archive = Path(shutil.make_archive(str(tmp_path / "zips" / "current"), "zip", model))
    installed = ModelStore()._installed_zip(archive)
    assert installed.id.startswith("current-") and installed.path.parent == models_dir()


# -- links inside a model folder ------------------------------------------------------------------------

def test_the_results_folder_search_never_follows_links(tiny_model, tmp_path):
    """A stranger's model folder: links back to itself (a loop) and out to another model are not searched."""
    from SpinalCordSegLib.models.model_folder import find_results_folder

    elsewhere = _copy(tiny_model, tmp_path / "someone-else")  # another results folder, outside
    folder = tmp_path / "download"
    real = _copy(tiny_model, folder / "model")
    for number in range(8):  # 8 links to the folder itself: 8**3 folders if followed
        (folder / f"loop{number}").symlink_to(folder, target_is_directory=True)
    (folder / "model" / "other").symlink_to(elsewhere.parent, target_is_directory=True)
    (folder / "out").symlink_to(elsewhere, target_is_directory=True)
    assert find_results_folder(folder) == real
    assert ModelFolder.open(folder).path == real

    only_links = tmp_path / "only-links"
    only_links.mkdir()
    (only_links / "out").symlink_to(elsewhere, target_is_directory=True)
    (only_links / "loop").symlink_to(only_links, target_is_directory=True)
    with pytest.raises(ModelFolderError, match=f"{only_links}: no nnU-Net results folder"):
        find_results_folder(only_links)
    assert find_results_folder(only_links / "out") == only_links / "out"  # a link given by the user is followed
