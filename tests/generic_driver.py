"""A driver that knows nothing of rwkv_edge: it reads rwkv.json and runs the step graph with plain
onnxruntime, as an app in any language would (the graph contract, docs/format.md). Tests run every export through
it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _step_graph(export_dir: Path, precision: str):
    manifest = json.loads((export_dir / "rwkv.json").read_text())
    graph = next(g for g in manifest["graphs"] if g["kind"] == "step" and g["precision"] == precision)
    session = ort.InferenceSession(str(export_dir / graph["file"]), providers=["CPUExecutionProvider"])
    return manifest, graph, session


def _initial_state(export_dir: Path, manifest: dict, batch: int) -> dict:
    def initial(spec):
        shape = [batch if d == "batch" else d for d in spec["shape"]]
        if spec.get("init_file"):  # state tuning: one sequence's initial value, every row starts from it
            row = np.load(export_dir / spec["init_file"], allow_pickle=False)
            return np.ascontiguousarray(
                np.broadcast_to(np.expand_dims(row, spec["shape"].index("batch")), shape), dtype=spec["dtype"]
            )
        return np.full(shape, spec["init"], dtype=spec["dtype"])

    return {s["input"]: initial(s) for s in manifest["state"]}


def run_export(export_dir, tokens: np.ndarray, precision: str = "fp32"):
    """tokens [batch, steps] -> logits [batch, steps, vocab] and the final state {input name: array}."""
    export_dir = Path(export_dir)
    manifest, graph, session = _step_graph(export_dir, precision)
    batch, steps = tokens.shape
    state = _initial_state(export_dir, manifest, batch)
    outputs = [graph["output"]] + [s["output"] for s in manifest["state"]]
    logits = []
    for t in range(steps):
        result = session.run(outputs, {graph["input"]: tokens[:, t].astype(np.int64), **state})
        logits.append(result[0])
        state = {s["input"]: value for s, value in zip(manifest["state"], result[1:])}  # output -> next input
    return np.stack(logits, axis=1), state


def greedy_tokens(export_dir, prompt: list[int], n: int, precision: str = "fp32", vocab: int | None = None):
    """The `n` ids greedy decoding picks after `prompt` (batch 1): each step's argmax over the first `vocab` logits
    (all of them when None) is fed back as the next token."""
    export_dir = Path(export_dir)
    manifest, graph, session = _step_graph(export_dir, precision)
    state = _initial_state(export_dir, manifest, 1)
    outputs = [graph["output"]] + [s["output"] for s in manifest["state"]]
    picked, feed = [], list(prompt)
    while len(picked) < n:
        for token in feed:
            result = session.run(outputs, {graph["input"]: np.array([token], np.int64), **state})
            state = {s["input"]: value for s, value in zip(manifest["state"], result[1:])}
        feed = [int(result[0][0, :vocab].argmax())]
        picked += feed
    return picked


def run_export_sequence(export_dir, tokens: np.ndarray, chunk: int = 4, precision: str = "fp32"):
    """The sequence (prefill) graph driven from rwkv.json alone: tokens [batch, seq] fed in chunks of `chunk`,
    each chunk's output state fed back as the next one's input. Returns the logits the graph gives (the last
    position of the last chunk [batch, vocab], or with "logits": "all" every position [batch, seq, vocab]) and
    the final state {input name: array}."""
    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / "rwkv.json").read_text())
    graph = next(g for g in manifest["graphs"] if g["kind"] == "sequence" and g["precision"] == precision)
    session = ort.InferenceSession(str(export_dir / graph["file"]), providers=["CPUExecutionProvider"])
    batch = tokens.shape[0]
    state = {
        s["input"]: np.full([batch if d == "batch" else d for d in s["shape"]], s["init"], dtype=s["dtype"])
        for s in manifest["state"]
    }
    outputs = [graph["output"]] + [s["output"] for s in manifest["state"]]
    logits = []
    for start in range(0, tokens.shape[1], chunk):
        result = session.run(outputs, {graph["input"]: tokens[:, start : start + chunk].astype(np.int64), **state})
        logits.append(result[0])
        state = {s["input"]: value for s, value in zip(manifest["state"], result[1:])}
    return (np.concatenate(logits, axis=1) if graph.get("logits") == "all" else logits[-1]), state
