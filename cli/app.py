"""rwkv-export: the command line. It only parses and calls; the work lives in the modules it names.

Commands that need torch import it lazily (inside the command), so `generate` and `inspect` work on a
machine that installed only the runtime.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from rwkv_edge.runtime.errors import RWKVEdgeError, ValidationFailed

app = typer.Typer(
    help="Export RWKV checkpoints (RWKV-4, 5, 5.1, 5.2, 6 and 7) to ONNX, prove them equal to the PyTorch original, and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
# What the `export` extra adds to the runtime's numpy + onnxruntime: the commands that need these import them lazily
EXPORT_MODULES = {"torch", "onnx", "onnxscript", "safetensors"}
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
    from rwkv_edge.exporter.default_model import default_checkpoint

    return default_checkpoint()


@app.command()
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
            help="world, bytes, or a tokenizer file (.json GPT-NeoX, .txt world vocab). Default: inferred from the vocab size."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in the output directory.")] = False,
    initial_state: Annotated[
        Optional[Path],
        typer.Option(
            help="State-tuning file (blocks.{i}.att.time_state tensors, .pth or .safetensors): every sequence starts from it. Default: the checkpoint's own time_state, if any."
        ),
    ] = None,
    prefill: Annotated[
        str,
        typer.Option(
            help="Also export the sequence (prefill) graph prefill.onnx, which feeds prompts in chunks: last (logits of the last position), all (every position, for perplexity), or none."
        ),
    ] = "last",
    dtype: Annotated[
        str,
        typer.Option(
            help="fp32, or fp16: also write model.fp16.onnx (+ prefill.fp16.onnx) for GPUs, fp16 weights and activations with the WKV state in float32 (the fp32 graphs stay: validate and int8 read them)."
        ),
    ] = "fp32",
):
    """Export a checkpoint's single-step recurrent cell to ONNX (fp32, dynamic batch, WKV as an rwkv-domain op),
    and its sequence graph for prompts (sharing the weights)."""
    from rwkv_edge.exporter.pipeline import export_checkpoint

    ck = _checkpoint_or_default(checkpoint)
    on_step = _steps(f"exporting {ck.name}")
    try:
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
    finally:
        on_step.stop()
    a = manifest.architecture
    out.print(
        f"exported RWKV-{a.version} (L{a.n_layer} C{a.n_embd} H{a.n_head} N{a.head_size} vocab {a.vocab_size}) to {output}"
    )


@app.command()
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
            help="Which graph: fp32 (exact bounds), or int8 / int4 (quality bounds on a text: top-1 agreement and perplexity change vs the `rwkv` package)."
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
    Exits 1 when an error bound of DESIGN.md section 3 is exceeded."""
    from rwkv_edge.validation.validate import validate as run_validation

    from .tables import print_validation

    if len(paths) > 2:
        raise RWKVEdgeError(f"validate takes CHECKPOINT EXPORT_DIR (2 paths), found {len(paths)}")
    checkpoint, export_dir = (None, paths[0]) if len(paths) == 1 else paths
    checkpoint = _checkpoint_or_default(checkpoint)
    if precision != "fp32":
        return _validate_quantized(checkpoint, export_dir, precision, text, max_tokens, initial_state, report)
    on_step = _steps(f"validating {export_dir}")
    try:
        result = run_validation(
            checkpoint, export_dir, steps=steps, batch=batch, seed=seed, initial_state=initial_state, on_step=on_step
        )
    finally:
        on_step.stop()
    print_validation(result, out)
    from rwkv_edge.common.files import write_text_atomic

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
    stop: Annotated[
        Optional[list[str]],
        typer.Option(help="Stop when this text appears (repeatable). Python escapes like \\n are understood."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible sampling.")] = None,
    provider: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="Which graph of the export: fp32, int8, ...")] = "fp32",
    cuda_graph: Annotated[
        bool, typer.Option(help="With --provider cuda: capture each decode step as a CUDA graph and replay it.")
    ] = False,
    optimized_cache: Annotated[
        bool,
        typer.Option(
            help="Save ONNX Runtime's optimized graphs for this machine under ~/.cache/rwkv-edge (one more copy of the weights on disk) and load them next time: faster start."
        ),
    ] = False,
    spinning: Annotated[
        bool,
        typer.Option(
            help="Let ONNX Runtime's threads spin between ops (faster on cores free for the model; --no-spinning where other busy work shares them)."
        ),
    ] = True,
):
    """Stream text from an exported model (needs only onnxruntime, not torch)."""
    from rwkv_edge.runtime import RWKVModel
    from rwkv_edge.runtime import generate as run_generate

    prompt = _unescape(prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CUDA graph fallback: said below as one note line
        model = RWKVModel.load(
            export_dir,
            provider=provider,
            precision=precision,
            cuda_graph=cuda_graph,
            optimized_cache=optimized_cache,
            spinning=spinning,
        )
        if model.cuda_graph_note:
            err.print(f"note: {model.cuda_graph_note}", markup=False, highlight=False, soft_wrap=True)
        note = model.cuda_graph_note
        sys.stdout.write(prompt)
        for chunk in run_generate(
            model,
            model.load_tokenizer(),
            prompt,
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            stop=[_unescape(s) for s in stop or []],
            seed=seed,
        ):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        sys.stdout.write("\n")
    if model.cuda_graph_note != note:  # graphs turned off while decoding
        err.print(f"note: {model.cuda_graph_note}", markup=False, highlight=False, soft_wrap=True)


def _unescape(text: str) -> str:
    """Let a shell user write "\\n" for a newline, as they would in Python."""
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in text else text


@app.command()
def inspect(export_dir: Annotated[Path, typer.Argument(help="Export directory (holds rwkv.json).")]):
    """Show an export: manifest, graph inputs and outputs with shapes, file sizes, opsets."""
    from rwkv_edge.runtime.inspection import inspect_export

    from .tables import print_inspection

    print_inspection(inspect_export(export_dir), out)


def _validate_quantized(
    checkpoint: Path,
    export_dir: Path,
    precision: str,
    text: Optional[Path],
    max_tokens: int,
    initial_state: Optional[Path],
    report: Optional[Path],
) -> None:
    from rwkv_edge.common.files import write_text_atomic
    from rwkv_edge.quant.evaluate import read_text
    from rwkv_edge.validation.validate import validate_quantized

    body, name = read_text(text)
    on_step = _steps(f"validating the {precision} graph of {export_dir}")
    try:
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
    finally:
        on_step.stop()
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{precision} vs the rwkv package on {result.tokens} tokens of {result.text}"))
    for col in ("comparison", "perplexity", "rwkv perplexity", "change", "bound", "top-1 agreement", "bound", "result"):
        table.add_column(col, justify="left" if col in ("comparison", "result") else "right")
    for c in result.comparisons:
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
    out.print(table)
    for c in result.sequence:  # the prefill graph of this precision vs stepping it: exact bounds
        out.print(
            f"{escape(c.name)}: logits {c.logits_err:.2e}, worst state {max(c.state_err.values()):.2e} "
            f"(bound {c.bound:.0e}) " + ("pass" if c.passed else "FAIL")
        )
    report = report or Path(export_dir) / f"validation.{precision}.json"
    write_text_atomic(report, json.dumps(result.to_dict(), indent=2) + "\n")
    out.print(f"report: {report}")
    if not result.passed:
        raise ValidationFailed(
            f"validation failed: the {precision} graph is outside its quality bounds (see the table above)"
        )


@app.command()
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
            help="int8: weight-only int8, the default and the best speed for its quality on CPU. int8-dynamic: int8 weights and activations (MatMulInteger), CPU only; the rows of a batch slightly affect each other. int4: smallest file, least exact. fp16: fp16 weights and activations for GPUs, the WKV state in float32.",
        ),
    ] = "int8",
    block_size: Annotated[
        int,
        typer.Option(
            help="Weights that share one scale: 16, 32, 64, 128 or 256. Smaller is a bit more exact and a bit larger and slower."
        ),
    ] = 128,
    keep_float: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Leave a group of weights in float (repeatable): head, emb, lowrank or matrix. For measuring what each group costs."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a quantized graph of the same precision already in the directory.")
    ] = False,
):
    """Make a smaller, faster copy of an export: model.int8.onnx (or model.int4.onnx, model.fp16.onnx) beside model.onnx, listed in rwkv.json.

    The fp32 model is never changed.

    Then compare the precisions with `rwkv-export eval EXPORT_DIR`, and run one with `generate --precision int8`."""
    from rwkv_edge.quant.pipeline import quantize_export

    on_step = _steps(f"quantizing {export_dir}")
    try:
        result = quantize_export(
            export_dir,
            scheme,
            block_size=block_size,
            keep_float=tuple(keep_float or ()),
            overwrite=overwrite,
            on_step=on_step,
        )
    finally:
        on_step.stop()
    rescale = {g.file: g.rescale_every for g in result.manifest.graphs}
    for g in result.graphs:
        size = f"wrote {g.file}: {_mb(g.bytes)} ({g.bytes / g.source_bytes:.0%} of {g.source}'s {_mb(g.source_bytes)})"
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


@app.command("eval")
def eval_command(
    export_dir: Annotated[
        Path, typer.Argument(help="Export directory (holds rwkv.json and the graphs to compare).", show_default=False)
    ],
    text: Annotated[
        Optional[Path],
        typer.Option(
            help="UTF-8 text to read. Default: the built-in text, the end of Pride and Prejudice, which the default model never trained on."
        ),
    ] = None,
    precision: Annotated[
        Optional[list[str]],
        typer.Option(help="Only these precisions (repeatable). Default: every step graph in the directory."),
    ] = None,
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
    from rwkv_edge.common.files import write_text_atomic
    from rwkv_edge.quant.evaluate import evaluate, read_text

    body, name = read_text(text)
    on_step = _steps(f"evaluating {export_dir}")
    try:
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
    finally:
        on_step.stop()
    from rich.markup import escape
    from rich.table import Table

    fp32 = result.result("fp32")
    table = Table(title=escape(f"{result.tokens} tokens of {result.text}, batch 1, {threads} threads"))
    cols = ["precision", "size", "vs fp32", "perplexity", "change", "top-1 agree", "top-1 acc", "ms/token", "speed-up"]
    if memory:
        cols.append("peak RSS")
    for col in cols:
        table.add_column(col, justify="left" if col == "precision" else "right")
    for r in result.results:
        row = [
            r.precision,
            _mb(r.bytes),
            f"{r.size_ratio:.0%}",
            f"{r.perplexity:.4g}",
            f"{r.perplexity_change:+.2%}",
            f"{r.top1_agreement:.2%}",
            f"{r.top1_accuracy:.2%}",
            f"{r.ms_per_token:.3f}",
            f"{fp32.ms_per_token / r.ms_per_token:.2f}x",
        ]
        if memory:
            row.append(_mb(r.peak_rss_mb * 2**20))
        table.add_row(*row)
    out.print(table)
    report = report or Path(export_dir) / "eval.json"
    write_text_atomic(report, json.dumps(result.to_dict(), indent=2) + "\n")
    out.print(f"report: {report}")


@app.command()
def bench(
    export_dir: Annotated[
        Path, typer.Argument(help="Export directory (holds rwkv.json and the graphs to time).", show_default=False)
    ],
    precision: Annotated[
        Optional[list[str]],
        typer.Option(help="Only these precisions (repeatable). Default: every step graph in the directory."),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 2,
    tokens: Annotated[int, typer.Option(min=1, help="Decode tokens timed after the warm-up.")] = 64,
    bandwidth: Annotated[
        Optional[float],
        typer.Option(
            min=0.1,
            help="Memory bandwidth in GB/s, for the floor (bytes of weights a step reads / bandwidth). Default: measured here.",
        ),
    ] = None,
    memory: Annotated[bool, typer.Option(help="Also measure peak memory in a fresh process.")] = True,
    report: Annotated[
        Optional[Path], typer.Option(help="Where to write the JSON report. Default: EXPORT_DIR/bench.json")
    ] = None,
    optimized_cache: Annotated[
        bool,
        typer.Option(
            help="Save ONNX Runtime's optimized graphs for this machine under ~/.cache/rwkv-edge (one more copy of the weights on disk) and load them next time: faster start."
        ),
    ] = False,
    spinning: Annotated[
        bool,
        typer.Option(
            help="Let ONNX Runtime's threads spin between ops (faster on cores free for the model; --no-spinning where other busy work shares them)."
        ),
    ] = True,
    kernels: Annotated[
        bool,
        typer.Option(
            help="Also time the step's weight-reading kernels alone (its MatMuls with nothing else), beside the probe: how much of the gap to the floor is the kernels' (holds a second copy of the weights meanwhile)."
        ),
    ] = True,
):
    """Time an export on this machine, for each precision: decode ms/token, prefill tokens/s at 128 and 512
    tokens (the sequence graph when present, and stepping), the bandwidth floor and the weight kernels alone
    against it, file size, peak memory."""
    from rwkv_edge.common.files import write_text_atomic
    from rwkv_edge.measure.bench import bench_export, format_table

    on_step = _steps(f"timing {export_dir}")
    try:
        result = bench_export(
            export_dir,
            threads=threads,
            tokens=tokens,
            bandwidth_gbs=bandwidth,
            precisions=precision,
            memory=memory,
            optimized_cache=optimized_cache,
            spinning=spinning,
            kernel_probe=kernels,
            on_step=on_step,
        )
    finally:
        on_step.stop()
    result = json.loads(json.dumps(result))
    out.print(format_table(result), markup=False, highlight=False, soft_wrap=True)
    report = report or Path(export_dir) / "bench.json"
    write_text_atomic(report, json.dumps(result, indent=2) + "\n")
    out.print(f"report: {report}")


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


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
    except ModuleNotFoundError as e:
        if e.name not in EXPORT_MODULES:
            raise
        hint = (
            "pip install onnx (export, quantize and validate need all of 'rwkv-edge[export]')"
            if e.name == "onnx"
            else "pip install 'rwkv-edge[export]'"
        )
        err.print(
            f"error: this command needs the {e.name} package, which a runtime-only install lacks: {hint}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except Exception as e:
        if not _is_usage_error(e):
            raise
        ctx = getattr(e, "ctx", None)  # usage errors know their command: point at its --help
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"error: {e.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


def _is_usage_error(e: Exception) -> bool:
    """A bad option or argument. Recent typer raises the exceptions of the click it vendors (subclasses of
    typer.TyperException), older ones click's: both are recognized."""
    kinds = tuple(k for k in (getattr(typer, "TyperException", None),) if k is not None)
    try:
        import click

        kinds += (click.ClickException,)
    except ImportError:
        pass
    return isinstance(e, kinds) and hasattr(e, "format_message") and hasattr(e, "exit_code")


if __name__ == "__main__":
    main()
