"""A driver that knows nothing of rwkv_edge: it reads rwkv.json and runs the step graph with plain
onnxruntime, as an app in any language would (DESIGN.md section 2). Tests run every export through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


def run_export(export_dir, tokens: np.ndarray, precision: str = "fp32"):
    """tokens [batch, steps] -> logits [batch, steps, vocab] and the final state {input name: array}."""
    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / "rwkv.json").read_text())
    graph = next(g for g in manifest["graphs"] if g["kind"] == "step" and g["precision"] == precision)
    session = ort.InferenceSession(str(export_dir / graph["file"]), providers=["CPUExecutionProvider"])
    batch, steps = tokens.shape

    def initial(spec):
        shape = [batch if d == "batch" else d for d in spec["shape"]]
        return np.full(shape, spec["init"], dtype=spec["dtype"])

    state = {s["input"]: initial(s) for s in manifest["state"]}
    outputs = [graph["output"]] + [s["output"] for s in manifest["state"]]
    logits = []
    for t in range(steps):
        result = session.run(outputs, {graph["input"]: tokens[:, t].astype(np.int64), **state})
        logits.append(result[0])
        state = {s["input"]: value for s, value in zip(manifest["state"], result[1:])}  # output -> next input
    return np.stack(logits, axis=1), state
