"""Which segments the user edited by hand, so that sliders never overwrite edits without asking.

Example:
    >>> from SpinalCordSegLib.panel.edit_tracking import EditTracker
    >>> tracker = EditTracker(clock=lambda: 100.0)
    >>> tracker.start()
    >>> with tracker.automatic():
    ...     tracker.segment_modified("sc")  # the module's own update
    >>> tracker.segment_modified("lesion")  # the user's paint stroke
    >>> tracker.needs_confirmation(["sc", "lesion"])
    ['lesion']
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Set

class EditTracker:
    """Which segments the user has edited since the automatic update.

    The widget runs its own segment updates inside :meth:`automatic` and
    forwards every segment modification event to :meth:`segment_modified`;
    events outside :meth:`automatic` are the user's edits.

    Args:
        clock: returns the time in seconds (``time.time``; tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._automatic_depth = 0
        self.edited: Set[str] = set()
        self.started_at: Optional[float] = None

    @contextmanager
    def automatic(self) -> Iterator[None]:
        """Modifications made inside this block are not user edits."""
        self._automatic_depth += 1
        try:
            yield
        finally:
            self._automatic_depth -= 1

    def start(self, started_at: Optional[float] = None) -> None:
        """New automatic results are shown: no edits yet, the correction clock starts."""
        self.edited.clear()
        self.started_at = self._clock() if started_at is None else float(started_at)

    def segment_modified(self, structure: Optional[str], all_structures: Sequence[str] = ()) -> None:
        """A segment changed; None means unknown which (undo, whole-segmentation changes)."""
        if self._automatic_depth:
            return
        if structure is None:
            self.edited.update(all_structures)
        else:
            self.edited.add(structure)

    def needs_confirmation(self, structures: Iterable[str]) -> List[str]:
        """Structures among ``structures`` whose manual edits an automatic update would overwrite."""
        return [s for s in structures if s in self.edited]

    def discard_edits(self, structures: Iterable[str]) -> None:
        """The user accepted to overwrite these structures' edits."""
        self.edited.difference_update(structures)

    def seconds_spent(self) -> Optional[float]:
        """Seconds since the results were shown, or None before any result."""
        return None if self.started_at is None else max(0.0, self._clock() - self.started_at)


def overwrite_question(structures: Sequence[str]) -> str:
    """The question asked before a slider overwrites manual edits."""
    names = ", ".join(structures)
    return (f"You have edited {names} by hand. Update it from the threshold and lose these edits? "
            "(Undo in the segment editor brings them back.)")
