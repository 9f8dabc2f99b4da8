"""Tokenizers: text <-> token ids, and ids -> raw bytes (so a stream can wait for whole characters).

Three kinds, named by rwkv.json's `tokenizer.kind`:
- bytes:   id = byte value (the project's tiny default model).
- world:   RWKV "World" vocab v20230424, greedy longest match over bytes; the same ids as the `rwkv`
           package's TRIE_TOKENIZER. The vocab file ships in runtime/data/.
- neox20b: GPT-NeoX 20B (RWKV-4 Pile models), a `tokenizers` JSON file; `tokenizers` is imported lazily.
"""

from __future__ import annotations

import ast
import os
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .errors import RWKVEdgeError
from .manifest import TokenizerSpec

WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
BUNDLED_WORLD_VOCAB = Path(__file__).parent / "data" / WORLD_VOCAB_NAME


class Tokenizer(ABC):
    kind: str
    vocab_size: int  # ids this tokenizer can decode are [0, vocab_size)
    eos_id: int | None  # end-of-text id a generator stops on, if the vocab has one

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _check_id(self, i: int) -> None:
        if not 0 <= i < self.vocab_size:
            raise RWKVEdgeError(f"token id {i} is outside the {self.kind} vocabulary [0, {self.vocab_size})")


class BytesTokenizer(Tokenizer):
    kind = "bytes"
    vocab_size = 256
    eos_id = None  # every byte is text, none is reserved

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]
        for i in ids:
            self._check_id(i)
        return bytes(ids)


class WorldTokenizer(Tokenizer):
    """Greedy longest match: at each position take the longest vocab token that the text starts with.

    Instead of a node-per-byte trie (hundreds of thousands of Python objects), keep one dict
    bytes -> id, and for each 2-byte prefix the token lengths that start with it, longest first.
    Each position then tries only the lengths that can match at all.
    """

    kind = "world"
    eos_id = 0  # id 0 has no bytes; World models use it as end of document

    def __init__(self, tokens: dict[int, bytes]):
        self.vocab_size = max(tokens) + 1
        self._id_to_bytes = [b""] * self.vocab_size  # ids without a token (0) decode to nothing
        self._token_to_id: dict[bytes, int] = {}
        for i, tok in sorted(tokens.items()):
            self._id_to_bytes[i] = tok
            self._token_to_id[tok] = i  # a token listed twice keeps its last id, as the rwkv package does
        lengths: dict[bytes, set[int]] = {}
        for tok in self._token_to_id:
            if len(tok) >= 2:
                lengths.setdefault(tok[:2], set()).add(len(tok))
        self._lengths_by_prefix = {p: tuple(sorted(ls, reverse=True)) for p, ls in lengths.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "WorldTokenizer":
        return cls(read_world_vocab(path))

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        token_to_id, lengths_by_prefix = self._token_to_id, self._lengths_by_prefix
        ids: list[int] = []
        pos, end = 0, len(data)
        while pos < end:
            for length in lengths_by_prefix.get(data[pos : pos + 2], ()):
                if pos + length <= end:
                    tid = token_to_id.get(data[pos : pos + length])
                    if tid is not None:
                        break
            else:
                length = 1
                tid = token_to_id.get(data[pos : pos + 1])
                if tid is None:
                    raise RWKVEdgeError(
                        f"world vocab has no token for byte {data[pos]:#04x}; the vocab file is incomplete"
                    )
            ids.append(tid)
            pos += length
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._id_to_bytes
        out = []
        for i in ids:
            i = int(i)
            self._check_id(i)
            out.append(table[i])
        return b"".join(out)


def read_world_vocab(path: str | os.PathLike) -> dict[int, bytes]:
    """Parse `idx repr(token) byte_len` lines. The repr is a Python str or bytes literal: literal_eval, never eval."""
    tokens: dict[int, bytes] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                idx = int(line[: line.index(" ")])
                literal = ast.literal_eval(line[line.index(" ") + 1 : line.rindex(" ")])
                byte_len = int(line[line.rindex(" ") + 1 :])
            except (ValueError, SyntaxError) as e:
                raise RWKVEdgeError(
                    f"{path}:{line_no}: expected `id 'token' byte_length`, found {line[:60]!r} ({e})"
                ) from None
            tok = literal.encode("utf-8") if isinstance(literal, str) else literal
            if not isinstance(tok, bytes) or len(tok) != byte_len or idx < 0:
                raise RWKVEdgeError(
                    f"{path}:{line_no}: token {literal!r} should be {byte_len} bytes with a non-negative id"
                )
            tokens[idx] = tok
    if not tokens:
        raise RWKVEdgeError(f"{path}: empty world vocab")
    return tokens


@lru_cache(maxsize=4)
def _world_tokenizer(path: str) -> WorldTokenizer:
    # Parsing 65k lines takes a few hundred ms; apps and tests load the same vocab repeatedly.
    return WorldTokenizer.from_file(path)


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Byte-level BPE writes each byte as one printable character: printable Latin-1 bytes stand for
    themselves, the other 68 bytes are shifted to U+0100 and up, in byte order. Returns char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return char_to_byte


class NeoXTokenizer(Tokenizer):
    """A `tokenizers` JSON file. For byte-level BPE (GPT-NeoX 20B) each id maps to exact bytes, so a
    stream can split characters safely; other decoders fall back to decoding the ids as text."""

    kind = "neox20b"

    def __init__(self, path: str | os.PathLike):
        try:
            import tokenizers
        except ImportError:
            raise RWKVEdgeError(
                "the neox20b tokenizer needs the `tokenizers` package: pip install 'rwkv-edge[neox]'"
            ) from None
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses with multi-line text
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RWKVEdgeError(f"{path}: not a readable `tokenizers` JSON file ({first_line})") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._tok.token_to_id("<|endoftext|>")
        self._id_to_bytes: list[bytes] | None = None
        if isinstance(self._tok.decoder, tokenizers.decoders.ByteLevel):
            self._id_to_bytes = self._byte_table()

    def _byte_table(self) -> list[bytes]:
        char_to_byte = _gpt2_byte_alphabet()
        added = self._tok.get_added_tokens_decoder()  # id -> AddedToken: stored as plain text, not byte-mapped
        table = []
        for i in range(self.vocab_size):
            if i in added:
                table.append(b"" if added[i].special else added[i].content.encode("utf-8"))
                continue
            token = self._tok.id_to_token(i) or ""
            if all(ch in char_to_byte for ch in token):
                table.append(bytes(char_to_byte[ch] for ch in token))
            else:
                table.append(token.encode("utf-8"))
        return table

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]
        for i in ids:
            self._check_id(i)
        if self._id_to_bytes is not None:
            return b"".join(self._id_to_bytes[i] for i in ids)
        return self._tok.decode(ids, skip_special_tokens=True).encode("utf-8")


def load_tokenizer(spec: TokenizerSpec, export_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer an export directory's rwkv.json names. World falls back to the bundled vocab."""
    if spec.kind == "bytes":
        return BytesTokenizer()
    path = Path(export_dir) / spec.file if (spec.file and export_dir is not None) else None
    if spec.kind == "world":
        if path is not None and path.is_file():
            return _world_tokenizer(str(path.resolve()))
        if spec.file is None or Path(spec.file).name == WORLD_VOCAB_NAME:
            return _world_tokenizer(str(BUNDLED_WORLD_VOCAB))
        raise RWKVEdgeError(f"world tokenizer file {spec.file!r} not found in {export_dir}")
    if spec.kind == "neox20b":
        if path is None:
            raise RWKVEdgeError("the neox20b tokenizer needs its JSON file: set tokenizer.file in rwkv.json")
        if not path.is_file():
            raise RWKVEdgeError(f"neox20b tokenizer file {spec.file!r} not found in {export_dir}")
        return NeoXTokenizer(path)
    raise RWKVEdgeError(f"unknown tokenizer kind {spec.kind!r}; expected one of: bytes, world, neox20b")
