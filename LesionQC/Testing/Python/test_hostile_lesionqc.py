"""Hostile input against LesionQC (issue 27): nothing unblinded, corrupted or left behind; clean refusals.

Sessions are built from the real T2w scan of SCT's test data; the concurrency and
crash tests run real ``python`` processes (two writers at once, SIGKILL).
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from LesionQCLib.cli import main as lesionqc
from LesionQCLib.errors import LesionQCError, ManifestError, RaterTableError, ScaleError, SessionError
from LesionQCLib.rater_table import load_rater_table, rater_table_path, validate_rater_id
from LesionQCLib.review_state import ReviewState
from LesionQCLib.scales import Scale, default_scale
from LesionQCLib.session import SessionView, make_session

ROOT = Path(__file__).resolve().parents[3]
PYTHONPATH = os.pathsep.join([str(ROOT / "SpinalCordSeg"), str(ROOT / "LesionQC")])
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def write_manifest(folder, sample_data, count=3, site="A"):
    """A CSV manifest of ``count`` cases of the real T2w scan, sources ``manual`` and ``model`` (eroded)."""
    image = sample_data.scan
    manual = sample_data.cord
    model = folder / "model.nii.gz"
    if not model.exists():
        sitk.WriteImage(sitk.BinaryErode(sitk.ReadImage(str(manual)), [1, 1, 1]), str(model))
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "image", "site", "seg:manual", "seg:model"])
        for index in range(count):
            writer.writerow([f"c{index:02d}", image, site if index % 2 else "B", manual, model])
    return path


def rate_everything(view, raters=("alice", "bob"), comment=None):
    for number, rater in enumerate(raters):
        state = ReviewState(view, rater)
        while True:
            state.set_score(1 + (number + state.case_index + state.item_index) % 5)
            if comment is not None:
                state.set_comment(comment)
            if not state.go_next():
                break
        state.close()


@pytest.fixture
def rated(tmp_path, sample_data):
    """A session of 3 cases scored by two raters; its key beside it."""
    view = make_session(write_manifest(tmp_path, sample_data), tmp_path / "session", seed=4)
    rate_everything(view)
    return view


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# --------------------------------------------------------------------------- 4: no results in a raters' folder


@pytest.mark.parametrize("where", [".", "ratings", "cases", "results", "cases/new/deeper"])
def test_analyze_refuses_an_output_inside_the_session_folder(rated, capsys, where):
    before = files_under(rated.folder)
    output = rated.folder / where
    assert lesionqc(["analyze", str(rated.folder), "-o", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("lesionqc: error: ") and str(rated.folder) in error and "session folder" in error
    assert files_under(rated.folder) == before  # no ratings.csv (with its source column) for the raters


def test_analyze_refuses_an_output_inside_any_session_folder(rated, tmp_path, sample_data, capsys):
    other = make_session(write_manifest(tmp_path, sample_data), tmp_path / "other", seed=5)
    before = files_under(other.folder)
    link = tmp_path / "innocent-looking"
    link.symlink_to(other.folder)  # a link to a session is that session
    for output in (other.folder / "results", link / "results"):
        assert lesionqc(["analyze", str(rated.folder), "-o", str(output)]) == 1
        assert str(other.folder) in capsys.readouterr().err
    assert files_under(other.folder) == before


def test_qc_fail_refuses_a_file_inside_the_session_folder(rated, capsys):
    before = files_under(rated.folder)
    assert lesionqc(["qc-fail", str(rated.folder), "-o", str(rated.folder / "qc_fail.yml"), "--source", "model"]) == 1
    assert "session folder" in capsys.readouterr().err
    assert files_under(rated.folder) == before


def test_analyze_beside_the_session_still_works(rated, tmp_path):
    assert lesionqc(["analyze", str(rated.folder), "-o", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "ratings.csv").is_file()


# --------------------------------------------------------------------------- 5: two writers of one table

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from LesionQCLib.errors import RaterTableError
    from LesionQCLib.rater_table import Rating, RaterTableWriter, load_rater_table
    from LesionQCLib.session import SessionView

    folder, trials, go_file, step, name = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), \\
        sys.argv[5]
    view = SessionView.load(folder)
    case = view.cases[0]
    # Every writer loads every (still missing) table first, as two panels opened on one rater would.
    tables = [load_rater_table(view.ratings_dir / f"t{trial:03d}.csv", view) for trial in range(trials)]
    Path(f"{go_file}.{name}").touch()  # ready
    while not go_file.is_file() or not go_file.read_text():
        time.sleep(0.001)
    start = float(go_file.read_text())
    for trial, table in enumerate(tables):
        go = start + trial * step
        while time.time() < go:  # spin: the writers leave the barrier within microseconds
            pass
        try:
            with RaterTableWriter(table) as writer:
                writer.append(Rating(view.session_id, f"t{trial:03d}", case.case_id, case.item_ids[0], "overall",
                                     3, view.scale.id, (), name, "2025-01-01T00:00:00+00:00",
                                     "2025-01-01T00:00:01+00:00", 1.0, 1))
            print(trial, "written", flush=True)
        except RaterTableError as error:
            print(trial, "refused", error, flush=True)
""")
WRITERS = ("w1", "w2", "w3", "w4")


@pytest.mark.slow
def test_writers_of_one_new_table_never_corrupt_it(tmp_path, sample_data):
    """Four real processes that loaded the same missing table write it at the same instant, 150 times.

    Before the fix, some trials ended with two headers: the table could not be loaded and
    the rater was locked out. Now exactly one writer wins each trial; the others are refused.
    """
    view = make_session(write_manifest(tmp_path, sample_data, count=1), tmp_path / "session", seed=1)
    trials, step, go = 150, 0.02, tmp_path / "go"
    environment = {**os.environ, "PYTHONPATH": PYTHONPATH}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(view.folder), str(trials), str(go), str(step),
                                 name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
               for name in WRITERS]
    deadline = time.time() + 120
    while not all(Path(f"{go}.{name}").exists() for name in WRITERS) and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go.tmp").write_text(str(time.time() + 0.5))
    os.replace(tmp_path / "go.tmp", go)  # every writer sees the same start time at once
    outputs = [writer.communicate(timeout=120) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), [err for _, err in outputs]
    written = {trial: 0 for trial in range(trials)}
    for out, _ in outputs:
        for line in out.splitlines():
            trial, outcome = line.split()[:2]
            written[int(trial)] += outcome == "written"
    corrupt = []
    for trial in range(trials):
        path = view.ratings_dir / f"t{trial:03d}.csv"
        lines = path.read_bytes().split(b"\n")
        try:
            table = load_rater_table(path, view)
        except LesionQCError:  # a second header reads as a row whose score is "score"
            corrupt.append(trial)
            continue
        assert lines.count(lines[0]) == 1 and len(table.ratings) == written[trial] == 1, f"trial {trial}"
    assert not corrupt, f"{len(corrupt)} of {trials} tables cannot be loaded (the rater is locked out): {corrupt}"


def test_the_same_rater_open_twice_is_refused_before_anything_is_written(tmp_path, sample_data):
    view = make_session(write_manifest(tmp_path, sample_data, count=1), tmp_path / "session", seed=1)
    first, second = ReviewState(view, "alice"), ReviewState(view, "alice")  # both load an empty table
    first.set_score(4)
    with pytest.raises(RaterTableError, match="alice.csv"):
        second.set_score(2)
    first.set_score(5)  # the first panel goes on
    first.close()
    table = load_rater_table(rater_table_path(view, "alice"), view)
    assert [r.score for r in table.ratings] == [4, 5]


# --------------------------------------------------------------------------- 6: ids are whole names

BAD_IDS = ["c1\n", "c1\r", "c1\x00", "a\nb", "a/b", "..", "c1/..", "../c1", "\nc1"]


@pytest.mark.parametrize("case_id", BAD_IDS)
def test_case_ids_with_line_breaks_nul_or_slashes_are_refused(tmp_path, sample_data, case_id):
    image = sample_data.scan
    manual = sample_data.cord
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"cases": [{"case_id": case_id, "image": str(image),
                                               "segmentations": [{"source": "manual", "path": str(manual)}]}]}))
    with pytest.raises(ManifestError, match="case id"):
        make_session(manifest, tmp_path / "session", seed=1)
    assert not (tmp_path / "session").exists()


@pytest.mark.parametrize("source", BAD_IDS)
def test_source_names_with_line_breaks_are_refused(tmp_path, sample_data, source):
    image = sample_data.scan
    manual = sample_data.cord
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"cases": [{"case_id": "c1", "image": str(image),
                                               "segmentations": [{"source": source, "path": str(manual)}]}]}))
    with pytest.raises(ManifestError, match="source names"):
        make_session(manifest, tmp_path / "session", seed=1)


@pytest.mark.parametrize("rater", ["a\nb", "a\rb", "alice\x00", "a/b", "..", "alice/..", "../alice", "=cmd", "a\tb"])
def test_rater_ids_with_line_breaks_nul_or_slashes_are_refused(rated, rater):
    with pytest.raises(RaterTableError, match="rater id"):
        validate_rater_id(rater)
    with pytest.raises(RaterTableError, match="rater id"):
        ReviewState(rated, rater)
    assert sorted(p.name for p in rated.ratings_dir.iterdir()) == ["alice.csv", "bob.csv"]


def test_surrounding_blanks_of_a_typed_rater_id_are_dropped(rated):
    assert validate_rater_id(" alice\n") == "alice"
    assert ReviewState(rated, "bob\r\n").table_path.name == "bob.csv"


@pytest.mark.parametrize("where", ["scale id", "structure id", "flag id"])
@pytest.mark.parametrize("suffix", ["\n", "\r", "\x00", "/..", "/x"])
def test_scale_structure_and_flag_ids_must_be_whole_identifiers(where, suffix):
    data = default_scale().to_dict()
    if where == "scale id":
        data["id"] += suffix
    elif where == "structure id":
        data["structures"][0]["id"] += suffix
    else:
        data["flags"][0]["id"] += suffix
    with pytest.raises(ScaleError):
        Scale.from_dict(data)


@pytest.mark.parametrize("field", ["session_id", "case_id", "item"])
@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "/..", "/x"])
def test_a_session_file_with_ids_that_are_not_names_is_refused(rated, field, bad):
    path = rated.folder / "session.json"
    data = json.loads(path.read_text())
    if field == "session_id":
        data["session_id"] += bad
    elif field == "case_id":
        data["cases"][0]["case_id"] += bad
    else:
        data["cases"][0]["items"][0]["item"] += bad
    path.write_text(json.dumps(data))
    with pytest.raises(SessionError, match=field.replace("_", " ")):
        SessionView.load(rated.folder)


def test_a_rater_table_row_with_a_rater_id_that_is_not_a_name_is_refused(rated):
    path = rater_table_path(rated, "alice")
    text = path.read_text()
    path.write_text(text.replace(",alice,", ",@alice,", 1))
    with pytest.raises(RaterTableError, match="line 2.*rater id"):
        load_rater_table(path, rated)


@pytest.mark.parametrize("name", ["qc\nsession", "qc\rsession", "qc\tsession"])
def test_a_session_folder_name_with_control_characters_is_refused(tmp_path, sample_data, name, capsys):
    manifest = write_manifest(tmp_path, sample_data, count=1)
    assert lesionqc(["make-session", str(manifest), "-o", str(tmp_path / name), "--seed", "1"]) == 1
    assert "lesionqc: error:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv", "model.nii.gz"]


@pytest.mark.parametrize("column", ["../../escape", "a/b", "site\n"])
def test_analyze_by_a_column_that_cannot_name_a_file_is_refused(rated, tmp_path, column, capsys):
    assert lesionqc(["analyze", str(rated.folder), "-o", str(tmp_path / "out"), "--by", column]) == 1
    assert "lesionqc: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("*escape*"))


# --------------------------------------------------------------------------- 7: formula injection


def raw_cells(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return [cell for row in csv.reader(stream) for cell in row]


def assert_spreadsheet_safe(path):
    dangerous = [cell for cell in raw_cells(path) if cell.startswith(TRIGGERS)
                 and not _is_number(cell)]
    assert not dangerous, f"{path}: cells a spreadsheet would run as formulas: {dangerous}"


def _is_number(text):
    try:
        float(text)
        return text.strip() == text and text.lower().lstrip("+-") not in ("inf", "nan", "infinity")
    except ValueError:
        return False


@pytest.mark.parametrize("comment", ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3",
                                     "@SUM(1+1)", "\t=1+1", "'=already quoted"])
def test_comments_and_metadata_reach_every_table_neutralized_and_read_back_true(tmp_path, sample_data, comment):
    from SpinalCordSegLib.imaging.fileutil import read_csv_table

    view = make_session(write_manifest(tmp_path, sample_data, count=4, site=comment), tmp_path / "session", seed=4)
    rate_everything(view, comment=comment)
    expected = comment.strip()  # the panel trims a comment's blanks
    table_path = rater_table_path(view, "alice")
    assert_spreadsheet_safe(table_path)
    assert {r.comment for r in load_rater_table(table_path, view).latest().values()} == {expected}

    results = tmp_path / "results"
    assert lesionqc(["analyze", str(view.folder), "-o", str(results), "--by", "site"]) == 0
    for path in sorted(results.glob("*.csv")):
        assert_spreadsheet_safe(path)
    assert set(read_csv_table(results / "ratings.csv")["comment"]) == {expected}
    assert set(read_csv_table(results / "summary_by_site.csv")["site"]) == {expected, "B"}  # the manifest trims too


# --------------------------------------------------------------------------- 11: numeric options


@pytest.mark.parametrize("option", [["--seed", "-1"], ["--seed", str(2 ** 200)], ["--sample", "0"],
                                    ["--sample", "-3"], ["--repeat-fraction", "nan"],
                                    ["--repeat-fraction", "inf"], ["--repeat-fraction", "-0.1"],
                                    ["--repeat-fraction", "1.5"]])
def test_make_session_numeric_options_are_refused_cleanly(tmp_path, sample_data, option):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    run = subprocess.run([sys.executable, "-m", "LesionQCLib.cli", "make-session", str(manifest), "-o",
                          str(tmp_path / "session"), *option], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": PYTHONPATH}, timeout=120)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "lesionqc: error:" in run.stderr
    assert option[0][2:].replace("-", " ") in run.stderr  # the message names the option
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv", "model.nii.gz"]


@pytest.mark.parametrize("threshold", ["-5", "0", "99"])
def test_failed_case_thresholds_outside_the_scale_are_refused(rated, tmp_path, threshold, capsys):
    assert lesionqc(["qc-fail", str(rated.folder), "-o", str(tmp_path / "f.yml"), "--source", "model",
                     "--threshold", threshold]) == 1
    assert "lesionqc: error:" in capsys.readouterr().err and not (tmp_path / "f.yml").exists()


# --------------------------------------------------------------------------- 13: killed make-session


def test_a_killed_make_session_leaves_nothing_that_the_next_run_keeps(tmp_path, sample_data, kill_when):
    manifest = write_manifest(tmp_path, sample_data, count=60)
    output = tmp_path / "session"
    command = [sys.executable, "-m", "LesionQCLib.cli", "make-session", str(manifest), "-o", str(output),
               "--seed", "1"]

    def staging_with_two_cases():
        staging = [p for p in tmp_path.glob(".session.building.*") if (p / "cases").is_dir()]
        return staging[0] if staging and len(list((staging[0] / "cases").iterdir())) >= 2 else None

    staging = kill_when(command, {**os.environ, "PYTHONPATH": PYTHONPATH}, staging_with_two_cases, "build")
    assert staging.is_dir() and not output.exists()  # what the kill leaves

    # A live build's staging folder (this process) and a user's look-alike folder must stay.
    from SpinalCordSegLib.imaging.fileutil import make_staging_folder

    live = make_staging_folder(tmp_path, ".session.building")
    users = tmp_path / ".session.building.notes"
    users.mkdir()
    run = subprocess.run(command, env={**os.environ, "PYTHONPATH": PYTHONPATH}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert not staging.exists() and "left by an interrupted" in run.stderr
    assert live.is_dir() and users.is_dir()
    assert len(SessionView.load(output).cases) == 60


def test_make_session_refuses_a_session_or_key_inside_another_session(rated, tmp_path, sample_data, capsys):
    manifest = write_manifest(tmp_path, sample_data, count=1)
    before = files_under(rated.folder)
    for options in (["-o", str(rated.folder / "inner")],
                    ["-o", str(tmp_path / "new"), "--key", str(rated.folder / "new-key.json")]):
        assert lesionqc(["make-session", str(manifest), "--seed", "1", *options]) == 1
        assert "inside the session folder" in capsys.readouterr().err
    assert files_under(rated.folder) == before and not (tmp_path / "new").exists()


def test_a_fifo_named_session_json_is_not_a_session_and_does_not_block(rated, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    os.mkfifo(folder / "session.json")  # opening it for reading would wait for a writer forever
    assert lesionqc(["analyze", str(rated.folder), "-o", str(folder / "results")]) == 0
