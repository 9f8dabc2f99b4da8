"""Chat messages -> one prompt: the RWKV World chat format, or a template read from a JSON file.

The default (how RWKV World models were tuned to chat):

    System: You are a helpful assistant.

    User: Hello!

    Assistant: Hi! How can I help?

    User: What is RWKV?

    Assistant:

Each turn is `Role: text` followed by a blank line; the prompt ends with `Assistant:` and the model writes the
reply (the server drops the reply's leading space). Since a blank line ends a turn, blank lines inside a message
become single newlines, and generation stops where the model starts a new user turn (`\\n\\nUser:`) or at the
tokenizer's end-of-text token.

`rwkv-export serve DIR --chat-template FILE` replaces it with a JSON object; every key is optional and a missing
one keeps the default above:

    {
      "system": "System: {content}\\n\\n",        one system (or developer) message; {content} is its text
      "user": "User: {content}\\n\\n",
      "assistant": "Assistant: {content}\\n\\n",
      "generation": "Assistant:",                 appended as it is: the model continues from here
      "stop": ["\\n\\nUser:"],                    stop strings added to each chat request's own
      "collapse_blank_lines": true                blank lines inside a message become single newlines
    }

The three role strings are Python str.format templates with the one field {content} (a literal brace is written
{{ or }}); "generation" is plain text.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from rwkv_edge.runtime.errors import RWKVEdgeError

_ROLES = ("system", "user", "assistant")
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "System: {content}\n\n"
    user: str = "User: {content}\n\n"
    assistant: str = "Assistant: {content}\n\n"
    generation: str = "Assistant:"
    stop: tuple[str, ...] = ("\n\nUser:",)
    collapse_blank_lines: bool = True

    def render(self, messages: list[tuple[str, str]]) -> str:
        """(role, text) pairs, role one of system, developer (OpenAI's newer name of system), user, assistant ->
        the prompt, ending with `generation`."""
        return "".join(self.render_messages(messages)) + self.generation

    def render_messages(self, messages: list[tuple[str, str]]) -> list[str]:
        """Each message's part of the prompt, in order (the prompt is their concatenation + `generation`)."""
        parts = []
        for role, text in messages:
            text = text.strip()
            if self.collapse_blank_lines:
                text = _BLANK_LINES.sub("\n", text)
            parts.append(getattr(self, "system" if role == "developer" else role).format(content=text))
        return parts

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ChatTemplate":
        """Read a JSON template (the module's docstring); one-line errors name the file and the bad key."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise RWKVEdgeError(f"chat template {path}: cannot read it ({e.strerror})") from None
        except ValueError as e:
            raise RWKVEdgeError(f"chat template {path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise RWKVEdgeError(f"chat template {path}: expected a JSON object, found {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RWKVEdgeError(f"chat template {path}: unknown key {unknown[0]!r} (expected: {', '.join(known)})")
        for key in (*_ROLES, "generation"):
            if key in data and not isinstance(data[key], str):
                raise RWKVEdgeError(f"chat template {path}: {key!r} must be a string, found {data[key]!r}")
        for key in _ROLES:
            if key in data:
                _check_format(path, key, data[key])
        if "stop" in data:
            stop = data["stop"]
            if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
                raise RWKVEdgeError(f"chat template {path}: 'stop' must be a list of non-empty strings, found {stop!r}")
            data["stop"] = tuple(stop)
        if "collapse_blank_lines" in data and not isinstance(data["collapse_blank_lines"], bool):
            raise RWKVEdgeError(
                f"chat template {path}: 'collapse_blank_lines' must be true or false, "
                f"found {data['collapse_blank_lines']!r}"
            )
        return cls(**data)


def _check_format(path: Path, key: str, template: str) -> None:
    try:
        template.format(content="")
    except (KeyError, IndexError, ValueError) as e:
        raise RWKVEdgeError(
            f"chat template {path}: {key!r} must be a str.format template whose one field is {{content}}, "
            f"found {template!r} ({type(e).__name__}: {e})"
        ) from None
    if "{content}" not in template:
        raise RWKVEdgeError(f"chat template {path}: {key!r} must hold {{content}}, found {template!r}")


def message_ends(encode: Callable[[str], list[int]], parts: list[str], prompt_ids: list[int]) -> tuple[int, ...]:
    """Token positions in `prompt_ids` where a message of `parts` ends: the engine caches the prompt's state there,
    so that the next turn of the chat, or another question after the same system prompt, starts from it. A message
    end that falls inside a token of the whole prompt (the tokenizer merged across it) is left out."""
    ends, text = [], ""
    for part in parts:
        text += part
        ids = encode(text)
        if 0 < len(ids) < len(prompt_ids) and prompt_ids[: len(ids)] == ids:
            ends.append(len(ids))
    return tuple(ends)
