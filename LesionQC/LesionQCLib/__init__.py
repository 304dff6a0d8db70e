"""LesionQCLib: blinded Likert review of segmentations and analysis of rater tables.

Plain Python (no ``qt``, no ``ctk``): the LesionQC Slicer module and the
``lesionqc`` command line both use it.

- ``scales``: rating scales (JSON): points with anchors, structures, flags.
- ``session``: manifest -> blinded session folder (``session.json``) and its key.
- ``rater_table``: one append-only, crash-safe CSV per rater.
- ``review_state``: the rating panel's state (position, scores, what comes next).
- ``analysis``: per-source scores, Wilcoxon tests, kappa, ICC, Krippendorff's alpha, intra-rater agreement, plots.
- ``rounds``: sessions from a batch's worklist; failed cases back to the worklist and to SCT's qc_fail.yml.
- ``cli``: the ``lesionqc`` command (make-session, status, analyze, to-worklist, qc-fail, serve).
- ``web``: ``lesionqc serve``, the rating page in a web browser (Flask; imported by that command only).
- ``slicer_scene``: the only module importing ``slicer``: a case in the MRML scene.
"""

__version__ = "0.1.0"
