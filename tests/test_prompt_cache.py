"""The prompt-state cache and the state store: prefix keys, longest-prefix lookup, origins, LRU eviction by bytes."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_edge.runtime import RWKVEdgeError
from rwkv_edge.runtime.prompt_cache import (
    INITIAL_ORIGIN,
    CachedPrefix,
    PromptCache,
    StateStore,
    prefix_keys,
    prompt_boundaries,
)

CHUNK = 4


def _entry(length: int, fill: float = 0.0, floats: int = 30) -> CachedPrefix:
    """An entry of (floats + 10) * 4 bytes: a state of `floats` float32 and logits of 10."""
    return CachedPrefix(
        length, {"att_x": np.full((1, floats), fill, dtype=np.float32)}, np.zeros((1, 10), dtype=np.float32)
    )


def _store_prompt(cache: PromptCache, prompt: list[int], origin: str = INITIAL_ORIGIN) -> dict[int, bytes]:
    """What the engine stores for a cold run of `prompt`: an entry at each chunk boundary and at its end."""
    keys = prefix_keys(prompt, CHUNK)
    for length, key in keys.items():
        cache.store(origin, key, _entry(length, fill=length))
    return keys


def test_prefix_keys_are_chunk_boundaries_and_the_whole_prompt():
    prompt = list(range(10))
    keys = prefix_keys(prompt, CHUNK)
    assert sorted(keys) == [4, 8, 10]
    longer = prefix_keys(prompt + [99, 98, 97], CHUNK)
    assert sorted(longer) == [4, 8, 12, 13]
    assert longer[4] == keys[4] and longer[8] == keys[8]  # a shared prefix has the same key
    other = prefix_keys([0, 1, 2, 3, 4, 5, 6, 7, 50, 9], CHUNK)  # differs at token 8
    assert other[8] == keys[8] and other[10] != keys[10]
    assert prefix_keys([0, 1, 2, 4], CHUNK)[4] != keys[4]


def test_longest_cached_prefix_on_a_chunk_boundary_wins():
    cache = PromptCache(1 << 20)
    prompt = list(range(10))
    _store_prompt(cache, prompt)
    assert cache.entries == 3
    same = cache.lookup(INITIAL_ORIGIN, prompt, prefix_keys(prompt, CHUNK))
    assert same.length == 10  # the whole prompt: no model call needed
    longer = prompt + [99, 98, 97]
    # 10 is not a boundary of the longer prompt: resuming there would split its chunks differently
    assert cache.lookup(INITIAL_ORIGIN, longer, prefix_keys(longer, CHUNK)).length == 8
    branch = prompt[:6] + [77, 78, 79, 80]
    assert cache.lookup(INITIAL_ORIGIN, branch, prefix_keys(branch, CHUNK)).length == 4
    assert cache.lookup(INITIAL_ORIGIN, [5, 5, 5], prefix_keys([5, 5, 5], CHUNK)) is None
    assert (cache.hits, cache.misses) == (3, 1)
    np.testing.assert_array_equal(same.arrays["att_x"], 10.0)  # the entry stored for that length


def test_entries_of_another_origin_never_match():
    cache = PromptCache(1 << 20)
    prompt = list(range(8))
    _store_prompt(cache, prompt, origin="state-a")
    keys = prefix_keys(prompt, CHUNK)
    assert cache.lookup(INITIAL_ORIGIN, prompt, keys) is None
    assert cache.lookup("state-b", prompt, keys) is None
    assert cache.lookup("state-a", prompt, keys).length == 8


def test_lru_eviction_keeps_the_bytes_within_budget():
    size = _entry(4).nbytes
    assert size == (30 + 10) * 4
    cache = PromptCache(2 * size + size // 2)  # room for two entries
    a, b, c = ([k] * 4 for k in (1, 2, 3))
    ka, kb, kc = (prefix_keys(p, CHUNK)[4] for p in (a, b, c))
    cache.store(INITIAL_ORIGIN, ka, _entry(4))
    cache.store(INITIAL_ORIGIN, kb, _entry(4))
    assert cache.bytes == 2 * size and cache.entries == 2
    assert cache.lookup(INITIAL_ORIGIN, a, {4: ka}) is not None  # a is now the most recently used
    cache.store(INITIAL_ORIGIN, kc, _entry(4))
    assert cache.entries == 2 and cache.bytes == 2 * size
    assert cache.contains(INITIAL_ORIGIN, 4, ka) and cache.contains(INITIAL_ORIGIN, 4, kc)
    assert not cache.contains(INITIAL_ORIGIN, 4, kb)  # the least recently used went
    cache.store(INITIAL_ORIGIN, kb, _entry(4, floats=1000))  # larger than the whole budget: not kept
    assert not cache.contains(INITIAL_ORIGIN, 4, kb) and cache.entries == 2


def test_zero_budget_disables_the_cache():
    cache = PromptCache(0)
    assert not cache.enabled
    keys = _store_prompt(cache, list(range(8)))
    assert cache.entries == 0 and cache.bytes == 0
    assert cache.lookup(INITIAL_ORIGIN, list(range(8)), keys) is None


def test_state_store_round_trip_and_eviction():
    row = {"att_x": np.arange(6, dtype=np.float32).reshape(1, 6)}  # 24 bytes
    store = StateStore(60)
    first = store.put(row)
    second = store.put({"att_x": row["att_x"] + 1})
    assert first != second and len(store) == 2 and store.bytes == 48
    arrays, logits = store.get(first)
    np.testing.assert_array_equal(arrays["att_x"], row["att_x"])
    assert logits is None
    third = store.put(row)  # evicts the least recently used: second (first was just read)
    assert first in store and third in store and second not in store
    assert store.get(second) is None
    with pytest.raises(RWKVEdgeError, match="does not fit the stored-state budget"):
        store.put({"att_x": np.zeros((1, 100), dtype=np.float32)})


def test_cache_points_add_cuts_and_the_cuts_are_part_of_the_key():
    assert prompt_boundaries(10, 4) == [4, 8, 10]
    assert prompt_boundaries(10, 4, (6, 8, 0, 10, 12)) == [4, 6, 8, 10]  # points outside (0, 10) add nothing
    prompt = list(range(10))
    plain, cut = prefix_keys(prompt, 4), prefix_keys(prompt, 4, (6,))
    assert sorted(cut) == [4, 6, 8, 10] and cut[4] == plain[4]
    assert cut[8] != plain[8]  # the same 8 tokens, computed in other chunks: another entry
