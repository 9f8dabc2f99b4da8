"""rwkv-export serve: the OpenAI-compatible HTTP server (needs the serve extra: fastapi, uvicorn, prometheus-client)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rwkv_edge.runtime.errors import RWKVEdgeError

from .console import note
from .options import ExportDir, Spinning

# The packages of the serve extra (and what fastapi brings): a runtime-only install lacks them
SERVE_MODULES = {"fastapi", "starlette", "pydantic", "uvicorn", "prometheus_client"}
SERVE_EXTRA_HINT = "rwkv-export serve needs the serve extra: pip install 'rwkv-edge[serve]'"


def serve(
    export_dir: ExportDir,
    precision: Annotated[
        Optional[str],
        typer.Option(
            help="Which graphs of the export: fp32, int8, ... Default: int8-rowwise if it has it (the fastest in "
            "a batch), else int8, else fp32; int8 first with --max-batch 1."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests decoded together in one batch.")] = 16,
    state_cache_mb: Annotated[
        float, typer.Option(min=0.0, help="Memory for cached prompt states and stored states (0: no prompt cache).")
    ] = 256.0,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Longer prompts are refused (HTTP 413).")] = 8192,
    max_waiting: Annotated[
        int, typer.Option(min=0, help="Requests queued beyond the batch; more are refused (HTTP 429).")
    ] = 64,
    chat_template: Annotated[
        Optional[Path],
        typer.Option(help="A JSON chat template (role prefixes, stop strings) instead of RWKV World's."),
    ] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime threads (default: its choice).")] = None,
    model_name: Annotated[
        Optional[str], typer.Option(help="The model's name in the API. Default: the export directory's name.")
    ] = None,
    provider: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    spinning: Spinning = True,
    ray: Annotated[
        bool, typer.Option("--ray", help="Serve from Ray Serve replicas on a local Ray cluster (the ray extra).")
    ] = False,
    replicas: Annotated[
        Optional[int], typer.Option(min=1, help="With --ray: replicas, each with its own model (default 2).")
    ] = None,
):
    """Serve an export over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, streaming),
    batching concurrent requests. SIGTERM or Ctrl-C lets running requests finish, then stops."""
    server = _server_module()
    options = server.ServeOptions(
        export_dir=export_dir,
        precision=precision,
        host=host,
        port=port,
        max_batch=max_batch,
        state_cache_mb=state_cache_mb,
        max_prompt_tokens=max_prompt_tokens,
        max_waiting=max_waiting,
        chat_template=chat_template,
        threads=threads,
        model_name=model_name,
        provider=provider,
        spinning=spinning,
    )
    if ray:
        _ray_module().serve_replicas(options, replicas or 2, announce=note)
    elif replicas is not None:
        raise RWKVEdgeError("--replicas needs --ray (one process serves without it)")
    else:
        server.run(options, announce=note)


def _ray_module():
    """rwkv_edge.serve.ray_app, imported only with --ray: without Ray, one line says what to install."""
    try:
        from rwkv_edge.serve import ray_app
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "ray":
            raise RWKVEdgeError("rwkv-export serve --ray needs Ray Serve: pip install 'rwkv-edge[ray]'") from None
        raise
    return ray_app


def _server_module():
    """rwkv_edge.serve.server, imported only now: without the serve extra, one line says what to install."""
    try:
        from rwkv_edge.serve import server
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in SERVE_MODULES:
            raise RWKVEdgeError(SERVE_EXTRA_HINT) from None
        raise
    return server
