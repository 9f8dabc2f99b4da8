"""Which tokenizer an export carries: asked for by name or file, or inferred from the vocab size."""

from __future__ import annotations

import shutil
from pathlib import Path

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Architecture, TokenizerSpec
from rwkv_edge.runtime.tokenizer import BUNDLED_WORLD_VOCAB, WORLD_VOCAB_NAME

NEOX_FILE = "tokenizer.json"
WORLD_VOCAB_SIZE = 65536
NEOX_VOCAB_SIZES = (50277, 50304)  # the Pile models' head: 50277 ids, some padded to a multiple of 64


def choose_tokenizer(arch: Architecture, requested: str | None) -> tuple[TokenizerSpec, Path | None]:
    """-> (the manifest entry, the file to copy into the export or None)."""
    if requested in (None, "auto"):
        if arch.vocab_size == WORLD_VOCAB_SIZE:
            requested = "world"
        elif arch.vocab_size == 256:
            requested = "bytes"
        elif arch.vocab_size in NEOX_VOCAB_SIZES:
            raise RWKVEdgeError(
                f"vocab {arch.vocab_size} looks like GPT-NeoX 20B: pass --tokenizer path/to/20B_tokenizer.json"
            )
        else:
            raise RWKVEdgeError(
                f"cannot infer the tokenizer of a vocab of {arch.vocab_size}: pass --tokenizer world, bytes, "
                "or a tokenizer file (.json for GPT-NeoX style, .txt for an RWKV world-format vocab)"
            )
    if requested == "bytes":
        _check_fits(arch, 256, "bytes")
        return TokenizerSpec("bytes", None), None
    if requested == "world":
        _check_fits(arch, WORLD_VOCAB_SIZE, "world")
        return TokenizerSpec("world", WORLD_VOCAB_NAME), BUNDLED_WORLD_VOCAB
    path = Path(requested)
    if not path.is_file():
        raise RWKVEdgeError(f"--tokenizer {requested}: expected world, bytes, or an existing tokenizer file")
    if path.suffix == ".json":
        return TokenizerSpec("neox20b", NEOX_FILE), path
    if path.suffix == ".txt":
        return TokenizerSpec("world", WORLD_VOCAB_NAME), path
    raise RWKVEdgeError(f"--tokenizer {requested}: expected a .json (tokenizers) or .txt (RWKV world vocab) file")


def _check_fits(arch: Architecture, needed: int, kind: str) -> None:
    if arch.vocab_size < needed:
        raise RWKVEdgeError(f"the {kind} tokenizer has {needed} ids but the model's vocab is {arch.vocab_size}")


def copy_tokenizer(spec: TokenizerSpec, source: Path | None, into: Path) -> None:
    if spec.file and source is not None:
        shutil.copyfile(source, into / spec.file)
