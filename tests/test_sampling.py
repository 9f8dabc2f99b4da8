"""Sampling: seeded determinism, greedy, top-k / top-p support, penalties, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_edge.runtime import RWKVEdgeError, Sampler, SamplingParams
from rwkv_edge.runtime.sampling import apply_penalties, sample_next, top_p_support

VOCAB = 50


def _logits(batch: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=(batch, VOCAB)).astype(np.float32)


def _draws(params: SamplingParams, logits: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([sample_next(logits, params, rng) for _ in range(n)])  # [n, batch]


def test_same_seed_same_tokens_other_seed_differs():
    params = SamplingParams(temperature=1.0)
    logits = _logits()
    a = Sampler(params, 4, VOCAB, seed=123)
    b = Sampler(params, 4, VOCAB, seed=123)
    c = Sampler(params, 4, VOCAB, seed=124)
    ra = [a.sample(logits) for _ in range(20)]
    rb = [b.sample(logits) for _ in range(20)]
    rc = [c.sample(logits) for _ in range(20)]
    assert all((x == y).all() for x, y in zip(ra, rb))
    assert not all((x == y).all() for x, y in zip(ra, rc))


def test_temperature_zero_is_argmax():
    logits = _logits(batch=6)
    ids = sample_next(logits, SamplingParams(temperature=0.0), np.random.default_rng(0))
    assert ids.dtype == np.int64
    assert (ids == logits.argmax(axis=-1)).all()


def test_top_k_restricts_to_k_best():
    logits = _logits()
    draws = _draws(SamplingParams(temperature=2.0, top_k=3), logits, 300)
    for row in range(logits.shape[0]):
        allowed = set(np.argsort(-logits[row])[:3].tolist())
        seen = set(draws[:, row].tolist())
        assert seen <= allowed
        assert len(seen) == 3  # hot temperature: each of the three shows up


def test_top_p_keeps_smallest_set_reaching_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 needs the first two, 0.85 the first three
    probs = np.array([[0.05, 0.5, 0.15, 0.3]])
    logits = np.log(probs).astype(np.float32)
    assert set(_draws(SamplingParams(top_p=0.7), logits, 300)[:, 0].tolist()) == {1, 3}
    assert set(_draws(SamplingParams(top_p=0.85), logits, 300)[:, 0].tolist()) == {1, 3, 2}
    assert set(_draws(SamplingParams(top_p=0.0), logits, 50)[:, 0].tolist()) == {1}


def test_sampling_follows_the_distribution():
    probs = np.array([0.1, 0.6, 0.3])
    draws = _draws(SamplingParams(), np.log(probs)[None, :], 4000)[:, 0]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - probs).max() < 0.03


def test_rows_sample_independently():
    logits = np.full((2, VOCAB), -10.0, dtype=np.float32)
    logits[0, 7] = 10.0
    logits[1, 42] = 10.0
    ids = sample_next(logits, SamplingParams(temperature=1.0), np.random.default_rng(0))
    assert ids.tolist() == [7, 42]


def test_repetition_penalty_is_ctrl_style():
    logits = np.array([[2.0, -2.0, 1.0, -1.0]], dtype=np.float32)
    counts = np.array([[1, 1, 0, 0]], dtype=np.float32)
    out = apply_penalties(logits, counts, SamplingParams(repetition_penalty=2.0))
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]  # seen: positive divided, negative multiplied


def test_repetition_penalty_changes_greedy_choice():
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=1.5), 1, 4, seed=0)
    logits = np.array([[3.0, 2.5, 0.0, 0.0]], dtype=np.float32)
    assert sampler.sample(logits).tolist() == [0]
    assert sampler.sample(logits).tolist() == [1]  # 3.0 / 1.5 = 2.0 < 2.5


def test_presence_and_frequency_penalties_with_decay():
    sampler = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, penalty_decay=0.5), 1, 3)
    sampler.observe([2])
    sampler.observe([2])  # counts: 1 * 0.5 + 1 = 1.5
    assert sampler.counts.tolist() == [[0.0, 0.0, 1.5]]
    out = apply_penalties(np.zeros((1, 3), np.float32), sampler.counts, sampler.params)
    assert out.tolist() == [[0.0, 0.0, -(0.5 + 0.25 * 1.5)]]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"penalty_decay": 0}, "penalty_decay"),
    ],
)
def test_bad_parameters_are_one_line_errors(kwargs, words):
    with pytest.raises(RWKVEdgeError, match=words) as err:
        SamplingParams(**kwargs)
    assert "\n" not in str(err.value)


def test_sampler_checks_logits_shape():
    with pytest.raises(RWKVEdgeError, match=r"\[2, 5\]"):
        Sampler(SamplingParams(), 2, 5).sample(np.zeros((2, 6), np.float32))


# --- top-p over a slice: the same draws as sorting the whole row ----------------------------------------------


def _top_p_by_full_sort(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """sample_next as it was before top-p sorted a slice first: every row sorted whole."""
    batch, vocab = logits.shape
    x = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < vocab:
        kth = np.partition(x, vocab - params.top_k, axis=-1)[:, vocab - params.top_k][:, None]
        x = np.where(x >= kth, x, -np.inf)
    probs = np.exp(x - x.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    keep_sorted = (np.cumsum(sorted_probs, axis=-1) - sorted_probs) < params.top_p
    keep_sorted[:, 0] = True
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    cdf = np.cumsum(np.where(keep, probs, 0.0), axis=-1)
    draw = rng.random(batch) * cdf[:, -1]
    return np.minimum((cdf <= draw[:, None]).sum(axis=-1), vocab - 1).astype(np.int64)


def _language_like(rng: np.random.Generator, vocab: int, batch: int, peak: float) -> np.ndarray:
    """Random logits with a few dozen strong candidates (as a trained model gives), rounded so that many tie."""
    logits = rng.normal(scale=2.0, size=(batch, vocab))
    for row in logits:
        row[rng.choice(vocab, 40, replace=False)] += peak
    return np.round(logits * 4) / 4


@pytest.mark.parametrize(
    "vocab, peaks, top_ps, top_ks, seeds",
    [
        (50, (0.0, 6.0), (0.05, 0.5, 0.9, 0.999), (0, 20), 6),
        (3000, (0.0, 6.0, 12.0), (0.05, 0.5, 0.9, 0.999), (0, 20, 2000), 3),
        (65536, (0.0, 12.0), (0.5, 0.95), (0, 2000), 1),
    ],
)
def test_top_p_draws_equal_the_full_sort(vocab, peaks, top_ps, top_ks, seeds):
    rng = np.random.default_rng(vocab)
    for peak in peaks:  # flat rows fall back to the whole sort, peaked ones stop at a slice
        for top_p in top_ps:
            for top_k in top_ks:
                params = SamplingParams(temperature=float(rng.choice([0.7, 1.0, 1.5])), top_p=top_p, top_k=top_k)
                logits = _language_like(rng, vocab, 2, peak).astype(np.float32)
                for seed in range(seeds):
                    got = sample_next(logits, params, np.random.default_rng(seed))
                    want = _top_p_by_full_sort(logits, params, np.random.default_rng(seed))
                    assert (got == want).all(), (peak, top_p, top_k, seed)


def test_top_p_on_peaked_rows_sorts_only_a_slice(monkeypatch):
    rng = np.random.default_rng(0)
    logits = _language_like(rng, 65536, 3, 12.0).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    want = _top_p_by_full_sort(logits, params, np.random.default_rng(1))

    def no_full_sort(*args, **kwargs):
        raise AssertionError("the whole row was sorted")

    monkeypatch.setattr(np, "argsort", no_full_sort)
    assert (sample_next(logits, params, np.random.default_rng(1)) == want).all()


def test_top_p_with_ties_at_the_edge_of_the_slice():
    # 1000 strong ids, then 3096 tied ones: the slice of 1024 holds 24 of the tied ids, chosen by argpartition,
    # while the whole sort keeps the tied ids of the lowest index. top_p reaches ten of them.
    x = np.zeros(4096)
    x[3096:] = 5.0
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    top_p = float(probs[3096:].sum() + 9.5 * probs[0])
    order = np.argsort(-probs, kind="stable")
    keep = (np.cumsum(probs[order]) - probs[order]) < top_p
    np.testing.assert_array_equal(top_p_support(probs, top_p), np.sort(order[keep]))
    assert top_p_support(probs, top_p)[:10].tolist() == list(range(10))
    logits = (x - x.max()).astype(np.float32)[None, :]
    params = SamplingParams(temperature=1.0, top_p=top_p)
    for seed in range(5):
        got = sample_next(logits, params, np.random.default_rng(seed))
        assert got == _top_p_by_full_sort(logits, params, np.random.default_rng(seed))


class _FixedDraws:
    """Stands in for a numpy Generator: random() gives the listed values."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, n):
        return self.values[:n]


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.75, 1 - 2**-53])
def test_draws_exactly_on_a_step_of_the_cdf(draw):
    logits = np.zeros((1, 4), dtype=np.float32)  # probabilities of exactly 1/4: the cdf steps at 0.25, 0.5, 0.75
    for params in (SamplingParams(top_p=0.8), SamplingParams(top_p=1.0)):
        want = _top_p_by_full_sort(logits, SamplingParams(top_p=min(params.top_p, 0.99)), _FixedDraws([draw]))
        assert sample_next(logits, params, _FixedDraws([draw])) == want
