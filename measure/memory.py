"""The memory an export's graphs take when an app runs them: measured in a fresh process, so that nothing the
caller has loaded counts, for `rwkv-export bench`, `rwkv-export eval` and the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from rwkv_edge.runtime.errors import RWKVEdgeError

# Reads its request as JSON from argv[1] and prints its answer as JSON on its last line (in KiB).
_CHILD = """
import json, resource, sys
import numpy as np
from rwkv_edge.runtime.session import RWKVModel
req = json.loads(sys.argv[1])
model = RWKVModel.load(
    req["export_dir"],
    provider=req["provider"],
    precision=req["precision"],
    threads=req["threads"],
    use_sequence_graph=req["use_sequence_graph"],
    optimized_cache=req["optimized_cache"],
)
state = model.new_state(1)
if req["prompt_tokens"]:
    model.feed(np.arange(req["prompt_tokens"]) % model.vocab_size, state)
for i in range(req["steps"]):
    model.step([i % model.vocab_size], state)

def kib(path, key):
    try:
        with open(path) as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return None

# Linux: ru_maxrss keeps the high-water mark of the forked parent's memory across exec; VmHWM is this image's
peak = kib("/proc/self/status", "VmHWM:")
if peak is None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_kib": peak, "pss_kib": kib("/proc/self/smaps_rollup", "Pss:")}))
"""


@dataclass(frozen=True)
class ProcessMemory:
    peak_rss_mib: float  # the process's high-water mark of resident memory
    # proportional set size after the run: file pages that sessions or processes share counted once, as the
    # kernel does; None where the system does not say (Linux only)
    pss_mib: float | None


def process_memory(
    export_dir: str | os.PathLike,
    precision: str,
    *,
    threads: int | None = 2,
    provider: str = "cpu",
    prompt_tokens: int = 0,
    steps: int = 16,
    use_sequence_graph: bool = True,
    optimized_cache: bool | str | os.PathLike | None = None,
) -> ProcessMemory:
    """Memory of a fresh Python process that opens the `precision` graphs as RWKVModel.load does (`threads`,
    `provider`, `use_sequence_graph` and `optimized_cache` passed through: a cache entry should exist, building it
    is not what is measured), feeds a prompt of `prompt_tokens` tokens when there are any, then steps `steps`
    times. It includes the interpreter, numpy and onnxruntime themselves. Raises RWKVEdgeError with the child's
    last error line when it fails."""
    cache = optimized_cache if optimized_cache is None or isinstance(optimized_cache, bool) else str(optimized_cache)
    request = {
        "export_dir": str(export_dir),
        "precision": precision,
        "threads": threads,
        "provider": provider,
        "prompt_tokens": prompt_tokens,
        "steps": steps,
        "use_sequence_graph": use_sequence_graph,
        "optimized_cache": cache,
    }
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(request)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RWKVEdgeError(
            f"measuring the memory of the {precision} graph failed: {lines[-1] if lines else proc.returncode}"
        )
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return ProcessMemory(got["peak_rss_kib"] / 1024, None if got["pss_kib"] is None else got["pss_kib"] / 1024)
