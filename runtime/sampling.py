"""Pick the next token from logits, one row per sequence, with numpy only.

Order of operations (the Hugging Face order): penalties on raw logits -> temperature -> top-k ->
top-p -> draw. Temperature 0 means greedy (argmax after penalties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RWKVEdgeError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy; <1 sharpens, >1 flattens
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p; 1 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    repetition_penalty: float = 1.0  # CTRL: divide positive / multiply negative logits of seen tokens; 1 = off
    presence_penalty: float = 0.0  # subtract once from every seen token (GPT-3, rwkv PIPELINE alpha_presence)
    frequency_penalty: float = 0.0  # subtract per occurrence (GPT-3, rwkv PIPELINE alpha_frequency)
    penalty_decay: float = 1.0  # occurrence counts are multiplied by this each step (rwkv's alpha_decay, 0.996)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise RWKVEdgeError(f"temperature must be >= 0 (0 = greedy), found {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise RWKVEdgeError(f"top_p must be in [0, 1], found {self.top_p}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise RWKVEdgeError(f"top_k must be a whole number >= 0 (0 = off), found {self.top_k}")
        if not self.repetition_penalty > 0:
            raise RWKVEdgeError(f"repetition_penalty must be > 0 (1 = off), found {self.repetition_penalty}")
        if not 0 < self.penalty_decay <= 1:
            raise RWKVEdgeError(f"penalty_decay must be in (0, 1], found {self.penalty_decay}")

    @property
    def penalizes(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def apply_penalties(logits: np.ndarray, counts: np.ndarray, params: SamplingParams) -> np.ndarray:
    """logits, counts: [batch, vocab]; counts > 0 marks a token already seen in that row. Returns a new array."""
    out = np.array(logits, dtype=np.float32)
    seen = counts > 0
    if params.repetition_penalty != 1.0:
        p = params.repetition_penalty
        out = np.where(seen, np.where(out > 0, out / p, out * p), out)
    if params.presence_penalty or params.frequency_penalty:
        out -= params.presence_penalty * seen + params.frequency_penalty * counts
    return out


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of `logits` [batch, vocab] -> int64 [batch]. No penalties here."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise RWKVEdgeError(f"logits must be [batch, vocab], found shape {logits.shape}")
    if params.temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    batch, vocab = logits.shape
    x = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < vocab:
        # the k-th largest value per row; ties with it stay in
        kth = np.partition(x, vocab - params.top_k, axis=-1)[:, vocab - params.top_k][:, None]
        x = np.where(x >= kth, x, -np.inf)
    probs = np.exp(x - x.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if params.top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep a token if the mass ranked above it is still short of top_p; the best token always stays
        keep_sorted = (np.cumsum(sorted_probs, axis=-1) - sorted_probs) < params.top_p
        keep_sorted[:, 0] = True
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
    cdf = np.cumsum(probs, axis=-1)
    draw = rng.random(batch) * cdf[:, -1]
    ids = (cdf <= draw[:, None]).sum(axis=-1)  # first index whose cdf exceeds the draw
    return np.minimum(ids, vocab - 1).astype(np.int64)


class Sampler:
    """Sampling with memory: tracks what each row has produced, for the penalties, and owns the seeded RNG."""

    def __init__(
        self, params: SamplingParams, batch: int, vocab_size: int, seed: int | np.random.Generator | None = None
    ):
        self.params = params
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.counts = np.zeros((batch, vocab_size), dtype=np.float32)

    def observe(self, ids) -> None:
        """Count tokens [batch] as seen (sampled ones are counted by `sample`; call this to count a prompt too)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(len(self.counts), -1)
        if self.params.penalty_decay != 1.0:
            self.counts *= self.params.penalty_decay
        for row, row_ids in enumerate(ids):
            np.add.at(self.counts[row], row_ids, 1.0)

    def sample(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.shape != self.counts.shape:
            raise RWKVEdgeError(
                f"logits must be {list(self.counts.shape)} for this sampler, found {list(logits.shape)}"
            )
        if self.params.penalizes:
            logits = apply_penalties(logits, self.counts, self.params)
        ids = sample_next(logits, self.params, self.rng)
        self.observe(ids)
        return ids
