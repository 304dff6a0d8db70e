"""The command line, batch and the Slicer panel give the same masks, voxel for voxel (one binarization rule).

One prediction per scan (a real nnU-Net model with random weights, whose noisy
maps have many components, so that the largest-component option matters) is
binarized by ``segment``'s writer, by ``batch`` and by the panel's result scene
on a real MRML scene (slicer-core), in three orientations of the shared scans.
"""


import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SpinalCordSegLib.imaging.binarization import MaskOptions
from SpinalCordSegLib.rounds.cohort import find_scans, run_batch
from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
from SpinalCordSegLib.imaging.image_io import reorient
from SpinalCordSegLib.imaging.naming import output_name
from SpinalCordSegLib.imaging.outputs import write_outputs
from SpinalCordSegLib.imaging.sidecar import Sidecar

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from SpinalCordSegLib.panel.slicer_scene import (  # noqa: E402
    ResultScene,
    add_volume_from_image,
    new_parameter_node,
    segment_mask_array,
)

pytestmark = pytest.mark.slow

#: The bundled sample (stored PSR) is written in each of these voxel orders, as the shared scans are stored.
ORIENTATIONS = ("PSR", "RAS", "LAS")
THRESHOLDS = {"sc": 0.45, "lesion": 0.55}
OPTIONS = [MaskOptions(), MaskOptions(keep_largest_cord=True, restrict_lesions_to_cord=True),
           MaskOptions(keep_largest_cord=False, restrict_lesions_to_cord=False)]


@pytest.fixture(scope="module")
def engine(tiny_region_model):
    engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", crop=False))
    yield engine
    engine.close()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"largest{int(o.keep_largest_cord)}"
                                                          f"-restrict{int(o.restrict_lesions_to_cord)}")
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_cli_batch_and_panel_masks_are_identical(engine, sample_data, tmp_path, mrml_scene, orientation, options):
    dataset = tmp_path / "bids"
    scan_path = dataset / "sub-01/anat/sub-01_T2w.nii.gz"
    scan_path.parent.mkdir(parents=True)
    sitk.WriteImage(reorient(sitk.ReadImage(str(sample_data.scan)), orientation), str(scan_path))
    scan = sitk.ReadImage(str(scan_path))
    prediction = engine.predict(scan, name=str(scan_path))

    cli = write_outputs(prediction.soft_maps, "sub-01_T2w", tmp_path / "cli", THRESHOLDS, prediction.provenance,
                        options=options)
    derivatives = dataset / "derivatives/spinalcordseg"
    report = run_batch(find_scans(dataset), engine, derivatives, THRESHOLDS, options=options)
    assert report.predicted == ["sub-01/anat/sub-01_T2w.nii.gz"] and not report.failed

    volume = add_volume_from_image(mrml_scene, scan, "scan")
    results = ResultScene(new_parameter_node(mrml_scene))
    results.show(volume, prediction.soft_maps, {s: prediction.provenance for s in prediction.soft_maps},
                 THRESHOLDS, options=options)
    try:
        for structure in ("sc", "lesion"):
            from_cli = sitk.GetArrayFromImage(sitk.ReadImage(str(cli[f"{structure}_seg"]))).astype(bool)
            batch_file = derivatives / "sub-01/anat" / output_name("sub-01_T2w", structure, "seg")
            from_batch = sitk.GetArrayFromImage(sitk.ReadImage(str(batch_file))).astype(bool)
            from_panel = segment_mask_array(results.params.segmentation, structure, volume)
            np.testing.assert_array_equal(from_cli, from_batch)
            np.testing.assert_array_equal(from_cli, from_panel)
            assert Sidecar.read(batch_file).mask_options == options == Sidecar.read(cli[f"{structure}_seg"]).mask_options
        cord = sitk.GetArrayFromImage(sitk.ReadImage(str(cli["sc_seg"]))).astype(bool)
        plain = sitk.GetArrayViewFromImage(prediction.soft_maps["sc"]) >= THRESHOLDS["sc"]
        if options.keep_largest_cord:  # checked against a whole-volume labelling of its own
            labels, count = ndimage.label(plain, structure=np.ones((3, 3, 3)))
            plain = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1 if count > 1 else plain
        np.testing.assert_array_equal(cord, plain)
    finally:
        results.close()
