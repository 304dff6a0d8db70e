"""Exceptions raised by LesionQCLib.

Every error names the file (manifest, session, key, rater table, scale) and
the problem, so that the ``lesionqc`` command line and the Slicer module can
show it to the user as it is.

Example:
    >>> from LesionQCLib.errors import LesionQCError, ManifestError
    >>> issubclass(ManifestError, LesionQCError)
    True
"""


class LesionQCError(Exception):
    """Base class of the errors that the user can act on."""


class ManifestError(LesionQCError):
    """A manifest is unreadable, has missing files, duplicate case ids or unusable images."""


class ScaleError(LesionQCError):
    """A scale definition (JSON) is malformed."""


class ScoreError(LesionQCError):
    """A score is not a point of the session's scale, or names an unknown structure or flag."""


class SessionError(LesionQCError):
    """A session folder is missing, malformed, or would overwrite existing files."""


class KeyMismatchError(SessionError):
    """A key file does not belong to the session, or its items differ from the session's."""


class RaterTableError(LesionQCError):
    """A rater table is malformed, belongs to another session or rater, or cannot be written."""
