"""The PNG overlay reads as a radiology viewer shows a scan, whatever the scan's orientation.

A synthetic scan holds a cord down the middle and a "lesion" marker on the
patient's anterior right, superior half. The rendered PNG is read back and the
marker's red outline is found inside each view's panel: in the axial view it
must be top-left (anterior up, patient's right on the screen's left), in the
sagittal view top-left (anterior left, superior up).
"""

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.report.overlay import EDGE_LETTERS, choose_views, draw_overlay, save_overlay_png

SPACING_LPS = (0.75, 1.0, 1.5)  # mm along x (to the left), y (to posterior), z (to superior)
SIZE_LPS = (40, 30, 20)  # 30 x 30 x 30 mm: the axial view shows the whole plane


def _phantom(orientation: str):
    """(scan, {"sc": cord, "lesion": marker}) stored in ``orientation`` (SimpleITK letters)."""
    nx, ny, nz = SIZE_LPS
    rng = np.random.default_rng(0)
    scan = rng.uniform(20, 80, (nz, ny, nx)).astype(np.float32)  # array order [z, y, x]
    cord = np.zeros(scan.shape, np.uint8)
    cord[:, ny // 2 - 3:ny // 2 + 3, nx // 2 - 3:nx // 2 + 3] = 1
    marker = np.zeros(scan.shape, np.uint8)
    # In LPS, small x is the patient's right, small y anterior, large z superior. The marker
    # crosses the midline so that the sagittal view through the cord cuts it too.
    marker[int(nz * 0.6):int(nz * 0.9), 1:ny // 4, 1:nx // 2 + 6] = 1
    images = []
    for array in (scan, cord, marker):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING_LPS)
        image.SetOrigin((-12.0, 30.0, 100.0))
        images.append(sitk.DICOMOrient(image, orientation))
    scan, cord, marker = images
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(scan.GetDirection()) == orientation
    # Where the marker is, in physical (LPS) space, independently of the construction above.
    points = np.array([marker.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
                       for index in np.argwhere(sitk.GetArrayFromImage(marker))])
    centre = np.array(scan.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in scan.GetSize()]))
    right, anterior, superior = points.mean(axis=0) - centre
    assert right < 0 and anterior < 0 and superior > 0  # LPS: right and anterior are negative x and y
    return scan, {"sc": cord, "lesion": marker}


def _red_centre(pixels: np.ndarray):
    """Centre (x, y) as fractions of the panel (0, 0 = top left) of the red outline, or None."""
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    if not red.any():
        return None
    rows, columns = np.nonzero(red)
    return columns.mean() / pixels.shape[1], rows.mean() / pixels.shape[0]


@pytest.mark.parametrize("orientation", ["LAS", "RAS", "PSR", "LPI"])
def test_marker_lands_where_radiological_convention_puts_it(orientation, tmp_path):
    import matplotlib.image

    scan, masks = _phantom(orientation)
    figure, panels = draw_overlay(scan, masks, title=orientation)
    path = tmp_path / "overlay.png"
    figure.savefig(path, dpi="figure")
    png = matplotlib.image.imread(str(path))
    height = png.shape[0]
    found = {}
    for view, axis in panels:
        box = axis.get_window_extent()
        inside = png[int(height - box.y1) + 2:int(height - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2]
        found[(view.plane, view.purpose)] = _red_centre(inside)
        letters = {text.get_text() for text in axis.texts}
        assert set(EDGE_LETTERS[view.plane]) <= letters
    x, y = found[("sagittal", "through the cord")]
    assert x < 0.4 and y < 0.4, f"{orientation}: sagittal marker at {x:.2f}, {y:.2f}: not anterior-superior"
    x, y = found[("axial", "largest lesion")]
    assert x < 0.4 and y < 0.4, f"{orientation}: axial marker at {x:.2f}, {y:.2f}: not right-anterior"
    assert found[("axial", "middle of the cord")] is None  # the marker is in the superior half only


def test_axial_views_go_through_the_largest_lesion_and_the_cords_middle():
    cord = np.zeros((40, 20, 20), bool)
    cord[5:36, 8:13, 8:13] = True  # slices 5..35: middle 20; left-right 8..12: median 10
    lesions = np.zeros_like(cord)
    lesions[8:10, 9:11, 9:11] = True  # small
    lesions[28:33, 8:12, 8:12] = True  # largest; its widest section...
    lesions[30, 7:13, 7:13] = True  # ...is slice 30
    views = choose_views({"sc": cord, "lesion": lesions})
    assert [(v.plane, v.index) for v in views] == [("sagittal", 10), ("axial", 30), ("axial", 20)]
    cord[0:3, 0:2, 0:2] = True  # a false positive far from the cord moves no view
    assert [(v.plane, v.index) for v in views] == [("sagittal", 10), ("axial", 30), ("axial", 20)]
    only_cord = choose_views({"sc": cord, "lesion": np.zeros_like(cord)})
    assert [(v.plane, v.index) for v in only_cord] == [("sagittal", 10), ("axial", 20)]
    nothing = choose_views({"sc": np.zeros_like(cord)})
    assert "no structure found" in nothing[1].purpose


def test_overlay_states_structures_model_note_thresholds_and_date(tmp_path):
    scan, masks = _phantom("LAS")
    provenance = {"ModelId": "demo-sc-lesion", "Note": "demo-sc-lesion is a demo model: not for clinical use",
                  "Thresholds": {"sc": 0.5, "lesion": 0.3}, "Date": "2026-12-01 10:00:00"}
    figure, panels = draw_overlay(scan, masks, title="sub-01_T2w", provenance=provenance)
    text = "\n".join(t.get_text() for t in figure.texts + [t for axis in figure.axes for t in axis.texts])
    voxel = float(np.prod(SPACING_LPS))
    cord_mm3 = sitk.GetArrayFromImage(masks["sc"]).sum() * voxel
    assert f"Spinal cord: {cord_mm3:.1f} mm\u00b3" in text
    lesion_mm3 = sitk.GetArrayFromImage(masks["lesion"]).sum() * voxel
    assert f"Lesions: 1 ({lesion_mm3:.1f} mm\u00b3)" in text
    assert "Model: demo-sc-lesion (Demo: spinal cord and lesions (embedded)" in text
    assert "demo model: not for clinical use" in text
    assert "Thresholds: spinal cord 0.5, lesions 0.3" in text and "2026-12-01 10:00:00" in text
    titles = [axis.get_title() for _, axis in panels]
    assert any(title.startswith("Axial 1: largest lesion\nS ") for title in titles)
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    for _, axis in panels:
        bars = [a for a in axis.artists if isinstance(a, AnchoredSizeBar)]
        assert len(bars) == 1 and bars[0].txt_label.get_text().endswith(" mm")
    assert save_overlay_png(scan, masks, tmp_path / "x" / "o.png").stat().st_size > 10000
