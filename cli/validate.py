"""rwkv-export validate: fp32 against the exact bounds, or a quantized graph against the quality bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from rwkv_edge.runtime.errors import RWKVEdgeError, ValidationFailed

from .console import out, progress, show, write_report
from .options import checkpoint_or_default
from .tables import quality_table, validation_table


def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="CHECKPOINT EXPORT_DIR, or just EXPORT_DIR for an export of the embedded default model.",
            show_default=False,
        ),
    ],
    steps: Annotated[int, typer.Option(min=1, help="Tokens to step through.")] = 32,
    batch: Annotated[int, typer.Option(min=2, help="Batch size of the batched run (batch 1 is always run).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random token sequences.")] = 0,
    report: Annotated[
        Optional[Path], typer.Option(help="Where to write the JSON report. Default: EXPORT_DIR/validation.json")
    ] = None,
    initial_state: Annotated[
        Optional[Path], typer.Option(help="The state-tuning file the export was made with (export --initial-state).")
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="Which graph: fp32 (exact bounds), or int8 / int8-dynamic / int8-rowwise / int4 / fp16 (quality "
            "bounds on a text: top-1 agreement and perplexity change vs the `rwkv` package)."
        ),
    ] = "fp32",
    text: Annotated[
        Optional[Path], typer.Option(help="UTF-8 text for --precision int8/int4. Default: the built-in held-out text.")
    ] = None,
    max_tokens: Annotated[
        int, typer.Option(min=2, help="Tokens of the text to read for --precision int8/int4.")
    ] = 2048,
):
    """Run the ONNX graph, our PyTorch cell and the `rwkv` package on the same tokens and compare them.

    With --precision int8 (or int4) the quantized graph is held to quality bounds on real text instead.
    Exits 1 when a bound is exceeded."""
    from rwkv_edge.validation.validate import validate as run_validation

    if len(paths) > 2:
        raise RWKVEdgeError(f"validate takes CHECKPOINT EXPORT_DIR (2 paths), found {len(paths)}")
    checkpoint, export_dir = (None, paths[0]) if len(paths) == 1 else paths
    checkpoint = checkpoint_or_default(checkpoint)
    if precision != "fp32":
        return _validate_quantized(checkpoint, export_dir, precision, text, max_tokens, initial_state, report)
    with progress(f"validating {export_dir}") as on_step:
        result = run_validation(
            checkpoint, export_dir, steps=steps, batch=batch, seed=seed, initial_state=initial_state, on_step=on_step
        )
    show(validation_table(result))
    # per-step view of the headline comparison, so drift over time is visible
    head = next((c for c in result.comparisons if c.name.startswith("onnx[opt-all] b=1")), None)
    if head is not None:
        out.print(escape("onnx[opt-all] b=1 vs rwkv, max per step: ") + " ".join(f"{e:.1e}" for e in head.per_step))
    if result.reference_ms_per_token is not None and result.onnx_ms_per_token is not None:
        out.print(
            f"decode ms/token (batch 1, this machine): rwkv package {result.reference_ms_per_token:.2f}, "
            f"ORT fp32 {result.onnx_ms_per_token:.2f} "
            f"({result.reference_ms_per_token / result.onnx_ms_per_token:.2f}x)"
        )
    out.print("[green]PASSED[/]" if result.passed else "[red]FAILED[/]")
    write_report(report or Path(export_dir) / "validation.json", result.to_dict())
    if not result.passed:
        raise ValidationFailed("validation failed: an error bound is exceeded (see the table above)")


def _validate_quantized(
    checkpoint: Path,
    export_dir: Path,
    precision: str,
    text: Optional[Path],
    max_tokens: int,
    initial_state: Optional[Path],
    report: Optional[Path],
) -> None:
    from rwkv_edge.quant.evaluate import read_text
    from rwkv_edge.validation.validate import validate_quantized

    body, name = read_text(text)
    with progress(f"validating the {precision} graph of {export_dir}") as on_step:
        result = validate_quantized(
            checkpoint,
            export_dir,
            precision,
            text=body,
            text_name=name,
            max_tokens=max_tokens,
            initial_state=initial_state,
            on_step=on_step,
        )
    show(quality_table(result))
    for c in result.sequence:  # the prefill graph of this precision vs stepping it: exact bounds
        out.print(
            f"{escape(c.name)}: logits {c.logits_err:.2e}, worst state {max(c.state_err.values()):.2e} "
            f"(bound {c.bound:.0e}) " + ("pass" if c.passed else "FAIL")
        )
    write_report(report or Path(export_dir) / f"validation.{precision}.json", result.to_dict())
    if not all(c.passed for c in result.comparisons):
        raise ValidationFailed(
            f"validation failed: the {precision} graph is outside its quality bounds (see the table above)"
        )
    if not result.passed:
        raise ValidationFailed(
            f"validation failed: the {precision} prefill graph is outside its bound against stepping (see above)"
        )
