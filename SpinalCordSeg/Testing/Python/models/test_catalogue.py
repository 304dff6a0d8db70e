"""The model catalogue (SpinalCordSegLib.models.catalogue) and the shipped Resources/models.json."""

import copy
import json
import re

import pytest

from SpinalCordSegLib.models.catalogue import CATALOGUE_ENV, CatalogueError, catalogue_path, load_catalogue
from SpinalCordSegLib.resources import embedded_models_dir, resources_dir


@pytest.fixture(scope="module")
def shipped():
    return load_catalogue(resources_dir() / "models.json")


def test_default_path_is_the_shipped_catalogue(monkeypatch):
    monkeypatch.delenv(CATALOGUE_ENV, raising=False)
    assert catalogue_path() == resources_dir() / "models.json"
    assert load_catalogue().ids == load_catalogue(resources_dir() / "models.json").ids


def test_shipped_catalogue_lists_the_sct_nnunet_models(shipped):
    # The Spinal Cord Toolbox nnU-Net v2 models (spinalcordtoolbox/deepseg/models.py), by SCT model name.
    assert {e.sct_model for e in shipped} >= {
        "model_seg_sc_contrast_agnostic_nnunet", "model_seg_sci_multiclass_sc_lesion_nnunet",
        "model_seg_ms_lesion", "model_seg_ms_sc_lesion_bavaria_quebec_nnunet",
    }
    cord = shipped["spinalcord"]
    assert cord.name == "Spinal cord (any contrast)" and cord.contrasts == ("any",)
    assert cord.assets[0].urls[0].endswith("/v4.0/model_contrast_agnostic_20260628.zip")
    sci = shipped["lesion_sci_t2"]
    assert sci.name == "SCI lesion + cord (T2w)" and set(sci.structures) == {"sc", "lesion"}


def test_shipped_entries_are_consistent(shipped):
    for entry in shipped:
        assert not entry.builtin or entry.path.is_relative_to(embedded_models_dir())
        for asset in entry.assets:
            assert all(url.startswith("https://github.com/") for url in asset.urls), entry.id
            # Hashes are never guessed: unknown is null, known is a full hex digest.
            assert asset.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", asset.sha256)
        if entry.crop_with is not None:
            assert shipped[entry.crop_with].task == "spinal cord segmentation"
        # SCT's LPI fallback in SimpleITK letters; the demo models are trained in LAS (SCT's RPI).
        assert entry.orientation == ("LAS" if entry.builtin else None if entry.runner else "RAS")


def test_ms_lesion_is_five_fold_zips_cropped_with_the_cord_model(shipped):
    entry = shipped["lesion_ms"]
    assert entry.folds == ("0", "1", "2", "3", "4")
    assert [a.name for a in entry.assets] == [f"model_fold{i}.zip" for i in range(5)]
    assert [a.fold for a in entry.assets] == list(entry.folds)
    assert entry.cropped_input and entry.crop_with == "spinalcord"


def test_unknown_id_lists_the_known_ones(shipped):
    with pytest.raises(CatalogueError, match="no model 'nope'.*spinalcord"):
        shipped["nope"]
    assert shipped.get("nope") is None


def test_environment_variable_selects_another_catalogue(tmp_path, monkeypatch):
    data = json.loads((resources_dir() / "models.json").read_text())
    data["models"] = [m for m in data["models"] if m["id"] == "spinalcord"]
    (tmp_path / "site.json").write_text(json.dumps(data))
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "site.json"))
    assert load_catalogue().ids == ["spinalcord"]


PINS = {"dataset.json": "a" * 64, "plans.json": "b" * 64, "fold_0/checkpoint_final.pth": "c" * 64}


def test_builtin_path_is_relative_to_the_models_folder_next_to_the_catalogue(tmp_path):
    data = {"format": 1, "models": [{
        "id": "demo", "name": "Demo", "description": "d", "task": "t", "structures": ["sc"],
        "contrasts": ["t2"], "builtin": True, "path": "demo/model", "files_sha256": PINS,
    }]}
    (tmp_path / "models.json").write_text(json.dumps(data))
    entry = load_catalogue(tmp_path / "models.json")["demo"]
    assert entry.builtin and entry.path == tmp_path.resolve() / "Models" / "demo" / "model"
    assert entry.files_sha256 == PINS and entry.checkpoint_sha256 == {"0": "c" * 64}


def _broken(base: dict, change) -> dict:
    data = copy.deepcopy(base)
    change(data["models"])
    return data


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.append(copy.deepcopy(m[0])), "duplicate model id"),
    (lambda m: m[0]["assets"][0].update(sha256="abc"), "not a lower-case hex sha256"),
    (lambda m: m[0]["assets"][0].update(urls=["ftp://x/y.zip"]), "not an http"),
    (lambda m: m[0].update(id="../escape"), "must be letters"),
    (lambda m: m[0].update(id="Current"), "model id 'Current' is reserved: it names the promoted model"),
    (lambda m: m[0].update(crop_with="missing"), "crops with unknown model 'missing'"),
    (lambda m: m[0].update(orientation="RAR"), "'orientation' must be three letters"),
    (lambda m: m[0].pop("name"), "missing 'name'"),
    (lambda m: m[0].update(structures="sc"), "'structures' has the wrong type"),
    (lambda m: m[0].update(assets=[]), "'assets' is empty"),
    (lambda m: m[0].update(builtin=True, path="../x", assets=[], files_sha256=PINS), "without '..'"),
    # Pins must cover every file nnU-Net reads, plans.json included (it names code to import).
    (lambda m: m[0].update(builtin=True, path="x", assets=[], files_sha256={"fold_0/checkpoint_final.pth": "c" * 64}),
     "'files_sha256' must pin dataset.json, plans.json and each fold_*/checkpoint_*.pth (missing: dataset.json, "
     "plans.json)"),
    (lambda m: m[0].update(builtin=True, path="x", assets=[], checkpoint_sha256={"0": "a" * 64}),
     "'checkpoint_sha256' is replaced by 'files_sha256'"),
    (lambda m: m[0].update(builtin=True, path="x", assets=[]), "needs 'files_sha256'"),
    (lambda m: next(e for e in m if e["id"] == "lesion_ms")["assets"][0].update(fold="9"), "do not match 'folds'"),
])
def test_invalid_catalogue_names_the_file_and_problem(tmp_path, change, problem):
    base = json.loads((resources_dir() / "models.json").read_text())
    base["models"] = [m for m in base["models"] if not m.get("builtin")]  # m[0]: a downloadable model
    path = tmp_path / "models.json"
    path.write_text(json.dumps(_broken(base, change)))
    with pytest.raises(CatalogueError) as error:
        load_catalogue(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_unreadable_catalogue(tmp_path):
    (tmp_path / "models.json").write_text("{not json")
    with pytest.raises(CatalogueError, match="cannot read the model catalogue"):
        load_catalogue(tmp_path / "models.json")
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "absent.json")


def test_spine_runs_through_totalspineseg_and_is_not_installed_as_nnunet(shipped, tmp_path):
    from SpinalCordSegLib.errors import ModelInstallError
    from SpinalCordSegLib.models.model_store import ModelStore
    from SpinalCordSegLib.panel.model_selector import catalogue_model_entries

    spine = shipped["spine"]
    assert spine.runner == "totalspineseg" and spine.licence == "LGPL-3.0" and not spine.assets
    assert "pip install totalspineseg" in spine.runner_note
    store = ModelStore(models_dir=tmp_path, catalogue=shipped)
    for action in (lambda: store.install("spine"), lambda: store.resolve("spine")):
        with pytest.raises(ModelInstallError, match="runs through the totalspineseg package"):
            action()
    assert "spine" not in [e.id for e in catalogue_model_entries(shipped)]
