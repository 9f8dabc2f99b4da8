"""Tokenizers: World parity with the `rwkv` package, NeoX from a small `tokenizers` JSON, bytes, UTF-8 streaming."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from rwkv_edge.runtime import RWKVEdgeError, Utf8Stream, load_tokenizer
from rwkv_edge.runtime.manifest import TokenizerSpec
from rwkv_edge.runtime.tokenizer import BUNDLED_WORLD_VOCAB, WORLD_VOCAB_NAME, WorldTokenizer, read_world_vocab

MULTILINGUAL = (
    "Hello, world! The quick brown fox jumps over the lazy dog.\n\n"
    "中文：你好，世界。今天天气很好，我们去公园散步吧。\n"
    "日本語：こんにちは世界。カタカナとひらがなと漢字。\n"
    "Emoji: 🦀🚀👍🏽👨‍👩‍👧 and flags 🇫🇷\n"
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # code\n"
    "whitespace runs:" + " " * 37 + "\t\t\t\n\n\n\r\n" + " " * 130 + "end\n"
    "Ünïcödé ñ ß Ω≈ç√∫ ДобрЫй день! مرحبا\x00\x7f\n"
    "################################################################################\n"
)


@pytest.fixture(scope="module")
def world():
    return load_tokenizer(TokenizerSpec("world", WORLD_VOCAB_NAME), None)


@pytest.fixture(scope="module")
def reference():
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # the PyTorch original's tokenizer, used as the oracle only

    return TRIE_TOKENIZER(str(BUNDLED_WORLD_VOCAB))


def test_world_same_ids_as_rwkv_package(world, reference):
    ids = world.encode(MULTILINGUAL)
    assert ids == reference.encode(MULTILINGUAL)
    assert world.decode(ids) == MULTILINGUAL
    assert world.decode_bytes(ids) == reference.decodeBytes(ids)


def test_world_same_ids_on_every_line_alone(world, reference):
    for line in MULTILINGUAL.splitlines(keepends=True):
        assert world.encode(line) == reference.encode(line), line


def test_world_encodes_10k_chars_fast(world):
    text = (MULTILINGUAL * 20)[:10_000]
    start = time.perf_counter()
    ids = world.encode(text)
    elapsed = time.perf_counter() - start
    assert world.decode(ids) == text
    assert elapsed < 0.5, f"encoding 10k chars took {elapsed:.3f}s"


def test_world_ids_and_eos(world):
    assert world.vocab_size == 65530  # ids 0..65529; id 0 is end of text, with no bytes
    assert world.eos_id == 0
    assert world.decode_bytes([0]) == b""
    with pytest.raises(RWKVEdgeError, match="outside the world vocabulary"):
        world.decode_bytes([65530])
    with pytest.raises(RWKVEdgeError, match="outside"):
        world.decode_bytes([-1])


def test_world_vocab_is_parsed_as_literals_never_evaluated(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("1 'a' 1\n2 __import__('os').getcwd() 3\n", encoding="utf-8")
    with pytest.raises(RWKVEdgeError, match=":2:"):
        read_world_vocab(vocab)
    vocab.write_text("1 'ab' 5\n", encoding="utf-8")
    with pytest.raises(RWKVEdgeError, match="should be 5 bytes"):
        read_world_vocab(vocab)


def test_world_small_custom_vocab_longest_match(tmp_path):
    # "abcd" exists without "abc": the match must skip the missing middle prefix
    lines = [f"{i + 1} {bytes([i])!r} 1" for i in range(256)] + ["257 'ab' 2", "258 'abcd' 4"]
    vocab = tmp_path / "v.txt"
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = WorldTokenizer.from_file(vocab)
    assert tok.encode("abcdabcab") == [258, 257, ord("c") + 1, 257]


def test_world_file_in_export_dir_wins_then_bundled(tmp_path):
    assert load_tokenizer(TokenizerSpec("world", None), tmp_path).vocab_size == 65530
    (tmp_path / "my_vocab.txt").write_text("1 'a' 1\n2 'b' 1\n", encoding="utf-8")
    assert load_tokenizer(TokenizerSpec("world", "my_vocab.txt"), tmp_path).vocab_size == 3
    with pytest.raises(RWKVEdgeError, match="not found"):
        load_tokenizer(TokenizerSpec("world", "other.txt"), tmp_path)


def test_bytes_tokenizer():
    tok = load_tokenizer(TokenizerSpec("bytes"), None)
    assert tok.encode("aé") == [97, 0xC3, 0xA9]
    assert tok.decode([97, 0xC3, 0xA9]) == "aé"
    assert tok.eos_id is None
    with pytest.raises(RWKVEdgeError, match="outside the bytes vocabulary"):
        tok.decode_bytes([256])


# --- NeoX (a `tokenizers` JSON) ---------------------------------------------------------------------


def _train_byte_level_bpe(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([MULTILINGUAL] * 5, trainer)
    tok.save(str(path))


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("neox")
    _train_byte_level_bpe(d / "tokenizer.json")
    return d


def test_neox_load_encode_decode(neox_dir):
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(neox_dir / "tokenizer.json"))
    tok = load_tokenizer(TokenizerSpec("neox20b", "tokenizer.json"), neox_dir)
    ids = tok.encode(MULTILINGUAL)
    assert ids == original.encode(MULTILINGUAL, add_special_tokens=False).ids
    assert tok.decode(ids) == MULTILINGUAL
    # token by token, the bytes add up exactly (tokens split characters: no U+FFFD anywhere)
    assert b"".join(tok.decode_bytes([i]) for i in ids) == MULTILINGUAL.encode("utf-8")
    assert tok.eos_id == 0 and tok.decode_bytes([0]) == b""
    assert tok.vocab_size == original.get_vocab_size()


def test_neox_errors(neox_dir, tmp_path, monkeypatch):
    with pytest.raises(RWKVEdgeError, match="not found"):
        load_tokenizer(TokenizerSpec("neox20b", "missing.json"), neox_dir)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RWKVEdgeError, match="not a readable") as err:
        load_tokenizer(TokenizerSpec("neox20b", "bad.json"), tmp_path)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if the package were not installed
    with pytest.raises(RWKVEdgeError, match=r"pip install"):
        load_tokenizer(TokenizerSpec("neox20b", "tokenizer.json"), neox_dir)


# --- UTF-8 streaming ---------------------------------------------------------------------------------


def test_utf8_stream_never_splits_a_character():
    tok = load_tokenizer(TokenizerSpec("bytes"), None)
    text = "你好，世界 🦀 ok"
    stream = Utf8Stream()
    chunks = [stream.push(tok.decode_bytes([i])) for i in tok.encode(text)]
    chunks.append(stream.flush())
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)
    assert chunks[0] == "" and chunks[1] == "" and chunks[2] == "你"  # 3 bytes, whole only at the third


def test_utf8_stream_bad_bytes_become_replacement():
    stream = Utf8Stream()
    assert stream.push(b"a\xff") == "a\ufffd"  # a byte that can never start a character
    assert stream.push(b"\xe4\xbd") == ""  # two thirds of a character: held back
    assert stream.flush() == "\ufffd"  # the stream ended inside it
