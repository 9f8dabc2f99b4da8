"""quant/weight_only.py and quant/dynamic.py: the planned MatMuls (and only those) become MatMulNBits /
MatMulInteger, with the attributes the quantization policy asks for (docs/quantization.md), and compute what the
float MatMul computed."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.quant.dynamic import quantize_dynamic_int8
from rwkv_edge.quant.policy import Site
from rwkv_edge.quant.weight_only import quantize_weight_only

K, N = 256, 96


def chain() -> onnx.ModelProto:
    """x [batch, K] -> relu(x @ A) @ B... two MatMuls with constant weights: 'first' [K, K], 'second' [K, N]."""
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(K, K)) / np.sqrt(K)).astype(np.float32)
    b = (rng.normal(size=(K, N)) / np.sqrt(K)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "B"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def sites(bits_first, bits_second):
    out = []
    if bits_first:
        out.append(Site("first", "A", "matrix", bits_first, (K, K)))
    if bits_second:
        out.append(Site("second", "B", "head", bits_second, (K, N)))
    return out


X = np.random.default_rng(1).normal(size=(3, K)).astype(np.float32)


@pytest.mark.parametrize("bits, block, tol", [(8, 32, 0.02), (8, 128, 0.02), (4, 32, 0.15), (4, 128, 0.2)])
def test_matmulnbits(bits, block, tol):
    model = chain()
    ref = run(model, X)
    q = quantize_weight_only(model, sites(bits, bits), block)
    nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    assert [n.name for n in nbits] == ["first_Q" + str(bits), "second_Q" + str(bits)]
    for n in nbits:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert n.domain == "com.microsoft"
        assert attrs["bits"] == bits and attrs["block_size"] == block and attrs["accuracy_level"] == 4
    assert {"A", "B"}.isdisjoint(t.name for t in q.graph.initializer)  # no float copy left behind
    assert not any(n.input[-1].endswith("zero_points") for n in nbits)  # symmetric
    got = run(q, X)
    assert np.abs(got - ref).max() / np.abs(ref).max() < tol


def test_only_planned_nodes_and_mixed_bits():
    model = chain()
    q = quantize_weight_only(model, sites(None, 8), 32)
    assert [n.op_type for n in q.graph.node] == ["MatMul", "Relu", "MatMulNBits"]
    model = chain()
    q = quantize_weight_only(model, sites(4, 8), 32)
    bits = {
        n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}["bits"]
        for n in q.graph.node
        if n.op_type == "MatMulNBits"
    }
    assert bits == {"first_Q4": 4, "second_Q8": 8}


def test_dynamic_int8():
    model = chain()
    ref = run(model, X)
    q = quantize_dynamic_int8(model, sites(8, 8))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulInteger") == 2 and "DynamicQuantizeLinear" in ops and "MatMul" not in ops
    got = run(q, X)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.05
    with pytest.raises(ValueError, match="int8 only"):
        quantize_dynamic_int8(chain(), sites(4, None))


def test_block_fits_k():
    from rwkv_edge.quant.weight_only import fit_block

    assert fit_block(768, 128) == 128 and fit_block(3072, 32) == 32
    assert fit_block(96, 128) == 32  # the default model's width: no padding
    assert fit_block(32, 128) == 32  # a rank-32 low-rank factor
    assert fit_block(301, 64) == 16  # nothing divides: the smallest block, padded
    model = chain()  # K = 256: block 128 fits; the head-like [K, N] too
    q = quantize_weight_only(model, sites(8, 8), 128)
    blocks = [
        {a.name: helper.get_attribute_value(a) for a in n.attribute}["block_size"]
        for n in q.graph.node
        if n.op_type == "MatMulNBits"
    ]
    assert blocks == [128, 128]
