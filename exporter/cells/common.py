"""What every generation's cell shares: holding checkpoint tensors as a module tree, the layer norm, token shift,
the matrix-valued state's specs and the layer loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_edge.runtime.manifest import Architecture, StateSpec

LN_EPS = 1e-5  # nn.LayerNorm's default, which BlinkDL's models are trained with

# Checkpoint matrices are stored [out, in] (nn.Linear); the cells keep them as [in, out] so that the graph
# is a plain MatMul(x, W) with no Transpose node.
MATRIX_SUFFIXES = (
    "key.weight",
    "value.weight",
    "receptance.weight",
    "output.weight",
    "gate.weight",
    "head.weight",
)


def hold_weights(root: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Attach the tensors to `root` as buffers of nested modules named by the official keys
    ("blocks.0.att.key.weight"), so the exported initializers keep the names that quantization policies and
    humans look for."""
    for key, tensor in weights.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, tensor.detach().to(torch.float32).contiguous())


def as_matrix(key: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous() if key.endswith(MATRIX_SUFFIXES) else tensor


def layer_norm(x: torch.Tensor, ln: nn.Module) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, LN_EPS)


def head_group_norm(y: torch.Tensor, ln: nn.Module, eps: float) -> torch.Tensor:
    """ln_x of RWKV-5..7: a group norm with one group per head over its N channels (biased variance, as
    F.group_norm), then the per-channel affine, ln.weight and ln.bias held [H, N] (per_head).
    y [B, H, N] -> [B, H, N] (sequence: [B, T, H, N]). The norm is a layer norm over each head's N channels, so it
    exports as one LayerNormalization node (mean, variance and sqrt written out were seven nodes)."""
    return F.layer_norm(y, y.shape[-1:], eps=eps) * ln.weight + ln.bias


def per_head(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """A per-channel vector [C] (or [1, 1, C] as files store it) -> [H, N], to scale [B, H, N] tensors directly."""
    return t.reshape(n_head, -1)  # [C] -> [H, N]


def heads(t: torch.Tensor, arch: Architecture) -> torch.Tensor:
    """[..., C] -> [..., H, N]: a step's [B, C] -> [B, H, N], a sequence's [B, T, C] -> [B, T, H, N]."""
    return t.view(*t.shape[:-1], arch.n_head, arch.head_size)


def per_layer(state: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A stacked state [B, L, D, ...] -> its L layers, each [B, D, ...]: one Split node. (state[:, i] exports a
    Gather per layer, which ONNX Runtime turns into a Split plus a Squeeze per layer.)"""
    return state.flatten(1, 2).split(state.shape[2], dim=1)  # [B, L, D, ...] -> [B, L * D, ...] -> L x [B, D, ...]


def stacked_layers(layers: list[torch.Tensor]) -> torch.Tensor:
    """per_layer's inverse: L tensors [B, D, ...] -> the stacked state [B, L, D, ...]: an Unsqueeze per layer (free)
    and one Concat that writes the state output. (A Concat on axis 1 and a Reshape would copy the whole state a
    second time: at batch 16 on the RWKV-7 0.1B shape, a tenth of a step.)"""
    return torch.stack(layers, dim=1)


def normalized_embedding(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """emb.weight with blocks.0.ln0 applied once at build time (as the `rwkv` package does): a token's
    embedding is only ever used after ln0, so the graph gathers the finished row."""
    emb = weights["emb.weight"].float()
    return F.layer_norm(
        emb, (emb.shape[1],), weights["blocks.0.ln0.weight"].float(), weights["blocks.0.ln0.bias"].float(), LN_EPS
    )


def token_shift(x: torch.Tensor, x_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous token's input for each position, and the state to carry on.
    Step: x [B, C], x_prev [B, C] -> (x_prev, x). Sequence: x [B, T, C] -> (concat(x_prev, x[:, :-1]) [B, T, C],
    x[:, -1] [B, C]): the whole chunk is shifted at once, so its projections are one [B, T, C] @ [C, D] matmul."""
    if x.dim() == 2:
        return x_prev, x
    return torch.cat([x_prev.unsqueeze(1), x[:, :-1]], dim=1), x[:, -1]


def last_position(x: torch.Tensor, all_positions: bool) -> torch.Tensor:
    """Sequence graphs return the logits of the last position only (the head matmul runs once), unless asked for
    every position (perplexity); a step's x [B, C] passes through."""
    return x[:, -1] if x.dim() == 3 and not all_positions else x


def matrix_state_specs(arch: Architecture) -> list[StateSpec]:
    """The state of RWKV-5, 5.1, 5.2, 6 and 7, batch-first and stacked over layers: att_x [B, L, C],
    wkv [B, L, H, N, N], ffn_x [B, L, C]. The last two wkv axes are (key, value) up to RWKV-6 and (value, key) for
    RWKV-7, as in the `rwkv` package."""
    L, C, H, N = arch.n_layer, arch.n_embd, arch.n_head, arch.head_size
    return [
        StateSpec("att_x", "att_x", "att_x_out", ["batch", L, C]),
        StateSpec("wkv", "wkv", "wkv_out", ["batch", L, H, N, N]),
        StateSpec("ffn_x", "ffn_x", "ffn_x_out", ["batch", L, C]),
    ]


def layer_loop(cell: nn.Module, input_ids, att_x, time_states: tuple, ffn_x, first_carry=lambda x: ()) -> tuple:
    """The forward pass every generation shares; the generation's own math is cell.time_mixing and
    cell.channel_mixing. input_ids [B] (a step) or [B, T] (a sequence: the prefill graph) and the states in ->
    (logits, att_x, *time_states, ffn_x): logits [B, vocab] (or [B, T, vocab] with cell.all_positions) and the
    states after the last token. time_states are the time-mixing states besides att_x, each [B, L, ...] (RWKV-4:
    att_a, att_b, att_p; RWKV-5..7: wkv). Each layer i is two pre-norm residual steps:
        dx, *states, *carry = cell.time_mixing(i, x, x_prev, *layer i's time_states, *carry)
        dx = cell.channel_mixing(i, x, x_prev, input_ids)
    with x the layer-normed input and x_prev the previous token's (token_shift); channel mixing gets the tokens for
    RWKV-7 DeepEmbed's per-token matrices. The carry is what time mixing hands from one layer to the next (RWKV-7's
    v_first), first_carry(embedded input) for layer 0."""
    x = F.embedding(input_ids, cell.emb.weight)  # [B, C] or [B, T, C]: a plain Gather in the graph
    carry = first_carry(x)
    att_x, *time_states, ffn_x = (per_layer(s) for s in (att_x, *time_states, ffn_x))
    att_x_out, time_out, ffn_x_out = [], [[] for _ in time_states], []
    for i in range(cell.arch.n_layer):
        block = getattr(cell.blocks, str(i))
        xx = layer_norm(x, block.ln1)
        xx_prev, xx_last = token_shift(xx, att_x[i])
        dx, *layer_out = cell.time_mixing(i, xx, xx_prev, *(s[i] for s in time_states), *carry)
        att_x_out.append(xx_last)
        for out, s in zip(time_out, layer_out):
            out.append(s)
        carry = layer_out[len(time_out) :]
        x = x + dx

        xx = layer_norm(x, block.ln2)
        xx_prev, xx_last = token_shift(xx, ffn_x[i])
        x = x + cell.channel_mixing(i, xx, xx_prev, input_ids)
        ffn_x_out.append(xx_last)

    x = last_position(x, cell.all_positions)
    logits = layer_norm(x, cell.ln_out) @ cell.head.weight
    return logits, stacked_layers(att_x_out), *(stacked_layers(out) for out in time_out), stacked_layers(ffn_x_out)
