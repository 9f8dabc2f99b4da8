"""RWKV-5 "Eagle" (5, 5.1 and 5.2) single-step cell, batched: tokens [B] and state in, logits [B, vocab] and
state out.

Follows the `rwkv` package's RWKV (att_one_v5 for 5, att_one_v5_1 for 5.1 and 5.2, ffn_one) term by term.
Token shift mixes each layer-normed input with the previous token's: mix * x + (1 - mix) * x_prev. Time
mixing keeps, per head, a matrix-valued WKV state S [N, N] (see ops/wkv5.py):
    y = r @ (u * k^T v + S),   S' = k^T v + w * S
then a group norm over each head (ln_x) and the output projection. The three sub-generations differ in:
    5    w and u one per head: time_decay [H], time_first [H] (u = exp(time_first)); no gate
    5.1  adds the gate: y * silu(g), g from its own token-shift mix time_mix_g and gate.weight
    5.2  w and u one per channel: time_decay [H, N], time_faaaa [H, N] (u itself, no exp)
Channel mixing is RWKV-4's: a squared-ReLU MLP gated by a sigmoid receptance.

State (batch-first, stacked over layers): att_x [B, L, C], wkv [B, L, H, N, N], ffn_x [B, L, C].
The wkv axes are (head, key, value): the package's own for these generations, so its states compare directly
and a state-tuned file's att.time_state (stored (head, value, key)) enters transposed, as the package does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rwkv_edge.runtime.manifest import Architecture

from ..checkpoint import TIME_STATE
from ..ops import wkv5, wkv5_seq
from .common import as_matrix, head_group_norm, heads, hold_weights, layer_loop, normalized_embedding, per_head

# ln_x epsilon: the `rwkv` package hard-codes 64e-5 for every 5.x and 6 model (att_one_v5*, att_one_v6_0);
# RWKV-LM trains with 1e-5 * head_size_divisor**2 and head_size_divisor = 8.
GROUP_NORM_EPS = 64e-5
GATED = ("5.1", "5.2")  # versions with the receptance-like gate g (the package: version in [5.1, 5.2, 6.0])


def initial_states(time_state: list[torch.Tensor], arch: Architecture) -> dict[str, np.ndarray]:
    """State tuning: per layer att.time_state [H, N (value), N (key)] as files store it -> the initial wkv
    [L, H, N (key), N (value)] (no batch axis), transposed as the package does (`time_state.transpose(1, 2)`)."""
    wkv = torch.stack(
        [t.float().reshape(arch.n_head, arch.head_size, arch.head_size).transpose(1, 2) for t in time_state]
    )
    return {"wkv": wkv.contiguous().numpy()}


def prepare_weights(weights: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """Official tensors -> the cell's: emb pre-normalized, matrices [in, out], mixes flat, ln_x [H, N], and (as the
    package does at load time) the decay turned into its factor and the bonus into u, both spread to [H, N]:
        time_decay  -> w = exp(-exp(time_decay))   in (0, 1)
        time_first  -> time_faaaa = exp(time_first) (5, 5.1 files store log u; newer files store u as time_faaaa)
    """
    H, N = arch.n_head, arch.head_size

    def per_channel(t):  # [H] or [H, N] -> [H, N]
        return t.reshape(H, -1).expand(H, N).contiguous()

    out = {}
    for key, t in weights.items():
        if key.startswith("blocks.0.ln0.") or key.endswith(TIME_STATE):  # ln0 is folded into emb
            continue
        t = t.float()
        if ".time_mix_" in key:
            t = t.reshape(-1)  # [1, 1, C] -> [C]
        if key.endswith("att.time_decay"):
            t = per_channel(torch.exp(-torch.exp(t)))
        elif key.endswith("att.time_first"):
            key, t = key.replace("time_first", "time_faaaa"), per_channel(torch.exp(t))
        elif key.endswith("att.time_faaaa"):
            t = per_channel(t)
        elif ".att.ln_x." in key:
            t = per_head(t, H)  # scales y per head, before the heads are flattened
        out[key] = as_matrix(key, t)
    out["emb.weight"] = normalized_embedding(weights)
    return out


class RWKV5Cell(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], arch: Architecture):
        super().__init__()
        self.arch = arch
        self.all_positions = False  # sequence forward: logits of every position (perplexity), else the last only
        self.gated = arch.version in GATED
        hold_weights(self, prepare_weights(weights, arch))

    def time_mixing(self, i: int, x, x_prev, state):
        att = getattr(self.blocks, str(i)).att
        kx = x * att.time_mix_k + x_prev * (1 - att.time_mix_k)
        vx = x * att.time_mix_v + x_prev * (1 - att.time_mix_v)
        rx = x * att.time_mix_r + x_prev * (1 - att.time_mix_r)

        r = heads(rx @ att.receptance.weight, self.arch)
        k = heads(kx @ att.key.weight, self.arch)
        v = heads(vx @ att.value.weight, self.arch)
        if x.dim() == 2:
            y, state = wkv5(state, r, k, v, att.time_decay, att.time_faaaa)  # constant w, u: [H, N]
        else:  # sequence: the recurrence over the chunk's time axis, which scans w per token too
            y, state = wkv5_seq(state, r, k, v, att.time_decay.expand_as(r), att.time_faaaa)

        y = head_group_norm(y, att.ln_x, GROUP_NORM_EPS).flatten(-2)  # [B, H, N] -> [B, C]
        if self.gated:
            gx = x * att.time_mix_g + x_prev * (1 - att.time_mix_g)
            y = y * F.silu(gx @ att.gate.weight)
        return y @ att.output.weight, state

    def channel_mixing(self, i: int, x, x_prev, input_ids):
        ffn = getattr(self.blocks, str(i)).ffn
        kx = x * ffn.time_mix_k + x_prev * (1 - ffn.time_mix_k)
        rx = x * ffn.time_mix_r + x_prev * (1 - ffn.time_mix_r)
        r = torch.sigmoid(rx @ ffn.receptance.weight)
        k = torch.relu(kx @ ffn.key.weight) ** 2
        return r * (k @ ffn.value.weight)

    def forward(self, input_ids, att_x, wkv, ffn_x):
        return layer_loop(self, input_ids, att_x, (wkv,), ffn_x)
