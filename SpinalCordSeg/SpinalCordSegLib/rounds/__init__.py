"""The active-learning round: cohort batch (``cohort``), the ranked
worklist (``worklist``), corrections with provenance (``correction``), export
to an nnU-Net raw dataset (``nnunet_export``) and the drift of cord measures
between model versions (``drift``).

May import: ``report``, ``measures``, ``inference``, ``models``, ``imaging``
and the root modules.
"""
