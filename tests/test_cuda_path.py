"""The CUDA path: runtime/cuda_graph.py's fixed-buffer bindings and graph ids, rehearsed with CPU OrtValues (the
binding logic does not care where its buffers live), the fallbacks when ORT refuses CUDA graphs, the CLI flag;
and, where onnxruntime-gpu and a GPU are present, CUDA-graph decoding against plain CUDA decoding."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from fake_model import build_fake_export

from rwkv_edge.runtime import RWKVEdgeError, RWKVModel, State
from rwkv_edge.runtime.cuda_graph import (
    FIRST_GRAPH_ID,
    GRAPH_ID_OPTION,
    NO_GRAPH,
    WARMUP_RUNS,
    CudaGraphSteps,
    open_step_session,
    with_cuda_graph,
)

VOCAB = 16
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("fake"), vocab=VOCAB)


@pytest.fixture(scope="module")
def plain(export_dir) -> RWKVModel:
    return RWKVModel.load(export_dir, threads=1)


@pytest.fixture
def graphed(export_dir) -> RWKVModel:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CPU rehearsal is no fallback: nothing to warn about
        model = RWKVModel.load(export_dir, threads=1, cuda_graph=True)
    assert model.cuda_graph and "need the CUDA provider" in model.cuda_graph_note
    return model


def tokens(steps: int, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(steps, batch))


def record_graph_ids(model: RWKVModel, monkeypatch) -> list[int]:
    """Patch the step session to log the gpu_graph_id of every bound run."""
    seen, run = [], model.step_session.run_with_iobinding

    def logged(binding, options=None):
        seen.append(int(options.get_run_config_entry(GRAPH_ID_OPTION)))
        return run(binding, options)

    monkeypatch.setattr(model.step_session, "run_with_iobinding", logged)
    return seen


def addresses(model: RWKVModel, state: State) -> list[int]:
    binding = model._graph_steps.binding(state)
    return [binding.ids.data_ptr(), binding.logits.data_ptr()] + [
        v.data_ptr() for side in state._buffers for v in side.values()
    ]


# --- the fixed-buffer binding, on CPU OrtValues -------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_graph_steps_equal_plain_runs(graphed, plain, batch):
    state, arrays, bound = graphed.new_state(batch), plain.new_state(batch).to_numpy(), plain.new_state(batch)
    for ids in tokens(40, batch, seed=batch):
        logits = graphed.step(ids, state)
        expected, arrays = plain.step_numpy(ids, arrays)
        np.testing.assert_array_equal(logits, expected)
        np.testing.assert_array_equal(logits, plain.step(ids, bound))
        assert logits.dtype == np.float32 and logits.shape == (batch, VOCAB)
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(value, arrays[name])


def test_buffers_keep_their_addresses_and_ids_are_written_in_place(graphed):
    state = graphed.new_state(3)
    graphed.step([1, 2, 3], state)
    before = addresses(graphed, state)
    kept = []
    for ids in tokens(9, 3):
        kept.append(graphed.step(ids, state))
        binding = graphed._graph_steps.binding(state)
        np.testing.assert_array_equal(binding.ids.numpy(), ids)  # the bound ids buffer holds this step's ids
        assert addresses(graphed, state) == before
    assert not np.shares_memory(
        kept[-1], graphed._graph_steps.binding(state).logits.numpy()
    )  # returned logits are copies
    assert not all(np.array_equal(kept[0], k) for k in kept[1:])


def test_parity_selects_its_graph_id_after_the_warmup(graphed, monkeypatch):
    seen = record_graph_ids(graphed, monkeypatch)
    state = graphed.new_state(2)
    for ids in tokens(10, 2):
        graphed.step(ids, state)
    ids0, ids1 = graphed._graph_steps.binding(state).graph_ids
    assert ids0 != ids1 and min(ids0, ids1) >= FIRST_GRAPH_ID  # 0 is ORT's implicit id
    warmup = 2 * WARMUP_RUNS  # each parity warms up on its own
    assert seen == [NO_GRAPH] * warmup + [ids0, ids1] * ((10 - warmup) // 2)
    # another state of the same batch binds other buffers: other graphs; the ids/logits buffers are shared
    other = graphed.new_state(2)
    graphed.step([0, 0], other)
    assert set(graphed._graph_steps.binding(other).graph_ids).isdisjoint({ids0, ids1})
    assert graphed._graph_steps.binding(other).ids is graphed._graph_steps.binding(state).ids
    # the plain numpy path never runs under a graph id
    calls = []
    run = graphed.step_session.run
    monkeypatch.setattr(
        graphed.step_session, "run", lambda *a: calls.append(a[2].get_run_config_entry(GRAPH_ID_OPTION)) or run(*a)
    )
    graphed.step_numpy([1, 2], graphed.new_state(2).to_numpy())
    assert calls == [str(NO_GRAPH)]


def test_graph_ids_are_keyed_by_addresses_never_reused_and_capped():
    steps = CudaGraphSteps(None, "input_ids", "logits", [], VOCAB, np.float32, "cpu", max_graphs=3)
    a, b = steps.graph_id((1, 10, 20)), steps.graph_id((1, 30, 40))
    assert (a, b) == (FIRST_GRAPH_ID, FIRST_GRAPH_ID + 1)
    assert steps.graph_id((1, 10, 20)) == a  # a state on the same addresses replays the same graph
    assert steps.graph_id((3, 10, 20)) == FIRST_GRAPH_ID + 2  # same addresses, another batch: another graph
    assert steps.note is None
    assert steps.graph_id((1, 50, 60)) == NO_GRAPH and "3 CUDA graphs" in steps.note
    assert steps.graph_id((1, 30, 40)) == b


def test_past_the_cap_states_step_uncaptured_and_the_model_says_so(graphed, plain, monkeypatch):
    graphed._graph_steps.max_graphs = 2
    graphed.cuda_graph_note = None  # as on CUDA, where graphs are captured and nothing needs saying
    first, second = graphed.new_state(1), graphed.new_state(1)
    graphed.step([1], first)
    assert graphed._graph_steps.binding(first).graph_ids == [FIRST_GRAPH_ID, FIRST_GRAPH_ID + 1]
    seen = record_graph_ids(graphed, monkeypatch)
    ref = plain.new_state(1)
    for t in tokens(6, 1):
        np.testing.assert_array_equal(graphed.step(t, second), plain.step(t, ref))
    assert seen == [NO_GRAPH] * 6
    assert "2 CUDA graphs captured" in graphed.cuda_graph_note


def test_state_copy_select_save_load_under_graph_bindings(graphed, plain, tmp_path):
    state, ref = graphed.new_state(3), plain.new_state(3)
    for ids in tokens(7, 3):
        graphed.step(ids, state)
        plain.step(ids, ref)
    state.save(tmp_path / "s.npz")
    loaded, picked, copied = State.load(tmp_path / "s.npz", graphed), state.select([2, 0]), state.copy()
    ref_picked = ref.select([2, 0])
    for ids in tokens(5, 3, seed=9):
        expected = plain.step(ids, ref)
        for s in (state, loaded, copied):
            np.testing.assert_array_equal(graphed.step(ids, s), expected)
        np.testing.assert_array_equal(graphed.step(ids[[2, 0]], picked), plain.step(ids[[2, 0]], ref_picked))
    assert len({id(graphed._graph_steps.binding(s)) for s in (state, loaded, copied, picked)}) == 4


def test_feed_with_a_sequence_graph_then_graph_steps(tmp_path):
    d = build_fake_export(tmp_path / "seq", vocab=VOCAB, with_sequence=True)
    graphed, plain = RWKVModel.load(d, cuda_graph=True, prefill_chunk=3), RWKVModel.load(d, prefill_chunk=3)
    prompt = [[3, 1, 4, 1, 5, 9, 2], [2, 7, 1, 8, 2, 8, 1]]
    s, r = graphed.new_state(2), plain.new_state(2)
    np.testing.assert_array_equal(graphed.feed(prompt, s), plain.feed(prompt, r))
    for ids in tokens(6, 2):
        np.testing.assert_array_equal(graphed.step(ids, s), plain.step(ids, r))


def test_bad_input_is_still_one_line(graphed):
    with pytest.raises(RWKVEdgeError) as err:
        graphed.step([VOCAB], graphed.new_state(1))
    assert "outside the vocabulary" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RWKVEdgeError):
        graphed.step([1, 2], graphed.new_state(1))


# --- fallbacks ----------------------------------------------------------------------------------------------


def test_cuda_graph_provider_option():
    assert with_cuda_graph([("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"device_id": 1, "enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]
    assert with_cuda_graph(["CUDAExecutionProvider"]) == [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]


def test_a_refused_graph_session_is_reopened_without_graphs():
    refusal = (
        "model.onnx: ONNX Runtime cannot load it (This session cannot use the graph capture feature as requested "
        "by the user as all compute graph nodes have not been partitioned to the CUDAExecutionProvider)"
    )
    opened = []

    def opener(providers):
        opened.append(providers)
        if "enable_cuda_graph" in str(providers):
            raise RWKVEdgeError(refusal)
        return "session"

    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    session, bindings, note = open_step_session(opener, providers, "CUDAExecutionProvider", cuda_graph=True)
    assert (session, bindings) == ("session", False) and opened[-1] == providers
    assert note.startswith("CUDA graphs off, decoding without them:") and "partitioned" in note and "\n" not in note
    assert open_step_session(opener, providers, "CUDAExecutionProvider", cuda_graph=False) == ("session", False, None)

    def broken(providers):
        raise RWKVEdgeError("model.onnx: ONNX Runtime cannot load it (Protobuf parsing failed)")

    with pytest.raises(RWKVEdgeError, match="Protobuf"):  # not a graph problem: the plain open says so
        open_step_session(broken, providers, "CUDAExecutionProvider", cuda_graph=True)


def test_a_capture_failing_at_run_time_falls_back_once(graphed, plain, monkeypatch):
    run = graphed.step_session.run_with_iobinding

    def refusing(binding, options=None):
        if int(options.get_run_config_entry(GRAPH_ID_OPTION)) != NO_GRAPH:
            raise RuntimeError("CUDA failure 900: operation not permitted when stream is capturing\nmore text")
        return run(binding, options)

    monkeypatch.setattr(graphed.step_session, "run_with_iobinding", refusing)
    state, ref = graphed.new_state(2), plain.new_state(2)
    with pytest.warns(RuntimeWarning, match="CUDA graphs off") as caught:
        for ids in tokens(12, 2):
            np.testing.assert_array_equal(graphed.step(ids, state), plain.step(ids, ref))
    assert len(caught) == 1
    assert not graphed.cuda_graph and graphed._graph_steps is None
    assert "operation not permitted" in graphed.cuda_graph_note and "\n" not in graphed.cuda_graph_note
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(value, ref.to_numpy()[name])


def test_generate_cli_takes_cuda_graph(tmp_path):
    d = build_fake_export(tmp_path / "bytes", vocab=256)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv_edge.cli",
            "generate",
            str(d),
            "--prompt",
            "ab",
            "--max-tokens",
            "4",
            "--seed",
            "0",
            "--cuda-graph",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ab") and r.stderr.strip() == (
        "note: CUDA graphs need the CUDA provider: CPUExecutionProvider runs the same fixed bindings, uncaptured"
    )


# --- on a GPU -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(exported):
    return exported("7", 2, 64, 16, 301)[1]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_graph_decode_equals_plain_cuda_decode(tiny_export, batch):
    cuda = RWKVModel.load(tiny_export, provider="cuda")
    graphed = RWKVModel.load(tiny_export, provider="cuda", cuda_graph=True)
    assert graphed.cuda_graph and graphed.cuda_graph_note is None, graphed.cuda_graph_note
    s, r = graphed.new_state(batch), cuda.new_state(batch)
    ids_all = np.random.default_rng(batch).integers(0, 301, size=(40, batch))
    for ids in ids_all:
        np.testing.assert_allclose(graphed.step(ids, s), cuda.step(ids, r), rtol=1e-5, atol=1e-5)
    for name, value in s.to_numpy().items():
        np.testing.assert_allclose(value, r.to_numpy()[name], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_state_stays_on_the_device(tiny_export):
    for cuda_graph in (False, True):
        model = RWKVModel.load(tiny_export, provider="cuda", cuda_graph=cuda_graph)
        state = model.new_state(2)
        model.step([1, 2], state)
        where = [(v.device_name(), v.data_ptr()) for side in state._buffers for v in side.values()]
        for t in range(6):
            model.step([t, t + 1], state)
        assert [(v.device_name(), v.data_ptr()) for side in state._buffers for v in side.values()] == where
        assert {d for d, _ in where} == {"cuda"}
        if cuda_graph:
            binding = model._graph_steps.binding(state)
            assert binding.ids.device_name() == binding.logits.device_name() == "cuda"
