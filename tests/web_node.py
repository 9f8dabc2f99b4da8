"""Running the web package's node:test files from pytest: where they live, when they are skipped, and how their
failures are shown.

The JS tests need `web/node_modules` (`cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci`) and, for the browser
tests, `/usr/bin/chromium`. Without them a test is skipped with the reason, unless RWKV_EDGE_REQUIRE_WEB=1 (CI sets
it): then a missing piece fails the test, so a CI machine that lost its install cannot pass by skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"  # test artifacts (screenshots), gitignored
NODE_PACKAGES = ("onnxruntime-web", "onnxruntime-node", "fflate")  # what every JS test imports


def require(condition: bool, reason: str) -> None:
    """Skip with `reason` when `condition` is false, or fail when RWKV_EDGE_REQUIRE_WEB=1."""
    if condition:
        return
    if os.environ.get("RWKV_EDGE_REQUIRE_WEB") == "1":
        pytest.fail(f"RWKV_EDGE_REQUIRE_WEB=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_node(*packages: str) -> str:
    """The node executable, once node and the web package's dependencies (plus `packages`) are installed."""
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    missing = [p for p in (*NODE_PACKAGES, *packages) if not (WEB / "node_modules" / p / "package.json").is_file()]
    require(
        not missing,
        f"web/node_modules lacks {', '.join(missing)} (cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci)",
    )
    return node


def require_chromium() -> Path:
    require(
        CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is not installed (apt-get install chromium)"
    )
    return CHROMIUM


def run_node_tests(node: str, files: list[Path], env: dict[str, str], timeout: float) -> None:
    """`node --test FILES` in web/ with `env` added; fails with node's whole output unless it exits 0."""
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"test files not found: {missing}"
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", *map(str, files)],
        cwd=WEB,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"node --test exited {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
