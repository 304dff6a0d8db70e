"""SpinalCordSegLib: spinal cord and lesion segmentation with nnU-Net v2.

Plain Python (no ``qt``, no ``ctk``): the 3D Slicer module and the
``spinalcordseg`` command line both use it.

One concern per sub-package, in layers; a module imports only its own
sub-package, the layers below it and the root modules (``errors``, ``paths``,
``resources``). Lowest first:

- ``imaging``: read, check and write images and sidecars; grids, names, masks;
- ``models``: catalogue, store, model folders, plans checks, trust, downloads;
- ``inference``: engine, localizer, cropping, worker, jobs, devices, progress;
- ``measures``: morphometrics, lesion metrics, uncertainty;
- ``report``: pictures (the overlay);
- ``rounds``: cohort batch, worklist, corrections, export, drift;
- ``panel``: what the Slicer widget drives (the only MRML code);
- ``cli``: one module per command; nothing imports it.

``Testing/Python/test_layers.py`` holds this order and checks every import.

Example:
    >>> from SpinalCordSegLib import __version__
    >>> isinstance(__version__, str)
    True
"""

__version__ = "0.1.0"
