"""What every command shows: the two consoles, a progress line for long steps, tables at a width that loses nothing,
JSON reports, sizes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.segment import Segment, Segments
from rich.table import Table

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 120)  # tables stay readable in logs and CI
WIDEST = 10_000  # a table's natural width is measured against this


def note(text: str) -> None:
    """One line on stderr, printed as it is (no markup, no wrapping)."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress(title: str) -> Iterator[Callable[[str], None]]:
    """Show `title` with a spinner while the block runs (long steps take minutes); yields the on_step callback
    that names the current step."""
    with err.status(title) as status:
        yield lambda step: status.update(f"{title}: {step}")


def show(table: Table) -> None:
    """Print a table on stdout, fitted to the console where rich can do that by wrapping cells between words; a
    table it could only fit by cutting cells short (an ellipsis) keeps its natural width instead, its lines running
    on as a log's do."""
    natural = list(out.render(table, out.options.update_width(WIDEST)))
    if _cut(list(out.render(table, out.options))) > _cut(natural):
        out.print(Segments(natural), crop=False)
    else:
        out.print(table)


def _cut(segments: list[Segment]) -> int:
    return sum(segment.text.count("…") for segment in segments)


def write_report(path: Path, report: dict) -> None:
    """Write a command's JSON report atomically and say where it is."""
    from rwkv_edge.common.files import write_text_atomic

    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    out.print(f"report: {path}")


def mib(n: float) -> str:
    """A size in bytes as MiB, or KiB below one MiB."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
