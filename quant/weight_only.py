"""Weight-only quantization: MatMul(x, W) -> com.microsoft MatMulNBits(x, W_q, scales), 8 or 4 bits.

The work is onnxruntime's MatMulNBitsQuantizer (round-to-nearest, blocks of `block_size` along the input axis K,
one float scale per block and output column). Activations stay float. With accuracy_level=4 the CPU kernel
quantizes each activation block to int8 on the fly and runs an int8 dot product; without it, it dequantizes
the weights to float for every call, far slower (docs/quantization.md).

Symmetric (no zero points): on the default model asymmetric int8 was no better and stores a zero point per block
(docs/quantization.md has the numbers).

The quantizer visits every MatMul with a constant B; it has no "only these" list (its nodes_to_include adds
nodes, it does not restrict), so the nodes the plan does not name are passed as nodes_to_exclude.
"""

from __future__ import annotations

import logging

import onnx

from .policy import Site

ACCURACY_LEVEL_CPU = 4  # int8 activations x int8/int4 weights: the fast CPU kernel


def quantize_weight_only(
    model: onnx.ModelProto,
    sites: list[Site],
    block_size: int,
    *,
    accuracy_level: int = ACCURACY_LEVEL_CPU,
    symmetric: bool = True,
) -> onnx.ModelProto:
    """Quantize the MatMuls in `sites` (each with its own bits; block size per matrix: fit_block) in place;
    returns the model."""
    MatMulNBitsQuantizer = _import_quantizer()
    all_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    groups: dict[tuple[int, int], set[str]] = {}
    for s in sites:
        groups.setdefault((s.bits, fit_block(s.shape[0], block_size)), set()).add(s.node)
    for (bits, block), nodes in sorted(groups.items()):
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=block,
            is_symmetric=symmetric,
            accuracy_level=accuracy_level,
            nodes_to_exclude=sorted(all_matmuls - nodes),
        )
        with _quiet():
            quantizer.process()
        model = quantizer.model.model
    return model


def fit_block(k: int, block_size: int) -> int:
    """The block size for a matrix with K = k rows: `block_size`, halved (down to 16) until it divides k.

    A block that does not divide K is padded with zeros in the file (K = 96 at block 128: a third of the bytes
    are padding; a rank-32 low-rank factor: three quarters); a smaller block that divides K stores none."""
    b = block_size
    while b > 16 and k % b:
        b //= 2
    return b


def _import_quantizer():
    """Import MatMulNBitsQuantizer without keeping what its module does to logging at import time
    (logging.basicConfig(level=INFO): every library's INFO lines would reach the user's terminal)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    return MatMulNBitsQuantizer


class _quiet:
    """The quantizer logs each node at INFO and warns about things that do not concern a user here."""

    def __enter__(self):
        self.logger = logging.getLogger("onnxruntime.quantization")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        root = logging.getLogger()
        self.root_level = root.level
        root.setLevel(max(root.level, logging.ERROR))

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        logging.getLogger().setLevel(self.root_level)
