"""rwkv-export validate: prove an export equal to the PyTorch original.

Runs the same tokens through (a) the `rwkv` package, the authority, one sequence at a time; (b) our PyTorch
reference cell; (c) the ONNX step graph under plain ONNX Runtime, with graph optimizations off and on, at
batch 1 and batch > 1; (d) the sequence (prefill) graph when the export has one, fed in chunks, against
stepping. Errors are measured as the numerics contract says (docs/numerics.md): logits as max|diff| / std(ref
logits) per step, states as max|diff| / max|ref| per tensor after the last step. Where a comparison fails, the
report names the first step, tensor and layer that diverge.

The fp32 noise floor. The package itself computes in fp32, and some tokens are ill-conditioned: RWKV-5..7's per-head
group norm (eps 64e-5) divides by the spread of a head's output, and when that output nearly cancels (at the first
token it is one dot product r.k times v), fp32 rounding is amplified by orders of magnitude. So the same math in
another summation order can differ from the package by more than 1e-4 at such a step, while both are equally close
to the exact result. We therefore also run our cell in float64 (the "exact" result): its distance to the package is
the package's own rounding error at each step. The largest of that, our fp32 cell's distance to exact, and that of
our cell with weights nudged by one rounding (fp32_sensitivity) is the step's floor: its conditioning, which any
fp32 kernel meets (ORT's MatMul+Add -> Gemm fusion alone can move such a first token past 1e-4 from exact:
docs/numerics.md). A step's logits bound is max(1e-4, NOISE_FACTOR x floor): ONNX may be as far from the package as
fp32 lands from exact, on both sides. That allowance cannot hide a wrong export: the float64 cell must itself agree
with the package at the median step (a wrong formula is off at every step, rounding only at a few), states keep the
plain bound, and the fp32 cell and ONNX must still agree with each other, step by step.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rwkv_edge.common.timing import median_ms
from rwkv_edge.exporter.cells import build_cell
from rwkv_edge.exporter.checkpoint import load_checkpoint
from rwkv_edge.exporter.state_tuning import time_state_tensors
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Manifest, load_manifest
from rwkv_edge.runtime.state import initial_arrays, load_initial_values

from .reference_rwkv import run_rwkv_package

# The numerics contract (docs/numerics.md)
BOUND_VS_REFERENCE = 1e-4  # ONNX fp32 vs the rwkv package: logits and states
BOUND_BATCH = 1e-5  # a row of a batch vs the same sequence alone
NOISE_FACTOR = 3  # |onnx - pkg| <= |onnx - exact| + |exact - pkg|: both fp32 results, each about as far from exact
TIMING_WARMUP = 2  # steps left out of the ms/token the report gives (common/timing.median_ms): allocations, lazy init
OPT_LEVELS = {
    "opt-off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "opt-all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class Comparison:
    name: str  # e.g. "onnx[opt-all] b=2 row 1 vs rwkv"
    bound: float
    logits_err: float  # max over steps of max|diff| / std(ref)
    state_err: dict[str, float]  # per state tensor after the last step: max|diff| / max|ref|
    first_divergence: str | None = None  # "step 17, logits" or "after step 31, wkv layer 3"
    per_step: list[float] = field(default_factory=list)
    floor: list[float] | None = None  # per step: the reference's own fp32 rounding error (see the module doc)
    rule: str = "max"  # "max": every step within its bound; "median": the median step (the float64 cell's check)

    def step_bounds(self) -> np.ndarray:
        if self.floor is None:
            return np.full(len(self.per_step), self.bound)
        return np.maximum(self.bound, NOISE_FACTOR * np.asarray(self.floor))

    @property
    def passed(self) -> bool:
        errors = np.asarray(self.per_step)
        if self.rule == "median":
            logits_ok = float(np.median(errors)) <= self.bound
        else:
            logits_ok = bool(np.all(errors <= self.step_bounds()))
        return logits_ok and all(e <= self.bound for e in self.state_err.values())


class ComparisonsReport:
    """A report made of lists of comparisons (the fields named in VERDICTS): it passes when all of them do;
    to_dict carries each verdict into the JSON."""

    VERDICTS = ("comparisons",)
    comparisons: list

    @property
    def passed(self) -> bool:
        return all(c.passed for name in self.VERDICTS for c in getattr(self, name))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        for name in self.VERDICTS:
            for c, cd in zip(getattr(self, name), d[name]):
                cd["passed"] = c.passed
        return d


@dataclass
class ValidationReport(ComparisonsReport):
    checkpoint: str
    export_dir: str
    version: str
    steps: int
    batch: int
    tokens: list[list[int]]
    comparisons: list[Comparison]
    reference_ms_per_token: float | None = None  # the rwkv package, wall time of forward() per token
    onnx_ms_per_token: float | None = None  # ORT, batch 1, optimizations on


def logits_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per step: max|diff| / std(ref). got, ref: [T, vocab]."""
    return np.abs(got - ref).max(axis=-1) / np.maximum(ref.std(axis=-1), 1e-30)


def state_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """max|diff| / max|ref| over a [L, ...] state tensor, and the first layer above... (returned: worst layer)."""
    scale = max(float(np.abs(ref).max()), 1e-30)
    per_layer = np.abs(got - ref).reshape(got.shape[0], -1).max(axis=1) / scale
    return float(per_layer.max()), int(per_layer.argmax())


def compare(
    name: str,
    bound: float,
    logits: np.ndarray,
    states: dict,
    ref_logits: np.ndarray,
    ref_states: dict,
    floor: np.ndarray | None = None,
    rule: str = "max",
) -> Comparison:
    per_step = logits_error(logits, ref_logits)
    state_err, divergence = {}, None
    step_bounds = bound if floor is None else np.maximum(bound, NOISE_FACTOR * floor)
    bad_steps = np.nonzero(per_step > step_bounds)[0]
    if len(bad_steps) and (rule == "max" or np.median(per_step) > bound):
        divergence = f"step {int(bad_steps[0])}, logits"
    for tensor, ref in ref_states.items():
        err, layer = state_error(states[tensor], ref)
        state_err[tensor] = err
        if err > bound and divergence is None:
            divergence = f"after step {len(per_step) - 1}, {tensor} layer {layer}"
    return Comparison(
        name,
        bound,
        float(per_step.max()),
        state_err,
        divergence,
        [float(e) for e in per_step],
        None if floor is None else [float(e) for e in floor],
        rule,
    )


class OnnxStepper:
    """Plain ONNX Runtime over the manifest, as an app would drive it (no rwkv_edge runtime in the loop)."""

    def __init__(self, export_dir: Path, manifest: Manifest, opt_level, precision: str = "fp32"):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = opt_level
        graph = manifest.graph("step", precision)
        self.manifest = manifest
        self.session = ort.InferenceSession(str(export_dir / graph.file), opts, providers=["CPUExecutionProvider"])
        self.graph = graph
        self.initial = load_initial_values(manifest.state, export_dir)  # state tuning: the manifest's init files

    def run(self, tokens: np.ndarray) -> tuple[np.ndarray, dict]:
        """tokens [B, T] -> logits [B, T, vocab] and the states after the last step {name: [B, ...]}."""
        B, T = tokens.shape
        start = initial_arrays(self.manifest.state, B, self.initial)
        state = {s.input: start[s.name] for s in self.manifest.state}
        out_names = [self.graph.output] + [s.output for s in self.manifest.state]
        logits, self.step_seconds = [], []
        for t in range(T):
            start = time.perf_counter()
            outs = self.session.run(out_names, {self.graph.input: tokens[:, t].astype(np.int64), **state})
            self.step_seconds.append(time.perf_counter() - start)
            logits.append(outs[0])
            state = {s.input: o for s, o in zip(self.manifest.state, outs[1:])}
        return np.stack(logits, 1), {s.name: state[s.input] for s in self.manifest.state}


SEQUENCE_CHUNK = 11  # validate's prefill chunk: not a divisor of the default 32 steps, so a short last chunk is tried


class OnnxSequence:
    """The sequence (prefill) graph under plain ONNX Runtime, fed in chunks as the runtime feeds a prompt."""

    def __init__(self, export_dir: Path, manifest: Manifest, opt_level, precision: str = "fp32"):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = opt_level
        self.graph = manifest.graph("sequence", precision)
        self.manifest = manifest
        self.session = ort.InferenceSession(str(export_dir / self.graph.file), opts, providers=["CPUExecutionProvider"])
        self.initial = load_initial_values(manifest.state, export_dir)

    def run(self, tokens: np.ndarray, chunk: int = SEQUENCE_CHUNK) -> tuple[np.ndarray, list[int], dict]:
        """tokens [B, T] -> (logits [B, P, vocab] at positions P, P, the states after the last token). P: every
        position when the graph returns all of them, else each chunk's last position."""
        B, T = tokens.shape
        start = initial_arrays(self.manifest.state, B, self.initial)
        state = {s.input: start[s.name] for s in self.manifest.state}
        out_names = [self.graph.output] + [s.output for s in self.manifest.state]
        logits, positions = [], []
        for begin in range(0, T, chunk):
            ids = np.ascontiguousarray(tokens[:, begin : begin + chunk], dtype=np.int64)
            outs = self.session.run(out_names, {self.graph.input: ids, **state})
            if self.graph.logits == "all":
                logits.append(outs[0])
                positions.extend(range(begin, begin + ids.shape[1]))
            else:
                logits.append(outs[0][:, None])
                positions.append(begin + ids.shape[1] - 1)
            state = {s.input: o for s, o in zip(self.manifest.state, outs[1:])}
        return np.concatenate(logits, 1), positions, {s.name: state[s.input] for s in self.manifest.state}


def sequence_comparisons(
    export_dir: Path, manifest: Manifest, tokens: np.ndarray, precision: str = "fp32", stepped: dict | None = None
) -> list[Comparison]:
    """The sequence graph of `precision` vs stepping its step graph over `tokens` [B, T] (the numerics contract's
    bound of ONNX vs the reference, docs/numerics.md), per ORT opt level and row: the logits at the positions the
    sequence graph returns, and the states after the last token. Empty when the export has no sequence graph of
    that precision.

    Below fp32 the two graphs cannot agree to 1e-4 everywhere, and the bound becomes max(1e-4, NOISE_FACTOR x
    a measured rounding scale):
    - int8/int4 also quantize activations (MatMulNBits accuracy_level 4): an fp32-rounding difference in an
      activation can flip its int8 rounding, a quantization step. ORT's fusions, which differ between the two
      graphs, move the quantized step graph itself past 1e-4 between opt levels: that move is the scale with
      optimizations on. With them off 1e-4 holds where the sequence graph computes exactly what stepping
      computes, which the fp32 graphs show (a Scan over the step op's body does; WKV7Seq's chunked form rounds
      differently, and one flipped activation is then a quantization step): otherwise the scale applies there too.
    - fp16 rounds every activation to 10 bits, in an order that differs between the graphs at any opt level:
      the scale is also the fp16 step graph's distance from the fp32 one.
    - int8-rowwise spells its kernel out, so no fusion moves it between opt levels, while the sequence graph's
      rounding still flips activations (a quantization step each, measured up to 0.07 of the logits' std on the
      embedded model): its scale is, as fp16's, the step graph's distance from the fp32 one."""
    if not any(g.kind == "sequence" and g.precision == precision for g in manifest.graphs):
        return []
    if stepped is None:  # {opt label: OnnxStepper(...).run(tokens)}, when the caller has not stepped these tokens yet
        stepped = {
            label: OnnxStepper(export_dir, manifest, level, precision).run(tokens)
            for label, level in OPT_LEVELS.items()
        }
    scale = 0.0
    same_arithmetic = precision != "fp32" and _sequence_computes_stepping(export_dir, manifest, tokens)
    if precision != "fp32":
        pairs = [(stepped["opt-all"], stepped["opt-off"])]
        if precision in ("fp16", "int8-rowwise"):
            pairs.append(
                (stepped["opt-off"], OnnxStepper(export_dir, manifest, OPT_LEVELS["opt-off"], "fp32").run(tokens))
            )
        scale = max(
            max(
                [float(logits_error(a[0][r], b[0][r]).max()) for r in range(tokens.shape[0])]
                + [state_error(a[1][k], b[1][k])[0] for k in b[1]]
            )
            for a, b in pairs
        )
    out = []
    for label, level in OPT_LEVELS.items():
        step_logits, step_states = stepped[label]
        logits, positions, states = OnnxSequence(export_dir, manifest, level, precision).run(tokens)
        exact = precision == "fp32" or (precision != "fp16" and label == "opt-off" and same_arithmetic)
        bound = BOUND_VS_REFERENCE if exact else max(BOUND_VS_REFERENCE, NOISE_FACTOR * scale)
        for r in range(tokens.shape[0]):
            out.append(
                compare(
                    f"prefill {precision}[{label}] row {r} vs stepping",
                    bound,
                    logits[r],
                    _row(states, r),
                    step_logits[r, positions],
                    _row(step_states, r),
                )
            )
    return out


def _sequence_computes_stepping(export_dir: Path, manifest: Manifest, tokens: np.ndarray) -> bool:
    """Whether the fp32 sequence graph gives exactly the fp32 step graph's results on `tokens`, optimizations off."""
    if not any(g.kind == "sequence" and g.precision == "fp32" for g in manifest.graphs):
        return False
    level = OPT_LEVELS["opt-off"]
    step_logits, step_states = OnnxStepper(export_dir, manifest, level, "fp32").run(tokens)
    logits, positions, states = OnnxSequence(export_dir, manifest, level, "fp32").run(tokens)
    return np.array_equal(logits, step_logits[:, positions]) and all(
        np.array_equal(states[k], step_states[k]) for k in step_states
    )


def run_torch_cell(
    cell, manifest: Manifest, tokens: np.ndarray, initial: dict | None = None, dtype: torch.dtype = torch.float32
) -> tuple[np.ndarray, dict]:
    """`initial`: state-tuned initial values by state name (one row each, see runtime.state.load_initial_values).
    `dtype`: the cell's dtype (float64 gives the near-exact result the noise floor is measured against)."""
    B, T = tokens.shape
    start = initial_arrays(manifest.state, B, initial)
    state = [torch.from_numpy(start[s.name]).to(dtype) for s in manifest.state]
    logits = []
    with torch.no_grad():
        for t in range(T):
            out = cell(torch.from_numpy(tokens[:, t].astype(np.int64)), *state)
            logits.append(out[0].numpy())
            state = list(out[1:])
    return np.stack(logits, 1), {s.name: x.numpy() for s, x in zip(manifest.state, state)}


SENSITIVITY_PROBES = 3  # fp32 cell runs with weights nudged by ~1 ulp: samples of how rounding spreads per step


def fp32_sensitivity(ck, manifest: Manifest, tokens: np.ndarray, initial, exact_logits: np.ndarray) -> list[np.ndarray]:
    """Per row and step, the largest distance from the exact result among fp32 runs whose weights differ by one
    rounding (relative 2^-23): how much this step amplifies an ulp, independent of any one implementation."""
    worst = [np.zeros(tokens.shape[1]) for _ in range(tokens.shape[0])]
    for probe in range(SENSITIVITY_PROBES):
        g = torch.Generator().manual_seed(probe)
        nudged = {
            k: v.float() * (1 + 2.0**-23 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
            for k, v in ck.weights.items()
        }
        logits, _ = run_torch_cell(build_cell(nudged, ck.arch), manifest, tokens, initial)
        worst = [np.maximum(w, logits_error(logits[r], exact_logits[r])) for r, w in enumerate(worst)]
    return worst


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
    initial_state: str | Path | None = None,
    on_step=lambda name: None,
) -> ValidationReport:
    """`initial_state`: the state-tuning file the export was made with (`export --initial-state`); the `rwkv`
    package then loads it as the checkpoint's time_state, as it would a state-tuned checkpoint's own."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    arch = manifest.architecture
    if tokens is None:
        tokens = make_tokens(arch.vocab_size, batch, steps, seed)
    batch, steps = tokens.shape

    ck = load_checkpoint(checkpoint)
    tuned = time_state_tensors(ck, initial_state)
    _check_same_start(manifest, tuned, checkpoint, initial_state)
    extra = tuned if initial_state is not None else None  # a checkpoint's own time_state the package reads itself

    on_step("run the rwkv package")
    refs = [
        run_rwkv_package(checkpoint, arch.version, [int(t) for t in row], variant=ck.variant, extra_tensors=extra)
        for row in tokens
    ]

    on_step("run the PyTorch cell in float64 and float32")
    initial = load_initial_values(manifest.state, export_dir)
    exact_logits, exact_states = run_torch_cell(
        build_cell(ck.weights, ck.arch).double(), manifest, tokens, initial, torch.float64
    )
    package_floor = [logits_error(ref["logits"], exact_logits[r]) for r, ref in enumerate(refs)]  # its own rounding
    comparisons = [
        compare(
            "float64 cell b=1 vs rwkv (median step)",
            BOUND_VS_REFERENCE,
            exact_logits[0],
            _row(exact_states, 0),
            refs[0]["logits"],
            refs[0]["state"],
            rule="median",
        )
    ]
    cell = build_cell(ck.weights, ck.arch)
    cell_logits, cell_states = run_torch_cell(cell, manifest, tokens, initial)
    cell_floor = [logits_error(cell_logits[r], exact_logits[r]) for r in range(batch)]
    # A step's fp32 noise floor: how far fp32 computations land from the exact result there: the package, our
    # torch cell, and our cell with its weights nudged by one rounding (each a different fp32 rounding pattern).
    # It measures the step's conditioning, which ORT's kernels meet as well.
    probe_floor = fp32_sensitivity(ck, manifest, tokens, initial, exact_logits)
    floors = [np.maximum.reduce([p, c, q]) for p, c, q in zip(package_floor, cell_floor, probe_floor)]
    comparisons.append(
        compare(
            "torch cell b=1 vs rwkv",
            BOUND_VS_REFERENCE,
            cell_logits[0],
            _row(cell_states, 0),
            refs[0]["logits"],
            refs[0]["state"],
            package_floor[0],
        )
    )

    onnx_ms, stepped = None, {}  # stepped: {opt label: the batch stepped}, which the prefill graph is held to
    for label, level in OPT_LEVELS.items():
        on_step(f"run ONNX ({label})")
        stepper = OnnxStepper(export_dir, manifest, level)
        alone = []
        for r in range(batch):
            alone.append(stepper.run(tokens[r : r + 1]))
            if label == "opt-all" and r == 0:
                onnx_ms = median_ms(stepper.step_seconds, warmup=TIMING_WARMUP)
        comparisons.append(
            compare(
                f"onnx[{label}] b=1 vs rwkv",
                BOUND_VS_REFERENCE,
                alone[0][0][0],
                _row(alone[0][1], 0),
                refs[0]["logits"],
                refs[0]["state"],
                floors[0],
            )
        )
        if label == "opt-all":  # our two fp32 implementations agree with each other at every step
            comparisons.append(
                compare(
                    "onnx[opt-all] b=1 vs torch cell",
                    BOUND_VS_REFERENCE,
                    alone[0][0][0],
                    _row(alone[0][1], 0),
                    cell_logits[0],
                    _row(cell_states, 0),
                    cell_floor[0],
                )
            )
        together = stepped[label] = stepper.run(tokens)
        for r in range(batch):
            comparisons.append(
                compare(
                    f"onnx[{label}] b={batch} row {r} vs rwkv",
                    BOUND_VS_REFERENCE,
                    together[0][r],
                    _row(together[1], r),
                    refs[r]["logits"],
                    refs[r]["state"],
                    floors[r],
                )
            )
            comparisons.append(
                compare(
                    f"onnx[{label}] b={batch} row {r} vs alone",
                    BOUND_BATCH,
                    together[0][r],
                    _row(together[1], r),
                    alone[r][0][0],
                    _row(alone[r][1], 0),
                )
            )

    on_step("run the sequence (prefill) graph")
    comparisons += sequence_comparisons(export_dir, manifest, tokens, stepped=stepped)

    return ValidationReport(
        checkpoint=str(checkpoint),
        export_dir=str(export_dir),
        version=arch.version,
        steps=steps,
        batch=batch,
        tokens=tokens.tolist(),
        comparisons=comparisons,
        reference_ms_per_token=median_ms(list(refs[0]["step_seconds"]), warmup=TIMING_WARMUP),
        onnx_ms_per_token=onnx_ms,
    )


def _check_same_start(manifest: Manifest, tuned, checkpoint, initial_state) -> None:
    """The package and the export must start from the same state: both from zeros, or both state-tuned."""
    exported = [s.init_file for s in manifest.state if s.init_file]
    if exported and tuned is None:
        raise RWKVEdgeError(
            f"the export starts from a trained initial state ({', '.join(exported)}) but {checkpoint} has no "
            "att.time_state; pass the state file it was exported with (--initial-state)"
        )
    if tuned is not None and not exported:
        source = initial_state or checkpoint
        raise RWKVEdgeError(
            f"{source} holds a trained initial state (att.time_state) but the export starts from zeros; "
            f"re-export with it, or validate against the checkpoint the export was made from"
        )


def _row(states: dict, r: int) -> dict:
    return {k: v[r] for k, v in states.items()}


# --------------------------------------------------------------------------------------------- quantized graphs
# A quantized graph cannot meet the fp32 bounds above; it is held to the numerics contract's quality bounds
# instead (docs/numerics.md): on real text, its perplexity and top-1 choices against the `rwkv` package's (fp32).


@dataclass
class QualityComparison:
    name: str  # e.g. "onnx int8 [opt-all] vs rwkv"
    min_top1_agreement: float
    max_perplexity_change: float
    reference_perplexity: float
    perplexity: float
    perplexity_change: float  # perplexity / reference perplexity - 1
    top1_agreement: float  # share of positions whose argmax is the reference's

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= self.min_top1_agreement and self.perplexity_change <= self.max_perplexity_change


@dataclass
class QuantizedValidationReport(ComparisonsReport):
    checkpoint: str
    export_dir: str
    version: str
    precision: str
    text: str
    tokens: int  # positions scored
    comparisons: list[QualityComparison]
    onnx_ms_per_token: float | None = None
    sequence: list[Comparison] = field(default_factory=list)  # the prefill graph of this precision vs stepping it

    VERDICTS = ("comparisons", "sequence")


SEQUENCE_TOKENS = 64  # text tokens on which a quantized prefill graph is held to stepping (exact bounds)
# The quality bounds hold on >= 1000 tokens (docs/numerics.md); the logits of both sides are held in memory.
DEFAULT_QUALITY_TOKENS = 2048


def validate_quantized(
    checkpoint: str | Path,
    export_dir: str | Path,
    precision: str,
    *,
    text: str | None = None,
    text_name: str | None = None,
    max_tokens: int = DEFAULT_QUALITY_TOKENS,
    initial_state: str | Path | None = None,
    on_step=lambda name: None,
) -> QuantizedValidationReport:
    """The `precision` step graph vs the `rwkv` package on a text (default: the built-in evaluation text), with
    ORT graph optimizations off and on: top-1 agreement and perplexity change within QUALITY_BOUNDS."""
    from rwkv_edge.quant.evaluate import QUALITY_BOUNDS, nll_and_argmax, perplexity, read_text, top1_agreement
    from rwkv_edge.runtime.tokenizer import load_tokenizer

    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    bound = QUALITY_BOUNDS.get(precision)
    if bound is None:
        raise RWKVEdgeError(
            f"no quality bound for precision {precision!r}; validate takes fp32 (exact bounds) or one of: "
            f"{', '.join(QUALITY_BOUNDS)}"
        )
    manifest.graph("step", precision)  # a clear line when the export has no such graph
    if text is None:
        text, text_name = read_text(None)
    tokens = list(load_tokenizer(manifest.tokenizer, export_dir).encode(text))[: max_tokens + 1]
    if len(tokens) < 2:
        raise RWKVEdgeError(f"the text has {len(tokens)} token(s); validating a {precision} graph needs at least 2")

    ck = load_checkpoint(checkpoint)
    tuned = time_state_tensors(ck, initial_state)
    _check_same_start(manifest, tuned, checkpoint, initial_state)
    extra = tuned if initial_state is not None else None

    on_step(f"run the rwkv package on {len(tokens)} tokens")
    ref = run_rwkv_package(
        checkpoint, manifest.architecture.version, tokens, want_states=False, variant=ck.variant, extra_tensors=extra
    )
    ref_scores = [nll_and_argmax(ref["logits"][i], tokens[i + 1]) for i in range(len(tokens) - 1)]
    del ref
    ref_nll = np.array([s[0] for s in ref_scores])
    ref_argmax = np.array([s[1] for s in ref_scores])

    comparisons, onnx_ms = [], None
    for label, level in OPT_LEVELS.items():
        on_step(f"run ONNX {precision} ({label})")
        stepper = OnnxStepper(export_dir, manifest, level, precision=precision)
        logits, _ = stepper.run(np.asarray(tokens, dtype=np.int64)[None, :])
        scores = [nll_and_argmax(logits[0, i], tokens[i + 1]) for i in range(len(tokens) - 1)]
        del logits
        nll = np.array([s[0] for s in scores])
        ppl, ref_ppl = perplexity(nll), perplexity(ref_nll)
        comparisons.append(
            QualityComparison(
                f"onnx {precision} [{label}] vs rwkv",
                bound.min_top1_agreement,
                bound.max_perplexity_change,
                ref_ppl,
                ppl,
                ppl / ref_ppl - 1,
                top1_agreement(np.array([s[1] for s in scores]), ref_argmax),
            )
        )
        if label == "opt-all":
            onnx_ms = median_ms(stepper.step_seconds, warmup=TIMING_WARMUP)
    on_step(f"run the {precision} sequence (prefill) graph")
    sequence = sequence_comparisons(
        export_dir, manifest, np.asarray(tokens[:SEQUENCE_TOKENS], dtype=np.int64)[None, :], precision
    )
    return QuantizedValidationReport(
        str(checkpoint),
        str(export_dir),
        manifest.architecture.version,
        precision,
        text_name or "text",
        len(tokens) - 1,
        comparisons,
        onnx_ms,
        sequence,
    )
