"""Static checks of the Slicer module file, which cannot run without the Slicer application.

The module (``SpinalCordSeg.py``) imports ``qt`` and ``ctk``, so it only runs
inside Slicer (its ``SpinalCordSegTest`` does that there). Here it must at
least compile, and everything it takes from SpinalCordSegLib must exist, so
that a renamed function fails a test instead of a clinician's session.
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


def _source() -> str:
    return MODULE_FILE.read_text(encoding="utf-8")


def test_module_file_compiles(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "SpinalCordSeg.pyc"), doraise=True)


def _lib_imports():
    for node in ast.walk(ast.parse(_source())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("SpinalCordSegLib."):
            yield node.module, [alias.name for alias in node.names]


def test_every_name_imported_from_the_lib_exists():
    imports = list(_lib_imports())
    assert len(imports) >= 8  # the module really is wired to the Lib
    missing = [f"{module}.{name}" for module, names in imports for name in names
               if not hasattr(importlib.import_module(module), name)]
    assert not missing


@pytest.mark.parametrize("variable, owner", [
    ("results", "SpinalCordSegLib.slicer_scene.ResultScene"),
    ("params", "SpinalCordSegLib.slicer_scene.SceneParameters"),
    ("run", "SpinalCordSegLib.job_runner.ApplyRun"),
    ("update", "SpinalCordSegLib.job_runner.RunUpdate"),
    ("step", "SpinalCordSegLib.install_plan.InstallStep"),
    ("saved", "SpinalCordSegLib.correction.SavedCorrection"),
    ("plan", "SpinalCordSegLib.correction.OutputPlan"),
])
def test_attributes_the_widget_uses_exist(variable, owner):
    """``results.show_map``, ``run.detail``... : the attributes read on Lib objects are theirs."""
    module_name, class_name = owner.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    known = set(dir(cls)) | set(re.findall(r"self\.(\w+)(?:: [^=]+)? = ", inspect.getsource(cls)))
    if dataclasses.is_dataclass(cls):
        known |= {field.name for field in dataclasses.fields(cls)}
    used = set(re.findall(rf"\b{variable}\.([A-Za-z_]\w*)", _source()))
    assert used, f"the module file never uses {variable}"
    assert not used - known, f"{class_name} has no {sorted(used - known)}"


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
