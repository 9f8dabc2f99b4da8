"""Dynamic int8: MatMul(x, W) -> DynamicQuantizeLinear(x) + MatMulInteger(x_q, W_q) + scale (CPU only).

The work is onnxruntime's quantize_dynamic: weights int8 (per output column when `per_channel`), the
activation quantized to uint8 per tensor at every call. ORT's graph optimizer fuses the pattern into
com.microsoft DynamicQuantizeMatMul. A CPU alternative to weight-only int8: it needs no contrib op in the
saved graph, but one scale for a whole activation tensor is coarser than MatMulNBits's per-row, per-block int8
(docs/quantization.md has the numbers), and it is one scale for the whole batch: the rows of a batch influence
each other by about one quantization step (the export format's rows never interact, docs/format.md; weight-only
int8 keeps that).

quantize_dynamic reads and writes files, so the model goes through a temp folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from .policy import Site
from .weight_only import _quiet


def quantize_dynamic_int8(model: onnx.ModelProto, sites: list[Site], *, per_channel: bool = True) -> onnx.ModelProto:
    """Quantize the MatMuls in `sites` (bits must be 8); returns a new model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if any(s.bits != 8 for s in sites):
        raise ValueError("dynamic quantization is int8 only")
    if not sites:
        return model
    with tempfile.TemporaryDirectory(prefix="rwkv-edge-dynamic-") as tmp, _quiet():
        out = Path(tmp) / "dynamic.onnx"
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=[s.node for s in sites],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            # 7-bit weights: x86 without VNNI adds u8 x s8 products in pairs into int16, which 8-bit weights
            # overflow (saturating, far from fp32); 7 bits fit, at a small cost in resolution.
            reduce_range=True,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
        return onnx.load(out)  # external data read back into memory before the folder goes
