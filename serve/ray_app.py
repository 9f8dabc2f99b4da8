"""`rwkv-export serve --ray`: the OpenAI-compatible server as a Ray Serve deployment on a local one-node cluster.

Each replica is a Ray actor process that builds its own model, engine and prompt-state cache from the export
directory (serve/server.py's open_app) and serves that FastAPI app through `serve.ingress`, streaming included.
Ray's HTTP proxy spreads the requests over the replicas and replaces a replica whose process dies; a stream the
dead replica was sending ends with a broken connection. Every response names the process that served it in the
`x-rwkv-replica` header.

The command starts the cluster itself (a temporary folder, no dashboard, a small object store), blocks until SIGINT
or SIGTERM, then stops the replicas (running requests get REPLICA_STOP_TIMEOUT_S) and the cluster, and removes the
folder. The console gets the server's own lines (a replica lost or replaced included); Ray's logs and the replicas'
stay in the folder while it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import LoadOptions, graph_path, plan_sessions, resolve_provider

from .chat_template import ChatTemplate
from .server import ENGINE_STOP_TIMEOUT_S, ServeOptions, default_precision, open_app

REPLICA_HEADER = "x-rwkv-replica"  # the pid of the replica process that served a response
APP_NAME = "rwkv"
OBJECT_STORE_BYTES = 100 * 2**20  # responses travel as small chunks; Ray's default reserves 30% of the RAM
HEALTH_CHECK_PERIOD_S = 2.0  # how often the controller checks each replica (a dead one is replaced after)
REPLICA_STOP_TIMEOUT_S = 20.0  # on shutdown, how long a replica's running requests may take to finish
CONSTRUCTOR_RETRIES = 3  # a replica that cannot open the export fails the same way every time
EXTRA_ONGOING = 8  # per replica, beyond its engine's batch and queue: /health, /metrics, requests being refused


def machine_cores() -> int:
    """The cores this process may run on (the affinity mask, which a container's CPU set narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpus_per_replica(replicas: int, cores: int) -> float:
    """Each replica's CPU reservation: the cores shared out (two decimals, rounded down so that all fit), at most 1.
    Ray places a replica only where its reservation fits, so 2 replicas on 1 core each reserve 0.5."""
    return min(1.0, int(100 * cores / replicas) / 100)


def threads_per_replica(replicas: int, cores: int) -> int:
    """ONNX Runtime threads per replica when --threads is not given: the cores shared out, at least one."""
    return max(1, cores // replicas)


class ReplicaHeader:
    """ASGI middleware: every HTTP response carries the serving process's pid (REPLICA_HEADER)."""

    def __init__(self, app: Any):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), str(os.getpid()).encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_pid)


def replica_app(options: ServeOptions) -> FastAPI:
    """One replica's app, built in the replica's process: its own model, engine and cache; the engine drains and
    stops when Ray stops the replica (the app's shutdown)."""
    app, engine = open_app(options)
    app.router.on_shutdown.append(functools.partial(engine.shutdown, drain=True, timeout=ENGINE_STOP_TIMEOUT_S))
    app.add_middleware(ReplicaHeader)
    return app


def application(options: ServeOptions, replicas: int, cpus: float):
    """The Ray Serve application: `replicas` replicas of replica_app(options), each reserving `cpus` CPUs."""
    from ray import serve

    def build() -> FastAPI:  # serve.ingress calls a plain function (not a partial) in each replica
        return replica_app(options)

    deployment = serve.deployment(
        serve.ingress(build)(),
        name=APP_NAME,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=options.max_batch + options.max_waiting + EXTRA_ONGOING,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        graceful_shutdown_timeout_s=REPLICA_STOP_TIMEOUT_S,
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    return deployment.bind()


def check_before_start(options: ServeOptions, replicas: int) -> None:
    """What can be checked without Ray, so that a bad directory, precision, provider or template fails in one
    line before a cluster starts."""
    if replicas < 1:
        raise RWKVEdgeError(f"--replicas must be at least 1, found {replicas}")
    manifest = load_manifest(options.export_dir)
    precision = options.precision or default_precision(manifest, options.max_batch)
    plan = plan_sessions(manifest, LoadOptions(precision=precision, provider=resolve_provider(options.provider)))
    for graph in plan.sessions:
        graph_path(Path(options.export_dir), graph)
    if options.chat_template:
        ChatTemplate.from_file(options.chat_template)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: leave whatever runs (startup included) and shut the cluster down."""


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second signal ends the process at once
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise Stopped(signal.Signals(signum).name)


def _port_to_use(host: str, port: int) -> int:
    """`port` if it is free on `host` (0: a free one), checked before the cluster starts, since Ray's proxy binds
    it only once everything else is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family) as s:
            return s.getsockname()[1]
    except OSError as e:
        raise RWKVEdgeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_replicas(options: ServeOptions, replicas: int, announce: Callable[[str], None] = print) -> None:
    """Serve `options.export_dir` from `replicas` Ray Serve replicas on http://host:port until SIGINT or SIGTERM;
    then shut Ray down and remove its temporary folder."""
    check_before_start(options, replicas)
    cores = machine_cores()
    cpus = cpus_per_replica(replicas, cores)
    if options.threads is None:
        options = dataclasses.replace(options, threads=threads_per_replica(replicas, cores))
    port = _port_to_use(options.host, options.port)
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="rwkv-ray-")  # short: Ray's socket paths live under it
    serving = False
    try:
        ray.init(
            num_cpus=cores,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            logging_level=logging.ERROR,
            log_to_driver=False,  # the replicas' and Ray's own logs stay in temp_dir: the console gets one line each
            _temp_dir=temp_dir,
        )
        # ray.init installs Ray's own SIGTERM handler: these replace it, so that a signal from here on (while the
        # replicas start, too) reaches the cleanup below.
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        serve.start(
            http_options={"host": options.host, "port": port},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        serving = True
        try:
            serve.run(application(options, replicas, cpus), name=APP_NAME, route_prefix="/")
        except RuntimeError:  # Ray's "deploying failed"; the deployment's status holds the replica's traceback
            raise RWKVEdgeError(f"the replicas failed to start: {_replica_error()}") from None
        shown_host = f"[{options.host}]" if ":" in options.host else options.host
        threads = f"{options.threads} ONNX Runtime thread{'s' if options.threads != 1 else ''}"
        announce(
            f"serving {options.served_name} on http://{shown_host}:{port} from {replicas} Ray Serve replicas "
            f"({cpus:g} CPU, {threads} each; Ray's logs in {temp_dir}); SIGTERM or Ctrl-C stops"
        )
        _watch_replicas(replicas, announce)
    except Stopped:
        pass
    finally:
        _shutdown(temp_dir, serving)


def _watch_replicas(replicas: int, announce: Callable[[str], None]) -> None:
    """Until a signal: say so when the number of running replicas changes (a replica died, Ray replaced it)."""
    from ray import serve

    running = replicas
    while True:
        time.sleep(HEALTH_CHECK_PERIOD_S)
        states = serve.status().applications[APP_NAME].deployments[APP_NAME].replica_states
        now = states.get("RUNNING", 0)
        if now != running:
            starting = "; Ray is starting the others" if now < replicas else ""
            announce(f"{now} of {replicas} replicas running{starting}")
            running = now


def _replica_error() -> str:
    """Why the deployment failed, in one line: the replica's RWKVEdgeError where it raised one, else the last line
    of its traceback."""
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments[APP_NAME]
    message = deployment.message or ""
    found = re.findall(r"RWKVEdgeError: (.+)", message)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def _shutdown(temp_dir: str, serving: bool) -> None:
    """Stop the replicas (their running requests finish first), then the cluster; remove its folder."""
    import ray
    from ray import serve

    try:
        if serving and APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)  # drains each replica; Ray's shutdown then ends Serve's own actors
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
