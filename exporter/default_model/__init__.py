"""The embedded default: a tiny byte-level RWKV-7 that the project trains itself (scripts/train_default_model.py)
on a public-domain text. Used when a command is given no checkpoint."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
CHECKPOINT_NAME = "rwkv7-tiny-bytes.safetensors"


def default_checkpoint() -> Path:
    return HERE / CHECKPOINT_NAME
