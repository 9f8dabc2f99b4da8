"""`rwkv-export serve --ray`: the OpenAI-compatible server as a Ray Serve deployment on a local one-node cluster.

Each replica is a Ray actor process that builds its own model, engine and prompt-state cache from the export
directory and serves the same FastAPI app through `serve.ingress` (streaming included); Ray's HTTP proxy spreads
requests over the replicas and starts a new replica when one dies. Every response names the process that served it
in the `x-rwkv-replica` header.

The cluster is started by the command itself (a temporary folder, no dashboard, a small object store, quiet logs)
and shut down when it ends; the process blocks until SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rwkv_edge.runtime.errors import RWKVEdgeError

REPLICA_HEADER = "x-rwkv-replica"  # the pid of the replica process that served a response
OBJECT_STORE_BYTES = 100 * 2**20  # responses travel as small chunks; Ray's default would reserve 30% of the RAM
APP_NAME = "rwkv"


@dataclass(frozen=True)
class RayServeOptions:
    replicas: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    cpus_per_replica: float | None = None  # Ray's CPU reservation; None: the machine's cores shared out, 1 at most
    max_ongoing_requests: int = 80  # per replica: what its engine accepts (running + waiting); more wait in Ray
    health_check_period_s: float = 2.0  # how soon a dead replica is noticed and replaced
    graceful_shutdown_timeout_s: float = 10.0  # on shutdown, how long running requests may take to finish


def machine_cores() -> int:
    """The cores this process may run on (the affinity mask, which a container's CPU set narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpus_per_replica(replicas: int, cores: int) -> float:
    """Each replica's share of the cores (two decimals, rounded down so that every replica fits), at most one."""
    return min(1.0, int(100 * cores / replicas) / 100)


def check_options(options: RayServeOptions, cores: int) -> float:
    """The CPUs each replica reserves; a request Ray could never place is refused in one line."""
    if options.replicas < 1:
        raise RWKVEdgeError(f"--replicas must be at least 1, found {options.replicas}")
    cpus = (
        options.cpus_per_replica if options.cpus_per_replica is not None else cpus_per_replica(options.replicas, cores)
    )
    if cpus <= 0 or cpus * options.replicas > cores + 1e-9:
        raise RWKVEdgeError(
            f"{options.replicas} replicas of {cpus} CPUs each do not fit on this machine's {cores} cores; "
            "expected fewer replicas or a smaller share each"
        )
    return cpus


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


def replica_deployment(build_app: Callable[[], Any], options: RayServeOptions, cpus: float):
    """The Ray Serve application: `options.replicas` replicas, each calling `build_app()` in its own process
    (so each loads its own model and engine) and serving the FastAPI app it returns."""
    from ray import serve

    def replica_app() -> Any:  # serve.ingress calls a plain function (not a partial) in the replica
        app = build_app()
        app.add_middleware(ReplicaHeader)
        return app

    deployment = serve.deployment(
        serve.ingress(replica_app)(),
        name=APP_NAME,
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=options.max_ongoing_requests,
        health_check_period_s=options.health_check_period_s,
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    return deployment.bind()


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: leave whatever runs and shut the cluster down."""


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second signal ends the process at once
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise Stopped(signal.Signals(signum).name)


def _print_now(line: str) -> None:
    print(line, flush=True)


def serve_on_ray(
    build_app: Callable[[], Any], options: RayServeOptions, announce: Callable[[str], None] = _print_now
) -> None:
    """Start a local Ray cluster, serve `build_app()`'s app from `options.replicas` replicas on
    http://host:port, and block until SIGINT or SIGTERM; then shut Ray down and remove its temporary folder.

    `build_app` runs in every replica process: it must be picklable (a module-level function, or a partial of one
    over plain settings) and return a FastAPI app."""
    cores = machine_cores()
    cpus = check_options(options, cores)
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="rwkv-ray-")  # short: Ray's socket paths live under it
    try:
        ray.init(
            num_cpus=cores,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            _temp_dir=temp_dir,
            logging_level=logging.WARNING,
        )
        # Ray's core installs its own SIGTERM handler in ray.init: ours comes after, so a signal at any point
        # from here on (startup included) reaches the cleanup below.
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        serve.start(
            http_options={"host": options.host, "port": options.port},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        serve.run(replica_deployment(build_app, options, cpus), name=APP_NAME, route_prefix="/")
        announce(
            f"serving on http://{options.host}:{options.port} from {options.replicas} Ray Serve replicas "
            f"({cpus:g} CPU each); Ctrl-C stops"
        )
        while True:
            signal.pause()
    except Stopped:
        pass
    finally:
        _shutdown(temp_dir)


def _shutdown(temp_dir: str) -> None:
    """Stop the replicas (running requests get graceful_shutdown_timeout_s), then the cluster; remove its folder."""
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
