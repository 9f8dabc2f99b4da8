"""Random-weight RWKV checkpoints in BlinkDL's official key layout, for every generation (4, 5, 5.1, 5.2, 6, 7).

Keys, shapes and key order are those of the released .pth files (the `rwkv` package detects RWKV-5.2 from
the order: an `ln_x` key must come before a 2-D `time_decay`). Values follow RWKV-LM's initialisation
(RWKV-v4neo, RWKV-v5 and RWKV-v7/train_temp src/model.py) for the per-channel vectors: token-shift mixes
in [0, 1] rising with the channel, decays spread from slow to fast, bonuses near the trained values.
Where RWKV-LM starts at zero (output projections, low-rank w1 matrices, ffn.value) a trained model is not
zero, so those get scaled normal values instead: every matrix is normal with std gain / sqrt(fan_in), so
each projection keeps activations near unit scale and a 12-layer model stays sane in fp32 with
non-degenerate logits. Deterministic by seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

VERSIONS = ("4", "5", "5.1", "5.2", "6", "7")
DEEPEMBED_RANK = 32  # DeepEmbed's per-token matrix is 32 x 32, stored flat as s_emb.weight [vocab, 1024]


def default_n_ffn(version: str, n_embd: int) -> int:
    """RWKV-4 and -7 use 4x the width; RWKV-5 and -6 use 3.5x, rounded down to a multiple of 32."""
    return 4 * n_embd if version in ("4", "7") else int(n_embd * 3.5) // 32 * 32


def lora_dims(version: str, n_embd: int) -> dict[str, int]:
    """Low-rank widths as RWKV-LM picks them for a width C (RWKV-7 0.1B, C=768: decay 64, aaa 64, mv 32, gate 128)."""
    C = n_embd
    if version == "6":
        return {"mix": 64 if C >= 4096 else 32, "decay": 128 if C >= 4096 else 64}
    if version == "7":

        def suggest(f):  # RWKV-LM's "suggestion"
            return max(32, int(round(f * C**0.5 / 32)) * 32)

        return {"decay": suggest(2.5), "aaa": suggest(2.5), "mv": suggest(1.7), "gate": suggest(5.0)}
    return {}


def make_checkpoint(
    version: str,
    n_layer: int,
    n_embd: int,
    head_size: int,
    vocab_size: int,
    n_ffn: int | None = None,
    seed: int = 0,
    time_state: bool = False,
    dtype: torch.dtype = torch.float32,
    *,
    deepembed: bool = False,
) -> dict[str, torch.Tensor]:
    """A state_dict as BlinkDL's trainer saves it. head_size is ignored for RWKV-4 (its WKV is per channel)."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if version != "4" and n_embd % head_size:
        raise ValueError(f"n_embd {n_embd} is not a multiple of head_size {head_size}")
    if time_state and version == "4":
        raise ValueError("RWKV-4 has no state-tuned checkpoints (time_state needs a matrix-valued WKV state)")
    if deepembed and version != "7":
        raise ValueError("DeepEmbed exists only for RWKV-7")
    g = _Random(seed)
    C, V = n_embd, vocab_size
    F = n_ffn or default_n_ffn(version, C)
    w: dict[str, torch.Tensor] = {}
    # Normalised by ln0 before use, so its scale is free; not tiny, so that ln0's epsilon plays no role.
    w["emb.weight"] = g.normal(V, C, std=0.1)
    for i in range(n_layer):
        b = f"blocks.{i}."
        w[b + "ln1.weight"], w[b + "ln1.bias"] = g.layer_norm(C)
        w[b + "ln2.weight"], w[b + "ln2.bias"] = g.layer_norm(C)
        if i == 0:
            w[b + "ln0.weight"], w[b + "ln0.bias"] = g.layer_norm(C)
        layer = _Layer(i, n_layer, C)
        att = {"4": _att_v4, "5": _att_v5, "5.1": _att_v5, "5.2": _att_v5, "6": _att_v6, "7": _att_v7}[version]
        w.update({b + "att." + k: t for k, t in att(g, layer, version, head_size).items()})
        if time_state:
            H = C // head_size
            w[b + "att.time_state"] = g.normal(H, head_size, head_size, std=0.3)  # [H, N, N]
        ffn = _ffn_v7(g, layer, F, V if deepembed else 0) if version == "7" else _ffn(g, layer, version, F)
        w.update({b + "ffn." + k: t for k, t in ffn.items()})
    w["ln_out.weight"], w["ln_out.bias"] = g.layer_norm(C)
    w["head.weight"] = g.matrix(V, C, gain=3.0)  # logits std ~3, like a trained model's spread
    return {k: t.to(dtype).contiguous() for k, t in w.items()}


def save_checkpoint(weights: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write as .pth (torch.save, keeps key order) or .safetensors (by the path's extension)."""
    path = Path(path)
    if path.suffix == ".pth":
        torch.save(weights, path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: t.contiguous() for k, t in weights.items()}, str(path))
    else:
        raise ValueError(f"save_checkpoint: path must end in .pth or .safetensors, got {path.name!r}")
    return path


# ---------------------------------------------------------------------------------------------------- values


class _Random:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.g) * std + mean

    def matrix(self, rows: int, cols: int, gain: float = 1.0) -> torch.Tensor:
        # [out, in] like nn.Linear (and w1/w2 low-rank factors): unit-scale inputs give unit-scale outputs
        return self.normal(rows, cols, std=gain / math.sqrt(cols))

    def jitter(self, base: torch.Tensor, std: float, lo: float = -math.inf, hi: float = math.inf) -> torch.Tensor:
        # trained vectors wander from their init: add noise, keep mixes inside [0, 1]
        return (base + self.normal(*base.shape, std=std)).clamp(lo, hi)

    def layer_norm(self, C: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normal(C, std=0.1, mean=1.0), self.normal(C, std=0.05)


class _Layer:
    """RWKV-LM's per-layer schedules: deeper layers mix less of the previous token and decay differently."""

    def __init__(self, i: int, n_layer: int, C: int):
        self.ratio_0_to_1 = i / (n_layer - 1) if n_layer > 1 else 0.0
        self.ratio_1_to_almost0 = 1.0 - i / n_layer
        self.ddd = (torch.arange(C) / C).view(1, 1, C)  # [1, 1, C] channel position in [0, 1)
        self.n = torch.arange(C, dtype=torch.float32)  # channel index
        self.C = C

    def mix(self, g: _Random, power: float, offset: float = 0.0, flip: bool = False) -> torch.Tensor:
        m = torch.pow(self.ddd, power) + offset
        return g.jitter(1.0 - m if flip else m, 0.05, 0.0, 1.0)  # [1, 1, C]

    def decay_speed(self) -> torch.Tensor:
        # -6 (slow: w = exp(-exp(-6)) ~ 0.9975) to -1 (fast: ~0.69), per channel
        return -6 + 5 * (self.n / max(self.C - 1, 1)) ** (0.7 + 1.3 * self.ratio_0_to_1)

    def bonus(self) -> torch.Tensor:
        zigzag = ((self.n + 1) % 3 - 1) * 0.1
        return self.ratio_0_to_1 * (1 - self.n / max(self.C - 1, 1)) + zigzag


def _att_v4(g: _Random, L: _Layer, version: str, head_size: int) -> dict:
    C, r1 = L.C, L.ratio_1_to_almost0
    h = L.n / max(C - 1, 1)
    zigzag = ((L.n + 1) % 3 - 1) * 0.5
    return {
        # w = -exp(time_decay) per step in log space: -5..3 spans barely-decaying to forget-at-once
        "time_decay": g.jitter(-5 + 8 * h ** (0.7 + 1.3 * L.ratio_0_to_1), 0.2),  # [C]
        "time_first": g.jitter(math.log(0.3) + zigzag, 0.1),  # [C]
        "time_mix_k": L.mix(g, r1),
        "time_mix_v": L.mix(g, r1, 0.3 * L.ratio_0_to_1),
        "time_mix_r": L.mix(g, 0.5 * r1),
        "key.weight": g.matrix(C, C),
        "value.weight": g.matrix(C, C),
        "receptance.weight": g.matrix(C, C),
        "output.weight": g.matrix(C, C),
    }


def _att_v5(g: _Random, L: _Layer, version: str, head_size: int) -> dict:
    C, r1 = L.C, L.ratio_1_to_almost0
    H = C // head_size
    w = {
        "time_mix_k": L.mix(g, r1),
        "time_mix_v": L.mix(g, r1, 0.3 * L.ratio_0_to_1),
        "time_mix_r": L.mix(g, 0.5 * r1),
    }
    if version != "5":
        w["time_mix_g"] = L.mix(g, 0.5 * r1)
    if version == "5.2":
        w["time_decay"] = g.jitter(L.decay_speed(), 0.2).view(H, head_size)  # [H, N]: one decay per channel
        w["time_faaaa"] = g.jitter(L.bonus(), 0.1).view(H, head_size)  # [H, N]: the bonus u itself
    else:
        h = torch.arange(H) / max(H - 1, 1)
        w["time_decay"] = g.jitter(-6 + 5 * h ** (0.7 + 1.3 * L.ratio_0_to_1), 0.2)  # [H]: one decay per head
        w["time_first"] = g.jitter(torch.full((H,), -3.0), 0.3)  # [H]: log of the bonus, u = exp(time_first)
    if version == "5.1":
        w["gate.weight"] = g.matrix(C, C)  # RWKV-LM registers the 5.1 gate before receptance
    w.update({k: g.matrix(C, C) for k in ("receptance.weight", "key.weight", "value.weight", "output.weight")})
    if version == "5.2":
        w["gate.weight"] = g.matrix(C, C)
    w["ln_x.weight"], w["ln_x.bias"] = g.layer_norm(C)  # GroupNorm(H, C)
    return w


def _att_v6(g: _Random, L: _Layer, version: str, head_size: int) -> dict:
    C, r1, r0 = L.C, L.ratio_1_to_almost0, L.ratio_0_to_1
    H = C // head_size
    d = lora_dims("6", C)
    return {
        "time_maa_x": L.mix(g, r1, flip=True),
        "time_maa_w": L.mix(g, r1, flip=True),
        "time_maa_k": L.mix(g, r1, flip=True),
        "time_maa_v": L.mix(g, r1, 0.3 * r0, flip=True),
        "time_maa_r": L.mix(g, 0.5 * r1, flip=True),
        "time_maa_g": L.mix(g, 0.5 * r1, flip=True),
        # data-dependent mix offsets for w, k, v, r, g: tanh(x @ w1) [5*D] -> 5 x ([D] @ w2[j]) ~ +-0.1
        "time_maa_w1": g.normal(C, 5 * d["mix"], std=0.5 / math.sqrt(C)),  # [C, 5*D]
        "time_maa_w2": g.normal(5, d["mix"], C, std=0.2 / math.sqrt(d["mix"])),  # [5, D, C]
        "time_decay": g.jitter(L.decay_speed(), 0.2).view(1, 1, C),  # [1, 1, C]
        "time_decay_w1": g.normal(C, d["decay"], std=0.5 / math.sqrt(C)),  # [C, D]
        "time_decay_w2": g.normal(d["decay"], C, std=0.5 / math.sqrt(d["decay"])),  # [D, C]
        "time_faaaa": g.jitter(L.bonus(), 0.1).view(H, head_size),  # [H, N]
        "receptance.weight": g.matrix(C, C),
        "key.weight": g.matrix(C, C),
        "value.weight": g.matrix(C, C),
        "output.weight": g.matrix(C, C),
        "gate.weight": g.matrix(C, C),
        "ln_x.weight": g.normal(C, std=0.1, mean=1.0),
        "ln_x.bias": g.normal(C, std=0.05),
    }


def _att_v7(g: _Random, L: _Layer, version: str, head_size: int) -> dict:
    C, N, r1, r0 = L.C, head_size, L.ratio_1_to_almost0, L.ratio_0_to_1
    H = C // N
    d = lora_dims("7", C)
    linear = L.n / max(C - 1, 1) - 0.5  # -0.5 .. 0.5 across channels
    zigzag = ((L.n % N) - (N - 1) / 2) / max((N - 1) / 2, 1)  # -1 .. 1 within each head
    zigzag = zigzag * zigzag.abs()
    www = -6 + 6 * (L.n / max(C - 1, 1)) ** (1 + r0**0.3)

    def row(t):  # [C] -> [1, 1, C] as stored
        return t.view(1, 1, C)

    def lora(D: int) -> tuple[torch.Tensor, torch.Tensor]:
        # x @ w1 [C, D] -> tanh/sigmoid -> @ w2 [D, C]: an offset of ~0.2 around the base vector
        return g.normal(C, D, std=0.5 / math.sqrt(C)), g.normal(D, C, std=0.5 / math.sqrt(D))

    w = {f"x_{m}": L.mix(g, p * r1, flip=True) for m, p in zip("rwkvag", (0.2, 0.9, 0.7, 0.7, 0.9, 0.2))}
    w["w1"], w["w2"] = lora(d["decay"])
    # decay = exp(-exp(-0.5) * sigmoid(w0 + lora)): w0 -8..3 spans 0.999.. to 0.55 per step
    w["w0"] = row(g.jitter(www + 0.5 + zigzag * 2.5, 0.2))
    w["a1"], w["a2"] = lora(d["aaa"])
    w["a0"] = row(g.jitter(-0.19 + zigzag * 0.3 + linear * 0.4, 0.1))  # in-context learning rate, sigmoid(a0) ~ 0.45
    w["v1"], w["v2"] = lora(d["mv"])  # official files carry v0/v1/v2 in layer 0 too (unused there)
    w["v0"] = row(g.jitter(0.73 - linear * 0.4, 0.1))
    w["g1"] = g.normal(C, d["gate"], std=1 / math.sqrt(C))
    w["g2"] = g.normal(d["gate"], C, std=1 / math.sqrt(d["gate"]))
    w["k_k"] = row(g.jitter(0.71 - linear * 0.1, 0.05))
    w["k_a"] = row(g.jitter(torch.full((C,), 1.02), 0.02))
    w["r_k"] = g.jitter(torch.full((H, N), -0.04), 0.1)  # [H, N]
    w.update({k: g.matrix(C, C) for k in ("receptance.weight", "key.weight", "value.weight", "output.weight")})
    w["ln_x.weight"], w["ln_x.bias"] = g.layer_norm(C)  # GroupNorm(H, C, eps=64e-5)
    return w


def _ffn(g: _Random, L: _Layer, version: str, F: int) -> dict:
    C, r1 = L.C, L.ratio_1_to_almost0
    if version == "6":
        mix = {"time_maa_k": L.mix(g, r1**4, flip=True), "time_maa_r": L.mix(g, r1**4, flip=True)}
    else:
        mix = {"time_mix_k": L.mix(g, r1), "time_mix_r": L.mix(g, r1)}
    return mix | {
        "key.weight": g.matrix(F, C),  # [F, C]
        "receptance.weight": g.matrix(C, C),
        "value.weight": g.matrix(C, F),  # [C, F]
    }


def _ffn_v7(g: _Random, L: _Layer, F: int, deepembed_vocab: int) -> dict:
    C = L.C
    w = {
        "x_k": L.mix(g, L.ratio_1_to_almost0**4, flip=True),
        "key.weight": g.matrix(F, C),
        "value.weight": g.matrix(C, F),
    }
    if deepembed_vocab:
        R = DEEPEMBED_RANK
        # k *= ((x @ s1) @ reshape(s_emb[token] + emb @ s_emb_x.T, [R, R])) @ s2 + s0: a per-token gate near 1
        w["s0"] = g.jitter(torch.ones(1, 1, F), 0.1)  # [1, 1, F]
        w["s1"] = g.normal(C, R, std=1 / math.sqrt(C))  # [C, R]
        w["s2"] = g.normal(R, F, std=0.2 / math.sqrt(R))  # [R, F]
        w["s_emb.weight"] = g.normal(deepembed_vocab, R * R, std=0.5 / math.sqrt(R))  # [vocab, R*R]
        w["s_emb_x.weight"] = g.normal(R * R, C, std=0.1 / math.sqrt(C))  # [R*R, C]
    return w


def save_neox_stub_tokenizer(vocab_size: int, path: str | Path) -> Path:
    """A word-level `tokenizers` JSON with `vocab_size` ids, standing in for 20B_tokenizer.json (no hub here)
    when a RWKV-4 Pile-shaped checkpoint is exported."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0")).save(str(path))
    return Path(path)
