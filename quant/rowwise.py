"""Row-wise dynamic int8: dynamic.py's int8 weights, with the activation quantized per row (one scale per token of
a batch) instead of per tensor, so that the rows of a batch never interact (docs/format.md) and a batch of sixteen
runs on the integer GEMM. This is the serving scheme: weight-only int8 (MatMulNBits) is the fastest single stream on
x86, but its kernel does not get cheaper per row with the batch, and per-tensor dynamic int8 mixes the rows.

Each MatMul becomes, for x [..., K] (a step's [B, K], a sequence's [B, T, K]):

    s = max(max|x| over K, tiny) / 127                  [..., 1]    the row's scale
    q = uint8(round(x / s) + 128)                       [..., K]    symmetric, stored with the zero point 128
    y = MatMulIntegerToFloat(q, W_q, 1, w_scale, 128) * s           (q - 128) @ W_q summed exactly in int32

The int32 sums are exact, so a row's result does not depend on the batch around it: a row alone and in a batch of
sixteen are bit-identical. The weights are dynamic.py's (7-bit per output column, for x86 without VNNI). The scale
multiply is written out after com.microsoft.MatMulIntegerToFloat rather than left to ONNX Runtime's graph optimizer:
its fusion of MatMulInteger -> Cast -> Mul into that op (ONNX Runtime 1.32) takes a per-row activation scale for a
per-tensor one and gives wrong logits (measured: 0.27 of the logits' std from fp32, against 0.07 unfused).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .dynamic import quantize_dynamic_int8
from .policy import Site

LEVELS = 127  # symmetric: |q - 128| <= 127, so uint8 holds it and a pair of products stays inside int16 (7-bit weights)
TINY = 1e-30  # an all-zero row quantizes to zeros instead of dividing by zero
CONSTANTS = {
    "rowwise_axes": np.array([-1], np.int64),
    "rowwise_tiny": np.array(TINY, np.float32),
    "rowwise_levels": np.array(LEVELS, np.float32),
    "rowwise_offset": np.array(128, np.float32),
    "rowwise_zero_point": np.array(128, np.uint8),
    "rowwise_one": np.array(1.0, np.float32),
}


def quantize_rowwise_int8(model: onnx.ModelProto, sites: list[Site]) -> onnx.ModelProto:
    """Quantize the MatMuls in `sites` (bits must be 8) with per-row activations; returns a new model."""
    model = quantize_dynamic_int8(model, sites)
    if sites:
        per_row_activations(model)
    return model


def per_row_activations(model: onnx.ModelProto) -> None:
    """Rewrite quantize_dynamic's pattern in place: each DynamicQuantizeLinear becomes the per-row quantization,
    and each MatMulInteger -> Cast -> Mul(scale) it feeds becomes MatMulIntegerToFloat -> Mul(row scale)."""
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    initializers = {t.name for t in graph.initializer}

    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of an old node -> the nodes in its place
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        x, (q, scale, _zero_point) = node.input[0], node.output
        replaced[id(node)] = _quantize_rows(node.name, x, q, scale, opset)
        for matmul in consumers.get(q, []):
            if matmul.op_type != "MatMulInteger":
                raise ValueError(f"{node.name}: its output feeds {matmul.op_type}, not MatMulInteger")
            cast = _single(consumers, matmul.output[0], "Cast")
            mul = _single(consumers, cast.output[0], "Mul")
            scales = producers[next(i for i in mul.input if i != cast.output[0])]  # Mul(activation scale, w_scale)
            w_scale = next(i for i in scales.input if i != scale)
            if w_scale not in initializers or scales.op_type != "Mul":
                raise ValueError(f"{matmul.name}: unexpected scale pattern {scales.op_type}({list(scales.input)})")
            w_q, w_zero_point = matmul.input[1], matmul.input[3] if len(matmul.input) > 3 else ""
            unscaled = matmul.output[0] + "_per_row"
            replaced[id(matmul)] = [
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [q, w_q, "rowwise_one", w_scale, "rowwise_zero_point", w_zero_point],
                    [unscaled],
                    name=matmul.name,
                    domain="com.microsoft",
                ),
                helper.make_node("Mul", [unscaled, scale], list(mul.output), name=mul.name),
            ]
            dropped.update((id(cast), id(mul)))
            if all(id(c) in dropped or c is mul for c in consumers[scales.output[0]]):
                dropped.add(id(scales))

    nodes = []
    for n in graph.node:
        if id(n) in replaced:
            nodes += replaced[id(n)]
        elif id(n) not in dropped:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in CONSTANTS.items())
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _quantize_rows(prefix: str, x: str, q: str, scale: str, opset: int) -> list[onnx.NodeProto]:
    def name(step: str) -> str:
        return f"{prefix}_rows_{step}"

    if opset >= 18:  # ReduceMax's axes became an input
        reduce = helper.make_node("ReduceMax", [name("abs"), "rowwise_axes"], [name("max")], name=name("max"))
    else:
        reduce = helper.make_node("ReduceMax", [name("abs")], [name("max")], name=name("max"), axes=[-1])
    reduce.attribute.append(helper.make_attribute("keepdims", 1))
    return [
        helper.make_node("Abs", [x], [name("abs")], name=name("abs")),
        reduce,
        helper.make_node("Max", [name("max"), "rowwise_tiny"], [name("nonzero")], name=name("nonzero")),
        helper.make_node("Div", [name("nonzero"), "rowwise_levels"], [scale], name=name("scale")),
        helper.make_node("Div", [x, scale], [name("scaled")], name=name("scaled")),
        helper.make_node("Round", [name("scaled")], [name("rounded")], name=name("rounded")),
        helper.make_node("Add", [name("rounded"), "rowwise_offset"], [name("offset")], name=name("offset")),
        helper.make_node("Cast", [name("offset")], [q], name=name("cast"), to=TensorProto.UINT8),
    ]


def _single(consumers: dict[str, list[onnx.NodeProto]], name: str, op_type: str) -> onnx.NodeProto:
    found = consumers.get(name, [])
    if len(found) != 1 or found[0].op_type != op_type:
        raise ValueError(f"{name}: expected one {op_type} consumer, found {[n.op_type for n in found]}")
    return found[0]
