import json
import sys
from pathlib import Path

import pytest

from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: fake_model, generic_driver, broken_manifests


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


@pytest.fixture(scope="session", autouse=True)
def manifests_follow_the_schema(tmp_path_factory):
    """After the last test: every export directory the session made (a folder holding rwkv.json and an .onnx
    graph: exports, quantized exports, CLI runs, fake models) has a manifest the shipped JSON Schema accepts, and
    each manifest a test broke on purpose (broken_manifests.write_broken_manifest) is one it refuses."""
    yield
    import jsonschema
    from broken_manifests import BROKEN

    from rwkv_edge.runtime.manifest import manifest_schema

    validator = jsonschema.Draft202012Validator(manifest_schema())
    problems = []
    for path in sorted(tmp_path_factory.getbasetemp().rglob("rwkv.json")):
        broken = path.resolve() in BROKEN
        if not broken and not any(path.parent.glob("*.onnx")):
            continue  # not an export directory (e.g. a file-writing test's target)
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(json.loads(path.read_text())))
        except json.JSONDecodeError as e:
            error = e
        if broken and error is None:
            problems.append(f"{path}: broken on purpose, but the schema accepts it")
        elif not broken and error is not None:
            where = getattr(error, "json_path", "")
            problems.append(f"{path}: {where}: {getattr(error, 'message', error)}")
    if problems:
        pytest.fail("rwkv.json against manifest.schema.json:\n" + "\n".join(problems), pytrace=False)
