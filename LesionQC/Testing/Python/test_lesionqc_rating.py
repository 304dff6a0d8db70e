"""Rater tables and the rating panel's state: nothing given is lost, nothing else is accepted.

Sessions are built from the real T2w scan of SCT's test data (manual cord mask
and an eroded copy of it as a second source). The crash test kills real writer
processes with SIGKILL.
"""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import SimpleITK as sitk

from LesionQCLib.errors import RaterTableError, ScoreError
from LesionQCLib.rater_table import load_rater_table, rater_table_path
from LesionQCLib.review_state import ReviewState
from LesionQCLib.session import make_session


@pytest.fixture
def session(tmp_path, sample_data):
    """A 3-case session, two anonymous items per case, its key moved out of the folder."""
    image, manual = sample_data.scan, sample_data.cord
    model = tmp_path / "model.nii.gz"
    sitk.WriteImage(sitk.BinaryErode(sitk.ReadImage(str(manual)), [1, 1, 1]), str(model))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id,image,seg:manual,seg:model\n"
                        + "".join(f"case{i},{image},{manual},{model}\n" for i in range(3)))
    # The rating view must work without the key: keep it where the panel could not find it.
    return make_session(manifest, tmp_path / "session", seed=2, key_path=tmp_path / "private" / "key.json")


class FakeClock:
    """Deterministic time for timestamps and seconds spent (the only stand-in here: real time is not)."""

    def __init__(self):
        self.now = datetime(2025, 5, 2, 10, 0, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


def rows_on_disk(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_every_score_is_on_disk_when_set_score_returns(session):
    clock = FakeClock()
    state = ReviewState(session, "alice", clock=clock)
    assert (state.progress_text, state.item_text) == ("1 / 3", "Item A (1 of 2)")
    assert state.active_structure == "overall"

    clock.advance(12.5)
    state.set_score(4)
    rows = rows_on_disk(rater_table_path(session, "alice"))
    assert [r["score"] for r in rows] == ["4"]
    row = rows[0]
    assert (row["session"], row["rater"], row["case"], row["item"], row["structure"]) == (
        session.session_id, "alice", session.cases[0].case_id, "A", "overall")
    assert (row["scale"], row["seconds"], row["revision"]) == ("likert5", "12.5", "1")
    assert row["started"] == "2025-05-02T10:00:00+00:00" and row["submitted"] == "2025-05-02T10:00:12+00:00"

    assert state.set_score(4, "overall").revision == 1  # the same score again writes nothing
    assert state.set_score(2, "overall").revision == 2  # a change is a new revision
    assert [(r["score"], r["revision"]) for r in rows_on_disk(state.table_path)] == [("4", "1"), ("2", "2")]
    assert state.scores()["overall"] == 2 and state.active_structure == "cord"


def test_reopening_resumes_at_the_first_item_not_done(session):
    state = ReviewState(session, "bob")
    for _ in range(3):  # case 1 items A and B, case 2 item A
        state.set_score(3)
        state.go_next()
    state.close()

    again = ReviewState(session, "bob")
    assert (again.case_index, again.item_index) == (1, 1)
    assert again.progress_text == "2 / 3" and again.item_text == "Item B (2 of 2)"
    assert (again.done_count, again.item_count) == (3, 6)
    assert again.scores() == {"overall": None, "cord": None, "lesion": None}
    assert again.go_previous() and again.scores()["overall"] == 3
    # Another rater starts from the beginning, in the same order.
    assert (ReviewState(session, "carol").case_index, ReviewState(session, "carol").item_index) == (0, 0)


def test_navigation_and_completion(session):
    state = ReviewState(session, "dave")
    assert not state.can_go_previous and not state.go_previous()
    visited = []
    while True:
        visited.append((state.case.case_id, state.item.item_id))
        state.set_score(5)
        if not state.go_next():
            break
    assert visited == [(c.case_id, i) for c in session.cases for i in c.item_ids]
    assert state.is_complete and not state.can_go_next and not state.go_to_next_open()
    assert state.go_to_case(1) and state.progress_text == "2 / 3" and state.item.item_id == "A"
    with pytest.raises(IndexError):
        state.go_to_case(3)


def test_optional_structures_and_the_active_structure(session):
    state = ReviewState(session, "erin")
    assert state.set_score(4).structure == "overall"  # keys score the first structure without a score
    assert state.is_done(state.case.case_id, "A")  # cord and lesion are optional
    assert state.set_score(5).structure == "cord"
    assert state.set_score(1).structure == "lesion"
    assert state.active_structure == "overall"
    assert state.scores() == {"overall": 4, "cord": 5, "lesion": 1}


def test_a_case_flag_marks_every_item_and_unusable_needs_no_score(session):
    state = ReviewState(session, "fred")
    state.set_score(3)
    written = state.set_flag("image_unusable", True)
    # Item A's scored row gets a new revision; item B (no row yet) gets a row without score.
    assert [(r.item, r.structure, r.score, r.revision) for r in written] == [("A", "overall", 3, 2),
                                                                             ("B", "overall", None, 1)]
    assert all(state.is_done(state.case.case_id, item) for item in state.case.item_ids)
    assert state.go_next() and state.flags == ("image_unusable",)
    assert state.set_flag("image_artefact", True) and set(state.flags) == {"image_artefact", "image_unusable"}
    state.set_flag("image_unusable", False)
    assert not state.is_done(state.case.case_id, "B") and state.flags == ("image_artefact",)
    assert ReviewState(session, "fred").item.item_id == "B"  # resumes at the item that lost its exclusion
    with pytest.raises(ScoreError):
        state.set_flag("no_such_flag", True)


def test_comments_are_written_and_kept_on_one_line(session):
    state = ReviewState(session, "gina")
    state.set_score(2)
    state.set_comment("missed lesion\nat C4")
    assert state.set_comment("missed lesion at C4") == []  # unchanged after flattening
    row = rows_on_disk(state.table_path)[-1]
    assert (row["comment"], row["score"], row["revision"]) == ("missed lesion at C4", "2", "2")
    reopened = ReviewState(session, "gina")
    assert reopened.item.item_id == "B" and reopened.comment == ""
    assert reopened.go_previous() and reopened.comment == "missed lesion at C4"


def test_scores_outside_the_scale_and_overlong_comments_write_nothing(session):
    state = ReviewState(session, "hank")
    for bad in (0, 6, "x", 2.5):
        with pytest.raises(ScoreError):
            state.set_score(bad)
    with pytest.raises(ScoreError):
        state.set_score(3, "brain")
    assert not state.table_path.exists()
    state.set_score(3)
    with pytest.raises(RaterTableError, match="at most 10000"):
        state.set_comment("y" * 10001)
    assert [r["comment"] for r in rows_on_disk(state.table_path)] == [""]
    assert state.set_comment("fine")[0].revision == 2


# Windows device names (issue 15 item 14): "CON.csv" would open the console, on every platform's session copy.
@pytest.mark.parametrize("rater", ["", "a b", "../x", "-x", "é", "CON", "con", "Nul", "PRN.a", "COM1", "lpt9", "x."])
def test_rater_ids_that_cannot_name_a_file_are_refused(session, rater):
    with pytest.raises(RaterTableError, match="rater id"):
        ReviewState(session, rater)


def test_a_torn_last_line_is_ignored_then_cut_off(session):
    state = ReviewState(session, "ivan")
    for _ in range(3):
        state.set_score(4)
        state.go_next()
    state.close()
    path = state.table_path
    complete = path.read_bytes()
    with open(path, "ab") as stream:  # a crash in the middle of the fourth row
        stream.write(complete.splitlines(keepends=True)[-1][:37])

    table = load_rater_table(path, session)
    assert len(table.ratings) == 3 and len(table.torn_tail) == 37
    resumed = ReviewState(session, "ivan")
    assert resumed.done_count == 3
    resumed.set_score(1)
    assert path.read_bytes().startswith(complete)
    reloaded = load_rater_table(path, session)
    assert reloaded.torn_tail == b"" and [r.score for r in reloaded.ratings] == [4, 4, 4, 1]


def test_a_torn_header_leaves_an_empty_table_that_works(session):
    path = rater_table_path(session, "judy")
    path.write_bytes(b"session,rater,ca")
    assert load_rater_table(path, session).ratings == []
    ReviewState(session, "judy").set_score(5)
    assert [r.score for r in load_rater_table(path, session).ratings] == [5]


def test_tables_of_another_session_or_hand_edited_scores_are_refused(session, tmp_path):
    state = ReviewState(session, "kate")
    state.set_score(4)
    state.go_next()
    state.set_score(5)
    state.close()
    text = state.table_path.read_text()

    edited = tmp_path / "edited.csv"
    edited.write_text(text.replace(",5,likert5,", ",7,likert5,"))
    with pytest.raises(ScoreError, match="edited.csv line 3: .*score 7 is not on scale"):
        load_rater_table(edited, session)

    foreign = tmp_path / "foreign.csv"
    foreign.write_text(text.replace(session.session_id, "lqc-0000000000000000"))
    with pytest.raises(RaterTableError, match="foreign.csv line 2: .*another session"):
        load_rater_table(foreign, session)

    other = tmp_path / "other.csv"
    other.write_text("case,score\nx,1\n")
    with pytest.raises(RaterTableError, match="not a LesionQC rater table"):
        load_rater_table(other, session)
    assert state.table_path.read_text() == text  # loading never writes


def test_the_same_rater_open_twice_cannot_interleave_rows(session):
    first = ReviewState(session, "liam")
    second = ReviewState(session, "liam")
    first.set_score(3)
    with pytest.raises(RaterTableError, match="changed since it was loaded"):
        second.set_score(4)
    assert [r["score"] for r in rows_on_disk(first.table_path)] == ["3"]


WRITER = textwrap.dedent("""
    import sys
    from LesionQCLib.review_state import ReviewState
    from LesionQCLib.session import SessionView

    state = ReviewState(SessionView.load(sys.argv[1]), "crash")
    start = len(state._table.ratings)
    padding = "x" * 9000  # long rows (near the longest comment): a kill can land inside a write
    for number in range(start, start + 100000):
        state.set_comment(f"{number} {padding}")
        print(number, flush=True)
""")


def test_a_writer_killed_with_sigkill_loses_at_most_the_row_being_written(session):
    path = rater_table_path(session, "crash")
    rng = np.random.default_rng(0)
    acknowledged = 0
    torn_tails = 0
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(session.folder)], stdout=subprocess.PIPE,
                                   text=True)
        for _ in range(int(rng.integers(2, 15))):
            acknowledged = int(process.stdout.readline()) + 1
        time.sleep(float(rng.uniform(0, 0.003)))  # vary where in the next write the kill lands
        os.kill(process.pid, signal.SIGKILL)
        for line in process.stdout:  # acknowledgements still in the pipe
            acknowledged = int(line) + 1
        process.wait()
        assert process.returncode == -signal.SIGKILL

        table = load_rater_table(path, session)
        torn_tails += bool(table.torn_tail)
        numbers = [int(r.comment.split()[0]) for r in table.ratings]
        assert numbers == list(range(len(numbers)))  # every earlier row, in order, none twice
        assert [r.revision for r in table.ratings] == list(range(1, len(numbers) + 1))
        assert acknowledged <= len(numbers) <= acknowledged + 1
    print(f"{acknowledged} rows acknowledged, {torn_tails} torn last lines seen")
    assert acknowledged >= 12
