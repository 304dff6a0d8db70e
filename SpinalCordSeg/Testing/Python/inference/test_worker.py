"""The warm worker process, driven from plain Python through its JSON-lines protocol."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
from SpinalCordSegLib.errors import CancelledError, SpinalCordSegError
from SpinalCordSegLib.imaging.image_io import read_scan, reorient
from SpinalCordSegLib.inference.worker import WorkerClient

pytestmark = pytest.mark.slow
OPTIONS = {"device": "cpu", "crop": False, "num_threads": 1}


@pytest.fixture
def client():
    with WorkerClient() as worker:
        yield worker


def test_two_cases_load_the_model_once(client, tiny_region_model, sample_data, tmp_path):
    second_scan = tmp_path / "sample_RAS.nii.gz"  # the sample stored in another voxel order
    sitk.WriteImage(reorient(sitk.ReadImage(str(sample_data.scan)), "RAS"), str(second_scan))
    scans = [sample_data.scan, second_scan]
    events = []
    first = client.wait(client.submit(scans[0], tiny_region_model, OPTIONS, tmp_path), timeout=300,
                        on_event=events.append)
    pid = client.pid
    second = client.wait(client.submit(scans[1], tiny_region_model, OPTIONS, tmp_path), timeout=300)
    assert first["model_loaded"] is True and second["model_loaded"] is False
    assert client.pid == pid
    assert sorted(first["soft_maps"]) == ["lesion", "sc"]
    assert first["soft_maps"]["sc"].endswith("sample_T2w_label-SC_probseg.nii.gz")
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # The worker's maps are the in-process engine's maps.
    engine = SegmentationEngine(tiny_region_model, InferenceOptions(**OPTIONS))
    expected = engine.predict(read_scan(scans[1])).soft_maps["lesion"]
    written = sitk.ReadImage(second["soft_maps"]["lesion"])
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected), atol=1e-6)


def test_a_bad_case_is_reported_and_the_worker_stays_up(client, tiny_region_model, sample_data, tmp_path):
    bad = tmp_path / "missing.nii.gz"
    with pytest.raises(SpinalCordSegError, match="missing.nii.gz: file not found"):
        client.wait(client.submit(bad, tiny_region_model, OPTIONS, tmp_path), timeout=300)
    pid = client.pid
    good = client.wait(client.submit(sample_data.scan, tiny_region_model, OPTIONS, tmp_path), timeout=300)
    assert client.pid == pid and "sc" in good["soft_maps"]


def test_cancel_kills_and_the_next_job_restarts(client, tiny_region_model, sample_data, tmp_path):
    scan = sample_data.scan
    job = client.submit(scan, tiny_region_model, OPTIONS, tmp_path)
    first_pid = client.pid
    time.sleep(1.0)
    client.cancel()
    with pytest.raises(CancelledError):
        client.wait(job, timeout=10)
    assert not client.running
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(first_pid, 0)
    done = client.wait(client.submit(scan, tiny_region_model, OPTIONS, tmp_path), timeout=300)
    assert client.pid != first_pid and done["model_loaded"] is True
    assert not list(tmp_path.glob(".*part*")), "a cancelled job left a partial file"


def test_protocol_by_hand(tiny_region_model, sample_data, tmp_path):
    """The documented protocol, spoken directly to `python -m SpinalCordSegLib.inference.worker`."""
    process = subprocess.Popen([sys.executable, "-m", "SpinalCordSegLib.inference.worker"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    requests = [
        {"command": "bogus", "job": "x"},
        {"command": "predict", "job": "j1", "scan": str(sample_data.scan),
         "model": str(tiny_region_model), "options": OPTIONS, "output_dir": str(tmp_path)},
        {"command": "shutdown"},
    ]
    out, _ = process.communicate("\n".join(json.dumps(r) for r in requests) + "\n", timeout=300)
    events = [json.loads(line) for line in out.splitlines()]
    assert process.returncode == 0
    assert events[0]["event"] == "ready"
    assert events[1] == {"event": "error", "job": "x", "message": "unknown command 'bogus'", "detail": ""}
    assert events[-1]["event"] == "done" and events[-1]["job"] == "j1"
    assert all(e["event"] == "progress" for e in events[2:-1])


def test_locate_then_predict_in_the_users_box(client, tiny_region_model, sample_data, tmp_path):
    """The panel's flow: ask for the box, let the user move it (an ROI), predict inside the moved box."""
    scan = sample_data.scan
    options = dict(OPTIONS, crop=True)
    located = client.wait(client.submit_locate(scan, tiny_region_model, options), timeout=300)
    box = located["crop_box"]
    assert box["source"] == "localizer" and located["crop"]["Box"] == box
    moved = dict(box, source="user", xmin=box["xmin"] + 2, ymax=box["ymax"] - 3)
    done = client.wait(client.submit(scan, tiny_region_model, options, tmp_path, crop_box=moved), timeout=300)
    assert done["crop_box"] == moved and done["provenance"]["Crop"]["Source"] == "user"
    values = sitk.GetArrayFromImage(sitk.ReadImage(done["soft_maps"]["sc"]))
    inside = np.zeros(values.shape, bool)
    inside[moved["zmin"]:moved["zmax"] + 1, moved["ymin"]:moved["ymax"] + 1, moved["xmin"]:moved["xmax"] + 1] = True
    assert values[~inside].max() == 0.0 and values[inside].max() > 0.0
