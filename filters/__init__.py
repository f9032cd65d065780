"""The filter packages bundled with fluxscore: ``filters/<name>/<version>/filter.yaml`` and its files.

Filters are data; this module only tells where the bundled ones live and which are there. Loading and
validation belong to :mod:`scoring.package`.
"""

from __future__ import annotations

from pathlib import Path

from scoring.package import BUNDLED_ROOT, available


def bundled_root() -> Path:
    """The directory holding the bundled filter packages."""
    return BUNDLED_ROOT


def list_filters() -> dict[str, list[str]]:
    """Bundled filter name -> its versions, oldest first (as ``scoring.package.available`` orders them)."""
    return {name: [d.name for d in dirs] for name, dirs in available([BUNDLED_ROOT]).items()}
