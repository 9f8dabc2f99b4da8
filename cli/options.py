"""Arguments and options that more than one command takes, with one help text each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ExportDir = Annotated[Path, typer.Argument(help="Export directory (holds rwkv.json).")]
Precisions = Annotated[
    Optional[list[str]],
    typer.Option(help="Only these precisions (repeatable). Default: every step graph in the directory."),
]
OptimizedCache = Annotated[
    bool,
    typer.Option(
        help="Save ONNX Runtime's optimized graphs for this machine under ~/.cache/rwkv-edge (one more copy of the "
        "weights on disk) and load them next time: faster start."
    ),
]
Spinning = Annotated[
    bool,
    typer.Option(
        help="Let ONNX Runtime's threads spin between ops (faster on cores free for the model; --no-spinning where "
        "other busy work shares them)."
    ),
]


def checkpoint_or_default(checkpoint: Optional[Path]) -> Path:
    """The checkpoint argument, or the embedded default model's when it is left out."""
    if checkpoint is not None:
        return checkpoint
    from rwkv_edge.exporter.default_model import default_checkpoint

    return default_checkpoint()
