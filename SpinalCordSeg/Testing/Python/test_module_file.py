"""Static checks of the Slicer module files, whose widgets cannot run without the Slicer application.

The modules (``SpinalCordSeg.py``, ``LesionQC.py``) import ``qt`` and ``ctk``,
so their widgets only run inside Slicer (their self-tests do that there;
``test_slicer_environment.py`` imports them with Slicer's packages only).
Here they must compile, everything they take from their Lib must exist, and
every attribute they read on a Lib object must be that object's, so that a
renamed method fails a test instead of a clinician's session. The
decisions behind the widgets are tested through the controllers
(``test_segmentation_controller.py``, ``test_lesionqc_slicer.py``).
"""

import ast
import dataclasses
import importlib
import inspect
import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2]
MODULE_FILE = MODULE_DIR / "SpinalCordSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SpinalCordSeg.ui"


LESIONQC_FILE = MODULE_DIR.parent / "LesionQC" / "LesionQC.py"


def _source(path: Path = MODULE_FILE) -> str:
    return path.read_text(encoding="utf-8")


def test_module_file_compiles(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "SpinalCordSeg.pyc"), doraise=True)


def _lib_imports(path: Path):
    for node in ast.walk(ast.parse(_source(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("SpinalCordSegLib.", "LesionQCLib.")):
            yield node.module, [alias.name for alias in node.names]


@pytest.mark.parametrize("path, controller", [(MODULE_FILE, "SegmentationController"),
                                              (LESIONQC_FILE, "ReviewController")])
def test_every_name_imported_from_the_lib_exists(path, controller):
    imports = list(_lib_imports(path))
    assert controller in {name for _, names in imports for name in names}  # wired to its controller
    missing = [f"{module}.{name}" for module, names in imports for name in names
               if not hasattr(importlib.import_module(module), name)]
    assert not missing


@pytest.mark.parametrize("path, variable, owners", [
    (MODULE_FILE, "controller", ["SpinalCordSegLib.panel.segmentation_controller.SegmentationController"]),
    (MODULE_FILE, "panel", ["SpinalCordSegLib.panel.segmentation_controller.PanelState"]),
    (MODULE_FILE, "controls", ["SpinalCordSegLib.panel.segmentation_controller.Controls"]),
    (MODULE_FILE, "row", ["SpinalCordSegLib.panel.segmentation_controller.StructureRow"]),
    (MODULE_FILE, "result", ["SpinalCordSegLib.panel.segmentation_controller.PollResult",
                             "SpinalCordSegLib.panel.segmentation_controller.SaveResult"]),
    (MODULE_FILE, "saved", ["SpinalCordSegLib.rounds.correction.SavedCorrection"]),
    (MODULE_FILE, "item", ["SpinalCordSegLib.panel.model_selector.ModelItem"]),
    (MODULE_FILE, "choice", ["SpinalCordSegLib.inference.devices.DeviceChoice"]),
    (LESIONQC_FILE, "controller", ["LesionQCLib.review_controller.ReviewController"]),
    (LESIONQC_FILE, "panel", ["LesionQCLib.review_controller.ReviewPanel"]),
])
def test_attributes_the_widget_uses_exist(path, variable, owners):
    """``controller.poll``, ``panel.rows``... : the attributes read on Lib objects are theirs."""
    known = set()
    for owner in owners:
        module_name, class_name = owner.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), class_name)
        known |= set(dir(cls)) | set(re.findall(r"self\.(\w+)(?:: [^=]+)? = ", inspect.getsource(cls)))
        if dataclasses.is_dataclass(cls):
            known |= {field.name for field in dataclasses.fields(cls)}
    used = set(re.findall(rf"(?<![.\w]){variable}\.([A-Za-z_]\w*)", _source(path)))  # not a dotted module path
    assert used, f"{path.name} never uses {variable}"
    assert not used - known, f"{owners} have no {sorted(used - known)}"


def test_mrml_widgets_receive_the_scene():
    """Every qMRML widget in the .ui gets the scene from the top-level qMRMLWidget (else it stays empty)."""
    root = ElementTree.parse(UI_FILE).getroot()
    top = root.find("widget").get("name")
    mrml_widgets = {w.get("name") for w in root.iter("widget")
                    if w.get("class", "").startswith("qMRML") and w.get("name") != top}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == top and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml_widgets and mrml_widgets <= connected


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "SpinalCordSeg.png") as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))
