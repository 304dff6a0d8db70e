"""Crop-first inference: the localizer pass, models trained on sc-crop boxes, the sidecar and the CLI flags.

sc-crop's detector weights cannot be downloaded on these machines (no route
to GitHub releases) and its ``ultralytics`` dependency is not installed, so
the real detector never runs here. What can run does: the weight download
(against files served on 127.0.0.1, with sc-crop's pinning scheme), and the
engine's handling of a detector box, through a stand-in ``sc_crop`` module
that answers ``detect`` the way sc-crop 0.12.1 does (inclusive voxel
indices of the scan's own grid).
"""

import hashlib
import io
import json
import re
import shutil
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SpinalCordSegLib.inference import engine as engine_module
from SpinalCordSegLib.cli import main
from SpinalCordSegLib.imaging.binarization import DEFAULT_THRESHOLD, binarize
from SpinalCordSegLib.inference.cropping import (CropBox, box_of_mask, cropbox_image, face_names, pad_box,
                                                 uniform_padding)
from SpinalCordSegLib.inference.engine import STAGES, InferenceOptions, SegmentationEngine
from SpinalCordSegLib.errors import ModelFolderError, ModelInstallError
from SpinalCordSegLib.imaging.image_io import read_scan
from SpinalCordSegLib.inference.localizer import ensure_sccrop_weights
from SpinalCordSegLib.models.model_store import resolve_model
from SpinalCordSegLib.inference.progress import ConsoleProgress
from SpinalCordSegLib.models.synthetic_model import make_synthetic_model
from SpinalCordSegLib.resources import sample_scan_path

PADDING = {"pad_superior": 40.0, "pad_inferior": 100.0, "pad_left": 15.0, "pad_right": 15.0,
           "pad_anterior": 15.0, "pad_posterior": 22.0}
OPTIONS = dict(device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def wide_t1(shared_data, tmp_path_factory):
    """t1w (42x76x77, 1 mm) padded to a wider field of view, with its manual cord mask: the cord fills little of it."""
    folder = tmp_path_factory.mktemp("wide")
    scans = shared_data / "sct_testing_data/t1"
    paths = {}
    for name, source in (("scan", "t1w.nii.gz"), ("cord", "t1w_seg-manual.nii.gz")):
        padded = sitk.ConstantPad(sitk.ReadImage(str(scans / source)), [60, 40, 0], [60, 40, 0], 0)
        paths[name] = folder / f"wide_{source}"
        sitk.WriteImage(padded, str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def cropped_model(tiny_model, tmp_path_factory):
    """tiny_model in a release layout whose root holds crop_metadata.json."""
    root = tmp_path_factory.mktemp("release")
    model = root / "Dataset900_Cord" / tiny_model.name
    shutil.copytree(tiny_model, model)
    (root / "crop_metadata.json").write_text(json.dumps({**PADDING, "sc_crop_version": "0.12.1"}))
    return model


def test_localizer_finds_the_cord_in_a_wide_field_of_view(wide_t1):
    scan = read_scan(wide_t1["scan"])
    truth = box_of_mask(sitk.ReadImage(str(wide_t1["cord"])), scan, "mask")
    found = box_of_mask(engine_module.cord_localizer().cord_mask(scan), scan, "localizer")
    # Its tight box overlaps the manual cord's in every axis and is no wider than the cord plus 10 mm.
    for axis in range(3):
        assert found.index[axis] < truth.upper[axis] and truth.index[axis] < found.upper[axis]
    for axis in (0, 1):
        assert found.size[axis] <= truth.size[axis] + 10


def test_default_run_crops_and_records_the_box(tiny_region_model, wide_t1):
    scan = read_scan(wide_t1["scan"])
    # Random weights "segment" everywhere, up to the box faces: keep the crop to look at it.
    cropped = SegmentationEngine(tiny_region_model, InferenceOptions(whole_if_truncated=False, **OPTIONS)).predict(scan)
    box = cropped.crop_box
    assert box is not None and box.source == "localizer" and not box.covers(scan.GetSize())
    record = cropped.provenance["Crop"]
    assert record["Source"] == "localizer" and record["Box"] == box.to_dict()
    assert record["Padding_mm"] == {key: 10.0 for key in PADDING}
    count, total = (int(n) for n in record["Tiles"].split(" of "))
    assert 0 < count < total
    # Predicted: the voxels of the whole field's tiles around the box (and the voxel across each face, which mixes
    # them with the background), nothing outside them.
    tiles = CropBox.from_dict(record["TilesBox"])
    inside = sitk.GetArrayFromImage(cropbox_image(pad_box(tiles, scan, uniform_padding(min(scan.GetSpacing()))),
                                                  scan)).astype(bool)
    for soft in cropped.soft_maps.values():
        values = sitk.GetArrayFromImage(soft)
        assert values[~inside].max() == 0.0 and values[inside].max() > 0.0
    assert box.size[2] == tiles.size[2] == scan.GetSize()[2]  # t1w is RAS: z runs along the body, and so does the cord
    # --no-crop: the whole field of view.
    whole = SegmentationEngine(tiny_region_model, InferenceOptions(crop=False, **OPTIONS)).predict(scan)
    assert whole.crop_box is None and whole.provenance["Crop"]["Source"] is None


def _agreement_in_box(engine, scan_path, truth_path):
    """(Dice of the default run's cord mask and the whole field's inside the box, whole-field cord voxels outside
    the box that the manual mask holds, the default prediction's crop record)."""
    scan = read_scan(scan_path)
    whole = SegmentationEngine(engine.model, InferenceOptions(crop=False, orientation="LAS", **OPTIONS))
    cropped = engine.predict(scan)
    assert cropped.crop_box is not None, "the scan was not cropped"
    masks = [sitk.GetArrayFromImage(p.soft_maps["sc"]) >= 0.5 for p in (cropped, whole.predict(scan))]
    inside = sitk.GetArrayFromImage(cropbox_image(cropped.crop_box, scan)).astype(bool)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path))) > 0
    a, b = masks[0] & inside, masks[1] & inside
    return 2 * (a & b).sum() / (a.sum() + b.sum()), int((masks[1] & ~inside & truth).sum()), \
        cropped.provenance["Crop"]


def test_crop_gives_the_whole_fields_cord_inside_the_box(embedded_engine, sample_data):
    # Dice 0.98 or more: the tiles fall where they fall on the whole field (a cut-out box with tiles of its own
    # disagreed at 0.97 to 0.98 on a third of the shared scans); and no cord outside the box.
    dice, lost, record = _agreement_in_box(embedded_engine, sample_data.scan, sample_data.cord)
    assert dice >= 0.98 and lost == 0, (dice, lost, record)


@pytest.mark.slow
def test_crop_gives_the_whole_fields_cord_inside_the_box_of_an_axial_t2star(embedded_engine, shared_data):
    # sub-9709Ses1: a cut-out box with tiles of its own agreed at Dice 0.971 only.
    subject = "sub-9709Ses1"
    folder = shared_data / "train/gm-challenge-data"
    scans = [folder / subject / "anat" / f"{subject}_run-1_T2starw.nii.gz"]
    truth = folder / "derivatives/labels" / subject / "anat" / f"{subject}_run-1_T2starw_seg-manual.nii.gz"
    dice, lost, record = _agreement_in_box(embedded_engine, scans[0], truth)
    assert dice >= 0.98 and lost == 0, (dice, lost, record)


def test_prediction_reaching_the_box_is_redone_on_the_whole_field_of_view(tiny_region_model, wide_t1):
    scan = read_scan(wide_t1["scan"])
    prediction = SegmentationEngine(tiny_region_model, InferenceOptions(**OPTIONS)).predict(scan, name="wide")
    whole = SegmentationEngine(tiny_region_model, InferenceOptions(crop=False, **OPTIONS)).predict(scan)
    assert prediction.crop_box is None and "LocalizerBox" in prediction.provenance["Crop"]
    assert any("reaches the crop box" in w and "whole field of view instead" in w for w in prediction.warnings)
    for structure, soft in prediction.soft_maps.items():
        np.testing.assert_allclose(sitk.GetArrayFromImage(soft),
                                   sitk.GetArrayFromImage(whole.soft_maps[structure]), atol=1e-6)


def _box_holds(outer, inner) -> bool:
    return all(o <= i and iu <= ou for o, i, iu, ou in zip(outer.index, inner.index, inner.upper, outer.upper))


def _cord_with_margin(truth, scan, margin_mm=5.0):
    """The tight box of a cord mask plus ``margin_mm`` on each face (within the scan)."""
    return pad_box(box_of_mask(truth, scan, "mask"), scan, uniform_padding(margin_mm))


@pytest.fixture(scope="module")
def embedded_engine():
    model = resolve_model("demo-sc-lesion", offline=True)
    return SegmentationEngine(model.folder, InferenceOptions(orientation=model.orientation, **OPTIONS))


def test_default_box_holds_the_cord_of_a_long_sagittal_scan(shared_data, embedded_engine):
    # errsm_11: C1 to T4; the localizer's network loses the thoracic cord, which curves backwards: the box must
    # follow the cord's path there (it used to miss it by 58 voxels posteriorly).
    folder = shared_data / "sct_history_errsm/errsm_11"
    scan = read_scan(folder / "t2.nii.gz")
    box, record, _ = embedded_engine.crop_box_for(scan, "errsm_11")
    assert record["Source"] == "localizer"
    assert _box_holds(box, _cord_with_margin(sitk.ReadImage(str(folder / "t2_manual_segmentation.nii.gz")), scan))
    assert box.size[0] < scan.GetSize()[0] * 0.6  # still a crop across the body (A-P), not the whole field


@pytest.mark.slow
def test_default_box_holds_the_cord_on_every_shared_scan(shared_data, embedded_engine):
    testing, train = shared_data / "sct_testing_data", shared_data / "train"
    pairs = [(testing / f"{scan}.nii.gz", testing / f"{mask}.nii.gz") for scan, mask in (
        ("t2/t2", "t2/t2_seg-manual"), ("t2/t2_fake_lesion", "t2/t2_fake_lesion_sc_seg"),
        ("t1/t1w", "t1/t1w_seg-manual"), ("t2s/t2s", "t2s/t2s_seg-deepseg"), ("mt/mt1", "mt/mt1_seg"))]
    labels = train / "gm-challenge-data/derivatives/labels"
    pairs += [(train / "gm-challenge-data" / mask.parts[-3] / "anat" / mask.name.replace("_seg-manual", ""), mask)
              for mask in sorted(labels.glob("sub-*/anat/*_seg-manual.nii.gz"))]
    checked = 0
    for scan_path, mask_path in pairs:
        if not scan_path.is_file():
            continue
        scan = read_scan(scan_path)
        box, record, _ = embedded_engine.crop_box_for(scan, str(scan_path))
        if box is not None:  # None: the scan fits one tile, the whole field of view is predicted
            assert record["Source"] == "localizer", scan_path
            assert _box_holds(box, _cord_with_margin(sitk.ReadImage(str(mask_path)), scan)), scan_path
        checked += 1
    assert checked >= 5


def test_default_box_holds_the_cord_of_the_bundled_sample(embedded_engine):
    # No manual mask is bundled: the cord is the one the model finds on the whole field of view.
    scan = read_scan(sample_scan_path())
    whole = SegmentationEngine(embedded_engine.model, InferenceOptions(crop=False, orientation="LAS", **OPTIONS))
    cord = binarize(whole.predict(scan).soft_maps["sc"], DEFAULT_THRESHOLD)
    mask = engine_module.cord_localizer("demo-sc", "cpu", 1).cord_mask(scan)
    assert _box_holds(pad_box(box_of_mask(mask, scan, "localizer"), scan, uniform_padding(20.0)),
                      _cord_with_margin(cord, scan))


def test_prediction_reaching_the_box_grows_it_on_that_face_only(shared_data, embedded_engine, monkeypatch):
    # The localizer finds the cord on every shared scan; a miss is made here: a box beside the cord, whose tiles
    # end inside the cord. The prediction reaches that face, and the box grows there only. (An axial T2*w of
    # 384x384 voxels: a field wide enough for several tiles across; nnU-Net crops a zero-padded field back.)
    folder = shared_data / "train/gm-challenge-data"
    scan = read_scan(folder / "sub-9418/anat/sub-9418_run-1_T2starw.nii.gz")
    truth = box_of_mask(sitk.ReadImage(str(folder / "derivatives/labels/sub-9418/anat/"
                                           "sub-9418_run-1_T2starw_seg-manual.nii.gz")), scan, "mask")
    prepared = embedded_engine._prepare(scan, {})

    def right_of_the_cord(width):  # below the cord's first voxel along x
        return CropBox((truth.index[0] - width, *truth.index[1:]), (width, *truth.size[1:]), "localizer")

    def tiles_end(box):
        return embedded_engine._box_of_tiles(prepared, embedded_engine._tiles_around(prepared, box)).upper[0]

    width = next(w for w in range(1, truth.index[0]) if truth.index[0] + 2 <= tiles_end(right_of_the_cord(w))
                 < truth.upper[0] - 2)
    monkeypatch.setattr(SegmentationEngine, "_localizer_box", lambda *args, **kwargs: right_of_the_cord(width))
    grown = embedded_engine.predict(scan, name="sub-9418")
    monkeypatch.undo()
    whole = SegmentationEngine(embedded_engine.model, InferenceOptions(crop=False, orientation="LAS", **OPTIONS))
    reference = sitk.GetArrayFromImage(whole.predict(scan).soft_maps["sc"]) >= 0.5
    assert not any("whole field of view instead" in w for w in grown.warnings)
    record = grown.provenance["Crop"]
    assert record["Grown"][0] == face_names(["xmax"], scan)  # only the face that cut the cord
    box, first = grown.crop_box, right_of_the_cord(width)
    assert box.index[1:] == first.index[1:] and box.size[1:] == first.size[1:] and box.upper[0] > first.upper[0]
    assert record["Box"] == box.to_dict()
    mask = sitk.GetArrayFromImage(grown.soft_maps["sc"]) >= 0.5
    assert 2 * (mask & reference).sum() / (mask.sum() + reference.sum()) >= 0.95
    timing = grown.provenance["Timing"]
    assert list(timing) == list(STAGES[1:-1]) and all(seconds >= 0 for seconds in timing.values())
    assert timing["SlidingWindow"] > 0


def test_a_box_over_the_zero_background_predicts_the_whole_field(tiny_region_model, wide_t1, monkeypatch):
    # wide_t1 is t1w padded with zeros; nnU-Net crops them away, so a box there holds none of its voxels.
    scan = read_scan(wide_t1["scan"])
    monkeypatch.setattr(SegmentationEngine, "_localizer_box",
                        lambda *args, **kwargs: CropBox((0, 0, 0), (20, 20, scan.GetSize()[2]), "localizer"))
    prediction = SegmentationEngine(tiny_region_model, InferenceOptions(**OPTIONS)).predict(scan, name="wide")
    whole = SegmentationEngine(tiny_region_model, InferenceOptions(crop=False, **OPTIONS)).predict(scan)
    assert prediction.crop_box is None and "all zero voxels" in prediction.provenance["Crop"]["Source"]
    assert any(w.startswith("wide: the localizer's box holds none") for w in prediction.warnings)
    for structure, soft in prediction.soft_maps.items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(soft), sitk.GetArrayFromImage(whole.soft_maps[structure]))


def _no_cord_model(root):
    """A real nnU-Net model (random weights) whose output layer says background everywhere."""
    model = make_synthetic_model(root, region_based=False, seed=5)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key, value in state["network_weights"].items():
        if "seg_layers" in key:
            value.zero_()
            if key.endswith("bias"):
                value[0] = 50.0
    torch.save(state, checkpoint)
    resolve_model(str(model), trust=True)  # the localizer loads only trusted models
    return model


def test_no_cord_found_falls_back_to_the_whole_field_of_view(tiny_region_model, wide_t1, tmp_path):
    scan = read_scan(wide_t1["scan"])
    localizer = str(_no_cord_model(tmp_path))
    prediction = SegmentationEngine(tiny_region_model,
                                    InferenceOptions(localizer=localizer, **OPTIONS)).predict(scan, name="wide")
    assert prediction.crop_box is None
    assert any("found no spinal cord; predicting on the whole field of view" in w for w in prediction.warnings)
    assert all(sitk.GetArrayViewFromImage(s).max() > 0 for s in prediction.soft_maps.values())  # never empty


def test_catalogue_model_trained_on_crops_needs_its_metadata(tiny_model):
    # The catalogue's "spinalcord" is trained on sc-crop boxes: a folder without crop_metadata.json is refused.
    with pytest.raises(ModelFolderError, match="crop_metadata.json: not found") as error:
        SegmentationEngine(tiny_model, InferenceOptions(**OPTIONS), model_id="spinalcord")
    assert str(tiny_model / "crop_metadata.json") in str(error.value)


def test_model_with_crop_metadata_without_sccrop_uses_the_localizer_with_the_padding(cropped_model, wide_t1,
                                                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "sc_crop", None)  # as on a machine without sc-crop: import fails
    scan = read_scan(wide_t1["scan"])
    engine = SegmentationEngine(cropped_model, InferenceOptions(**OPTIONS), model_id="spinalcord")
    assert engine.crop_padding == PADDING
    prediction = engine.predict(scan, name="wide")
    assert any("sc-crop is not installed" in w and "localizer" in w for w in prediction.warnings)
    tight = box_of_mask(engine_module.cord_localizer().cord_mask(scan), scan, "localizer")
    assert prediction.crop_box == pad_box(tight, scan, PADDING)  # SCT's padding, not grown, not whole length
    assert prediction.provenance["Crop"]["Padding_mm"] == PADDING


def test_model_with_crop_metadata_uses_the_sccrop_box(cropped_model, wide_t1, monkeypatch, tmp_path):
    """Stand-in detector (see the module docstring): the engine crops where sc-crop says, with the model's padding."""
    scan = read_scan(wide_t1["scan"])
    detected = {"xmin": 70, "xmax": 100, "ymin": 60, "ymax": 95, "zmin": 5, "zmax": 70}
    calls = []
    weights = {}
    for name in ("det_model.onnx", "cls_model.onnx"):
        (tmp_path / name).write_bytes(name.encode() * 100)
        weights[name] = {"url": "http://127.0.0.1:9/never", "sha256": hashlib.sha256(name.encode() * 100).hexdigest()}

    def detect(image, model_path=None, device=None, **padding):
        calls.append((image.shape, model_path, padding))
        return dict(detected, original_axcodes="RAS")

    download = types.SimpleNamespace(_ASSETS=weights, _CACHE_DIR=str(tmp_path))
    monkeypatch.setitem(sys.modules, "sc_crop", types.SimpleNamespace(detect=detect, download=download))
    monkeypatch.setitem(sys.modules, "sc_crop.download", download)
    prediction = SegmentationEngine(cropped_model, InferenceOptions(**OPTIONS)).predict(scan)
    assert calls == [(tuple(scan.GetSize()), str(tmp_path / "det_model.onnx"), PADDING)]
    assert prediction.crop_box == CropBox.from_dict({**detected, "source": "sc-crop"})
    assert prediction.provenance["Crop"]["Source"] == "sc-crop"
    assert not any("localizer" in w for w in prediction.warnings)


class _ReleaseFiles(BaseHTTPRequestHandler):
    """Serves ``server.files`` with HTTP Range; the first answer for a path in ``server.drop_once`` stops halfway."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path not in server.files:
            self.send_error(404)
            return
        data = server.files[self.path]
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path in server.drop_once:
            server.drop_once.discard(self.path)
            self.wfile.write(data[start:start + (len(data) - start) // 2])  # then the connection closes
            return
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


def test_sccrop_weights_download_verified_resumable_and_offline(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ReleaseFiles)
    server.files, server.requests, server.drop_once = {}, [], {"/v0.0.11/det_model.onnx"}
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        data = {"det_model.onnx": bytes(range(256)) * 3000, "cls_model.onnx": b"c" * 70000}
        assets = {}
        for name, content in data.items():
            server.files[f"/v0.0.11/{name}"] = content
            url = f"http://127.0.0.1:{server.server_port}/v0.0.11/{name}"
            assets[name] = {"url": url, "sha256": hashlib.sha256(content).hexdigest()}
        target = tmp_path / "sc_crop_cache"
        with pytest.raises(ModelInstallError, match="offline mode is on") as error:
            ensure_sccrop_weights(assets, target, offline=True)
        assert str(target / "det_model.onnx") in str(error.value) and not server.requests
        paths = ensure_sccrop_weights(assets, target, offline=False)
        assert {n: p.read_bytes() for n, p in paths.items()} == data
        assert any(r == "/v0.0.11/det_model.onnx" and rng for r, rng in server.requests)
        server.requests.clear()
        assert ensure_sccrop_weights(assets, target, offline=True) == paths  # verified in place: no network
        assert not server.requests
        wrong = {"cls_model.onnx": {**assets["cls_model.onnx"], "sha256": "0" * 64}}
        with pytest.raises(ModelInstallError, match="does not match the expected"):
            ensure_sccrop_weights(wrong, tmp_path / "other", offline=False)
    finally:
        server.shutdown()
        server.server_close()


def test_cli_flags_crop_box_tta_and_progress(tiny_region_model, wide_t1, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    # The embedded cord model: a real prediction stays inside the box (random weights would reach it).
    base = ["segment", "-i", str(wide_t1["scan"]), "-m", "demo-sc", "-o", str(out), "--device", "cpu",
            "--threads", "1"]
    assert main(base + ["--save-cropbox", "--no-tta"]) == 0
    source = "wide_t1w"
    step = json.loads((out / f"{source}_label-SC_seg.json").read_text())["GeneratedBy"][0]
    assert step["Mirroring"] is False and step["Crop"]["Source"] == "localizer"
    box = sitk.ReadImage(str(out / f"{source}_cropbox.nii.gz"))
    scan = read_scan(wide_t1["scan"])
    assert box.GetSize() == scan.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(box),
                                  sitk.GetArrayFromImage(cropbox_image(CropBox.from_dict(step["Crop"]["Box"]), scan)))
    printed = capsys.readouterr().err
    assert f"{source}: locating the cord" in printed and "tiles)" in printed  # one line per stage, no terminal
    small = shared_data / "sct_testing_data/t1/t1w.nii.gz"
    assert main(base[:2] + [str(small)] + ["-m", str(tiny_region_model), "--trust"] + base[5:]
                + ["--no-crop", "--tta"]) == 0
    step = json.loads((out / "t1w_label-SC_seg.json").read_text())["GeneratedBy"][0]
    assert step["Mirroring"] is True and step["Crop"]["Source"] is None


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    with ConsoleProgress("t2", stream=stream, terminal=True) as progress:
        progress(0.01, "locating the cord")
        for tile in range(1, 4):
            progress(0.5, f"predicting tile {tile}/3")
        progress(1.0, "done")
    text = stream.getvalue()
    assert "t2: locating the cord" in text and "/3 [" in text and "tile" in text and "t2: done" in text


def test_localizer_is_shared_within_a_process(tiny_region_model):
    engine_module._LOCALIZERS.clear()
    first = engine_module.cord_localizer("demo-sc", "cpu", 1)
    assert engine_module.cord_localizer("demo-sc", "cpu", 1) is first
