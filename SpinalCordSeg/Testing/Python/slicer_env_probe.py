"""Loads both module files the way Slicer does, in a Python holding only what Slicer ships.

Run by ``test_slicer_environment.py`` with the interpreter of a virtual
environment that holds Slicer's bundled packages plus ``slicer-core``:

    python slicer_env_probe.py REPO_ROOT

It prints one JSON object: for each module file whether it imported (and if
not, the missing package and the chain of imports that reached it), which
classes could be created, and what the dependency check reports.

Stand-ins (the only parts that are not Slicer's own code): ``qt``, ``ctk``,
``slicer.app``, ``slicer.ScriptedLoadableModule`` and
``slicer.util.VTKObservationMixin`` exist only inside the Slicer application
(PythonQt, CTK, the application object and Slicer's Base/Python), which
cannot be installed outside it; ``slicer-core`` brings the MRML part of
``slicer`` only. The stand-ins hold nothing but what a module file touches
at import and when its classes are created, so a module-level use of Qt
fails here too.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import json
import sys
import traceback
import types
from pathlib import Path


class ImportTracker:
    """Remembers the chain of imports (outermost first) that led to a failed import."""

    def __init__(self) -> None:
        self.stack = []
        self._original = builtins.__import__

    def __enter__(self) -> "ImportTracker":
        builtins.__import__ = self._import
        return self

    def __exit__(self, *exc) -> None:
        builtins.__import__ = self._original

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        full = name
        if level:
            package = (globals or {}).get("__package__") or ""
            full = importlib.util.resolve_name("." * level + name, package) if name else package
        self.stack.append(full)
        try:
            return self._original(name, globals, locals, fromlist, level)
        except ImportError as error:
            if not hasattr(error, "import_chain"):
                error.import_chain = list(self.stack)  # the innermost failure is seen first
            raise
        finally:
            self.stack.pop()


def install_stand_ins() -> None:
    """Modules and attributes that only the Slicer application provides (see the module docstring)."""
    import slicer  # slicer-core: real MRML, real slicer.util (without its Qt parts)
    import slicer.util

    sys.modules["qt"] = types.ModuleType("qt", "stand-in: PythonQt exists only inside Slicer")
    sys.modules["ctk"] = types.ModuleType("ctk", "stand-in: CTK's Python wrapping exists only inside Slicer")
    slicer.app = types.SimpleNamespace(temporaryPath=str(Path.cwd()))

    scripted = types.ModuleType("slicer.ScriptedLoadableModule", "stand-in: Slicer's Base/Python")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            pass

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    sys.modules[scripted.__name__] = scripted
    slicer.ScriptedLoadableModule = scripted

    if not hasattr(slicer.util, "VTKObservationMixin"):
        class VTKObservationMixin:
            def __init__(self) -> None:
                self.Observations = []

        slicer.util.VTKObservationMixin = VTKObservationMixin
    slicer.mrmlScene = slicer.vtkMRMLScene()


def probe_module(name: str) -> dict:
    """Import one module file and create its classes."""
    result = {"module": name, "imported": False, "created": [], "errors": []}
    with ImportTracker():
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            result["missing"] = error.name
            result["chain"] = [name] + getattr(error, "import_chain", [])
            result["errors"].append(f"{type(error).__name__}: {error}")
            return result
        except Exception:
            result["errors"].append(traceback.format_exc())
            return result
    result["imported"] = True
    parent = types.SimpleNamespace()
    for suffix, make in [("", lambda cls: cls(parent)), ("Widget", lambda cls: cls(parent)),
                         ("Logic", lambda cls: cls()), ("Test", lambda cls: cls())]:
        try:
            make(getattr(module, name + suffix))
            result["created"].append(name + suffix)
        except Exception:
            result["errors"].append(f"{name}{suffix}(): {traceback.format_exc()}")
    result["title"] = getattr(parent, "title", None)
    return result


def main(repo: str) -> None:
    # Slicer puts each scripted module's folder on sys.path before loading it.
    sys.path[:0] = [str(Path(repo) / "SpinalCordSeg"), str(Path(repo) / "LesionQC")]
    install_stand_ins()
    report = {"python": sys.version.split()[0], "modules": [probe_module(n) for n in ("SpinalCordSeg", "LesionQC")]}
    try:
        from SpinalCordSegLib.models.install_plan import install_plan, missing_packages

        missing = missing_packages()
        report["missing"] = missing
        report["plan"] = [step.requirement for step in install_plan(missing, False, False)]
    except Exception:
        report["dependency_check_error"] = traceback.format_exc()
    report["heavy_imported"] = sorted(n for n in ("pandas", "torch", "nnunetv2", "matplotlib", "sklearn", "tqdm",
                                                  "platformdirs", "skimage") if n in sys.modules)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
