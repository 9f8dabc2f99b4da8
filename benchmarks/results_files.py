"""How a benchmark script leaves its run: NAME.json (every number) and NAME.md (the header and tables), side by side
in the results folder, each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from rwkv_edge.common.files import write_text_atomic


def write_results(folder: Path, name: str, result: dict, markdown: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(folder / f"{name}.md", markdown.rstrip("\n") + "\n")
