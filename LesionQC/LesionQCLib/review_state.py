"""State of the LesionQC rating panel, in plain Python.

:class:`ReviewState` is everything the panel shows and decides: the current
case and item, the progress ("12 / 40"), the scores, flags and comment of the
item, what is done and what comes next. Every change is written to the
rater's table before the call returns (see rater_table.py), so closing Slicer,
a crash or a power cut loses nothing that was given. Reopening the same
session with the same rater id resumes at the first item not done.

An item is done when every required structure of the scale has a score, or
when a flag that excludes it (image unusable) is set. The state reads the
session's rating view only (``session.json``), never its key.

Example:
    >>> from LesionQCLib.session import SessionView
    >>> from LesionQCLib.review_state import ReviewState
    >>> state = ReviewState(SessionView.load("qc-session"), "alice")   # doctest: +SKIP
    >>> state.progress_text, state.item_text                             # doctest: +SKIP
    ('1 / 40', 'Item A (1 of 2)')
    >>> state.set_score(4).revision                                      # doctest: +SKIP
    1
    >>> state.go_next()                                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import RaterTableError, ScoreError
from .rater_table import (
    Rating,
    RaterTableWriter,
    load_rater_table,
    rater_table_path,
    validate_rater_id,
)
from .session import CaseView, ItemView, SessionView

ItemKey = Tuple[str, str]  # case, item


def local_now() -> datetime:
    """The current time with the local UTC offset (what the table records)."""
    return datetime.now().astimezone()


class ReviewState:
    """One rater's pass through a session: position, scores and their storage.

    Args:
        session: the session's rating view.
        rater: the rater id; names the table ``SESSION/ratings/<rater>.csv``.
        clock: returns the current time (timestamps and seconds spent per item).
    """

    def __init__(self, session: SessionView, rater: str, clock: Callable[[], datetime] = local_now) -> None:
        self.session = session
        self.scale = session.scale
        self.rater = validate_rater_id(rater)
        self._clock = clock
        self._table = load_rater_table(rater_table_path(session, self.rater), session)
        if self._table.rater not in (None, self.rater):
            raise RaterTableError(f"{self._table.path}: holds the ratings of {self._table.rater!r}, not {self.rater!r}")
        self._writer: Optional[RaterTableWriter] = None
        self._latest = self._table.latest()
        # Flags and comment of an item: those of its most recently written row.
        self._annotations: Dict[ItemKey, Tuple[Tuple[str, ...], str]] = {}
        for rating in self._table.ratings:
            self._annotations[(rating.case, rating.item)] = (rating.flags, rating.comment)
        self._positions = [(c, i) for c, case in enumerate(session.cases) for i in range(len(case.items))]
        first_open = self.next_open_position(0)
        self._index = first_open if first_open is not None else len(self._positions) - 1
        self._shown_at = clock()

    # ------------------------------------------------------------------ where we are

    @property
    def table_path(self) -> Path:
        """The rater's table, ``SESSION/ratings/<rater>.csv``."""
        return self._table.path

    @property
    def case_index(self) -> int:
        return self._positions[self._index][0]

    @property
    def item_index(self) -> int:
        return self._positions[self._index][1]

    @property
    def case(self) -> CaseView:
        return self.session.cases[self.case_index]

    @property
    def item(self) -> ItemView:
        return self.case.items[self.item_index]

    @property
    def progress_text(self) -> str:
        """``"12 / 40"``: the current case's number and the number of cases."""
        return f"{self.case_index + 1} / {len(self.session.cases)}"

    @property
    def item_text(self) -> str:
        """``"Item B (2 of 3)"``."""
        return f"Item {self.item.item_id} ({self.item_index + 1} of {len(self.case.items)})"

    @property
    def item_count(self) -> int:
        return len(self._positions)

    @property
    def done_count(self) -> int:
        return sum(self.is_done(c, i) for c, i in self._item_keys())

    @property
    def is_complete(self) -> bool:
        return self.done_count == self.item_count

    def _item_keys(self) -> List[ItemKey]:
        return [(self.session.cases[c].case_id, self.session.cases[c].items[i].item_id) for c, i in self._positions]

    def is_done(self, case_id: str, item_id: str) -> bool:
        """Every required structure scored, or a flag excludes the item."""
        flags, _ = self._annotations.get((case_id, item_id), ((), ""))
        if any(self.scale.flag(flag).excludes for flag in flags):
            return True
        return all(self._score(case_id, item_id, s) is not None for s in self.scale.required_structure_ids)

    def next_open_position(self, start: int) -> Optional[int]:
        """Index of the first item not done at or after ``start`` (wrapping around), or None."""
        keys = self._item_keys()
        for offset in range(len(keys)):
            index = (start + offset) % len(keys)
            if not self.is_done(*keys[index]):
                return index
        return None

    # ------------------------------------------------------------------ moving

    @property
    def can_go_previous(self) -> bool:
        return self._index > 0

    @property
    def can_go_next(self) -> bool:
        return self._index < len(self._positions) - 1

    def go_next(self) -> bool:
        """Show the next item (the first item of the next case after a case's last); False at the end."""
        return self._go(self._index + 1) if self.can_go_next else False

    def go_previous(self) -> bool:
        return self._go(self._index - 1) if self.can_go_previous else False

    def go_to_next_open(self) -> bool:
        """Show the next item not done (after the current one, wrapping around); False when all are done."""
        index = self.next_open_position(self._index + 1)
        return self._go(index) if index is not None else False

    def go_to_case(self, case_index: int) -> bool:
        """Show the first item of case number ``case_index`` (0-based)."""
        for index, (case, _) in enumerate(self._positions):
            if case == case_index:
                return self._go(index)
        raise IndexError(f"no case number {case_index} (the session has {len(self.session.cases)})")

    def _go(self, index: int) -> bool:
        self._index = index
        self._shown_at = self._clock()  # time spent counts per visit
        return True

    # ------------------------------------------------------------------ the current item

    def _score(self, case_id: str, item_id: str, structure: str) -> Optional[int]:
        rating = self._latest.get((case_id, item_id, structure))
        return rating.score if rating is not None else None

    def scores(self) -> Dict[str, Optional[int]]:
        """Score of every structure of the current item (None where none is given)."""
        return {s: self._score(self.case.case_id, self.item.item_id, s) for s in self.scale.structure_ids}

    @property
    def active_structure(self) -> str:
        """The structure that keys 1-5 score: the first one without a score, else the first."""
        for structure, score in self.scores().items():
            if score is None:
                return structure
        return self.scale.structure_ids[0]

    @property
    def flags(self) -> Tuple[str, ...]:
        return self._annotations.get((self.case.case_id, self.item.item_id), ((), ""))[0]

    @property
    def comment(self) -> str:
        return self._annotations.get((self.case.case_id, self.item.item_id), ((), ""))[1]

    def set_score(self, value: int, structure: Optional[str] = None) -> Rating:
        """Score ``structure`` (the active one when None) of the current item; written at once.

        Giving the score the item already has writes nothing and returns its row.
        """
        structure = structure or self.active_structure
        score = self.scale.validate_score(value, structure)
        key = (self.case.case_id, self.item.item_id, structure)
        current = self._latest.get(key)
        if current is not None and current.score == score:
            return current
        return self._write(self.case.case_id, self.item.item_id, structure, score, self.flags, self.comment)

    def set_flag(self, flag_id: str, on: bool) -> List[Rating]:
        """Set or clear a flag; a case flag applies to every item of the case. Written at once."""
        flag = self.scale.flag(flag_id)
        items = self.case.item_ids if flag.scope == "case" else (self.item.item_id,)
        written = []
        for item_id in items:
            flags, comment = self._annotations.get((self.case.case_id, item_id), ((), ""))
            wanted = tuple(f for f in self.scale.flag_ids if (f == flag_id and on) or (f != flag_id and f in flags))
            if wanted != flags:
                written += self._rewrite_item(item_id, wanted, comment)
        return written

    def set_comment(self, text: str) -> List[Rating]:
        """Set the current item's comment (line breaks become spaces); written at once if it changed."""
        if not self.scale.comment and text:
            raise ScoreError(f"scale {self.scale.id!r} takes no comment")
        text = " ".join(text.splitlines()).strip()
        if text == self.comment:
            return []
        return self._rewrite_item(self.item.item_id, self.flags, text)

    def _rewrite_item(self, item_id: str, flags: Tuple[str, ...], comment: str) -> List[Rating]:
        """New revisions of an item's rows carrying new flags and comment (one row if it has none)."""
        case_id = self.case.case_id
        structures = [s for s in self.scale.structure_ids if (case_id, item_id, s) in self._latest]
        return [
            self._write(case_id, item_id, s, self._score(case_id, item_id, s), flags, comment)
            for s in structures or self.scale.structure_ids[:1]
        ]

    def _write(self, case_id: str, item_id: str, structure: str, score: Optional[int],
               flags: Tuple[str, ...], comment: str) -> Rating:
        previous = self._latest.get((case_id, item_id, structure))
        now = self._clock()
        rating = Rating(
            session=self.session.session_id, rater=self.rater, case=case_id, item=item_id, structure=structure,
            score=score, scale=self.scale.id, flags=flags, comment=comment,
            started=self._shown_at.isoformat(timespec="seconds"), submitted=now.isoformat(timespec="seconds"),
            seconds=max(0.0, (now - self._shown_at).total_seconds()),
            revision=previous.revision + 1 if previous is not None else 1,
        )
        if self._writer is None:
            self._writer = RaterTableWriter(self._table)
        try:
            self._writer.append(rating)
        except RaterTableError:
            self._writer.close()
            self._writer = None  # the next write reloads and repairs the table
            self._table = load_rater_table(self._table.path, self.session)
            raise
        self._latest[rating.key] = rating
        self._annotations[(case_id, item_id)] = (flags, comment)
        return rating

    def close(self) -> None:
        """Release the table file (every row is already on disk)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
