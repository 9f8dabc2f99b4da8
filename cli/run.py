"""rwkv-export generate and rwkv-export inspect: the commands a runtime-only install has (no torch, no onnx)."""

from __future__ import annotations

import sys
import warnings
from typing import Annotated, Optional

import typer

from .console import note, out, show
from .options import ExportDir, OptimizedCache, Spinning
from .tables import graph_table, state_table


def generate(
    export_dir: ExportDir,
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
    optimized_cache: OptimizedCache = False,
    spinning: Spinning = True,
    graph_format: Annotated[
        str,
        typer.Option(
            "--format", help="onnx: the graphs' .onnx files; ort: their ORT-format files (made by `rwkv-export ort`)."
        ),
    ] = "onnx",
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
            graph_format=graph_format,
        )
        if model.cuda_graph_note:
            note(f"note: {model.cuda_graph_note}")
        before = model.cuda_graph_note
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
    if model.cuda_graph_note != before:  # graphs turned off while decoding
        note(f"note: {model.cuda_graph_note}")


def _unescape(text: str) -> str:
    """Let a shell user write "\\n" for a newline, as they would in Python."""
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in text else text


def inspect(export_dir: ExportDir):
    """Show an export: manifest, graph inputs and outputs with shapes, file sizes, opsets."""
    from rwkv_edge.runtime.inspection import inspect_export

    info = inspect_export(export_dir)
    m = info["manifest"]
    a = m.architecture
    out.print(f"[bold]{info['dir']}[/]  format {m.format}")
    out.print(
        f"RWKV-{a.version}: n_layer {a.n_layer}, n_embd {a.n_embd}, n_head {a.n_head}, head_size {a.head_size}, "
        f"vocab {a.vocab_size}, n_ffn {a.n_ffn}; tokenizer {m.tokenizer.kind}"
        + (f" ({m.tokenizer.file})" if m.tokenizer.file else "")
    )
    show(state_table(m))
    for g in info["graphs"]:
        show(graph_table(g))
        if "opsets" in g:
            out.print(f"  opsets {g['opsets']}; functions {g['functions']}; {g['parameters']:,} parameters")
            out.print("  ops " + ", ".join(f"{k} x{v}" for k, v in g["ops"].items()))
    out.print("files: " + ", ".join(f"{n} ({s / 1e6:.2f} MB)" for n, s in info["files"]))
