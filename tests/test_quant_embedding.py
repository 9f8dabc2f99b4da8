"""quant/embedding.py: the blockwise table quantizer, its numpy twin, and GatherBlockQuantized in ONNX Runtime agree;
both ways the exporter reads the table (Gather, GatherND of Unsqueeze) are rewritten."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.quant.embedding import QMAX, dequantize_table, find_embedding, quantize_embedding, quantize_table

V, C = 37, 96


def table(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(V, C)).astype(np.float32)
    w[3] = 0.0  # an all-zero row must not divide by zero
    w[5, :16] *= 50  # an outlier block must not spoil the others
    return w


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_roundtrip_error_is_half_a_step(bits, block):
    w = table()
    q, scale = quantize_table(w, bits, block)
    assert q.dtype == np.uint8 and q.shape == (V, C if bits == 8 else C // 2)
    assert scale.shape == (V, -(-C // block))
    back = dequantize_table(q, scale, bits, block)
    step = np.repeat(scale, block, axis=1)[:, :C]
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6)
    assert np.all(back[3] == 0)
    # symmetric: the block's largest |w| maps to +-qmax exactly
    assert np.isclose(np.abs(back[7, :block]).max(), np.abs(w[7, :block]).max(), rtol=1e-6)
    if bits == 8:  # 8 bits: relative error per element well under 1% of the block's max
        assert np.abs(back - w).max() / np.abs(w).max() < 1 / (2 * QMAX[8]) + 1e-6


def gather_graph(kind: str) -> onnx.ModelProto:
    """ids [batch] -> rows [batch, C] + 1, the table read as the exporter reads it."""
    inits = [numpy_helper.from_array(table(), "emb.weight"), numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    if kind == "Gather":
        nodes = [helper.make_node("Gather", ["emb.weight", "input_ids"], ["rows"], name="node_embedding")]
    else:
        nodes = [
            helper.make_node("Unsqueeze", ["input_ids", "axes"], ["idx"], name="unsq"),
            helper.make_node("GatherND", ["emb.weight", "idx"], ["rows"], name="node_gathernd"),
        ]
    nodes.append(helper.make_node("Add", ["rows", "one"], ["y"], name="add"))
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", C])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(model, ids):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"input_ids": ids})[0]


@pytest.mark.parametrize("kind", ["Gather", "GatherND"])
@pytest.mark.parametrize("bits", [8, 4])
def test_rewrite_matches_numpy_twin(kind, bits):
    model = gather_graph(kind)
    ids = np.array([0, 3, 5, 36, 5], np.int64)
    ref = run(model, ids)
    site = find_embedding(model)
    assert site is not None and site.weight == "emb.weight" and site.indices == "input_ids"
    quantize_embedding(model, site, bits, 32)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["GatherBlockQuantized", "Add"]  # the GatherND's Unsqueeze is gone with it
    assert "emb.weight" not in {t.name for t in model.graph.initializer}
    got = run(model, ids)
    q, scale = quantize_table(table(), bits, 32)
    np.testing.assert_allclose(got, dequantize_table(q, scale, bits, 32)[ids] + 1, rtol=0, atol=1e-6)
    assert np.abs(got - ref).max() < (0.02 if bits == 8 else 0.4) * np.abs(ref).max()


def test_a_table_read_twice_is_left_alone():
    model = gather_graph("Gather")
    model.graph.node.append(helper.make_node("Gather", ["emb.weight", "input_ids"], ["rows2"], name="second"))
    assert find_embedding(model) is None


def test_a_gather_of_something_else_is_not_the_embedding():
    model = gather_graph("Gather")  # its indices are input_ids, not the token input named here
    assert find_embedding(model, token_input="token_ids") is None


def test_found_in_exports(exported):
    for shape in [("7", 2, 64, 16, 301), ("4", 2, 64, 64, 301)]:
        _, out = exported(*shape)
        site = find_embedding(onnx.load(out / "model.onnx"))
        assert site is not None and site.indices == "input_ids"


def test_bad_block_size():
    model = gather_graph("Gather")
    with pytest.raises(ValueError, match="power-of-two block size"):
        quantize_embedding(model, find_embedding(model), 8, 48)
