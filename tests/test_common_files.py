"""The shared writers: atomic files, staged folders, and graphs saved with external data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.common import onnx_files
from rwkv_edge.common.files import atomic_path, move_into, new_file_mode, publish_folder, staging_folder
from rwkv_edge.common.onnx_files import GraphWriter, files_bytes, graph_files


def matmul_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """y = x @ weight + bias, with both as initializers."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def locations(path) -> set[str]:
    model = onnx.load(path, load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 48)).astype(np.float32), rng.standard_normal(48).astype(np.float32)


def test_small_graphs_stay_in_one_file(tmp_path, weights):
    assert GraphWriter(tmp_path).save(matmul_model(*weights), "model.onnx") == ["model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_large_weights_go_to_a_data_file_that_a_second_graph_shares(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    w, b = weights
    x = np.ones((1, 64), np.float32)
    writer = GraphWriter(tmp_path)
    assert writer.save(matmul_model(w, b), "model.onnx") == ["model.onnx", "model.onnx.data"]
    # the second graph: the same matrix (shared), another bias (its own, small: stays inline)
    assert writer.save(matmul_model(w, b + 1), "prefill.onnx") == ["prefill.onnx"]
    assert locations(tmp_path / "prefill.onnx") == {"model.onnx.data"}
    assert graph_files(tmp_path, "prefill.onnx") == {tmp_path / "prefill.onnx", tmp_path / "model.onnx.data"}
    assert files_bytes(tmp_path, ["model.onnx", "prefill.onnx"]) == sum(p.stat().st_size for p in tmp_path.iterdir())
    np.testing.assert_allclose(run(tmp_path / "model.onnx", x), x @ w + b, rtol=1e-5)
    np.testing.assert_allclose(run(tmp_path / "prefill.onnx", x), x @ w + b + 1, rtol=1e-5)
    # a tensor of the same name but other bytes is not shared
    assert writer.save(matmul_model(w * 2, b), "other.onnx") == ["other.onnx", "other.onnx.data"]
    np.testing.assert_allclose(run(tmp_path / "other.onnx", x), x @ (w * 2) + b, rtol=1e-5)


def test_the_data_file_has_the_graphs_mode(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    GraphWriter(tmp_path).save(matmul_model(*weights), "model.onnx")
    mode = (tmp_path / "model.onnx").stat().st_mode & 0o777
    assert (tmp_path / "model.onnx.data").stat().st_mode & 0o777 == mode == new_file_mode()


def test_graphs_in_a_subfolder_share_within_it(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    writer = GraphWriter(tmp_path)
    assert writer.save(matmul_model(*weights), "sub/model.onnx") == ["sub/model.onnx", "sub/model.onnx.data"]
    assert writer.save(matmul_model(*weights), "sub/prefill.onnx") == ["sub/prefill.onnx"]
    assert writer.save(matmul_model(*weights), "top.onnx") == ["top.onnx", "top.onnx.data"]  # another folder


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "rwkv.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["rwkv.json"]
    with atomic_path(target, mode=0o640) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


def test_staging_folder_is_removed_and_moves_land(tmp_path):
    with staging_folder(tmp_path) as staging:
        (staging / "a.onnx").write_text("a")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.onnx").write_text("b")
        (staging / "left.tmp").write_text("x")
        move_into(staging, tmp_path / "out", ["a.onnx", "sub/b.onnx"])
    assert (tmp_path / "out" / "a.onnx").read_text() == "a" and (tmp_path / "out" / "sub" / "b.onnx").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder and its leftover are gone


def test_publish_folder_replaces_a_stale_entry(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "stale").write_text("old")
    with staging_folder(tmp_path) as staging:
        (staging / "fresh").write_text("new")
        publish_folder(staging, entry)
    assert [p.name for p in entry.iterdir()] == ["fresh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    assert not any(name.startswith(".stale") for name in os.listdir(tmp_path))
