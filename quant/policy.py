"""What gets quantized, as data: each weight of an exported graph belongs to one group, and a Policy says
how many bits each group gets (None: it stays float).

Groups (first matching rule wins; names are the official checkpoint names the exporter keeps):

    head     head.weight                                   [C, vocab]   the output projection
    emb      the table gathered by the token input         [vocab, C]   (found by structure: the exporter may
                                                                        rename it, e.g. when it folds ln0 in)
    lowrank  RWKV-7 att.{w,a,v,g}{1,2}, RWKV-6 att.time_{maa,decay}_w{1,2}   the small low-rank factors
    matrix   blocks.*.{att,ffn}.{key,value,receptance,output,gate}.weight   the layers' projections
    float    everything else: layer/group norms, time_* and x_* mix vectors, decay (w0, time_decay),
             k_k, k_a, r_k, the low-rank biases (w0, a0, v0), bonus (time_first, time_faaaa). They are
             vectors, a fraction of a percent of the bytes, and each one scales a whole channel, so an error in
             them is an error in every token. The WKV state is a graph input, never a weight: it stays float32.

Only a 2-D weight that feeds a MatMul as its B operand (or the embedding Gather) can be quantized; a name in
a quantizable group that is used any other way stays float and is reported as such.

The numbers that chose each scheme's policy are in docs/quantization.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import onnx

from rwkv_edge.runtime.errors import RWKVEdgeError

from .embedding import EmbeddingSite, find_embedding

GROUPS = ("matrix", "lowrank", "head", "emb")  # the groups a policy can quantize

# (pattern on the initializer name, group), first match wins.
RULES: tuple[tuple[str, str], ...] = (
    (r"^head\.weight$", "head"),
    (r"^emb\.weight$", "emb"),
    (r"^blocks\.\d+\.att\.[wavg][12]$", "lowrank"),  # RWKV-7: decay, in-context rate, value residual, gate
    (r"^blocks\.\d+\.att\.time_(maa|decay)_w[12]$", "lowrank"),  # RWKV-6: data-dependent mix and decay
    (r"^blocks\.\d+\.(att|ffn)\.(key|value|receptance|output|gate)\.weight$", "matrix"),
)

# Why the float group stays float: shown in the plan for a name that matches (documentation as data).
FLOAT_REASONS: tuple[tuple[str, str], ...] = (
    (r"(^|\.)ln(\d+|_out|_x)\.", "norm"),
    (r"\.time_(decay|first|faaaa)$|\.w0$", "decay / bonus"),
    (r"\.time_m(ix|aa)_[a-z]+$|\.x_[rwkvagk]$", "token-shift mix"),
    (r"\.(k_k|k_a|r_k)$", "RWKV-7 key normalisation"),
    (r"\.(a0|v0)$", "low-rank bias"),
)


@dataclass(frozen=True)
class Policy:
    """Bits per group; None keeps the group in float."""

    matrix: int | None = 8  # att/ffn projections: most of a layer's bytes
    lowrank: int | None = 8  # RWKV-6/7 low-rank factors (a few % of the bytes)
    head: int | None = 8  # output projection: C * vocab, a third of RWKV-7 0.1B
    emb: int | None = 8  # token table: C * vocab, only one row read per token

    def bits(self, group: str) -> int | None:
        return getattr(self, group) if group in GROUPS else None

    def keep_float(self, groups) -> "Policy":
        """The same policy with `groups` (names from GROUPS) kept in float."""
        groups = list(groups)
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise RWKVEdgeError(
                f"unknown weight group {unknown[0]!r} to keep in float; expected some of: {', '.join(GROUPS)}"
            )
        return replace(self, **{g: None for g in groups})

    def describe(self) -> str:
        return ", ".join(f"{g} {'float' if self.bits(g) is None else f'int{self.bits(g)}'}" for g in GROUPS)


def group_of(name: str) -> str:
    for pattern, group in RULES:
        if re.search(pattern, name):
            return group
    return "float"


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def float_reason(name: str) -> str:
    for pattern, reason in FLOAT_REASONS:
        if re.search(pattern, name):
            return reason
    return "not a known matrix"


@dataclass(frozen=True)
class Site:
    node: str  # the MatMul (or Gather) node that reads the weight
    weight: str  # initializer name
    group: str
    bits: int
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return _size(self.shape)


@dataclass
class Plan:
    """Which nodes a scheme rewrites, and what stays float (weight name -> reason)."""

    matmuls: list[Site]
    embedding: tuple[Site, EmbeddingSite] | None
    kept: dict[str, str] = field(default_factory=dict)

    def quantized_elements(self) -> int:
        return sum(s.elements for s in self.matmuls) + (self.embedding[0].elements if self.embedding else 0)

    def summary(self) -> dict:
        groups: dict[str, dict] = {}
        for s in self.matmuls + ([self.embedding[0]] if self.embedding else []):
            g = groups.setdefault(s.group, {"bits": s.bits, "tensors": 0, "elements": 0})
            g["tensors"] += 1
            g["elements"] += s.elements
        return {"quantized": groups, "kept_float": dict(sorted(self.kept.items()))}


def plan(model: onnx.ModelProto, policy: Policy, token_input: str = "input_ids") -> Plan:
    """Match the policy against a graph: the MatMul nodes and the embedding gather to rewrite, and the rest."""
    graph = model.graph
    shapes = {
        t.name: tuple(t.dims)
        for t in graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    emb = find_embedding(model, token_input)
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in shapes:
                uses.setdefault(name, []).append((node, i))

    matmuls: list[Site] = []
    embedding = None
    kept: dict[str, str] = {}
    for name, shape in shapes.items():
        group = "emb" if emb is not None and name == emb.weight else group_of(name)
        bits = policy.bits(group)
        if group == "float":
            kept[name] = float_reason(name) if _size(shape) > 16 else "graph constant"
            continue
        if bits is None:
            kept[name] = f"{group}: kept float by the policy"
            continue
        if group == "emb":
            if emb is None:
                kept[name] = "emb: not read by a Gather of the token input"
            else:
                embedding = (Site(emb.node, name, group, bits, shape), emb)
            continue
        readers = uses.get(name, [])
        if len(shape) != 2 or len(readers) != 1 or readers[0][0].op_type != "MatMul" or readers[0][1] != 1:
            kept[name] = f"{group}: not the 2-D B operand of exactly one MatMul"
            continue
        matmuls.append(Site(readers[0][0].name, name, group, bits, shape))
    return Plan(matmuls, embedding, kept)
