"""State tuning: start every sequence from a trained initial WKV state instead of zeros.

BlinkDL's state-tuned models carry, per layer, `blocks.{i}.att.time_state` [H, N, N], either inside the
checkpoint or as a separate file holding only those tensors (how state-tuning releases ship; .pth or
.safetensors). The `rwkv` package (RWKV-5.x and 6) starts from them, transposed to its (head, key, value) state.

The export carries it as an initial-state file: the generation's cell turns the tensors into its state layout
(cells.initial_states), the pipeline saves each as `<state>_init.npy` (one sequence, no batch axis) and names it
in the manifest's StateSpec.init_file; the runtime (and any manifest-only driver) starts each row from it.
A separate file wins over the checkpoint's own time_state. RWKV-7 is refused: the package ignores time_state
there, so no export of it could be validated (see cells.initial_states).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import torch

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Architecture, StateSpec

from .cells import initial_states
from .checkpoint import TIME_STATE, _check_path, _read_pth, _read_safetensors
from .config import Checkpoint

_KEY = re.compile(r"^blocks\.(\d+)\." + re.escape(TIME_STATE) + "$")


def init_file_name(state_name: str) -> str:
    return f"{state_name}_init.npy"


def read_state_file(path: str | os.PathLike, arch: Architecture) -> dict[str, torch.Tensor]:
    """The time_state tensors of a state-tuning file, checked against the model: {key: float32 [H, N, N]}."""
    p = _check_path(path)
    raw = _read_safetensors(p) if p.suffix.lower() == ".safetensors" else _read_pth(p)
    found = {k: t for k, t in raw.items() if isinstance(k, str) and _KEY.match(k) and isinstance(t, torch.Tensor)}
    if not found:
        keys = ", ".join(list(map(str, raw))[:3]) or "none"
        raise RWKVEdgeError(
            f"{p}: expected a state-tuning file with blocks.{{i}}.{TIME_STATE} tensors, found none (keys: {keys})"
        )
    _check_tensors(found, arch, str(p))
    return {k: t.float().contiguous() for k, t in found.items()}


def time_state_tensors(ck: Checkpoint, state_file: str | os.PathLike | None = None) -> dict[str, torch.Tensor] | None:
    """The initial state to export: the separate file's if given, else the checkpoint's own, else None."""
    if state_file is not None:
        return read_state_file(state_file, ck.arch)
    if not ck.has_time_state:
        return None
    found = {k: t for k, t in ck.weights.items() if _KEY.match(k)}
    _check_tensors(found, ck.arch, ck.path or "checkpoint")
    return found


def initial_values(tensors: dict[str, torch.Tensor], arch: Architecture) -> dict[str, np.ndarray]:
    """time_state tensors -> {state name: one sequence's initial value in the export's layout}."""
    ordered = [tensors[f"blocks.{i}.{TIME_STATE}"] for i in range(arch.n_layer)]
    return {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in initial_states(ordered, arch).items()}


def with_init_files(specs: list[StateSpec], values: dict[str, np.ndarray]) -> list[StateSpec]:
    """The state specs with init_file set for each state that has an initial value."""
    return [dataclasses.replace(s, init_file=init_file_name(s.name)) if s.name in values else s for s in specs]


def save_initial_values(values: dict[str, np.ndarray], directory: Path) -> None:
    for name, value in values.items():
        with open(directory / init_file_name(name), "wb") as f:  # a file object: np.save adds no suffix
            np.save(f, value, allow_pickle=False)


def _check_tensors(found: dict[str, torch.Tensor], arch: Architecture, where: str) -> None:
    H, N = arch.n_head, arch.head_size
    layers = {int(_KEY.match(k).group(1)) for k in found}
    missing = sorted(set(range(arch.n_layer)) - layers)
    extra = sorted(layers - set(range(arch.n_layer)))
    if missing or extra:
        what = (
            f"missing for layers {missing[:4]}"
            if missing
            else f"for layers {extra[:4]} beyond the model's {arch.n_layer}"
        )
        raise RWKVEdgeError(
            f"{where}: {TIME_STATE} must cover layers 0..{arch.n_layer - 1} of this RWKV-{arch.version} model, "
            f"found it {what}; "
            f"is the state file for another model?"
        )
    for k, t in sorted(found.items()):
        if tuple(t.shape) != (H, N, N):
            raise RWKVEdgeError(
                f"{where}: {k} has shape {list(t.shape)}, expected [{H}, {N}, {N}] (n_head, head_size, head_size) "
                "for this model; "
                f"is the state file for another model?"
            )
        if not t.is_floating_point():
            raise RWKVEdgeError(f"{where}: {k} has dtype {t.dtype}; expected floating point")
