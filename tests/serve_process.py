"""A real `rwkv-export serve` process for tests: on a free 127.0.0.1 port, ready once /health answers, always
stopped (SIGTERM, then SIGKILL of its process group if it does not exit in time).

with ServerProcess(["serve", str(export_dir), "--threads", "1"]) as server:
    httpx.get(server.url("/health"))
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 90.0  # importing the runtime and the web stack and opening the model, on a busy 2-core machine
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_export(tmp_path_factory) -> Path:
    """The embedded default model (byte-level, writes English) exported with its prefill graph, as
    `rwkv-export export` does; made once per test session and shared by the server tests."""
    out = tmp_path_factory.getbasetemp() / "serve-tiny" / "export"
    if not (out / "rwkv.json").is_file():
        from rwkv_edge.exporter.default_model import default_checkpoint
        from rwkv_edge.exporter.pipeline import export_checkpoint

        export_checkpoint(default_checkpoint(), out, prefill="last")
    return out


class ServerProcess:
    """`python -m rwkv_edge.cli <args> --host 127.0.0.1 --port <free port>` in its own process group, output to a
    log file (read it with `log()`)."""

    def __init__(self, args: list[str], *, startup_timeout: float = STARTUP_TIMEOUT_S, env: dict | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "rwkv_edge.cli", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="rwkv-serve-", suffix=".log", delete=False)
        self._final_log: str | None = None

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> "ServerProcess":
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} while starting:\n{self.log()}")
            try:
                if httpx.get(self.url("/health"), timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {self.startup_timeout} s:\n{self.log()}")

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; SIGKILL the process group if it has not exited by then. Returns the exit code."""
        if self.process is None or self._final_log is not None:
            return None if self.process is None else self.process.returncode
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return self.process.wait(timeout)
        finally:
            self._final_log = self.log()
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)

    def log(self) -> str:
        """What the server printed so far (all of it once stopped)."""
        if self._final_log is not None:
            return self._final_log
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
