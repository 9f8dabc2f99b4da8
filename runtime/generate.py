"""Streaming text generation: prompt in, whole-character text chunks out, stop strings honoured.

gen = generate(model, tokenizer, "Q: why is the sky blue?\nA:", max_new_tokens=200, stop=["\nQ:"], seed=0)
for chunk in gen:
    print(chunk, end="", flush=True)
gen.state           # continue the chat from here: generate(model, tokenizer, next_turn, state=gen.state)
gen.finish_reason   # "stop", "eos" or "length"
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .errors import RWKVEdgeError
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer
from .utf8 import Utf8Stream


class StopStringFilter:
    """Cuts a text stream at the first stop string, which may arrive split over several chunks.

    Text that could still turn out to be the start of a stop string is held back until the
    next chunk decides; the stop string itself is never emitted."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops]
        for s in self.stops:
            if not isinstance(s, str) or not s:
                raise RWKVEdgeError(f"stop strings must be non-empty text, found {s!r}")
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; returns what is safe to emit now. After a stop is found, `stopped` is True."""
        if self.stopped:
            return ""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._pending, self.stopped = self._pending[: min(hits)], "", True
            return out
        keep = self._possible_stop_start()
        out, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        """The stream ended without a stop: release what was held back."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _possible_stop_start(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:k]):
                    longest = k
                    break
        return longest


class TextStream:
    """Generated token ids -> the text to emit: whole UTF-8 characters, cut before the first stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]):
        self._tokenizer = tokenizer
        self._utf8 = Utf8Stream()
        self._stops = StopStringFilter(stop)

    @property
    def stopped(self) -> bool:
        """A stop string has been seen; nothing more is emitted."""
        return self._stops.stopped

    def push(self, token: int) -> str:
        return self._stops.push(self._utf8.push(self._tokenizer.decode_bytes([token])))

    def flush(self) -> str:
        """The stream ends: what was held back (an unfinished character, a possible stop string's start)."""
        tail = self._stops.push(self._utf8.flush())
        return tail if self._stops.stopped else tail + self._stops.flush()


def decodable_logits(logits: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """A model's vocab can be wider than its tokenizer's (padding rows, a bytes tokenizer on a bigger vocab):
    logits with the ids the tokenizer cannot decode set to -inf, so they are never sampled."""
    n = tokenizer.vocab_size
    if logits.shape[-1] <= n:
        return logits
    masked = np.array(logits, dtype=np.float32)
    masked[..., n:] = -np.inf
    return masked


def greedy_token_ids(logits: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """The argmax of each row of decodable_logits, read from a view: no copy of the [batch, vocab] logits."""
    return logits[..., : tokenizer.vocab_size].argmax(axis=-1)


class Generation:
    """An iterator of text chunks. Once it is exhausted: `state` has consumed the prompt and every token
    in `tokens` (the sampled ids, a stop string's or end-of-text's included), `text` is what was
    yielded, and `finish_reason` is "stop" (a stop string), "eos" (end-of-text id) or "length"."""

    def __init__(
        self,
        model,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        state,
        sampler: Sampler,
        max_new_tokens: int,
        stop: Sequence[str],
        stop_token_ids: set[int],
    ):
        self.model, self.tokenizer, self.state = model, tokenizer, state
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._prompt_ids, self._sampler = prompt_ids, sampler
        self._max_new_tokens, self._stop_token_ids = max_new_tokens, stop_token_ids
        self._text = TextStream(tokenizer, stop)
        self._chunks = self._run()

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        chunk = next(self._chunks)
        self.text += chunk
        return chunk

    def _run(self) -> Iterator[str]:
        model, state, text = self.model, self.state, self._text
        # an empty prompt continues right where the state's last step left off
        logits = model.feed(self._prompt_ids, state) if self._prompt_ids else state.logits
        self.finish_reason = "length"
        for _ in range(self._max_new_tokens):
            token = int(self._sampler.sample(decodable_logits(logits, self.tokenizer))[0])
            self.tokens.append(token)
            logits = model.step([token], state)  # keep the state in step with `tokens`
            if token in self._stop_token_ids:
                self.finish_reason = "eos"
                break
            chunk = text.push(token)
            if chunk:
                yield chunk
            if text.stopped:
                self.finish_reason = "stop"
                return
        tail = text.flush()
        if text.stopped:
            self.finish_reason = "stop"
        if tail:
            yield tail


def generate(
    model,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    penalty_decay: float = 1.0,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] | None = None,
    seed: int | None = None,
    state=None,
) -> Generation:
    """Stream the continuation of `prompt` (text, or token ids) as whole-character text chunks.

    `state` (batch 1) continues an earlier conversation; None starts fresh. `stop_token_ids` defaults to
    the tokenizer's end-of-text id (World and NeoX: 0). Penalties count generated tokens only."""
    params = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        penalty_decay=penalty_decay,
    )
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise RWKVEdgeError(f"max_new_tokens must be a whole number >= 0, found {max_new_tokens!r}")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(prompt, str):
        prompt_ids = tokenizer.encode(prompt)
    else:
        prompt_ids = [int(t) for t in prompt]
    bad = [t for t in prompt_ids if not 0 <= t < model.vocab_size]
    if bad:
        raise RWKVEdgeError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {model.vocab_size})")
    if state is None:
        state = model.new_state(1)
    elif state.batch != 1:
        raise RWKVEdgeError(
            f"generate runs one sequence, but the state has batch {state.batch}; pick a row with state.select(i)"
        )
    if not prompt_ids and state.logits is None:
        raise RWKVEdgeError(
            "empty prompt and no logits to continue from: give a prompt, or a state that has been stepped"
        )
    if stop_token_ids is None:
        stop_token_ids = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    sampler = Sampler(params, batch=1, vocab_size=model.vocab_size, seed=seed)
    return Generation(
        model, tokenizer, prompt_ids, state, sampler, int(max_new_tokens), stop, set(int(t) for t in stop_token_ids)
    )
