"""The worklist of an active-learning round: one row per case, saved as CSV.

Columns: ``case, subject, session, scan``, then per structure
``<s>_probseg, <s>_seg, <s>_entropy, <s>_uncertain_mm3`` (and, once corrected,
``<s>_correction_dice``: Dice between the automatic and the corrected mask),
then ``uncertainty`` (the largest structure entropy), ``rank``, ``status``,
``reason``, ``rater``, ``predicted_at``, ``updated_at``. Status is one of
``predicted``, ``in correction``, ``corrected``, ``approved``, ``excluded``
(with a reason). Paths are relative to the worklist's folder, so that a
cohort and its derivatives can move together (cluster to workstation).

Example:
    >>> from SpinalCordSegLib.rounds.worklist import Worklist
    >>> worklist = Worklist.load("derivatives/spinalcordseg/worklist.csv")  # doctest: +SKIP
    >>> worklist.rank(random_fraction=0.2, seed=1)  # doctest: +SKIP
    >>> case = worklist.open_next(rater="jd")  # doctest: +SKIP
    >>> case.scan, case.soft_maps["sc"]  # doctest: +SKIP
    >>> worklist.apply_correction_log("derivatives/labels/correction_log.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

import numpy as np

from ..imaging.binarization import DEFAULT_THRESHOLD, MaskOptions
from ..errors import SpinalCordSegError
from ..imaging.fileutil import read_csv_table, spreadsheet_value, write_csv_atomic
from ..imaging.naming import is_safe_id
from ..imaging.sidecar import now
from ..imaging.sidecar import Sidecar

if TYPE_CHECKING:  # pandas loads with the table, not with the command line's --help
    import pandas as pd

STATUSES = ("predicted", "in correction", "corrected", "approved", "excluded")
BASE_COLUMNS = ["case", "subject", "session", "scan"]
TAIL_COLUMNS = ["uncertainty", "rank", "status", "reason", "rater", "predicted_at", "updated_at"]


@dataclass(frozen=True)
class WorklistCase:
    """A case to correct: its scan and its predictions, as absolute paths."""

    case: str
    scan: Path
    soft_maps: Dict[str, Path]
    masks: Dict[str, Path]

    def provenance(self) -> Dict[str, dict]:
        """structure -> the automatic step that made its mask (from the mask's sidecar)."""
        return {s: Sidecar.read(path).automatic_step for s, path in self.masks.items()}

    def thresholds(self) -> Dict[str, float]:
        """structure -> threshold that made its mask (the default where the sidecar has none)."""
        thresholds = {s: Sidecar.read(path).threshold for s, path in self.masks.items()}
        return {s: DEFAULT_THRESHOLD if t is None else t for s, t in thresholds.items()}

    def mask_options(self) -> MaskOptions:
        """The mask options that made the masks (recorded in each mask's sidecar)."""
        recorded = [Sidecar.read(path).mask_options for path in self.masks.values()]
        return next((o for o in recorded if o is not None), MaskOptions.from_sidecar({}))


class Worklist:
    """A round's cases and their state, kept in ``path`` (CSV)."""

    def __init__(self, path: Union[str, Path], table: pd.DataFrame) -> None:
        self.path = Path(path)
        self.table = table

    @classmethod
    def load(cls, path: Union[str, Path], create: bool = False) -> "Worklist":
        """Read the worklist; with ``create``, start an empty one when the file does not exist."""
        import pandas as pd

        path = Path(path)
        if not path.is_file():
            if not create:
                raise SpinalCordSegError(f"{path}: no worklist there ('spinalcordseg batch' writes one)")
            return cls(path, pd.DataFrame(columns=BASE_COLUMNS + TAIL_COLUMNS, dtype=object))
        try:
            table = read_csv_table(path)  # text as written, formulas' quotes undone
        except (OSError, ValueError) as error:
            raise SpinalCordSegError(f"{path}: cannot read the worklist ({error})") from error
        missing = [c for c in BASE_COLUMNS + ["status"] if c not in table.columns]
        if missing:
            raise SpinalCordSegError(f"{path}: not a worklist (missing columns {missing})")
        unsafe = [case for case in table["case"] if not is_safe_id(case)]
        if unsafe:  # case ids become file names (export, corrections): no path or control character in them
            raise SpinalCordSegError(f"{path}: case id {unsafe[0]!r} cannot name files (use letters, digits, "
                                     "'_', '-' or '.')")
        return cls(path, table)

    def save(self) -> Path:
        """Write the table atomically, columns in the documented order."""
        middle = [c for c in self.table.columns if c not in BASE_COLUMNS + TAIL_COLUMNS]
        ordered = self.table.reindex(columns=BASE_COLUMNS + middle + TAIL_COLUMNS, fill_value="")
        return write_csv_atomic(ordered, self.path)

    def relative(self, path: Union[str, Path]) -> str:
        """``path`` as written in the table: relative to the worklist's folder, with ``/``."""
        return Path(os.path.relpath(Path(path).absolute(), self.path.parent.absolute())).as_posix()

    def absolute(self, value: str) -> Path:
        """A path of the table as an absolute path."""
        return Path(os.path.normpath(self.path.parent.absolute() / value))

    def structures(self) -> List[str]:
        """Structures with predictions in the table (from the ``<s>_probseg`` columns)."""
        return [c[: -len("_probseg")] for c in self.table.columns if c.endswith("_probseg")]

    def _row(self, case: str) -> int:
        rows = self.table.index[self.table["case"] == case]
        if len(rows) == 0:
            raise SpinalCordSegError(f"{self.path}: no case {case!r} in the worklist")
        return int(rows[0])

    def record_prediction(self, case: str, subject: str, session: str, scan: str,
                          outputs: Dict[str, Dict[str, object]]) -> None:
        """Add or refresh a predicted case.

        ``scan`` and the outputs' paths are file paths (stored relative to the
        worklist's folder); ``outputs``: structure -> {probseg, seg, entropy, uncertain_mm3}.
        """
        values: Dict[str, object] = {"case": case, "subject": subject, "session": session,
                                     "scan": self.relative(scan)}
        for structure, item in outputs.items():
            values[f"{structure}_probseg"] = self.relative(item["probseg"])
            values[f"{structure}_seg"] = self.relative(item["seg"])
            for key in ("entropy", "uncertain_mm3"):
                values[f"{structure}_{key}"] = str(item[key])
        values["uncertainty"] = str(max(float(item["entropy"]) for item in outputs.values()))
        values["predicted_at"] = values["updated_at"] = now()
        if (self.table["case"] == case).any():
            index = self._row(case)
            if self.table.at[index, "status"] not in ("", "predicted"):
                return  # a case already in correction keeps its state
        else:
            index = len(self.table)
            self.table.loc[index, "status"] = "predicted"
        self._set(index, values)

    def is_recorded(self, case: str, predicted_at: str) -> bool:
        """True when ``case`` has a row no older than a prediction made at ``predicted_at``.

        A case past ``predicted`` (in correction, corrected...) counts as recorded:
        its state wins over newer outputs, as in :meth:`record_prediction`.
        Dates are in the sidecar format (``outputs.DATE_FORMAT``), so they compare as text.
        """
        rows = self.table[self.table["case"] == case]
        if rows.empty:
            return False
        row = rows.iloc[0]
        return row["status"] not in ("", "predicted") or str(row.get("predicted_at", "")) >= predicted_at

    def _set(self, index: int, values: Dict[str, object]) -> None:
        import pandas as pd

        for key, value in values.items():
            if key not in self.table.columns:
                self.table[key] = pd.Series(dtype=object)
            self.table.at[index, key] = value
        self.table = self.table.fillna("")

    def rank(self, random_fraction: float = 0.2, seed: int = 0) -> None:
        """Order cases by uncertainty, most uncertain first, with a random share mixed in.

        Every ``1 / random_fraction``-th position goes to a case drawn at
        random (seeded) from the rest, so that random sampling, competitive in
        the field's experience, keeps its place in the round.
        """
        import pandas as pd

        if not 0.0 <= random_fraction <= 1.0:
            raise SpinalCordSegError(f"random fraction {random_fraction} is not between 0 and 1")
        order = list(self.table.sort_values("uncertainty", ascending=False, kind="stable",
                                            key=lambda column: pd.to_numeric(column)).index)
        rng = np.random.default_rng(seed)
        ranked: List[int] = []
        credit = 0.0
        while order:
            credit += random_fraction
            if credit >= 1.0:
                credit -= 1.0
                ranked.append(order.pop(int(rng.integers(len(order)))))
            else:
                ranked.append(order.pop(0))
        self.table = self.table.loc[ranked].reset_index(drop=True)
        self.table["rank"] = [str(r) for r in range(1, len(ranked) + 1)]

    def next_case(self) -> Optional[str]:
        """The best-ranked case still waiting for a correction, or None."""
        waiting = self.table[self.table["status"].isin(["predicted", "in correction"])]
        if waiting.empty:
            return None
        if "rank" in waiting and (waiting["rank"] != "").all():
            waiting = waiting.sort_values("rank", key=lambda column: column.astype(int))
        return str(waiting.iloc[0]["case"])

    def mark(self, case: str, status: str, rater: str = "", reason: str = "",
             date: Optional[str] = None) -> None:
        """Set a case's status (``excluded`` needs a reason) and save."""
        if status not in STATUSES:
            raise SpinalCordSegError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        if status == "excluded" and not reason:
            raise SpinalCordSegError(f"excluding case {case!r} needs a reason")
        self._set(self._row(case), {"status": status, "rater": rater, "reason": reason,
                                    "updated_at": date or now()})
        self.save()

    def case(self, case: str) -> WorklistCase:
        """The scan and prediction files of ``case``."""
        row = self.table.loc[self._row(case)]
        structures = [s for s in self.structures() if row.get(f"{s}_probseg")]
        return WorklistCase(
            case=case,
            scan=self.absolute(row["scan"]),
            soft_maps={s: self.absolute(row[f"{s}_probseg"]) for s in structures},
            masks={s: self.absolute(row[f"{s}_seg"]) for s in structures},
        )

    def open_next(self, rater: str = "") -> Optional[WorklistCase]:
        """The next case to correct, marked ``in correction`` (by ``rater``); None when all are done."""
        case = self.next_case()
        if case is None:
            return None
        self.mark(case, "in correction", rater=rater)
        return self.case(case)

    def apply_correction_log(self, log: Union[str, Path]) -> List[str]:
        """Mark the cases of a correction log (``correction.LOG_COLUMNS``) corrected; save; return them.

        Cases still waiting (predicted, in correction) become ``corrected``
        with the log's rater and date; each structure's Dice between the
        automatic and the corrected mask goes to ``<s>_correction_dice``.
        Approved or excluded cases keep their status.
        """
        try:
            with open(log, newline="", encoding="utf-8") as stream:
                entries = [{k: spreadsheet_value(v) for k, v in row.items()} for row in csv.DictReader(stream)
                           if row.get("case") and row.get("dice")]
        except (OSError, csv.Error) as error:
            raise SpinalCordSegError(f"{log}: cannot read the correction log ({error})") from error
        known = set(self.table["case"])
        changed: List[str] = []
        for entry in entries:
            if entry["case"] not in known:
                continue
            index = self._row(entry["case"])
            if self.table.at[index, "status"] not in ("predicted", "in correction", "corrected"):
                continue
            self._set(index, {"status": "corrected", "rater": entry.get("rater", ""), "reason": "",
                              "updated_at": entry.get("date") or now(),
                              f"{entry['structure']}_correction_dice": entry["dice"]})
            if entry["case"] not in changed:
                changed.append(entry["case"])
        self.save()
        return changed

    def path_columns(self) -> List[str]:
        """Columns holding paths (relative to the worklist's folder)."""
        return ["scan"] + [c for c in self.table.columns if c.endswith(("_probseg", "_seg"))]

    def merge(self, others: List["Worklist"]) -> List[str]:
        """Add the cases of other worklists (e.g. one per shard) that this one lacks; return them.

        Cases already here keep their row (status, rater, rank); paths are
        rewritten relative to this worklist's folder.
        """
        import pandas as pd

        added: List[str] = []
        known = set(self.table["case"])
        for other in others:
            table = other.table.copy()
            for column in other.path_columns():
                table[column] = [self.relative(other.absolute(v)) if v else "" for v in table[column]]
            new = table[~table["case"].isin(known)]
            known.update(new["case"])
            added += list(new["case"])
            self.table = pd.concat([self.table, new], ignore_index=True).fillna("")
        return added

    def cases(self, statuses=("corrected", "approved")) -> pd.DataFrame:
        """Rows whose status is one of ``statuses``."""
        return self.table[self.table["status"].isin(statuses)]
