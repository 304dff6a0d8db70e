"""Fixtures shared by every test suite of the extension.

- ``sample_data``: the bundled sample scan (a real T2w scan with a synthetic lesion) and its cord and
  lesion masks, always there: tests that need a real scan use it, so a fresh clone runs them.
- ``shared_data``: the real MRI in ``../shared/data`` (skips when absent): other contrasts,
  orientations and sizes.
- ``mrml_scene``: a fresh, real MRML scene from ``slicer-core``, set as
  ``slicer.mrmlScene`` for the duration of the test.
- ``loads``: the model folders that SegmentationEngine loads during a test.
- ``tiny_model`` / ``tiny_region_model``: small nnU-Net v2 results folders
  with random weights and nnU-Net's real file layout, generated once per run.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("SPINALCORDSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_user_folders(tmp_path_factory, monkeypatch):
    """Keep every test away from the real per-user cache, settings and trust store."""
    root = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("SPINALCORDSEG_HOME", str(root / "spinalcordseg"))
    monkeypatch.setenv("SPINALCORDSEG_OFFLINE", "0")


@dataclass(frozen=True)
class SampleData:
    """The bundled sample (SCT's ``t2/t2_fake_lesion``): 99x99x29, 0.8 mm, PSR, with its ground truth."""

    scan: Path
    cord: Path
    lesion: Path


@pytest.fixture(scope="session")
def sample_data() -> SampleData:
    """The bundled sample scan and its cord and lesion masks (``SpinalCordSeg/Resources/Sample``)."""
    folder = REPO_ROOT / "SpinalCordSeg" / "Resources" / "Sample"
    return SampleData(folder / "sample_T2w.nii.gz", folder / "sample_T2w_label-SC_seg.nii.gz",
                      folder / "sample_T2w_label-lesion_seg.nii.gz")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test MRI folder; skip the test with the reason when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared MRI data not found at {SHARED_DATA} (set SPINALCORDSEG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def mrml_scene():
    """A fresh real MRML scene (slicer-core), installed as ``slicer.mrmlScene``."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(True)
    slicer.mrmlScene = previous


@pytest.fixture
def loads(monkeypatch):
    """Every model load of the run (the real SegmentationEngine, watched)."""
    from SpinalCordSegLib.inference import engine

    folders = []
    real_init = engine.SegmentationEngine.__init__

    def watched_init(self, model, *args, **kwargs):
        folders.append(str(model))
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(engine.SegmentationEngine, "__init__", watched_init)
    return folders


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A plain (softmax) nnU-Net v2 results folder with one label ``sc``."""
    from SpinalCordSegLib.models.synthetic_model import make_synthetic_model

    return make_synthetic_model(tmp_path_factory.mktemp("tiny_model"), region_based=False)


@pytest.fixture(scope="session")
def tiny_region_model(tmp_path_factory) -> Path:
    """A region-based nnU-Net v2 results folder: sc=[1, 2], lesion=2."""
    from SpinalCordSegLib.models.synthetic_model import make_synthetic_model

    return make_synthetic_model(tmp_path_factory.mktemp("tiny_region_model"), region_based=True)


@pytest.fixture
def kill_when():
    """``kill_when(command, env, ready, what)``: start ``command``, SIGKILL it as soon as ``ready()`` returns a path
    (polled every 10 ms, 2 minutes at most), and return that path: what a process killed mid-write leaves."""
    return _kill_when


def _kill_when(command: List[str], env: dict, ready: Callable[[], Optional[Path]], what: str) -> Path:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, found = time.time() + 120, None
    while time.time() < deadline and process.poll() is None:
        found = ready()
        if found is not None:
            break
        time.sleep(0.01)
    assert found is not None and process.poll() is None, f"the {what} ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return found
