"""Locate the data folders (``prompts/``, ``data/``) in a checkout or an installed wheel.

A wheel carries them under ``rag/_bundled/``; an editable install or a source
checkout reads them from the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Path of a bundled data folder, e.g. ``resource_dir("prompts")``."""
    bundled = _PACKAGE_DIR / "_bundled" / name
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / name


def sample_data_dir() -> Path:
    """The sample corpus shipped with the package."""
    return resource_dir("data")
