"""RWKV-4 single-step cell, batched: tokens [B] and state in, logits [B, vocab] and state out.

Follows the `rwkv` package's RWKV (version 4, att_one / ffn_one) term by term. Token shift mixes each
layer-normed input with the previous token's: mix * x + (1 - mix) * x_prev. Time mixing keeps, per channel,
the numerically stable WKV sums a, b and exponent p (see ops/wkv4.py); channel mixing is a squared-ReLU MLP
gated by a sigmoid receptance.
State (batch-first, stacked over layers): att_x, att_a, att_b, att_p, ffn_x, each [B, L, C].
"""

from __future__ import annotations

import torch
from torch import nn

from rwkv_edge.runtime.manifest import Architecture, StateSpec

from ..ops import wkv4, wkv4_seq
from .common import as_matrix, hold_weights, layer_loop, normalized_embedding

P_INIT = -1e38  # p starts "minus infinity": the first token's exp(p - q) is exactly 0, and stays finite in fp32


def state_specs(arch: Architecture) -> list[StateSpec]:
    shape = ["batch", arch.n_layer, arch.n_embd]
    return [
        StateSpec("att_x", "att_x", "att_x_out", shape),
        StateSpec("att_a", "att_a", "att_a_out", shape),
        StateSpec("att_b", "att_b", "att_b_out", shape),
        StateSpec("att_p", "att_p", "att_p_out", shape, init=P_INIT),
        StateSpec("ffn_x", "ffn_x", "ffn_x_out", shape),
    ]


def prepare_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tensors -> the cell's: emb pre-normalized, matrices [in, out], mixes flat,
    time_decay turned into the log-decay w = -exp(time_decay) once (as the package does)."""
    out = {}
    for key, t in weights.items():
        if key.startswith("blocks.0.ln0."):
            continue
        t = t.float()
        if ".time_" in key:
            t = t.reshape(-1)  # time_mix_k [1, 1, C] -> [C]
        if key.endswith("att.time_decay"):
            t = -torch.exp(t)
        out[key] = as_matrix(key, t)
    out["emb.weight"] = normalized_embedding(weights)
    return out


class RWKV4Cell(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], arch: Architecture):
        super().__init__()
        self.arch = arch
        self.all_positions = False  # sequence forward: logits of every position (perplexity), else the last only
        hold_weights(self, prepare_weights(weights))

    def time_mixing(self, i: int, x, x_prev, a, b, p):
        att = getattr(self.blocks, str(i)).att
        kx = x * att.time_mix_k + x_prev * (1 - att.time_mix_k)
        vx = x * att.time_mix_v + x_prev * (1 - att.time_mix_v)
        rx = x * att.time_mix_r + x_prev * (1 - att.time_mix_r)

        r = torch.sigmoid(rx @ att.receptance.weight)
        k = kx @ att.key.weight
        v = vx @ att.value.weight
        wkv_op = wkv4 if x.dim() == 2 else wkv4_seq  # sequence: the recurrence over the chunk's time axis
        wkv, a, b, p = wkv_op(k, v, a, b, p, att.time_first, att.time_decay)
        return (r * wkv) @ att.output.weight, a, b, p

    def channel_mixing(self, i: int, x, x_prev, input_ids):
        ffn = getattr(self.blocks, str(i)).ffn
        kx = x * ffn.time_mix_k + x_prev * (1 - ffn.time_mix_k)
        rx = x * ffn.time_mix_r + x_prev * (1 - ffn.time_mix_r)
        r = torch.sigmoid(rx @ ffn.receptance.weight)
        k = torch.relu(kx @ ffn.key.weight) ** 2
        return r * (k @ ffn.value.weight)

    def forward(self, input_ids, att_x, att_a, att_b, att_p, ffn_x):
        return layer_loop(self, input_ids, att_x, (att_a, att_b, att_p), ffn_x)
