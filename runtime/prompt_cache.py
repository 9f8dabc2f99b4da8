"""Memory of recurrent states for the serving engine: the prompt-state cache and the stored states by id.

An RNN's whole context is its state, a few MB whatever the prompt's length, so a prompt that begins like an earlier
one (a system prompt, a chat's history) can start from the state the earlier one reached instead of running those
tokens again. PromptCache keeps (prefix -> state row, logits) for prefixes that end on a chunk boundary (a multiple
of model.prefill_chunk from the start of the prompt) and for whole prompts. The engine runs every prompt in chunks
aligned the same way, so a run that starts from a cached boundary goes on with exactly the model calls a cold run
makes from there: a hit gives the same state and logits, bit for bit. A whole-prompt entry that is not on a boundary
only ever answers that same prompt (its logits too: a fully cached prompt needs no model call).

Entries are keyed by origin as well (the state a prompt starts from: the manifest's initial state or a stored state's
id), so a prompt run from an uploaded state never meets an entry made from another. Both stores are LRUs bounded by
the bytes of the arrays they hold.

StateStore keeps whole states by id: uploaded ones and those a request returns, so a conversation can continue
from where it stopped.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import RWKVEdgeError

INITIAL_ORIGIN = "initial"  # the origin of prompts that start from the manifest's initial state


@dataclass(frozen=True)
class CachedPrefix:
    """A prompt prefix's state row (host arrays by name, batch 1) and the logits after its last token."""

    length: int  # tokens of the prefix
    arrays: dict[str, np.ndarray]
    logits: np.ndarray  # float32 [1, vocab]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) + self.logits.nbytes


def prompt_boundaries(length: int, chunk: int, cache_points=()) -> list[int]:
    """Where a prompt of `length` tokens is cut into chunks: each multiple of `chunk`, each cache point (e.g. the
    end of a chat message) inside the prompt, and its end. A function of the request alone, so a cold run and a
    cache hit cut the shared prefix alike."""
    if chunk < 1:
        raise RWKVEdgeError(f"chunk must be >= 1, found {chunk}")
    points = {p for p in cache_points if 0 < p < length}
    return sorted(points.union(range(chunk, length, chunk), [length]))


def prefix_keys(prompt_ids, chunk: int, cache_points=()) -> dict[int, bytes]:
    """Digest of every prefix the cache may hold for this prompt, by length: one per chunk boundary
    (prompt_boundaries). Each digest covers the tokens and the cuts before it: an entry is only found by a prompt
    whose computation up to there was the same, bit for bit. One pass over the ids."""
    ids = np.asarray(prompt_ids, dtype=np.int64)
    hasher = hashlib.blake2b(digest_size=16)
    keys = {}
    start = 0
    for end in prompt_boundaries(len(ids), chunk, cache_points):
        hasher.update(ids[start:end].tobytes())
        hasher.update(b"|")  # the cut: the same tokens cut elsewhere hash differently
        keys[end] = hasher.digest()
        start = end
    return keys


class _ByteLRU:
    """An OrderedDict of values with a size each, least recently used first, kept within max_bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key):
        """The value (now the most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key, value, nbytes: int) -> bool:
        """Store (evicting the least recently used); False when the value alone exceeds the budget."""
        if nbytes > self.max_bytes:
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        while self._items and self.bytes + nbytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted
        self._items[key] = (value, nbytes)
        self.bytes += nbytes
        return True


class PromptCache:
    """LRU of CachedPrefix by (origin, prefix), bounded in bytes; max_bytes 0 holds nothing."""

    def __init__(self, max_bytes: int):
        self._lru = _ByteLRU(max_bytes)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._lru.max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._lru.bytes

    @property
    def entries(self) -> int:
        return len(self._lru)

    def lookup(self, origin: str, prompt_ids, keys: dict[int, bytes]) -> CachedPrefix | None:
        """The longest cached prefix of the prompt from `origin` (keys: prefix_keys of the prompt), counted as a
        hit or a miss. The whole prompt is tried first, then each chunk boundary from the last one down."""
        found = None
        with self._lock:
            for length in sorted(keys, reverse=True):
                found = self._lru.get((origin, length, keys[length]))
                if found is not None:
                    break
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def contains(self, origin: str, length: int, key: bytes) -> bool:
        with self._lock:
            return (origin, length, key) in self._lru

    def store(self, origin: str, key: bytes, entry: CachedPrefix) -> None:
        """Remember `entry` (the caller hands over its arrays: they are not copied)."""
        if not self.enabled:
            return
        with self._lock:
            self._lru.put((origin, entry.length, key), entry, entry.nbytes)


class StateStore:
    """Whole states by id (host arrays by name, batch 1, and the logits after their last token if known), an LRU
    bounded in bytes. Thread-safe: the server reads and writes it while the engine stores returned states."""

    def __init__(self, max_bytes: int):
        self._lru = _ByteLRU(max_bytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return self._lru.bytes

    def put(self, arrays: dict[str, np.ndarray], logits: np.ndarray | None = None) -> str:
        """Store a state; returns its new id. Refuses a state larger than the whole budget."""
        nbytes = sum(a.nbytes for a in arrays.values()) + (0 if logits is None else logits.nbytes)
        state_id = uuid.uuid4().hex
        with self._lock:
            if not self._lru.put(state_id, (arrays, logits), nbytes):
                raise RWKVEdgeError(
                    f"a state of {nbytes} bytes does not fit the stored-state budget of {self._lru.max_bytes} bytes; "
                    f"raise EngineConfig.stored_states_mb"
                )
        return state_id

    def get(self, state_id: str) -> tuple[dict[str, np.ndarray], np.ndarray | None] | None:
        with self._lock:
            return self._lru.get(state_id)

    def __contains__(self, state_id: str) -> bool:
        with self._lock:
            return state_id in self._lru
