"""SpinalCordSegLib: spinal cord and lesion segmentation with nnU-Net v2.

Plain Python (no ``qt``, no ``ctk``): the 3D Slicer module and the
``spinalcordseg`` command line both use it.

Example:
    >>> from SpinalCordSegLib import __version__
    >>> isinstance(__version__, str)
    True
"""

__version__ = "0.1.0"
