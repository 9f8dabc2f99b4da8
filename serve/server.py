"""rwkv-export serve: open an export's model and engine, and serve the OpenAI-compatible API with uvicorn.

SIGTERM, or a first Ctrl-C, drains: the listening socket closes, requests already running or queued finish
(streams included), then the engine stops and the process exits 0. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from rwkv_edge.runtime.engine import BatchedRowsDiffer, Engine, EngineConfig
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import Manifest, load_manifest
from rwkv_edge.runtime.session import RWKVModel

from .app import Limits, create_app
from .chat_template import ChatTemplate
from .process_memory import fix_mmap_threshold

ENGINE_STOP_TIMEOUT_S = 30.0  # after the HTTP server has drained, the engine has nothing left; this only bounds it


@dataclass(frozen=True)
class ServeOptions:
    """Everything `rwkv-export serve` takes (cli/serve.py), in one place."""

    export_dir: Path
    precision: str | None = None  # None: default_precision
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the line announcing the server names it)
    max_batch: int = 16
    state_cache_mb: float = 256.0
    max_prompt_tokens: int = 8192
    max_waiting: int = 64
    chat_template: Path | None = None  # a JSON template (serve/chat_template.py); None: RWKV World's
    threads: int | None = None
    model_name: str | None = None  # None: the export directory's name
    provider: str = "cpu"
    spinning: bool = True

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.export_dir).resolve().name


def serving_precisions(manifest: Manifest, max_batch: int = 16) -> list[str]:
    """The export's step-graph precisions in the order that serves a batch fastest (measured, docs/serving.md):
    int8-rowwise, whose integer GEMM gets cheaper per row as the batch grows, then weight-only int8, then fp32; for
    one stream at a time (max_batch 1) weight-only int8 first, the fastest single stream."""
    steps = {g.precision for g in manifest.graphs if g.kind == "step"}
    order = ("int8-rowwise", "int8", "fp32") if max_batch > 1 else ("int8", "int8-rowwise", "fp32")
    return [p for p in order if p in steps] or ["fp32"]


def default_precision(manifest: Manifest, max_batch: int = 16) -> str:
    return serving_precisions(manifest, max_batch)[0]


def open_engine(options: ServeOptions, announce=print) -> Engine:
    """The model of `options.export_dir` behind a (not yet started) engine configured by the options. Without a
    precision: the first of serving_precisions that the engine accepts for the batch (weight-only int8 is refused
    for batches on CPUs where its batched rows differ from a row alone; the next one serves, and `announce` says so)."""
    config = EngineConfig(
        max_batch=options.max_batch,
        max_waiting=options.max_waiting,
        state_cache_mb=options.state_cache_mb,
        max_prompt_tokens=options.max_prompt_tokens,
    )
    precisions = (
        [options.precision]
        if options.precision
        else serving_precisions(load_manifest(options.export_dir), options.max_batch)
    )
    for precision, then in zip(precisions, precisions[1:]):
        try:
            return _engine_of(options, precision, config)
        except BatchedRowsDiffer as e:
            announce(f"not serving {precision}: {e}; serving {then}")
    return _engine_of(options, precisions[-1], config)


def _engine_of(options: ServeOptions, precision: str, config: EngineConfig) -> Engine:
    model = RWKVModel.load(
        options.export_dir,
        provider=options.provider,
        precision=precision,
        threads=options.threads,
        spinning=options.spinning,
    )
    return Engine(model, model.load_tokenizer(), config)


def open_app(options: ServeOptions) -> tuple[FastAPI, Engine]:
    """The API over a started engine; the caller stops the engine (engine.shutdown) when it is done serving.
    This process is then a server: its large blocks are mapped on their own from here on (serve/process_memory.py)."""
    template = ChatTemplate.from_file(options.chat_template) if options.chat_template else ChatTemplate()
    fix_mmap_threshold()
    engine = open_engine(options)
    engine.start()
    app = create_app(engine, options.served_name, template, Limits(max_prompt_tokens=options.max_prompt_tokens))
    return app, engine


def run(options: ServeOptions, announce=print) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain (the module's docstring) and return."""
    if options.chat_template:
        ChatTemplate.from_file(options.chat_template)  # a bad template fails before the model loads
    listener = _listen(options.host, options.port)
    try:
        app, engine = open_app(options)
    except BaseException:
        listener.close()
        raise
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="off", timeout_graceful_shutdown=None))
    # uvicorn drains on SIGTERM / SIGINT, puts back the handlers it found and sends itself the signal again: the
    # handler found is this one, so a drained server returns here instead of dying of its own signal.
    previous = {sig: signal.signal(sig, _drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    announce(
        f"serving {options.served_name} ({app.state.precision}) on http://{shown_host}:{port}; "
        "SIGTERM or Ctrl-C drains and stops"
    )
    try:
        server.run(sockets=[listener])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.shutdown(drain=True, timeout=ENGINE_STOP_TIMEOUT_S)
        listener.close()


def _drained(signum: int, frame) -> None:
    """Where uvicorn's re-sent signal lands once it has drained: nothing left to do."""


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a taken port fails at once in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise RWKVEdgeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
