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

from LesionQCLib.review_state import ReviewState
from LesionQCLib.session import SessionView
from LesionQCLib.slicer_scene import load_case, remove_case, show_in_slice_views, show_item

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
        self.logic.caseNodes = None  # the scene removes the case's nodes itself
        self.logic.closeSession()
        self.ui.ratingCollapsibleButton.enabled = False
        self.ui.sessionStatusLabel.text = "Scene closed: open the session again to go on."

    # ------------------------------------------------------------------ session

    def onOpenSession(self):
        folder = self.ui.sessionPathLineEdit.currentPath
        rater = self.ui.raterLineEdit.text.strip()
        with slicer.util.tryWithErrorDisplay("Cannot open the session.", waitCursor=True):
            state = self.logic.openSession(folder, rater)
            settings = qt.QSettings()
            settings.setValue(SETTINGS_PREFIX + "sessionFolder", folder)
            settings.setValue(SETTINGS_PREFIX + "rater", rater)
            self.buildScaleWidgets(state.scale)
            self.ui.sessionStatusLabel.text = (
                f"Session {state.session.session_id}: {len(state.session.cases)} cases,"
                f" {state.item_count} items. Ratings: {state.table_path}"
            )
            self.ui.ratingCollapsibleButton.enabled = True
            self.showCurrentItem()

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
            label = qt.QLabel(structure.label + ("" if structure.required else " (optional)"))
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
            if flag.scope == "case":
                checkBox.toolTip = "Applies to every item of this case."
            checkBox.connect("toggled(bool)", functools.partial(self.onFlagToggled, flag.id))
            self.ui.flagsGroupBox.layout().addWidget(checkBox)
            self.flagCheckBoxes[flag.id] = checkBox
        self.ui.flagsGroupBox.visible = bool(scale.flags)
        self.ui.commentLabel.visible = scale.comment
        self.ui.commentLineEdit.visible = scale.comment

        for point in scale.points:
            if 0 <= point.value <= 9:
                shortcut = qt.QShortcut(qt.QKeySequence(str(point.value)), slicer.util.mainWindow())
                shortcut.connect("activated()", functools.partial(self.onScoreKey, point.value))
                self.shortcuts.append(shortcut)

    def removeShortcuts(self):
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    # ------------------------------------------------------------------ rating

    def onScoreClicked(self, structure, value):
        self.saveScore(value, structure)

    def onScoreKey(self, value):
        if self.logic.state is not None:
            self.saveScore(value, None)

    def saveScore(self, value, structure):
        self.onCommentEdited()  # keep a comment being typed: the update below shows the saved one
        with slicer.util.tryWithErrorDisplay("The score was not saved.", waitCursor=True):
            rating = self.logic.state.set_score(value, structure)
            self.ui.savedLabel.text = (
                f"Saved: {rating.structure} = {rating.score} (revision {rating.revision}, {rating.submitted})"
            )
        self.updateGUIFromState()

    def onFlagToggled(self, flagId, checked):
        with slicer.util.tryWithErrorDisplay("The flag was not saved.", waitCursor=True):
            if self.logic.state.set_flag(flagId, checked):
                self.ui.savedLabel.text = f"Saved: flag {flagId} {'set' if checked else 'cleared'}"
        self.updateGUIFromState()

    def onCommentEdited(self):
        if self.logic.state is None:
            return
        with slicer.util.tryWithErrorDisplay("The comment was not saved.", waitCursor=True):
            if self.logic.state.set_comment(self.ui.commentLineEdit.text):
                self.ui.savedLabel.text = "Saved: comment"

    def onPrevious(self):
        self.navigate(self.logic.state.go_previous)

    def onNext(self):
        self.navigate(self.logic.state.go_next)

    def onNextOpen(self):
        self.navigate(self.logic.state.go_to_next_open)

    def navigate(self, step):
        self.onCommentEdited()  # a comment being typed belongs to the item it was typed for
        if step():
            self.ui.savedLabel.text = ""
            self.showCurrentItem()

    def showCurrentItem(self):
        with slicer.util.tryWithErrorDisplay("Cannot load the case.", waitCursor=True):
            self.logic.showCurrentItem()
        self.updateGUIFromState()

    def updateGUIFromState(self):
        state = self.logic.state
        if state is None:
            return
        self.ui.caseLabel.text = f"Case {state.progress_text}"
        self.ui.itemLabel.text = state.item_text
        self.ui.progressBar.maximum = state.item_count
        self.ui.progressBar.value = state.done_count
        scores = state.scores()
        active = state.active_structure
        for structure, group in self.scoreGroups.items():
            group.exclusive = False  # the only way to show "no score" in an exclusive group
            for button in group.buttons():
                button.checked = group.id(button) == scores[structure]
            group.exclusive = True
            font = self.structureLabels[structure].font
            font.setBold(structure == active)
            self.structureLabels[structure].font = font
        for flagId, checkBox in self.flagCheckBoxes.items():
            wasBlocked = checkBox.blockSignals(True)
            checkBox.checked = flagId in state.flags
            checkBox.blockSignals(wasBlocked)
        self.ui.commentLineEdit.text = state.comment
        self.ui.previousButton.enabled = state.can_go_previous
        self.ui.nextButton.enabled = state.can_go_next
        self.ui.nextOpenButton.enabled = not state.is_complete
        if state.is_complete:
            self.ui.sessionStatusLabel.text = f"All {state.item_count} items are scored. Thank you!"


#
# LesionQCLogic
#


class LesionQCLogic(ScriptedLoadableModuleLogic):
    """Opens a session for a rater and keeps the current case loaded in the scene."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.state = None
        self.caseNodes = None

    def openSession(self, sessionFolder, rater):
        """Open ``sessionFolder`` (its rating view only) for ``rater``; return the ReviewState."""
        self.closeSession()
        self.state = ReviewState(SessionView.load(sessionFolder), rater)
        return self.state

    def showCurrentItem(self):
        """Load the current case if it is not loaded yet, and show only the current item."""
        case = self.state.case
        if self.caseNodes is None or self.caseNodes.case_id != case.case_id:
            self.removeCase()
            self.caseNodes = load_case(case, self.state.session.labels, slicer.mrmlScene)
            show_in_slice_views(slicer.mrmlScene, self.caseNodes)
            slicer.util.resetSliceViews()
        show_item(self.caseNodes, self.state.item.item_id)

    def removeCase(self):
        if self.caseNodes is not None:
            remove_case(slicer.mrmlScene, self.caseNodes)
            self.caseNodes = None

    def closeSession(self):
        self.removeCase()
        if self.state is not None:
            self.state.close()
            self.state = None


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

        logic = LesionQCLogic()
        state = logic.openSession(os.path.join(folder, "session"), "selftest")
        logic.showCurrentItem()
        self.assertEqual(len(logic.caseNodes.segmentations), 2)
        segmentations = logic.caseNodes.segmentations
        visible = [item for item, node in segmentations.items() if node.GetDisplayNode().GetVisibility()]
        self.assertEqual(visible, [state.item.item_id])
        while True:
            state.set_score(4)
            if not state.go_next():
                break
            logic.showCurrentItem()
        self.assertTrue(state.is_complete)
        logic.closeSession()
        logging.info("LesionQC self-test rated %d items", state.item_count)
        self.delayDisplay("Test passed")
