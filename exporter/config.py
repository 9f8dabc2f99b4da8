"""What the exporter knows about a checkpoint besides its tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from rwkv_edge.runtime.manifest import Architecture


@dataclass
class Checkpoint:
    """A loaded checkpoint: float32 tensors in the official BlinkDL key layout, plus what was detected."""

    weights: dict  # str -> torch.Tensor (float32, contiguous), keys as in BlinkDL's .pth files
    arch: Architecture  # generation and shapes, read from the tensors
    path: str = ""  # where it came from, for messages and provenance
    has_time_state: bool = False  # state-tuned checkpoint: blocks.{i}.att.time_state present (v5/v6/v7)
    variant: str = ""  # "" or a named variant, e.g. "deepembed" for RWKV-7 DeepEmbed (pipeline.SUPPORTED_VARIANTS)
    extra: dict = field(default_factory=dict)  # anything else detected (e.g. original dtype)
