"""The worker jobs of one Apply (SpinalCordSegLib.inference.job_runner)."""

import json
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.errors import CancelledError, SpinalCordSegError
from SpinalCordSegLib.inference.job_runner import ApplyRun, PlannedJob, overall_progress, parse_folds, plan_jobs
from SpinalCordSegLib.models.model_store import ResolvedModel
from SpinalCordSegLib.inference.worker import WorkerClient


def test_folds_parse_and_refuse_words():
    assert parse_folds("0, 1 2") == ["0", "1", "2"]
    assert parse_folds("  ") is None
    with pytest.raises(ValueError, match="fold"):
        parse_folds("0 first")


def test_jobs_crop_with_the_scene_cord_then_the_catalogue_cord_model():
    assert plan_jobs("lesion_ms", False, "spinalcord", False) == ([PlannedJob("lesion_ms", "segment", None)], None)
    assert plan_jobs("lesion_ms", True, "spinalcord", True) == ([PlannedJob("lesion_ms", "segment", "segment")], None)
    jobs, warning = plan_jobs("lesion_ms", True, "spinalcord", False)
    assert jobs == [PlannedJob("spinalcord", "crop", None), PlannedJob("lesion_ms", "segment", "previous")]
    assert warning is None
    jobs, warning = plan_jobs("/models/x", True, None, False)
    assert jobs == [PlannedJob("/models/x", "segment", None)] and warning is None  # the engine's localizer crops


def test_overall_progress_spans_the_jobs():
    assert overall_progress(0, 2, 0.5) == pytest.approx(0.25)
    assert overall_progress(1, 2, 1.0) == pytest.approx(1.0)
    assert overall_progress(0, 1, 7) == pytest.approx(1.0)


# ------------------------------------------------------------------ a whole Apply through the real worker

@pytest.fixture(scope="module")
def lesion_only_model(tiny_model, tmp_path_factory):
    """A real nnU-Net folder (random weights) whose only structure is 'lesion', as lesion_ms."""
    folder = tmp_path_factory.mktemp("lesion_only") / "Dataset902_Lesion" / tiny_model.name
    shutil.copytree(tiny_model, folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "lesion": 1}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def _resolved(folder, model_id):
    return ResolvedModel(folder=folder, model_id=model_id, version=None, sha256={}, files_sha256={}, trusted_because="user",
                         orientation=None, crop_with=None)


def _run_until_done(run, timeout=240.0):
    messages = []
    deadline = time.monotonic() + timeout
    run.start()
    while time.monotonic() < deadline:
        update = run.poll()
        messages.append(update.message)
        if update.finished:
            return update, messages
        time.sleep(0.1)
    raise AssertionError(f"the Apply did not finish in {timeout} s: {messages[-5:]}")


@pytest.mark.slow
def test_apply_crops_with_the_cord_model_then_segments(sample_data, tiny_model, lesion_only_model, tmp_path):
    scan = sample_data.scan
    jobs, warning = plan_jobs("lesion-only", True, "cord", has_cord_segment=False)
    assert warning is None and [j.purpose for j in jobs] == ["crop", "segment"]
    with WorkerClient() as client:
        run = ApplyRun(client, scan, jobs, [_resolved(tiny_model, "cord"), _resolved(lesion_only_model, "lesion")],
                       {"device": "cpu", "use_mirroring": False}, tmp_path)
        update, messages = _run_until_done(run)
        assert any(m.startswith("cord: predicting tile") for m in messages)
        assert any(m.startswith("lesion-only: predicting tile") for m in messages)
        assert update.fraction == 1.0 and list(update.soft_maps) == ["sc", "lesion"]
        assert update.provenance["sc"]["ModelId"] == "cord" and update.provenance["lesion"]["ModelId"] == "lesion"
        # The crop mask is the cord map at 0.5, and the lesion job ran on it.
        cord = sitk.ReadImage(update.soft_maps["sc"])
        crop = sitk.ReadImage(str(tmp_path / "crop_mask.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(crop), sitk.GetArrayFromImage(cord) >= 0.5)
        lesion = sitk.ReadImage(update.soft_maps["lesion"])
        assert lesion.GetSize() == sitk.ReadImage(str(scan)).GetSize()
        pid = client.pid
        run.cancel()  # a finished run leaves the worker warm
        assert not run.running and client.pid == pid

        # A failing job is reported with the model's name; the traceback is kept for the log.
        broken = tmp_path / "broken"
        shutil.copytree(lesion_only_model, broken)
        shutil.rmtree(broken / "fold_0")
        failing = ApplyRun(client, scan, [PlannedJob("broken", "segment", None)], [_resolved(broken, None)],
                           {"device": "cpu"}, tmp_path / "failing")
        with pytest.raises(SpinalCordSegError, match="^broken: .*fold"):
            _run_until_done(failing)
        assert "Traceback" in failing.detail

        cancelled = ApplyRun(client, scan, [PlannedJob("lesion-only", "segment", None)],
                             [_resolved(lesion_only_model, None)], {"device": "cpu"}, tmp_path / "cancelled")
        cancelled.start()
        cancelled.cancel()
        with pytest.raises(CancelledError, match="cancelled by the user"):
            cancelled.poll()


@pytest.mark.slow
def test_the_workers_stderr_goes_to_a_log_file_that_a_failure_shows(tmp_path, tiny_model):
    """The panel's worker: stderr to a file (nobody reads a GUI's stderr); a failed job's detail ends with it."""
    broken = tmp_path / "copy" / tiny_model.name
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "fold_0")
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkFloat32), str(scan))
    log = tmp_path / "logs" / "worker.log"
    with WorkerClient(log_path=log) as client:
        failing = ApplyRun(client, scan, [PlannedJob("broken", "segment", None)], [_resolved(broken, None)],
                           {"device": "cpu"}, tmp_path / "failing")
        with pytest.raises(SpinalCordSegError, match="^broken: "):
            _run_until_done(failing, timeout=120)
        pid = client.pid
    assert f"SpinalCordSeg worker {pid} started" in log.read_text()
    assert "Traceback" in failing.detail and f"Worker log:\nSpinalCordSeg worker {pid} started" in failing.detail


def test_the_worker_starts_without_a_console_window_on_windows():
    """Only the options can be checked here (no Windows): CREATE_NO_WINDOW, as launchConsoleProcess hides it."""
    from SpinalCordSegLib.inference.worker import console_options

    assert console_options("win32") == {"creationflags": 0x08000000}
    assert console_options("linux") == {} and console_options("darwin") == {}
