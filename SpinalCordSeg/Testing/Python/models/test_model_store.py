"""Installing, listing, removing and resolving models from local zips and folders (model_store).

Installs over HTTP are in test_download.py. Here the catalogue is the
shipped one, or a test catalogue selected with SPINALCORDSEG_CATALOGUE.
"""

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from SpinalCordSegLib.models.catalogue import CATALOGUE_ENV
from SpinalCordSegLib.errors import ModelFolderError, ModelInstallError, UntrustedModelError
from SpinalCordSegLib.models.model_folder import sha256_of_file
from SpinalCordSegLib.models.model_store import RECORD_FILE, ModelStore, resolve_model
from SpinalCordSegLib.paths import config_dir, models_dir
from SpinalCordSegLib.resources import resources_dir


def _release(tiny_model: Path, where: Path, name: str, dataset: str = "Dataset900_SyntheticCord",
             fold: str = "0") -> Path:
    """A release zip ``where/name.zip`` holding ``<dataset>/<results folder>`` with one fold."""
    tree = where / f"{name}-tree"
    results = tree / dataset / tiny_model.name
    shutil.copytree(tiny_model, results)
    if fold != "0":
        (results / "fold_0").rename(results / f"fold_{fold}")
    return Path(shutil.make_archive(str(where / name), "zip", root_dir=tree))


def _listing(folder: Path) -> list:
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*"))


@pytest.fixture
def release(tiny_model, tmp_path):
    return _release(tiny_model, tmp_path, "my-release")


@pytest.fixture
def test_catalogue(tmp_path, monkeypatch):
    """The shipped catalogue plus changes, written next to a Models folder and selected by env var."""

    def write(pins=None, extra=()):
        data = json.loads((resources_dir() / "models.json").read_text())
        # The shipped built-in models live next to the shipped catalogue, not next to this one.
        data["models"] = [entry for entry in data["models"] if not entry.get("builtin")]
        for entry in data["models"]:
            for asset in entry.get("assets", []):  # the spine entry (runner) has none
                asset["sha256"] = (pins or {}).get(asset["name"])
        data["models"].extend(extra)
        path = tmp_path / "catalogue" / "models.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data))
        monkeypatch.setenv(CATALOGUE_ENV, str(path))
        return path.parent / "Models"

    return write


# -- custom models ---------------------------------------------------------------------------------


def test_install_from_zip_is_listed_with_size_and_source(release, tiny_model):
    store = ModelStore()
    model = store.install_from(release)
    assert model.id == "my-release" and model.path == models_dir() / "my-release"
    [listed] = store.installed()
    assert listed.id == "my-release" and listed.source == f"zip: {release.resolve()}"
    assert listed.size_bytes() == sum(f.stat().st_size for f in model.path.rglob("*") if f.is_file())
    assert listed.results_folder() == model.path / "Dataset900_SyntheticCord" / tiny_model.name
    assert listed.record["archive_sha256"] == {"my-release.zip": sha256_of_file(release)}
    assert str(store.trust_status(listed)) == "not trusted"


def test_install_from_folder_copies_the_results_folder(tiny_model):
    model = ModelStore().install_from(tiny_model.parent, "copied")
    assert model.results_folder() == models_dir() / "copied" / tiny_model.name
    assert model.source == f"folder: {tiny_model.parent.resolve()}"
    assert (tiny_model / "fold_0" / "checkpoint_final.pth").is_file()  # the user's folder is untouched


def test_custom_model_needs_trust_and_the_decision_is_remembered(release):
    ModelStore().install_from(release)
    with pytest.raises(UntrustedModelError) as error:
        resolve_model("my-release")
    message = str(error.value)
    assert "not trusted yet" in message and "--trust" in message
    assert "checkpoint_final.pth: readable with torch.load(weights_only=True)" in message
    assert not (config_dir() / "trusted_models.json").exists()

    resolved = resolve_model("my-release", trust=True)
    assert resolved.trusted_because == "user" and resolved.model_id == "my-release"
    assert resolved.sha256 == {"0": sha256_of_file(resolved.folder / "fold_0" / "checkpoint_final.pth")}
    assert (resolved.orientation, resolved.crop_with, resolved.version) == (None, None, None)
    assert resolve_model("my-release").trusted_because == "user"  # remembered
    assert str(ModelStore().trust_status(ModelStore().get_installed("my-release"))) == "user"


def test_confirm_callback_decides_trust(release):
    ModelStore().install_from(release)
    asked = []
    with pytest.raises(UntrustedModelError):
        resolve_model("my-release", confirm=lambda question: asked.append(question) or False)
    assert len(asked) == 1 and "Trust this model folder?" in asked[0] and "weights_only=True" in asked[0]
    assert resolve_model("my-release", confirm=lambda question: True).trusted_because == "user"


def test_changed_checkpoint_is_not_trusted_any_more(release):
    resolved = resolve_model(str(release), trust=True)
    checkpoint = resolved.folder / "fold_0" / "checkpoint_final.pth"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["current_epoch"] = 99
    torch.save(state, checkpoint)
    with pytest.raises(UntrustedModelError, match="not trusted yet") as error:
        resolve_model(str(release))
    # The refusal says which file changed.
    assert "fold_0/checkpoint_final.pth changed (sha256" in str(error.value)
    assert "since you trusted it" in str(error.value)


def test_folder_path_is_used_in_place(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model.parent, tmp_path / "research" / "Dataset900")
    resolved = resolve_model(str(folder), trust=True)
    assert resolved.folder == folder / tiny_model.name
    assert (resolved.model_id, resolved.version, resolved.trusted_because) == (None, None, "user")
    assert _listing(models_dir()) == []


def test_zip_path_is_installed_once_and_found_again_by_checksum(release, tiny_model, tmp_path):
    first = resolve_model(str(release), trust=True)
    assert first.model_id == "my-release"
    before = _listing(models_dir())
    assert resolve_model(str(release)).folder == first.folder and _listing(models_dir()) == before
    # Another zip with the same name but other content gets its own id.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = _release(tiny_model, other_dir, "my-release", dataset="Dataset902_Other")
    second = resolve_model(str(other), trust=True)
    assert second.model_id == f"my-release-{sha256_of_file(other)[:8]}" and second.folder != first.folder


def test_unknown_spec(tmp_path):
    with pytest.raises(ModelInstallError, match="unknown model 'nothing-here'.*models list"):
        resolve_model("nothing-here")


def test_model_copied_by_hand_into_the_models_folder_is_usable(tiny_model):
    shutil.copytree(tiny_model.parent, models_dir() / "by-hand" / "Dataset900")
    store = ModelStore()
    [model] = store.installed()
    assert model.id == "by-hand" and model.source == f"unknown (no {RECORD_FILE})"
    assert resolve_model("by-hand", trust=True).folder == models_dir() / "by-hand" / "Dataset900" / tiny_model.name


# -- bad input leaves the models folder as it was -------------------------------------------------


def _bad_source(kind: str, tiny_model: Path, tmp_path: Path) -> Path:
    if kind == "no-nnunet-folder":
        path = tmp_path / "empty.zip"
        with zipfile.ZipFile(path, "w") as zip_file:
            zip_file.writestr("release/README.txt", "nothing here")
        return path
    if kind == "two-folders":
        tree = tmp_path / "two"
        shutil.copytree(tiny_model, tree / "Dataset1" / tiny_model.name)
        shutil.copytree(tiny_model, tree / "Dataset2" / tiny_model.name)
        return Path(shutil.make_archive(str(tmp_path / "two"), "zip", root_dir=tree))
    if kind == "zip-slip":
        path = _release(tiny_model, tmp_path, "slip")
        with zipfile.ZipFile(path, "a") as zip_file:
            zip_file.writestr("../../outside.py", "import os")
        return path
    if kind == "not-a-zip":
        path = tmp_path / "page.zip"
        path.write_text("<html>Not Found</html>")
        return path
    if kind == "bad-dataset-json":
        tree = tmp_path / "badjson"
        shutil.copytree(tiny_model, tree / "Dataset3" / tiny_model.name)
        (tree / "Dataset3" / tiny_model.name / "dataset.json").write_text('{"channel_names": {"0": "T2w"}}')
        return Path(shutil.make_archive(str(tmp_path / "badjson"), "zip", root_dir=tree))
    if kind == "folder-without-model":
        (tmp_path / "just-a-folder").mkdir()
        return tmp_path / "just-a-folder"
    assert kind == "missing"
    return tmp_path / "does-not-exist.zip"


@pytest.mark.parametrize("kind, error_type, problem", [
    ("no-nnunet-folder", ModelFolderError, "no nnU-Net results folder"),
    ("two-folders", ModelFolderError, "several nnU-Net results folders found (Dataset1/"),
    ("zip-slip", ModelInstallError, "outside the archive"),
    ("not-a-zip", ModelInstallError, "not a valid zip file"),
    ("bad-dataset-json", ModelFolderError, "dataset.json: 'labels' must be a non-empty mapping"),
    ("folder-without-model", ModelFolderError, "no nnU-Net results folder"),
    ("missing", ModelInstallError, "no such file or folder"),
])
def test_bad_source_is_named_and_leaves_the_models_folder_as_it_was(
        release, tiny_model, tmp_path, kind, error_type, problem):
    store = ModelStore()
    store.install_from(release, "keep-me")
    before = _listing(models_dir())
    source = _bad_source(kind, tiny_model, tmp_path)
    with pytest.raises(error_type) as error:
        store.install_from(source, "new-model")
    assert str(source) in str(error.value) and problem in str(error.value)
    assert ".install-" not in str(error.value)  # errors name the user's file, not the staging folder
    assert _listing(models_dir()) == before


def test_failed_reinstall_keeps_the_installed_model(release, tiny_model, tmp_path):
    store = ModelStore()
    store.install_from(release, "mine")
    before = _listing(models_dir())
    with pytest.raises(ModelFolderError):
        store.install_from(_bad_source("two-folders", tiny_model, tmp_path), "mine", force=True)
    assert _listing(models_dir()) == before
    assert resolve_model("mine", trust=True).folder.is_dir()


def test_reinstall_with_force_replaces_the_model(release, tiny_model, tmp_path):
    store = ModelStore()
    store.install_from(release, "mine")
    with pytest.raises(ModelInstallError, match="already installed"):
        store.install_from(release, "mine")
    other = tmp_path / "o"
    other.mkdir()
    store.install_from(_release(tiny_model, other, "rel", dataset="Dataset777_New"), "mine", force=True)
    assert [p.name for p in (models_dir() / "mine").iterdir() if p.is_dir()] == ["Dataset777_New"]
    assert [p.name for p in models_dir().iterdir()] == ["mine"]  # no staging folder left


def test_ids_are_checked(release):
    store = ModelStore()
    with pytest.raises(ModelInstallError, match="is a catalogue id"):
        store.install_from(release, "spinalcord")
    with pytest.raises(ModelInstallError, match="invalid model id"):
        store.install_from(release, "../outside")
    with pytest.raises(ModelInstallError, match="invalid model id"):
        store.remove("../outside")


def test_remove(release):
    store = ModelStore()
    store.install_from(release, "a")
    store.install_from(release, "b")
    (models_dir() / ".install-left-over").mkdir()  # a killed install's staging folder is not a model
    assert [m.id for m in store.installed()] == ["a", "b"]
    store.remove("a")
    assert [m.id for m in store.installed()] == ["b"] and not (models_dir() / "a").exists()
    with pytest.raises(ModelInstallError, match="no installed model 'a'"):
        store.remove("a")


# -- catalogue models from local files, and built-in models -------------------------------------------


def test_catalogue_model_not_installed_is_not_downloaded_without_confirmation():
    with pytest.raises(ModelInstallError, match="not installed; install it with 'spinalcordseg models install "
                                                "lesion_sci_t2'"):
        resolve_model("lesion_sci_t2")
    asked = []
    with pytest.raises(ModelInstallError, match="download declined"):
        resolve_model("lesion_sci_t2", confirm=lambda q: asked.append(q) or False)
    assert "github.com/ivadomed/model_seg_sci/releases/download/r20240729" in asked[0]
    assert _listing(models_dir()) == []


def test_catalogue_model_from_a_downloaded_file_is_pinned(release, test_catalogue, tmp_path, caplog):
    name = "model_contrast_agnostic_20260628.zip"
    test_catalogue(pins={name: sha256_of_file(release)})
    store = ModelStore(offline=True)
    store.install("spinalcord", files=[release])
    resolved = resolve_model("spinalcord", offline=True)
    assert (resolved.trusted_because, resolved.version, resolved.orientation) == ("pinned", "v4.0", "RAS")
    assert store.get_installed("spinalcord").record["archive_sha256"] == {name: sha256_of_file(release)}
    # An older install than the catalogue's release is used, with a warning.
    record_path = models_dir() / "spinalcord" / RECORD_FILE
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "version": "v3.0"}))
    with caplog.at_level(logging.WARNING):
        assert resolve_model("spinalcord").version == "v3.0"
    assert "version v3.0 is installed, the catalogue has v4.0" in caplog.text


def test_catalogue_model_from_a_wrong_file_is_refused(release, tiny_model, test_catalogue, tmp_path):
    test_catalogue(pins={"model_contrast_agnostic_20260628.zip": "0" * 64})
    with pytest.raises(ModelInstallError, match="sha256 .* does not match the expected 0000") as error:
        ModelStore().install("spinalcord", files=[release])
    assert str(release) in str(error.value)
    assert _listing(models_dir()) == []


def test_per_fold_files_are_merged(tiny_model, tmp_path):
    files = [_release(tiny_model, tmp_path, f"model_fold{i}", "Dataset101_MS", fold=str(i)) for i in range(5)]
    store = ModelStore()
    with pytest.raises(ModelInstallError, match="missing from the given files: model_fold4.zip"):
        store.install("lesion_ms", files=files[:4])
    model = store.install("lesion_ms", files=files)
    assert sorted(model.record["files_sha256"]) == ["dataset.json"] + [
        f"fold_{i}/checkpoint_final.pth" for i in range(5)] + ["plans.json"]
    resolved = resolve_model("lesion_ms", trust=True)
    assert sorted(p.name for p in resolved.folder.glob("fold_*")) == [f"fold_{i}" for i in range(5)]
    assert resolved.crop_with == "spinalcord"


@pytest.mark.parametrize("conflict, problem", [("dataset", "dataset.json differs from the one in"),
                                               ("fold", "fold_0 is also in")])
def test_fold_files_that_do_not_fit_together(tiny_model, tmp_path, conflict, problem):
    files = [_release(tiny_model, tmp_path, f"model_fold{i}", "Dataset101_MS", fold=str(i)) for i in range(5)]
    odd = tmp_path / "odd"
    odd.mkdir()
    if conflict == "dataset":
        tree = odd / "tree" / "Dataset101_MS" / tiny_model.name
        shutil.copytree(tiny_model, tree)
        (tree / "fold_0").rename(tree / "fold_3")
        dataset = json.loads((tree / "dataset.json").read_text())
        (tree / "dataset.json").write_text(json.dumps({**dataset, "numTraining": 5}))
        files[3] = Path(shutil.make_archive(str(odd / "model_fold3"), "zip", root_dir=odd / "tree"))
    else:
        files[3] = _release(tiny_model, odd, "model_fold3", "Dataset101_MS", fold="0")
    with pytest.raises(ModelFolderError, match=problem) as error:
        ModelStore().install("lesion_ms", files=files)
    assert str(files[3]) in str(error.value)
    assert _listing(models_dir()) == []


def _builtin(pins: dict, path: str = "demo") -> dict:
    return {"id": "demo-sc", "name": "Demo", "description": "generated", "task": "spinal cord segmentation",
            "structures": ["sc"], "contrasts": ["t2"], "orientation": "LAS", "version": "1",
            "builtin": True, "path": path, "files_sha256": pins}


def _pins(folder: Path) -> dict:
    return {name: sha256_of_file(folder / name)
            for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth")}


def test_builtin_model_is_trusted_by_its_pinned_checksum(tiny_model, test_catalogue):
    models = test_catalogue(extra=[_builtin(_pins(tiny_model))])  # the Models folder next to the test catalogue
    shutil.copytree(tiny_model.parent, models / "demo" / tiny_model.parent.name)
    resolved = resolve_model("demo-sc", offline=True)
    assert resolved.folder == models / "demo" / tiny_model.parent.name / tiny_model.name
    assert (resolved.trusted_because, resolved.model_id, resolved.orientation) == ("builtin", "demo-sc", "LAS")
    assert _listing(models_dir()) == []  # used where it is shipped
    with pytest.raises(ModelInstallError, match="built into SpinalCordSeg"):
        ModelStore().remove("demo-sc")
    with pytest.raises(ModelInstallError, match="built into SpinalCordSeg"):
        ModelStore().install("demo-sc")


def test_builtin_model_with_another_checkpoint_is_not_trusted(tiny_model, test_catalogue):
    models = test_catalogue(extra=[_builtin({**_pins(tiny_model), "fold_0/checkpoint_final.pth": "f" * 64})])
    shutil.copytree(tiny_model.parent, models / "demo" / tiny_model.parent.name)
    with pytest.raises(UntrustedModelError, match="do not match the catalogue's pinned checksums"):
        resolve_model("demo-sc")


def test_builtin_model_with_a_changed_plans_file_is_not_trusted(tiny_model, test_catalogue):
    """Pinned checksums cover plans.json: the same checkpoint beside another plans file is not pinned."""
    models = test_catalogue(extra=[_builtin(_pins(tiny_model))])
    folder = Path(shutil.copytree(tiny_model.parent, models / "demo" / tiny_model.parent.name)) / tiny_model.name
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["batch_size"] = 3  # harmless, but not the pinned file
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(UntrustedModelError) as error:
        resolve_model("demo-sc")
    message = str(error.value)
    assert "do not match the catalogue's pinned checksums" in message
    assert "plans.json changed (sha256" in message and "checkpoint_final.pth changed" not in message


def test_builtin_model_missing_from_the_build(test_catalogue):
    test_catalogue(extra=[_builtin({"dataset.json": "f" * 64, "plans.json": "f" * 64,
                                    "fold_0/checkpoint_final.pth": "f" * 64}, path="absent")])
    with pytest.raises(ModelInstallError, match="not part of this build"):
        resolve_model("demo-sc")
