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
    if params.top_p >= 1:
        cdf = np.cumsum(probs, axis=-1)
        draw = rng.random(batch) * cdf[:, -1]
        ids = (cdf <= draw[:, None]).sum(axis=-1)  # first index whose cdf exceeds the draw
        return np.minimum(ids, vocab - 1).astype(np.int64)
    # Top-p: the kept ids of each row in increasing order, and the cdf over them alone. Adding the zeros of the
    # dropped ids changes no partial sum, so this is the cdf over the whole row at the kept ids, bit for bit.
    kept = [top_p_support(row, params.top_p) for row in probs]
    cdfs = [np.cumsum(row[ids]) for row, ids in zip(probs, kept)]
    draw = rng.random(batch) * np.array([cdf[-1] for cdf in cdfs])
    out = np.empty(batch, dtype=np.int64)
    for row, (ids, cdf) in enumerate(zip(kept, cdfs)):
        i = int(np.searchsorted(cdf, draw[row], side="right"))  # kept ids whose cdf is <= the draw
        out[row] = ids[i] if i < len(ids) else vocab - 1
    return out


# Candidates top_p_support sorts before it falls back to sorting the whole row; a flat distribution falls through.
_TOP_P_SLICES = (1024, 8192)
# Partial sums of a row carry a rounding error far below this (float64, at most 2^20 terms summing to 1), so a slice
# whose certain part reaches top_p + this margin decides the kept set exactly as the whole row's sort does.
_TOP_P_MARGIN = 1e-6


def top_p_support(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The ids top-p keeps from one row of probabilities, in increasing order: the smallest set, in order of
    decreasing probability (ties by id, a stable sort), whose mass reaches top_p; the best id always stays.

    Sorting the whole vocabulary costs milliseconds per row at 65536 ids, so a slice of the most likely ids is
    sorted first. Only its ids ranked strictly above its smallest value are certainly in the whole row's order
    (ids tied with that value may lie outside the slice); when their mass reaches top_p with a margin, the ids
    kept are among them and come out of the same sums as the whole row's. Otherwise the next slice, then the
    whole row."""
    vocab = len(probs)
    for size in _TOP_P_SLICES:
        if size >= vocab:
            break
        ids = np.argpartition(probs, vocab - size)[vocab - size :]
        values = probs[ids]
        order = np.lexsort((ids, -values))  # decreasing probability, ties by id
        ids, values = ids[order], values[order]
        certain = int(np.count_nonzero(values > values[-1]))
        mass = np.cumsum(values)
        if certain and mass[certain - 1] >= top_p + _TOP_P_MARGIN:
            keep = (mass - values)[:certain] < top_p
            keep[0] = True
            return np.sort(ids[:certain][keep])
    order = np.argsort(-probs, kind="stable")
    sorted_probs = probs[order]
    # keep a token if the mass ranked above it is still short of top_p; the best token always stays
    keep = (np.cumsum(sorted_probs) - sorted_probs) < top_p
    keep[0] = True
    return np.sort(order[keep])


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
