"""Per-user folders of SpinalCordSeg (model cache, settings, trust store).

Defaults follow each platform's conventions through ``platformdirs``; the
environment variable ``SPINALCORDSEG_HOME`` moves everything under one folder
(tests, clusters with a shared project space).

Example:
    >>> import os
    >>> os.environ["SPINALCORDSEG_HOME"] = "/tmp/scs-home"
    >>> from SpinalCordSegLib.paths import models_dir
    >>> str(models_dir())
    '/tmp/scs-home/models'
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "SpinalCordSeg"
HOME_ENV = "SPINALCORDSEG_HOME"
OFFLINE_ENV = "SPINALCORDSEG_OFFLINE"


def _home() -> "Path | None":
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else None


def models_dir() -> Path:
    """Folder where downloaded and installed models live."""
    home = _home()
    return home / "models" if home else Path(platformdirs.user_data_dir(APP_NAME)) / "models"


def config_dir() -> Path:
    """Folder for settings and the trust store."""
    home = _home()
    return home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME))


def cache_dir() -> Path:
    """Folder for partial downloads and other disposable files."""
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME))


def offline() -> bool:
    """True when ``SPINALCORDSEG_OFFLINE`` asks never to touch the network."""
    return os.environ.get(OFFLINE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")
