"""Trace a step cell with torch's dynamo exporter into an ONNX ModelProto whose WKV is an rwkv-domain node
carrying its model-local function."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch

from rwkv_edge.runtime.manifest import Architecture, StateSpec

from .ops import FUNCTIONS, OPSET, TRANSLATIONS, attach_functions

EXAMPLE_BATCH = 2  # not 1: torch.export would specialize a size-1 axis to a constant


def example_inputs(arch: Architecture, states: list[StateSpec]) -> tuple[torch.Tensor, ...]:
    ids = torch.arange(EXAMPLE_BATCH, dtype=torch.int64) % arch.vocab_size
    return (ids, *(torch.full(s.concrete_shape(EXAMPLE_BATCH), s.init, dtype=torch.float32) for s in states))


def export_step_graph(cell: torch.nn.Module, arch: Architecture, states: list[StateSpec]) -> onnx.ModelProto:
    """input_ids [batch] int64 + states -> logits [batch, vocab] + next states, batch dynamic."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    args = example_inputs(arch, states)
    return _dynamo_export(cell, args, states, tuple({0: batch} for _ in args))


def _dynamo_export(
    cell: torch.nn.Module, args: tuple, states: list[StateSpec], dynamic_shapes: tuple
) -> onnx.ModelProto:
    """torch's dynamo exporter with our names, the WKV translations and opset; WKV functions attached."""
    # The exporter narrates each stage on stdout and warns about things that do not concern us (torchvision
    # ops it cannot find, axis renames); we report progress ourselves.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            cell,
            args,
            dynamo=True,
            input_names=["input_ids", *(s.input for s in states)],
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


EXAMPLE_SEQ = 3  # the sequence graph's example chunk: > 1, so torch.export keeps the axis dynamic


def export_sequence_graph(
    cell: torch.nn.Module, arch: Architecture, states: list[StateSpec], all_positions: bool = False
) -> onnx.ModelProto:
    """The prefill graph: input_ids [batch, seq] int64 + states -> logits [batch, vocab] of the last position
    (or [batch, seq, vocab] with all_positions) + the states after the last token; batch and seq dynamic.
    Same weights, state contract and names as the step graph; the WKV recurrence is one rwkv::WKV*Seq node per
    layer (a Scan over time in its model-local function)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=1 << 20)
    ids, *state_args = example_inputs(arch, states)
    ids = (torch.arange(EXAMPLE_BATCH * EXAMPLE_SEQ, dtype=torch.int64) % arch.vocab_size).view(
        EXAMPLE_BATCH, EXAMPLE_SEQ
    )
    dynamic_shapes = ({0: batch, 1: seq}, *({0: batch} for _ in state_args))
    was, cell.all_positions = cell.all_positions, all_positions
    try:
        return _dynamo_export(cell, (ids, *state_args), states, dynamic_shapes)
    finally:
        cell.all_positions = was
