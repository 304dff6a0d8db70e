"""The modules' Qt Designer files: valid XML, consistent with the code, made of classes Slicer ships.

Slicer, PythonQt and CTK cannot be installed here, so the check is static:
every ``self.ui.<name>`` that a module file reaches must exist in its
``.ui`` file, with a widget class that Slicer's Python can create.
"""

import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULES = ["SpinalCordSeg", "LesionQC"]

QT_CLASSES = {
    "QWidget", "QFrame", "QLabel", "QPushButton", "QToolButton", "QRadioButton", "QCheckBox", "QComboBox",
    "QLineEdit", "QTextEdit", "QPlainTextEdit", "QTextBrowser", "QSpinBox", "QDoubleSpinBox", "QSlider",
    "QProgressBar", "QGroupBox", "QTabWidget", "QStackedWidget", "QScrollArea", "QSplitter", "QListWidget",
    "QTableWidget", "QTreeWidget", "QTableView", "QDialogButtonBox", "Line",
}
CTK_CLASSES = {
    "ctkCollapsibleButton", "ctkCollapsibleGroupBox", "ctkSliderWidget", "ctkRangeWidget", "ctkDoubleSpinBox",
    "ctkPathLineEdit", "ctkDirectoryButton", "ctkComboBox", "ctkCheckableComboBox", "ctkMenuButton",
    "ctkCheckBox", "ctkSearchBox", "ctkFittedTextBrowser", "ctkDoubleSlider", "ctkRangeSlider",
}
QMRML_CLASSES = {
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSegmentEditorWidget", "qMRMLSegmentSelectorWidget",
    "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLCheckableNodeComboBox", "qMRMLSubjectHierarchyComboBox",
    "qMRMLTableView", "qMRMLPlotView", "qMRMLCollapsibleButton", "qMRMLSegmentsTableView",
    "qMRMLRangeWidget", "qMRMLColorTableComboBox",
}
SLICER_CLASSES = QT_CLASSES | CTK_CLASSES | QMRML_CLASSES
LAYOUT_CLASSES = {"QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout"}


def _ui_file(module: str) -> Path:
    return REPO / module / "Resources" / "UI" / f"{module}.ui"


def _widgets(module: str) -> dict:
    root = ElementTree.parse(_ui_file(module)).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


@pytest.mark.parametrize("module", MODULES)
def test_ui_parses_with_a_qmrml_top_level(module):
    root = ElementTree.parse(_ui_file(module)).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget"
    for layout in root.iter("layout"):
        assert layout.get("class") in LAYOUT_CLASSES, layout.get("class")


@pytest.mark.parametrize("module", MODULES)
def test_every_widget_class_is_shipped_by_slicer(module):
    unknown = {name: cls for name, cls in _widgets(module).items() if cls not in SLICER_CLASSES}
    assert not unknown


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_in_the_code_exists(module):
    source = (REPO / module / f"{module}.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used, f"{module}.py does not use its .ui file"
    missing = sorted(used - set(_widgets(module)))
    assert not missing, f"{module}.py uses widgets absent from {module}.ui: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_module_file_compiles_and_follows_the_template(module, tmp_path):
    path = REPO / module / f"{module}.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "module.pyc"), doraise=True)
    source = path.read_text()
    for suffix, base in [("", "ScriptedLoadableModule"), ("Widget", "ScriptedLoadableModuleWidget"),
                         ("Logic", "ScriptedLoadableModuleLogic"), ("Test", "ScriptedLoadableModuleTest")]:
        assert re.search(rf"^class {module}{suffix}\((\w+, )*{base}\b", source, re.MULTILINE), (module, suffix)


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_script_and_resource(module):
    cmake = (REPO / module / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "slicer_add_python_unittest" in cmake
    lib = REPO / module / f"{module}Lib"
    for path in sorted(lib.glob("*.py")) + [REPO / module / f"{module}.py"]:
        assert path.relative_to(REPO / module).as_posix() in cmake or path.name in cmake, path.name
    for resource in (REPO / module / "Resources").rglob("*"):
        if resource.suffix in (".ui", ".png", ".json") and "Models" not in resource.parts:
            relative = resource.relative_to(REPO / module).as_posix()
            assert relative in cmake or f"Resources/{resource.parent.name}/*" in cmake, relative


def test_top_level_cmake_is_an_extension():
    cmake = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY \"Segmentation\"", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS",
                "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK"):
        assert key in cmake, key
    for module in MODULES:
        assert f"add_subdirectory({module})" in cmake


def test_icon_and_screenshot_urls_point_at_pngs_in_the_repository():
    cmake = (REPO / "CMakeLists.txt").read_text()
    urls = re.findall(r'set\(EXTENSION_(?:ICONURL|SCREENSHOTURLS) "([^"]+)"\)', cmake)
    assert len(urls) == 2
    for url in urls:
        path = REPO / url.split("/main/", 1)[1]
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url


def test_libs_import_without_qt_ctk_or_slicer():
    """Importing every Lib module pulls in none of Slicer's GUI libraries."""
    import subprocess
    import sys

    # slicer_scene imports slicer (MRML only); the panels' controllers reach MRML through it.
    scene_modules = ("__init__", "slicer_scene", "segmentation_controller", "review_controller")
    modules = [f"SpinalCordSegLib.{p.stem}" for p in (REPO / "SpinalCordSeg/SpinalCordSegLib").glob("*.py")
               if p.stem not in scene_modules]
    modules += [f"LesionQCLib.{p.stem}" for p in (REPO / "LesionQC/LesionQCLib").glob("*.py")
                if p.stem not in scene_modules]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in ('qt', 'ctk', 'slicer', 'PythonQt') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_panels_crop_margin_starts_at_the_engines_default():
    # The panel and the command line give the same result for the same input: the same margin unless changed.
    from SpinalCordSegLib.inference.engine import InferenceOptions

    root = ElementTree.parse(_ui_file("SpinalCordSeg")).getroot()
    spin_box = next(w for w in root.iter("widget") if w.get("name") == "cropMarginSpinBox")
    value = next(p for p in spin_box.iter("property") if p.get("name") == "value").find("double").text
    assert float(value) == InferenceOptions().crop_margin_mm
