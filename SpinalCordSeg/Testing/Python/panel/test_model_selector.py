"""The model combo box (SpinalCordSegLib.panel.model_selector)."""

import json

from SpinalCordSegLib.models.catalogue import load_catalogue
from SpinalCordSegLib.panel.model_selector import CUSTOM_FOLDER, ModelEntry, ModelSelectorState, catalogue_model_entries
from SpinalCordSegLib.models.model_store import ModelStore


def test_model_selector_lists_models_custom_folders_then_the_custom_item():
    entries = [ModelEntry("spinalcord", "Spinal cord", installed=False),
               ModelEntry("demo-sc-lesion", "Demo", installed=False, builtin=True),
               ModelEntry("lesion_sci_t2", "SCI lesion", installed=True)]
    selector = ModelSelectorState(entries, custom_folders=["/models/mine"])
    items = selector.items()
    assert [i.key for i in items] == ["spinalcord", "demo-sc-lesion", "lesion_sci_t2", "/models/mine", CUSTOM_FOLDER]
    labels = {i.key: i for i in items}
    assert labels["spinalcord"].label.endswith("(not installed)") and labels["spinalcord"].enabled
    assert not labels["demo-sc-lesion"].enabled  # embedded model absent from this build
    assert labels["/models/mine"].label == "Folder: mine"
    assert selector.default_key() == "lesion_sci_t2"
    assert selector.add_custom_folder("/models/mine") == "/models/mine"
    assert len(selector.items()) == len(items)
    assert ModelSelectorState.is_custom_choice(CUSTOM_FOLDER)


def test_catalogue_entries_mark_installed_and_custom_models(tmp_path):
    models = tmp_path / "models"
    (models / "lesion_sci_t2").mkdir(parents=True)
    (models / "my-model").mkdir()
    (models / "my-model" / "spinalcordseg-model.json").write_text(json.dumps({"name": "My model"}))
    store = ModelStore(models_dir=models, catalogue=load_catalogue())
    entries = {e.id: e for e in catalogue_model_entries(store.catalogue, store.installed())}
    catalogue_ids = [e.id for e in load_catalogue() if not e.runner]  # spine runs through TotalSpineSeg
    assert [e for e in entries if e in catalogue_ids] == catalogue_ids
    assert entries["lesion_sci_t2"].installed and not entries["spinalcord"].installed
    assert entries["my-model"] == ModelEntry("my-model", "My model", True)


def test_the_rounds_model_is_marked_and_chosen_by_default(tmp_path):
    models = tmp_path / "models"
    (models / "sc-round2").mkdir(parents=True)
    store = ModelStore(models_dir=models, catalogue=load_catalogue())
    assert store.current() is None
    before = ModelSelectorState(catalogue_model_entries(store.catalogue, store.installed(), None))
    assert before.default_key() != "sc-round2"
    store.set_current("sc-round2", against="demo-sc")  # what 'round promote' records
    selector = ModelSelectorState(catalogue_model_entries(store.catalogue, store.installed(), store.current()["model"]))
    assert selector.default_key() == "sc-round2"
    assert [i.label for i in selector.items() if i.key == "sc-round2"] == ["sc-round2 (round's model)"]
