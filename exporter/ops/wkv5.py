"""rwkv::WKV5, one step of the matrix-valued WKV of RWKV-5, 5.1, 5.2 and 6, in three forms that tests hold equal:
a torch custom op (eager body, used by the reference cells and traced by the exporter), an onnxscript function
(the model-local body ORT inlines), and a numpy twin (for onnx's ReferenceEvaluator).

Per head, with the state S [N (key), N (value)] (the `rwkv` package's layout for these generations):
    kv = k[:, None] * v[None, :]                 the current token's outer product
    y  = r @ (u[:, None] * kv + S)               read out; the current token gets the bonus u
    S' = kv + w[:, None] * S                     decay each key row, add the token
This is the package's att_one_v5 / att_one_v5_1 / att_one_v6_0 (`a = k @ v; out = r @ (t_first * a + s);
s = a + t_decay * s`), term for term.

One op serves all four generations: they differ only in where the decay w comes from, which the cell computes
before the op. RWKV-5 and 5.1 have one decay per head, 5.2 one per channel, both constant; RWKV-6 makes it
data-dependent (a LoRA of the token-shifted input). So w is an input of shape [B, H, N] or anything that
broadcasts to it: the v5.x cells pass their constant [H, N], the v6 cell its per-token [B, H, N]. w is the
decay factor itself, exp(-exp(.)) in (0, 1), not its log. A runtime that substitutes a fused kernel sees the
same node for every generation (the `rwkv` package's own CUDA kernels for 5.2 and 6 are the same loop).
Shapes: state [B, H, N, N]; r, k, v [B, H, N]; w [B, H, N] or [H, N]; u [H, N]; outputs y [B, H, N] and the
new state [B, H, N, N].
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op
from onnxscript import script

from .domain import register_schema, rwkv_opset

INPUTS = ["state", "r", "k", "v", "w", "u"]
OUTPUTS = ["y", "state_out"]


def wkv5_numpy(state, r, k, v, w, u):
    kv = k[..., :, None] * v[..., None, :]
    y = (r[..., None, :] @ (u[..., :, None] * kv + state))[..., 0, :]
    s = kv + w[..., :, None] * state
    return y.astype(r.dtype), s.astype(state.dtype)


@torch.library.custom_op("rwkv_edge::wkv5", mutates_args=())
def wkv5(
    state: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, N, 1] * [B, H, 1, N] -> [B, H, N, N]
    y = (r.unsqueeze(-2) @ (u.unsqueeze(-1) * kv + state)).squeeze(-2)  # [B, H, 1, N] -> [B, H, N]
    s = kv + w.unsqueeze(-1) * state
    return y, s


@wkv5.register_fake
def _wkv5_fake(state, r, k, v, w, u):
    return torch.empty_like(r), torch.empty_like(state)


@script(rwkv_opset, default_opset=op)
def WKV5(state, r, k, v, w, u):
    kv = op.Unsqueeze(k, [-1]) * op.Unsqueeze(v, [-2])
    y = op.Squeeze(op.MatMul(op.Unsqueeze(r, [-2]), op.Unsqueeze(u, [-1]) * kv + state), [-2])
    s = kv + op.Unsqueeze(w, [-1]) * state
    return y, s


def translate_wkv5(state, r, k, v, w, u):
    """Exporter translation: emit one rwkv::WKV5 node (not the inlined body)."""
    return rwkv_opset.WKV5(state, r, k, v, w, u, _num_outputs=2)


register_schema("WKV5", INPUTS, OUTPUTS)
