"""rwkv-export validate: prove an export equal to the PyTorch original.

Runs the same tokens through (a) the `rwkv` package, the authority, one sequence at a time; (b) our PyTorch
reference cell; (c) the ONNX step graph under plain ONNX Runtime, with graph optimizations off and on, at
batch 1 and batch > 1. Errors are measured as DESIGN.md section 3 says: logits as max|diff| / std(ref logits)
per step, states as max|diff| / max|ref| per tensor after the last step. Where a comparison fails, the report
names the first step, tensor and layer that diverge.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rwkv_edge.runtime.manifest import Manifest, load_manifest

from .cells import build_cell
from .checkpoint import load_checkpoint
from .reference_rwkv import run_rwkv_package

# DESIGN.md section 3
BOUND_VS_REFERENCE = 1e-4  # ONNX fp32 vs the rwkv package: logits and states
BOUND_BATCH = 1e-5  # a row of a batch vs the same sequence alone
OPT_LEVELS = {"opt-off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "opt-all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@dataclass
class Comparison:
    name: str  # e.g. "onnx[opt-all] b=2 row 1 vs rwkv"
    bound: float
    logits_err: float  # max over steps of max|diff| / std(ref)
    state_err: dict[str, float]  # per state tensor after the last step: max|diff| / max|ref|
    first_divergence: str | None = None  # "step 17, logits" or "after step 31, wkv layer 3"
    per_step: list[float] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.logits_err <= self.bound and all(e <= self.bound for e in self.state_err.values())


@dataclass
class ValidationReport:
    checkpoint: str
    export_dir: str
    version: str
    steps: int
    batch: int
    tokens: list[list[int]]
    comparisons: list[Comparison]
    reference_ms_per_token: float | None = None  # the rwkv package, wall time of forward() per token
    onnx_ms_per_token: float | None = None  # ORT, batch 1, optimizations on

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        for c, cd in zip(self.comparisons, d["comparisons"]):
            cd["passed"] = c.passed
        return d


def logits_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per step: max|diff| / std(ref). got, ref: [T, vocab]."""
    return np.abs(got - ref).max(axis=-1) / np.maximum(ref.std(axis=-1), 1e-30)


def state_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """max|diff| / max|ref| over a [L, ...] state tensor, and the first layer above... (returned: worst layer)."""
    scale = max(float(np.abs(ref).max()), 1e-30)
    per_layer = np.abs(got - ref).reshape(got.shape[0], -1).max(axis=1) / scale
    return float(per_layer.max()), int(per_layer.argmax())


def compare(name: str, bound: float, logits: np.ndarray, states: dict, ref_logits: np.ndarray, ref_states: dict) -> Comparison:
    per_step = logits_error(logits, ref_logits)
    state_err, divergence = {}, None
    bad_steps = np.nonzero(per_step > bound)[0]
    if len(bad_steps):
        divergence = f"step {int(bad_steps[0])}, logits"
    for tensor, ref in ref_states.items():
        err, layer = state_error(states[tensor], ref)
        state_err[tensor] = err
        if err > bound and divergence is None:
            divergence = f"after step {len(per_step) - 1}, {tensor} layer {layer}"
    return Comparison(name, bound, float(per_step.max()), state_err, divergence, [float(e) for e in per_step])


class OnnxStepper:
    """Plain ONNX Runtime over the manifest, as an app would drive it (no rwkv_edge runtime in the loop)."""

    def __init__(self, export_dir: Path, manifest: Manifest, opt_level, precision: str = "fp32"):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = opt_level
        graph = manifest.graph("step", precision)
        self.manifest = manifest
        self.session = ort.InferenceSession(str(export_dir / graph.file), opts, providers=["CPUExecutionProvider"])
        self.graph = graph

    def run(self, tokens: np.ndarray) -> tuple[np.ndarray, dict]:
        """tokens [B, T] -> logits [B, T, vocab] and the states after the last step {name: [B, ...]}."""
        B, T = tokens.shape
        state = {s.input: np.full(s.concrete_shape(B), s.init, np.float32) for s in self.manifest.state}
        out_names = [self.graph.output] + [s.output for s in self.manifest.state]
        logits, self.step_seconds = [], []
        for t in range(T):
            start = time.perf_counter()
            outs = self.session.run(out_names, {self.graph.input: tokens[:, t].astype(np.int64), **state})
            self.step_seconds.append(time.perf_counter() - start)
            logits.append(outs[0])
            state = {s.input: o for s, o in zip(self.manifest.state, outs[1:])}
        return np.stack(logits, 1), {s.name: state[s.input] for s in self.manifest.state}


def run_torch_cell(cell, manifest: Manifest, tokens: np.ndarray) -> tuple[np.ndarray, dict]:
    B, T = tokens.shape
    state = [torch.full(s.concrete_shape(B), s.init, dtype=torch.float32) for s in manifest.state]
    logits = []
    with torch.no_grad():
        for t in range(T):
            out = cell(torch.from_numpy(tokens[:, t].astype(np.int64)), *state)
            logits.append(out[0].numpy())
            state = list(out[1:])
    return np.stack(logits, 1), {s.name: x.numpy() for s, x in zip(manifest.state, state)}


def make_tokens(vocab_size: int, batch: int, steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, steps), dtype=np.int64)


def validate(
    checkpoint: str | Path,
    export_dir: str | Path,
    *,
    steps: int = 32,
    batch: int = 2,
    seed: int = 0,
    tokens: np.ndarray | None = None,
    on_step=lambda name: None,
) -> ValidationReport:
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    arch = manifest.architecture
    if tokens is None:
        tokens = make_tokens(arch.vocab_size, batch, steps, seed)
    batch, steps = tokens.shape

    on_step("run the rwkv package")
    refs = [run_rwkv_package(checkpoint, arch.version, [int(t) for t in row]) for row in tokens]

    on_step("run the PyTorch cell")
    ck = load_checkpoint(checkpoint)
    cell = build_cell(ck.weights, ck.arch)
    comparisons = []
    cell_logits, cell_states = run_torch_cell(cell, manifest, tokens[:1])
    comparisons.append(compare("torch cell b=1 vs rwkv", BOUND_VS_REFERENCE, cell_logits[0], _row(cell_states, 0), refs[0]["logits"], refs[0]["state"]))

    onnx_ms = None
    for label, level in OPT_LEVELS.items():
        on_step(f"run ONNX ({label})")
        stepper = OnnxStepper(export_dir, manifest, level)
        alone = []
        for r in range(batch):
            alone.append(stepper.run(tokens[r : r + 1]))
            if label == "opt-all" and r == 0:
                onnx_ms = median_ms(stepper.step_seconds)
        comparisons.append(compare(f"onnx[{label}] b=1 vs rwkv", BOUND_VS_REFERENCE, alone[0][0][0], _row(alone[0][1], 0), refs[0]["logits"], refs[0]["state"]))
        together = stepper.run(tokens)
        for r in range(batch):
            comparisons.append(compare(f"onnx[{label}] b={batch} row {r} vs rwkv", BOUND_VS_REFERENCE, together[0][r], _row(together[1], r), refs[r]["logits"], refs[r]["state"]))
            comparisons.append(compare(f"onnx[{label}] b={batch} row {r} vs alone", BOUND_BATCH, together[0][r], _row(together[1], r), alone[r][0][0], _row(alone[r][1], 0)))

    return ValidationReport(
        checkpoint=str(checkpoint),
        export_dir=str(export_dir),
        version=arch.version,
        steps=steps,
        batch=batch,
        tokens=tokens.tolist(),
        comparisons=comparisons,
        reference_ms_per_token=median_ms(list(refs[0]["step_seconds"])),
        onnx_ms_per_token=onnx_ms,
    )


def median_ms(seconds: list[float]) -> float:
    """Median per-step wall time, skipping the first steps (allocations, lazy init)."""
    return float(np.median(seconds[2:] or seconds) * 1e3)


def _row(states: dict, r: int) -> dict:
    return {k: v[r] for k, v in states.items()}
