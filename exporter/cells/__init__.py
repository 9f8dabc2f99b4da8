"""One PyTorch reference cell per RWKV generation, chosen by the checkpoint's detected version."""

from __future__ import annotations

from types import ModuleType

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Architecture, StateSpec

from . import rwkv4, rwkv7

GENERATIONS: dict[str, tuple[ModuleType, type]] = {
    "4": (rwkv4, rwkv4.RWKV4Cell),
    "7": (rwkv7, rwkv7.RWKV7Cell),
}


def _generation(version: str):
    if version not in GENERATIONS:
        raise RWKVEdgeError(
            f"RWKV-{version} is detected but not exported yet (supported: {', '.join(GENERATIONS)})"
        )
    return GENERATIONS[version]


def build_cell(weights: dict, arch: Architecture):
    """The generation's step cell in eval mode: forward(input_ids, *states) -> (logits, *new_states)."""
    _, cell_class = _generation(arch.version)
    return cell_class(weights, arch).eval()


def state_specs(arch: Architecture) -> list[StateSpec]:
    module, _ = _generation(arch.version)
    return module.state_specs(arch)
