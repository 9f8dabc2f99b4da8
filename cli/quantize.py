"""rwkv-export quantize, and rwkv-export eval (what the quantized copies cost against fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import mib, out, progress, show, write_report
from .options import Precisions
from .tables import eval_table


def quantize(
    export_dir: Annotated[
        Path,
        typer.Argument(
            help="Export directory holding the fp32 model (made by `rwkv-export export`).", show_default=False
        ),
    ],
    scheme: Annotated[
        str,
        typer.Option(
            "--scheme",
            "--to",
            help="int8: weight-only int8, the default and the best speed for its quality on CPU. int8-dynamic: int8 "
            "weights and activations (MatMulInteger, model.int8-dynamic.onnx), fast on CPUs and in wasm; the rows of a "
            "batch slightly affect each other. int8-rowwise: the same with one activation scale per row, so rows stay "
            "independent and a batch runs on the integer GEMM: the serving scheme. "
            "int4: smallest file, least exact. fp16: fp16 weights and activations for GPUs, the WKV state in "
            "float32.",
        ),
    ] = "int8",
    block_size: Annotated[
        int,
        typer.Option(
            help="Weights that share one scale: 16, 32, 64, 128 or 256. Smaller is a bit more exact and a bit larger "
            "and slower."
        ),
    ] = 128,
    keep_float: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Leave a group of weights in float (repeatable): head, emb, lowrank or matrix. For measuring what "
            "each group costs."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a quantized graph of the same precision already in the directory.")
    ] = False,
):
    """Make a smaller, faster copy of an export: model.int8.onnx (or model.int4.onnx, model.fp16.onnx) beside
    model.onnx, listed in rwkv.json.

    The fp32 model is never changed.

    Then compare the precisions with `rwkv-export eval EXPORT_DIR`, and run one with `generate --precision int8`."""
    from rwkv_edge.quant.pipeline import quantize_export

    with progress(f"quantizing {export_dir}") as on_step:
        result = quantize_export(
            export_dir,
            scheme,
            block_size=block_size,
            keep_float=tuple(keep_float or ()),
            overwrite=overwrite,
            on_step=on_step,
        )
    rescale = {g.file: g.rescale_every for g in result.manifest.graphs}
    for g in result.graphs:
        size = f"wrote {g.file}: {mib(g.bytes)} ({g.bytes / g.source_bytes:.0%} of {g.source}'s {mib(g.source_bytes)})"
        if result.scheme == "fp16":
            note = (
                f"residual halved every {rescale[g.file]} layers as the rwkv package does in fp16"
                if rescale[g.file]
                else "no rescale"
            )
            out.print(f"{size}; fp16 ({g.plan['fp16']['tensors']} weights), WKV state float32; {note}")
            continue
        groups = (
            ", ".join(f"{name} int{q['bits']} ({q['tensors']})" for name, q in g.plan["quantized"].items()) or "nothing"
        )
        out.print(f"{size}; scheme {result.scheme}, block {result.block_size}; quantized: {groups}")
    out.print(f"next: rwkv-export eval {export_dir}")


def eval_command(
    export_dir: Annotated[
        Path, typer.Argument(help="Export directory (holds rwkv.json and the graphs to compare).", show_default=False)
    ],
    text: Annotated[
        Optional[Path],
        typer.Option(
            help="UTF-8 text to read. Default: the built-in text, the end of Pride and Prejudice, which the default "
            "model never trained on."
        ),
    ] = None,
    precision: Precisions = None,
    max_tokens: Annotated[int, typer.Option(min=2, help="Read at most this many tokens of the text.")] = 4096,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads (timings depend on it).")] = 2,
    memory: Annotated[bool, typer.Option(help="Also measure each graph's peak memory in a fresh process.")] = True,
    report: Annotated[
        Optional[Path], typer.Option(help="Where to write the JSON report. Default: EXPORT_DIR/eval.json")
    ] = None,
):
    """Compare each precision of an export with fp32 on one text: perplexity, top-1 agreement, size, speed, memory.

    Every step graph in the directory reads the same tokens one at a time (batch 1). Prints a table and writes
    a JSON report."""
    from rwkv_edge.quant.evaluate import evaluate, read_text

    body, name = read_text(text)
    with progress(f"evaluating {export_dir}") as on_step:
        result = evaluate(
            export_dir,
            body,
            text_name=name,
            precisions=precision,
            max_tokens=max_tokens,
            threads=threads,
            memory=memory,
            on_step=on_step,
        )
    show(eval_table(result))
    write_report(report or Path(export_dir) / "eval.json", result.to_dict())
