"""Numbers from masks: cord morphometrics (``morphometrics``), lesion
metrics (``lesion_metrics``) and uncertainty of soft maps (``uncertainty``).

May import: ``inference``, ``models``, ``imaging`` and the root modules.
"""
