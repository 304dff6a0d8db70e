"""The panel's "Vertebral levels" section without Qt: clicked discs, the level table, saving the discs.

The user clicks the intervertebral discs into a Markups point list (a
``vtkMRMLMarkupsFiducialNode`` named "Discs", kept as a reference of the
module's parameter node). A point's label is its disc in SCT's numbering
(``3`` or ``C2-C3``); a new point without one gets the next disc down
(:meth:`LevelsController.point_added`). The level table is
:func:`SpinalCordSegLib.measures.levels.level_tables` on the current cord and
lesion masks, with the discs as single-voxel labels on the scan's grid: the
very image that Save writes, so that ``spinalcordseg measure --discs`` on the
saved file gives the same rows. Save writes
``<case>_label-discs_dlabel.nii.gz`` (SCT's disc-label format, uint8) with a
JSON sidecar into the BIDS derivatives (``derivatives/labels``) or the
chosen folder. Everything here runs on a bare MRML scene (``slicer-core``);
the widget only forwards clicks and shows what comes back.

Example:
    >>> levels = LevelsController(lambda: parameter_node)                 # doctest: +SKIP
    >>> node = levels.disc_node(create=True)                               # the widget starts place mode on it
    >>> levels.point_added()                                               # doctest: +SKIP
    'Disc 3 (C2-C3) placed; next click: disc 4 (C3-C4)'
    >>> rows = levels.table_from_results(results)                          # doctest: +SKIP
    >>> levels.save(volume_node, "", "jd", confirm=lambda question: True)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import SpinalCordSegError
from ..imaging.image_io import write_image_atomic
from ..imaging.naming import bids_label
from ..imaging.sidecar import Sidecar, manual_entry
from ..measures.levels import NOT_DISCS, LevelSource, LevelTables, disc_name, level_name, level_tables, point_labels
from ..rounds.correction import plan_outputs, read_grid
from ..rounds.cohort import DISCS_SUFFIX
from .slicer_scene import LPS_RAS, SceneParameters, image_from_volume, scan_source_name, volume_file_path

DISC_NODE_NAME = "Discs"
DISC_ROLE = "Discs"
#: The first disc a user clicks when the list is empty: C2-C3, the one the CSA biomarker sits under.
FIRST_DISC = 3
REPLACE_DISCS_QUESTION = "Replace the saved disc labels {path}?"
_DISC_NUMBERS = {disc_name(n): n for n in range(2, 30) if disc_name(n)}


def parse_disc_label(text: str) -> Optional[int]:
    """A point label as SCT's disc number: ``'3'`` or ``'C2-C3'`` -> 3; None when it is neither."""
    text = text.strip().upper().replace("/", "-")
    if re.fullmatch(r"\d{1,2}", text):
        return int(text)
    return _DISC_NUMBERS.get(text)


@dataclass
class LevelRow:
    """One row of the panel's level table."""

    level: str
    slices: str
    csa_mm2: str
    csa_binary_mm2: str
    lesions: str


class LevelsController:
    """Decisions of the "Vertebral levels" section for the module's parameter node."""

    def __init__(self, parameter_node: Callable[[], object]) -> None:
        self._parameter_node = parameter_node

    @property
    def params(self) -> SceneParameters:
        return SceneParameters(self._parameter_node())

    # -- the point list ------------------------------------------------------------------------

    def disc_node(self, create: bool = False):
        """The Markups point list of the discs (created, and referenced, when ``create``)."""
        node = self.params.reference(DISC_ROLE)
        if node is None and create:
            scene = self._parameter_node().GetScene()
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", DISC_NODE_NAME)
            node.CreateDefaultDisplayNodes()
            self.params.set_reference(DISC_ROLE, node)
        return node

    def _labels(self) -> List[str]:
        node = self.disc_node()
        return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())] if node else []

    def next_disc_number(self) -> int:
        """The disc the next click names: C2-C3 first, then one further down than the lowest so far."""
        numbers = [n for n in (parse_disc_label(label) for label in self._labels()) if n is not None]
        return max(numbers) + 1 if numbers else FIRST_DISC

    def point_added(self) -> str:
        """Name the newest point after its disc unless the user gave it a disc label; return a status line."""
        node = self.disc_node()
        if node is None or node.GetNumberOfControlPoints() == 0:
            return "No disc placed."
        last = node.GetNumberOfControlPoints() - 1
        number = parse_disc_label(node.GetNthControlPointLabel(last))
        if number is None:
            others = [parse_disc_label(label) for label in self._labels()[:-1]]
            number = max([n for n in others if n is not None], default=FIRST_DISC - 1) + 1
            node.SetNthControlPointLabel(last, str(number))
        following = self.next_disc_number()
        return (f"Disc {number} ({disc_name(number) or 'not a disc'}) placed; "
                f"next click: disc {following} ({disc_name(following)})")

    def discs(self) -> Dict[int, np.ndarray]:
        """The clicked discs: SCT number -> position (LPS, mm). SpinalCordSegError on a bad or repeated label."""
        node = self.disc_node()
        if node is None or node.GetNumberOfControlPoints() == 0:
            raise SpinalCordSegError("no disc clicked: place the discs (C2-C3 = 3 first) in the Discs point list")
        result: Dict[int, np.ndarray] = {}
        for i in range(node.GetNumberOfControlPoints()):
            label = node.GetNthControlPointLabel(i)
            number = parse_disc_label(label)
            if number is None or not 1 <= number < min(NOT_DISCS):
                raise SpinalCordSegError(f"Discs point {i + 1} is labelled {label!r}: label each point with its "
                                         "disc, a number (3 = C2-C3) or a name such as C2-C3")
            if number in result:
                raise SpinalCordSegError(f"disc {number} ({disc_name(number)}) is placed twice in the Discs list")
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, position)
            result[number] = LPS_RAS @ np.array(position)
        return result

    def disc_image(self, reference: sitk.Image) -> sitk.Image:
        """The discs as single-voxel labels (uint8, SCT's format) on ``reference``'s grid."""
        image = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        image.CopyInformation(reference)
        for number, point in sorted(self.discs().items()):
            index = reference.TransformPhysicalPointToIndex(tuple(float(v) for v in point))
            if not all(0 <= i < s for i, s in zip(index, reference.GetSize())):
                raise SpinalCordSegError(f"disc {number} ({disc_name(number)}) lies outside the scan")
            if image[index]:
                raise SpinalCordSegError(f"discs {image[index]} and {number} fall on the same voxel")
            image[index] = number
        return image

    def discs_from_spine(self, volume_node, spine: Optional[Callable[[Path], sitk.Image]] = None) -> str:
        """Replace the clicked discs with TotalSpineSeg's (``spine``: scan path -> disc labels); return a status line.

        ``spine`` defaults to :func:`SpinalCordSegLib.inference.spine.spine_disc_labels`
        (SpineNotInstalled, saying how to get it, when the package is missing).
        """
        import tempfile

        from ..inference.spine import spine_disc_labels

        spine = spine or spine_disc_labels
        scan = volume_file_path(volume_node)
        with tempfile.TemporaryDirectory(prefix="spinalcordseg-discs-") as work:
            if scan is None:  # a volume made in Slicer: TotalSpineSeg reads files
                scan = str(write_image_atomic(image_from_volume(volume_node), Path(work) / "scan.nii.gz"))
            found = point_labels(spine(Path(scan)), "TotalSpineSeg's disc labels", NOT_DISCS)
        node = self.disc_node(create=True)
        node.RemoveAllControlPoints()
        for label in found:
            node.AddControlPoint(*(LPS_RAS @ np.array(label.point)).tolist(), str(label.value))
        return "TotalSpineSeg found discs " + ", ".join(f"{label.value} ({disc_name(label.value)})" for label in found)

    # -- the level table -----------------------------------------------------------------------------

    def level_table(self, cord: sitk.Image, lesion: Optional[sitk.Image] = None,
                    threshold: float = 0.5) -> LevelTables:
        """Per-level tables of ``cord`` (and ``lesion``) with the clicked discs on the cord's grid."""
        source = LevelSource("discs", self.disc_image(cord), DISC_NODE_NAME)
        return level_tables(cord, source, lesion, threshold=threshold)

    def table_from_results(self, results) -> List[LevelRow]:
        """The level table of the current (edited) masks of a :class:`~.slicer_scene.ResultScene`."""
        masks = results.corrected_masks()
        cords = [s for s in masks if bids_label(s) == "SC"]
        if not cords:
            raise SpinalCordSegError("the level table needs a cord segmentation: run a cord model first")
        lesions = [s for s in masks if bids_label(s) == "lesion"]
        return table_rows(self.level_table(masks[cords[0]], masks[lesions[0]] if lesions else None))

    # -- saving --------------------------------------------------------------------------------------

    def output_path(self, volume_node, output_folder: str = "") -> Path:
        """Where Save writes the disc labels: BIDS ``derivatives/labels`` or the chosen folder."""
        plan = plan_outputs(volume_file_path(volume_node), output_folder or None)
        return plan.folder / f"{scan_source_name(volume_node)}{DISCS_SUFFIX}.nii.gz"

    def save(self, volume_node, output_folder: str, rater: str, confirm: Callable[[str], bool]) -> Optional[Path]:
        """Write the disc labels on the scan file's grid (else the volume's) and their sidecar.

        Returns the path, or None when the user kept an existing file.
        """
        path = self.output_path(volume_node, output_folder)
        if path.exists() and not confirm(REPLACE_DISCS_QUESTION.format(path=path)):
            return None
        scan = volume_file_path(volume_node)
        grid = read_grid(scan) if scan else image_from_volume(volume_node)
        image = self.disc_image(grid)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image_atomic(image, path)
        discs = {str(n): disc_name(n) for n in sorted(self.discs())}
        # SCT's manual-labels format: the tool first, then who placed the labels.
        tool = {"Name": "SpinalCordSeg", "Description": "disc labels clicked in the Slicer panel"}
        Sidecar([tool, manual_entry(rater or "unknown")], structure="discs",
                extra={"Description": "single-voxel intervertebral disc labels, SCT's numbering (3 = C2-C3)",
                       "Discs": discs,
                       "Source": Path(scan).name if scan else volume_node.GetName()}).write(path)
        return path


def table_rows(tables: LevelTables) -> List[LevelRow]:
    """The per-level summary as text rows for the panel (first row: every slice)."""
    rows = []
    summary = tables.per_level
    for _, row in summary.iterrows():
        level = "all" if row["level_name"] == "all" else f"{row['level_name'] or level_name(int(row['level']))}"
        lesions = (f"{int(row['n_lesions'])} ({row['lesion_volume_mm3']:.1f} mm3)"
                   if "n_lesions" in summary.columns else "")
        rows.append(LevelRow(level=level, slices=f"{row['first_slice']}-{row['last_slice']} ({row['n_slices']})",
                             csa_mm2=f"{row['area_mm2_mean']:.2f} +/- {row['area_mm2_sd']:.2f}",
                             csa_binary_mm2=f"{row['area_binary_mm2_mean']:.2f}", lesions=lesions))
    return rows
