"""After a quantizer ran: put back what the artifact contract needs and a quantizer may drop or mangle.

An exported graph carries its WKV recurrence as an `rwkv`-domain node plus a model-local FunctionProto with its
body (docs/format.md); stock ONNX Runtime inlines the function. Quantizers rebuild models from their own
wrappers: the function list, the `rwkv` opset import, or the node names can come back changed. This transform
restores them from the fp32 model and checks the result:

- every FunctionProto of the original is present, unchanged (added back if missing);
- the opset imports of the original are present at their versions, plus com.microsoft when a contrib op is used;
- the rwkv-domain nodes are the same, in number and op type, as in the original.
"""

from __future__ import annotations

import copy

import onnx
from onnx import helper

from rwkv_edge.runtime.errors import RWKVEdgeError

MS_DOMAIN = "com.microsoft"


def restore_contract(quantized: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Restore functions and opset imports of `original` into `quantized` (in place); returns it."""
    have = {(f.domain, f.name): f for f in quantized.functions}
    for f in original.functions:
        if have.get((f.domain, f.name)) != f:
            for i, g in enumerate(quantized.functions):
                if (g.domain, g.name) == (f.domain, f.name):
                    del quantized.functions[i]
                    break
            quantized.functions.append(copy.deepcopy(f))

    versions = {o.domain: o.version for o in quantized.opset_import}
    for o in original.opset_import:
        if o.domain not in versions:
            quantized.opset_import.append(helper.make_opsetid(o.domain, o.version))
        elif versions[o.domain] != o.version and o.domain in {f.domain for f in original.functions}:
            _set_opset(quantized, o.domain, o.version)
    if any(n.domain == MS_DOMAIN for n in quantized.graph.node) and MS_DOMAIN not in {
        o.domain for o in quantized.opset_import
    }:
        quantized.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    quantized.ir_version = max(quantized.ir_version, original.ir_version)
    check_contract(quantized, original)
    return quantized


def check_contract(quantized: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """The quantized graph has the original's custom-domain nodes, their functions, and its graph I/O."""
    custom = {f.domain for f in original.functions}
    want = sorted((n.domain, n.op_type) for n in original.graph.node if n.domain in custom)
    got = sorted((n.domain, n.op_type) for n in quantized.graph.node if n.domain in custom)
    if want != got:
        raise RWKVEdgeError(
            f"quantization changed the WKV nodes: expected {len(want)} {_ops(want)}, found {len(got)} {_ops(got)}"
        )
    functions = {(f.domain, f.name) for f in quantized.functions}
    missing = sorted({(d, t) for d, t in want} - functions)
    if missing:
        raise RWKVEdgeError(f"quantized graph lacks the function body of {', '.join(f'{d}::{t}' for d, t in missing)}")
    for kind in ("input", "output"):
        a = [v.name for v in getattr(original.graph, kind)]
        b = [v.name for v in getattr(quantized.graph, kind)]
        if a != b:
            raise RWKVEdgeError(f"quantization changed the graph {kind}s: expected {a}, found {b}")


def _set_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for o in model.opset_import:
        if o.domain == domain:
            o.version = version


def _ops(pairs) -> str:
    return ", ".join(sorted({f"{d}::{t}" for d, t in pairs})) or "none"
