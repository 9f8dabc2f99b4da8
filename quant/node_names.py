"""Every node of a graph gets a unique name: ORT's quantizers and fp16 converter select nodes by name."""

from __future__ import annotations

import onnx


def name_nodes(graph: onnx.GraphProto) -> None:
    """Name each unnamed node `{op_type}_{index}` (with `_` appended until unique); named nodes keep theirs."""
    taken = {n.name for n in graph.node if n.name}
    for i, n in enumerate(graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
