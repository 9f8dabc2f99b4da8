"""rwkv::WKV7, one step of RWKV-7's generalized delta rule, in three forms that tests hold equal:
a torch custom op (eager body, used by the reference cell and traced by the exporter), an onnxscript function
(the model-local body ORT inlines), and a numpy twin (for onnx's ReferenceEvaluator).

Per head, with the state S [N (value), N (key)] (the `rwkv` package's layout):
    S' = S * w[None, :] + (S @ a)[:, None] * b[None, :] + v[:, None] * k[None, :]
    y  = S' @ r
RWKV-7 calls it with a = -kk, b = kk * a_gate (a rank-1 "removal" of the old value at key kk), and the decay
w = exp(-0.606531 * sigmoid(...)) already in (0, 1).
Shapes: state [B, H, N, N]; r, w, k, v, a, b [B, H, N]; outputs y [B, H, N] and the new state.
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op
from onnxscript import script

from .domain import register_schema, rwkv_opset

INPUTS = ["state", "r", "w", "k", "v", "a", "b"]
OUTPUTS = ["y", "state_out"]


def wkv7_numpy(state, r, w, k, v, a, b):
    s = state * w[..., None, :] + (state @ a[..., None]) * b[..., None, :] + v[..., :, None] * k[..., None, :]
    y = (s @ r[..., None])[..., 0]
    return y.astype(r.dtype), s.astype(state.dtype)


@torch.library.custom_op("rwkv_edge::wkv7", mutates_args=())
def wkv7(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    s = state * w.unsqueeze(-2) + (state @ a.unsqueeze(-1)) * b.unsqueeze(-2) + v.unsqueeze(-1) * k.unsqueeze(-2)
    y = (s @ r.unsqueeze(-1)).squeeze(-1)
    return y, s


@wkv7.register_fake
def _wkv7_fake(state, r, w, k, v, a, b):
    return torch.empty_like(r), torch.empty_like(state)


@script(rwkv_opset, default_opset=op)
def WKV7(state, r, w, k, v, a, b):
    # The two rank-1 updates as one MatMul [N, 2] @ [2, N] ([S a, v] @ [b; k]): one pass over the [N, N] state
    # instead of two products and two sums: faster on the CPU (see docs/performance.md).
    left = op.Concat(op.MatMul(state, op.Unsqueeze(a, [-1])), op.Unsqueeze(v, [-1]), axis=-1)  # [B, H, N, 2]
    right = op.Concat(op.Unsqueeze(b, [-2]), op.Unsqueeze(k, [-2]), axis=-2)  # [B, H, 2, N]
    s = state * op.Unsqueeze(w, [-2]) + op.MatMul(left, right)
    y = op.Squeeze(op.MatMul(s, op.Unsqueeze(r, [-1])), [-1])
    return y, s


def translate_wkv7(state, r, w, k, v, a, b):
    """Exporter translation: emit one rwkv::WKV7 node (not the inlined body)."""
    return rwkv_opset.WKV7(state, r, w, k, v, a, b, _num_outputs=2)


register_schema("WKV7", INPUTS, OUTPUTS)
