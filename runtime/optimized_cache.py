"""Saved optimized graphs, one per machine. ONNX Runtime optimizes a graph (fusions, constant folding, layout
choices for this CPU) every time a session opens it. With `RWKVModel.load(..., optimized_cache=True)` (or a
folder) the first open also saves the optimized graph (ORT's optimized_model_filepath, weights as external data
beside it) and later opens load that copy with graph optimizations off.

Most of a load is reading and prepacking the weights, which the saved graph does not skip, so the gain is in
session creation only; the disk cost is one more copy of the weights per graph: that is why it is opt-in
(measured: docs/performance.md). Memory, decode speed and the numbers are unchanged (bit for bit, tested).

An entry holds for one machine and one graph: its key hashes what the optimized graph depends on (ORT's version and
build, the providers and their options, the optimization level, the CPU model and flags, the graph file's bytes,
and the size and mtime of the export's data files), so a changed export or another machine sharing the folder gets
its own entry. An entry is a folder `<cache>/<graph stem>-<key>/`, written in a staging folder and renamed into
place: a reader sees a whole entry or none, and an existing entry is only replaced when it fails to load. A cache
that cannot be written degrades to opening the export's graph as usual, with a RuntimeWarning.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from rwkv_edge.common.files import publish_folder, staging_folder

from .errors import RWKVEdgeError

CACHE_FORMAT = 1  # bump when what an entry holds changes
_EXTERNAL_MIN_BYTES = 1024  # initializers above this go to the entry's data file (protobuf caps a file at 2 GiB)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/rwkv-edge/optimized, else ~/.cache/rwkv-edge/optimized."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rwkv-edge" / "optimized"


def resolve_cache_dir(optimized_cache) -> Path | None:
    """load()'s optimized_cache argument: None/False -> no cache, True -> default_cache_dir(), a path -> that folder."""
    if optimized_cache is None or optimized_cache is False:
        return None
    if optimized_cache is True:
        return default_cache_dir()
    return Path(optimized_cache).expanduser()


def machine_identity() -> dict:
    """What a CPU-optimized graph may depend on: the architecture, the CPU model and its feature flags."""
    ident = {"machine": platform.machine(), "system": platform.system(), "processor": platform.processor()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in ident:
                    ident[key] = value.strip()
                if not line.strip():
                    break  # the first processor is enough: the cores of one machine report the same
    except OSError:
        pass
    return ident


def cache_key(graph_path: Path, options: ort.SessionOptions, providers: list) -> tuple[str, dict]:
    """(key, what it hashes) for an entry of `graph_path` opened with `options` and `providers`."""
    data_files = sorted(p for p in graph_path.parent.glob("*.data") if p.is_file())
    parts = {
        "format": CACHE_FORMAT,
        "onnxruntime": ort.__version__,
        "build": ort.get_build_info() if hasattr(ort, "get_build_info") else "",
        "providers": repr(providers),
        "optimization_level": int(options.graph_optimization_level),
        "cpu": machine_identity(),
        "graph": hashlib.sha256(graph_path.read_bytes()).hexdigest(),
        "data": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in data_files],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24], parts


def open_cached(
    graph_path: Path,
    options: ort.SessionOptions,
    providers: list,
    directory: Path,
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession],
) -> ort.InferenceSession:
    """A session of `graph_path`: from its cached optimized copy when `directory` has one, else opened as usual
    while ORT saves the copy. `create(path, options)` opens a session (raising RWKVEdgeError)."""
    if options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
        return create(graph_path, options)  # nothing is optimized, so nothing to save
    key, parts = cache_key(graph_path, options, providers)
    entry = directory / f"{graph_path.stem}-{key}"
    if (entry / graph_path.name).is_file():
        try:
            return _open_saved(create, options, entry / graph_path.name)
        except RWKVEdgeError as e:
            warnings.warn(
                f"optimized cache entry {entry} does not load ({e}); rebuilding it", RuntimeWarning, stacklevel=3
            )
    return _open_and_save(graph_path, options, entry, parts, create)


def _open_saved(
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession], options: ort.SessionOptions, path: Path
) -> ort.InferenceSession:
    """A session of a saved optimized graph: opened with optimizations off (they are done), the options then
    restored (they may open another graph after this one)."""
    level = options.graph_optimization_level
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return create(path, options)
    finally:
        options.graph_optimization_level = level


def _open_and_save(
    graph_path: Path,
    options: ort.SessionOptions,
    entry: Path,
    parts: dict,
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession],
) -> ort.InferenceSession:
    """Open `graph_path` while ORT saves its optimized copy in a staging folder, published as `entry`. A cache
    folder that cannot be written, or a copy that cannot be saved, costs only the entry (with a warning)."""
    with ExitStack() as stack:
        try:
            staging = stack.enter_context(staging_folder(entry.parent))
        except OSError as e:
            warnings.warn(
                f"optimized cache {entry.parent} is not writable ({e.strerror or e}); "
                f"opening {graph_path.name} without it",
                RuntimeWarning,
                stacklevel=4,
            )
            return create(graph_path, options)
        options.optimized_model_filepath = str(staging / graph_path.name)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", graph_path.name + ".data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES)
        )
        try:
            session = create(graph_path, options)
        except RWKVEdgeError:
            session = None  # perhaps the saving failed (disk full): open it plainly below, which raises if it was not
        finally:
            options.optimized_model_filepath = ""  # the options may open another graph after this one
        if session is None:
            return create(graph_path, options)
        if (staging / graph_path.name).is_file():  # else ORT saved nothing (a provider that cannot): no entry
            try:
                (staging / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True) + "\n")
                publish_folder(staging, entry)
            except OSError as e:  # the session is open; only the entry is lost
                warnings.warn(
                    f"optimized cache {entry.parent}: cannot save {graph_path.name} ({e.strerror or e})",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return session
