"""LesionQC and the correction rounds: sessions from a batch, failed cases back to the round.

- :func:`session_from_worklist`: a blinded session of a batch's predictions
  (``spinalcordseg batch``'s ``worklist.csv``), the source ``model``; where every
  case has corrected or manual masks in ``derivatives/labels`` (where the
  SpinalCordSeg module saves them), those are a second source, ``manual``.
- :func:`failed_cases`: the cases whose model item some rater scored at or below a
  threshold (default 2, "poor"), worst first, with their scores.
- :func:`mark_for_correction`: those cases go first in the round's worklist, with
  the scores in their ``reason``, so that ``spinalcordseg round next`` and the
  Slicer module's Worklist section open them first.
- :func:`write_qc_fail`: the same cases as the Spinal Cord Toolbox's ``qc_fail.yml``
  (``FILES_SEG`` / ``FILES_LESION`` lists of image file names), the ``-config``
  of its ``manual_correction.py``.

Example:
    >>> from LesionQCLib.rounds import session_from_worklist, failed_cases, mark_for_correction
    >>> view = session_from_worklist("derivatives/spinalcordseg/worklist.csv", "qc-round2", seed=3)  # doctest: +SKIP
    >>> # ... raters score the session ...
    >>> from LesionQCLib.analysis import load_inputs
    >>> session, key, tables = load_inputs("qc-round2")                     # doctest: +SKIP
    >>> failures = failed_cases(session, key, tables, threshold=2)          # doctest: +SKIP
    >>> mark_for_correction("derivatives/spinalcordseg/worklist.csv", failures)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from .analysis import merge_ratings, usable_scores
from .errors import LesionQCError
from .rater_table import RaterTable
from .session import (ManifestCase, PathLike, SessionKey, SessionView, build_session, check_cases,
                      refuse_output_in_session)

log = logging.getLogger(__name__)

MODEL_SOURCE = "model"
MANUAL_SOURCE = "manual"
#: Worklist statuses of cases still waiting for a correction (the ones ``round next`` offers).
WAITING = ("predicted", "in correction")
DEFAULT_THRESHOLD = 2



# --------------------------------------------------------------------------- worklist -> session


def worklist_cases(worklist_path: PathLike) -> Tuple[List[ManifestCase], List[str]]:
    """The worklist's cases (excluded ones left out) as session cases, and its structures.

    Each case has the model's masks (label value 1, 2... in the worklist's order
    of structures) and, where every case has them, the corrected ones of
    ``derivatives/labels``.
    """
    from SpinalCordSegLib.errors import SpinalCordSegError
    from SpinalCordSegLib.rounds.nnunet_export import corrected_masks
    from SpinalCordSegLib.imaging.naming import source_name
    from SpinalCordSegLib.rounds.worklist import Worklist

    try:
        worklist = Worklist.load(worklist_path)
    except SpinalCordSegError as error:
        raise LesionQCError(str(error)) from None
    structures = worklist.structures()
    rows = worklist.table[worklist.table["status"] != "excluded"]
    if not structures or rows.empty:
        raise LesionQCError(f"{worklist.path}: no predicted case to review (run 'spinalcordseg batch' first)")
    cases, corrected = [], {}
    for _, row in rows.iterrows():
        case = worklist.case(row["case"])
        model = tuple((value, case.masks[s]) for value, s in enumerate(structures, start=1) if s in case.masks)
        found = corrected_masks(case.scan, case.case, structures)
        corrected[case.case] = tuple((value, found[s]) for value, s in enumerate(structures, start=1) if s in found)
        cases.append(ManifestCase(
            case_id=case.case, image=case.scan, image2=None, segmentations={},
            metadata={"subject": row["subject"], "session": row["session"], "status": row["status"],
                      "contrast": source_name(case.scan).rsplit("_", 1)[-1]},
            where=f"{worklist.path} case {case.case}", label_masks={MODEL_SOURCE: model},
        ))
    with_labels = [c for c in cases if corrected[c.case_id]]
    if with_labels and len(with_labels) < len(cases):
        # Items of one case must not be told apart by their number: one source for all, or two for all.
        log.warning("%s: %d of %d cases have corrected masks in derivatives/labels; reviewing the model's"
                    " masks only", worklist.path, len(with_labels), len(cases))
    elif with_labels:
        cases = [ManifestCase(c.case_id, c.image, c.image2, {}, c.metadata, c.where,
                              {**c.label_masks, MANUAL_SOURCE: corrected[c.case_id]}) for c in cases]
    check_cases(worklist.path, cases)
    return cases, structures


def session_from_worklist(worklist_path: PathLike, session_dir: PathLike, **options) -> SessionView:
    """Build a blinded session of a batch's predictions (see the module docstring).

    ``options`` are :func:`session.build_session`'s (seed, sample, stratify_by,
    scale, key_path, repeat_fraction, key_inside); labels are named after the
    worklist's structures (1 ``sc``, 2 ``lesion``...) unless ``label_names`` says.
    """
    worklist_path = Path(worklist_path)
    cases, structures = worklist_cases(worklist_path)
    options.setdefault("label_names", {value: name for value, name in enumerate(structures, start=1)})
    return build_session(cases, session_dir, {"worklist": worklist_path}, model_source=MODEL_SOURCE, **options)


# --------------------------------------------------------------------------- ratings -> round


@dataclass(frozen=True)
class Failure:
    """A case whose model item scored at or below the threshold."""

    case: str
    image: str  # the scan the session showed
    worst: int
    mean: float
    structures: tuple  # the structures scored at or below the threshold
    reason: str


def failed_cases(session: SessionView, key: SessionKey, tables: Sequence[RaterTable],
                 threshold: int = DEFAULT_THRESHOLD, source: Optional[str] = None,
                 structures: Optional[Sequence[str]] = None) -> List[Failure]:
    """Cases whose ``source`` item (the key's model source by default) any rater scored <= ``threshold``.

    Worst first: lowest score, then lowest mean of the model item's scores.
    Repeated showings count like first ones. ``structures`` limits the scores
    looked at (all of the scale's by default).
    """
    source = source or key.model_source
    if source is None or source not in key.sources:
        raise LesionQCError(f"{key.path}: say which source is the model's output (--source; sources:"
                            f" {', '.join(key.sources)})")
    unknown = sorted(set(structures or ()) - set(session.scale.structure_ids))
    if unknown:
        raise LesionQCError(f"structures {unknown} are not rated on scale {session.scale.id!r}"
                            f" ({', '.join(session.scale.structure_ids)})")
    session.scale.validate_score(threshold, session.scale.structure_ids[0])
    scores = usable_scores(merge_ratings(session, key, tables))
    scores = scores[(scores["source"] == source) & scores["structure"].isin(structures or session.scale.structure_ids)]
    images = {key.case_of.get(c, c): image for c, image in key.images.items()}
    failures = []
    for case, group in scores.groupby("case"):
        if group["score"].min() > threshold:
            continue
        parts = [f"{structure} " + ", ".join(f"{r.score} ({r.rater})" for r in rows.itertuples())
                 for structure, rows in group.groupby("structure", sort=False)]
        failures.append(Failure(
            case=str(case), image=images.get(str(case), ""), worst=int(group["score"].min()),
            mean=float(group["score"].mean()),
            structures=tuple(sorted(group.loc[group["score"] <= threshold, "structure"].unique())),
            reason=f"LesionQC {session.session_id}: {source} scored " + "; ".join(parts) + f" (<= {threshold})",
        ))
    return sorted(failures, key=lambda f: (f.worst, f.mean, f.case))


def mark_for_correction(worklist_path: PathLike, failures: Sequence[Failure]) -> Dict[str, List[str]]:
    """Put the failed cases still waiting first in the worklist, worst first, scores in ``reason``; save.

    Returns ``{"marked": [...], "not waiting": [...], "not in worklist": [...]}``:
    corrected, approved or excluded cases keep their status and place.
    """
    from SpinalCordSegLib.errors import SpinalCordSegError
    from SpinalCordSegLib.imaging.sidecar import now
    from SpinalCordSegLib.rounds.worklist import Worklist

    try:
        worklist = Worklist.load(worklist_path)
    except SpinalCordSegError as error:
        raise LesionQCError(str(error)) from None
    table = worklist.table
    row_of = {case: index for index, case in table["case"].items()}
    outcome: Dict[str, List[str]] = {"marked": [], "not waiting": [], "not in worklist": []}
    for failure in failures:
        if failure.case not in row_of:
            outcome["not in worklist"].append(failure.case)
        elif table.at[row_of[failure.case], "status"] not in WAITING:
            outcome["not waiting"].append(failure.case)
        else:
            table.loc[row_of[failure.case], ["reason", "updated_at"]] = [failure.reason, now()]
            outcome["marked"].append(failure.case)
    if failures and not outcome["marked"] and outcome["not in worklist"]:
        raise LesionQCError(f"{worklist.path}: none of the failed cases ({', '.join(outcome['not in worklist'])})"
                            " is in this worklist")
    # The marked cases first, worst first; then every other case in its former rank order.
    ranks = pd.to_numeric(table["rank"], errors="coerce") if "rank" in table else pd.Series(float("nan"), table.index)
    others = [i for i in ranks.sort_values(kind="stable", na_position="last").index
              if table.at[i, "case"] not in outcome["marked"]]
    order = [row_of[c] for c in outcome["marked"]] + others
    worklist.table = table.loc[order].reset_index(drop=True)
    worklist.table["rank"] = [str(r) for r in range(1, len(order) + 1)]
    worklist.save()
    return outcome


#: Structures of a scale -> the task lists of SCT's manual-correction config.
QC_FAIL_TASKS: Mapping[str, tuple] = {"cord": ("FILES_SEG",), "sc": ("FILES_SEG",), "lesion": ("FILES_LESION",)}


def write_qc_fail(failures: Sequence[Failure], path: PathLike, labels: Mapping[int, str]) -> Path:
    """Write SCT's ``qc_fail.yml``: ``FILES_SEG`` / ``FILES_LESION`` lists of the failed cases' image names.

    A failed ``overall`` score lists the image under every task the session's
    labels cover (the cord, and lesions where a label is named so). The file is
    the ``-config`` of manual-correction's ``manual_correction.py``.
    """
    import yaml
    from SpinalCordSegLib.imaging.fileutil import write_text_atomic

    refuse_output_in_session(path, "the list of failed cases")  # it names the real scans
    overall = ("FILES_SEG",) + (("FILES_LESION",) if any("lesion" in n.lower() for n in labels.values()) else ())
    tasks: Dict[str, List[str]] = {}
    for failure in failures:
        name = Path(failure.image).name
        if not name:
            raise LesionQCError(f"case {failure.case}: the key records no image file")
        for structure in failure.structures:
            for task in QC_FAIL_TASKS.get(structure.lower(), overall):
                if name not in tasks.setdefault(task, []):
                    tasks[task].append(name)
    ordered = {task: tasks[task] for task in ("FILES_SEG", "FILES_LESION") if task in tasks}
    return write_text_atomic(yaml.safe_dump(ordered, default_flow_style=False, sort_keys=False), Path(path))
