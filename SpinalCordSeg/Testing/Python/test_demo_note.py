"""A demo model says what it is: a one-line note on every run, in every sidecar and in the overlay."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.models.catalogue import DEMO_NOTE, load_catalogue, model_note

REPO = Path(__file__).resolve().parents[3]


def test_catalogue_marks_the_embedded_models_as_demos():
    catalogue = load_catalogue()
    demos = [entry.id for entry in catalogue if entry.demo]
    assert demos == ["demo-sc-lesion", "demo-sc"]
    for entry in catalogue:
        if entry.demo:
            assert entry.note.startswith(f"{entry.id} is a {DEMO_NOTE}") and "\n" not in entry.note
            assert model_note(entry.id) == entry.note
        else:
            assert entry.note is None and model_note(entry.id) is None
    assert model_note(None) is None and model_note("not-in-the-catalogue") is None


def test_demo_flag_is_checked(tmp_path):
    from SpinalCordSegLib.models.catalogue import CatalogueError

    data = json.loads((REPO / "SpinalCordSeg/Resources/models.json").read_text(encoding="utf-8"))
    data["models"][0]["demo"] = "yes"
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CatalogueError, match="'demo' has the wrong type"):
        load_catalogue(path)


@pytest.mark.slow
def test_segment_with_a_demo_model_prints_the_note_and_records_it(tmp_path):
    """The real command line in its own process, the embedded model on a small synthetic scan."""
    rng = np.random.default_rng(1)
    scan = sitk.GetImageFromArray(rng.normal(100, 10, (12, 40, 40)).astype(np.float32))
    scan.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(scan, str(tmp_path / "sub-01_T2w.nii.gz"))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "SpinalCordSeg"), str(REPO / "LesionQC")]))
    result = subprocess.run(
        [sys.executable, "-m", "SpinalCordSegLib.cli", "segment", "-i", str(tmp_path / "sub-01_T2w.nii.gz"),
         "-m", "demo-sc-lesion", "-o", str(out), "--device", "cpu", "--no-tta", "--overlay"],
        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    note = model_note("demo-sc-lesion")
    lines = [line for line in result.stderr.splitlines() if DEMO_NOTE in line]
    assert lines == [f"WARNING: {note}"]
    sidecars = sorted(out.glob("*.json"))
    assert len(sidecars) == 4  # soft map and mask of the cord and of lesions
    for sidecar in sidecars:
        assert json.loads(sidecar.read_text())["GeneratedBy"][0]["Note"] == note
    assert (out / "sub-01_T2w_overlay.png").is_file()


def test_other_models_carry_no_note(tiny_model):
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine

    engine = SegmentationEngine(tiny_model, InferenceOptions(device="cpu"), model_id="my-model")
    assert engine.note is None and "Note" not in engine.provenance()
