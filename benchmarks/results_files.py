"""How a benchmark script leaves its run: its tables printed, and NAME.json (every number) and NAME.md (a header and
the tables) side by side in the results folder, each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from rwkv_edge.cli.tables import plain_text
from rwkv_edge.common.files import write_text_atomic


def write_results(folder: Path, name: str, result: dict, header: str, tables: list[Table]) -> None:
    text = "\n\n".join(plain_text(t) for t in tables)
    print(text)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(folder / f"{name}.md", header.rstrip("\n") + "\n\n" + text + "\n")
