"""Sampling: seeded determinism, greedy, top-k / top-p support, penalties, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_edge.runtime import RWKVEdgeError, Sampler, SamplingParams
from rwkv_edge.runtime.sampling import apply_penalties, sample_next

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
