"""Quantize the embedding table: Gather(emb, ids) -> com.microsoft GatherBlockQuantized(emb_q, ids, scales).

onnxruntime's MatMulNBitsQuantizer quantizes a Gather only to 4 bits, and only a plain Gather; the exporter
reads the table with a Gather or with GatherND(emb, Unsqueeze(ids, -1)) (what torch's indexing becomes), so this
rewrite is written here. The table (ln0 already folded in) is quantized symmetrically in blocks of
`block_size` along the embedding axis, one float scale per block:

    scale = max|w| / qmax over the block (qmax = 127 for 8 bits, 7 for 4 bits)
    q     = round(w / scale), stored as uint8 q + zero_point (128 for 8 bits, 8 for 4 bits: the op's default,
            so no zero-point tensor is stored); 4-bit values pack two per byte, the even column in the low nibble

A gathered row is dequantized on the fly, so only the rows of the tokens seen are ever expanded to float:
the table costs C * vocab bytes at 8 bits instead of 4 * C * vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
ZERO_POINT = {8: 128, 4: 8}
QMAX = {8: 127, 4: 7}
_PASS_THROUGH = ("Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze")  # ops that keep "these are token ids"


@dataclass(frozen=True)
class EmbeddingSite:
    node: str  # the Gather / GatherND that reads the table
    weight: str  # initializer [vocab, C]
    indices: str  # token ids to give GatherBlockQuantized: its output then has the gather's output shape
    dead: tuple[str, ...] = ()  # nodes only the gather used (the Unsqueeze before a GatherND)


def find_embedding(model: onnx.ModelProto, token_input: str = "input_ids") -> EmbeddingSite | None:
    """The single gather of a 2-D float initializer by the token ids, or None (then the table stays float)."""
    graph = model.graph
    tables = {
        t.name
        for t in graph.initializer
        if len(t.dims) == 2 and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    input_rank = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}

    def from_tokens(name: str) -> bool:
        while name != token_input:
            node = producer.get(name)
            if node is None or node.op_type not in _PASS_THROUGH:
                return False
            name = node.input[0]
        return True

    sites = []
    for node in graph.node:
        if not node.input or node.input[0] not in tables:
            continue
        if node.op_type == "Gather" and _attr(node, "axis", 0) == 0 and from_tokens(node.input[1]):
            sites.append(EmbeddingSite(node.name, node.input[0], node.input[1]))
        elif node.op_type == "GatherND" and _attr(node, "batch_dims", 0) == 0:
            # GatherND(table, Unsqueeze(ids, last axis)) == Gather(table, ids)
            unsq = producer.get(node.input[1])
            if (
                unsq is None
                or unsq.op_type != "Unsqueeze"
                or unsq.input[0] != token_input
                or token_input not in input_rank
            ):
                continue
            axes = _constant(model, unsq.input[1]) if len(unsq.input) > 1 else np.array(_attr(unsq, "axes", []))
            rank = input_rank[token_input]
            if axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) not in (-1, rank):
                continue
            dead = (unsq.name,) if len(consumers.get(unsq.output[0], [])) == 1 else ()
            sites.append(EmbeddingSite(node.name, node.input[0], token_input, dead))
    if len(sites) != 1 or len(consumers.get(sites[0].weight, [])) != 1:
        return None  # none, or a table read in several places: leave it alone
    return sites[0]


def quantize_table(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """[V, C] float -> (uint8 data [V, C] (8 bits) or [V, C/2] (4 bits), float scales [V, ceil(C/block)])."""
    V, C = w.shape
    nb = -(-C // block_size)
    padded = np.zeros((V, nb * block_size), dtype=np.float32)
    padded[:, :C] = w
    blocks = padded.reshape(V, nb, block_size)
    scale = np.abs(blocks).max(axis=-1) / QMAX[bits]  # [V, nb]
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)  # an all-zero block: any scale, q = 0
    q = np.clip(np.rint(blocks / scale[..., None]), -QMAX[bits], QMAX[bits]).astype(np.int16)
    q = (q.reshape(V, nb * block_size)[:, :C] + ZERO_POINT[bits]).astype(np.uint8)
    if bits == 4:
        q = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    return q, scale.astype(w.dtype)


def dequantize_table(q: np.ndarray, scale: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """The numpy twin of what GatherBlockQuantized computes for every row."""
    if bits == 4:
        q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(q.shape[0], -1)
    values = q.astype(np.float32) - ZERO_POINT[bits]
    return values * np.repeat(scale.astype(np.float32), block_size, axis=1)[:, : values.shape[1]]


def quantize_embedding(model: onnx.ModelProto, site: EmbeddingSite, bits: int, block_size: int) -> None:
    """Rewrite the embedding gather in place (see the module docstring)."""
    if bits not in QMAX:
        raise ValueError(f"embedding bits must be 8 or 4, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"GatherBlockQuantized needs a power-of-two block size >= 16, got {block_size}")
    graph = model.graph
    table = next(t for t in graph.initializer if t.name == site.weight)
    w = numpy_helper.to_array(table)
    if bits == 4 and w.shape[1] % 2:
        raise ValueError(f"4-bit packing needs an even embedding width, got {w.shape[1]}")
    q, scale = quantize_table(w.astype(np.float32), bits, block_size)
    q_name, s_name = f"{site.weight}_Q{bits}", f"{site.weight}_scales"
    graph.initializer.remove(table)
    graph.initializer.extend(
        [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale.astype(w.dtype), s_name)]
    )

    nodes = list(graph.node)
    old = next(n for n in nodes if n.name == site.node)
    new = helper.make_node(
        "GatherBlockQuantized",
        [q_name, site.indices, s_name],
        list(old.output),
        name=f"{site.node}_Q{bits}",
        domain=MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=block_size,
        bits=bits,
    )
    out = []
    for n in nodes:
        if n.name == site.node:
            out.append(new)
        elif n.name not in site.dead:
            out.append(n)
    graph.ClearField("node")
    graph.node.extend(out)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(helper.get_attribute_value(n.attribute[0]))
    return None
