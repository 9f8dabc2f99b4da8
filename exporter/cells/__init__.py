"""One PyTorch reference cell per RWKV generation, chosen by the checkpoint's detected version."""

from __future__ import annotations

from types import ModuleType

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Architecture, StateSpec

from . import rwkv4, rwkv5, rwkv6, rwkv7

GENERATIONS: dict[str, tuple[ModuleType, type]] = {
    "4": (rwkv4, rwkv4.RWKV4Cell),
    "5": (rwkv5, rwkv5.RWKV5Cell),
    "5.1": (rwkv5, rwkv5.RWKV5Cell),  # + gate
    "5.2": (rwkv5, rwkv5.RWKV5Cell),  # + per-channel decay and bonus
    "6": (rwkv6, rwkv6.RWKV6Cell),
    "7": (rwkv7, rwkv7.RWKV7Cell),
}


def _generation(version: str):
    if version not in GENERATIONS:
        raise RWKVEdgeError(f"RWKV-{version} is detected but not exported yet (supported: {', '.join(GENERATIONS)})")
    return GENERATIONS[version]


def build_cell(weights: dict, arch: Architecture):
    """The generation's step cell in eval mode: forward(input_ids, *states) -> (logits, *new_states)."""
    _, cell_class = _generation(arch.version)
    return cell_class(weights, arch).eval()


def state_specs(arch: Architecture) -> list[StateSpec]:
    module, _ = _generation(arch.version)
    return module.state_specs(arch)


def initial_states(time_state: list, arch: Architecture) -> dict:
    """State tuning: the per-layer att.time_state tensors (as checkpoint files store them) -> the generation's
    initial state values by state name, without the batch axis (the manifest's init files)."""
    module, _ = _generation(arch.version)
    if not hasattr(module, "initial_states"):
        why = {
            "7": "the `rwkv` package (the reference) ignores att.time_state for RWKV-7, so no export of it could be "
            "validated; export the base model from a checkpoint without the time_state keys",
        }.get(arch.version, "this generation has no matrix-valued state to start from")
        raise RWKVEdgeError(f"RWKV-{arch.version} state tuning (att.time_state) is not supported: {why}")
    return module.initial_states(time_state, arch)
