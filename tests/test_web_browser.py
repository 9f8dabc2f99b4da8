"""The demo site in headless Chromium: built with `rwkv-export web` from the tiny export, served on 127.0.0.1 by the
runtime's static server, driven by web/test/browser/demo.test.js (playwright-core, /usr/bin/chromium).

- wasm and WebGPU (SwiftShader) generate greedily, token for token what the Python runtime generates for the same
  prompt and max_tokens; a screenshot per backend goes to artifacts/;
- without a precision in the URL the page takes the first of its default list that the site has;
- a missing graph file, an unknown manifest format and a browser without WebGPU each end as data-state="error" with
  the reason on the page, within a bounded time.

The prompts' greedy choices are checked to be clear in Python (top-1 ahead of top-2 by MARGIN of std at every
step), so the browser's fp32 rounding cannot flip one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from web_exports import shared_export
from web_node import ARTIFACTS, WEB, require_chromium, require_node, run_node_tests

from rwkv_edge.runtime import RWKVModel, generate

SITE_PRECISIONS = ("fp32", "int8-dynamic")  # what the built site carries: greedy runs in fp32, the default pick
# (prompt, max_tokens, backend): WebGPU on SwiftShader compiles each graph on its first run, so it gets few tokens.
GREEDY_RUNS = [
    ("The Eiffel tower is in Paris; 東京 is in 日本 🙂", 8, "wasm"),
    ("Hello", 4, "webgpu"),
]
MARGIN = 1e-3  # fp32 implementations differ by about 1e-5 of std (docs/numerics.md): far below this


def greedy_expectation(model: RWKVModel, prompt: str, max_tokens: int) -> dict:
    """Python's greedy continuation, and the smallest lead of the chosen token over the next, in std units."""
    tokenizer = model.load_tokenizer()
    generation = generate(model, tokenizer, prompt, max_new_tokens=max_tokens, temperature=0)
    text = "".join(generation)
    state = model.new_state(1)
    logits = model.feed(tokenizer.encode(prompt), state)[0]
    margins = []
    for token in generation.tokens:
        decodable = np.sort(logits[: tokenizer.vocab_size])
        assert int(np.argmax(logits[: tokenizer.vocab_size])) == token
        margins.append(float((decodable[-1] - decodable[-2]) / logits.std()))
        logits = model.step([token], state)[0]
    return {"tokens": generation.tokens, "text": text, "margin": min(margins)}


def build_site(export: Path, site: Path) -> Path:
    """`rwkv-export web` as a user runs it."""
    r = subprocess.run(
        [sys.executable, "-m", "rwkv_edge.cli", "web", str(export), "-o", str(site)]
        + [arg for p in SITE_PRECISIONS for arg in ("--precision", p)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return site


def broken_site(site: Path, dst: Path, model_files: dict[str, str]) -> Path:
    """A site that shares the page, runtime and ORT files of `site` (links) with its own model/ folder holding
    only `model_files` (name -> text)."""
    dst.mkdir()
    for entry in site.iterdir():
        if entry.name != "model":
            os.symlink(entry, dst / entry.name)
    (dst / "model").mkdir()
    for name, text in model_files.items():
        (dst / "model" / name).write_text(text)
    return dst


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> tuple[Path, Path]:
    node = require_node("playwright-core")
    require_chromium()
    export = shared_export(tmp_path_factory.getbasetemp() / "web")
    root = tmp_path_factory.mktemp("web-sites")
    good = build_site(export, root / "good")
    manifest = json.loads((good / "model" / "rwkv.json").read_text())
    vocab = manifest["tokenizer"]["file"]
    broken_site(
        good,
        root / "missing-graph",
        {"rwkv.json": json.dumps(manifest), vocab: (good / "model" / vocab).read_text(encoding="utf-8")},
    )
    broken_site(good, root / "bad-format", {"rwkv.json": json.dumps({**manifest, "format": "rwkv-edge/99"})})

    model = RWKVModel.load(export, precision="fp32")
    runs = []
    for prompt, max_tokens, backend in GREEDY_RUNS:
        expected = greedy_expectation(model, prompt, max_tokens)
        assert expected["margin"] >= MARGIN, f"{prompt!r}: a greedy step is a near tie, pick another prompt"
        runs.append({"backend": backend, "prompt": prompt, "max_tokens": max_tokens, "precision": "fp32", **expected})
    expect = {
        "greedy": runs,
        "default_precision": {"wasm": SITE_PRECISIONS[1]},
        "graphs": [g["file"] for g in manifest["graphs"] if g["precision"] == "fp32"],
    }
    (root / "expect.json").write_text(json.dumps(expect, ensure_ascii=False))
    return Path(node), root


def test_demo_site_in_chromium(sites):
    node, root = sites
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("web-demo-*.png"):
        old.unlink()
    env = {
        "RWKV_EDGE_WEB_SITES": str(root),
        "RWKV_EDGE_WEB_EXPECT": str(root / "expect.json"),
        "RWKV_EDGE_WEB_ARTIFACTS": str(ARTIFACTS),
    }
    run_node_tests(str(node), [WEB / "test" / "browser" / "demo.test.js"], env, timeout=400)
    shots = sorted(p.name for p in ARTIFACTS.glob("web-demo-*.png"))
    assert shots == ["web-demo-wasm.png", "web-demo-webgpu.png"], shots
