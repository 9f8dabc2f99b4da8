"""RWKV-6 "Finch" (x060) single-step cell, batched: tokens [B] and state in, logits [B, vocab] and state out.

Follows the `rwkv` package's RWKV (version 6: att_one_v6_0, ffn_one_v6) term by term. What is new since 5.2:
  - data-dependent token shift: the mix of x and x_prev for each of w, k, v, r, g gets an offset from a
    low-rank MLP of the input (time_maa_w1 [C, 5*D], tanh, time_maa_w2 [5, D, C]): "ddlerp";
  - data-dependent decay: w = exp(-exp(time_decay + tanh(xw @ time_decay_w1) @ time_decay_w2)), per token
    and channel, so the WKV op (ops/wkv5.py, the same recurrence as RWKV-5) gets w [B, H, N];
  - token shift written as x + (x_prev - x) * maa (the package's form, for both time and channel mixing).
u = time_faaaa [H, N] is the bonus itself; ln_x is the same per-head group norm (eps 64e-5) and y is gated
by silu(g) as in 5.1+. Channel mixing is RWKV-5's with the maa form of the token shift.

State (batch-first, stacked over layers): att_x [B, L, C], wkv [B, L, H, N, N], ffn_x [B, L, C], the wkv
axes (head, key, value) as in RWKV-5 and the package; state-tuned files enter as for RWKV-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_edge.runtime.manifest import Architecture

from ..checkpoint import TIME_STATE
from ..ops import wkv5, wkv5_seq
from .common import as_matrix, head_group_norm, heads, hold_weights, layer_loop, normalized_embedding, per_head
from .rwkv5 import GROUP_NORM_EPS

MAA = ("w", "k", "v", "r", "g")  # order of the five ddlerp offsets in time_maa_w1 / time_maa_w2


def prepare_weights(weights: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """Official tensors -> the cell's: emb pre-normalized, matrices [in, out], [1, 1, C] vectors flat,
    time_faaaa and ln_x [H, N]. time_decay stays the log-log base (the per-token LoRA is added before exp(-exp(.)));
    the LoRA factors time_maa_w1 [C, 5*D], time_maa_w2 [5, D, C], time_decay_w1 [C, D], time_decay_w2 [D, C]
    are stored [in, out] already."""
    out = {}
    for key, t in weights.items():
        if key.startswith("blocks.0.ln0.") or key.endswith(TIME_STATE):  # ln0 is folded into emb
            continue
        t = t.float()
        if t.dim() == 3 and t.shape[:2] == (1, 1):
            t = t.reshape(-1)  # time_maa_x, time_decay, ffn.time_maa_k ...: [1, 1, C] -> [C]
        if key.endswith("att.time_faaaa") or ".att.ln_x." in key:
            t = per_head(t, arch.n_head)
        out[key] = as_matrix(key, t)
    out["emb.weight"] = normalized_embedding(weights)
    return out


class RWKV6Cell(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], arch: Architecture):
        super().__init__()
        self.arch = arch
        self.all_positions = False  # sequence forward: logits of every position (perplexity), else the last only
        hold_weights(self, prepare_weights(weights, arch))

    def time_mixing(self, i: int, x, x_prev, state):
        att = getattr(self.blocks, str(i)).att
        lead = x.shape[:-1]  # (B,) for a step, (B, T) for a sequence
        sx = x_prev - x

        # ddlerp: five data-dependent offsets of the token-shift mixes, from one shared low-rank MLP
        xxx = x + sx * att.time_maa_x
        D = att.time_maa_w2.shape[1]
        m = torch.tanh(xxx @ att.time_maa_w1).view(*lead, 5, 1, D)  # [B, 5*D] -> [B, 5, 1, D]
        # [B, 5, 1, D] @ [5, D, C]: one row per (token, offset), as the package's bmm. Not [5, B, D] @ [5, D, C]:
        # ONNX Runtime has its own kernel for a single-row product, so that form rounds differently at B = 1 and
        # B > 1, and a batch row must give exactly what the sequence gives alone.
        mw, mk, mv, mr, mg = (m @ att.time_maa_w2).view(*lead, 5, -1).unbind(-2)  # 5 x [B, C]
        wx = x + sx * (att.time_maa_w + mw)
        kx = x + sx * (att.time_maa_k + mk)
        vx = x + sx * (att.time_maa_v + mv)
        rx = x + sx * (att.time_maa_r + mr)
        gx = x + sx * (att.time_maa_g + mg)

        r = heads(rx @ att.receptance.weight, self.arch)
        k = heads(kx @ att.key.weight, self.arch)
        v = heads(vx @ att.value.weight, self.arch)
        g = F.silu(gx @ att.gate.weight)
        w = att.time_decay + torch.tanh(wx @ att.time_decay_w1) @ att.time_decay_w2  # [B, C]
        w = heads(torch.exp(-torch.exp(w)), self.arch)  # the decay factor in (0, 1), per token and channel
        wkv = wkv5 if x.dim() == 2 else wkv5_seq  # sequence: the recurrence over the chunk's time axis
        y, state = wkv(state, r, k, v, w, att.time_faaaa)

        y = head_group_norm(y, att.ln_x, GROUP_NORM_EPS).flatten(-2) * g  # [B, H, N] -> [B, C]
        return y @ att.output.weight, state

    def channel_mixing(self, i: int, x, x_prev, input_ids):
        ffn = getattr(self.blocks, str(i)).ffn
        sx = x_prev - x
        kx = x + sx * ffn.time_maa_k
        rx = x + sx * ffn.time_maa_r
        r = torch.sigmoid(rx @ ffn.receptance.weight)
        k = torch.relu(kx @ ffn.key.weight) ** 2
        return r * (k @ ffn.value.weight)

    def forward(self, input_ids, att_x, wkv, ffn_x):
        return layer_loop(self, input_ids, att_x, (wkv,), ffn_x)
