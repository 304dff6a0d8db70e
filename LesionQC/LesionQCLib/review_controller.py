"""The LesionQC panel's flow without Qt: open a session, show items, score, move, resume.

The widget forwards each user action to one method of
:class:`ReviewController` and shows the :class:`ReviewPanel` it returns; the
controller keeps the current case loaded in the MRML scene (through
``slicer_scene``) and every score saved at once (through ``review_state``).
The browser page of ``lesionqc serve`` (``web.py``) is a second view of the
same controller, built without a scene: the page draws the case itself.

Example:
    >>> from LesionQCLib.review_controller import ReviewController
    >>> controller = ReviewController(slicer.mrmlScene)          # doctest: +SKIP
    >>> scale = controller.open_session("qc-session", "rater1")  # doctest: +SKIP
    >>> panel = controller.score_key(4)                          # doctest: +SKIP
    >>> panel.saved                                              # doctest: +SKIP
    'Saved: overall = 4 (revision 1, 2026-12-01 10:00:00)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from .review_state import ReviewState
from .session import SessionView


def score_keys(scale) -> List[int]:
    """The scale's values that one number key can give (0 to 9), in order."""
    return [point.value for point in scale.points if 0 <= point.value <= 9]


def structure_label(structure) -> str:
    """The label of a scale structure's row of score buttons."""
    return structure.label + ("" if structure.required else " (optional)")


def flag_tooltip(flag) -> str:
    """The tooltip of a flag's check box."""
    return "Applies to every item of this case." if flag.scope == "case" else ""


@dataclass
class ReviewPanel:
    """What the panel shows after an action (the widget copies it into its widgets)."""

    session_status: str = ""
    saved: str = ""
    rating_enabled: bool = False
    case_label: str = ""
    item_label: str = ""
    item_count: int = 0
    done_count: int = 0
    scores: Dict[str, Optional[int]] = field(default_factory=dict)
    active_structure: Optional[str] = None
    flags: Tuple[str, ...] = ()
    comment: str = ""
    can_go_previous: bool = False
    can_go_next: bool = False
    can_go_next_open: bool = False


class ReviewController:
    """One rater's review in one MRML scene.

    Args:
        scene: the MRML scene the cases are loaded into; None where another view draws
            them (the browser page of ``lesionqc serve``).
        reset_views: called after a new case is loaded (Slicer: ``slicer.util.resetSliceViews``).
    """

    def __init__(self, scene=None, reset_views: Callable[[], None] = lambda: None) -> None:
        self.scene = scene
        self.reset_views = reset_views
        self.state: Optional[ReviewState] = None
        self.case_nodes = None  # slicer_scene.CaseNodes of the loaded case
        self._status = ""
        self._saved = ""

    # -- session ----------------------------------------------------------------

    def open_session(self, folder: Union[str, Path], rater: str):
        """Open ``folder`` (its rating view only) for ``rater`` at the first unscored item, show it; return the scale."""
        self.close()
        self.state = ReviewState(SessionView.load(folder), rater)
        state = self.state
        self._status = (f"Session {state.session.session_id}: {len(state.session.cases)} cases, "
                        f"{state.item_count} items. Ratings: {state.table_path}")
        self._saved = ""
        self.show_current_item()
        return state.scale

    def scene_closed(self) -> ReviewPanel:
        """The scene removed the case's nodes itself: forget them and close the session."""
        self.case_nodes = None
        self.close()
        self._status = "Scene closed: open the session again to go on."
        return self.panel()

    def close(self) -> None:
        """Remove the loaded case and close the rater table."""
        if self.case_nodes is not None:
            from .slicer_scene import remove_case  # imports slicer: only where a scene exists

            remove_case(self.scene, self.case_nodes)
            self.case_nodes = None
        if self.state is not None:
            self.state.close()
            self.state = None

    def show_current_item(self) -> None:
        """Load the current case if it is not loaded yet, and show only the current item."""
        if self.scene is None:
            return  # the browser page loads the case itself
        from .slicer_scene import load_case, remove_case, show_in_slice_views, show_item

        case = self.state.case
        if self.case_nodes is None or self.case_nodes.case_id != case.case_id:
            if self.case_nodes is not None:
                remove_case(self.scene, self.case_nodes)
                self.case_nodes = None
            self.case_nodes = load_case(case, self.state.session.labels, self.scene)
            show_in_slice_views(self.scene, self.case_nodes)
            self.reset_views()
        show_item(self.case_nodes, self.state.item.item_id)

    # -- rating -------------------------------------------------------------------

    def score(self, value: int, structure: Optional[str] = None, comment: Optional[str] = None) -> ReviewPanel:
        """Save a score (``structure`` None: the active one); a comment being typed is saved first."""
        if self.state is None:
            return self.panel()  # a number key pressed before any session is open
        if comment is not None:
            self.set_comment(comment)
        rating = self.state.set_score(value, structure)
        self._saved = f"Saved: {rating.structure} = {rating.score} (revision {rating.revision}, {rating.submitted})"
        return self.panel()

    def score_key(self, value: int, comment: Optional[str] = None) -> ReviewPanel:
        """A number key: score the active structure of the current item."""
        return self.score(value, None, comment)

    def set_flag(self, flag: str, checked: bool) -> ReviewPanel:
        if self.state is not None and self.state.set_flag(flag, checked):
            self._saved = f"Saved: flag {flag} {'set' if checked else 'cleared'}"
        return self.panel()

    def set_comment(self, text: str) -> ReviewPanel:
        if self.state is not None and self.state.set_comment(text):
            self._saved = "Saved: comment"
        return self.panel()

    def navigate(self, where: str, comment: Optional[str] = None) -> ReviewPanel:
        """Move to ``"previous"``, ``"next"`` or ``"next_open"``; a comment being typed stays with its item."""
        if self.state is None:
            return self.panel()
        if comment is not None:
            self.set_comment(comment)
        step = {"previous": self.state.go_previous, "next": self.state.go_next,
                "next_open": self.state.go_to_next_open}[where]
        if step():
            self._saved = ""
            self.show_current_item()
        return self.panel()

    # -- what the panel shows -------------------------------------------------------

    def panel(self) -> ReviewPanel:
        state = self.state
        if state is None:
            return ReviewPanel(session_status=self._status)
        status = f"All {state.item_count} items are scored. Thank you!" if state.is_complete else self._status
        return ReviewPanel(
            session_status=status, saved=self._saved, rating_enabled=True,
            case_label=f"Case {state.progress_text}", item_label=state.item_text,
            item_count=state.item_count, done_count=state.done_count, scores=state.scores(),
            active_structure=state.active_structure, flags=tuple(state.flags), comment=state.comment,
            can_go_previous=state.can_go_previous, can_go_next=state.can_go_next,
            can_go_next_open=not state.is_complete)
