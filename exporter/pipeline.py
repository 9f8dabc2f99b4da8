"""rwkv-export's export job as named steps: load -> initial state -> build cell -> export -> attach WKV functions
-> save (-> fp16 siblings, with dtype="fp16")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rwkv_edge.common.files import sha256_file
from rwkv_edge.common.onnx_files import GraphWriter
from rwkv_edge.common.versions import package_version
from rwkv_edge.deploy.backends import backends_for, graph_needs
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import GraphSpec, Manifest

from .cells import build_cell, state_specs
from .checkpoint import load_checkpoint
from .config import Checkpoint
from .export_dir import StagedExport, check_target
from .onnx_export import export_sequence_graph, export_step_graph
from .ops import OPSET
from .state_tuning import initial_values, save_initial_values, time_state_tensors, with_init_files
from .tokenizer_choice import choose_tokenizer, copy_tokenizer

STEP_GRAPH = "model.onnx"
SEQUENCE_GRAPH = "prefill.onnx"
PREFILL_LOGITS = ("last", "all")  # export_checkpoint(prefill=...): which positions' logits the sequence graph returns
DTYPES = ("fp32", "fp16")  # export_checkpoint(dtype=...): fp16 also writes the fp16 graphs beside the fp32 ones
SUPPORTED_VARIANTS = (("7", "deepembed"),)  # (version, Checkpoint.variant) pairs whose cell implements the variant


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    tokenizer: str | None = None,
    overwrite: bool = False,
    initial_state: str | Path | None = None,
    on_step: Callable[[str], None] = lambda name: None,
    prefill: str | None = None,
    dtype: str = "fp32",
) -> Manifest:
    """`initial_state`: a state-tuning file (blocks.{i}.att.time_state tensors) to start every sequence from;
    without it, a state-tuned checkpoint's own time_state is used (see state_tuning.py).
    `prefill`: also export the sequence graph prefill.onnx, returning the logits of the "last" position or of
    "all" positions; None: the step graph only.
    `dtype`: "fp16" also writes model.fp16.onnx (and prefill.fp16.onnx) from the fp32 graphs, which stay: validate
    and int8 read them (quant/fp16.py)."""
    out_dir = Path(out_dir)
    if prefill is not None and prefill not in PREFILL_LOGITS:
        raise RWKVEdgeError(f"prefill must be one of {PREFILL_LOGITS} or None, found {prefill!r}")
    if dtype not in DTYPES:
        raise RWKVEdgeError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
    check_target(out_dir, overwrite)  # refuse before minutes of work, not after

    on_step("load checkpoint")
    ck = load_checkpoint(checkpoint)
    if ck.variant and (ck.arch.version, ck.variant) not in SUPPORTED_VARIANTS:
        raise RWKVEdgeError(
            f"{checkpoint}: RWKV-{ck.arch.version} {ck.variant} checkpoints are not supported "
            f"(supported variants: {', '.join(f'RWKV-{v} {n}' for v, n in SUPPORTED_VARIANTS)})"
        )
    tok_spec, tok_file = choose_tokenizer(ck.arch, tokenizer)

    on_step("initial state")
    tuned = time_state_tensors(ck, initial_state)
    init_values = initial_values(tuned, ck.arch) if tuned is not None else {}

    on_step("build cell")
    cell = build_cell(ck.weights, ck.arch)
    states = state_specs(ck.arch)

    on_step("export step graph")
    model = export_step_graph(cell, ck.arch, states)  # WKV functions attached
    sequence = None
    if prefill is not None:
        on_step("export sequence graph")
        sequence = export_sequence_graph(cell, ck.arch, states, all_positions=prefill == "all")
    del cell

    on_step("save")
    with StagedExport(out_dir, overwrite) as stage:
        needs = graph_needs(model)  # [] for fp32: standard ONNX and the rwkv functions
        graphs = [GraphSpec(STEP_GRAPH, "step", "fp32", opset=OPSET, needs=needs, backends=backends_for(needs))]
        writer = GraphWriter(stage.path)
        writer.save(model, STEP_GRAPH)
        if sequence is not None:
            writer.save(sequence, SEQUENCE_GRAPH)  # reads the step graph's data file: one copy of the weights
            needs = graph_needs(sequence)
            graphs.append(
                GraphSpec(
                    SEQUENCE_GRAPH,
                    "sequence",
                    "fp32",
                    opset=OPSET,
                    logits=prefill,
                    needs=needs,
                    backends=backends_for(needs),
                )
            )
        copy_tokenizer(tok_spec, tok_file, stage.path)
        save_initial_values(init_values, stage.path)
        manifest = Manifest(
            architecture=ck.arch,
            tokenizer=tok_spec,
            graphs=graphs,
            state=with_init_files(states, init_values),
            source=provenance(ck, initial_state if tuned is not None else None),
        )
        stage.commit(manifest)

    if dtype == "fp16":
        from rwkv_edge.quant.pipeline import quantize_export

        # the directory holds only what was just committed, so any fp16 file there is a leftover to replace
        manifest = quantize_export(out_dir, "fp16", overwrite=True, on_step=on_step).manifest
    return manifest


def provenance(ck: Checkpoint, initial_state: str | Path | None = None) -> dict:
    path = Path(ck.path)
    out = {
        "checkpoint": path.name,
        "sha256": sha256_file(path) if path.is_file() else None,
        "rwkv_edge": package_version("rwkv-edge"),
        "torch": torch.__version__,
        "onnx": package_version("onnx"),
    }
    if ck.variant:
        out["variant"] = ck.variant
    if initial_state is not None:  # a separate state-tuning file (a checkpoint's own time_state needs no note)
        out["initial_state"] = {"file": Path(initial_state).name, "sha256": sha256_file(initial_state)}
    elif ck.has_time_state:
        out["initial_state"] = {"file": path.name, "from": "checkpoint time_state"}
    return out
