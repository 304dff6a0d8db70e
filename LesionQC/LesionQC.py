"""LesionQC: blinded Likert review of segmentations in 3D Slicer.

A thin module: the panel's state and decisions live in
``LesionQCLib.review_state.ReviewState`` (plain Python, tested without Slicer),
the scene work in ``LesionQCLib.slicer_scene``; this file wires the ``.ui``
widgets to them.
"""

import functools
import logging
import os
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LesionQCLib.review_controller import ReviewController, flag_tooltip, score_keys, structure_label

SETTINGS_PREFIX = "LesionQC/"


#
# LesionQC
#


class LesionQC(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LesionQC"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SpinalCordSeg developers"]
        self.parent.helpText = """
Blinded Likert review of segmentations. Open a session folder made by
<code>lesionqc make-session</code>, enter your rater id, and score every item
(an anonymous segmentation of the case) by clicking a score or pressing its
number key. Every score is saved at once to <code>ratings/&lt;rater id&gt;.csv</code>
in the session folder; reopening the session resumes at the first item not yet scored.
Analyse the ratings with <code>lesionqc analyze</code>.
"""
        self.parent.acknowledgementText = """
The review protocol follows the field's published qualitative assessments of spinal cord
and lesion segmentation (randomly chosen cases, anonymised sources, 5-point Likert scale).
"""


#
# LesionQCWidget
#


class LesionQCWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The rating panel: session and rater, scores, flags, comment, navigation."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.scoresGrid = None  # holds the score buttons built from the session's scale
        self.scoreGroups = {}  # structure id -> qt.QButtonGroup
        self.structureLabels = {}  # structure id -> qt.QLabel
        self.flagCheckBoxes = {}  # flag id -> qt.QCheckBox
        self.shortcuts = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LesionQC.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LesionQCLogic()

        settings = qt.QSettings()
        self.ui.sessionPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "sessionFolder", "")
        self.ui.raterLineEdit.text = settings.value(SETTINGS_PREFIX + "rater", "")

        self.ui.openSessionButton.connect("clicked(bool)", self.onOpenSession)
        self.ui.previousButton.connect("clicked(bool)", self.onPrevious)
        self.ui.nextButton.connect("clicked(bool)", self.onNext)
        self.ui.nextOpenButton.connect("clicked(bool)", self.onNextOpen)
        self.ui.commentLineEdit.connect("editingFinished()", self.onCommentEdited)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

    def cleanup(self):
        self.removeObservers()
        self.removeShortcuts()
        if self.logic:
            self.logic.closeSession()

    def enter(self):
        for shortcut in self.shortcuts:
            shortcut.enabled = True

    def exit(self):
        # Number keys must not score items while the user works in another module.
        for shortcut in self.shortcuts:
            shortcut.enabled = False

    def onSceneStartClose(self, caller, event):
        self.showPanel(self.logic.controller.scene_closed())

    # ------------------------------------------------------------------ session

    def onOpenSession(self):
        folder = self.ui.sessionPathLineEdit.currentPath
        rater = self.ui.raterLineEdit.text.strip()
        with slicer.util.tryWithErrorDisplay("Cannot open the session.", waitCursor=True):
            self.buildScaleWidgets(self.logic.controller.open_session(folder, rater))
            settings = qt.QSettings()
            settings.setValue(SETTINGS_PREFIX + "sessionFolder", folder)
            settings.setValue(SETTINGS_PREFIX + "rater", rater)
            self.showPanel(self.logic.controller.panel())

    def buildScaleWidgets(self, scale):
        """One row of score buttons per structure, one check box per flag, one shortcut per key."""
        self.removeShortcuts()
        for widget in [self.scoresGrid] + list(self.flagCheckBoxes.values()):
            if widget is not None:
                widget.setParent(None)  # the widgets of a previous session's scale
        self.scoreGroups, self.structureLabels, self.flagCheckBoxes = {}, {}, {}

        self.scoresGrid = qt.QWidget()
        self.ui.scoresWidget.layout().addWidget(self.scoresGrid)
        grid = qt.QGridLayout(self.scoresGrid)
        for column, point in enumerate(scale.points, start=1):
            header = qt.QLabel(f"{point.value}\n{point.anchor}")
            header.alignment = qt.Qt.AlignCenter
            header.toolTip = point.description
            grid.addWidget(header, 0, column)
        for row, structure in enumerate(scale.structures, start=1):
            label = qt.QLabel(structure_label(structure))
            grid.addWidget(label, row, 0)
            self.structureLabels[structure.id] = label
            group = qt.QButtonGroup(self.scoresGrid)
            for column, point in enumerate(scale.points, start=1):
                button = qt.QRadioButton()
                button.toolTip = f"{point.value} {point.anchor}: {point.description}"
                button.connect("clicked()", functools.partial(self.onScoreClicked, structure.id, point.value))
                group.addButton(button, point.value)
                grid.addWidget(button, row, column, qt.Qt.AlignCenter)
            self.scoreGroups[structure.id] = group

        for flag in scale.flags:
            checkBox = qt.QCheckBox(flag.label)
            checkBox.toolTip = flag_tooltip(flag)
            checkBox.connect("toggled(bool)", functools.partial(self.onFlagToggled, flag.id))
            self.ui.flagsGroupBox.layout().addWidget(checkBox)
            self.flagCheckBoxes[flag.id] = checkBox
        self.ui.flagsGroupBox.visible = bool(scale.flags)
        self.ui.commentLabel.visible = self.ui.commentLineEdit.visible = scale.comment

        for value in score_keys(scale):
            shortcut = qt.QShortcut(qt.QKeySequence(str(value)), slicer.util.mainWindow())
            shortcut.connect("activated()", functools.partial(self.onScoreKey, value))
            self.shortcuts.append(shortcut)

    def removeShortcuts(self):
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    # ------------------------------------------------------------------ rating

    def onScoreClicked(self, structure, value):
        self.act("The score was not saved.", self.logic.controller.score, value, structure,
                 self.ui.commentLineEdit.text)

    def onScoreKey(self, value):
        self.act("The score was not saved.", self.logic.controller.score_key, value, self.ui.commentLineEdit.text)

    def onFlagToggled(self, flagId, checked):
        self.act("The flag was not saved.", self.logic.controller.set_flag, flagId, checked)

    def onCommentEdited(self):
        self.act("The comment was not saved.", self.logic.controller.set_comment, self.ui.commentLineEdit.text)

    def onPrevious(self):
        self.act("Cannot load the case.", self.logic.controller.navigate, "previous", self.ui.commentLineEdit.text)

    def onNext(self):
        self.act("Cannot load the case.", self.logic.controller.navigate, "next", self.ui.commentLineEdit.text)

    def onNextOpen(self):
        self.act("Cannot load the case.", self.logic.controller.navigate, "next_open", self.ui.commentLineEdit.text)

    def act(self, failure, action, *args):
        """Run one controller action; the panel shows where things stand even when it failed."""
        try:
            with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):  # shows the error, then re-raises
                action(*args)
        finally:
            self.showPanel(self.logic.controller.panel())

    def showPanel(self, panel):
        """Copy the controller's panel into the widgets (no decisions here)."""
        self.ui.sessionStatusLabel.text = panel.session_status
        self.ui.savedLabel.text = panel.saved
        self.ui.ratingCollapsibleButton.enabled = panel.rating_enabled
        self.ui.caseLabel.text = panel.case_label
        self.ui.itemLabel.text = panel.item_label
        self.ui.progressBar.maximum = panel.item_count
        self.ui.progressBar.value = panel.done_count
        for structure, group in self.scoreGroups.items():
            group.exclusive = False  # the only way to show "no score" in an exclusive group
            for button in group.buttons():
                button.checked = group.id(button) == panel.scores.get(structure)
            group.exclusive = True
            font = self.structureLabels[structure].font
            font.setBold(structure == panel.active_structure)
            self.structureLabels[structure].font = font
        for flagId, checkBox in self.flagCheckBoxes.items():
            wasBlocked = checkBox.blockSignals(True)
            checkBox.checked = flagId in panel.flags
            checkBox.blockSignals(wasBlocked)
        self.ui.commentLineEdit.text = panel.comment
        self.ui.previousButton.enabled = panel.can_go_previous
        self.ui.nextButton.enabled = panel.can_go_next
        self.ui.nextOpenButton.enabled = panel.can_go_next_open


#
# LesionQCLogic
#


class LesionQCLogic(ScriptedLoadableModuleLogic):
    """The module's logic: a ReviewController (LesionQCLib.review_controller) on Slicer's scene."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._controller = None

    @property
    def controller(self):
        """The review of the current scene (made on first use: the scene exists by then)."""
        if self._controller is None or self._controller.scene is not slicer.mrmlScene:
            self._controller = ReviewController(slicer.mrmlScene, slicer.util.resetSliceViews)
        return self._controller

    def closeSession(self):
        if self._controller is not None:
            self._controller.close()


#
# LesionQCTest
#


class LesionQCTest(ScriptedLoadableModuleTest):
    """Self-test in a running Slicer: build a small session, rate it, load its cases."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_RateSessionInSlicer()

    def test_RateSessionInSlicer(self):
        import numpy as np
        import SimpleITK as sitk

        from LesionQCLib.session import make_session

        self.delayDisplay("Building a two-source session")
        folder = tempfile.mkdtemp(prefix="LesionQCTest-")
        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 10, (20, 32, 32)).astype(np.float32))
        mask = np.zeros((20, 32, 32), np.uint8)
        mask[5:15, 12:20, 12:20] = 1
        sitk.WriteImage(image, os.path.join(folder, "image.nii.gz"))
        manual, model = sitk.GetImageFromArray(mask), sitk.GetImageFromArray(np.roll(mask, 2, axis=2))
        for segmentation in (manual, model):
            segmentation.CopyInformation(image)
        sitk.WriteImage(manual, os.path.join(folder, "manual.nii.gz"))
        sitk.WriteImage(model, os.path.join(folder, "model.nii.gz"))
        with open(os.path.join(folder, "manifest.csv"), "w") as stream:
            stream.write("case_id,image,seg:manual,seg:model\n")
            for index in range(3):
                stream.write(f"case{index},image.nii.gz,manual.nii.gz,model.nii.gz\n")
        make_session(os.path.join(folder, "manifest.csv"), os.path.join(folder, "session"), seed=1)

        controller = LesionQCLogic().controller
        controller.open_session(os.path.join(folder, "session"), "selftest")
        state = controller.state
        segmentations = controller.case_nodes.segmentations
        self.assertEqual(len(segmentations), 2)
        visible = [item for item, node in segmentations.items() if node.GetDisplayNode().GetVisibility()]
        self.assertEqual(visible, [state.item.item_id])
        while True:
            controller.score_key(4)
            if not controller.panel().can_go_next:
                break
            controller.navigate("next")
        self.assertTrue(state.is_complete)
        controller.close()
        logging.info("LesionQC self-test rated %d items", state.item_count)
        self.delayDisplay("Test passed")
