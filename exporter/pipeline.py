"""rwkv-export's export job as named steps: load -> build cell -> export -> attach WKV functions -> save."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import GraphSpec, Manifest

from .cells import build_cell, state_specs
from .checkpoint import load_checkpoint
from .config import Checkpoint
from .export_dir import StagedExport, check_target
from .onnx_export import export_step_graph, save_model
from .ops import OPSET
from .tokenizer_choice import choose_tokenizer, copy_tokenizer

STEP_GRAPH = "model.onnx"


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    tokenizer: str | None = None,
    overwrite: bool = False,
    on_step: Callable[[str], None] = lambda name: None,
) -> Manifest:
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)  # refuse before minutes of work, not after

    on_step("load checkpoint")
    ck = load_checkpoint(checkpoint)
    if ck.variant:
        raise RWKVEdgeError(f"{checkpoint}: RWKV-{ck.arch.version} {ck.variant} checkpoints are not supported yet")
    tok_spec, tok_file = choose_tokenizer(ck.arch, tokenizer)

    on_step("build cell")
    cell = build_cell(ck.weights, ck.arch)
    states = state_specs(ck.arch)

    on_step("export step graph")
    model = export_step_graph(cell, ck.arch, states)  # WKV functions attached
    del cell

    on_step("save")
    with StagedExport(out_dir, overwrite) as stage:
        save_model(model, stage.path / STEP_GRAPH)
        copy_tokenizer(tok_spec, tok_file, stage.path)
        manifest = Manifest(
            architecture=ck.arch,
            tokenizer=tok_spec,
            graphs=[GraphSpec(STEP_GRAPH, "step", "fp32", opset=OPSET)],
            state=states,
            source=provenance(ck),
        )
        stage.commit(manifest)
    return manifest


def provenance(ck: Checkpoint) -> dict:
    path = Path(ck.path)
    return {
        "checkpoint": path.name,
        "sha256": sha256(path) if path.is_file() else None,
        "rwkv_edge": _version("rwkv-edge"),
        "torch": torch.__version__,
        "onnx": _version("onnx"),
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
