"""rwkv-export: the command line. It only parses and calls; the work lives in the modules it names.

Commands that need torch import it lazily (inside the command), so `generate` and `inspect` work on a
machine that installed only the runtime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from rwkv_edge.runtime.errors import RWKVEdgeError, ValidationFailed

app = typer.Typer(
    help="Export RWKV checkpoints (RWKV-4 and RWKV-7) to ONNX, prove them equal to the PyTorch original, and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 120)  # tables stay readable in logs and CI


def _steps(title: str):
    """An on_step callback that shows the current step with a spinner (long steps take minutes)."""
    status = err.status(title)
    status.start()

    def on_step(name: str) -> None:
        status.update(f"{title}: {name}")

    on_step.stop = status.stop  # type: ignore[attr-defined]
    return on_step


def _checkpoint_or_default(checkpoint: Optional[Path]) -> Path:
    if checkpoint is not None:
        return checkpoint
    from .default_model import default_checkpoint

    return default_checkpoint()


@app.command()
def export(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="BlinkDL .pth or .safetensors checkpoint. Omit it to export the embedded tiny default model.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Export directory to create (rwkv.json, model.onnx, tokenizer).")] = Path("rwkv-onnx"),
    tokenizer: Annotated[Optional[str], typer.Option(help="world, bytes, or a tokenizer file (.json GPT-NeoX, .txt world vocab). Default: inferred from the vocab size.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in the output directory.")] = False,
):
    """Export a checkpoint's single-step recurrent cell to ONNX (fp32, dynamic batch, WKV as an rwkv-domain op)."""
    from .pipeline import export_checkpoint

    ck = _checkpoint_or_default(checkpoint)
    on_step = _steps(f"exporting {ck.name}")
    try:
        manifest = export_checkpoint(ck, output, tokenizer=tokenizer, overwrite=overwrite, on_step=on_step)
    finally:
        on_step.stop()
    a = manifest.architecture
    out.print(f"exported RWKV-{a.version} (L{a.n_layer} C{a.n_embd} H{a.n_head} N{a.head_size} vocab {a.vocab_size}) to {output}")


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="CHECKPOINT EXPORT_DIR, or just EXPORT_DIR for an export of the embedded default model.", show_default=False)],
    steps: Annotated[int, typer.Option(min=1, help="Tokens to step through.")] = 32,
    batch: Annotated[int, typer.Option(min=2, help="Batch size of the batched run (batch 1 is always run).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random token sequences.")] = 0,
    report: Annotated[Optional[Path], typer.Option(help="Where to write the JSON report. Default: EXPORT_DIR/validation.json")] = None,
):
    """Run the ONNX graph, our PyTorch cell and the `rwkv` package on the same tokens and compare them.

    Exits 1 when an error bound of DESIGN.md section 3 is exceeded."""
    from .report_table import print_validation
    from .validate import validate as run_validation

    if len(paths) > 2:
        raise RWKVEdgeError(f"validate takes CHECKPOINT EXPORT_DIR (2 paths), found {len(paths)}")
    checkpoint, export_dir = (None, paths[0]) if len(paths) == 1 else paths
    checkpoint = _checkpoint_or_default(checkpoint)
    on_step = _steps(f"validating {export_dir}")
    try:
        result = run_validation(checkpoint, export_dir, steps=steps, batch=batch, seed=seed, on_step=on_step)
    finally:
        on_step.stop()
    print_validation(result, out)
    from rwkv_edge.runtime.atomic import write_text_atomic

    report = report or Path(export_dir) / "validation.json"
    write_text_atomic(report, json.dumps(result.to_dict(), indent=2) + "\n")
    out.print(f"report: {report}")
    if not result.passed:
        raise ValidationFailed("validation failed: an error bound is exceeded (see the table above)")


@app.command()
def generate(
    export_dir: Annotated[Path, typer.Argument(help="Export directory (holds rwkv.json).")],
    prompt: Annotated[str, typer.Option(help="Text to continue. Python escapes like \\n are understood.")] = "\n",
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.85,
    top_k: Annotated[int, typer.Option(min=0, help="0 = no top-k cut.")] = 0,
    repetition_penalty: Annotated[float, typer.Option(min=1.0, help="1.0 = off.")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable). Python escapes like \\n are understood.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible sampling.")] = None,
    provider: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="Which graph of the export: fp32, int8, ...")] = "fp32",
):
    """Stream text from an exported model (needs only onnxruntime, not torch)."""
    from rwkv_edge.runtime import RWKVModel, generate as run_generate

    prompt = _unescape(prompt)
    model = RWKVModel.load(export_dir, provider=provider, precision=precision)
    sys.stdout.write(prompt)
    for chunk in run_generate(
        model, model.load_tokenizer(), prompt, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        repetition_penalty=repetition_penalty, stop=[_unescape(s) for s in stop or []], seed=seed,
    ):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _unescape(text: str) -> str:
    """Let a shell user write "\\n" for a newline, as they would in Python."""
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in text else text


@app.command()
def inspect(export_dir: Annotated[Path, typer.Argument(help="Export directory (holds rwkv.json).")]):
    """Show an export: manifest, graph inputs and outputs with shapes, file sizes, opsets."""
    from .report_table import print_inspection
    from rwkv_edge.runtime.inspection import inspect_export

    print_inspection(inspect_export(export_dir), out)


def main() -> None:
    """Entry point: user errors become one line on stderr and an exit code, never a traceback."""
    try:
        app(standalone_mode=False)
    except RWKVEdgeError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
