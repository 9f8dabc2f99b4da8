"""Rescale the residual stream for fp16, the way the `rwkv` package does (its RESCALE_LAYER, 6 in fp16 strategies).

In fp16 the residual stream x of a deep RWKV-4..6 model grows past 65504 (fp16's largest value) and becomes inf.
The package halves x after every `every` layers and divides the two projections that write into it, in layer i,
by the same 2 ** (i // every), so x stays 2 ** (i // every) times smaller than in fp32:

    blocks.{i}.att.output.weight /= 2 ** (i // every)
    blocks.{i}.ffn.value.weight  /= 2 ** (i // every)
    x = x / 2 after layer i when (i + 1) % every == 0

Every reader of x is a layer norm (ln1, ln2 of the next layers, ln_out), which is scale-invariant up to its
epsilon, so logits and every state tensor mean the same as without the rescale (an fp32 state runs in either).
The package applies it in its RWKV class (versions 4, 5, 5.1, 5.2, 6), not in RWKV_x070: RWKV-7 is not rescaled.

This is a float32 graph transform on an exported graph: it finds the residual stream as the input of the next
layer norm (blocks.{i+1}.ln1, or ln_out after the last layer) and halves it there.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rwkv_edge.runtime.errors import RWKVEdgeError

RESCALE_EVERY = 6  # the package's RESCALE_LAYER for every fp16 strategy
RESCALED_VERSIONS = ("4", "5", "5.1", "5.2", "6")  # the package's RWKV class; RWKV_x070 (RWKV-7) does not rescale


def rescale_every(version: str) -> int:
    """Layers per halving of the residual stream in fp16 for this generation (0: not rescaled)."""
    return RESCALE_EVERY if version in RESCALED_VERSIONS else 0


def rescale_residual(model: onnx.ModelProto, n_layer: int, every: int = RESCALE_EVERY) -> onnx.ModelProto:
    """Apply the rescale to an fp32 graph (in place); returns it. every <= 0 leaves the graph as it is."""
    if every <= 0:
        return model
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    for i in range(n_layer):
        factor = 2 ** (i // every)
        if factor == 1:
            continue
        for name in (f"blocks.{i}.att.output.weight", f"blocks.{i}.ffn.value.weight"):
            if name not in weights:
                raise RWKVEdgeError(
                    f"fp16 rescale: the graph has no weight {name!r}; export the model again with `rwkv-export export`"
                )
            t = weights[name]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) / np.float32(factor), name))

    after = range(every - 1, n_layer, every)  # layers after which x is halved
    if not after:
        return model
    half = "rescale_half"
    graph.initializer.append(numpy_helper.from_array(np.array(0.5, dtype=np.float32), half))
    norms = {n.input[1]: n for n in graph.node if n.op_type == "LayerNormalization" and len(n.input) > 1}
    for i in after:
        scale = f"blocks.{i + 1}.ln1.weight" if i + 1 < n_layer else "ln_out.weight"
        if scale not in norms:
            raise RWKVEdgeError(
                f"fp16 rescale: no layer norm reads {scale!r} (the residual stream after layer {i}); "
                f"export the model again with `rwkv-export export`"
            )
        _halve(graph, norms[scale].input[0], half, f"rescale_after_layer_{i}")
    return model


def _halve(graph: onnx.GraphProto, x: str, half: str, name: str) -> None:
    """x -> Mul(x, 0.5) for every node that reads x (the node is placed right after x's producer)."""
    out = f"{x}_{name}"
    for n in graph.node:
        for j, inp in enumerate(n.input):
            if inp == x:
                n.input[j] = out
    for o in graph.output:
        if o.name == x:
            raise RWKVEdgeError(f"fp16 rescale: the residual stream {x!r} is a graph output; it cannot be halved")
    mul = helper.make_node("Mul", [x, half], [out], name=name)
    nodes = list(graph.node)
    at = next((k + 1 for k, n in enumerate(nodes) if x in n.output), 0)  # graph input or initializer: first
    nodes.insert(at, mul)
    graph.ClearField("node")
    graph.node.extend(nodes)
