"""rwkv-export export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import out, progress
from .options import checkpoint_or_default


def export(
    checkpoint: Annotated[
        Optional[Path],
        typer.Argument(
            help="BlinkDL .pth or .safetensors checkpoint. Omit it to export the embedded tiny default model."
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Export directory to create (rwkv.json, model.onnx, tokenizer).")
    ] = Path("rwkv-onnx"),
    tokenizer: Annotated[
        Optional[str],
        typer.Option(
            help="world, bytes, or a tokenizer file (.json GPT-NeoX, .txt world vocab). "
            "Default: inferred from the vocab size."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in the output directory.")] = False,
    initial_state: Annotated[
        Optional[Path],
        typer.Option(
            help="State-tuning file (blocks.{i}.att.time_state tensors, .pth or .safetensors): every sequence "
            "starts from it. Default: the checkpoint's own time_state, if any."
        ),
    ] = None,
    prefill: Annotated[
        str,
        typer.Option(
            help="Also export the sequence (prefill) graph prefill.onnx, which feeds prompts in chunks: last (logits "
            "of the last position), all (every position, for perplexity), or none."
        ),
    ] = "last",
    dtype: Annotated[
        str,
        typer.Option(
            help="fp32, or fp16: also write model.fp16.onnx (+ prefill.fp16.onnx) for GPUs, fp16 weights and "
            "activations with the WKV state in float32 (the fp32 graphs stay: validate and int8 read them)."
        ),
    ] = "fp32",
):
    """Export a checkpoint's single-step recurrent cell to ONNX (fp32, dynamic batch, WKV as an rwkv-domain op),
    and its sequence graph for prompts (sharing the weights)."""
    from rwkv_edge.exporter.pipeline import export_checkpoint

    ck = checkpoint_or_default(checkpoint)
    with progress(f"exporting {ck.name}") as on_step:
        manifest = export_checkpoint(
            ck,
            output,
            tokenizer=tokenizer,
            overwrite=overwrite,
            initial_state=initial_state,
            on_step=on_step,
            prefill=None if prefill == "none" else prefill,
            dtype=dtype,
        )
    a = manifest.architecture
    out.print(
        f"exported RWKV-{a.version} (L{a.n_layer} C{a.n_embd} H{a.n_head} N{a.head_size} vocab {a.vocab_size}) "
        f"to {output}"
    )
