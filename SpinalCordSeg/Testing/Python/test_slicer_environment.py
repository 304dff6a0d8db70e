"""The module files load with only what Slicer's Python ships, as in a stock Slicer.

Every other test runs with the full ``[test]`` environment, where a
module-level ``import pandas`` works; in Slicer it stops the module from
loading at all ("Failed to load file ... as module"). This test builds (once
per machine, cached) a virtual environment holding only Slicer's bundled
packages, at the versions of the Slicer release whose Python is closest to
this one, plus ``slicer-core``; then ``slicer_env_probe.py`` imports
``SpinalCordSeg.py`` and ``LesionQC.py`` there, creates their classes and
runs the dependency check. The probe's stand-ins for ``qt``, ``ctk``,
``slicer.app`` and Slicer's scripted-module base classes, which exist only
inside the Slicer application, are described in its docstring.

The environment lives in ``$SPINALCORDSEG_SLICER_ENV_CACHE`` (default
``~/.cache/spinalcordseg-test-slicer-env``), in a folder named after a hash of
the Python version and the requirement list, so changing the list builds a
new one; pip's own cache keeps the wheels between builds. It is built on
this interpreter's Python, or on ``$SPINALCORDSEG_SLICER_PYTHON`` (for
example a Python 3.9 for Slicer 5.8 or a 3.12 for Slicer 5.10).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PROBE = HERE / "slicer_env_probe.py"

#: Packages Slicer bundles (SuperBuild/External_python-*.cmake of each release; SimpleITK from
#: External_SimpleITK.cmake), pinned as there. The extension manager's packages (GitPython,
#: PyGithub, ...) are left out: nothing here could use them, and they only slow the build.
SLICER_BUNDLES = {
    "5.8": ((3, 9), ["numpy==1.26.4", "scipy==1.13.1", "SimpleITK==2.3.1", "requests==2.32.3",
                     "certifi==2024.2.2", "idna==3.7", "charset-normalizer==3.3.2", "urllib3==2.2.1",
                     "pydicom==2.4.4", "packaging==24.0", "pyparsing==3.1.2", "six==1.16.0", "pillow==10.3.0"]),
    "5.10": ((3, 12), ["numpy==2.0.2", "scipy==1.13.1", "SimpleITK==2.5.2", "requests==2.32.3",
                       "certifi==2025.4.26", "idna==3.10", "charset-normalizer==3.4.2", "urllib3==2.4.0",
                       "pydicom==2.4.4", "packaging==25.0", "pyparsing==3.2.3", "six==1.17.0", "pillow==11.2.1"]),
}
#: What SpinalCordSeg must report missing there (install_plan.REQUIRED_PACKAGES).
EXPECTED_MISSING = ["torch", "nnunetv2", "pandas", "platformdirs", "tqdm"]


def base_python() -> tuple:
    """The interpreter the environment is built on, and its (major, minor) version."""
    python = os.environ.get("SPINALCORDSEG_SLICER_PYTHON", sys.executable)
    done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                          text=True, check=True)
    return python, tuple(int(part) for part in done.stdout.split())


def slicer_release_for(version) -> str:
    """The newest Slicer release whose Python is not newer than ``version`` (else the oldest)."""
    fitting = [name for name, (python, _) in SLICER_BUNDLES.items() if python <= tuple(version)]
    return max(fitting, key=lambda name: SLICER_BUNDLES[name][0]) if fitting else "5.8"


def _slicer_core_requirements() -> list:
    """slicer-core and the VTK it was built with, as installed in this environment."""
    from importlib import metadata

    vtk = next((r for r in metadata.requires("slicer-core") or [] if r.replace(" ", "").startswith("vtk")), "vtk")
    return [f"slicer-core=={metadata.version('slicer-core')}", vtk.split(";")[0].strip()]


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    # The environment's own pip (Slicer ships pip too; a newer pip may not support an older Python).
    # --no-deps: exactly the listed packages (PyPI's vtk would bring matplotlib, which Slicer's VTK does not).
    return subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-input", "--quiet", *args],
                          capture_output=True, text=True)


def _build(base: str, version: tuple, folder: Path, requirements: list) -> None:
    subprocess.run([base, "-m", "venv", str(folder)], check=True, capture_output=True)
    python = _python(folder)
    if _pip(python, "--dry-run", "slicer-core").returncode != 0:
        pytest.skip(f"slicer-core has no wheel for Python {'.'.join(map(str, version))} (PyPI builds it for newer "
                    "Pythons), so the module files cannot be imported there outside Slicer")
    if _pip(python, *requirements).returncode == 0:
        return
    # A pin that pip has no wheel of for this Python: that package at the newest version pip has.
    for requirement in requirements:
        if _pip(python, requirement).returncode != 0:
            done = _pip(python, requirement.split("==")[0])
            if done.returncode != 0:
                raise RuntimeError(f"pip cannot install {requirement}: {done.stderr[-2000:]}")


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="session")
def slicer_python() -> Path:
    """The interpreter of the cached Slicer-like environment (built on first use)."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    base, version = base_python()
    requirements = SLICER_BUNDLES[slicer_release_for(version)][1] + _slicer_core_requirements()
    key = hashlib.sha256(json.dumps([version, requirements]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("SPINALCORDSEG_SLICER_ENV_CACHE",
                                Path.home() / ".cache" / "spinalcordseg-test-slicer-env"))
    folder = cache / key
    if not (folder / "complete").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        building = cache / f"{key}.building-{os.getpid()}"
        try:
            _build(base, version, building, requirements)
            (building / "requirements.txt").write_text("\n".join(requirements) + "\n")
            (building / "complete").write_text("")
            building.rename(folder)  # atomic: a concurrent run sees a complete environment or none
        except OSError:
            if not (folder / "complete").is_file():
                raise
        finally:  # a failed build, or one that another run finished first, leaves nothing behind
            shutil.rmtree(building, ignore_errors=True)
    return _python(folder)


def run_probe(python: Path, repo: Path = REPO) -> dict:
    done = subprocess.run([str(python), str(PROBE), str(repo)], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
    assert done.returncode == 0, f"the probe crashed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_failures(report: dict) -> list:
    """One message per module file that did not load, naming the package and the import chain."""
    return [f"{m['module']}.py does not load in Slicer's Python: package '{m['missing']}' is not shipped with "
            f"Slicer (import chain: {' -> '.join(m['chain'])}); import it inside the function that uses it"
            if m.get("missing") else f"{m['module']}.py: {m['errors']}"
            for m in report["modules"] if not m["imported"]]


def test_the_environment_holds_only_slicer_packages(slicer_python):
    done = subprocess.run([str(slicer_python), "-c", "import importlib.util as u, json; print(json.dumps("
                           "[n for n in ('pandas', 'torch', 'matplotlib', 'platformdirs', 'tqdm', 'sklearn') "
                           "if u.find_spec(n)]))"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_both_modules_load_and_their_classes_are_created(slicer_python):
    report = run_probe(slicer_python)
    failures = load_failures(report)
    assert not failures, "\n".join(failures)
    for module in report["modules"]:
        suffixes = ["", "Widget", "Logic", "Test"]
        assert module["created"] == [module["module"] + s for s in suffixes], module["errors"]
        assert module["title"]
    assert report["heavy_imported"] == []


def test_the_dependency_check_reports_what_slicer_lacks(slicer_python):
    report = run_probe(slicer_python)
    assert report.get("missing") == EXPECTED_MISSING, report.get("dependency_check_error")
    assert report["plan"] == EXPECTED_MISSING  # no extensions there: everything by pip, PyTorch first


def test_a_module_level_pandas_import_names_the_package_and_the_chain(slicer_python, tmp_path):
    """What a developer sees after adding ``import pandas`` at the top of slicer_scene.py."""
    copy = tmp_path / "repo"
    for module in ("SpinalCordSeg", "LesionQC"):
        shutil.copytree(REPO / module, copy / module, ignore=shutil.ignore_patterns("Resources", "Testing",
                                                                                    "__pycache__"))
    scene = copy / "SpinalCordSeg" / "SpinalCordSegLib" / "panel" / "slicer_scene.py"
    future = "from __future__ import annotations\n"
    scene.write_text(scene.read_text().replace(future, future + "import pandas\n", 1))
    failures = load_failures(run_probe(slicer_python, copy))
    assert len(failures) == 1
    assert "package 'pandas'" in failures[0]
    chain = failures[0].split("(import chain: ")[1].split(")")[0].split(" -> ")
    assert chain[0] == "SpinalCordSeg" and chain[-2:] == ["SpinalCordSegLib.panel.slicer_scene", "pandas"], chain
