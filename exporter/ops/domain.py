"""The `rwkv` ONNX domain: op schemas, and attaching each op's model-local function to an exported model.

The WKV recurrence is one node in the custom domain, so it stays visible in the graph (a runtime may swap in a
fused kernel); the model also carries the op's body as a model-local FunctionProto, so stock ONNX Runtime on
any execution provider inlines it and runs the model with no compiled kernel.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnx.defs import OpSchema

DOMAIN = "rwkv"
DOMAIN_VERSION = 1
OPSET = 18  # the model's default-domain opset; each op's function body is authored at this opset too

rwkv_opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def register_schema(name: str, inputs: list[str], outputs: list[str]) -> None:
    """Declare rwkv::<name> to onnx so the exporter and the checker accept nodes of it (idempotent)."""
    if onnx.defs.has(name, DOMAIN):
        return
    schema = OpSchema(
        name,
        DOMAIN,
        DOMAIN_VERSION,
        inputs=[OpSchema.FormalParameter(n, "T") for n in inputs],
        outputs=[OpSchema.FormalParameter(n, "T") for n in outputs],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "WKV inputs and state")],
    )
    onnx.defs.register_schema(schema)


def attach_functions(model: onnx.ModelProto, functions: dict[str, onnx.FunctionProto]) -> onnx.ModelProto:
    """Add the FunctionProto of every rwkv-domain op the graph uses, and the domain to opset_import."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    missing = used - functions.keys()
    if missing:
        raise ValueError(f"graph uses rwkv ops with no function body: {sorted(missing)}")
    have = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if (DOMAIN, name) not in have:
            model.functions.append(functions[name])
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def renamed_nodes(nodes, ren) -> list[onnx.NodeProto]:
    """Copies of `nodes` with every input and output name passed through `ren`: a function body or a hand-built
    body becoming a subgraph, whose names may not reuse an outer scope's."""
    copies = []
    for node in nodes:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[:] = [ren(x) for x in node.input]
        new.output[:] = [ren(x) for x in node.output]
        copies.append(new)
    return copies
