"""Running a model on a scan.

The engine (``engine``: reorient, crop, nnU-Net, back to the scan's grid), the
cord localizer and sc-crop (``localizer``), crop boxes (``cropping``), the warm
worker process and its client (``worker``), background jobs (``job_runner``),
devices (``devices``) and progress reporting (``progress``).

May import: ``models``, ``imaging`` and the root modules.
"""
