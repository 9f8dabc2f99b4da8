"""Convert an fp32 graph to fp16: weights and activations in fp16, the WKV recurrence and its state in float32.

    model16 = convert_fp16(model, arch.version, arch.n_layer)   # = rescale_residual (rescale.py), then to_fp16

The conversion itself is onnxruntime's (onnxruntime.transformers.float16.convert_float_to_float16), told which
nodes stay float32. What stays float32 is the WKV zone: every `rwkv`-domain node, every node between it and the
nearest matrix product before it (the state reads, the decay and bonus computations) and after it (the state
writes, the group norm of its output). That covers what the `rwkv` package keeps in fp32 in its fp16 strategies
(time_decay, time_first, the WKV state, ln_x's group norm, RWKV-7's decay w) and a little more (RWKV-7's key
normalisation and group norm); the matrix products and layer norms, where the time and bytes are, run in fp16.
The rwkv nodes' function bodies are not touched (the converter does not enter model.functions), so they compute
in float32 with their inputs cast up.

Graph inputs and outputs keep their types (input_ids int64, logits and every state tensor float32). The
converter casts each float32 graph input to fp16 and back; a Cast to fp16 followed by a Cast back to fp32 is
folded away afterwards, so the WKV state goes from graph input to graph output without ever being rounded to fp16.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto

from .node_names import name_nodes
from .rescale import rescale_every, rescale_residual

RWKV_DOMAIN = "rwkv"
MATRIX_OPS = ("MatMul", "Gemm", "MatMulNBits", "MatMulInteger")  # where the fp32 zone around a WKV node ends

# How far an fp16 graph may land from its fp32 graph over 32 random tokens at batch 2: logits as
# max|diff| / std(fp32 logits), at the worst step and at the median step; state as max|diff| / max|fp32 state| after
# the last step, per state tensor. The bounds are ~3x the worst measured with true fp16 arithmetic on every
# generation (docs/numerics.md has the measurements; tests/test_fp16.py); scripts/gpu_check.py holds CUDA fp16
# against CPU fp32 to them.
FP16_LOGITS_BOUND = 1e-1  # worst step
FP16_MEDIAN_LOGITS_BOUND = 2e-2  # median step: catches a systematic error that the worst step's slack would hide
FP16_STATE_BOUND = 1e-2


def convert_fp16(model: onnx.ModelProto, version: str, n_layer: int) -> onnx.ModelProto:
    """The fp16 graph of an fp32 graph of RWKV-`version`: rescaled as the `rwkv` package does in fp16 (RWKV-4..6,
    see rescale.py), then converted. `model` is consumed."""
    return to_fp16(rescale_residual(model, n_layer, rescale_every(version)))


def fp16_summary(model: onnx.ModelProto) -> dict:
    """What the conversion did, in the shape of Plan.summary(): nothing quantized, the weights in fp16, the ones the
    WKV zone reads kept float32."""
    half = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    kept = sorted(t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    elements = sum(int(np.prod(t.dims)) for t in half)
    return {
        "quantized": {},
        "fp16": {"tensors": len(half), "elements": elements},
        "kept_float": {n: "read by the WKV zone" for n in kept},
    }


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 graph (a new ModelProto; `model` is consumed). Graph I/O types are unchanged."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    keep = wkv_zone(model)
    _typed(model)
    quiet = logging.getLogger("onnxruntime.transformers.float16")
    level, quiet.level = quiet.level, logging.ERROR  # it logs every initializer shared by fp16 and fp32 nodes
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST),
            node_block_list=sorted(keep),
        )
    finally:
        quiet.level = level
    fold_round_trip_casts(converted.graph)
    topological_sort(converted.graph)
    return converted


def wkv_zone(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that stay float32 (see the module docstring). Unnamed nodes get a name."""
    graph = model.graph
    name_nodes(graph)
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    wkv = [n for n in graph.node if n.domain == RWKV_DOMAIN]
    keep = {n.name for n in wkv}
    for step in (
        lambda n: [producers[i] for i in n.input if i in producers],  # back to the state reads, decay, bonus
        lambda n: [c for o in n.output for c in consumers.get(o, [])],
    ):  # on to the state writes, group norm
        todo, seen = list(wkv), set()
        while todo:
            for m in step(todo.pop()):
                if m.name not in seen and m.op_type not in MATRIX_OPS and m.domain != RWKV_DOMAIN:
                    seen.add(m.name)
                    todo.append(m)
        keep |= seen
    return keep


def fold_round_trip_casts(graph: onnx.GraphProto) -> None:
    """Cast(to fp32) of Cast(to fp16) of a float32 value -> that value, then drop the casts nobody reads."""
    producers = {o: n for n in graph.node for o in n.output}
    float32 = {v.name for v in (*graph.input, *graph.value_info) if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    float32 |= {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    float32 |= {o for n in graph.node if _cast_to(n) == TensorProto.FLOAT for o in n.output}
    outputs = {o.name for o in graph.output}
    rename = {}
    for n in graph.node:
        up = producers.get(n.input[0]) if _cast_to(n) == TensorProto.FLOAT else None
        if up is not None and _cast_to(up) == TensorProto.FLOAT16 and up.input[0] in float32:
            if n.output[0] in outputs:  # a graph output keeps its name: the cast becomes a copy
                n.op_type, n.input[0] = "Identity", up.input[0]
                del n.attribute[:]
            else:
                rename[n.output[0]] = up.input[0]
    for n in graph.node:
        for j, i in enumerate(n.input):
            n.input[j] = rename.get(i, i)
    _drop_dead(graph)


def topological_sort(graph: onnx.GraphProto) -> None:
    """The converter appends its casts at the end of the node list; ONNX wants producers before consumers."""
    produced = {o for n in graph.node for o in n.output}
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for n in pending:
            if all(i in ready or i not in produced for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                waiting.append(n)
        if len(waiting) == len(pending):
            raise ValueError(f"graph has a cycle through {waiting[0].name!r}")
        pending = waiting
    graph.ClearField("node")
    graph.node.extend(ordered)


def _typed(model: onnx.ModelProto) -> None:
    """Give every intermediate value its type (the converter relies on value_info), without shape inference
    copying the weights: they are set aside while onnx infers, so a model over protobuf's 2 GB limit works too."""
    graph = model.graph
    held = {}
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT and t.raw_data and len(t.raw_data) > 1024:
            held[t.name] = t.raw_data
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            t.external_data.add(key="location", value="held-in-memory")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    finally:
        for t in graph.initializer:
            if t.name in held:
                t.raw_data = held[t.name]
                t.data_location = TensorProto.DEFAULT
                del t.external_data[:]
    weights = {t.name for t in graph.initializer}
    graph.ClearField("value_info")  # an initializer listed there would be retyped fp16 even when it stays float32
    graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in weights)
    typed = {v.name for v in (*graph.value_info, *graph.output)}
    missing = [o for n in graph.node for o in n.output if o and o not in typed]
    if missing:
        raise ValueError(f"fp16: onnx could not infer the type of {len(missing)} values (first: {missing[0]!r})")


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove Cast nodes whose outputs nothing reads (what folding left behind)."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)
