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


PAIR = ("model.onnx", "prefill.onnx")  # the entry's graphs: decode through the first, prompts through the second


def check_pair_answers(model, export_dir):
    """A pair model prefills as the one-session model does and steps as the step graph alone does, bit for bit."""
    assert not model.one_session and model.decode_graph.kind == "step" and model.sequence_session is not None
    state = model.new_state(1)
    plain = RWKVModel.load(export_dir)  # one session: the sequence graph, optimized and packed at load
    plain_state = plain.new_state(1)
    np.testing.assert_array_equal(model.feed(PROMPT, state), plain.feed(PROMPT, plain_state))
    step_alone = RWKVModel.load(export_dir, use_sequence_graph=False)
    alone_state = step_alone.state_from_numpy(state.to_numpy())
    np.testing.assert_array_equal(model.step([7], state), step_alone.step([7], alone_state))
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(value, alone_state.to_numpy()[name])


def test_second_load_opens_the_cached_pair(export_dir, tmp_path, opened):
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = RWKVModel.load(export_dir, optimized_cache=cache)
        (entry,) = entries(cache)
        assert entry.startswith("model+prefill-") and {p.name for p in (cache / entry).iterdir()} >= {
            *PAIR,
            "model.onnx.data",
            "key.json",
        }
        assert opened[-2:] == [(str(cache / entry / g), ort.GraphOptimizationLevel.ORT_DISABLE_ALL) for g in PAIR]
        assert (
            str(export_dir / "prefill.onnx"),
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ) in opened  # optimized to be saved
        before = len(opened)
        second = RWKVModel.load(export_dir, optimized_cache=cache)
    assert opened[before:] == [
        (str(cache / entry / g), ort.GraphOptimizationLevel.ORT_DISABLE_ALL) for g in PAIR
    ]  # nothing optimized again
    assert entries(cache) == [entry] and not list(cache.glob(".*"))  # no staging folders left behind
    check_pair_answers(first, export_dir)
    check_pair_answers(second, export_dir)


def test_the_pair_reads_one_copy_of_the_weights(export_dir, tmp_path):
    """Every weight of the sequence graph, and each packed form ORT saved of it, is read from the step graph's data
    file: the two sessions map one copy (PSS measured on the 0.1B shape in runtime/optimized_cache.py)."""
    from rwkv_edge.runtime.shared_weights import _entries, _external_tensors, _packed

    cache = tmp_path / "cache"
    RWKVModel.load(export_dir, optimized_cache=cache)
    (entry,) = entries(cache)
    step = {t.name for t in _external_tensors(onnx.load(cache / entry / "model.onnx", load_external_data=False).graph)}
    sequence = _external_tensors(onnx.load(cache / entry / "prefill.onnx", load_external_data=False).graph)
    shared = [_entries(t) for t in sequence if t.name in step]
    assert shared and all(e["location"] == "model.onnx.data" for e in shared)
    assert sum(bool(_packed(e)) for e in shared) >= 8  # the matrices' packed forms are saved and shared too
    # what only the sequence graph holds (the chunked WKV's masks, in a Scan body) stays in its own small file
    own = [_entries(t) for t in sequence if t.name not in step]
    assert all(e["location"] == "prefill.onnx.data" for e in own)
    assert (
        (cache / entry / "prefill.onnx.data").stat().st_size < 64 * 2**10
        if own
        else not (cache / entry / "prefill.onnx.data").exists()
    )


def test_share_data_file_copies_what_differs(export_dir, tmp_path):
    """An initializer whose bytes the reference does not hold moves to the graph's fresh data file (its packed
    forms with it, aligned), and the rewritten graph answers as before; a data entry in an unknown form is refused,
    the files untouched."""
    from rwkv_edge.runtime.shared_weights import ALIGN, _entries, _packed, share_data_file

    cache = tmp_path / "cache"
    RWKVModel.load(export_dir, optimized_cache=cache)
    (entry,) = entries(cache)
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in (cache / entry).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    step = onnx.load(folder / "model.onnx", load_external_data=False)
    packed = next(
        t for t in step.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL and _packed(_entries(t))
    )
    e = _entries(packed)
    offset, length = int(e["offset"]), int(e["length"])
    # the sequence graph's weights in a copy of the step graph's file; then one weight differs in the step graph's
    weights = (folder / "model.onnx.data").read_bytes()
    (folder / "weights.data").write_bytes(weights)
    changed = bytearray(weights)
    changed[offset] ^= 0xFF
    (folder / "model.onnx.data").write_bytes(bytes(changed))
    sequence = onnx.load(folder / "prefill.onnx", load_external_data=False)
    top_level = [t for t in sequence.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in top_level:
        for x in t.external_data:
            if x.key == "location":
                x.value = "weights.data"
    onnx.save(sequence, folder / "prefill.onnx")

    assert share_data_file(folder / "prefill.onnx", folder / "model.onnx") == len(top_level) - 1
    moved = {
        t.name: _entries(t) for t in onnx.load(folder / "prefill.onnx", load_external_data=False).graph.initializer
    }[packed.name]
    own = (folder / "prefill.onnx.data").read_bytes()
    assert moved["location"] == "prefill.onnx.data" and int(moved["offset"]) % ALIGN == 0
    assert (
        own[int(moved["offset"]) : int(moved["offset"]) + length] == weights[offset : offset + length]
    )  # its own bytes
    for at, size, _ in _packed(moved).values():  # its packed forms moved with it, aligned
        assert at % ALIGN == 0 and size > 0 and at + size <= len(own)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as a saved graph is opened
    rewritten, saved = (
        ort.InferenceSession(str(d / "prefill.onnx"), options, providers=["CPUExecutionProvider"])
        for d in (folder, cache / entry)
    )
    feeds = {
        i.name: (
            PROMPT if "int64" in i.type else np.zeros([1 if isinstance(d, str) else d for d in i.shape], np.float32)
        )
        for i in saved.get_inputs()
    }
    for got, want in zip(rewritten.run(None, feeds), saved.run(None, feeds)):
        np.testing.assert_array_equal(got, want)

    bad = onnx.load(folder / "prefill.onnx", load_external_data=False)
    t = next(t for t in bad.graph.initializer if t.name == packed.name)
    for x in t.external_data:
        if x.key.startswith("prepacked"):
            x.value = "no separator"
    onnx.save(bad, folder / "prefill.onnx")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    with pytest.raises(ValueError, match=packed.name):
        share_data_file(folder / "prefill.onnx", folder / "model.onnx")
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


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
    assert all(stale not in path for path, _ in opened[start:]) and opened[-1][0] == str(cache / fresh / "prefill.onnx")

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
    assert [e.split("-")[0] for e in entries(tmp_path / "rwkv-edge" / "optimized")] == ["model+prefill"]
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
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["load_s"] > 0
