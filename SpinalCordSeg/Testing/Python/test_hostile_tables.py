"""Hostile cells in the CSV tables (issue 27, item 7): no formula reaches a spreadsheet, the tools read the truth.

Comments, reasons, rater ids, metadata and file names that start with ``= + - @``
(or a tab or a line break) are quoted with ``'`` in every CSV file that a person may
open in Excel or LibreOffice; the tools' own readers give the true value back. Real
files throughout (worklist, correction log, failure log). Two writers: processes that
create a log at the same moment write one header, and every row.
"""

import ast
import csv
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.imaging.fileutil import (csv_text, read_csv_table, spreadsheet_safe, spreadsheet_value,
                                               write_csv_atomic)
from SpinalCordSegLib.rounds.correction import LOG_COLUMNS, append_correction_log
from SpinalCordSegLib.rounds.worklist import BASE_COLUMNS, TAIL_COLUMNS, Worklist

ROOT = Path(__file__).resolve().parents[3]
TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")
HOSTILE = ["=HYPERLINK(\"http://evil.example\",\"click\")", "=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1,2)",
           "\t=1+1", "\r=1+1", "\n=1", "'=already quoted", "''+twice", "'plain quote", "-", "=", "-inf"]
HARMLESS = ["plain", "", "-1.5", "+3", "2e-3", "-0", "sub-01", "a=b", "1-2"]


def raw_cells(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return [cell for row in csv.reader(stream) for cell in row]


def dangerous(cells):
    """Cells a spreadsheet runs as a formula: a trigger first, and not a plain number."""
    def number(text):
        try:
            float(text)
        except ValueError:
            return False
        return text.lower().lstrip("+-") not in ("inf", "infinity", "nan")
    return [cell for cell in cells if cell.startswith(TRIGGERS) and not number(cell)]


@pytest.mark.parametrize("value", HOSTILE + HARMLESS)
def test_a_cell_is_quoted_only_when_a_spreadsheet_would_run_it_and_reads_back_true(value):
    safe = spreadsheet_safe(value)
    assert not dangerous([safe])
    assert spreadsheet_value(safe) == value
    if value in HARMLESS:
        assert safe == value  # numbers and plain text are written as they are


def test_tables_written_by_write_csv_atomic_are_safe_and_read_back_true(tmp_path):
    table = pd.DataFrame({
        "case": HOSTILE + HARMLESS,
        "number": np.linspace(-1.5, 1.5, len(HOSTILE + HARMLESS)),  # negative numbers stay numbers
        "=SUM(A1)": ["x"] * len(HOSTILE + HARMLESS),  # a hostile column name (a metadata column)
    })
    path = write_csv_atomic(table, tmp_path / "t.csv")
    assert not dangerous(raw_cells(path))
    assert pd.read_csv(path)["number"].tolist() == table["number"].tolist()
    back = read_csv_table(path)
    assert back.columns.tolist() == ["case", "number", "=SUM(A1)"]
    assert back["case"].tolist() == HOSTILE + HARMLESS


def test_appended_rows_are_safe_too():
    text = csv_text([["=1+1", -2, "ok"]], header=["@a", "b", "c"])
    assert text == "'@a,b,c\n'=1+1,-2,ok\n"


def test_worklist_reasons_and_raters_are_safe_and_the_worklist_reads_them_back(tmp_path):
    # Case ids name files, so '=case1' is refused on load (test_hostile_options); the other cells are free text.
    rows = [{"case": f"sub-{i:02d}", "subject": "@sub", "session": "", "scan": "-x.nii.gz",
             "status": "excluded", "reason": reason, "rater": "+rater", "rank": str(i), "uncertainty": "-0.0"}
            for i, reason in enumerate(HOSTILE)]
    worklist = Worklist(tmp_path / "worklist.csv", pd.DataFrame(rows, columns=BASE_COLUMNS + TAIL_COLUMNS,
                                                                dtype=object).fillna(""))
    worklist.save()
    assert not dangerous(raw_cells(worklist.path))
    again = Worklist.load(worklist.path)
    assert again.table["reason"].tolist() == HOSTILE
    assert again.table["case"].tolist() == [row["case"] for row in rows]
    assert set(again.table["rater"]) == {"+rater"} and set(again.table["scan"]) == {"-x.nii.gz"}
    again.mark("sub-01", "approved", rater="@jd", reason="=evil()")  # a change and a save keep them safe
    again.save()
    assert not dangerous(raw_cells(worklist.path))
    row = Worklist.load(worklist.path).table.set_index("case").loc["sub-01"]
    assert (row["rater"], row["reason"], row["status"]) == ("@jd", "=evil()", "approved")


def test_the_correction_log_is_safe_and_the_worklist_reads_its_rater_back(tmp_path):
    worklist = Worklist(tmp_path / "worklist.csv", pd.DataFrame(
        [{"case": "sub-01_T2w", "subject": "sub-01", "session": "", "scan": "s.nii.gz", "status": "predicted"}],
        columns=BASE_COLUMNS + TAIL_COLUMNS, dtype=object).fillna(""))
    worklist.save()
    log = tmp_path / "correction_log.csv"
    entry = dict.fromkeys(LOG_COLUMNS, "")
    entry.update(case="sub-01_T2w", structure="sc", dice="0.9", rater="=HYPERLINK(\"x\")", date="2025-01-01 10:00:00")
    append_correction_log(log, [entry])
    append_correction_log(log, [{**entry, "structure": "lesion", "rater": "@ana"}])
    assert not dangerous(raw_cells(log))
    assert worklist.apply_correction_log(log) == ["sub-01_T2w"]
    assert Worklist.load(worklist.path).table.at[0, "rater"] == "@ana"


def test_the_failure_log_of_a_batch_is_safe(tmp_path):
    from SpinalCordSegLib.rounds.cohort import FAILURES_FILE, _record_failure

    _record_failure(tmp_path, SimpleNamespace(relative="=evil/sub-01_T2w.nii.gz"), "=1+1 cannot read")
    _record_failure(tmp_path, SimpleNamespace(relative="sub-02/anat/sub-02_T2w.nii.gz"), "@bad header")
    cells = raw_cells(tmp_path / FAILURES_FILE)
    assert cells[:3] == ["date", "scan", "error"] and len(cells) == 9
    assert not dangerous(cells)


WRITERS = 8


def _append_when_all_are_ready(barrier, log, folder, number):
    """One writer process: wait for the others, then append one row to ``log`` in ``folder``."""
    from SpinalCordSegLib.rounds.cohort import _record_failure

    barrier.wait()
    if log == "correction":
        append_correction_log(folder / "correction_log.csv", [{**dict.fromkeys(LOG_COLUMNS, ""), "case": f"c{number}"}])
    else:
        _record_failure(folder, SimpleNamespace(relative=f"c{number}"), "cannot read")


@pytest.mark.parametrize("log", ["correction", "failures"])
def test_processes_that_create_a_log_at_once_write_one_header_and_every_row(tmp_path, log):
    from SpinalCordSegLib.rounds.cohort import FAILURES_FILE

    name, header, case = (("correction_log.csv", LOG_COLUMNS, LOG_COLUMNS.index("case")) if log == "correction"
                          else (FAILURES_FILE, ["date", "scan", "error"], 1))
    context = multiprocessing.get_context("fork")  # real processes, started fast
    for attempt in range(4):  # the race is in the first microseconds: several tries
        folder = tmp_path / str(attempt)
        folder.mkdir()
        barrier = context.Barrier(WRITERS)
        writers = [context.Process(target=_append_when_all_are_ready, args=(barrier, log, folder, number))
                   for number in range(WRITERS)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        assert [writer.exitcode for writer in writers] == [0] * WRITERS
        with open(folder / name, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        assert rows[0] == header and rows.count(header) == 1, f"try {attempt}: {rows}"
        assert sorted(row[case] for row in rows[1:]) == [f"c{number}" for number in range(WRITERS)]


@pytest.mark.parametrize("kind", ["dangling link", "fifo", "folder", "other header"])
def test_a_log_that_is_not_a_log_is_refused_naming_it(tmp_path, kind):
    log = tmp_path / "correction_log.csv"
    target = tmp_path / "elsewhere.csv"
    if kind == "dangling link":
        log.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(log)
    elif kind == "folder":
        log.mkdir()
    else:
        log.write_text("subject,score\nsub-01,3\n")
    with pytest.raises(SpinalCordSegError, match=f"{log}: (cannot append to the|existing) correction log"):
        append_correction_log(log, [dict.fromkeys(LOG_COLUMNS, "x")])
    assert not target.exists()  # nothing written where a link points
    if kind == "other header":
        assert log.read_text() == "subject,score\nsub-01,3\n"


def test_every_csv_write_of_both_libs_goes_through_fileutil():
    """No other module formats CSV itself (pandas' to_csv, csv.writer, csv.DictWriter): one place quotes."""
    offenders = []
    for lib in (ROOT / "SpinalCordSeg" / "SpinalCordSegLib", ROOT / "LesionQC" / "LesionQCLib"):
        for path in sorted(lib.rglob("*.py")):
            if path.name == "fileutil.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr in ("to_csv", "writer", "DictWriter") and (
                        node.attr == "to_csv" or getattr(node.value, "id", "") == "csv"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert not offenders, offenders
