"""cli/tables.py and cli/console.py: tables show every cell whole, on a console of any width and in a file."""

import io
import json

from rich.console import Console
from rich.table import Table

from rwkv_edge.cli import console
from rwkv_edge.cli.tables import bench_table, plain_text

RESULT = {
    "model": "RWKV-7 L2 C64 vocab 301",
    "machine": {"cpu": "test cpu", "threads": 2},
    "bandwidth_gbs": 40.0,
    "bandwidth_range_gbs": [38.5, 41.2],
    "bandwidth_source": "measured",
    "rows": [
        {
            "precision": "fp32",
            "decode_ms": 14.071,
            "floor_ms": 13.342,
            "floor_ratio": 1.06,
            "kernels_ms": None,
            "kernels_ratio": None,
            "bandwidth_gbs": 42.2,
            "effective_gbs": 40.0,
            "prefill_tokens_s": {128: 1510.3, 512: 1525.8},
            "stepped_tokens_s": {128: 67.9, 512: 71.1},
            "file_mb": 765.8,
            "pss_mb": 655.4,
            "pss_step_only_mb": None,
            "load_s": 0.671,
        }
    ],
}


def test_bench_table_as_text_for_a_file():
    text = plain_text(bench_table(RESULT))
    title, blank, head, rule, row = text.splitlines()
    assert title == "RWKV-7 L2 C64 vocab 301  (test cpu, 2 threads, floor at 40 GB/s (median; 38.5-41.2), measured)"
    assert blank == "" and set(rule) == {"|", "-"}
    cells = [c.strip() for c in row.strip("|").split("|")]
    heads = [c.strip() for c in head.strip("|").split("|")]
    assert dict(zip(heads[:4], cells[:4])) == {
        "precision": "fp32",
        "decode ms": "14.07",
        "floor ms": "13.34",
        "x floor": "1.06",
    }
    assert cells[heads.index("prefill 512 tok/s")] == "1525.8" and cells[heads.index("stepped tok/s")] == "67.9"
    assert cells[heads.index("kernels ms")] == "-" and cells[heads.index("load s")] == "0.67"
    assert not any(line != line.rstrip() for line in text.splitlines())
    # the JSON report read back (prompt lengths as str keys) gives the same table
    assert plain_text(bench_table(json.loads(json.dumps(RESULT)))) == text


def shown(table: Table, width: int) -> str:
    saved = console.out
    console.out = Console(file=io.StringIO(), width=width, color_system=None)
    try:
        console.show(table)
        return console.out.file.getvalue()
    finally:
        console.out = saved


def test_show_never_cuts_a_cell():
    wide = shown(bench_table(RESULT), 80)  # far wider than 80 columns: kept at its natural width
    assert "…" not in wide and "1525.8" in wide and "precision" in wide
    assert max(map(len, wide.splitlines())) > 80
    words = Table("name", "words")
    words.add_row("fp32", "a cell of many short words that wrap between words")
    fitted = shown(words, 30)  # wraps between words: fitted to the console
    assert "…" not in fitted and max(map(len, fitted.splitlines())) <= 30
