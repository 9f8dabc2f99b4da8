"""The quantization schemes a user can name, each with its method and the policy that was measured for it
(docs/quantization.md holds the numbers)."""

from __future__ import annotations

from dataclasses import dataclass

from rwkv_edge.runtime.errors import RWKVEdgeError

from .policy import Policy

BLOCK_SIZES = (16, 32, 64, 128, 256)  # powers of two that MatMulNBits and GatherBlockQuantized both take
DEFAULT_BLOCK_SIZE = 128


@dataclass(frozen=True)
class Scheme:
    name: str  # what the user types: rwkv-export quantize --scheme NAME
    precision: str  # the manifest precision it produces; the file is model.<precision>.onnx
    method: str  # "weight_only" (MatMulNBits), "dynamic" / "rowwise" (integer GEMM) or "fp16" (a float16 conversion)
    policy: Policy  # bits per weight group
    summary: str  # one line for --help and reports


SCHEMES = {
    s.name: s
    for s in (
        Scheme(
            "int8",
            "int8",
            "weight_only",
            Policy(matrix=8, lowrank=8, head=8, emb=8),
            "weight-only int8 (MatMulNBits bits=8, accuracy_level=4), embedding int8: the default",
        ),
        Scheme(
            "int8-dynamic",
            "int8-dynamic",  # its own precision: one export holds it beside the weight-only int8
            "dynamic",
            Policy(matrix=8, lowrank=8, head=8, emb=8),
            "dynamic int8 (MatMulInteger: int8 weights, uint8 activations per call), embedding int8; CPU and wasm",
        ),
        Scheme(
            "int8-rowwise",
            "int8-rowwise",
            "rowwise",
            Policy(matrix=8, lowrank=8, head=8, emb=8),
            "dynamic int8 with one activation scale per row (MatMulIntegerToFloat): rows independent, fast in a "
            "batch; the serving scheme (CPU)",
        ),
        Scheme(
            "int4",
            "int4",
            "weight_only",
            Policy(matrix=4, lowrank=8, head=8, emb=8),
            "weight-only int4 for the layers' projections, int8 for the head, low-rank factors and embedding",
        ),
        # Not a quantization but the same job (a sibling graph of another precision, listed in rwkv.json): fp16.py.
        Scheme(
            "fp16",
            "fp16",
            "fp16",
            Policy(matrix=None, lowrank=None, head=None, emb=None),
            "fp16 weights and activations, the WKV recurrence and its state in float32 (for GPUs)",
        ),
    )
}
DEFAULT_SCHEME = "int8"


def get_scheme(name: str) -> Scheme:
    scheme = SCHEMES.get(str(name).strip().lower())
    if scheme is None:
        raise RWKVEdgeError(f"unknown quantization scheme {name!r}; expected one of: {', '.join(SCHEMES)}")
    return scheme


def check_block_size(block_size: int) -> int:
    if block_size not in BLOCK_SIZES:
        raise RWKVEdgeError(f"block size must be one of {', '.join(map(str, BLOCK_SIZES))}, found {block_size}")
    return block_size
