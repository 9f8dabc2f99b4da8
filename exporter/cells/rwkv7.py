"""RWKV-7 "Goose" (x070) single-step cell, batched: tokens [B] and state in, logits [B, vocab] and state out.

Follows the `rwkv` package's RWKV_x070 (the reference) term by term. Names are the checkpoint's:
r receptance, w decay, k key, v value, a in-context learning rate, g gate, kk the normalized removal key.
State (batch-first, stacked over layers): att_x [B, L, C], wkv [B, L, H, N, N] (value x key), ffn_x [B, L, C].

DeepEmbed variant (ffn.s_emb / s_emb_x / s0 / s1 / s2 in every block; the package's RWKV_DE_VERSION=1): channel
mixing's hidden layer is scaled per token, k *= ((x @ s1) @ S_tok) @ s2 + s0, with S_tok [R, R] the token's row
of s_emb plus its normalized embedding through s_emb_x (merged once at build time, as the package does).
"""

from __future__ import annotations

import torch
from torch import nn

from rwkv_edge.runtime.manifest import Architecture

from ..ops import wkv7, wkv7_seq
from .common import as_matrix, head_group_norm, heads, hold_weights, layer_loop, normalized_embedding, per_head

GROUP_NORM_EPS = 64e-5  # ln_x epsilon in the `rwkv` package for x070 (head_size 64 * 1e-5)
DECAY_SCALE = 0.606531  # exp(-0.5): the decay w = exp(-0.606531 * sigmoid(.)) lies in (exp(-0.606531), 1)
NORMALIZE_EPS = 1e-12  # F.normalize's default: kk = k / max(|k|, eps)
PER_HEAD = ("att.k_k", "att.k_a", "att.ln_x.weight", "att.ln_x.bias")  # per-channel vectors scaling [B, H, N] tensors


# Layer 0 computes v_first instead of mixing towards it: official checkpoints still carry these.
LAYER0_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def prepare_weights(weights: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """Official tensors -> the cell's: emb pre-normalized, matrices [in, out], [1, 1, C] vectors flat, the PER_HEAD
    vectors [H, N] (as r_k is already); DeepEmbed's s_emb merged with the embedding: s_emb + ln0(emb) @ s_emb_x^T
    [vocab, R*R] (s_emb_x dropped)."""
    out = {}
    for key, t in weights.items():
        # ln0 is folded into emb, s_emb_x into s_emb
        if key.startswith("blocks.0.ln0.") or key in LAYER0_UNUSED or key.endswith("ffn.s_emb_x.weight"):
            continue
        t = t.float()
        if t.dim() == 3 and t.shape[:2] == (1, 1):
            t = t.reshape(-1)  # x_r, w0, k_k ...: [1, 1, C] -> [C]
        if key.endswith(PER_HEAD):
            t = per_head(t, arch.n_head)
        out[key] = as_matrix(key, t)
    out["emb.weight"] = normalized_embedding(weights)
    for key in [k for k in out if k.endswith("ffn.s_emb.weight")]:
        out[key] = out[key] + out["emb.weight"] @ weights[key.replace("s_emb.", "s_emb_x.")].float().t()
    return out


class RWKV7Cell(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], arch: Architecture):
        super().__init__()
        self.arch = arch
        self.deepembed = "blocks.0.ffn.s_emb.weight" in weights
        self.all_positions = False  # sequence forward: logits of every position (perplexity), else the last only
        hold_weights(self, prepare_weights(weights, arch))

    def time_mixing(self, i: int, x, x_prev, state, v_first):
        att = getattr(self.blocks, str(i)).att
        xx = x_prev - x
        xr, xw, xk = x + xx * att.x_r, x + xx * att.x_w, x + xx * att.x_k
        xv, xa, xg = x + xx * att.x_v, x + xx * att.x_a, x + xx * att.x_g

        # r, k, a, v, w go per head ([B, H, N]) once each and stay so until y is flattened: one reshape each
        r = heads(xr @ att.receptance.weight, self.arch)
        w = torch.tanh(xw @ att.w1) @ att.w2
        k = heads(xk @ att.key.weight, self.arch)
        v = xv @ att.value.weight
        a = heads(torch.sigmoid(att.a0 + (xa @ att.a1) @ att.a2), self.arch)
        g = torch.sigmoid(xg @ att.g1) @ att.g2

        kk = k * att.k_k
        # F.normalize, less its Expand
        kk = kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min(NORMALIZE_EPS)
        k = k * (1 + (a - 1) * att.k_a)
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(att.v0 + (xv @ att.v1) @ att.v2)
        v = heads(v, self.arch)
        w = heads(torch.exp(-DECAY_SCALE * torch.sigmoid(att.w0 + w)), self.arch)

        wkv = wkv7 if x.dim() == 2 else wkv7_seq  # sequence: the recurrence over the chunk's time axis
        y, state = wkv(state, r, w, k, v, -kk, kk * a)

        bonus = (r * k * att.r_k).sum(dim=-1, keepdim=True) * v  # the current token's own value
        y = (head_group_norm(y, att.ln_x, GROUP_NORM_EPS) + bonus).flatten(-2)  # [B, H, N] -> [B, C]
        return (y * g) @ att.output.weight, state, v_first

    def channel_mixing(self, i: int, x, x_prev, input_ids):
        ffn = getattr(self.blocks, str(i)).ffn
        k = x + (x_prev - x) * ffn.x_k
        k = torch.relu(k @ ffn.key.weight) ** 2
        if self.deepembed:
            R = ffn.s1.shape[1]  # 32 in every DeepEmbed model: s_emb rows are R x R matrices
            s_tok = ffn.s_emb.weight[input_ids].view(*input_ids.shape, R, R)  # [B, R*R] -> [B, R, R] (seq: [B, T, ...])
            ss = ((x @ ffn.s1).unsqueeze(-2) @ s_tok).squeeze(-2)  # [B, 1, R] @ [B, R, R] -> [B, R]
            k = k * (ss @ ffn.s2 + ffn.s0)
        return k @ ffn.value.weight

    def forward(self, input_ids, att_x, wkv, ffn_x):
        # v_first goes from layer to layer; layer 0 sets it from its own v
        return layer_loop(self, input_ids, att_x, (wkv,), ffn_x, first_carry=lambda x: (torch.zeros_like(x),))
