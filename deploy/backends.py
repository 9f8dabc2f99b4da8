"""Which backends run a graph: the kernels it needs, read from the ONNX graph, and the one table that says which
backends run each of them (docs/format.md, "Running beyond CPython").

    needs = graph_needs(onnx.load("out/model.int8.onnx", load_external_data=False))
    # ["com.microsoft.GatherBlockQuantized:bits=8", "com.microsoft.MatMulNBits:bits=8"]
    backends_for(needs)   # ["cpu", "cuda", "node", "wasm", "webgpu"]

A need names a kernel whose support differs between backends: every node outside the standard ONNX domain that is
not one of the model's own functions (the rwkv:: ops, inlined at load), as DOMAIN.OP, with `:bits=B` for the
quantized ones; the standard ops in STANDARD_NEEDS; and "float16" for a graph that computes in float16. Everything
else is standard ONNX at the graph's opset, which every backend runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import onnx

# cpu and cuda: native ONNX Runtime (Python); node: onnxruntime-node; wasm: onnxruntime-web's CPU build;
# webgpu: onnxruntime-web's native WebGPU build (`onnxruntime-web/webgpu`); webgpu-jsep: the default
# `onnxruntime-web` import, whose WebGPU backend is the older JSEP one.
BACKENDS = ("cpu", "cuda", "node", "wasm", "webgpu", "webgpu-jsep")
EVERY = frozenset(BACKENDS)
NO_JSEP = EVERY - {"webgpu-jsep"}

# need -> the backends known to run it. The web entries were run in onnxruntime-web 1.30 (Node for wasm; headless
# Chromium on SwiftShader for the two WebGPU builds) against the CPU's logits; cuda is ONNX Runtime's CUDA kernels
# with its CPU fallback for nodes that have none. A need missing here is known to run nowhere.
TABLE: dict[str, frozenset[str]] = {
    # JSEP: 8 bits refused at load ("Only 2b and 4b quantization is supported"), 4 bits gave wrong logits
    "com.microsoft.MatMulNBits:bits=8": NO_JSEP,
    "com.microsoft.MatMulNBits:bits=4": NO_JSEP,
    "com.microsoft.GatherBlockQuantized:bits=8": EVERY,
    # the int8-dynamic pair: wrong logits on JSEP
    "ai.onnx.MatMulInteger": NO_JSEP,
    "ai.onnx.DynamicQuantizeLinear": NO_JSEP,
    # int8-rowwise (its per-row quantization is plain ONNX): checked on node and wasm, not on either WebGPU build
    "com.microsoft.MatMulIntegerToFloat": frozenset({"cpu", "cuda", "node", "wasm"}),
    # WebGPU computes float16 only on devices with shader-f16, which SwiftShader lacks (the native build refused,
    # JSEP returned zeros): not known to run there
    "float16": frozenset({"cpu", "cuda", "node", "wasm"}),
}
STANDARD_DOMAINS = ("", "ai.onnx")
STANDARD_NEEDS = ("MatMulInteger", "DynamicQuantizeLinear")  # standard ops whose support differs between backends
# com.microsoft ops with a `bits` attribute, and its default in ONNX Runtime's schema
QUANTIZED_OPS = {"MatMulNBits": 4, "GatherBlockQuantized": 4}
FLOAT16 = onnx.TensorProto.FLOAT16


def graph_needs(model: onnx.ModelProto) -> list[str]:
    """The needs of a model (its graph, function bodies and their subgraphs), sorted. Reads no weights: a model
    loaded with load_external_data=False gives the same answer."""
    local = {(f.domain, f.name) for f in model.functions}
    found: set[str] = set()
    for nodes, initializers in _bodies(model):
        found.update(need for need in (_node_need(n, local) for n in nodes) if need is not None)
        if any(_makes_float16(n) for n in nodes) or any(i.data_type == FLOAT16 for i in initializers):
            found.add("float16")
    return sorted(found)


def file_needs(path: str | os.PathLike) -> list[str]:
    """graph_needs of an ONNX file, without reading its external data."""
    return graph_needs(onnx.load(os.fspath(path), load_external_data=False))


def backends_for(needs: Iterable[str]) -> list[str]:
    """The backends known to run every one of `needs`, in BACKENDS order ([]: every backend)."""
    able = set(EVERY)
    for need in needs:
        able &= TABLE.get(need, frozenset())
    return [b for b in BACKENDS if b in able]


def _node_need(node: onnx.NodeProto, local: set[tuple[str, str]]) -> str | None:
    if node.domain in STANDARD_DOMAINS:
        return f"ai.onnx.{node.op_type}" if node.op_type in STANDARD_NEEDS else None
    if (node.domain, node.op_type) in local:
        return None  # the model carries its body: standard ops, inlined at load
    need = f"{node.domain}.{node.op_type}"
    if node.domain == "com.microsoft" and node.op_type in QUANTIZED_OPS:
        bits = next((a.i for a in node.attribute if a.name == "bits"), QUANTIZED_OPS[node.op_type])
        need += f":bits={bits}"
    return need


def _makes_float16(node: onnx.NodeProto) -> bool:
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT16:
            return True
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT16:  # a Constant
            return True
    return False


def _bodies(model: onnx.ModelProto) -> Iterator[tuple[list[onnx.NodeProto], list[onnx.TensorProto]]]:
    """(nodes, initializers) of the main graph, of each function body, and of every subgraph (If, Scan, Loop) in
    them at any depth."""
    todo = [(list(model.graph.node), list(model.graph.initializer))]
    todo += [(list(f.node), []) for f in model.functions]
    while todo:
        nodes, initializers = todo.pop()
        yield nodes, initializers
        for node in nodes:
            for a in node.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                    todo.append((list(sub.node), list(sub.initializer)))
