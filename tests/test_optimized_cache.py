"""The saved optimized graphs (runtime/optimized_cache.py): a second load opens the cached copy with optimizations
off and answers the same; a changed graph or data file gets a new entry; an unwritable cache or a broken entry never
stops a load."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
from rwkv_edge.runtime.optimized_cache import cache_key, default_cache_dir, resolve_cache_dir
from rwkv_edge.runtime.session import RWKVModel

PROMPT = np.arange(1, 12)[None] % 301


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from rwkv_edge.exporter.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("optcache")
    ck = save_checkpoint(make_checkpoint("7", 2, 32, 16, 301, seed=3), root / "model.pth")
    export_checkpoint(ck, root / "export", tokenizer="bytes", prefill="last")
    return root / "export"


@pytest.fixture
def opened(monkeypatch):
    """The model files ORT opens, with the optimization level of each open."""
    paths, real = [], ort.InferenceSession

    def recording(path, sess_options=None, **kw):
        paths.append((str(path), sess_options.graph_optimization_level))
        return real(path, sess_options=sess_options, **kw)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return paths


def run(model):
    state = model.new_state(1)
    model.feed(PROMPT, state)
    return model.step([7], state)


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_second_load_opens_the_cached_graph(export_dir, tmp_path, opened):
    """On the CPU the default load is one session on the sequence graph: its entry is saved on the first load and
    opened with optimizations off on the second, which answers as a load without the cache, bit for bit."""
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = RWKVModel.load(export_dir, optimized_cache=cache)
        (entry,) = entries(cache)
        assert entry.startswith("prefill-") and {p.name for p in (cache / entry).iterdir()} >= {
            "prefill.onnx",
            "prefill.onnx.data",
            "key.json",
        }
        assert opened == [(str(export_dir / "prefill.onnx"), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)]
        second = RWKVModel.load(export_dir, optimized_cache=cache)
    assert opened[1:] == [(str(cache / entry / "prefill.onnx"), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)]
    assert entries(cache) == [entry] and not list(cache.glob(".*"))  # no staging folders left behind
    plain = run(RWKVModel.load(export_dir))
    for model in (first, second):
        assert model.one_session and model.decode_graph.kind == "sequence"
        np.testing.assert_array_equal(run(model), plain)


def test_two_sessions_each_get_an_entry(export_dir, tmp_path, opened):
    cache = tmp_path / "cache"
    RWKVModel.load(export_dir, optimized_cache=cache, one_session=False)
    assert [e.split("-")[0] for e in entries(cache)] == ["model", "prefill"]
    model = RWKVModel.load(export_dir, optimized_cache=cache, one_session=False)
    assert {p for p, _ in opened[-2:]} == {str(cache / e / f"{e.split('-')[0]}.onnx") for e in entries(cache)}
    np.testing.assert_allclose(run(model), run(RWKVModel.load(export_dir, one_session=False)), rtol=0, atol=0)


def test_a_changed_graph_or_data_file_gets_a_new_entry(export_dir, tmp_path, opened):
    changed = tmp_path / "export"
    changed.mkdir()
    for p in export_dir.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    cache = tmp_path / "cache"
    RWKVModel.load(changed, optimized_cache=cache)
    (stale,) = entries(cache)
    model = onnx.load(changed / "prefill.onnx")
    model.doc_string = "edited"
    onnx.save(model, changed / "prefill.onnx")
    start = len(opened)
    RWKVModel.load(changed, optimized_cache=cache)
    (fresh,) = set(entries(cache)) - {stale}
    assert (str(changed / "prefill.onnx"), ort.GraphOptimizationLevel.ORT_ENABLE_ALL) in opened[
        start:
    ]  # the edited graph itself
    assert all(stale not in path for path, _ in opened[start:])
    RWKVModel.load(changed, optimized_cache=cache)
    assert opened[-1] == (str(cache / fresh / "prefill.onnx"), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)

    options = ort.SessionOptions()
    key = cache_key(changed / "prefill.onnx", options, ["CPUExecutionProvider"])[0]
    (changed / "model.onnx.data").write_bytes(b"weights")  # data files count by size and mtime
    assert cache_key(changed / "prefill.onnx", options, ["CPUExecutionProvider"])[0] != key
    assert (
        cache_key(changed / "prefill.onnx", options, ["CUDAExecutionProvider"])[0]
        != cache_key(changed / "prefill.onnx", options, ["CPUExecutionProvider"])[0]
    )


def test_unwritable_cache_degrades_to_no_cache(export_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="not writable"):
        model = RWKVModel.load(export_dir, optimized_cache=blocker / "cache")
    np.testing.assert_array_equal(run(model), run(RWKVModel.load(export_dir)))


def test_a_broken_entry_is_rebuilt(export_dir, tmp_path, opened):
    cache = tmp_path / "cache"
    RWKVModel.load(export_dir, optimized_cache=cache)
    (entry,) = entries(cache)
    (cache / entry / "prefill.onnx").write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="does not load"):
        model = RWKVModel.load(export_dir, optimized_cache=cache)
    np.testing.assert_array_equal(run(model), run(RWKVModel.load(export_dir)))
    assert entries(cache) == [entry] and not list(cache.glob(".*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RWKVModel.load(export_dir, optimized_cache=cache)
    assert opened[-1][0] == str(cache / entry / "prefill.onnx")


def test_nothing_is_saved_without_optimizations(export_dir, tmp_path):
    cache = tmp_path / "cache"
    RWKVModel.load(export_dir, optimized_cache=cache, graph_optimizations=False)
    assert not cache.exists() or entries(cache) == []


def test_cache_folder_argument(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_cache_dir(True) == default_cache_dir() == tmp_path / "rwkv-edge" / "optimized"
    assert resolve_cache_dir(None) is None and resolve_cache_dir(False) is None
    assert resolve_cache_dir(str(tmp_path / "x")) == tmp_path / "x"


def test_generate_and_bench_flags(export_dir, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "rwkv_edge.cli"]
    r = subprocess.run(
        cli + ["generate", str(export_dir), "--max-tokens", "3", "--seed", "0", "--optimized-cache"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert [e.split("-")[0] for e in entries(tmp_path / "rwkv-edge" / "optimized")] == ["prefill"]
    bench_env = {**env, "XDG_CACHE_HOME": str(tmp_path / "bench")}  # the bench's own entry says the flag reached load
    r = subprocess.run(
        cli
        + [
            "bench",
            str(export_dir),
            "--tokens",
            "2",
            "--no-memory",
            "--bandwidth",
            "25",
            "--optimized-cache",
            "--report",
            str(tmp_path / "bench.json"),
        ],
        capture_output=True,
        text=True,
        env=bench_env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert [e.split("-")[0] for e in entries(tmp_path / "bench" / "rwkv-edge" / "optimized")] == ["prefill"]
    assert [row["precision"] for row in json.loads((tmp_path / "bench.json").read_text())["rows"]] == ["fp32"]
