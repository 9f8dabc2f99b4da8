"""rwkv-export ort: an export's graphs in ONNX Runtime's ORT format (deploy/ort_format.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .console import mib, out, progress
from .options import ExportDir


def ort(
    export_dir: ExportDir,
    precision: Annotated[
        Optional[list[str]],
        typer.Option(help="Only the graphs of these precisions (repeatable). Default: every graph in rwkv.json."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace .ort files already in the directory.")] = False,
):
    """Convert the graphs of an export to ORT format (model.ort beside model.onnx, ...), list them in rwkv.json, and
    write required_operators.config for a reduced ONNX Runtime build.

    The .ort files are optimized for ONNX Runtime's CPU provider (Python, onnxruntime-node, onnxruntime-web's wasm);
    load them with `generate --format ort` or RWKVModel.load(..., graph_format="ort")."""
    from rwkv_edge.deploy.ort_format import convert_export

    with progress(f"converting {export_dir}") as on_step:
        result = convert_export(export_dir, precision, overwrite=overwrite, on_step=on_step)
    for g in result.graphs:
        out.print(f"wrote {g.file}: {mib(g.bytes)} (from {g.source})")
    out.print(f"wrote {result.config}: the operators of every .ort file rwkv.json lists")
