"""Turn a stream of token bytes into text that never ends in half a UTF-8 character.

Tokens split characters freely (a byte-level or World token may hold the first two bytes of a
three-byte CJK character), so decoding each token on its own would print U+FFFD garbage.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Feed bytes with `push`; get back only whole characters. `flush` ends the stream."""

    def __init__(self) -> None:
        # 'replace': bytes that can never become valid UTF-8 (a random model emits them) turn into
        # U+FFFD instead of raising; an incomplete tail is held back until more bytes arrive.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """Text still held back; an unfinished character at the very end becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)
