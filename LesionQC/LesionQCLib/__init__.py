"""LesionQCLib: blinded Likert review of segmentations and analysis of rater tables.

Plain Python (no ``qt``, no ``ctk``): the LesionQC Slicer module and the
``lesionqc`` command line both use it.
"""

__version__ = "0.1.0"
