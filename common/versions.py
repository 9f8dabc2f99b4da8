"""Installed versions of the packages an artifact or a report records."""

from __future__ import annotations

from importlib import metadata


def package_version(dist: str) -> str | None:
    """The installed version of distribution `dist` (e.g. "onnxruntime"), or None where it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
