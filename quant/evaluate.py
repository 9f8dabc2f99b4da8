"""rwkv-export eval: what quantization costs, on numbers. Every precision of an export directory reads the same
tokens of a text, one at a time, batch 1, through the runtime's RWKVModel (as an app would run it), and is
compared with the fp32 graph:

    perplexity          exp(mean over positions of -log p(next token)); its change vs fp32 in percent
    top-1 agreement     share of positions where the most likely next token is the one fp32 picks
    top-1 accuracy      share of positions where the most likely next token is the actual next token
    size                the graph's files on disk (.onnx + .data), and their ratio to fp32's
    ms/token            median wall time of one step (RWKVModel.step, batch 1), after warm-up steps
    peak RSS            high-water mark of a fresh process that opens the graph and runs a few steps
                        (measure/memory.py; opt-in)

The built-in text (eval_text.txt) is the held-out tail of the embedded default model's training text
(Pride and Prejudice from byte 650916 to the end, 33,852 bytes: see scripts/data/README.md and the model card's
training_text.held_out_bytes): the default model never trained on it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rwkv_edge.common.onnx_files import graph_bytes
from rwkv_edge.common.timing import median_ms
from rwkv_edge.measure.memory import process_memory
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import RWKVModel

BUILTIN_TEXT = Path(__file__).with_name("eval_text.txt")
BUILTIN_TEXT_NAME = "the built-in text (Pride and Prejudice, held-out tail)"
DEFAULT_MAX_TOKENS = 4096
WARMUP_STEPS = 8  # steps left out of ms/token (common/timing.median_ms): allocations, first-run kernel selection
MEMORY_STEPS = 16  # steps the fresh process of the peak-memory measure runs
PRECISION_ORDER = ("fp32", "fp16", "int8", "int8-dynamic", "int8-rowwise", "int4")


@dataclass(frozen=True)
class QualityBound:
    min_top1_agreement: float  # share of positions where the argmax matches the reference's
    max_perplexity_change: float  # perplexity / reference perplexity - 1

    def check(self, top1: float, ppl_change: float) -> bool:
        return top1 >= self.min_top1_agreement and ppl_change <= self.max_perplexity_change


# The numerics contract's quality bounds (docs/numerics.md): a quantized graph vs fp32 on real text (>= 1000 tokens, a
# trained model). int8's is the contract's own. int4's leaves room over what the int4 scheme keeps on the default
# model's held-out text (docs/quantization.md) for larger models, where 4-bit round-to-nearest costs more. fp16 only
# rounds (10-bit mantissa), so its bound is the tightest; ORT's CPU provider computes most fp16 ops in fp32.
QUALITY_BOUNDS = {
    "int8": QualityBound(min_top1_agreement=0.98, max_perplexity_change=0.02),
    "int8-dynamic": QualityBound(min_top1_agreement=0.98, max_perplexity_change=0.02),  # int8's: same weights' bits
    "int8-rowwise": QualityBound(min_top1_agreement=0.98, max_perplexity_change=0.02),
    "int4": QualityBound(min_top1_agreement=0.90, max_perplexity_change=0.05),
    "fp16": QualityBound(min_top1_agreement=0.99, max_perplexity_change=0.005),
}


@dataclass
class PrecisionResult:
    precision: str
    file: str
    bytes: int
    size_ratio: float  # bytes / fp32 bytes
    perplexity: float
    perplexity_change: float  # perplexity / fp32 perplexity - 1
    top1_agreement: float  # vs fp32
    top1_accuracy: float  # vs the text
    ms_per_token: float
    peak_rss_mb: float | None = None
    within_bounds: bool | None = None  # QUALITY_BOUNDS of its precision; None for fp32 / no bound


@dataclass
class EvalReport:
    export_dir: str
    text: str  # where the text came from
    tokens: int  # positions scored (tokens read - 1)
    threads: int | None
    provider: str
    results: list[PrecisionResult] = field(default_factory=list)

    def result(self, precision: str) -> PrecisionResult:
        return next(r for r in self.results if r.precision == precision)

    def to_dict(self) -> dict:
        return asdict(self)


def read_text(path: str | os.PathLike | None) -> tuple[str, str]:
    """(text, description) of a user's file, or the built-in text when path is None."""
    if path is None:
        return BUILTIN_TEXT.read_text(encoding="utf-8"), BUILTIN_TEXT_NAME
    p = Path(path)
    if not p.is_file():
        raise RWKVEdgeError(f"{p}: no such text file")
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError as e:
        raise RWKVEdgeError(
            f"{p}: expected UTF-8 text, found a byte that is not ({e.reason} at byte {e.start})"
        ) from None


def nll_and_argmax(logits: np.ndarray, target: int) -> tuple[float, int]:
    """-log softmax(logits)[target] (natural log) and argmax, for one position's logits [vocab]."""
    x = logits.astype(np.float64)
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()) - x[target]), int(x.argmax())


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(np.mean(nll)))


def top1_agreement(argmax: np.ndarray, ref_argmax: np.ndarray) -> float:
    return float(np.mean(np.asarray(argmax) == np.asarray(ref_argmax)))


@dataclass
class Scored:
    nll: np.ndarray  # [T-1] per position
    argmax: np.ndarray  # [T-1]
    step_seconds: np.ndarray  # [T-1]


def score_tokens(model: RWKVModel, tokens: list[int]) -> Scored:
    """Step through `tokens` with batch 1; position i predicts tokens[i + 1]."""
    state = model.new_state(1)
    n = len(tokens) - 1
    nll, argmax, seconds = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
    for i in range(n):
        start = time.perf_counter()
        logits = model.step([tokens[i]], state)
        seconds[i] = time.perf_counter() - start
        nll[i], argmax[i] = nll_and_argmax(logits[0], tokens[i + 1])
    return Scored(nll, argmax, seconds)


def evaluate(
    export_dir: str | os.PathLike,
    text: str | None = None,
    *,
    text_name: str | None = None,
    precisions: list[str] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threads: int | None = 2,
    provider: str = "cpu",
    memory: bool = False,
    on_step=lambda name: None,
) -> EvalReport:
    """Score every step graph of the export (or `precisions`) on `text` (default: the built-in text)."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    have = [g.precision for g in manifest.graphs if g.kind == "step"]
    if "fp32" not in have:
        raise RWKVEdgeError(
            f"{export_dir}: eval compares each precision with the fp32 step graph, and rwkv.json lists none"
        )
    wanted = precisions or sorted(have, key=lambda p: PRECISION_ORDER.index(p) if p in PRECISION_ORDER else 99)
    for p in wanted:
        if p not in have:
            raise RWKVEdgeError(
                f"{export_dir} has no {p} step graph (it has: {', '.join(have)}); run `rwkv-export quantize` first"
            )
    if "fp32" not in wanted:
        wanted = ["fp32", *wanted]
    if max_tokens < 2:
        raise RWKVEdgeError(f"max tokens must be >= 2 (one to read, one to predict), found {max_tokens}")
    if text is None:
        text, text_name = read_text(None)

    report = EvalReport(str(export_dir), text_name or "text", 0, threads, provider)
    ref: Scored | None = None
    fp32_bytes = 0
    tokens: list[int] = []
    for p in wanted:
        on_step(f"open {p}")
        model = RWKVModel.load(export_dir, provider=provider, precision=p, threads=threads)
        if not tokens:
            tokens = list(model.load_tokenizer().encode(text))[: max_tokens + 1]
            if len(tokens) < 2:
                raise RWKVEdgeError(f"the text has {len(tokens)} token(s); eval needs at least 2")
            report.tokens = len(tokens) - 1
        on_step(f"score {p} on {len(tokens) - 1} tokens")
        scored = score_tokens(model, tokens)
        graph = model.step_graph.file
        del model
        size = graph_bytes(export_dir, graph)
        if p == "fp32":
            ref, fp32_bytes = scored, size
        ppl, ref_ppl = perplexity(scored.nll), perplexity(ref.nll)
        change = ppl / ref_ppl - 1
        agree = top1_agreement(scored.argmax, ref.argmax)
        bound = QUALITY_BOUNDS.get(p)
        report.results.append(
            PrecisionResult(
                precision=p,
                file=graph,
                bytes=size,
                size_ratio=size / fp32_bytes,
                perplexity=ppl,
                perplexity_change=change,
                top1_agreement=agree,
                top1_accuracy=float(np.mean(scored.argmax == np.asarray(tokens[1:]))),
                ms_per_token=median_ms(scored.step_seconds, warmup=WARMUP_STEPS),
                within_bounds=bound.check(agree, change) if bound else None,
            )
        )
    if memory:
        for r in report.results:
            on_step(f"peak memory of {r.precision}")
            r.peak_rss_mb = process_memory(
                export_dir, r.precision, threads=threads, provider=provider, steps=MEMORY_STEPS
            ).peak_rss_mib
    return report
