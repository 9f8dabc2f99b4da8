"""Load a BlinkDL RWKV checkpoint (.pth or .safetensors) of any generation and read its architecture from the tensors.

Steps: check the path -> read the tensors (safely) -> upcast to float32 -> find the layers -> detect the
generation -> check every layer has its keys with consistent shapes -> Architecture.

The generation rules follow the `rwkv` package (rwkv/model.py, RWKV.__init__ and RWKV_x070.__init__):
  7    `att.r_k` [H, N] (with x_r, w0, a0, ...)
  6    any `time_maa*` key
  5.x  `ln_x` present; 5.1 adds `gate.weight`; 5.2 has a per-channel `time_decay` [H, N] instead of [H]
  4    otherwise
Every failure a user can cause is an RWKVEdgeError with one line: what was expected, what was found, what to do.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Architecture

from .config import Checkpoint

SUFFIXES = (".pth", ".safetensors")

# Outside the blocks, every generation has the same tensors.
TOP_KEYS = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight")

_BLOCK_COMMON = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")
_LINEAR_RKVO = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight")
_LN_X = ("att.ln_x.weight", "att.ln_x.bias")
_FFN_V4 = ("ffn.time_mix_k", "ffn.time_mix_r", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight")
_BONUS = "att.time_first|att.time_faaaa"  # v5.x stores the current-token bonus under either name

# Keys every block must have, per generation ("a|b" means either one).
BLOCK_KEYS = {
    "4": _BLOCK_COMMON
    + ("att.time_decay", "att.time_first", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r")
    + _LINEAR_RKVO
    + _FFN_V4,
    "5": _BLOCK_COMMON
    + ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_decay", _BONUS)
    + _LINEAR_RKVO
    + _LN_X
    + _FFN_V4,
    "5.1": _BLOCK_COMMON
    + ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g", "att.time_decay", _BONUS)
    + _LINEAR_RKVO
    + ("att.gate.weight",)
    + _LN_X
    + _FFN_V4,
    "6": _BLOCK_COMMON
    + tuple(f"att.time_maa_{m}" for m in ("x", "w", "k", "v", "r", "g", "w1", "w2"))
    + ("att.time_decay", "att.time_decay_w1", "att.time_decay_w2", "att.time_faaaa")
    + _LINEAR_RKVO
    + ("att.gate.weight",)
    + _LN_X
    + ("ffn.time_maa_k", "ffn.time_maa_r", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight"),
    "7": _BLOCK_COMMON
    + tuple(f"att.x_{m}" for m in "rwkvag")
    + ("att.w0", "att.w1", "att.w2", "att.a0", "att.a1", "att.a2", "att.v0", "att.v1", "att.v2")
    + ("att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k")
    + _LINEAR_RKVO
    + _LN_X
    + ("ffn.x_k", "ffn.key.weight", "ffn.value.weight"),
}
BLOCK_KEYS["5.2"] = BLOCK_KEYS["5.1"]

# Layer 0 of RWKV-7 takes v_first from its own v, so these may be absent there (official files still carry them).
_V7_LAYER0_OPTIONAL = ("att.v0", "att.v1", "att.v2")
# RWKV-7 DeepEmbed: a per-token embedding that gates the channel-mixing hidden layer.
DEEPEMBED_KEYS = ("ffn.s_emb.weight", "ffn.s_emb_x.weight", "ffn.s0", "ffn.s1", "ffn.s2")
TIME_STATE = "att.time_state"  # state-tuned checkpoints: the initial WKV state per layer, [H, N, N]

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a BlinkDL checkpoint: float32 tensors under their official keys, and the architecture they imply."""
    p = _check_path(path)
    raw = _read_safetensors(p) if p.suffix.lower() == ".safetensors" else _read_pth(p)
    ck = checkpoint_from_weights(raw, str(p))
    ck.extra["format"] = p.suffix.lower().lstrip(".")
    return ck


def checkpoint_from_weights(raw: dict, path: str = "") -> Checkpoint:
    """The same checks and detection as load_checkpoint, for tensors already in memory (`path` names them in
    messages)."""
    where = path or "checkpoint"
    weights, dtypes = _to_float32(raw, where)
    layers = _layer_count(weights, where)
    version = detect_version(weights)
    variant = "deepembed" if any(k.endswith(".ffn.s_emb.weight") for k in weights) else ""
    has_time_state = any(k.endswith("." + TIME_STATE) for k in weights)
    if has_time_state and version == "4":
        raise RWKVEdgeError(
            f"{where}: has att.time_state keys, but this is an RWKV-4 checkpoint and state tuning exists only for "
            "RWKV-5 and later"
        )
    _check_keys(weights, version, layers, variant, has_time_state, where)
    arch = _architecture(weights, version, layers, where)
    _check_shapes(weights, arch, where)
    extra = {"dtype": ",".join(sorted(dtypes))}
    unknown = sorted(set(weights) - _expected_keys(version, layers, variant, has_time_state))
    if unknown:
        extra["unknown_keys"] = unknown
    return Checkpoint(
        weights=weights, arch=arch, path=path, has_time_state=has_time_state, variant=variant, extra=extra
    )


def detect_version(weights: dict) -> str:
    """The generation, by the `rwkv` package's rules (see the module docstring)."""
    keys = list(weights)
    if any(k.endswith((".att.r_k", ".att.x_r", ".att.w0")) for k in keys):
        return "7"
    if any("time_maa" in k for k in keys):
        return "6"
    if any(".att.ln_x." in k for k in keys):
        decay = weights.get("blocks.0.att.time_decay")
        if decay is not None and decay.dim() > 1 and decay.shape[1] > 1:
            return "5.2"
        if any(k.endswith(".att.gate.weight") for k in keys):
            return "5.1"
        return "5"
    return "4"


def describe(ck: Checkpoint) -> str:
    """One line for logs and the CLI, e.g. "RWKV-7 L12 C768 H12 N64 vocab 65536, 191M params"."""
    a = ck.arch
    heads = "" if a.version == "4" else f" H{a.n_head} N{a.head_size}"
    params = sum(t.numel() for t in ck.weights.values())
    notes = "".join([", DeepEmbed" if ck.variant == "deepembed" else "", ", state-tuned" if ck.has_time_state else ""])
    return f"RWKV-{a.version} L{a.n_layer} C{a.n_embd}{heads} vocab {a.vocab_size}, {_count(params)} params{notes}"


# ---------------------------------------------------------------------------------------------------- reading


def _check_path(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise RWKVEdgeError(f"{p}: no such file; expected an RWKV checkpoint (.pth or .safetensors)")
    if p.is_dir():
        inside = sorted(f.name for f in p.iterdir() if f.suffix.lower() in SUFFIXES)
        hint = (
            f"; it holds {', '.join(inside[:3])}: pass one of those" if inside else "; pass the checkpoint file itself"
        )
        raise RWKVEdgeError(f"{p}: expected a checkpoint file (.pth or .safetensors), found a directory{hint}")
    if p.suffix.lower() not in SUFFIXES:
        found = f"'{p.suffix}'" if p.suffix else "no extension"
        raise RWKVEdgeError(f"{p}: expected a .pth or .safetensors checkpoint, found {found}; rename it if it is one")
    return p


def _read_pth(p: Path) -> dict:
    # weights_only: a .pth is a pickle and can run code on load; mmap: do not read gigabytes before we need them.
    # mmap needs the zip format (torch >= 1.6); older files are read whole.
    mmap = zipfile.is_zipfile(p)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; we report what matters ourselves
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise RWKVEdgeError(
                f"{p}: holds Python objects other than tensors, refused for safety (a .pth can run code when loaded); "
                f"re-save just the tensors (torch.save(model.state_dict())) or convert it to .safetensors"
            ) from None
        raise _corrupt(p, e) from None
    except MemoryError:
        raise
    except (
        Exception
    ) as e:  # torch reports bad files as RuntimeError, EOFError, KeyError, ... depending on where it trips
        raise _corrupt(p, e) from None
    if not isinstance(obj, dict):
        found = type(obj).__name__
        raise RWKVEdgeError(
            f"{p}: expected a dict of tensors (a state_dict), found a {found}; this is not an RWKV checkpoint"
        )
    return obj


def _read_safetensors(p: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise RWKVEdgeError(
            f"{p}: reading .safetensors needs the safetensors package: pip install 'rwkv-edge[export]'"
        ) from None
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own SafetensorError (not importable portably) for bad files
        raise _corrupt(p, e) from None


def _corrupt(p: Path, e: BaseException) -> RWKVEdgeError:
    size = p.stat().st_size
    text = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""  # first sentence
    detail = f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__
    if size == 0:
        return RWKVEdgeError(f"{p}: the file is empty; expected an RWKV checkpoint, download or copy it again")
    return RWKVEdgeError(
        f"{p}: not a readable {p.suffix} checkpoint ({detail}); the file ({size} bytes) may be truncated or corrupt: "
        f"download or copy it again"
    )


def _to_float32(raw: dict, where: str) -> tuple[dict, set]:
    if "_strategy" in raw:
        raise RWKVEdgeError(
            f"{where}: was converted by the `rwkv` package for strategy {raw['_strategy']!r}; "
            f"pass the original checkpoint instead"
        )
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        wrapped = [k for k in ("state_dict", "module", "model") if isinstance(raw.get(k), dict)]
        hint = f"; it looks like a training checkpoint: save its {wrapped[0]!r} entry alone" if wrapped else ""
        raise RWKVEdgeError(f"{where}: expected a flat dict of tensors, found non-tensor entries {_few(bad)}{hint}")
    weights, dtypes = {}, set()
    for k, t in raw.items():
        if not t.is_floating_point():
            raise RWKVEdgeError(
                f"{where}: tensor {k} has dtype {t.dtype}; expected floating point "
                "(quantized checkpoints are not supported)"
            )
        dtypes.add(str(t.dtype).replace("torch.", ""))
        # Released files are bf16; the exporter computes in float32 (upcast is exact).
        weights[k] = t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()
    return weights, dtypes


# ---------------------------------------------------------------------------------------------------- structure


def _layer_count(weights: dict, where: str) -> int:
    indices = {int(m.group(1)) for k in weights if (m := _BLOCK_KEY.match(k))}
    missing_top = [k for k in TOP_KEYS if k not in weights]
    if not indices or "emb.weight" not in weights:
        hint = ""
        if any(k.startswith(("rwkv.", "model.")) for k in weights):
            hint = "; it looks like a Hugging Face transformers checkpoint: use BlinkDL's original .pth"
        need = ", ".join(missing_top + ([] if indices else ["blocks.*"]))
        hint = hint or "; pass a BlinkDL RWKV checkpoint (.pth or .safetensors)"
        raise RWKVEdgeError(f"{where}: not an RWKV checkpoint: missing {need} (found keys {_few(list(weights))}){hint}")
    n_layer = max(indices) + 1
    gaps = sorted(set(range(n_layer)) - indices)
    if gaps:
        raise RWKVEdgeError(
            f"{where}: inconsistent checkpoint: blocks {_few(gaps)} missing between 0 and {n_layer - 1}; "
            f"the file is incomplete"
        )
    if missing_top:
        raise RWKVEdgeError(f"{where}: not a complete RWKV checkpoint: missing {_few(missing_top)}")
    return n_layer


def _required(version: str, i: int, variant: str) -> list[str]:
    keys = list(BLOCK_KEYS[version])
    if version == "7" and i == 0:
        keys = [k for k in keys if k not in _V7_LAYER0_OPTIONAL]
    if variant == "deepembed":
        keys += DEEPEMBED_KEYS
    return keys


def _check_keys(weights: dict, version: str, n_layer: int, variant: str, has_time_state: bool, where: str) -> None:
    missing = []
    for i in range(n_layer):
        for key in _required(version, i, variant) + ([TIME_STATE] if has_time_state else []):
            if not any(f"blocks.{i}.{alt}" in weights for alt in key.split("|")):
                missing.append(f"blocks.{i}.{key}")
    if missing:
        raise RWKVEdgeError(
            f"{where}: inconsistent RWKV-{version} checkpoint: {len(missing)} key(s) missing, e.g. {_few(missing)}; "
            f"the file is incomplete"
        )


def _expected_keys(version: str, n_layer: int, variant: str, has_time_state: bool) -> set:
    keys = set(TOP_KEYS)
    for i in range(n_layer):
        block = (
            list(BLOCK_KEYS[version])
            + list(DEEPEMBED_KEYS if variant else ())
            + ([TIME_STATE] if has_time_state else [])
        )
        for key in block:
            keys.update(f"blocks.{i}.{alt}" for alt in key.split("|"))
    return keys


def _architecture(w: dict, version: str, n_layer: int, where: str) -> Architecture:
    vocab_size, n_embd = _shape2(w, "emb.weight", where)
    n_ffn = _shape2(w, "blocks.0.ffn.key.weight", where)[0]
    if version == "4":
        n_head, head_size = 1, n_embd  # RWKV-4's WKV is per channel: one "head" as wide as the model
    elif version == "7":
        n_head, head_size = _shape2(w, "blocks.0.att.r_k", where)
    elif version in ("5.2", "6"):
        n_head, head_size = _shape2(
            w, "blocks.0.att.time_faaaa" if version == "6" else "blocks.0.att.time_decay", where
        )
    else:  # 5, 5.1: one decay per head, [H]
        decay = w["blocks.0.att.time_decay"]
        n_head = decay.shape[0] if decay.dim() else 1
        head_size = n_embd // n_head if n_head else 0
    if n_head * head_size != n_embd:
        raise RWKVEdgeError(
            f"{where}: inconsistent RWKV-{version} checkpoint: "
            f"n_head {n_head} x head_size {head_size} != n_embd {n_embd}"
        )
    return Architecture(version, n_layer, n_embd, n_head, head_size, vocab_size, n_ffn)


def _shape2(w: dict, key: str, where: str) -> tuple[int, int]:
    shape = tuple(w[key].shape)
    if len(shape) != 2:
        raise RWKVEdgeError(f"{where}: {key} must be 2-D, found shape {list(shape)}")
    return shape


def _check_shapes(w: dict, a: Architecture, where: str) -> None:
    C, V, F = a.n_embd, a.vocab_size, a.n_ffn
    fixed = {
        "head.weight": (V, C),
        "ln_out.weight": (C,),
        "blocks.0.ln0.weight": (C,),
        "blocks.0.att.key.weight": (C, C),  # dim_att == n_embd in every released model
        "blocks.0.att.output.weight": (C, C),
        "blocks.0.ffn.key.weight": (F, C),
        "blocks.0.ffn.value.weight": (C, F),
    }
    for key, shape in fixed.items():
        if tuple(w[key].shape) != shape:
            raise RWKVEdgeError(
                f"{where}: {key} has shape {list(w[key].shape)}, expected {list(shape)} "
                f"(from emb.weight [{V}, {C}] and ffn.key.weight)"
            )
    # Every layer must match layer 1's shapes (layer 0 may lack v0/v1/v2 in RWKV-7; a 1-layer model has only layer 0).
    ref = 1 if a.n_layer > 1 else 0
    shapes = {m.group(2): tuple(t.shape) for k, t in w.items() if (m := _BLOCK_KEY.match(k)) and int(m.group(1)) == ref}
    for k, t in w.items():
        m = _BLOCK_KEY.match(k)
        if m and m.group(2) in shapes and tuple(t.shape) != shapes[m.group(2)]:
            raise RWKVEdgeError(
                f"{where}: inconsistent checkpoint: {k} has shape {list(t.shape)}, "
                f"but blocks.{ref}.{m.group(2)} has {list(shapes[m.group(2)])}"
            )


def _few(items: list, n: int = 4) -> str:
    if not items:
        return "none"
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K"
