"""Manual edits versus the module's own updates (SpinalCordSegLib.panel.edit_tracking)."""

import pytest

from SpinalCordSegLib.panel.edit_tracking import EditTracker


def test_edits_outside_automatic_updates_are_tracked_with_the_time_spent():
    now = [100.0]
    tracker = EditTracker(clock=lambda: now[0])
    tracker.start()
    with tracker.automatic():
        tracker.segment_modified("sc", ["sc", "lesion"])
    assert tracker.edited == set()
    tracker.segment_modified("lesion", ["sc", "lesion"])
    assert tracker.needs_confirmation(["sc", "lesion"]) == ["lesion"]
    tracker.segment_modified(None, ["sc", "lesion"])  # unknown segment (undo): assume all
    assert tracker.needs_confirmation(["sc"]) == ["sc"]
    tracker.discard_edits(["sc"])
    assert tracker.edited == {"lesion"}
    now[0] = 145.5
    assert tracker.seconds_spent() == pytest.approx(45.5)
    tracker.start()
    assert tracker.edited == set()
