"""Rich tables for the CLI: validation results and export inspection."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def print_validation(report, console: Console) -> None:
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
    console.print(table)
    # per-step view of the headline comparison, so drift over time is visible
    head = next((c for c in report.comparisons if c.name.startswith("onnx[opt-all] b=1")), None)
    if head is not None:
        console.print(escape("onnx[opt-all] b=1 vs rwkv, max per step: ") + " ".join(f"{e:.1e}" for e in head.per_step))
    if report.reference_ms_per_token is not None and report.onnx_ms_per_token is not None:
        console.print(
            f"decode ms/token (batch 1, this machine): rwkv package {report.reference_ms_per_token:.2f}, "
            f"ORT fp32 {report.onnx_ms_per_token:.2f} ({report.reference_ms_per_token / report.onnx_ms_per_token:.2f}x)"
        )
    console.print("[green]PASSED[/]" if report.passed else "[red]FAILED[/]")


def print_inspection(info: dict, console: Console) -> None:
    m = info["manifest"]
    a = m.architecture
    console.print(f"[bold]{info['dir']}[/]  format {m.format}")
    console.print(
        f"RWKV-{a.version}: n_layer {a.n_layer}, n_embd {a.n_embd}, n_head {a.n_head}, head_size {a.head_size}, "
        f"vocab {a.vocab_size}, n_ffn {a.n_ffn}; tokenizer {m.tokenizer.kind}"
        + (f" ({m.tokenizer.file})" if m.tokenizer.file else "")
    )
    states = Table(title="state")
    for col in ("name", "input", "output", "shape", "dtype", "init"):
        states.add_column(col)
    for s in m.state:
        states.add_row(
            s.name, s.input, s.output, str(s.shape), s.dtype, s.init_file or str(s.init)
        )  # init_file: state-tuned
    console.print(states)
    for g in info["graphs"]:
        t = Table(title=f"{g['file']}: {g['kind']} graph, {g['precision']}, {g['bytes'] / 1e6:.1f} MB")
        t.add_column("io")
        t.add_column("name")
        t.add_column("type")
        t.add_column("shape")
        for name, typ, shape in g["inputs"]:
            t.add_row("in", name, typ, str(shape))
        for name, typ, shape in g["outputs"]:
            t.add_row("out", name, typ, str(shape))
        console.print(t)
        if "opsets" in g:
            console.print(f"  opsets {g['opsets']}; functions {g['functions']}; {g['parameters']:,} parameters")
            console.print("  ops " + ", ".join(f"{k} x{v}" for k, v in g["ops"].items()))
    console.print("files: " + ", ".join(f"{n} ({s / 1e6:.2f} MB)" for n, s in info["files"]))
