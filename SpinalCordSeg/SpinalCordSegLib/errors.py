"""Exceptions raised by SpinalCordSegLib.

Every error names the file (or model, or URL) and the problem, so that the
command line and the Slicer module can show it to the user as it is.
"""


class SpinalCordSegError(Exception):
    """Base class of the errors that the user can act on."""


class InputImageError(SpinalCordSegError):
    """A scan or mask cannot be used (not 3D, NaN, empty, unreadable, grids differ...)."""


class ModelFolderError(SpinalCordSegError):
    """An nnU-Net results folder is missing, incomplete or inconsistent."""


class ModelInstallError(SpinalCordSegError):
    """A model could not be downloaded, verified, extracted or installed."""


class UntrustedModelError(SpinalCordSegError):
    """A model folder's files are not trusted yet (checkpoints are pickled code): ask the user first."""


class DeviceUnavailableError(SpinalCordSegError):
    """An explicitly requested device (``cuda``, ``mps``) is not there; only ``auto`` falls back to the CPU."""


class CancelledError(SpinalCordSegError):
    """The user cancelled a running job."""


class FileWriteError(SpinalCordSegError, OSError):
    """A file could not be written completely (disk full, no permission...); nothing was left under its name.

    Also an OSError, so that code catching OSError (LesionQC) handles it as before.
    """
