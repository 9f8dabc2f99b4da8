"""One PyTorch reference cell per RWKV generation, chosen by the checkpoint's detected version."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Architecture, StateSpec

from . import rwkv4, rwkv5, rwkv6, rwkv7
from .common import matrix_state_specs


class Generation(NamedTuple):
    cell: type
    state_specs: Callable[[Architecture], list[StateSpec]]
    initial_states: Callable | None = None  # state tuning: att.time_state tensors -> initial state values


GENERATIONS: dict[str, Generation] = {
    "4": Generation(rwkv4.RWKV4Cell, rwkv4.state_specs),
    "5": Generation(rwkv5.RWKV5Cell, matrix_state_specs, rwkv5.initial_states),
    "5.1": Generation(rwkv5.RWKV5Cell, matrix_state_specs, rwkv5.initial_states),  # + gate
    "5.2": Generation(rwkv5.RWKV5Cell, matrix_state_specs, rwkv5.initial_states),  # + per-channel decay and bonus
    "6": Generation(rwkv6.RWKV6Cell, matrix_state_specs, rwkv5.initial_states),  # RWKV-5's state layout
    "7": Generation(rwkv7.RWKV7Cell, matrix_state_specs),
}


def _generation(version: str) -> Generation:
    if version not in GENERATIONS:
        raise RWKVEdgeError(f"RWKV-{version} is detected but not exported yet (supported: {', '.join(GENERATIONS)})")
    return GENERATIONS[version]


def build_cell(weights: dict, arch: Architecture):
    """The generation's step cell in eval mode: forward(input_ids, *states) -> (logits, *new_states)."""
    return _generation(arch.version).cell(weights, arch).eval()


def state_specs(arch: Architecture) -> list[StateSpec]:
    return _generation(arch.version).state_specs(arch)


def initial_states(time_state: list, arch: Architecture) -> dict:
    """State tuning: the per-layer att.time_state tensors (as checkpoint files store them) -> the generation's
    initial state values by state name, without the batch axis (the manifest's init files)."""
    generation = _generation(arch.version)
    if generation.initial_states is None:
        why = {
            "7": "the `rwkv` package (the reference) ignores att.time_state for RWKV-7, so no export of it could be "
            "validated; export the base model from a checkpoint without the time_state keys",
        }.get(arch.version, "this generation has no matrix-valued state to start from")
        raise RWKVEdgeError(f"RWKV-{arch.version} state tuning (att.time_state) is not supported: {why}")
    return generation.initial_states(time_state, arch)
