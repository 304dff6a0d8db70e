"""Panel state and decisions of the SpinalCordSeg module, tested without Qt."""

import json
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.catalogue import load_catalogue
from SpinalCordSegLib.errors import CancelledError, SpinalCordSegError
from SpinalCordSegLib.model_store import ModelStore, ResolvedModel
from SpinalCordSegLib.panel_state import (
    CUSTOM_FOLDER,
    ApplyRun,
    EditTracker,
    ModelEntry,
    ModelSelectorState,
    PlannedJob,
    ThresholdState,
    catalogue_model_entries,
    device_choices,
    install_plan,
    install_question,
    largest_component,
    missing_packages,
    overall_progress,
    parse_folds,
    plan_jobs,
    volume_mm3,
)
from SpinalCordSegLib.worker import WorkerClient


# ------------------------------------------------------------------ thresholds

def test_thresholds_default_to_the_model_or_one_half_and_stay_in_range():
    state = ThresholdState(["sc", "lesion"], defaults={"lesion": 0.3})
    assert state.thresholds == {"sc": 0.5, "lesion": 0.3}
    state.set_threshold("sc", 1.5)
    state.set_threshold("lesion", -2)
    assert state.thresholds == {"sc": 0.99, "lesion": 0.01}
    with pytest.raises(KeyError, match="unknown structure 'gm'"):
        state.set_threshold("gm", 0.5)


def test_masks_follow_the_binarization_rule():
    soft = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 1, 101)
    state = ThresholdState(["sc"])
    state.set_threshold("sc", 0.25)
    mask = state.masks({"sc": soft})["sc"]
    np.testing.assert_array_equal(mask, soft >= np.float32(0.25))  # inclusive, as outputs.binarize


def test_largest_cord_component_keeps_only_the_biggest_island():
    soft = np.zeros((5, 10, 10), np.float32)
    soft[1:4, 1:5, 1:5] = 0.9  # 48 voxels
    soft[1:3, 7:9, 7:9] = 0.9  # 8 voxels, separate
    state = ThresholdState(["sc"], keep_largest_cord=True)
    mask = state.masks({"sc": soft})["sc"]
    assert mask.sum() == 48 and not mask[1:3, 7:9, 7:9].any()
    # diagonal neighbours connect (26-connectivity), so a corner touch is one component
    touching = np.zeros((3, 3, 3), bool)
    touching[0, 0, 0] = touching[1, 1, 1] = True
    assert largest_component(touching).sum() == 2


def test_lesions_restricted_to_the_cord_and_cord_threshold_moves_them():
    soft_sc = np.array([[[0.9, 0.9, 0.2, 0.2]]], np.float32)
    soft_lesion = np.array([[[0.8, 0.1, 0.8, 0.1]]], np.float32)
    state = ThresholdState(["sc", "lesion"])
    assert state.set_threshold("sc", 0.5) == ["sc"]  # option off: the cord alone
    maps = {"sc": soft_sc, "lesion": soft_lesion}
    assert state.masks(maps)["lesion"].tolist() == [[[True, False, True, False]]]
    assert state.set_options(keep_largest_cord=False, restrict_lesions_to_cord=True) == ["lesion"]
    assert state.masks(maps, ["lesion"])["lesion"].tolist() == [[[True, False, False, False]]]
    assert state.set_threshold("sc", 0.1) == ["sc", "lesion"]
    assert state.masks(maps, ["lesion"])["lesion"].tolist() == [[[True, False, True, False]]]


def test_threshold_state_round_trips_through_json():
    state = ThresholdState(["sc", "lesion"], {"lesion": 0.2}, keep_largest_cord=True)
    copy = ThresholdState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert copy.to_dict() == state.to_dict()


def test_volume_in_mm3_uses_the_spacing():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2, :2, :] = True  # 16 voxels
    assert volume_mm3(mask, (0.5, 0.5, 2.0)) == pytest.approx(16 * 0.5)


# ------------------------------------------------------------------ edits

def test_edits_outside_automatic_updates_are_tracked_with_the_time_spent():
    now = [100.0]
    tracker = EditTracker(clock=lambda: now[0])
    tracker.start()
    with tracker.automatic():
        tracker.segment_modified("sc", ["sc", "lesion"])
    assert tracker.edited == set()
    tracker.segment_modified("lesion", ["sc", "lesion"])
    assert tracker.needs_confirmation(["sc", "lesion"]) == ["lesion"]
    tracker.segment_modified(None, ["sc", "lesion"])  # unknown segment (undo): assume all
    assert tracker.needs_confirmation(["sc"]) == ["sc"]
    tracker.discard_edits(["sc"])
    assert tracker.edited == {"lesion"}
    now[0] = 145.5
    assert tracker.seconds_spent() == pytest.approx(45.5)
    tracker.start()
    assert tracker.edited == set()


# ------------------------------------------------------------------ devices and folds

def test_device_choices_grey_out_unavailable_devices_with_reasons():
    choices = {c.name: c for c in device_choices({"cpu": None, "cuda": None, "mps": "Apple MPS not available"})}
    assert list(choices) == ["auto", "cuda", "mps", "cpu"]
    assert choices["auto"].label == "Automatic (CUDA GPU)"
    assert choices["mps"].enabled is False and choices["mps"].reason == "Apple MPS not available"
    assert choices["cuda"].enabled and choices["cpu"].enabled


def test_device_choices_without_pytorch_offer_cpu_only():
    choices = {c.name: c for c in device_choices(None)}
    assert choices["auto"].label == "Automatic (CPU)"
    assert not choices["cuda"].enabled and "PyTorch is not installed" in choices["cuda"].reason


def test_folds_parse_and_refuse_words():
    assert parse_folds("0, 1 2") == ["0", "1", "2"]
    assert parse_folds("  ") is None
    with pytest.raises(ValueError, match="fold"):
        parse_folds("0 first")


# ------------------------------------------------------------------ models

def test_model_selector_lists_models_custom_folders_then_the_custom_item():
    entries = [ModelEntry("spinalcord", "Spinal cord", installed=False),
               ModelEntry("demo-sc-lesion", "Demo", installed=False, builtin=True),
               ModelEntry("lesion_sci_t2", "SCI lesion", installed=True)]
    selector = ModelSelectorState(entries, custom_folders=["/models/mine"])
    items = selector.items()
    assert [i.key for i in items] == ["spinalcord", "demo-sc-lesion", "lesion_sci_t2", "/models/mine", CUSTOM_FOLDER]
    labels = {i.key: i for i in items}
    assert labels["spinalcord"].label.endswith("(not installed)") and labels["spinalcord"].enabled
    assert not labels["demo-sc-lesion"].enabled  # embedded model absent from this build
    assert labels["/models/mine"].label == "Folder: mine"
    assert selector.default_key() == "lesion_sci_t2"
    assert selector.add_custom_folder("/models/mine") == "/models/mine"
    assert len(selector.items()) == len(items)
    assert ModelSelectorState.is_custom_choice(CUSTOM_FOLDER)


def test_catalogue_entries_mark_installed_and_custom_models(tmp_path):
    models = tmp_path / "models"
    (models / "lesion_sci_t2").mkdir(parents=True)
    (models / "my-model").mkdir()
    (models / "my-model" / "spinalcordseg-model.json").write_text(json.dumps({"name": "My model"}))
    store = ModelStore(models_dir=models, catalogue=load_catalogue())
    entries = {e.id: e for e in catalogue_model_entries(store.catalogue, store.installed())}
    catalogue_ids = load_catalogue().ids
    assert [e for e in entries if e in catalogue_ids] == catalogue_ids
    assert entries["lesion_sci_t2"].installed and not entries["spinalcord"].installed
    assert entries["my-model"] == ModelEntry("my-model", "My model", True)


# ------------------------------------------------------------------ dependencies

def test_missing_packages_are_found_by_import_spec():
    assert missing_packages(lambda name: None if name == "nnunetv2" else object()) == ["nnunetv2"]


def test_install_plan_prefers_slicer_nnunet_then_the_pytorch_extension_then_pip():
    assert install_plan([], True, True) == []
    steps = install_plan(["torch", "nnunetv2", "platformdirs"], has_slicer_nnunet=True, has_pytorch_extension=True)
    assert [(s.package, s.method) for s in steps] == [("nnunetv2", "slicer_nnunet"), ("platformdirs", "pip")]
    # SlicerNNUnet installs PyTorch through the PyTorch extension: without it, pip.
    steps = install_plan(["nnunetv2", "torch"], has_slicer_nnunet=True, has_pytorch_extension=False)
    assert [(s.package, s.method) for s in steps] == [("torch", "pip"), ("nnunetv2", "pip")]
    steps = install_plan(["torch", "nnunetv2"], has_slicer_nnunet=False, has_pytorch_extension=True)
    assert [(s.package, s.method) for s in steps] == [("torch", "pytorch_extension"), ("nnunetv2", "pip")]
    assert "PyTorch extension" in install_question(steps)


# ------------------------------------------------------------------ jobs

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
    return ResolvedModel(folder=folder, model_id=model_id, version=None, sha256={}, trusted_because="user",
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
def test_apply_crops_with_the_cord_model_then_segments(shared_data, tiny_model, lesion_only_model, tmp_path):
    scan = shared_data / "sct_testing_data/t2/t2.nii.gz"
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
