"""SpinalCordSeg: spinal cord and lesion segmentation with nnU-Net v2 in 3D Slicer, then correction.

A thin module (Slicer's scripted module template, SlicerNNUnet's split): the
widget wires ``Resources/UI/SpinalCordSeg.ui`` to
``SpinalCordSegLib.panel.segmentation_controller.SegmentationController``, which
holds every decision (Apply's jobs and options, enable rules, the set-up,
temporary folders, saving and the worklist) and is tested on a real MRML
scene without Slicer. Inference runs in a warm worker process
(``SpinalCordSegLib.inference.worker``) polled from a timer, so the GUI stays responsive.

Everything imported here at load must be in Slicer's own Python (numpy,
SimpleITK, vtk...): PyTorch, nnU-Net, pandas and the like are imported by
the Lib where they are used, after the first-run set-up installed them
(``Testing/Python/test_slicer_environment.py`` checks it).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

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

from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.panel.segmentation_controller import SegmentationController
from SpinalCordSegLib.panel.slicer_scene import register_terminology, segment_editor_node

RATER_SETTING = "SpinalCordSeg/Rater"
OUTPUT_FOLDER_SETTING = "SpinalCordSeg/OutputFolder"
WORKLIST_SETTING = "SpinalCordSeg/Worklist"
EDITOR_EFFECTS = ["Paint", "Draw", "Erase", "Scissors", "Islands", "Smoothing", "Logical operators"]
POLL_INTERVAL_MS = 200
#: Panel option -> (widget, its signal, its value property).
OPTION_WIDGETS = {
    "Device": ("deviceComboBox", "currentIndexChanged(int)", "currentData"),
    "UseTTA": ("ttaCheckBox", "toggled(bool)", "checked"),
    "TileStepSize": ("tileStepSizeSlider", "valueChanged(double)", "value"),
    "Folds": ("foldsLineEdit", "editingFinished()", "text"),
    "Crop": ("cropCheckBox", "toggled(bool)", "checked"),
    "CropMargin": ("cropMarginSpinBox", "valueChanged(double)", "value"),
    "SaveSoftMaps": ("saveSoftMapsCheckBox", "toggled(bool)", "checked"),
}


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
    """The panel: each handler forwards to the controller and shows what it returns."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUI = False
        self._structureRows = {}
        self._mapButtons = None
        self._pollTimer = None  # made in setup(): Qt objects belong to the panel, not to the class
        self.ui = None

    @property
    def controller(self) -> SegmentationController:
        return self.logic.controller

    # -- set-up -----------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpinalCordSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpinalCordSegLogic()
        register_terminology(slicer.modules.terminologies.logic())
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)

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
        # Before a threshold overwrites manual edits, their state is saved so that Undo brings them back.
        self.controller.save_undo_state = editor.saveStateForUndo

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # A scene file loaded into the open scene is copied into the module's parameter node (as
        # Slicer's own SegmentEditor.py, the panel rebuilds from it on EndImportEvent).
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)
        for widgetName, signal, _ in OPTION_WIDGETS.values():
            getattr(self.ui, widgetName).connect(signal, self.updateParameterNodeFromGUI)
        self.ui.installButton.connect("clicked(bool)", self.ensureDependencies)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.locateButton.connect("clicked(bool)", self.onLocateButton)  # issue 30: crop box
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.keepLargestCordCheckBox.connect("toggled(bool)", self.onMaskOptionsChanged)
        self.ui.restrictLesionsCheckBox.connect("toggled(bool)", self.onMaskOptionsChanged)
        self.ui.overlayOpacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.outputFolderPathLineEdit.connect("currentPathChanged(QString)", self.onOutputFolderChanged)
        self.ui.saveButton.connect("clicked(bool)", self.onSaveButton)
        self.ui.worklistPathLineEdit.connect("currentPathChanged(QString)", self.onWorklistChanged)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)
        self.setupLevels()

        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called on Reload and at exit; setup() may have failed half-way, so each part checks it exists."""
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()
        if self.ui is not None and hasattr(self.ui, "segmentEditorWidget"):
            # The hidden editor's shortcuts (1-0, Space, Esc) would otherwise stay installed application-wide.
            editor = self.ui.segmentEditorWidget
            editor.setActiveEffect(None)
            editor.uninstallKeyboardShortcuts()
            editor.removeViewObservations()
        if self.logic:
            self.logic.close()

    def onReload(self) -> None:
        """Developer mode's Reload: the Lib's modules are imported afresh too (else Lib changes need a restart)."""
        for name in [n for n in sys.modules if n == "SpinalCordSegLib" or n.startswith("SpinalCordSegLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()

    def onSceneStartClose(self, caller, event) -> None:
        self._pollTimer.stop()
        self.controller.scene_closing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        self.controller.scene_imported()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(segment_editor_node(slicer.mrmlScene))
        self.connectEditor()
        self.controller.scene_opened(slicer.mrmlScene)

    def connectEditor(self) -> None:
        """Point the segment editor at the results (None before any result)."""
        self.ui.segmentEditorWidget.setSegmentationNode(self.controller.params.segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(self.controller.params.result_volume)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.refreshModels()
            self.updateGUIFromParameterNode()

    # -- parameter node <-> GUI ----------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            panel = self.controller.panel(self.ui.worklistPathLineEdit.currentPath,
                                          self.ui.outputFolderPathLineEdit.currentPath)
            self.ui.inputVolumeSelector.setCurrentNode(panel.input_volume)
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(panel.model))
            self.ui.modelInfoLabel.text = panel.model_info
            self.ui.deviceComboBox.setCurrentIndex(self.ui.deviceComboBox.findData(panel.device))
            for key, (widgetName, _, valueProperty) in OPTION_WIDGETS.items():
                if valueProperty != "currentData":
                    setattr(getattr(self.ui, widgetName), valueProperty, panel.options[key])
            self.ui.overlayOpacitySlider.value = panel.opacity
            if [row.structure for row in panel.rows] != list(self._structureRows):
                self.rebuildStructureRows(panel.rows)
            for row in panel.rows:
                widgets = self._structureRows[row.structure]
                widgets["slider"].value = row.threshold
                widgets["volume"].text = row.volume
                widgets["map"].checked = row.map_shown
            self.ui.keepLargestCordCheckBox.checked = panel.keep_largest_cord
            self.ui.restrictLesionsCheckBox.checked = panel.restrict_lesions
            controls = panel.controls
            self.ui.applyButton.enabled = controls.apply
            self.ui.locateButton.enabled = controls.locate
            self.ui.nextCaseButton.enabled = controls.next_case
            self.ui.cancelButton.enabled = controls.cancel
            self.ui.resultsCollapsibleButton.enabled = controls.results
            self.ui.correctionCollapsibleButton.enabled = controls.correction
            self.ui.saveButton.enabled = controls.save
            self.ui.keepLargestCordCheckBox.enabled = controls.keep_largest_cord
            self.ui.restrictLesionsCheckBox.enabled = controls.restrict_lesions
            self.ui.outputPlanLabel.text = panel.output_plan
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *unused) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self.controller.set_options({key: getattr(getattr(self.ui, name), prop)
                                     for key, (name, _, prop) in OPTION_WIDGETS.items()})

    def onInputVolumeChanged(self, node) -> None:
        if self._parameterNode is not None and not self._updatingGUI:
            self.controller.params.input_volume = node

    # -- models and devices -----------------------------------------------------------

    def refreshModels(self) -> None:
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for index, item in enumerate(self.controller.model_items()):
            combo.addItem(item.label, item.key)
            combo.setItemData(index, item.tooltip, qt.Qt.ToolTipRole)
            combo.setItemData(index, None if item.enabled else 0, qt.Qt.UserRole - 1)  # Qt's way to grey out
        combo.blockSignals(False)

    def onModelActivated(self, index: int) -> None:
        key = self.ui.modelComboBox.itemData(index)
        if self.controller.wants_folder(key):
            key = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "nnU-Net v2 results folder")
        if self.controller.pick_model(key):
            self.refreshModels()
        self.updateGUIFromParameterNode()

    def onAdvancedCollapsed(self, collapsed: bool) -> None:
        if not collapsed and not self.controller.devices_loaded:
            with slicer.util.WaitCursor():
                choices = self.controller.device_choices()
            combo = self.ui.deviceComboBox
            combo.blockSignals(True)
            combo.clear()
            for index, choice in enumerate(choices):
                combo.addItem(choice.label, choice.name)
                combo.setItemData(index, None if choice.enabled else 0, qt.Qt.UserRole - 1)
                combo.setItemData(index, choice.reason, qt.Qt.ToolTipRole)
            combo.blockSignals(False)
            self.updateGUIFromParameterNode()

    # -- first-run set-up ------------------------------------------------------------------

    def updateDependencyStatus(self) -> None:
        self.ui.dependencyLabel.text = self.controller.dependency_status()
        self.ui.dependencyLabel.visible = self.ui.installButton.visible = bool(self.ui.dependencyLabel.text)

    def ensureDependencies(self, *unused) -> bool:
        """Offer to install what Slicer's Python lacks; True when everything is there."""
        ready = self.controller.ensure_dependencies(self._confirm, self.logic.installers(), self.showStatus,
                                                    slicer.util.restart, slicer.util.errorDisplay)
        self.updateDependencyStatus()
        return ready

    def showStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    def _confirm(self, message: str) -> bool:
        return slicer.util.confirmYesNoDisplay(message, "SpinalCordSeg")

    # -- Apply ---------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        self._startRun(self.controller.start_apply, "Failed to start the segmentation.")

    def onLocateButton(self) -> None:
        """Issue 30: "Locate only" shows the crop box as an ROI; the user may move it before Apply."""
        self._startRun(self.controller.start_locate, "Failed to locate the cord.")

    def _startRun(self, start, failure: str) -> None:
        """Start a background run (``start(confirm)`` returns the status line) and poll it."""
        if not self.ensureDependencies():
            return
        try:
            with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
                self.ui.statusLabel.text = start(self._confirm) or self.ui.statusLabel.text
                self.ui.progressBar.value = 0
                self._pollTimer.start()  # a tick without a run stops it again
        finally:  # tryWithErrorDisplay shows the error, then re-raises it
            self.updateGUIFromParameterNode()

    def onPollWorker(self) -> None:
        result = self.controller.poll(self.ui.overlayOpacitySlider.value)
        self.ui.progressBar.value = result.progress
        self.ui.statusLabel.text = result.message
        if result.finished:
            self.finishRun()
        if result.error:
            slicer.util.errorDisplay(result.error, detailedText=result.detail)

    def onCancelButton(self) -> None:
        self.ui.statusLabel.text = self.controller.cancel()
        self.finishRun()

    def finishRun(self) -> None:
        self._pollTimer.stop()
        self.connectEditor()
        self.updateGUIFromParameterNode()

    # -- thresholds and display -----------------------------------------------------------------

    def rebuildStructureRows(self, rows) -> None:
        """One row per structure: map selector, name, threshold slider, volume."""
        layout = self.ui.thresholdsFrame.layout()
        for widgets in self._structureRows.values():
            self._mapButtons.removeButton(widgets["map"])
            for widget in widgets.values():
                layout.removeWidget(widget)
                widget.deleteLater()
        self._structureRows = {}
        for index, row in enumerate(rows):
            mapButton = qt.QRadioButton(row.name)
            mapButton.toolTip = f"Show the {row.name.lower()} probability map over the scan"
            self._mapButtons.addButton(mapButton)
            slider = ctk.ctkSliderWidget()
            slider.minimum, slider.maximum = SegmentationController.SLIDER_RANGE
            slider.singleStep, slider.decimals = 0.01, 2
            slider.toolTip = f"{row.name}: voxels with probability >= this value"
            volumeLabel = qt.QLabel()
            layout.addWidget(mapButton, index, 0)
            layout.addWidget(slider, index, 1)
            layout.addWidget(volumeLabel, index, 2)
            # Without tracking, valueChanged fires on release; valueIsChanging during the drag.
            slider.tracking = False
            slider.connect("valueIsChanging(double)",
                           lambda value, s=row.structure: self.onThresholdChanged(s, value, False))
            slider.connect("valueChanged(double)", lambda value, s=row.structure: self.onThresholdChanged(s, value))
            mapButton.connect("toggled(bool)", lambda on, s=row.structure: self.onMapSelected(s, on))
            self._structureRows[row.structure] = {"map": mapButton, "slider": slider, "volume": volumeLabel}

    def onThresholdChanged(self, structure: str, value: float, settled: bool = True) -> None:
        if not self._updatingGUI and not self.controller.move_slider(structure, value, self._confirm, settled):
            self.updateGUIFromParameterNode()  # declined: the slider goes back to the threshold in use

    def onMaskOptionsChanged(self, *unused) -> None:
        if self._updatingGUI:
            return
        try:
            with slicer.util.tryWithErrorDisplay("Cannot update the segmentation.", waitCursor=True):
                self.controller.set_mask_options(self.ui.keepLargestCordCheckBox.checked,
                                                 self.ui.restrictLesionsCheckBox.checked, self._confirm)
        finally:
            self.updateGUIFromParameterNode()  # declined or failed: the boxes show the options in use

    def onMapSelected(self, structure: str, on: bool) -> None:
        if on and not self._updatingGUI:
            self.controller.show_map(structure, self.ui.overlayOpacitySlider.value)

    def onOpacityChanged(self, value: float) -> None:
        if not self._updatingGUI:
            self.controller.set_opacity(value)

    # -- save and worklist -------------------------------------------------------------------------

    def onOutputFolderChanged(self, path: str) -> None:
        qt.QSettings().setValue(OUTPUT_FOLDER_SETTING, path)
        self.updateGUIFromParameterNode()

    def onSaveButton(self) -> None:
        rater = self.ui.raterLineEdit.text.strip()
        qt.QSettings().setValue(RATER_SETTING, rater)
        with slicer.util.tryWithErrorDisplay("Failed to save the correction.", waitCursor=True):
            result = self.controller.save(rater, self.ui.outputFolderPathLineEdit.currentPath,
                                          self.ui.worklistPathLineEdit.currentPath)
            self.ui.statusLabel.text = result.status
            self.ui.worklistStatusLabel.text = result.worklist_status or self.ui.worklistStatusLabel.text

    def onWorklistChanged(self, path: str) -> None:
        qt.QSettings().setValue(WORKLIST_SETTING, path)
        self.ui.worklistStatusLabel.text = ""
        self.updateGUIFromParameterNode()

    def onNextCaseButton(self) -> None:
        try:
            with slicer.util.tryWithErrorDisplay("Failed to open the next case.", waitCursor=True):
                line = self.controller.open_next_case(self.ui.worklistPathLineEdit.currentPath,
                                                      self.ui.raterLineEdit.text.strip(),
                                                      self.ui.overlayOpacitySlider.value, self._confirm)
                self.ui.worklistStatusLabel.text = line or self.ui.worklistStatusLabel.text
        finally:
            self.connectEditor()
            self.updateGUIFromParameterNode()

    # -- vertebral levels ---------------------------------------------------------------------------

    LEVEL_COLUMNS = ["Level", "Slices (n)", "CSA mm2", "Binary CSA mm2", "Lesions (volume)"]

    def setupLevels(self) -> None:
        self._discObserver = None
        table = self.ui.levelsTableWidget
        table.setColumnCount(len(self.LEVEL_COLUMNS))
        table.setHorizontalHeaderLabels(self.LEVEL_COLUMNS)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.ui.placeDiscsButton.connect("clicked(bool)", self.onPlaceDiscs)
        self.ui.spineButton.connect("clicked(bool)", self.onFindDiscs)
        self.ui.levelTableButton.connect("clicked(bool)", self.onLevelTable)
        self.ui.saveDiscsButton.connect("clicked(bool)", self.onSaveDiscs)

    @property
    def levels(self):
        """The section's controller (its Lib imports pandas: made on first use, after the set-up)."""
        from SpinalCordSegLib.panel.levels_controller import LevelsController

        return LevelsController(self.logic.getParameterNode)

    def onPlaceDiscs(self) -> None:
        node = self.levels.disc_node(create=True)
        if self._discObserver is None or self._discObserver[0] is not node:
            if self._discObserver is not None:
                self.removeObserver(*self._discObserver)
            self._discObserver = (node, node.PointPositionDefinedEvent, self.onDiscPlaced)
            self.addObserver(*self._discObserver)
        slicer.modules.markups.logic().SetActiveList(node)
        slicer.modules.markups.logic().StartPlaceMode(True)  # persistent: one click per disc
        self.ui.levelsStatusLabel.text = f"Click disc {self.levels.next_disc_number()} first (3 = C2-C3)"

    def onDiscPlaced(self, caller, event) -> None:
        self.ui.levelsStatusLabel.text = self.levels.point_added()

    def onFindDiscs(self) -> None:
        from SpinalCordSegLib.inference.spine import spine_available, INSTALL_HINT

        if not spine_available():
            slicer.util.infoDisplay(INSTALL_HINT, windowTitle="TotalSpineSeg")
            return
        with slicer.util.tryWithErrorDisplay("TotalSpineSeg failed.", waitCursor=True):
            volume = self.controller.params.input_volume
            self.ui.levelsStatusLabel.text = self.levels.discs_from_spine(volume)

    def onLevelTable(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to make the level table.", waitCursor=True):
            rows = self.levels.table_from_results(self.controller.results)
            table = self.ui.levelsTableWidget
            table.setRowCount(len(rows))
            for index, levelRow in enumerate(rows):
                for column, text in enumerate((levelRow.level, levelRow.slices, levelRow.csa_mm2,
                                               levelRow.csa_binary_mm2, levelRow.lesions)):
                    table.setItem(index, column, qt.QTableWidgetItem(text))
            table.resizeColumnsToContents()

    def onSaveDiscs(self) -> None:
        rater = self.ui.raterLineEdit.text.strip()
        with slicer.util.tryWithErrorDisplay("Failed to save the disc labels.", waitCursor=True):
            volume = self.controller.params.result_volume or self.controller.params.input_volume
            path = self.levels.save(volume, self.ui.outputFolderPathLineEdit.currentPath, rater, self._confirm)
            self.ui.levelsStatusLabel.text = f"Saved {path}" if path else "Kept the saved disc labels"


#
# SpinalCordSegLogic
#


class SpinalCordSegLogic(ScriptedLoadableModuleLogic):
    """The module's logic: a SegmentationController on Slicer's scene, and Slicer's installers."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._controller = None

    @property
    def controller(self) -> SegmentationController:
        """Made on first use: the scene and Slicer's temporary folder exist by then."""
        if self._controller is None:
            self._controller = SegmentationController(self.getParameterNode, slicer.util.loadVolume,
                                                      worker_client=self.workerClient,
                                                      temp_root=slicer.app.temporaryPath)
        return self._controller

    @staticmethod
    def workerClient():
        """The warm worker process: PythonSlicer running SpinalCordSegLib.inference.worker."""
        from SpinalCordSegLib.inference.worker import WorkerClient

        moduleDir = os.path.dirname(os.path.abspath(__file__))
        pythonPath = os.pathsep.join([moduleDir] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        # Its stderr goes to a log file (a GUI's stderr is read by nobody); errors show the log's end.
        return WorkerClient(python_executable=shutil.which("PythonSlicer") or sys.executable,
                            env={"PYTHONPATH": pythonPath},
                            log_path=os.path.join(slicer.app.temporaryPath, "SpinalCordSeg-worker.log"))

    @staticmethod
    def installers() -> dict:
        """Install method (install_plan.InstallStep.method) -> Slicer's installer; True: restart needed."""
        return {"slicer_nnunet": installWithSlicerNNUnet, "pytorch_extension": installWithPyTorchExtension,
                "pip": installWithPip}

    def close(self) -> None:
        if self._controller is not None:
            self._controller.close()


def installWithSlicerNNUnet(requirement: str) -> bool:
    """nnU-Net and a matching PyTorch through SlicerNNUnet's InstallLogic; True when Slicer must restart."""
    from SlicerNNUNetLib import InstallLogic

    installer = InstallLogic(doAskConfirmation=False)
    installer.progressInfo.connect(logging.info)
    if not installer.setupPythonRequirements(requirement):
        raise SpinalCordSegError("SlicerNNUnet could not install nnU-Net; see the Python console")
    return bool(installer.needsRestart)


def installWithPip(requirement: str) -> bool:
    """``slicer.util.pip_install``: the packages can be used at once."""
    slicer.util.pip_install(requirement)
    return False


def installWithPyTorchExtension(requirement: str) -> bool:
    """A PyTorch built for this computer's GPU, through the PyTorch extension."""
    import PyTorchUtils

    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
        raise SpinalCordSegError("the PyTorch extension could not install PyTorch")
    return False


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
        import tempfile
        import time

        import numpy as np
        import SimpleITK as sitk

        from SpinalCordSegLib.models.catalogue import DEMO_MODEL
        from SpinalCordSegLib.models.install_plan import missing_packages
        from SpinalCordSegLib.imaging.sidecar import Sidecar
        from SpinalCordSegLib.resources import sample_scan_path
        from SpinalCordSegLib.panel.slicer_scene import segment_mask_array, set_segment_mask

        missing = missing_packages()
        if missing:
            # Not a failure (skipTest shows as an error under Reload and Test): a fresh Slicer has no
            # PyTorch yet, and the module's Install button sets it up.
            message = f"SpinalCordSeg self-test not run: install {', '.join(missing)} first (Install button)"
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.delayDisplay("Loading the sample scan")
        controller = SpinalCordSegLogic().controller
        volume = slicer.util.loadVolume(str(sample_scan_path()))
        controller.params.input_volume = volume
        controller.params.set("Model", DEMO_MODEL)  # embedded: pinned by its checksum, no download
        controller.set_options({"UseTTA": False})
        outputDir = tempfile.mkdtemp(prefix="SpinalCordSegTest-")
        try:
            self.delayDisplay(f"Segmenting with {DEMO_MODEL} in the worker")
            controller.start_apply(confirm=lambda question: True)
            deadline = time.monotonic() + 600
            result = controller.poll()
            while not result.finished:
                self.assertLess(time.monotonic(), deadline, "the worker did not finish in 10 minutes")
                slicer.app.processEvents()
                time.sleep(0.2)
                result = controller.poll()
            self.assertIsNone(result.error, result.detail)
            self.assertEqual(controller.structure_names(), ["sc", "lesion"])

            self.delayDisplay("Moving the sliders")
            self.assertTrue(controller.move_slider("sc", 0.3, confirm=lambda question: False))
            results = controller.results
            segmentation = results.params.segmentation
            # The controller's masks (the default keeps the largest cord component), not a plain threshold.
            expected = sitk.GetArrayFromImage(results.automatic_masks()["sc"]) != 0
            np.testing.assert_array_equal(segment_mask_array(segmentation, "sc", volume), expected)

            self.delayDisplay("Editing the cord and saving")
            automatic = segment_mask_array(segmentation, "sc", volume)
            edited = automatic.copy()
            edited[0] = ~edited[0]  # flip the first slice: voxels added and removed
            set_segment_mask(segmentation, "sc", edited, volume)
            self.assertFalse(controller.move_slider("sc", 0.6, confirm=lambda question: False))  # edits kept
            saved = controller.save("Self-test", outputDir, "").correction
            sidecar = Sidecar.read(saved.files["sc_seg"]).to_json()
            self.assertEqual([e["Name"] for e in sidecar["GeneratedBy"]], ["SpinalCordSeg", "Manual"])
            with open(saved.log, newline="") as stream:
                rows = {row["structure"]: row for row in csv.DictReader(stream)}
            self.assertEqual(sorted(rows), ["lesion", "sc"])
            self.assertEqual(int(rows["sc"]["voxels_added"]), int(np.count_nonzero(edited & ~automatic)))
            self.assertEqual(int(rows["sc"]["voxels_removed"]), int(np.count_nonzero(automatic & ~edited)))
            self.assertEqual(rows["lesion"]["dice"], "1.000000")
            self.delayDisplay("Test passed")
        finally:
            controller.close()
            shutil.rmtree(outputDir, ignore_errors=True)
