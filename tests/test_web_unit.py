"""The web package's own node:test files (web/test/*.test.js), run from pytest so that the suite is one command.
With RWKV_EDGE_PYTHON set to this interpreter they also compare against the Python runtime (state files, seeded
sampling, World ids, .ort graphs)."""

from __future__ import annotations

import sys

from web_node import WEB, require_node, run_node_tests


def test_web_package_unit_tests():
    node = require_node()
    files = sorted((WEB / "test").glob("*.test.js"))
    assert files, "web/test holds no *.test.js files"
    run_node_tests(node, files, {"RWKV_EDGE_PYTHON": sys.executable}, timeout=300)
