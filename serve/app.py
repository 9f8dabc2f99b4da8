"""The OpenAI-compatible HTTP API over a running Engine (FastAPI).

app = create_app(engine, "my-model", ChatTemplate(), Limits(max_prompt_tokens=8192))

Endpoints: GET /v1/models; POST /v1/completions and /v1/chat/completions (streamed as server-sent events in
OpenAI's chunk format, or whole); POST /v1/states (upload a State.save .npz, get its id) and GET /v1/states/{id};
GET /health; GET /metrics (Prometheus). Every error answers with OpenAI's error body (serve/protocol.py).

The engine runs on its own thread; its events reach a request's coroutine through an asyncio queue. A request
whose client goes away (a closed stream, or a dropped connection while waiting for a whole answer) is cancelled
in the engine, so its row leaves the batch before the next step. Who starts and stops the engine is the caller's
business (serve/server.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rwkv_edge.runtime.engine import PromptTooLong, QueueFull
from rwkv_edge.runtime.engine import Request as EngineRequest
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.sampling import SamplingParams
from rwkv_edge.runtime.state import State

from .chat_template import ChatTemplate, message_ends
from .metrics import ServerMetrics
from .protocol import COMPLETION_MAX_TOKENS, APIError, ChatBody, CompletionBody, parse_body

_DONE = "data: [DONE]\n\n"
_STATE_FILE_SLACK = 1 << 20  # bytes an uploaded .npz may hold beyond its arrays (zip and metadata)


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 8192  # longer prompts are answered 413
    retry_after_s: int = 1  # the Retry-After of a 429 (the engine's queue is full)


def create_app(
    engine,
    model_name: str,
    chat_template: ChatTemplate | None = None,
    limits: Limits | None = None,
    precision: str | None = None,
) -> FastAPI:
    """The HTTP API over `engine` (started by the caller). `precision` (shown by /health) defaults to that of
    the engine's model."""
    template = chat_template or ChatTemplate()
    limits = limits or Limits()
    model, tokenizer = engine.model, engine.tokenizer
    precision = precision or model.decode_graph.precision
    metrics = ServerMetrics(engine)
    created = int(time.time())
    stop_token_ids = () if tokenizer.eos_id is None else (int(tokenizer.eos_id),)
    app = FastAPI(title=f"rwkv-edge: {model_name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model_name, app.state.precision = model_name, precision

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        if request.url.path in _GENERATION_PATHS:
            metrics.requests.labels(request.url.path, str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, message, code=code).body(), status_code=e.status_code)

    @app.get("/health")
    async def health() -> dict:
        stats = engine.stats()
        return {
            "status": "ok",
            "model": model_name,
            "precision": precision,
            "running": stats.running,
            "waiting": stats.waiting,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "rwkv-edge"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str) -> dict:
        check_model(model_id)
        return model_card()

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_prompt(ids: list[int], param: str) -> None:
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(
                413,
                f"the prompt is {len(ids)} tokens, more than this server takes "
                f"(--max-prompt-tokens {limits.max_prompt_tokens})",
                param=param,
                code="context_length_exceeded",
            )
        if not ids:
            raise APIError(400, "the prompt is empty once tokenized", param=param, code="invalid_value")
        bad = next((t for t in ids if not 0 <= t < model.vocab_size), None)
        if bad is not None:
            raise APIError(
                400,
                f"prompt token id {bad} is outside the model's vocabulary [0, {model.vocab_size})",
                param=param,
                code="invalid_value",
            )

    def engine_request(
        body, prompt_ids: list[int], max_tokens: int, stop: tuple[str, ...], cache_points: tuple[int, ...] = ()
    ) -> EngineRequest:
        sampling = SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        )
        try:
            return EngineRequest(
                prompt_ids=prompt_ids,
                max_tokens=max_tokens,
                sampling=sampling,
                seed=body.seed,
                stop=tuple(dict.fromkeys(stop)),
                stop_token_ids=stop_token_ids,
                state_id=body.state_id,
                return_state=body.return_state,
                cache_points=cache_points,
            )
        except RWKVEdgeError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        arrived = time.perf_counter()
        body = parse_body(CompletionBody, await request.body())
        check_model(body.model)
        if isinstance(body.prompt, str):
            prompt_ids = await run_in_threadpool(tokenizer.encode, body.prompt)
        else:
            prompt_ids = [int(t) for t in body.prompt]
        check_prompt(prompt_ids, "prompt")
        max_tokens = COMPLETION_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        run = _Run(engine, engine_request(body, prompt_ids, max_tokens, body.stop_strings), metrics, arrived, limits)
        shape = _TextShape(f"cmpl-{uuid.uuid4().hex}", model_name, body.return_state)
        return await respond(request, run, shape, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived = time.perf_counter()
        body = parse_body(ChatBody, await request.body())
        check_model(body.model)
        parts = template.render_messages([(m.role, m.text) for m in body.messages])
        prompt_ids = await run_in_threadpool(tokenizer.encode, "".join(parts) + template.generation)
        check_prompt(prompt_ids, "messages")
        ends = await run_in_threadpool(message_ends, tokenizer.encode, parts, prompt_ids)
        stop = template.stop + body.stop_strings
        run = _Run(engine, engine_request(body, prompt_ids, body.token_budget, stop, ends), metrics, arrived, limits)
        shape = _ChatShape(f"chatcmpl-{uuid.uuid4().hex}", model_name, body.return_state)
        return await respond(request, run, shape, body)

    async def respond(request: Request, run: "_Run", shape: "_Shape", body) -> Response:
        path = request.url.path
        if body.stream:
            metrics.requests.labels(path, "200").inc()
            return StreamingResponse(
                _stream(run, shape, body.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(run.abandon),  # a stream cut short leaves its generator suspended
            )
        completion = await _whole(request, run)
        metrics.requests.labels(path, "200").inc()
        return JSONResponse(shape.whole(completion))

    @app.post("/v1/states")
    async def upload_state(request: Request) -> dict:
        limit = _state_bytes_limit(model)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_big(int(declared), limit)
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > limit:
                raise _too_big(len(data), limit)
        state = await run_in_threadpool(_read_state, bytes(data), model)
        try:
            state_id = engine.put_state(state)
        except RWKVEdgeError as e:
            raise APIError(400, str(e), code="invalid_state") from None
        return {"id": state_id, "object": "state", "bytes": len(data)}

    @app.get("/v1/states/{state_id}")
    async def download_state(state_id: str) -> Response:
        state = engine.get_state(state_id)
        if state is None:
            raise APIError(404, f"no stored state {state_id!r}", param="state_id", code="state_not_found")
        data = await run_in_threadpool(state.to_bytes)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{state_id}.npz"'},
        )

    return app


_GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


class _Run:
    """One request's trip through the engine: submitted at once, its events read from an asyncio queue, and
    cancelled in the engine if it is abandoned before its end."""

    def __init__(self, engine, request: EngineRequest, metrics: ServerMetrics, arrived: float, limits: Limits):
        self.events: asyncio.Queue = asyncio.Queue()
        self.finished = False
        self._metrics, self._arrived, self._first_seen = metrics, arrived, False
        loop = asyncio.get_running_loop()

        def on_event(event) -> None:  # called on the engine's thread
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:
                pass  # the event loop has closed: nobody waits for this event any more

        try:
            self.handle = engine.submit(request, on_event=on_event)
        except QueueFull as e:
            raise APIError(
                429,
                f"the server is busy: {e}",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(limits.retry_after_s)},
            ) from None
        except PromptTooLong as e:
            raise APIError(413, str(e), param="prompt", code="context_length_exceeded") from None
        except RWKVEdgeError as e:
            if request.state_id is not None and f"unknown state_id {request.state_id!r}" in str(e):
                raise APIError(404, str(e), param="state_id", code="state_not_found") from None
            raise APIError(400, str(e), code="invalid_value") from None

    async def next(self):
        event = await self.events.get()
        if not self._first_seen and event.kind in ("token", "done"):
            self._first_seen = True
            self._metrics.time_to_first_token.observe(time.perf_counter() - self._arrived)
        if event.kind != "token":
            self.finished = True
        return event

    def abandon(self) -> None:
        if not self.finished:
            self.finished = True
            self.handle.cancel()


async def _whole(request: Request, run: _Run):
    """The Completion of a request answered whole; cancels it in the engine if the client goes away first."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        while True:
            next_event = asyncio.ensure_future(run.next())
            await asyncio.wait({next_event, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not next_event.done():
                next_event.cancel()
                run.abandon()
                raise APIError(499, "the client closed the connection", code="client_closed_request")
            event = next_event.result()
            if event.kind == "done":
                return event.completion
            if event.kind == "error":
                raise APIError(500, event.message, type="server_error", code="engine_error")
    finally:
        gone.cancel()
        run.abandon()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(run: _Run, shape: "_Shape", include_usage: bool):
    """Server-sent events: OpenAI's chunks, the usage chunk if asked for, then [DONE]."""
    try:
        first = shape.first_chunk()
        if first is not None:
            yield _sse(shape.with_usage_field(first, include_usage))
        while True:
            event = await run.next()
            if event.kind == "token":
                chunk = shape.delta_chunk(event.text)
                if chunk is not None:
                    yield _sse(shape.with_usage_field(chunk, include_usage))
            elif event.kind == "done":
                completion = event.completion
                yield _sse(shape.with_usage_field(shape.final_chunk(completion), include_usage))
                if include_usage:
                    yield _sse({**shape.envelope(), "choices": [], "usage": _usage(completion)})
                break
            else:
                yield _sse(APIError(500, event.message, type="server_error", code="engine_error").body())
                break
        yield _DONE
    finally:
        run.abandon()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(completion) -> dict:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
    }


class _Shape:
    """The JSON of one endpoint's answers: whole, or as stream chunks."""

    object_whole = object_chunk = ""

    def __init__(self, completion_id: str, model_name: str, return_state: bool):
        self.id, self.model_name, self.return_state = completion_id, model_name, return_state
        self.created = int(time.time())

    def envelope(self, chunk: bool = True) -> dict:
        kind = self.object_chunk if chunk else self.object_whole
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}

    def with_state(self, payload: dict, completion) -> dict:
        if self.return_state:
            payload["state_id"] = completion.state_id
        return payload

    @staticmethod
    def with_usage_field(chunk: dict, include_usage: bool) -> dict:
        return {**chunk, "usage": None} if include_usage else chunk  # as OpenAI: null until the usage chunk

    def whole(self, completion) -> dict:
        payload = {**self.envelope(chunk=False), "choices": [self.whole_choice(completion)]}
        return self.with_state({**payload, "usage": _usage(completion)}, completion)

    def final_chunk(self, completion) -> dict:
        return self.with_state({**self.envelope(), "choices": [self.final_choice(completion)]}, completion)

    def first_chunk(self) -> dict | None:
        return None

    def delta_chunk(self, text: str) -> dict | None:
        raise NotImplementedError

    def whole_choice(self, completion) -> dict:
        raise NotImplementedError

    def final_choice(self, completion) -> dict:
        raise NotImplementedError


class _TextShape(_Shape):
    object_whole = object_chunk = "text_completion"

    def delta_chunk(self, text: str) -> dict | None:
        if not text:
            return None
        return {**self.envelope(), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}

    def whole_choice(self, completion) -> dict:
        return {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}

    def final_choice(self, completion) -> dict:
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": completion.finish_reason}


class _ChatShape(_Shape):
    """The reply loses its leading spaces: the template's generation prompt ends at `Assistant:`, and the model
    writes ` reply`."""

    object_whole, object_chunk = "chat.completion", "chat.completion.chunk"

    def __init__(self, *args):
        super().__init__(*args)
        self._started = False

    def first_chunk(self) -> dict:
        delta = {"role": "assistant", "content": ""}
        return {**self.envelope(), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}

    def delta_chunk(self, text: str) -> dict | None:
        if not self._started:
            text = text.lstrip(" ")
        if not text:
            return None
        self._started = True
        delta = {"content": text}
        return {**self.envelope(), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}

    def whole_choice(self, completion) -> dict:
        message = {"role": "assistant", "content": completion.text.lstrip(" ")}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": completion.finish_reason}

    def final_choice(self, completion) -> dict:
        return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": completion.finish_reason}


# --- state files ------------------------------------------------------------------------------------------------
def _state_bytes_limit(model) -> int:
    """The most bytes an upload of one batch-1 state of `model` can need."""
    arrays = sum(int(np.prod(s.concrete_shape(1))) * np.dtype(s.dtype).itemsize for s in model.state_specs)
    return arrays + _STATE_FILE_SLACK


def _too_big(size: int, limit: int) -> APIError:
    return APIError(
        413,
        f"the uploaded state is {size} bytes; a state of this model takes at most {limit}",
        code="state_too_large",
    )


def _read_state(data: bytes, model) -> State:
    """A State from the bytes of a State.save file, or APIError(400) saying why it does not fit this model."""
    try:
        state = State.from_bytes(data, model)
    except RWKVEdgeError as e:
        message = str(e) if str(e).startswith("uploaded state") else f"uploaded state: {e}"
        raise APIError(400, message, code="invalid_state") from None
    if state.batch != 1:
        message = f"uploaded state: expected one row (batch 1), found batch {state.batch}"
        raise APIError(400, message, code="invalid_state")
    return state
