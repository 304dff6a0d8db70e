"""Hostile and damaged model folders: plans.json is code, trust covers every file.

The attacks are real: plans files that make nnU-Net call ``logging.basicConfig``
(which truncates a file) or ``torch.hub.load`` on a local folder (which runs its
``hubconf.py``), zips that reuse a trusted checkpoint beside other files, and
damaged plans fields. Each is refused before nnU-Net reads the plans, naming the
file, the field and the value, whether the model is trusted or not.
"""

import ast
import json
import pydoc
import shutil
from pathlib import Path

import pytest
import torch

from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
from SpinalCordSegLib.errors import ModelFolderError, UntrustedModelError
from SpinalCordSegLib.models.model_folder import ModelFolder
from SpinalCordSegLib.models.model_store import ModelStore, resolve_model
from SpinalCordSegLib.paths import models_dir
from SpinalCordSegLib.models.plans_check import (
    IMPORTABLE_BLOCKS, LABEL_MANAGERS, NETWORK_CLASSES, NORMALIZATION_SCHEMES, PREPROCESSORS, READER_WRITERS,
    RESAMPLING_FUNCTIONS,
)
from SpinalCordSegLib.resources import embedded_models_dir


def _copy(tiny_model: Path, where: Path, plans_change=None, dataset_change=None) -> Path:
    """A copy of the tiny results folder as ``where/Dataset900/<results>``, with its JSON files changed."""
    folder = Path(shutil.copytree(tiny_model, where / "Dataset900" / tiny_model.name))
    for name, change in (("plans.json", plans_change), ("dataset.json", dataset_change)):
        if change is not None:
            data = json.loads((folder / name).read_text())
            change(data)
            (folder / name).write_text(json.dumps(data))
    return folder


def _zip(folder: Path, name: str) -> Path:
    return Path(shutil.make_archive(str(folder.parents[1] / name), "zip", root_dir=folder.parents[1]))


def _architecture(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]["architecture"]


def test_zip_reusing_a_trusted_checkpoint_beside_a_hostile_plans_file_is_refused(tiny_model, tmp_path):
    """The attack of the issue: logging.basicConfig(filename=victim, filemode='w') truncates the victim."""
    victim = tmp_path / "thesis.txt"
    victim.write_text("three years of work")
    trusted = resolve_model(str(_zip(_copy(tiny_model, tmp_path / "good"), "good-model")), trust=True)
    assert trusted.trusted_because == "user"

    def hostile(plans):
        _architecture(plans).update(network_class_name="logging.basicConfig", _kw_requires_import=[],
                                    arch_kwargs={"filename": str(victim), "filemode": "w", "force": True})

    folder = _copy(tiny_model, tmp_path / "bad", plans_change=hostile)
    assert (folder / "fold_0/checkpoint_final.pth").read_bytes() == \
        (trusted.folder / "fold_0/checkpoint_final.pth").read_bytes()  # the same, trusted checkpoint
    with pytest.raises(ModelFolderError) as error:
        resolve_model(str(_zip(folder, "bad-model")))
    message = str(error.value)
    assert "bad-model.zip" in message and "plans.json: 'configurations.3d_fullres.architecture.network_class_name'" \
        " = 'logging.basicConfig' is not on SpinalCordSeg's allow-list" in message
    assert "trusted or not" in message
    assert [m.id for m in ModelStore().installed()] == ["good-model"]  # nothing installed
    # Loading the folder in place is refused too, before nnU-Net reads the plans.
    with pytest.raises(ModelFolderError, match="'logging.basicConfig' is not on"):
        SegmentationEngine(folder, InferenceOptions(device="cpu"))
    assert victim.read_text() == "three years of work"


def test_trusted_plans_naming_torch_hub_code_is_refused(tiny_model, tmp_path):
    """torch.hub.load(source='local') imports hubconf.py from any folder: refused even with --trust."""
    hub = tmp_path / "hub"
    hub.mkdir()
    marker = tmp_path / "ran.txt"
    (hub / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\ndef net(**kwargs):\n    pass\n")

    def hostile(plans):
        _architecture(plans).update(network_class_name="torch.hub.load", _kw_requires_import=[],
                                    arch_kwargs={"repo_or_dir": str(hub), "model": "net", "source": "local"})

    folder = _copy(tiny_model, tmp_path / "m", plans_change=hostile)
    for load in (lambda: resolve_model(str(folder), trust=True),
                 lambda: SegmentationEngine(folder, InferenceOptions(device="cpu"))):
        with pytest.raises(ModelFolderError, match=r"network_class_name' = 'torch.hub.load' is not on"):
            load()
    assert not marker.exists()


@pytest.mark.parametrize("key, value", [
    ("nonlin", "logging.basicConfig"),
    ("conv_op", "torch.hub.load"),
    ("norm_op", "torch.nn.modules.conv.subprocess"),
])
def test_names_nnunet_imports_from_arch_kwargs_are_allow_listed(tiny_model, tmp_path, key, value):
    folder = _copy(tiny_model, tmp_path, plans_change=lambda p: _architecture(p)["arch_kwargs"].update({key: value}))
    with pytest.raises(ModelFolderError) as error:
        ModelFolder.open(folder)
    assert str(error.value).startswith(
        f"{folder / 'plans.json'}: 'configurations.3d_fullres.architecture.arch_kwargs.{key}' = {value!r} is not on")


@pytest.mark.parametrize("change, problem", [
    (lambda p: p["configurations"]["3d_fullres"].update(preprocessor_name="os"), "'configurations.3d_fullres."
     "preprocessor_name' = 'os' is not on SpinalCordSeg's allow-list of nnU-Net preprocessors"),
    (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_data="save_json"), "resampling_fn_data' = "
     "'save_json' is not on"),
    (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["rmtree"]), "normalization_schemes[0]' "
     "= 'rmtree' is not on"),
    (lambda p: p.update(image_reader_writer="subprocess"), "'image_reader_writer' = 'subprocess' is not on"),
    (lambda p: p.update(label_manager="os"), "'label_manager' = 'os' is not on"),
    # A configuration the folder name does not select is checked too: a checkpoint may name it.
    (lambda p: p["configurations"].update(other={"inherits_from": "3d_fullres", "architecture": {
        "network_class_name": "builtins.exec", "arch_kwargs": {}, "_kw_requires_import": []}}),
     "'configurations.other.architecture.network_class_name' = 'builtins.exec' is not on"),
])
def test_every_name_nnunet_looks_up_is_allow_listed(tiny_model, tmp_path, change, problem):
    folder = _copy(tiny_model, tmp_path, plans_change=change)
    with pytest.raises(ModelFolderError) as error:
        ModelFolder.open(folder)
    assert str(folder / "plans.json") in str(error.value) and problem in str(error.value)


def _drop(key):
    return lambda p: p["configurations"]["3d_fullres"].pop(key)


@pytest.mark.parametrize("plans_change, dataset_change, problem", [
    (lambda p: p["configurations"].update({"3d_fullres": {}}), None,
     "plans.json: 'configurations.3d_fullres' lacks patch_size, spacing, normalization_schemes"),
    (lambda p: p["configurations"]["3d_fullres"].update(patch_size="big"), None,
     "plans.json: 'configurations.3d_fullres.patch_size' must be a list of 2 or 3 positive integers (found 'big')"),
    (lambda p: p["configurations"]["3d_fullres"].update(spacing=[1, 1]), None,
     "'configurations.3d_fullres.spacing' must be a list of 3 positive numbers"),
    (lambda p: p["configurations"].clear(), None, "plans.json: 'configurations' is empty"),
    (lambda p: p.update(transpose_forward=[0, 0, 1]), None, "'transpose_forward' must be a permutation"),
    (lambda p: p["configurations"]["3d_fullres"].update(inherits_from="3d_fullres"), None, "forms a cycle"),
    (_drop("architecture"), None, "'configurations.3d_fullres.UNet_class_name' = None is not on"),
    (None, lambda d: d["labels"].update(sc="one"), "dataset.json: 'labels.sc' must be a label value"),
    (None, lambda d: d.update(labels={"sc": 1}), "dataset.json: 'labels' has no background label"),
    (None, lambda d: d.update(numTraining="5"), "dataset.json: 'numTraining' must be an integer"),
])
def test_damaged_fields_are_refused_on_install_and_on_load_naming_file_and_field(
        tiny_model, tmp_path, plans_change, dataset_change, problem):
    folder = _copy(tiny_model, tmp_path, plans_change, dataset_change)
    archive = _zip(folder, "damaged")
    with pytest.raises(ModelFolderError) as error:
        ModelStore().install_from(archive)
    assert str(archive) in str(error.value) and problem in str(error.value)
    assert not models_dir().exists() or not any(models_dir().iterdir())
    with pytest.raises(ModelFolderError) as error:  # on load: a folder used in place
        SegmentationEngine(folder, InferenceOptions(device="cpu"))
    assert str(folder) in str(error.value) and problem in str(error.value)


def test_trust_covers_dataset_json_too(tiny_model, tmp_path):
    """A zip with a trusted checkpoint and plans but another dataset.json is another model: asked again."""
    resolve_model(str(_zip(_copy(tiny_model, tmp_path / "a"), "first")), trust=True)
    other = _copy(tiny_model, tmp_path / "b", dataset_change=lambda d: d["labels"].update(lesion=2))
    with pytest.raises(UntrustedModelError, match="not trusted yet"):
        resolve_model(str(_zip(other, "second")))


def test_shipped_models_and_nnunet_standard_plans_pass(tiny_model, tiny_region_model):
    for folder in [tiny_model, tiny_region_model] + sorted(embedded_models_dir().iterdir()):
        ModelFolder.open(folder)


def _defined_names(where: Path) -> set:
    """Top-level class and function names of a module, or of every module below a folder (read, not imported)."""
    names = set()
    for source in ([where] if where.is_file() else where.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        names |= {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    return names


def test_allow_lists_name_what_the_installed_libraries_define():
    """Every allowed name exists: torch blocks import as nn.Module classes; the others are defined in the source."""
    import dynamic_network_architectures
    import nnunetv2

    for name in IMPORTABLE_BLOCKS:
        found = pydoc.locate(name)
        assert isinstance(found, type) and issubclass(found, torch.nn.Module), name
    architectures = Path(dynamic_network_architectures.__path__[0]) / "architectures"
    for module, cls in NETWORK_CLASSES:
        assert cls in _defined_names(architectures / f"{module}.py"), (module, cls)
    nnunet = Path(nnunetv2.__path__[0])
    for names, folder in ((PREPROCESSORS, "preprocessing/preprocessors"),
                          (RESAMPLING_FUNCTIONS, "preprocessing/resampling"),
                          (NORMALIZATION_SCHEMES, "preprocessing/normalization"),
                          (READER_WRITERS, "imageio"), (LABEL_MANAGERS, "utilities/label_handling")):
        assert names <= _defined_names(nnunet / folder), folder
