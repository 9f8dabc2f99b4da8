"""rwkv.json files that tests break on purpose: the session-end schema check in conftest.py expects each of these
to be refused by the schema, and every other manifest under the session's temporary folder to pass it."""

from __future__ import annotations

import json
from pathlib import Path

BROKEN: set[Path] = set()


def write_broken_manifest(directory: str | Path, manifest) -> Path:
    """Write `manifest` (any JSON value) as directory/rwkv.json and note it as broken on purpose."""
    path = Path(directory) / "rwkv.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    BROKEN.add(path.resolve())
    return path
