"""One state tensor per layer (runtime/layer_state.py): the graphs the runtime rewrites on the CPU give the stacked
graphs' outputs bit for bit, through every State operation; graphs without the pattern stay as exported."""

import numpy as np
import onnx
import pytest
from fake_model import build_fake_export

from rwkv_edge.runtime import onnx_wire as wire
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.layer_state import per_layer_graph
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import RWKVModel
from rwkv_edge.runtime.state import State

SHAPE = (2, 64, 16, 301)  # n_layer, n_embd, head_size, vocab


def _same_state(a: State, b: State) -> None:
    x, y = a.to_numpy(), b.to_numpy()
    assert x.keys() == y.keys()
    for name in x:
        np.testing.assert_array_equal(x[name], y[name])


@pytest.mark.parametrize("version", ["4", "5", "6", "7"])
def test_layered_graphs_give_the_stacked_outputs_bit_for_bit(exported, version):
    _, export_dir = exported(version, *SHAPE)
    layered = RWKVModel.load(export_dir, threads=1)
    stacked = RWKVModel.load(export_dir, threads=1, layer_state=False)
    assert layered.layer_state and not stacked.layer_state
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 256, size=(3, 9))
    a, b = layered.new_state(3), stacked.new_state(3)
    np.testing.assert_array_equal(layered.feed(prompt, a), stacked.feed(prompt, b))
    for _ in range(3):
        ids = rng.integers(0, 256, size=3)
        np.testing.assert_array_equal(layered.step(ids, a), stacked.step(ids, b))
    _same_state(a, b)
    # rows taken out, joined again, moved through numpy and bytes: still the same state
    c, d = State.concat([a.select([2, 0]), a]), State.concat([b.select([2, 0]), b])
    ids = rng.integers(0, 256, size=5)
    np.testing.assert_array_equal(layered.step(ids, c), stacked.step(ids, d))
    _same_state(c, d)
    _same_state(State.from_bytes(c.to_bytes(), layered), d)
    e = layered.state_from_numpy(d.to_numpy())
    np.testing.assert_array_equal(layered.step(ids, e), stacked.step(ids, d))
    logits, arrays = layered.step_numpy(ids, e.to_numpy())
    np.testing.assert_array_equal(logits, stacked.step_numpy(ids, e.to_numpy())[0])
    _same_state(layered.state_from_numpy(arrays), stacked.state_from_numpy(stacked.step_numpy(ids, e.to_numpy())[1]))


def test_a_batch_of_one_does_not_share_the_callers_arrays(exported):
    _, export_dir = exported("7", *SHAPE)
    model = RWKVModel.load(export_dir, threads=1)
    arrays = model.new_state(1).to_numpy()
    before = {n: a.copy() for n, a in arrays.items()}
    state = model.state_from_numpy(arrays)
    model.step([5], state)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], before[name])


def test_states_of_layered_and_stacked_models_do_not_mix(exported):
    _, export_dir = exported("7", *SHAPE)
    layered = RWKVModel.load(export_dir, threads=1)
    stacked = RWKVModel.load(export_dir, threads=1, layer_state=False)
    with pytest.raises(RWKVEdgeError, match="one state tensor per layer"):
        stacked.step([1], layered.new_state(1))
    moved = stacked.state_from_numpy(layered.new_state(1).to_numpy())
    stacked.step([1], moved)


def test_the_rewrite_removes_the_cut_and_the_stack(exported):
    _, export_dir = exported("7", *SHAPE)
    manifest = load_manifest(export_dir)
    graph = manifest.graph("step", "fp32")
    rewritten = onnx.load_from_string(per_layer_graph(export_dir / graph.file, manifest.state))
    original = onnx.load(export_dir / graph.file, load_external_data=False)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    before = [n.op_type for n in original.graph.node]
    assert before.count("Split") - ops.count("Split") == len(manifest.state)
    assert before.count("Concat") - ops.count("Concat") == len(manifest.state)
    names = [i.name for i in rewritten.graph.input]
    assert "wkv" not in names and [f"wkv.{i}" for i in range(SHAPE[0])] == [n for n in names if n.startswith("wkv.")]
    # per state tensor: its Reshape, Split, Concat and one Unsqueeze per layer
    assert len(rewritten.graph.node) == len(original.graph.node) - len(manifest.state) * (3 + SHAPE[0])


def test_a_graph_without_the_pattern_stays_stacked(tmp_path):
    export_dir = build_fake_export(tmp_path / "fake", vocab=32, n_layer=2, n_embd=8, with_sequence=True)
    model = RWKVModel.load(export_dir)
    assert not model.layer_state
    model.step([1], model.new_state(1))
    with pytest.raises(RWKVEdgeError, match="layer_state=True: .* does not cut and stack"):
        RWKVModel.load(export_dir, layer_state=True)


def test_layer_state_true_says_where_it_cannot_apply(exported, tmp_path):
    _, export_dir = exported("7", *SHAPE)
    with pytest.raises(RWKVEdgeError, match="layer_state=True: the optimized cache"):
        RWKVModel.load(export_dir, layer_state=True, optimized_cache=tmp_path / "cache")
    assert not RWKVModel.load(export_dir, optimized_cache=tmp_path / "cache").layer_state


def test_wire_fields_reencode_byte_for_byte(exported, tmp_path):
    _, export_dir = exported("7", *SHAPE)
    data = (export_dir / load_manifest(export_dir).graph("step", "fp32").file).read_bytes()
    model = wire.parse(data)
    assert wire.serialize(model) == data
    graph = next(f for f in model if f.number == wire.MODEL_GRAPH)
    assert wire.serialize(wire.parse(graph.value)) == graph.value
    assert per_layer_graph(export_dir / "missing.onnx", []) is None
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff")
    assert per_layer_graph(garbage, []) is None


@pytest.mark.parametrize("layered", [True, False])
def test_gather_copies_rows_once_or_not_at_all(exported, layered):
    _, export_dir = exported("7", *SHAPE)
    model = RWKVModel.load(export_dir, threads=1, layer_state=layered)
    a, b = model.new_state(3), model.new_state(2)
    model.feed(np.arange(12).reshape(3, 4), a)
    model.feed(np.arange(20, 26).reshape(2, 3), b)
    assert State.gather([(a, 0), (a, 1), (a, 2)]) is a  # all its rows in order: the state itself
    mixed = State.gather([(b, 1), (a, 2), (a, 0)])
    expected = State.concat([b.select(1), a.select([2, 0])])
    _same_state(mixed, expected)
    np.testing.assert_array_equal(mixed.logits, expected.logits)
    ids = np.array([1, 2, 3])
    np.testing.assert_array_equal(model.step(ids, mixed), model.step(ids, expected))
    with pytest.raises(RWKVEdgeError, match="row 3 is outside a state of batch 3"):
        State.gather([(a, 3)])


@pytest.mark.parametrize("layered", [True, False])
def test_row_to_numpy_is_the_selected_row(exported, layered):
    _, export_dir = exported("7", *SHAPE)
    model = RWKVModel.load(export_dir, threads=1, layer_state=layered)
    state = model.new_state(3)
    model.feed(np.arange(12).reshape(3, 4), state)
    for row in range(3):
        got, expected = state.row_to_numpy(row), state.select(row).to_numpy()
        assert got.keys() == expected.keys()
        for name, array in expected.items():
            assert got[name].flags.c_contiguous and got[name].shape == array.shape
            np.testing.assert_array_equal(got[name], array)
    before = state.to_numpy()
    state.row_to_numpy(1)["wkv"][...] = 7  # a copy: the state is untouched
    np.testing.assert_array_equal(state.to_numpy()["wkv"], before["wkv"])
