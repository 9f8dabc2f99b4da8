"""The request bodies of the OpenAI-compatible endpoints, validated with pydantic, and OpenAI's error body.

A request that does not fit raises APIError, which the app answers with OpenAI's error object
`{"error": {"message", "type", "param", "code"}}` and the HTTP status it names. Fields other OpenAI clients send
and this server does not use (user, metadata, store, ...) are ignored; features it cannot honour (logprobs,
tools, logit_bias, ...) are refused with a 400 naming the field instead of being silently dropped.
A field sent as null means its default, as in OpenAI's API.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 256  # OpenAI's chat default is "until the context is full"; an RNN has no such end


class APIError(Exception):
    """An error answered with OpenAI's error body and `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# Features of OpenAI's API this server does not implement, and the values that mean "not used".
_UNSUPPORTED = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
}


def _in_range(name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], found {value!r}")
    return value


class StreamOptions(BaseModel):
    include_usage: bool = False


class _GenerationBody(BaseModel):
    """What both endpoints take: sampling, stopping, streaming, and this server's state extensions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # None: the served model
    max_tokens: int | None = None  # None: the endpoint's default
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extensions: start from a stored state; store the final state and return its id
    state_id: str | None = None
    return_state: bool = False

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"the request body must be a JSON object, found {type(data).__name__}")
        for name, unused in _UNSUPPORTED.items():
            if data.get(name) is not None and data[name] not in unused:
                raise _Unsupported(name)
        return {k: v for k, v in data.items() if v is not None}  # null means the default

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        return _in_range("temperature", v, 0, 2)

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        return _in_range("top_p", v, 0, 1)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, v: float, info) -> float:
        return _in_range(info.field_name, v, -2, 2)

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n must be 1 (this server returns one choice per request), found {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"seed must be a whole number >= 0, found {v}")
        return v

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_tokens must be >= 1, found {v}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str]) -> str | list[str]:
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError(f"stop must be up to 4 non-empty strings, found {v!r}")
        return v

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionBody(_GenerationBody):
    """POST /v1/completions. `prompt`: text, or token ids, or a list holding one of either."""

    prompt: str | list[int] | list[str] | list[list[int]]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError(f"prompt must be one prompt (this server answers one per request), found {len(v)}")
            v = v[0]
        if len(v) == 0:
            raise ValueError("prompt must not be empty")
        return v


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(_GenerationBody):
    """POST /v1/chat/completions. `max_completion_tokens` is OpenAI's newer name of max_tokens."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None

    @field_validator("messages")
    @classmethod
    def _some_messages(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("messages must hold at least one message")
        return v

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_completion_tokens must be >= 1, found {v}")
        return v

    @property
    def token_budget(self) -> int:
        given = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return CHAT_MAX_TOKENS if given is None else given


class _Unsupported(ValueError):
    def __init__(self, name: str):
        super().__init__(f"{name} is not supported by this server")
        self.name = name


def parse_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    """The request body as `model`, or APIError(400) naming the first problem and its field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # the deepest error names the problem best: a union's wrong branches fail at its top
        errors = e.errors()
        raise _api_error(max(errors, key=lambda error: len(error["loc"]))) from None


def _api_error(error: dict) -> APIError:
    param = _param_name(error["loc"])
    if error["type"] == "missing":
        return APIError(400, f"missing required parameter: {param!r}", param=param, code="missing_required_parameter")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and "ctx" in error and isinstance(error["ctx"].get("error"), _Unsupported):
        return APIError(400, message, param=error["ctx"]["error"].name, code="unsupported_parameter")
    if error["type"] != "value_error":
        message = f"invalid value for {param!r}: {message[:1].lower()}{message[1:]} (found {error.get('input')!r})"
    return APIError(400, message, param=param or None, code="invalid_value")


def _param_name(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'; the names pydantic gives a union's branches are left out."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part in _FIELD_NAMES:
            name += f".{part}" if name else part
    return name


_FIELD_NAMES = {
    name for body in (CompletionBody, ChatBody, ChatMessage, TextPart, StreamOptions) for name in body.model_fields
}
