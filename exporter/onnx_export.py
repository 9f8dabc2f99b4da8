"""Trace a step cell with torch's dynamo exporter into an ONNX ModelProto whose WKV is an rwkv-domain node
carrying its model-local function; save it (external data when large)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import onnx
import torch

from rwkv_edge.runtime.manifest import Architecture, StateSpec

from .ops import FUNCTIONS, OPSET, TRANSLATIONS, attach_functions

EXAMPLE_BATCH = 2  # not 1: torch.export would specialize a size-1 axis to a constant
EXTERNAL_DATA_BYTES = 1 << 30  # above 1 GiB of weights, store them beside the graph (protobuf caps at 2 GiB)


def example_inputs(arch: Architecture, states: list[StateSpec]) -> tuple[torch.Tensor, ...]:
    ids = torch.arange(EXAMPLE_BATCH, dtype=torch.int64) % arch.vocab_size
    return (ids, *(torch.full(s.concrete_shape(EXAMPLE_BATCH), s.init, dtype=torch.float32) for s in states))


def export_step_graph(cell: torch.nn.Module, arch: Architecture, states: list[StateSpec]) -> onnx.ModelProto:
    """input_ids [batch] int64 + states -> logits [batch, vocab] + next states, batch dynamic."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    args = example_inputs(arch, states)
    input_names = ["input_ids", *(s.input for s in states)]
    dynamic_shapes = tuple({0: batch} for _ in args)
    # The exporter narrates each stage on stdout and warns about things that do not concern us (torchvision
    # ops it cannot find, axis renames); we report progress ourselves.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            cell,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=["logits", *(s.output for s in states)],
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=TRANSLATIONS,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    attach_functions(model, FUNCTIONS)
    model.producer_name = "rwkv-edge"
    return model


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> list[str]:
    """Save `model` at `path`; returns the file names written (the graph, and its data file when large)."""
    path = Path(path)
    if weight_bytes(model) > EXTERNAL_DATA_BYTES:
        data_name = path.name + ".data"
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        return [path.name, data_name]
    onnx.save_model(model, path)
    return [path.name]
