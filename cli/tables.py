"""Every table a command prints, as rich Tables, and one way to write a table into a file (plain_text)."""

from __future__ import annotations

import io
from copy import copy

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .console import WIDEST, mib


def plain_text(table: Table) -> str:
    """A table as text for a file: its title on a line of its own, then a Markdown table (pipes, a header row),
    without colour, every column at its natural width."""
    flat = copy(table)
    flat.title, flat.box = None, box.MARKDOWN
    console = Console(file=io.StringIO(), width=WIDEST, color_system=None)
    console.print(flat)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    body = "\n".join(lines).strip("\n")
    title = table.title.plain if isinstance(table.title, Text) else Text.from_markup(table.title or "").plain
    return f"{title}\n\n{body}" if title else body


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def validation_table(report) -> Table:
    """`validate` (fp32): each comparison's errors against its bound."""
    table = Table(
        title=f"RWKV-{report.version}: {report.steps} steps, batch 1 and {report.batch} "
        "(errors: logits max|diff|/std(ref), states max|diff|/max|ref|)"
    )
    table.add_column("comparison", no_wrap=True)
    table.add_column("bound", justify="right")
    table.add_column("logits", justify="right")
    table.add_column("allowed", justify="right")  # the bound, or 3x the reference's own fp32 error where larger
    table.add_column("worst state", justify="right", no_wrap=True)
    table.add_column("first divergence")
    table.add_column("ok")
    for c in report.comparisons:
        worst = max(c.state_err, key=c.state_err.get) if c.state_err else None
        table.add_row(
            escape(c.name),
            f"{c.bound:.0e}",
            _fmt(c.logits_err),
            ("median" if c.rule == "median" else _fmt(float(c.step_bounds()[int(np.argmax(c.per_step))])))
            if c.per_step
            else "-",
            f"{worst} {_fmt(c.state_err[worst])}" if worst else "-",
            escape(c.first_divergence or "-"),
            "[green]pass[/]" if c.passed else "[red]FAIL[/]",
        )
    return table


def quality_table(report) -> Table:
    """`validate --precision int8|int4|fp16`: the quantized graph's quality against the rwkv package's."""
    table = Table(title=escape(f"{report.precision} vs the rwkv package on {report.tokens} tokens of {report.text}"))
    for col in ("comparison", "perplexity", "rwkv perplexity", "change", "bound", "top-1 agreement", "bound", "result"):
        table.add_column(col, justify="left" if col in ("comparison", "result") else "right")
    for c in report.comparisons:
        table.add_row(
            escape(c.name),
            f"{c.perplexity:.4f}",
            f"{c.reference_perplexity:.4f}",
            f"{c.perplexity_change:+.2%}",
            f"<= {c.max_perplexity_change:+.1%}",
            f"{c.top1_agreement:.2%}",
            f">= {c.min_top1_agreement:.0%}",
            "pass" if c.passed else "FAIL",
        )
    return table


def eval_table(report) -> Table:
    """`eval`: every precision against fp32 on one text; the peak RSS column when it was measured."""
    fp32 = report.result("fp32")
    memory = any(r.peak_rss_mb is not None for r in report.results)
    table = Table(title=escape(f"{report.tokens} tokens of {report.text}, batch 1, {report.threads} threads"))
    cols = ["precision", "size", "vs fp32", "perplexity", "change", "top-1 agree", "top-1 acc", "ms/token", "speed-up"]
    if memory:
        cols.append("peak RSS")
    for col in cols:
        table.add_column(col, justify="left" if col == "precision" else "right")
    for r in report.results:
        row = [
            r.precision,
            mib(r.bytes),
            f"{r.size_ratio:.0%}",
            f"{r.perplexity:.4g}",
            f"{r.perplexity_change:+.2%}",
            f"{r.top1_agreement:.2%}",
            f"{r.top1_accuracy:.2%}",
            f"{r.ms_per_token:.3f}",
            f"{fp32.ms_per_token / r.ms_per_token:.2f}x",
        ]
        if memory:
            row.append(mib(r.peak_rss_mb * 2**20))
        table.add_row(*row)
    return table


def bench_table(result: dict) -> Table:
    """`bench` (and benchmarks/speed.py): one row per precision of measure.bench.bench_export's result, as returned
    or as read back from its JSON report (prompt lengths as str keys)."""
    spread = result.get("bandwidth_range_gbs")
    at = f"{result['bandwidth_gbs']:g} GB/s" + (f" (median; {spread[0]:g}-{spread[1]:g})" if spread else "")
    table = Table(
        title=escape(
            f"{result['model']}  ({result['machine']['cpu']}, {result['machine']['threads']} threads, "
            f"floor at {at}, {result.get('bandwidth_source', 'given')})"
        )
    )
    lengths = sorted({int(n) for r in result["rows"] for n in r["prefill_tokens_s"]})
    heads = ["precision", "decode ms", "floor ms", "x floor", "kernels ms", "x floor", "probe GB/s", "GB/s"]
    heads += [f"prefill {n} tok/s" for n in lengths]
    heads += ["stepped tok/s", "file MB", "PSS MB", "(step only)", "load s"]
    for head in heads:
        table.add_column(head, justify="left" if head == "precision" else "right")
    for r in result["rows"]:
        pre = {int(k): v for k, v in r["prefill_tokens_s"].items()}
        stepped = {int(k): v for k, v in r["stepped_tokens_s"].items()}
        table.add_row(
            r["precision"],
            f"{r['decode_ms']:.2f}",
            f"{r['floor_ms']:.2f}",
            f"{r['floor_ratio']:.2f}",
            _num(r.get("kernels_ms"), ".2f"),
            _num(r.get("kernels_ratio"), ".2f"),
            _num(r.get("bandwidth_gbs"), ".1f"),
            _num(r.get("effective_gbs"), ".1f"),
            *(_num(pre.get(n), ".1f") for n in lengths),
            _num(stepped.get(min(lengths)) if lengths else None, ".1f"),
            f"{r['file_mb']:.1f}",
            _num(r.get("pss_mb"), ".0f"),
            _num(r.get("pss_step_only_mb"), ".0f"),
            _num(r.get("load_s"), ".2f"),
        )
    return table


def state_table(manifest) -> Table:
    """`inspect`: the recurrent state the manifest declares."""
    table = Table(title="state")
    for col in ("name", "input", "output", "shape", "dtype", "init"):
        table.add_column(col)
    for s in manifest.state:
        table.add_row(
            s.name, s.input, s.output, str(s.shape), s.dtype, s.init_file or str(s.init)
        )  # init_file: state-tuned
    return table


def graph_table(graph: dict) -> Table:
    """`inspect`: one graph's inputs and outputs (runtime.inspection.inspect_export's entry of it)."""
    table = Table(title=f"{graph['file']}: {graph['kind']} graph, {graph['precision']}, {graph['bytes'] / 1e6:.1f} MB")
    for col in ("io", "name", "type", "shape"):
        table.add_column(col)
    for name, typ, shape in graph["inputs"]:
        table.add_row("in", name, typ, str(shape))
    for name, typ, shape in graph["outputs"]:
        table.add_row("out", name, typ, str(shape))
    return table
