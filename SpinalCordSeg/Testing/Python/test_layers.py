"""The Lib's layers: imports go down only, and no module imports itself back.

The layers are declared here, once, lowest first; the Lib's root modules
(``errors``, ``paths``, ``resources``, ``__init__``) are the floor below them.
Every import counts: module level, function level and ``TYPE_CHECKING``
blocks, read with :mod:`ast` (nothing is imported).
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]

#: Sub-packages of each Lib, lowest first: a module may import its own
#: sub-package, the root modules and the layers listed before its own.
LAYERS = {
    "SpinalCordSegLib": ("imaging", "models", "inference", "measures", "report", "rounds", "panel", "cli"),
}
LIB_FOLDERS = {"SpinalCordSegLib": REPO / "SpinalCordSeg" / "SpinalCordSegLib"}


def module_name(lib: str, path: Path) -> str:
    """``SpinalCordSegLib.imaging.grid`` for ``.../SpinalCordSegLib/imaging/grid.py``."""
    parts = list(path.relative_to(LIB_FOLDERS[lib]).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([lib, *parts])


def imports_of(lib: str, path: Path) -> Iterator[Tuple[int, str]]:
    """(line, absolute module) of every import of the Lib in ``path``, at any depth of its code."""
    name = module_name(lib, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = {module_name(lib, p) for p in LIB_FOLDERS[lib].rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == lib:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != lib:
                continue
            for alias in node.names:  # "from . import paths" imports the module paths
                sub = f"{module}.{alias.name}"
                yield node.lineno, sub if sub in known else module


def layer_of(lib: str, module: str) -> int:
    """0 for the Lib's root modules, else 1 + the index of the module's sub-package in LAYERS."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS[lib]:
        return 1 + LAYERS[lib].index(parts[1])
    return 0


def graph(lib: str) -> Dict[str, List[Tuple[int, str]]]:
    return {module_name(lib, p): list(imports_of(lib, p)) for p in sorted(LIB_FOLDERS[lib].rglob("*.py"))}


@pytest.mark.parametrize("lib", sorted(LAYERS))
def test_every_sub_package_is_declared(lib):
    folders = {p.parent.name for p in LIB_FOLDERS[lib].glob("*/__init__.py")}
    assert folders == set(LAYERS[lib])


@pytest.mark.parametrize("lib", sorted(LAYERS))
def test_imports_go_down_only(lib):
    upward = []
    for module, imports in graph(lib).items():
        for line, imported in imports:
            if layer_of(lib, imported) > layer_of(lib, module):
                upward.append(f"{module}:{line} imports {imported}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("lib", sorted(LAYERS))
def test_no_import_circle(lib):
    edges = {module: {imported for _, imported in imports if imported != module}
             for module, imports in graph(lib).items()}
    # A package's own __init__ is imported by each of its modules: that is Python's doing, not a circle.
    for module in edges:
        edges[module] = {m for m in edges[module] if not module.startswith(m + ".")}
    circles: List[List[str]] = []
    state: Dict[str, int] = {}

    def visit(module: str, stack: List[str]) -> None:
        state[module] = 1
        for imported in sorted(edges.get(module, ())):
            if state.get(imported) == 1:
                circles.append(stack[stack.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, stack + [imported])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_cli_is_imported_by_nothing_else():
    lib = "SpinalCordSegLib"
    found = [f"{module}:{line}" for module, imports in graph(lib).items() for line, imported in imports
             if (imported + ".").startswith(f"{lib}.cli.") and not (module + ".").startswith(f"{lib}.cli.")]
    assert not found


def test_module_file_loads_the_panel_and_root_only():
    """At load, the Slicer module file reaches the Lib through ``panel`` (and root modules such as ``errors``).

    Function-level imports (the warm worker's client, the self-test's helpers) run after load.
    """
    tree = ast.parse((REPO / "SpinalCordSeg" / "SpinalCordSeg.py").read_text(encoding="utf-8"))
    below: Set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("SpinalCordSegLib."):
            sub = node.module.split(".")[1]
            if sub in LAYERS["SpinalCordSegLib"] and sub != "panel":
                below.add(node.module)
    assert not below, f"the module file imports below the panel: {sorted(below)}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import and circle are found."""
    lib = tmp_path / "SpinalCordSegLib"
    for sub in ("imaging", "models"):
        (lib / sub).mkdir(parents=True)
        (lib / sub / "__init__.py").write_text("")
    (lib / "__init__.py").write_text("")
    (lib / "imaging" / "a.py").write_text("def f():\n    from ..models import b\n")
    (lib / "models" / "b.py").write_text("from ..imaging import a\n")
    monkeypatch.setitem(LIB_FOLDERS, "SpinalCordSegLib", lib)
    monkeypatch.setitem(LAYERS, "SpinalCordSegLib", ("imaging", "models"))
    with pytest.raises(AssertionError, match="imaging.a:2 imports SpinalCordSegLib.models.b"):
        test_imports_go_down_only("SpinalCordSegLib")
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circle("SpinalCordSegLib")
