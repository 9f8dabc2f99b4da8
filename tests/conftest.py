import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: checkpoints, fake_model, generic_driver

from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(version, **shape) -> (checkpoint path, export dir): each shape made and exported once."""
    from rwkv_edge.exporter.pipeline import export_checkpoint

    cache = {}

    def make(
        version: str, n_layer: int, n_embd: int, head_size: int, vocab_size: int, seed: int = 0, suffix: str = ".pth"
    ):
        key = (version, n_layer, n_embd, head_size, vocab_size, seed, suffix)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"v{version}")
            ck = save_checkpoint(
                make_checkpoint(version, n_layer, n_embd, head_size, vocab_size, seed=seed), root / f"model{suffix}"
            )
            export_checkpoint(ck, root / "export", tokenizer="bytes")
            cache[key] = (ck, root / "export")
        return cache[key]

    return make
