"""The panel's disc clicking, level table and saved disc labels, on a real MRML scene (slicer-core).

A phantom scan (straight cord, radius 4 mm, one lesion) is written as a PSR
NIfTI in a BIDS folder and loaded with Slicer's reader (which flips PSR's
axes); the discs are clicked as Markups control points at known RAS
positions. The saved disc labels and the saved cord and lesion masks are
then read back by ``spinalcordseg measure --discs``, which must give the
panel's per-level CSA and lesion counts.
"""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from SpinalCordSegLib import cli  # noqa: E402
from SpinalCordSegLib.errors import SpinalCordSegError  # noqa: E402
from SpinalCordSegLib.imaging.binarization import MaskOptions  # noqa: E402
from SpinalCordSegLib.imaging.sidecar import Sidecar  # noqa: E402
from SpinalCordSegLib.panel.levels_controller import LevelsController, parse_disc_label  # noqa: E402
from SpinalCordSegLib.panel.slicer_scene import ResultScene, image_from_volume, new_parameter_node  # noqa: E402
from SpinalCordSegLib.rounds.correction import on_grid, plan_outputs  # noqa: E402

SHAPE = (36, 24, 24)  # z, y, x
SPACING = (0.8, 0.8, 1.0)


def as_psr(array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    return sitk.DICOMOrient(image, "PSR")


@pytest.fixture
def case(tmp_path, mrml_scene):
    k, j, i = np.indices(SHAPE).astype(float)
    x, y = (i - 11.5) * SPACING[0], (j - 11.5) * SPACING[1]
    cord = (np.hypot(x, y) <= 4.0).astype(np.float32)
    lesion = ((np.hypot(x - 1, y) <= 1.6) & (k >= 14) & (k <= 19)).astype(np.float32)
    scan = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    scan.parent.mkdir(parents=True)
    sitk.WriteImage(as_psr((cord * 300 + 20).astype(np.float32)), str(scan))
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(mrml_scene)
    volume = logic.AddArchetypeVolume(str(scan), "scan", 0)
    grid = image_from_volume(volume)
    soft = {name: on_grid(as_psr(array), grid) for name, array in (("sc", cord), ("lesion", lesion))}
    node = new_parameter_node(mrml_scene)
    results = ResultScene(node)
    results.show(volume, soft, {s: {"Name": "phantom"} for s in soft}, options=MaskOptions(False, False))
    return {"scan": scan, "volume": volume, "results": results, "node": node,
            "reference": as_psr(cord)}  # the file grid, for clicking at known voxels


def ras_of(reference, i, j, k):
    """RAS position of voxel (i, j, k) of the phantom array (x, y, z before PSR)."""
    array_grid = sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8))
    array_grid.SetSpacing(SPACING)
    lps = array_grid.TransformIndexToPhysicalPoint((i, j, k))
    return [-lps[0], -lps[1], lps[2]]


def test_clicked_discs_give_the_level_table_that_measure_reads_back(case, tmp_path, capsys):
    levels = LevelsController(lambda: case["node"])
    node = levels.disc_node(create=True)
    assert levels.disc_node() is node and node.IsA("vtkMRMLMarkupsFiducialNode")
    # Two clicks, labels left empty: the panel names them C2-C3 (3) then C3-C4 (4).
    node.AddControlPoint(*ras_of(case["reference"], 15, 11, 25), "")
    assert levels.point_added() == "Disc 3 (C2-C3) placed; next click: disc 4 (C3-C4)"
    node.AddControlPoint(*ras_of(case["reference"], 15, 11, 10), "")  # in front of the cord, 3 mm off its axis
    assert levels.point_added().startswith("Disc 4 (C3-C4) placed")
    assert [node.GetNthControlPointLabel(i) for i in range(2)] == ["3", "4"]

    masks = case["results"].corrected_masks()
    panel = levels.level_table(masks["sc"], masks["lesion"]).per_level.set_index("level_name")
    assert list(panel.index) == ["all", "C2", "C3", "C4"]
    assert (panel.loc["C3", "first_slice"], panel.loc["C3", "last_slice"]) == (11, 25)
    rows = levels.table_from_results(case["results"])
    assert [r.level for r in rows] == ["all", "C2", "C3", "C4"]
    assert rows[2].csa_mm2.startswith(f"{panel.loc['C3', 'area_mm2_mean']:.2f} +/-")
    assert rows[2].lesions.startswith("1 (")

    saved = levels.save(case["volume"], "", "Rater One", confirm=lambda question: False)
    assert saved == tmp_path / "bids/derivatives/labels/sub-01/anat/sub-01_T2w_label-discs_dlabel.nii.gz"
    written = sitk.ReadImage(str(saved))
    assert written.GetPixelID() == sitk.sitkUInt8 and sorted(np.unique(sitk.GetArrayFromImage(written))) == [0, 3, 4]
    sidecar = Sidecar.read(saved)
    assert sidecar.authors == ["Rater One"] and sidecar.extra["Discs"] == {"3": "C2-C3", "4": "C3-C4"}
    assert levels.save(case["volume"], "", "Rater One", confirm=lambda question: False) is None  # kept

    # The masks as the panel saves them, then `measure` on the saved files.
    correction = case["results"].save(plan_outputs(str(case["scan"])), "Rater One")
    seg = {p.name: p for p in correction.files.values()}
    out = tmp_path / "measure" / "t.csv"
    assert cli.main(["measure", "-i", str(seg["sub-01_T2w_label-SC_seg.nii.gz"]),
                     "--lesion", str(seg["sub-01_T2w_label-lesion_seg.nii.gz"]),
                     "--discs", str(saved), "-o", str(out)]) == 0
    measured = pd.read_csv(tmp_path / "measure" / "t_summary.csv").set_index("level_name")
    for level in ("C2", "C3", "C4"):
        for column in ("first_slice", "last_slice", "n_slices", "n_lesions"):
            assert measured.loc[level, column] == panel.loc[level, column], (level, column)
        for column in ("area_mm2_mean", "area_binary_mm2_mean", "lesion_volume_mm3"):
            assert measured.loc[level, column] == pytest.approx(panel.loc[level, column], rel=1e-9), (level, column)


def test_bad_clicks_are_named(case):
    levels = LevelsController(lambda: case["node"])
    with pytest.raises(SpinalCordSegError, match="no disc clicked"):
        levels.discs()
    node = levels.disc_node(create=True)
    node.AddControlPoint(*ras_of(case["reference"], 11, 11, 20), "C2-C3")
    node.AddControlPoint(*ras_of(case["reference"], 11, 11, 10), "3")
    with pytest.raises(SpinalCordSegError, match="placed twice"):
        levels.discs()
    node.SetNthControlPointLabel(1, "disc")
    with pytest.raises(SpinalCordSegError, match="labelled 'disc'"):
        levels.discs()
    node.SetNthControlPointLabel(1, "4")
    node.AddControlPoint(500.0, 0.0, 0.0, "5")
    with pytest.raises(SpinalCordSegError, match="outside the scan"):
        levels.disc_image(case["reference"])


def test_disc_labels_by_number_or_name():
    assert [parse_disc_label(t) for t in ("3", " c2-c3 ", "C7/T1", "T12-L1", "x", "")] == [3, 3, 8, 20, None, None]


def test_totalspineseg_discs_become_control_points(case):
    """TotalSpineSeg is a STAND-IN here (not installable offline): a function returning disc labels on the scan."""
    levels = LevelsController(lambda: case["node"])
    node = levels.disc_node(create=True)
    node.AddControlPoint(0.0, 0.0, 0.0, "7")  # replaced by the automatic discs

    def stand_in_spine(path):
        assert path == case["scan"]
        discs = np.zeros(SHAPE, np.uint8)
        discs[25, 11, 15], discs[10, 11, 15], discs[33, 11, 15] = 3, 4, 50  # 50: SCT's PMJ, not a disc
        return as_psr(discs)

    assert levels.discs_from_spine(case["volume"], stand_in_spine) == "TotalSpineSeg found discs 3 (C2-C3), 4 (C3-C4)"
    assert sorted(levels.discs()) == [3, 4]
    expected = np.array(ras_of(case["reference"], 15, 11, 25)) * [-1, -1, 1]  # LPS
    assert np.allclose(levels.discs()[3], expected, atol=1e-4)
