"""RWKV-7 "Goose" (x070) single-step cell, batched: tokens [B] and state in, logits [B, vocab] and state out.

Follows the `rwkv` package's RWKV_x070 (the reference) term by term. Names are the checkpoint's:
r receptance, w decay, k key, v value, a in-context learning rate, g gate, kk the normalized removal key.
State (batch-first, stacked over layers): att_x [B, L, C], wkv [B, L, H, N, N] (value x key), ffn_x [B, L, C].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_edge.runtime.manifest import Architecture, StateSpec

from ..ops import wkv7
from .common import as_matrix, layer_norm, normalized_embedding, hold_weights

GROUP_NORM_EPS = 64e-5  # ln_x epsilon in the `rwkv` package for x070 (head_size 64 * 1e-5)
DECAY_SCALE = 0.606531  # exp(-0.5): the decay w = exp(-0.606531 * sigmoid(.)) lies in (exp(-0.606531), 1)


# Layer 0 computes v_first instead of mixing towards it: official checkpoints still carry these.
LAYER0_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def state_specs(arch: Architecture) -> list[StateSpec]:
    L, C, H, N = arch.n_layer, arch.n_embd, arch.n_head, arch.head_size
    return [
        StateSpec("att_x", "att_x", "att_x_out", ["batch", L, C]),
        StateSpec("wkv", "wkv", "wkv_out", ["batch", L, H, N, N]),
        StateSpec("ffn_x", "ffn_x", "ffn_x_out", ["batch", L, C]),
    ]


def prepare_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tensors -> the cell's: emb pre-normalized, matrices [in, out], [1, 1, C] vectors flat."""
    out = {}
    for key, t in weights.items():
        if key.startswith("blocks.0.ln0.") or key in LAYER0_UNUSED:  # ln0 is folded into emb
            continue
        t = t.float()
        if t.dim() == 3 and t.shape[:2] == (1, 1):
            t = t.reshape(-1)  # x_r, w0, k_k ...: [1, 1, C] -> [C]
        out[key] = as_matrix(key, t)
    out["emb.weight"] = normalized_embedding(weights)
    return out


class RWKV7Cell(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], arch: Architecture):
        super().__init__()
        self.arch = arch
        hold_weights(self, prepare_weights(weights))

    def time_mixing(self, i: int, x, x_prev, state, v_first):
        att = getattr(self.blocks, str(i)).att
        B, H, N = x.shape[0], self.arch.n_head, self.arch.head_size
        xx = x_prev - x
        xr, xw, xk = x + xx * att.x_r, x + xx * att.x_w, x + xx * att.x_k
        xv, xa, xg = x + xx * att.x_v, x + xx * att.x_a, x + xx * att.x_g

        r = xr @ att.receptance.weight
        w = torch.tanh(xw @ att.w1) @ att.w2
        k = xk @ att.key.weight
        v = xv @ att.value.weight
        a = torch.sigmoid(att.a0 + (xa @ att.a1) @ att.a2)
        g = torch.sigmoid(xg @ att.g1) @ att.g2

        kk = F.normalize((k * att.k_k).view(B, H, N), dim=-1, p=2.0).view(B, H * N)
        k = k * (1 + (a - 1) * att.k_a)
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(att.v0 + (xv @ att.v1) @ att.v2)
        w = torch.exp(-DECAY_SCALE * torch.sigmoid(att.w0 + w))

        heads = lambda t: t.view(B, H, N)  # [B, C] -> [B, H, N]
        y, state = wkv7(state, heads(r), heads(w), heads(k), heads(v), heads(-kk), heads(kk * a))

        # ln_x: a group norm with one group per head, over the head's N channels
        mean = y.mean(dim=-1, keepdim=True)
        var = ((y - mean) ** 2).mean(dim=-1, keepdim=True)
        y = ((y - mean) / torch.sqrt(var + GROUP_NORM_EPS)).view(B, H * N) * att.ln_x.weight + att.ln_x.bias
        bonus = (heads(r * k) * att.r_k).sum(dim=-1, keepdim=True) * heads(v)  # the current token's own value
        y = y + bonus.view(B, H * N)
        return (y * g) @ att.output.weight, state, v_first

    def channel_mixing(self, i: int, x, x_prev):
        ffn = getattr(self.blocks, str(i)).ffn
        k = x + (x_prev - x) * ffn.x_k
        k = torch.relu(k @ ffn.key.weight) ** 2
        return k @ ffn.value.weight

    def forward(self, input_ids, att_x, wkv, ffn_x):
        x = F.embedding(input_ids, self.emb.weight)  # [B, C]: a plain Gather in the graph
        v_first = torch.zeros_like(x)
        att_x_out, wkv_out, ffn_x_out = [], [], []
        for i in range(self.arch.n_layer):
            block = getattr(self.blocks, str(i))
            xx = layer_norm(x, block.ln1)
            dx, s, v_first = self.time_mixing(i, xx, att_x[:, i], wkv[:, i], v_first)
            att_x_out.append(xx)
            wkv_out.append(s)
            x = x + dx

            xx = layer_norm(x, block.ln2)
            x = x + self.channel_mixing(i, xx, ffn_x[:, i])
            ffn_x_out.append(xx)

        logits = layer_norm(x, self.ln_out) @ self.head.weight
        return logits, torch.stack(att_x_out, 1), torch.stack(wkv_out, 1), torch.stack(ffn_x_out, 1)
