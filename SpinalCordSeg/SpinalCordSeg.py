"""SpinalCordSeg: spinal cord and lesion segmentation with nnU-Net v2 in 3D Slicer, then correction.

The widget only wires ``Resources/UI/SpinalCordSeg.ui`` to SpinalCordSegLib:
``panel_state`` (thresholds, edits, devices, models, set-up, worker jobs),
``slicer_scene`` (every MRML operation, the results kept in the scene) and
``correction`` (saving with provenance and the correction log). Inference
runs in a warm worker process (``SpinalCordSegLib.worker``) polled from a
timer, so the GUI stays responsive.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, Optional

import ctk
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SpinalCordSegLib.catalogue import load_catalogue
from SpinalCordSegLib.correction import plan_outputs
from SpinalCordSegLib.errors import CancelledError, SpinalCordSegError
from SpinalCordSegLib.image_io import write_image_atomic
from SpinalCordSegLib.panel_state import (
    MAX_THRESHOLD,
    MIN_THRESHOLD,
    ApplyRun,
    ModelSelectorState,
    catalogue_model_entries,
    device_choices,
    format_volume,
    install_plan,
    install_question,
    missing_packages,
    overwrite_question,
    parse_folds,
    plan_jobs,
)
from SpinalCordSegLib.outputs import read_sidecar
from SpinalCordSegLib.slicer_scene import (
    ResultScene,
    image_from_volume,
    mask_image,
    scan_source_name,
    segment_editor_node,
    segment_look,
    segment_mask_array,
    volume_file_path,
)

RATER_SETTING = "SpinalCordSeg/Rater"
OUTPUT_FOLDER_SETTING = "SpinalCordSeg/OutputFolder"
WORKLIST_SETTING = "SpinalCordSeg/Worklist"
EDITOR_EFFECTS = ["Paint", "Draw", "Erase", "Scissors", "Islands", "Smoothing", "Logical operators"]
POLL_INTERVAL_MS = 200


#
# SpinalCordSeg
#


class SpinalCordSeg(ScriptedLoadableModule):
    """Module description (Slicer's scripted module template)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Spinal Cord Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SpinalCordSeg developers"]
        self.parent.helpText = """
Segment the spinal cord and its lesions with nnU-Net v2 models (the Spinal Cord Toolbox's models, the embedded
demo model or any nnU-Net v2 results folder), adjust one threshold per structure on the probability maps,
correct the segmentation with the segment editor and save it, with its provenance, as a BIDS derivative.
"""
        self.parent.acknowledgementText = """
Models: the Spinal Cord Toolbox (NeuroPoly, Polytechnique Montreal) and nnU-Net (MIC-DKFZ). Installation logic
follows the SlicerNNUnet and PyTorch extensions.
"""


#
# SpinalCordSegWidget
#


class SpinalCordSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wiring only; state and decisions live in SpinalCordSegLib."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SpinalCordSegLogic] = None
        self._parameterNode = None
        self._updatingGUI = False
        self._run: Optional[ApplyRun] = None
        self._runWorkDir: Optional[str] = None
        self._runVolume = None
        self._devicesLoaded = False
        self._models: Optional[ModelSelectorState] = None
        self._structureRows: Dict[str, dict] = {}
        self._mapButtons = None
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)

    # -- set-up -----------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpinalCordSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpinalCordSegLogic()

        self.ui.outputFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.outputFolderPathLineEdit.currentPath = qt.QSettings().value(OUTPUT_FOLDER_SETTING, "")
        self.ui.raterLineEdit.text = qt.QSettings().value(RATER_SETTING, "")
        self.ui.worklistPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.worklistPathLineEdit.nameFilters = ["Worklist (*.csv)"]
        self.ui.worklistPathLineEdit.currentPath = qt.QSettings().value(WORKLIST_SETTING, "")
        self._mapButtons = qt.QButtonGroup(self.ui.thresholdsFrame)
        editor = self.ui.segmentEditorWidget
        editor.setEffectNameOrder(EDITOR_EFFECTS)
        editor.unorderedEffectsVisible = False
        editor.setMaximumNumberOfUndoStates(20)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)
        for widget, signal in [
            (self.ui.deviceComboBox, "currentIndexChanged(int)"),
            (self.ui.ttaCheckBox, "toggled(bool)"),
            (self.ui.tileStepSizeSlider, "valueChanged(double)"),
            (self.ui.foldsLineEdit, "editingFinished()"),
            (self.ui.cropCheckBox, "toggled(bool)"),
            (self.ui.cropMarginSpinBox, "valueChanged(double)"),
            (self.ui.saveSoftMapsCheckBox, "toggled(bool)"),
        ]:
            widget.connect(signal, self.updateParameterNodeFromGUI)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.keepLargestCordCheckBox.connect("toggled(bool)", self.onOptionsChanged)
        self.ui.restrictLesionsCheckBox.connect("toggled(bool)", self.onOptionsChanged)
        self.ui.overlayOpacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.outputFolderPathLineEdit.connect("currentPathChanged(QString)", self.onOutputFolderChanged)
        self.ui.saveButton.connect("clicked(bool)", self.onSaveButton)
        self.ui.worklistPathLineEdit.connect("currentPathChanged(QString)", self.onWorklistChanged)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)

        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._pollTimer.stop()
        self.removeObservers()
        if self.logic:
            self.logic.close()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()

    def onSceneStartClose(self, caller, event) -> None:
        self._endRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(segment_editor_node(slicer.mrmlScene))
        self.connectEditor()
        params = self.logic.results.params
        if params.input_volume is None:
            params.input_volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def connectEditor(self) -> None:
        """Point the segment editor at the results (after Apply, or a scene reopened with results)."""
        results = self.logic.results
        if results.has_results:
            self.ui.segmentEditorWidget.setSegmentationNode(results.params.segmentation)
            self.ui.segmentEditorWidget.setSourceVolumeNode(results.params.result_volume)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.refreshModels()
            self.rebuildStructureRows()
            self.updateGUIFromParameterNode()

    # -- parameter node <-> GUI ----------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            results = self.logic.results
            params = results.params
            self.ui.inputVolumeSelector.setCurrentNode(params.input_volume)
            self._selectModel(params.get("Model"))
            self._selectDevice(params.get("Device", "auto"))
            self.ui.ttaCheckBox.checked = params.get("UseTTA", False)
            self.ui.tileStepSizeSlider.value = params.get("TileStepSize", 0.5)
            self.ui.foldsLineEdit.text = params.get("Folds", "")
            self.ui.cropCheckBox.checked = params.get("Crop", True)
            self.ui.cropMarginSpinBox.value = params.get("CropMargin", 20.0)
            self.ui.saveSoftMapsCheckBox.checked = params.get("SaveSoftMaps", False)
            overlay = params.get("Overlay", {})
            self.ui.overlayOpacitySlider.value = overlay.get("opacity", 0.5)
            state = results.state
            if state is not None and set(state.structures) != set(self._structureRows):
                self.rebuildStructureRows()
            if state is not None:
                self.ui.keepLargestCordCheckBox.checked = state.keep_largest_cord
                self.ui.restrictLesionsCheckBox.checked = state.restrict_lesions_to_cord
                volumes = results.volumes_mm3()
                for structure, row in self._structureRows.items():
                    row["slider"].value = state.thresholds[structure]
                    edited = " (edited)" if structure in results.tracker.edited else ""
                    row["volume"].text = format_volume(volumes.get(structure, 0.0)) + edited
                    row["map"].checked = overlay.get("structure") == structure
            running = self._run is not None
            hasResults = results.has_results
            self.ui.applyButton.enabled = params.input_volume is not None and not running
            self.ui.nextCaseButton.enabled = bool(self.ui.worklistPathLineEdit.currentPath) and not running
            self.ui.cancelButton.enabled = running
            self.ui.resultsCollapsibleButton.enabled = hasResults
            self.ui.correctionCollapsibleButton.enabled = hasResults
            self.ui.saveButton.enabled = hasResults and not running
            self.ui.keepLargestCordCheckBox.enabled = hasResults and state.cord is not None
            self.ui.restrictLesionsCheckBox.enabled = hasResults and state.cord is not None and bool(state.lesions)
            self.updateOutputPlan()
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *unused) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        params = self.logic.results.params
        wasModifying = self._parameterNode.StartModify()
        params.input_volume = self.ui.inputVolumeSelector.currentNode()
        if self._devicesLoaded:  # until then the scene's choice stands
            params.set("Device", self.ui.deviceComboBox.currentData)
        params.set("UseTTA", bool(self.ui.ttaCheckBox.checked))
        params.set("TileStepSize", float(self.ui.tileStepSizeSlider.value))
        params.set("Folds", self.ui.foldsLineEdit.text.strip())
        params.set("Crop", bool(self.ui.cropCheckBox.checked))
        params.set("CropMargin", float(self.ui.cropMarginSpinBox.value))
        params.set("SaveSoftMaps", bool(self.ui.saveSoftMapsCheckBox.checked))
        self._parameterNode.EndModify(wasModifying)

    # -- models and devices -----------------------------------------------------------

    def refreshModels(self) -> None:
        catalogue = load_catalogue()
        installed = []
        try:
            from SpinalCordSegLib.model_store import ModelStore

            installed = ModelStore(catalogue=catalogue).installed()
        except ImportError as error:  # before the first-run set-up the model store cannot load
            logging.info("SpinalCordSeg: installed models are listed after the set-up (%s)", error)
        self._models = ModelSelectorState(catalogue_model_entries(catalogue, installed),
                                          self.logic.results.params.get("CustomFolders", []))
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for index, item in enumerate(self._models.items()):
            combo.addItem(item.label, item.key)
            combo.setItemData(index, item.tooltip, qt.Qt.ToolTipRole)
            if not item.enabled:
                combo.setItemData(index, 0, qt.Qt.UserRole - 1)  # Qt's way of greying out one item
        combo.blockSignals(False)
        params = self.logic.results.params
        if params.get("Model") is None:
            params.set("Model", self._models.default_key())
        self._selectModel(params.get("Model"))

    def _selectModel(self, key: Optional[str]) -> None:
        index = self.ui.modelComboBox.findData(key) if key else -1
        if index >= 0:
            self.ui.modelComboBox.setCurrentIndex(index)
        entry = next((e for e in (self._models.entries if self._models else []) if e.id == key), None)
        self.ui.modelInfoLabel.text = "" if entry is None or entry.installed else \
            "Not installed yet: it is downloaded and installed when you press Apply."

    def onModelActivated(self, index: int) -> None:
        key = self.ui.modelComboBox.itemData(index)
        params = self.logic.results.params
        if ModelSelectorState.is_custom_choice(key):
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "nnU-Net v2 results folder")
            if not folder:
                self._selectModel(params.get("Model"))
                return
            key = self._models.add_custom_folder(folder)
            params.set("CustomFolders", self._models.custom_folders)
            self.refreshModels()
        params.set("Model", key)

    def onAdvancedCollapsed(self, collapsed: bool) -> None:
        if not collapsed and not self._devicesLoaded:
            self.loadDevices()

    def loadDevices(self) -> None:
        """Fill the device list (imports PyTorch, so only when first needed)."""
        reasons = None
        if importlib.util.find_spec("torch") is not None:
            with slicer.util.WaitCursor():
                from SpinalCordSegLib.engine import available_devices

                reasons = available_devices()
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        for index, choice in enumerate(device_choices(reasons)):
            combo.addItem(choice.label, choice.name)
            if not choice.enabled:
                combo.setItemData(index, 0, qt.Qt.UserRole - 1)
                combo.setItemData(index, choice.reason, qt.Qt.ToolTipRole)
        combo.blockSignals(False)
        self._devicesLoaded = True
        self._selectDevice(self.logic.results.params.get("Device", "auto"))

    def _selectDevice(self, name: str) -> None:
        index = self.ui.deviceComboBox.findData(name)
        if index >= 0:
            self.ui.deviceComboBox.setCurrentIndex(index)

    # -- first-run set-up ------------------------------------------------------------------

    def updateDependencyStatus(self) -> None:
        missing = missing_packages()
        self.ui.dependencyLabel.visible = self.ui.installButton.visible = bool(missing)
        self.ui.dependencyLabel.text = (
            f"Missing in Slicer's Python: {', '.join(missing)}. They are installed once, on the first Apply."
            if missing else "")

    def onInstallButton(self) -> None:
        self.ensureDependencies()

    def ensureDependencies(self) -> bool:
        """Offer to install PyTorch and nnU-Net; True when everything is there."""
        steps = install_plan(missing_packages(), self._moduleFound("SlicerNNUNetLib"), self._moduleFound("PyTorchUtils"))
        if not steps:
            return True
        if not slicer.util.confirmOkCancelDisplay(install_question(steps), "SpinalCordSeg set-up"):
            return False
        needsRestart = False
        with slicer.util.tryWithErrorDisplay("Installing the dependencies failed; see the Python console.",
                                             waitCursor=True):
            for step in steps:
                self.ui.statusLabel.text = f"Installing {step.description}..."
                slicer.app.processEvents()
                needsRestart |= self.logic.installStep(step)
        self.ui.statusLabel.text = ""
        importlib.invalidate_caches()  # let find_spec see the packages pip just installed
        self.updateDependencyStatus()
        if needsRestart:
            if slicer.util.confirmYesNoDisplay("Slicer must restart to finish the set-up. Restart now?"):
                slicer.util.restart()
            return False
        remaining = missing_packages()
        if remaining:
            slicer.util.errorDisplay(f"Still missing after the install: {', '.join(remaining)}. "
                                     "See the Python console for pip's messages.")
        return not remaining

    @staticmethod
    def _moduleFound(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    # -- Apply ---------------------------------------------------------------------------------

    def _confirm(self, message: str) -> bool:
        return slicer.util.confirmYesNoDisplay(message, "SpinalCordSeg")

    def onApplyButton(self) -> None:
        if self._run is not None or not self.ensureDependencies():
            return
        results = self.logic.results
        params = results.params
        volume = params.input_volume
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            if volume is None:
                raise SpinalCordSegError("choose an input volume first")
            sameCase = results.has_results and results.params.result_volume is volume
            if sameCase and results.tracker.edited and \
                    not self._confirm("Replace the current results? Your manual edits will be lost."):
                return
            options = {
                "device": params.get("Device", "auto"),
                "use_mirroring": params.get("UseTTA", False),
                "crop": params.get("Crop", True),
                "tile_step_size": params.get("TileStepSize", 0.5),
                "folds": parse_folds(params.get("Folds", "")),
                "crop_margin_mm": params.get("CropMargin", 20.0),
            }
            model = params.get("Model")
            if not model:
                raise SpinalCordSegError("choose a model first")
            main = self.logic.resolveModel(model, self._confirm)
            hasCord = sameCase and results.state.cord is not None
            jobs, warning = plan_jobs(model, params.get("Crop", True), main.crop_with, hasCord)
            if warning:
                self.ui.statusLabel.text = warning
            models = [main if job.model == model else self.logic.resolveModel(job.model, self._confirm) for job in jobs]
            self._run, self._runWorkDir = self.logic.startRun(volume, jobs, models, options, hasCord)
            self._runVolume = volume
            self.ui.progressBar.value = 0
            self._pollTimer.start()
            self.updateGUIFromParameterNode()

    def onPollWorker(self) -> None:
        run = self._run
        if run is None:
            return
        try:
            update = run.poll()
        except CancelledError:
            self.finishRun("Cancelled.")
            return
        except SpinalCordSegError as error:
            logging.error("SpinalCordSeg: %s\n%s", error, run.detail)
            self.finishRun("Failed.")
            slicer.util.errorDisplay(f"Segmentation failed: {error}", detailedText=run.detail)
            return
        self.ui.progressBar.value = int(round(100 * update.fraction))
        self.ui.statusLabel.text = update.message
        if not update.finished:
            return
        try:
            with slicer.util.WaitCursor():
                self.logic.showResults(self._runVolume, update, self.ui.overlayOpacitySlider.value)
            self.connectEditor()
            self.finishRun(" ".join(["Done."] + update.warnings))
        except Exception as error:  # show any failure to the user; the detail goes to the log
            logging.error("SpinalCordSeg: cannot show the results\n%s", traceback.format_exc())
            self.finishRun("Failed.")
            slicer.util.errorDisplay(f"Cannot show the results: {error}", detailedText=traceback.format_exc())

    def _endRun(self) -> None:
        """Stop polling, kill a running job and remove its files."""
        self._pollTimer.stop()
        if self._run is not None:
            self._run.cancel()
        self._run = None
        if self._runWorkDir:
            shutil.rmtree(self._runWorkDir, ignore_errors=True)
        self._runWorkDir = None

    def finishRun(self, message: str) -> None:
        self._endRun()
        self.ui.statusLabel.text = message
        self.rebuildStructureRows()
        self.updateGUIFromParameterNode()

    def onCancelButton(self) -> None:
        if self._run is not None:
            self.finishRun("Cancelled.")

    # -- thresholds and display -----------------------------------------------------------------

    def rebuildStructureRows(self) -> None:
        """One row per structure: map selector, name, threshold slider, volume."""
        layout = self.ui.thresholdsFrame.layout()
        for row in self._structureRows.values():
            self._mapButtons.removeButton(row["map"])
            for widget in row.values():
                layout.removeWidget(widget)
                widget.deleteLater()
        self._structureRows = {}
        state = self.logic.results.state if self._parameterNode is not None else None
        if state is None:
            return
        for index, structure in enumerate(state.structures):
            name, _, _ = segment_look(structure, index)
            mapButton = qt.QRadioButton(name)
            mapButton.toolTip = f"Show the {name.lower()} probability map over the scan"
            self._mapButtons.addButton(mapButton)
            slider = ctk.ctkSliderWidget()
            slider.minimum, slider.maximum = MIN_THRESHOLD, MAX_THRESHOLD
            slider.singleStep, slider.decimals = 0.01, 2
            slider.value = state.thresholds[structure]
            slider.toolTip = f"{name}: voxels with probability >= this value"
            volumeLabel = qt.QLabel()
            layout.addWidget(mapButton, index, 0)
            layout.addWidget(slider, index, 1)
            layout.addWidget(volumeLabel, index, 2)
            slider.connect("valueChanged(double)", lambda value, s=structure: self.onThresholdChanged(s, value))
            mapButton.connect("toggled(bool)", lambda on, s=structure: on and self.onMapSelected(s))
            self._structureRows[structure] = {"map": mapButton, "slider": slider, "volume": volumeLabel}

    def onThresholdChanged(self, structure: str, value: float) -> None:
        if self._updatingGUI:
            return
        results = self.logic.results
        blocked = results.set_threshold(structure, value)
        if blocked:
            if self._confirm(overwrite_question(blocked)):
                results.set_threshold(structure, value, overwrite_edits=True)
            else:
                self.updateGUIFromParameterNode()  # the slider goes back to the threshold in use

    def onOptionsChanged(self, *unused) -> None:
        if self._updatingGUI:
            return
        results = self.logic.results
        largest, restrict = self.ui.keepLargestCordCheckBox.checked, self.ui.restrictLesionsCheckBox.checked
        with slicer.util.tryWithErrorDisplay("Cannot update the segmentation.", waitCursor=True):
            blocked = results.set_options(largest, restrict)
            if blocked and self._confirm(overwrite_question(blocked)):
                results.set_options(largest, restrict, overwrite_edits=True)
        self.updateGUIFromParameterNode()

    def onMapSelected(self, structure: str) -> None:
        if not self._updatingGUI:
            self.logic.results.show_map(structure, self.ui.overlayOpacitySlider.value)

    def onOpacityChanged(self, value: float) -> None:
        results = self.logic.results
        if self._updatingGUI or not results.has_results:
            return
        overlay = results.params.get("Overlay", {})
        results.show_map(overlay.get("structure", results.state.structures[-1]), value)

    # -- save ----------------------------------------------------------------------------------------

    def onOutputFolderChanged(self, path: str) -> None:
        qt.QSettings().setValue(OUTPUT_FOLDER_SETTING, path)
        self.updateOutputPlan()

    def updateOutputPlan(self) -> None:
        params = self.logic.results.params
        volume = params.result_volume or params.input_volume
        try:
            plan = plan_outputs(volume_file_path(volume) if volume else None,
                                self.ui.outputFolderPathLineEdit.currentPath or None)
            where = "BIDS derivatives: " if plan.bids else ""
            self.ui.outputPlanLabel.text = f"Saves to {where}{plan.folder}"
        except SpinalCordSegError as error:
            self.ui.outputPlanLabel.text = str(error)

    def onSaveButton(self) -> None:
        rater = self.ui.raterLineEdit.text.strip()
        qt.QSettings().setValue(RATER_SETTING, rater)
        results = self.logic.results
        with slicer.util.tryWithErrorDisplay("Failed to save the correction.", waitCursor=True):
            volume = results.params.result_volume
            plan = plan_outputs(volume_file_path(volume), self.ui.outputFolderPathLineEdit.currentPath or None)
            saved = results.save(plan, rater, results.params.get("SaveSoftMaps", False), results.params.get("Model"))
            changes = ", ".join(f"{s}: +{st.added}/-{st.removed} voxels, Dice {st.dice:.3f}"
                                for s, st in saved.stats.items())
            self.ui.statusLabel.text = f"Saved {len(saved.files)} files to {plan.folder} ({changes}); log: {saved.log}"
            worklist = self.ui.worklistPathLineEdit.currentPath
            if worklist:
                marked = self.logic.markCorrected(worklist, saved.log)
                if marked:
                    self.ui.worklistStatusLabel.text = f"{', '.join(marked)} marked corrected in {worklist}"

    # -- worklist -------------------------------------------------------------------------------------

    def onWorklistChanged(self, path: str) -> None:
        qt.QSettings().setValue(WORKLIST_SETTING, path)
        self.ui.worklistStatusLabel.text = ""
        self.updateGUIFromParameterNode()

    def onNextCaseButton(self) -> None:
        results = self.logic.results
        if results.has_results and results.tracker.edited and \
                not self._confirm("Open the next case? Unsaved edits of the current case stay in the scene only."):
            return
        with slicer.util.tryWithErrorDisplay("Failed to open the next case.", waitCursor=True):
            case = self.logic.openNextCase(self.ui.worklistPathLineEdit.currentPath, self.ui.raterLineEdit.text.strip(),
                                           self.ui.overlayOpacitySlider.value)
            if case is None:
                self.ui.worklistStatusLabel.text = "No case is waiting for correction."
                return
            self.connectEditor()
            self.rebuildStructureRows()
            self.updateGUIFromParameterNode()
            self.ui.worklistStatusLabel.text = f"Correcting {case.case} ({case.scan})"


#
# SpinalCordSegLogic
#


class SpinalCordSegLogic(ScriptedLoadableModuleLogic):
    """Runs models in the worker, shows results and saves corrections; usable without the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._client = None
        self._results: Optional[ResultScene] = None

    @property
    def results(self) -> ResultScene:
        """The results of the scene's parameter node (recreated after the scene closes)."""
        node = self.getParameterNode()
        if self._results is None or self._results.params.node is not node:
            if self._results is not None:
                self._results.close()
            self._results = ResultScene(node)
        return self._results

    def workerClient(self):
        """The warm worker process (PythonSlicer running SpinalCordSegLib.worker)."""
        if self._client is None:
            from SpinalCordSegLib.worker import WorkerClient

            moduleDir = os.path.dirname(os.path.abspath(__file__))
            pythonPath = os.pathsep.join([moduleDir] + [p for p in [os.environ.get("PYTHONPATH")] if p])
            self._client = WorkerClient(python_executable=shutil.which("PythonSlicer") or sys.executable,
                                        env={"PYTHONPATH": pythonPath})
        return self._client

    @staticmethod
    def resolveModel(spec: str, confirm=None):
        """A trusted model folder for a catalogue id, an installed id or a folder (may download)."""
        from SpinalCordSegLib.model_store import resolve_model

        return resolve_model(spec, confirm=confirm)

    def startRun(self, volumeNode, jobs, models, options: dict, cropWithSegment: bool):
        """Write the scan for the worker and start the jobs; return (run, its work folder)."""
        workDir = tempfile.mkdtemp(prefix="SpinalCordSeg-", dir=slicer.app.temporaryPath)
        scan = write_image_atomic(image_from_volume(volumeNode), Path(workDir) / f"{scan_source_name(volumeNode)}.nii.gz")
        cropMask = None
        if cropWithSegment:
            results = self.results
            mask = segment_mask_array(results.params.segmentation, results.state.cord, volumeNode)
            cropMask = write_image_atomic(mask_image(mask, volumeNode), Path(workDir) / "cord_mask.nii.gz")
        run = ApplyRun(self.workerClient(), scan, jobs, models, options, workDir, segment_crop_mask=cropMask)
        run.start()
        return run, workDir

    def showResults(self, volumeNode, update, opacity: float = 0.5):
        """Load the worker's soft maps into the scene and threshold them."""
        import SimpleITK as sitk

        softMaps = {s: sitk.ReadImage(path) for s, path in update.soft_maps.items()}
        return self.results.show(volumeNode, softMaps, update.provenance, opacity=opacity)

    def openNextCase(self, worklistPath: str, rater: str, opacity: float = 0.5):
        """Load the next case of a worklist (scan and saved predictions), marked in correction; None when done."""
        from SpinalCordSegLib.worklist import Worklist

        case = Worklist.load(worklistPath).open_next(rater)
        if case is None:
            return None
        volume = slicer.util.loadVolume(str(case.scan))
        self.results.params.input_volume = volume
        self.results.show_case(volume, case, opacity)
        return case

    @staticmethod
    def markCorrected(worklistPath: str, correctionLog) -> list:
        """Mark the cases of the correction log corrected in the worklist; return those marked."""
        from SpinalCordSegLib.worklist import Worklist

        return Worklist.load(worklistPath).apply_correction_log(correctionLog)

    @staticmethod
    def installStep(step) -> bool:
        """Run one install step (panel_state.install_plan); True when Slicer must restart."""
        if step.method == "slicer_nnunet":
            from SlicerNNUNetLib import InstallLogic

            installer = InstallLogic(doAskConfirmation=False)
            installer.progressInfo.connect(logging.info)
            if not installer.setupPythonRequirements(step.requirement):
                raise SpinalCordSegError("SlicerNNUnet could not install nnU-Net; see the Python console")
            return bool(installer.needsRestart)
        if step.method == "pytorch_extension":
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise SpinalCordSegError("the PyTorch extension could not install PyTorch")
            return False
        slicer.util.pip_install(step.requirement)
        return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._results is not None:
            self._results.close()


#
# SpinalCordSegTest
#


class SpinalCordSegTest(ScriptedLoadableModuleTest):
    """The whole flow in a real Slicer: sample scan, demo model in the worker, thresholds, edit, save."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SpinalCordSeg_wholeFlow()

    def test_SpinalCordSeg_wholeFlow(self):
        import csv
        import time

        import numpy as np

        from SpinalCordSegLib.cli_segment import DEMO_MODEL
        from SpinalCordSegLib.panel_state import PlannedJob
        from SpinalCordSegLib.resources import sample_scan_path
        from SpinalCordSegLib.slicer_scene import set_segment_mask

        missing = missing_packages()
        if missing:
            self.skipTest(f"install {', '.join(missing)} first (Apply offers it)")
        self.delayDisplay("Loading the sample scan")
        volume = slicer.util.loadVolume(str(sample_scan_path()))
        logic = SpinalCordSegLogic()
        model = logic.resolveModel(DEMO_MODEL)  # embedded: pinned by its checksum, no download
        modelId = model.model_id
        outputDir = tempfile.mkdtemp(prefix="SpinalCordSegTest-")
        try:
            self.delayDisplay(f"Segmenting with {modelId} in the worker")
            run, workDir = logic.startRun(volume, [PlannedJob(DEMO_MODEL, "segment", None)], [model],
                                          {"device": "auto", "use_mirroring": False}, cropWithSegment=False)
            deadline = time.monotonic() + 600
            update = run.poll()
            while not update.finished:
                self.assertLess(time.monotonic(), deadline, "the worker did not finish in 10 minutes")
                slicer.app.processEvents()
                time.sleep(0.2)
                update = run.poll()
            state = logic.showResults(volume, update)
            shutil.rmtree(workDir, ignore_errors=True)
            results = logic.results
            self.assertEqual(state.structures, ["sc", "lesion"])

            self.delayDisplay("Moving the sliders")
            self.assertEqual(results.set_threshold("sc", 0.3), [])
            soft = slicer.util.arrayFromVolume(results.soft_map_node("sc"))
            segmentation = results.params.segmentation
            np.testing.assert_array_equal(segment_mask_array(segmentation, "sc", volume), soft >= np.float32(0.3))

            self.delayDisplay("Editing the cord and saving")
            automatic = segment_mask_array(segmentation, "sc", volume)
            edited = automatic.copy()
            edited[0] = ~edited[0]  # flip the first slice: voxels added and removed
            set_segment_mask(segmentation, "sc", edited, volume)
            self.assertEqual(results.set_threshold("sc", 0.6), ["sc"])  # sliders no longer overwrite edits
            plan = plan_outputs(volume_file_path(volume), outputDir)
            saved = results.save(plan, "Self-test", save_soft_maps=True, model=modelId)
            sidecar = read_sidecar(saved.files["sc_seg"])
            self.assertEqual([e["Name"] for e in sidecar["GeneratedBy"]], ["SpinalCordSeg", "Manual"])
            with open(saved.log, newline="") as stream:
                rows = {row["structure"]: row for row in csv.DictReader(stream)}
            self.assertEqual(sorted(rows), ["lesion", "sc"])
            self.assertEqual(int(rows["sc"]["voxels_added"]), int(np.count_nonzero(edited & ~automatic)))
            self.assertEqual(int(rows["sc"]["voxels_removed"]), int(np.count_nonzero(automatic & ~edited)))
            self.assertEqual(rows["lesion"]["dice"], "1.000000")
            self.delayDisplay("Test passed")
        finally:
            logic.close()
            shutil.rmtree(outputDir, ignore_errors=True)
