"""Streaming generation: whole UTF-8 characters, stop strings across chunks, seeds, the final state."""

from __future__ import annotations

import numpy as np
import pytest
from fake_model import build_fake_export

from rwkv_edge.runtime import RWKVEdgeError, RWKVModel, StopStringFilter, generate, load_tokenizer
from rwkv_edge.runtime.generate import decodable_logits, greedy_token_ids
from rwkv_edge.runtime.manifest import TokenizerSpec

BYTES = load_tokenizer(TokenizerSpec("bytes"), None)


class ScriptedModel:
    """Stands in for RWKVModel: whatever it is fed, its logits point at the next byte of `script`
    (after n generated tokens, at script[n]), so greedy generation replays the script exactly."""

    def __init__(self, script: bytes, vocab_size: int = 256):
        self.script, self.vocab_size = script, vocab_size

    class State:
        def __init__(self):
            self.batch, self.fed, self.generated, self.logits = 1, [], 0, None

    def new_state(self, batch: int = 1):
        return ScriptedModel.State()

    def _logits(self, state) -> np.ndarray:
        logits = np.zeros((1, self.vocab_size), dtype=np.float32)
        logits[0, self.script[min(state.generated, len(self.script) - 1)]] = 10.0
        state.logits = logits
        return logits

    def feed(self, ids, state):
        state.fed += list(ids)
        return self._logits(state)

    def step(self, ids, state):
        state.fed += list(ids)
        state.generated += 1
        return self._logits(state)


def _run(gen) -> list[str]:
    return list(gen)


# --- stop strings ---------------------------------------------------------------------------------------------


def test_stop_string_split_across_chunks():
    stops = StopStringFilter(["STOP"])
    out = [stops.push("Hello S"), stops.push("T"), stops.push("O"), stops.push("P and more")]
    assert out == ["Hello ", "", "", ""]
    assert stops.stopped and stops.flush() == ""


def test_held_text_is_released_when_it_is_not_a_stop():
    stops = StopStringFilter(["\n\nUser:"])
    assert stops.push("a\n") == "a"
    assert stops.push("\nUs") == ""
    assert stops.push("ually") == "\n\nUsually"
    assert stops.push("\n") == ""
    assert stops.flush() == "\n"
    assert not stops.stopped


def test_earliest_of_several_stops_wins():
    stops = StopStringFilter(["world", "lo w"])
    assert stops.push("hello world") == "hel"


def test_empty_stop_string_is_refused():
    with pytest.raises(RWKVEdgeError, match="non-empty"):
        StopStringFilter([""])


# --- generate with a scripted model ------------------------------------------------------------------------


def test_stream_is_whole_characters_and_stops_before_stop_string():
    model = ScriptedModel("Hello 世界 🦀STOP never shown".encode("utf-8"))
    gen = generate(model, BYTES, "Q", max_new_tokens=100, temperature=0, stop=["STOP"])
    chunks = _run(gen)
    assert "".join(chunks) == "Hello 世界 🦀" == gen.text
    assert all(c and "\ufffd" not in c for c in chunks)
    assert "世" in chunks and "🦀" in chunks  # each multi-byte character came out whole, in one chunk
    assert gen.finish_reason == "stop"
    # the state consumed the prompt and every sampled token, the stop string's included
    assert gen.tokens == list("Hello 世界 🦀STOP".encode("utf-8"))
    assert gen.state.fed == [ord("Q")] + gen.tokens


def test_stop_token_id_ends_generation():
    model = ScriptedModel(b"abc!def")
    gen = generate(model, BYTES, "x", temperature=0, stop_token_ids=[ord("!")])
    assert "".join(gen) == "abc"
    assert gen.finish_reason == "eos" and gen.tokens[-1] == ord("!")


def test_length_limit_flushes_a_broken_tail_as_replacement():
    model = ScriptedModel("ab世".encode("utf-8"))
    gen = generate(model, BYTES, "x", max_new_tokens=3, temperature=0)
    assert "".join(gen) == "ab\ufffd"  # the stream ended inside a character
    assert gen.finish_reason == "length" and len(gen.tokens) == 3


def test_ids_the_tokenizer_cannot_decode_are_never_sampled():
    model = ScriptedModel(bytes([65]), vocab_size=300)
    model._logits = lambda state: np.arange(300, dtype=np.float32)[None, :]  # ids >= 256 are the most likely
    gen = generate(model, BYTES, "x", max_new_tokens=20, temperature=1.0, seed=0)
    _run(gen)
    assert max(gen.tokens) < 256


def test_greedy_ids_are_the_argmax_of_the_decodable_logits():
    logits = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
    logits[1, 280] = logits[3, 256] = 100.0  # the best ids of two rows lie outside the tokenizer's vocabulary
    expected = decodable_logits(logits, BYTES).argmax(axis=-1)
    np.testing.assert_array_equal(greedy_token_ids(logits, BYTES), expected)
    assert (expected < 256).all()


def test_max_new_tokens_zero_yields_nothing():
    gen = generate(ScriptedModel(b"abc"), BYTES, "x", max_new_tokens=0)
    assert _run(gen) == [] and gen.finish_reason == "length"


# --- generate with the fake ONNX model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory) -> RWKVModel:
    return RWKVModel.load(build_fake_export(tmp_path_factory.mktemp("bytes_model"), vocab=256, n_layer=2, n_embd=8))


def test_seed_makes_generation_repeatable(byte_model):
    tok = byte_model.load_tokenizer()
    kwargs = dict(max_new_tokens=40, temperature=1.2, top_p=0.95, top_k=50, repetition_penalty=1.1)
    a = generate(byte_model, tok, "Once upon", seed=7, **kwargs)
    b = generate(byte_model, tok, "Once upon", seed=7, **kwargs)
    c = generate(byte_model, tok, "Once upon", seed=8, **kwargs)
    assert "".join(a) == "".join(b)
    _run(c)
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_greedy_generation_matches_manual_argmax_and_state(byte_model):
    tok = byte_model.load_tokenizer()
    gen = generate(byte_model, tok, "abc", max_new_tokens=12, temperature=0)
    _run(gen)
    state = byte_model.new_state(1)
    logits = byte_model.feed(tok.encode("abc"), state)
    expected = []
    for _ in range(12):
        expected.append(int(logits[0].argmax()))
        logits = byte_model.step([expected[-1]], state)
    assert gen.tokens == expected
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(gen.state.to_numpy()[name], value)


def test_continue_from_final_state(byte_model):
    tok = byte_model.load_tokenizer()
    first = generate(byte_model, tok, "abc", max_new_tokens=5, temperature=0)
    _run(first)
    more = generate(byte_model, tok, "", max_new_tokens=5, temperature=0, state=first.state)
    _run(more)
    whole = generate(byte_model, tok, "abc", max_new_tokens=10, temperature=0)
    _run(whole)
    assert first.tokens + more.tokens == whole.tokens


def test_generate_bad_input(byte_model):
    tok = byte_model.load_tokenizer()
    cases = [
        (dict(prompt=""), "empty prompt"),
        (dict(prompt="hi", state=byte_model.new_state(2)), "batch 2"),
        (dict(prompt="hi", max_new_tokens=-1), "max_new_tokens"),
        (dict(prompt=[1, 999]), "token id 999"),
        (dict(prompt="hi", temperature=-0.5), "temperature"),
        (dict(prompt="hi", stop=[""]), "non-empty"),
    ]
    for kwargs, words in cases:
        with pytest.raises(RWKVEdgeError) as err:
            generate(byte_model, tok, **kwargs)
        assert words in str(err.value) and "\n" not in str(err.value), kwargs
