"""Train the embedded default model: a tiny byte-level RWKV-7 ("x070") language model.

    .venv/bin/python scripts/train_default_model.py

reads  scripts/data/pride_and_prejudice.txt                   (public domain, see scripts/data/README.md)
writes exporter/default_model/rwkv7-tiny-bytes.safetensors   (fp32, official RWKV-7 key layout)
       exporter/default_model/model_card.json

and then, when the `rwkv` package is installed, checks the saved file with it in a separate process
(`--verify FILE`): held-out bits per byte must match this script's own number, and generated text is printed
and recorded in the model card.

It runs once, by a developer, on a 2-core CPU in about 10 minutes; it is not part of CI. The run is
deterministic on a given machine and torch build: fixed seed, fixed thread count, deterministic algorithms,
a fixed number of steps (never "train until the clock says stop").

The model is written from the RWKV-7 equations (BlinkDL's RWKV-LM, RWKV-v7; the `rwkv` pip package's
RWKV_x070 is the inference reference it must load into):

    time mixing, per layer, per head (N = head size), state S is N x N (rows: value index, cols: key index)
        S_t = S_{t-1} (diag(w_t) - kk_t (kk_t * a_t)^T) + v_t k_t^T
        y_t = S_t r_t
    channel mixing
        relu(key(x'))^2 -> value

The WKV recurrence is a plain loop over time with a hand-written backward (a custom autograd Function).
At this size each time step is little arithmetic, so the cost is the number of tensor ops per step: the
loops do only what the recurrence needs (4 ops a step each way) and every other gradient is computed for all
steps at once afterwards. About 0.33 s per step of 32 x 128 bytes on an idle 2-core machine.

Parameter names are the checkpoint's own (`blocks.{i}.att.x_r`, ...), so `state_dict()` is the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkv_edge.common.versions import package_version

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "scripts" / "data" / "pride_and_prejudice.txt"
OUT_DIR = REPO / "exporter" / "default_model"
OUT_WEIGHTS = "rwkv7-tiny-bytes.safetensors"
OUT_CARD = "model_card.json"

# The text file is fixed: its hash pins the bytes that the split offset below refers to.
DATA_SHA256 = "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d"
# Bytes [0, VAL_OFFSET) train, bytes [VAL_OFFSET, end) are held out (the last ~5%, starting at a paragraph
# in chapter 58). The text is ASCII, so the byte offset is also the character offset.
VAL_OFFSET = 650916
# Bits per byte are measured on consecutive EVAL_WINDOW-byte windows (the remainder is dropped), each run
# from the zero state, scoring bytes 1..EVAL_WINDOW-1 of each window from the bytes before them.
EVAL_WINDOW = 2048
# The check with the `rwkv` package (one byte at a time, slow) scores the first VERIFY_WINDOWS windows.
VERIFY_WINDOWS = 4

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 3  # blocks
    n_embd: int = 96  # C, the residual width
    head_size: int = 32  # N; n_head = C // N
    n_ffn: int = 384  # channel-mix hidden width (4 C)
    vocab_size: int = 256  # bytes
    d_decay_lora: int = 32  # rank of w1/w2 (RWKV-LM: max(32, round(2.5 sqrt(C) / 32) * 32))
    d_aaa_lora: int = 32  # rank of a1/a2 (same rule)
    d_mv_lora: int = 32  # rank of v1/v2 (max(32, round(1.7 sqrt(C) / 32) * 32))
    d_gate_lora: int = 64  # rank of g1/g2 (max(32, round(5 sqrt(C) / 32) * 32))

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234  # torch.manual_seed: init and batch sampling
    threads: int = 2  # torch.set_num_threads (results depend on it)
    steps: int = 1500  # optimizer steps
    batch_size: int = 32  # sequences per step
    ctx_len: int = 128  # bytes per training sequence, each predicted from the bytes before it
    lr: float = 5e-3  # peak learning rate (AdamW)
    lr_final: float = 1e-4  # cosine schedule ends here
    warmup: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # on 2-D weight matrices (.weight), not on the per-channel vectors or LoRAs
    grad_clip: float = 1.0  # global gradient norm
    eval_every: int = 300  # steps between held-out evaluations


# ---------------------------------------------------------------------------------------------------------
# WKV-7 recurrence


class WKV7(torch.autograd.Function):
    """y_t = S_t r_t, S_t = S_{t-1} * w_t + (S_{t-1} a_t) b_t^T + v_t k_t^T, from S_0 = 0.

    All inputs [B, T, H, N]; w is the multiplicative decay in (0, 1) (applied along the key index).
    Forward keeps every S_t; backward walks time in reverse carrying dL/dS. Inside, time leads
    ([T, B, H, ...]) so that each step's slice is contiguous, and only the loop is sequential: every
    gradient that does not feed the recurrence is computed for all steps at once afterwards.
    """

    @staticmethod
    def forward(ctx, r, w, k, v, a, b):
        r, w, k, v, a, b = (x.transpose(0, 1).contiguous() for x in (r, w, k, v, a, b))  # [T, B, H, N]
        states = wkv7_states(w, k, v, a, b)  # [T+1, B, H, N, N]; states[0] = S_0 = 0
        y = (states[1:] @ r.unsqueeze(-1)).squeeze(-1)  # y_t = S_t r_t, [T, B, H, N]
        ctx.save_for_backward(r, w, k, v, a, b, states)
        return y.transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, dy):
        r, w, k, v, a, b, states = ctx.saved_tensors  # [T, B, H, N] each, states [T+1, B, H, N, N]
        T = r.shape[0]
        dy = dy.transpose(0, 1).contiguous()
        S_post, S_pre = states[1:], states[:-1]  # S_t and S_{t-1}

        def col(x):  # [..., N, 1]
            return x.unsqueeze(-1)

        def row(x):  # [..., 1, N]
            return x.unsqueeze(-2)

        dS_all = torch.empty_like(S_post)  # dL/dS_t (all uses of S_t: y_t and S_{t+1})
        dsa_all = torch.empty_like(r).unsqueeze(-1)  # dL/d(S_{t-1} a_t), [T, B, H, N, 1]
        dS_next = torch.zeros_like(states[0])  # dL/dS_t through S_{t+1}
        for t in range(T - 1, -1, -1):
            dS = torch.addcmul(dS_next, col(dy[t]), row(r[t]), out=dS_all[t])
            dsa = torch.matmul(dS, col(b[t]), out=dsa_all[t])
            dS_next = torch.addcmul(dS * row(w[t]), dsa, row(a[t]))  # dL/dS_{t-1}
        sa = S_pre @ col(a)  # S_{t-1} a_t
        dr = (row(dy) @ S_post).squeeze(-2)
        dk = (row(v) @ dS_all).squeeze(-2)
        dv = (dS_all @ col(k)).squeeze(-1)
        dw = (dS_all * S_pre).sum(-2)
        da = (dsa_all.transpose(-1, -2) @ S_pre).squeeze(-2)
        db = (sa.transpose(-1, -2) @ dS_all).squeeze(-2)
        return tuple(g.transpose(0, 1) for g in (dr, dw, dk, dv, da, db))


def wkv7_states(w, k, v, a, b):
    """All states S_0..S_T of the recurrence, [T+1, B, H, N, N]; inputs time-first [T, B, H, N]."""
    T, B, H, N = k.shape
    states = torch.empty(T + 1, B, H, N, N, dtype=k.dtype)
    states[0].zero_()
    for t in range(T):
        S = states[t]
        nxt = S * w[t].unsqueeze(-2)
        nxt.addcmul_(S @ a[t].unsqueeze(-1), b[t].unsqueeze(-2))
        torch.addcmul(nxt, v[t].unsqueeze(-1), k[t].unsqueeze(-2), out=states[t + 1])
    return states


def wkv7_inference(r, w, k, v, a, b):
    """Same output as WKV7 without keeping the states (evaluation of long texts)."""
    B, T, H, N = r.shape
    y = torch.empty_like(r)
    S = torch.zeros(B, H, N, N, dtype=r.dtype)
    for t in range(T):
        S = (
            S * w[:, t].unsqueeze(-2)
            + (S @ a[:, t].unsqueeze(-1)) @ b[:, t].unsqueeze(-2)
            + v[:, t].unsqueeze(-1) @ k[:, t].unsqueeze(-2)
        )
        y[:, t] = (S @ r[:, t].unsqueeze(-1)).squeeze(-1)
    return y


def wkv7(r, w, k, v, a, b):
    if torch.is_grad_enabled():
        return WKV7.apply(r, w, k, v, a, b)
    return wkv7_inference(r, w, k, v, a, b)


# ---------------------------------------------------------------------------------------------------------
# Model


def time_shift(x):
    """x_{t-1}, with zeros before the first byte (the zero state), [B, T, C]."""
    return F.pad(x, (0, 0, 1, -1))


def ortho_(x: torch.Tensor, scale: float) -> torch.Tensor:
    gain = math.sqrt(x.shape[0] / x.shape[1]) if x.shape[0] > x.shape[1] else 1.0
    nn.init.orthogonal_(x, gain=gain * scale)
    return x


class TimeMix(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.H, self.N = layer_id, H, N
        L = cfg.n_layer
        ratio_0_to_1 = layer_id / (L - 1)
        ratio_1_to_almost0 = 1.0 - layer_id / L
        ddd = torch.arange(C, dtype=torch.float32).div(C).view(1, 1, C)  # i / C
        n = torch.arange(C, dtype=torch.float32)
        linear = n / (C - 1) - 0.5  # -0.5 .. 0.5 across channels
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)  # -1 .. 1 within each head
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / (C - 1)) ** (1 + ratio_0_to_1**0.3)  # slow to fast decay across channels

        def mix(p):  # token-shift mix coefficients: 1 - (i / C)^p
            return nn.Parameter(1.0 - ddd.pow(p * ratio_1_to_almost0))

        self.x_r, self.x_w, self.x_k = mix(0.2), mix(0.9), mix(0.7)
        self.x_v, self.x_a, self.x_g = mix(0.7), mix(0.9), mix(0.2)
        # decay w = exp(-e^-0.5 sigmoid(w0 + tanh(x w1) w2)); +0.5 offsets the soft clamp
        self.w0 = nn.Parameter((www + 0.5 + zigzag * 2.5).view(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, cfg.d_decay_lora))
        self.w2 = nn.Parameter(ortho_(torch.zeros(cfg.d_decay_lora, C), 0.1))
        # in-context learning rate a = sigmoid(a0 + x a1 a2)
        self.a0 = nn.Parameter((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, cfg.d_aaa_lora))
        self.a2 = nn.Parameter(ortho_(torch.zeros(cfg.d_aaa_lora, C), 0.1))
        # value residual mix (unused in layer 0, kept for the checkpoint layout)
        self.v0 = nn.Parameter((0.73 - linear * 0.4).view(1, 1, C))
        self.v1 = nn.Parameter(torch.zeros(C, cfg.d_mv_lora))
        self.v2 = nn.Parameter(ortho_(torch.zeros(cfg.d_mv_lora, C), 0.1))
        # output gate g = sigmoid(x g1) g2
        self.g1 = nn.Parameter(torch.zeros(C, cfg.d_gate_lora))
        self.g2 = nn.Parameter(ortho_(torch.zeros(cfg.d_gate_lora, C), 0.1))
        self.k_k = nn.Parameter((0.71 - linear * 0.1).view(1, 1, C))
        self.k_a = nn.Parameter(torch.full((1, 1, C), 1.02))
        self.r_k = nn.Parameter(torch.full((H, N), -0.04))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)  # 64e-5 = 1e-5 * head_size_divisor(8)^2
        with torch.no_grad():
            s = C**-0.5
            self.receptance.weight.uniform_(-0.5 * s, 0.5 * s)
            self.key.weight.uniform_(-0.05 * s, 0.05 * s)
            self.value.weight.uniform_(-0.5 * s, 0.5 * s)
            self.output.weight.zero_()
            self.ln_x.weight.copy_(torch.full((C,), ((1 + layer_id) / L) ** 0.7))

    def forward(self, x, v_first):
        B, T, C = x.shape
        H, N = self.H, self.N
        xx = time_shift(x) - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g
        r = self.receptance(xr)
        w = torch.exp(-0.606531 * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2))  # exp(-0.5)
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        y = wkv7(*(t.view(B, T, H, N) for t in (r, w, k, v, -kk, kk * a))).view(B, T, C)
        y = self.ln_x(y.view(B * T, C)).view(B, T, C)
        bonus = (r * k * self.r_k.view(1, 1, C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
        y = y + bonus.view(B, T, C)
        return self.output(y * g), v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        ratio_1_to_almost0 = 1.0 - layer_id / cfg.n_layer
        ddd = torch.arange(C, dtype=torch.float32).div(C).view(1, 1, C)
        self.x_k = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0**4))
        self.key = nn.Linear(C, cfg.n_ffn, bias=False)
        self.value = nn.Linear(cfg.n_ffn, C, bias=False)
        with torch.no_grad():
            ortho_(self.key.weight, 1.0)
            self.value.weight.zero_()

    def forward(self, x):
        xx = time_shift(x) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2
        return self.value(k)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)

    def forward(self, x, v_first):
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        dx, v_first = self.att(self.ln1(x), v_first)
        x = x + dx
        x = x + self.ffn(self.ln2(x))
        return x, v_first


class RWKV7(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        with torch.no_grad():
            self.emb.weight.uniform_(-1e-4, 1e-4)  # ln0 normalizes it; tiny start as in RWKV-LM
            ortho_(self.head.weight, 0.5)

    def forward(self, idx):  # [B, T] int64 -> logits [B, T, V]
        x = self.emb(idx)
        v_first = None
        for block in self.blocks:
            x, v_first = block(x, v_first)
        return self.head(self.ln_out(x))


# ---------------------------------------------------------------------------------------------------------
# Data, evaluation, training


def load_text() -> bytes:
    data = DATA.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DATA_SHA256:
        raise SystemExit(f"{DATA}: sha256 {digest}, expected {DATA_SHA256}; the split offset refers to that file")
    return data


def split(text: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor(list(text), dtype=torch.long)
    return data[:VAL_OFFSET], data[VAL_OFFSET:]


def eval_windows(data: torch.Tensor) -> torch.Tensor:
    """[n, EVAL_WINDOW] consecutive windows of data (the remainder is dropped)."""
    n = len(data) // EVAL_WINDOW
    return data[: n * EVAL_WINDOW].view(n, EVAL_WINDOW)


@torch.no_grad()
def bits_per_byte(model: RWKV7, windows: torch.Tensor) -> float:
    """Mean -log2 p(byte | bytes before it in its window), each window from the zero state."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item() / LN2


@torch.no_grad()
def sample(model: RWKV7, prompt: bytes, n: int, gen: torch.Generator, temperature: float = 0.8) -> bytes:
    ids = list(prompt)
    for _ in range(n):  # re-runs the whole prefix: fine for a few hundred bytes
        logits = model(torch.tensor([ids]))[0, -1] / temperature
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    return bytes(ids)


def param_groups(model: RWKV7, tc: TrainConfig):
    decay, no_decay, fast = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("att.w0"):
            fast.append(p)  # RWKV-LM trains the decay base at 2x lr
        elif name.endswith(".weight") and p.dim() == 2:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": tc.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": fast, "weight_decay": 0.0, "lr_scale": 2.0},
    ]


def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr_final + 0.5 * (tc.lr - tc.lr_final) * (1 + math.cos(math.pi * progress))


def state_dict_for_checkpoint(model: RWKV7) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}


def train(mc: ModelConfig, tc: TrainConfig, out_dir: Path, command: str, verify_after: bool = True) -> dict:
    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # decaying WKV states underflow; denormal arithmetic is ~100x slower

    text = load_text()
    train_data, val_data = split(text)
    val_windows = eval_windows(val_data)
    # as many windows of the training text (its end), scored the same way: the train/held-out gap
    train_windows = eval_windows(train_data[-val_windows.numel() :])

    model = RWKV7(mc)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: L={mc.n_layer} C={mc.n_embd} H={mc.n_head} N={mc.head_size} ffn={mc.n_ffn} "
        f"params={n_params} ({n_params * 4 / 1e6:.2f} MB fp32)"
    )
    print(f"text: {DATA.name}: {len(train_data)} train bytes, {len(val_data)} held-out bytes")
    print(f"train: {tc}", flush=True)

    opt = torch.optim.AdamW(param_groups(model, tc), lr=tc.lr, betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(tc.seed)
    T = tc.ctx_len
    t0 = time.time()
    loss_acc, loss_n = 0.0, 0
    history = []
    for step in range(tc.steps):
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        starts = torch.randint(0, len(train_data) - T - 1, (tc.batch_size,), generator=gen)
        chunk = torch.stack([train_data[s : s + T + 1] for s in starts.tolist()])
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, mc.vocab_size), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        loss_acc += loss.item()
        loss_n += 1
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
            model.eval()
            entry = {
                "step": step + 1,
                "batches_bpb": round(loss_acc / loss_n / LN2, 4),
                "held_out_bpb": round(bits_per_byte(model, val_windows), 4),
            }
            if step + 1 == tc.steps:  # the train/held-out gap, once (evaluation costs training time)
                entry["train_text_bpb"] = round(bits_per_byte(model, train_windows), 4)
            model.train()
            entry["seconds"] = round(time.time() - t0, 1)
            history.append(entry)
            loss_acc, loss_n = 0.0, 0
            print(
                f"step {step + 1:5d}/{tc.steps}  lr {lr:.2e}  "
                + "  ".join(f"{k[:-4].replace('_', ' ')} {v:.3f}" for k, v in entry.items() if k.endswith("_bpb"))
                + f" bits/byte  {entry['seconds']:5.0f}s",
                flush=True,
            )
        elif (step + 1) % 50 == 0:
            print(f"step {step + 1:5d}  loss {loss.item() / LN2:.3f} bits/byte  {time.time() - t0:5.0f}s", flush=True)
    train_seconds = time.time() - t0

    model.eval()
    print("sample from this script's model (temperature 0.8):")
    print(sample(model, b"The ", 200, torch.Generator().manual_seed(tc.seed)).decode("ascii", "replace"))

    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    weights_path = out_dir / OUT_WEIGHTS
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    # a single metadata key: safetensors orders several at random, and reruns should give identical bytes
    save_file(state_dict_for_checkpoint(model), str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, weights_path)

    last = history[-1]
    card = {
        "name": "rwkv7-tiny-bytes",
        "file": OUT_WEIGHTS,
        "file_bytes": weights_path.stat().st_size,
        "file_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "architecture": {
            "version": "7",
            "n_layer": mc.n_layer,
            "n_embd": mc.n_embd,
            "n_head": mc.n_head,
            "head_size": mc.head_size,
            "n_ffn": mc.n_ffn,
            "vocab_size": mc.vocab_size,
            "lora": {"decay": mc.d_decay_lora, "aaa": mc.d_aaa_lora, "mv": mc.d_mv_lora, "gate": mc.d_gate_lora},
            "n_params": n_params,
        },
        "dtype": "float32",
        "tokenizer": "bytes",
        "training_text": {
            "file": f"scripts/data/{DATA.name}",
            "title": "Pride and Prejudice",
            "author": "Jane Austen",
            "sha256": DATA_SHA256,
            "bytes": len(text),
            "train_bytes": [0, VAL_OFFSET],
            "held_out_bytes": [VAL_OFFSET, len(text)],
        },
        "training": {**dataclasses.asdict(tc), "seconds": round(train_seconds, 1)},
        "final": {
            "held_out_bpb": last["held_out_bpb"],
            "train_text_bpb": last["train_text_bpb"],
            "batches_bpb": last["batches_bpb"],
        },
        "bpb_definition": (
            f"bits per byte. held_out / train_text: {len(val_windows)} consecutive {EVAL_WINDOW}-byte windows of "
            "the held-out tail / of the end of the training text, each from the zero state, scoring bytes "
            f"1..{EVAL_WINDOW - 1} of each window. batches: mean training loss over the last steps before the "
            f"evaluation ({tc.ctx_len}-byte random windows of the training text)."
        ),
        "history": history,
        "command": command,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
    }
    write_card(out_dir / OUT_CARD, card)
    print(f"wrote {weights_path} ({weights_path.stat().st_size} bytes) and {out_dir / OUT_CARD}", flush=True)

    if verify_after:
        check_with_reference(weights_path, out_dir / OUT_CARD)
    return card


def write_card(path: Path, card: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# Check against the reference implementation (BlinkDL's `rwkv` pip package)


def check_with_reference(weights_path: Path, card_path: Path) -> None:
    """Run `--verify` in a fresh process (RWKV_V7_ON must be set before rwkv.model is imported)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("rwkv") is None:
        print("the `rwkv` package is not installed: skipping the check against it (pip install rwkv==0.8.32)")
        return
    env = {**os.environ, "RWKV_V7_ON": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--verify", str(weights_path), "--card", str(card_path)]
    subprocess.run(cmd, env=env, check=True)


def verify(weights_path: Path, card_path: Path | None) -> dict:
    """Load the file with rwkv.model.RWKV (strategy "cpu fp32"), compare, generate."""
    import tempfile

    from safetensors.torch import load_file

    os.environ["RWKV_V7_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")
    from rwkv.model import RWKV  # noqa: E402  (needs RWKV_V7_ON before import)

    torch.set_num_threads(TrainConfig.threads)
    sd = load_file(str(weights_path))
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "model.pth"
        torch.save(sd, pth)
        ref = RWKV(model=str(pth)[: -len(".pth")], strategy="cpu fp32")  # the package appends ".pth"

    # this script's model, from the same file
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    vocab, C = sd["emb.weight"].shape
    H, N = sd["blocks.0.att.r_k"].shape
    mc = ModelConfig(
        n_layer=n_layer,
        n_embd=C,
        head_size=N,
        n_ffn=sd["blocks.0.ffn.key.weight"].shape[0],
        vocab_size=vocab,
        d_decay_lora=sd["blocks.0.att.w1"].shape[1],
        d_aaa_lora=sd["blocks.0.att.a1"].shape[1],
        d_mv_lora=sd["blocks.0.att.v1"].shape[1],
        d_gate_lora=sd["blocks.0.att.g1"].shape[1],
    )
    ours = RWKV7(mc)
    ours.load_state_dict(sd)
    ours.eval()

    _, val_data = split(load_text())
    windows = eval_windows(val_data)[:VERIFY_WINDOWS]
    nll, worst = 0.0, 0.0
    with torch.no_grad():
        ours_logits = ours(windows[:, :-1])
        for i, w in enumerate(windows):
            logits, _ = ref.forward(w[:-1].tolist(), None, full_output=True)  # [EVAL_WINDOW - 1, vocab]
            nll += F.cross_entropy(logits.float(), w[1:], reduction="sum").item()
            ol = ours_logits[i]
            worst = max(worst, ((logits - ol).abs().max() / ol.std()).item())
        ours_bpb = F.cross_entropy(ours_logits.reshape(-1, vocab), windows[:, 1:].reshape(-1)).item() / LN2
    ref_bpb = nll / windows[:, 1:].numel() / LN2
    print(
        f"held-out bits/byte, first {len(windows)} x {EVAL_WINDOW}-byte windows: rwkv package {ref_bpb:.4f}, "
        f"this script {ours_bpb:.4f}; max |logit diff| / std(logits) = {worst:.2e}"
    )

    prompt = b"The "
    samples = {"greedy": generate(ref, prompt, 300, None), "temperature_0.8_seed_0": generate(ref, prompt, 300, 0)}
    for name, text in samples.items():
        print(f"--- rwkv package, {name}, prompt {prompt!r}:\n{text}\n")
    result = {
        "rwkv_package": "rwkv " + str(package_version("rwkv")) + ", RWKV_V7_ON=1, strategy 'cpu fp32'",
        "held_out_windows": len(windows),
        "held_out_bpb_rwkv_package": round(ref_bpb, 4),
        "held_out_bpb_this_script": round(ours_bpb, 4),
        "max_abs_logit_diff_over_std": float(f"{worst:.3e}"),
        "samples_prompt": prompt.decode(),
        "samples": samples,
    }
    if abs(ref_bpb - ours_bpb) > 1e-3:
        raise SystemExit(f"held-out bits/byte differ: rwkv package {ref_bpb:.5f}, this script {ours_bpb:.5f}")
    if card_path is not None:
        card = json.loads(card_path.read_text())
        card["reference_check"] = result
        write_card(card_path, card)
    return result


def generate(ref, prompt: bytes, n: int, seed: int | None, temperature: float = 0.8) -> str:
    """n bytes after prompt, one step at a time on the package's recurrent state."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    logits, state = ref.forward(list(prompt), None)
    out = []
    for _ in range(n):
        if gen is None:
            tok = int(logits.argmax())
        else:
            probs = torch.softmax(logits.float() / temperature, -1)
            tok = int(torch.multinomial(probs, 1, generator=gen))
        out.append(tok)
        logits, state = ref.forward([tok], state)
    return (prompt + bytes(out)).decode("ascii", "replace")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimizer steps")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the weights and model card go")
    p.add_argument("--verify", type=Path, metavar="FILE", help="only check FILE with the rwkv package")
    p.add_argument("--card", type=Path, help="with --verify: model card to record the check in")
    args = p.parse_args(argv)
    if args.verify is not None:
        verify(args.verify, args.card)
        return
    command = "python scripts/train_default_model.py"
    if args.steps != TrainConfig.steps:
        command += f" --steps {args.steps}"
    train(ModelConfig(), TrainConfig(steps=args.steps), args.out_dir, command)


if __name__ == "__main__":
    main()
