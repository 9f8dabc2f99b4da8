"""The JS runtime (web/) against the Python runtime on the same tiny export: logits of 64 steps at batch 1 and 2 and
of the sequence graph, on onnxruntime-node and onnxruntime-web's wasm backend, fp32 and int8 (web/test/parity/bounds.js
holds the bounds and their reasons); the World and bytes tokenizers; state files both ways; the .ort graphs
against the .onnx ones.

Python prepares the fixtures (tests/web_exports.py), `node --test web/test/parity/` compares, and a state file the
JS side saved is continued here with State.load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web_exports import (
    continue_js_state,
    shared_export,
    with_bytes_tokenizer,
    with_ort_graphs,
    write_parity_fixtures,
)
from web_node import WEB, require_node, run_node_tests

PARITY = WEB / "test" / "parity"
FP32_BOUND = 1e-4  # docs/numerics.md: logits in units of their std; state tensors relative to their largest value


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    node = require_node()  # before the export: a skipped test costs nothing
    root = tmp_path_factory.getbasetemp() / "web"
    export = shared_export(root)
    paths = {
        "node": Path(node),
        "export": export,
        "bytes": with_bytes_tokenizer(export, tmp_path_factory.mktemp("web-bytes") / "export"),
        "ort": with_ort_graphs(export, tmp_path_factory.mktemp("web-ort") / "export"),
        "fixtures": tmp_path_factory.mktemp("web-parity"),
        "out": tmp_path_factory.mktemp("web-out"),
    }
    write_parity_fixtures(export, paths["fixtures"])
    return paths


def node_env(paths: dict[str, Path]) -> dict[str, str]:
    return {
        "RWKV_EDGE_WEB_EXPORT": str(paths["export"]),
        "RWKV_EDGE_WEB_EXPORT_BYTES": str(paths["bytes"]),
        "RWKV_EDGE_WEB_EXPORT_ORT": str(paths["ort"]),
        "RWKV_EDGE_WEB_FIXTURES": str(paths["fixtures"]),
        "RWKV_EDGE_WEB_OUT": str(paths["out"]),
    }


def test_js_runtime_matches_python(fixtures):
    files = [PARITY / f"{name}.test.js" for name in ("logits", "tokenizer", "state", "ort_format")]
    run_node_tests(str(fixtures["node"]), files, node_env(fixtures), timeout=300)


def test_state_saved_in_js_continues_in_python(fixtures):
    js_state = fixtures["out"] / "js_b2.npz"
    if not js_state.is_file():  # the JS side writes it in state.test.js
        run_node_tests(str(fixtures["node"]), [PARITY / "state.test.js"], node_env(fixtures), timeout=120)
    reference = json.loads((fixtures["fixtures"] / "reference.json").read_text())
    logits, tensors = continue_js_state(fixtures["export"], js_state, reference)
    assert logits <= FP32_BOUND, f"next logits {logits} of std from Python's own continuation"
    worst = max(tensors, key=tensors.get)
    assert tensors[worst] <= FP32_BOUND, f"state tensor {worst} off by {tensors[worst]} of its largest value"
