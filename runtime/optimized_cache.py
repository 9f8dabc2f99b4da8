"""Saved optimized graphs, one per machine. ONNX Runtime optimizes a graph (fusions, constant folding, layout
choices for this CPU) every time a session opens it. With `RWKVModel.load(..., optimized_cache=True)` (or a
folder) the first open also saves the optimized graph (ORT's optimized_model_filepath, weights as external data
beside it) and later opens load that copy with graph optimizations off.

Measured, RWKV-7 0.1B shape, ORT 1.32, 2 threads, RWKVModel.load in fresh processes (median of 5): fp32 0.52 ->
0.42 s, int8 0.21 -> 0.15 s (one session; two sessions: fp32 0.15 -> 0.07 s, int8 0.38 -> 0.28 s); the first load,
which also writes the copy, takes 2.3 s (fp32) / 0.4 s (int8). Most of a load is reading and prepacking the weights,
which the saved graph does not skip. The disk cost is one more copy of the weights per graph (764 MB fp32, 198 MB
int8): that is why it is opt-in. Memory, decode speed and the numbers are unchanged (bit for bit, tested).

Pair entries (open_cached_pair; RWKVModel.load on the CPU with a sequence graph): the step and the sequence graph
of one precision, each saved with its prepacked weights (`session.save_external_prepacked_constant_initializers`)
and the sequence graph then pointed at the step graph's data file (runtime/shared_weights.py). Both sessions map
that one file and pack nothing at load, so decode runs through the step graph for the memory of one session.
Measured in fresh processes, alternating, 2 threads, PSS after a 128-token feed, against one session without the
cache: RWKV-7 0.1B int8 5.29-5.38 vs 5.54-5.61 ms/token, PSS 282 vs 267 MiB; fp32 13.5-14.0 vs 13.5-15.1 ms,
667 vs 655 MiB; RWKV-4 169M fp32 8.3-8.9 vs 9.5-9.7 ms, 601 vs 598 MiB. A load from the entry takes 0.5-0.9 s fp32
and 0.2 s int8 (one session without cache: 0.4-0.5 / 0.15-0.2 s); the first, which optimizes and saves both graphs,
6-9 s / 1.7 s. On disk an entry holds the weights and their packed forms once: 1.33 GB fp32, 347 MB int8 (RWKV-7
0.1B). (Peak RSS counts a page that both sessions map twice; PSS once.)

An entry holds for one machine and one graph (or pair): its key hashes what the optimized graph depends on (ORT's
version and build, the providers and their options, the optimization level, the CPU model and flags, the graph
file's bytes, and the size and mtime of the export's data files), so a changed export or another machine sharing
the folder gets its own entry. An entry is a folder `<cache>/<graph stem>-<key>/` (a pair's
`<step stem>+<sequence stem>-<key>/`), written in a temporary folder and renamed into place: a reader sees a
whole entry or none, and an existing entry is only replaced when it fails to load. A cache that cannot be written
degrades to opening the export's graph as usual, with a RuntimeWarning.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from .errors import RWKVEdgeError
from .shared_weights import share_data_file

CACHE_FORMAT = 1  # bump when what an entry holds changes
PAIR_FORMAT = 1  # the same for pair entries (step + sequence graph sharing one data file)
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
            return _open_saved(create, options, entry / graph_path.name)[0]
        except RWKVEdgeError as e:
            warnings.warn(
                f"optimized cache entry {entry} does not load ({e}); rebuilding it", RuntimeWarning, stacklevel=3
            )
    return _open_and_save(graph_path, options, entry, parts, create)


def open_cached_pair(
    step_path: Path,
    sequence_path: Path,
    options: ort.SessionOptions,
    providers: list,
    directory: Path,
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession],
):
    """(step session, sequence session) of a pair entry: both graphs optimized for this machine and saved with
    their prepacked weights in one data file (runtime/shared_weights.py), so the two sessions map one copy of the
    weights; built on the first call. None when the entry cannot be had (a warning says why): the caller opens
    the graphs without it. CPU only (the prepacked forms are the CPU kernels')."""
    parts = {
        "pair": PAIR_FORMAT,
        "step": cache_key(step_path, options, providers)[1],
        "sequence": cache_key(sequence_path, options, providers)[1],
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    entry = directory / f"{step_path.stem}+{sequence_path.stem}-{key}"
    saved = (entry / step_path.name, entry / sequence_path.name)
    if all(p.is_file() for p in saved):
        try:
            return _open_saved(create, options, *saved)
        except RWKVEdgeError as e:
            warnings.warn(
                f"optimized cache entry {entry} does not load ({e}); rebuilding it", RuntimeWarning, stacklevel=3
            )
    if not _save_pair(step_path, sequence_path, options, entry, parts, create):
        return None
    try:
        return _open_saved(create, options, *saved)
    except RWKVEdgeError as e:
        warnings.warn(
            f"optimized cache entry {entry} does not load ({e}); opening the graphs without it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _open_saved(
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession], options: ort.SessionOptions, *paths: Path
) -> tuple[ort.InferenceSession, ...]:
    """Sessions of saved optimized graphs: opened with optimizations off (they are done), the options then restored
    (they may open another graph after these)."""
    level = options.graph_optimization_level
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return tuple(create(p, options) for p in paths)
    finally:
        options.graph_optimization_level = level


def _save_pair(
    step_path: Path,
    sequence_path: Path,
    options: ort.SessionOptions,
    entry: Path,
    parts: dict,
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession],
) -> bool:
    """Optimize and save both graphs with their prepacked weights in a staging folder, point the sequence graph at
    the step graph's data file, publish the folder as `entry`. False (with a warning) when that fails."""
    staging = _staging(entry, "the graphs")
    if staging is None:
        return False
    try:
        for graph in (step_path, sequence_path):
            # Options of their own (ORT keeps config entries for good, and warns when one is set again); what the
            # optimized graph depends on is the level (threads and spinning are the run's, not the graph's).
            saving = ort.SessionOptions()
            saving.log_severity_level = options.log_severity_level
            saving.graph_optimization_level = options.graph_optimization_level
            saving.optimized_model_filepath = str(staging / graph.name)
            saving.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", graph.name + ".data"
            )
            saving.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES)
            )
            saving.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
            create(graph, saving)  # opened to be saved; the entry's copies are opened next
            if not (staging / graph.name).is_file():
                raise OSError(f"ONNX Runtime saved no optimized copy of {graph.name}")
        share_data_file(staging / sequence_path.name, staging / step_path.name)
        (staging / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True) + "\n")
        _publish(staging, entry)
        return True
    except (OSError, ValueError, RWKVEdgeError, ModuleNotFoundError) as e:  # no onnx: a runtime-only install
        warnings.warn(
            f"optimized cache {entry.parent}: cannot save the pair {step_path.name} + {sequence_path.name} ({e}); "
            "opening the graphs without it",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _open_and_save(
    graph_path: Path,
    options: ort.SessionOptions,
    entry: Path,
    parts: dict,
    create: Callable[[Path, ort.SessionOptions], ort.InferenceSession],
) -> ort.InferenceSession:
    staging = _staging(entry, graph_path.name)
    if staging is None:
        return create(graph_path, options)
    try:
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
            (staging / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True) + "\n")
            _publish(staging, entry)
        return session
    except OSError as e:  # the session is open; only the entry is lost
        warnings.warn(
            f"optimized cache {entry.parent}: cannot save {graph_path.name} ({e.strerror or e})",
            RuntimeWarning,
            stacklevel=4,
        )
        return session
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staging(entry: Path, what: str) -> Path | None:
    """A fresh staging folder beside `entry`, or None (with a warning naming `what` opens without the cache)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=entry.parent))
    except OSError as e:
        warnings.warn(
            f"optimized cache {entry.parent} is not writable ({e.strerror or e}); opening {what} without it",
            RuntimeWarning,
            stacklevel=5,
        )
        return None


def _publish(staging: Path, entry: Path) -> None:
    """Rename the finished staging folder to `entry`. An entry already there failed to load (or a concurrent
    process just published it): it is moved aside and removed first; if another one lands in between, it stays."""
    if entry.exists():
        aside = Path(tempfile.mkdtemp(prefix=".stale-", dir=entry.parent))
        try:
            os.rename(entry, aside / "entry")
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(staging, entry)
    except OSError:
        if not entry.is_dir():
            raise
