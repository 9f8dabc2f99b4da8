"""deploy/backends.py: the needs read from an ONNX graph (custom-domain nodes with their bit widths, the tabled
standard ops, float16, at any depth, the model's own functions left out), the one table that turns them into
backends, and the needs and backends that export and quantize write into rwkv.json."""

import json
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.deploy.backends import BACKENDS, TABLE, backends_for, file_needs, graph_needs
from rwkv_edge.quant.pipeline import quantize_export
from rwkv_edge.runtime.manifest import Architecture, GraphSpec, Manifest, StateSpec, TokenizerSpec, load_manifest

V7 = ("7", 2, 64, 16, 301)


def model_of(nodes, *, functions=(), initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=list(initializers),
    )
    return helper.make_model(graph, functions=list(functions))


def custom(op: str, domain: str = "com.microsoft", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ["x"], ["y"], domain=domain, **attrs)


def test_quantized_ops_are_named_with_their_bits():
    model = model_of(
        [
            custom("MatMulNBits", bits=8, block_size=32),
            custom("MatMulNBits", bits=4, block_size=32),
            custom("MatMulNBits", block_size=32),  # bits left out: ONNX Runtime's default, 4
            custom("GatherBlockQuantized", bits=8),
            custom("FusedMatMul"),
        ]
    )
    assert graph_needs(model) == [
        "com.microsoft.FusedMatMul",
        "com.microsoft.GatherBlockQuantized:bits=8",
        "com.microsoft.MatMulNBits:bits=4",
        "com.microsoft.MatMulNBits:bits=8",
    ]


def test_standard_onnx_and_the_models_own_functions_need_nothing():
    body = helper.make_function("rwkv", "WKV7", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])], [])
    model = model_of(
        [helper.make_node("MatMul", ["x", "x"], ["m"]), custom("WKV7", domain="rwkv")],
        functions=[body],
    )
    assert graph_needs(model) == []
    assert graph_needs(model_of([custom("WKV9", domain="rwkv")])) == ["rwkv.WKV9"]  # no body: a kernel it needs


def test_needs_are_found_in_subgraphs_and_function_bodies():
    branch = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "x"], ["y"])], "b", [], [helper.make_tensor_value_info("y", 6, [])]
    )
    cond = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    body = helper.make_function(
        "rwkv", "Op", ["x"], ["y"], [custom("GatherBlockQuantized", bits=8)], [helper.make_opsetid("", 18)]
    )
    model = model_of([cond, custom("Op", domain="rwkv")], functions=[body])
    assert graph_needs(model) == ["ai.onnx.MatMulInteger", "com.microsoft.GatherBlockQuantized:bits=8"]


def test_float16_compute_is_a_need():
    cast = helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16)
    assert graph_needs(model_of([cast])) == ["float16"]
    weight = numpy_helper.from_array(np.zeros(4, np.float16), "w")
    assert graph_needs(model_of([helper.make_node("Identity", ["x"], ["y"])], initializers=[weight])) == ["float16"]
    assert graph_needs(model_of([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)])) == []


def test_the_table_turns_needs_into_backends():
    assert backends_for([]) == list(BACKENDS)
    assert backends_for(["com.microsoft.MatMulNBits:bits=8"]) == ["cpu", "cuda", "node", "wasm", "webgpu"]
    assert "webgpu-jsep" in backends_for(["com.microsoft.GatherBlockQuantized:bits=8"])
    assert backends_for(["float16"]) == ["cpu", "cuda", "node", "wasm"]
    assert backends_for(["com.example.Unheard"]) == []  # known to run nowhere until the table says otherwise
    assert backends_for(["float16", "ai.onnx.MatMulInteger"]) == ["cpu", "cuda", "node", "wasm"]
    assert all(set(b) <= set(BACKENDS) for b in TABLE.values())


def test_export_and_quantize_write_needs_and_backends(exported, tmp_path):
    _, source = exported(*V7)
    out = tmp_path / "export"
    shutil.copytree(source, out)
    fp32 = json.loads((out / "rwkv.json").read_text())["graphs"][0]
    assert fp32["needs"] == [] and fp32["backends"] == list(BACKENDS)
    expected = {
        "int8": ["com.microsoft.GatherBlockQuantized:bits=8", "com.microsoft.MatMulNBits:bits=8"],
        "int8-dynamic": [
            "ai.onnx.DynamicQuantizeLinear",
            "ai.onnx.MatMulInteger",
            "com.microsoft.GatherBlockQuantized:bits=8",
        ],
        "int8-rowwise": ["com.microsoft.GatherBlockQuantized:bits=8", "com.microsoft.MatMulIntegerToFloat"],
        "int4": [
            "com.microsoft.GatherBlockQuantized:bits=8",
            "com.microsoft.MatMulNBits:bits=4",
            "com.microsoft.MatMulNBits:bits=8",  # the head and low-rank factors stay 8-bit
        ],
        "fp16": ["float16"],
    }
    for scheme in expected:
        quantize_export(out, scheme, block_size=32)
    graphs = {g.precision: g for g in load_manifest(out).graphs}
    for precision, needs in expected.items():
        g = graphs[precision]
        assert g.needs == needs == file_needs(out / g.file), precision
        assert set(needs) <= set(TABLE), precision  # every need the quantizer makes is in the table
        assert g.backends == backends_for(needs) and "cpu" in g.backends and g.ort is None
    assert "webgpu-jsep" not in graphs["int8"].backends and "webgpu" not in graphs["fp16"].backends


def test_unset_fields_stay_out_of_rwkv_json():
    bare = GraphSpec("model.onnx", "step", "fp32")
    assert {"needs", "backends", "ort"}.isdisjoint(json.loads(_one_graph_manifest(bare))["graphs"][0])
    listed = GraphSpec("model.onnx", "step", "fp32", needs=[], backends=["cpu"], ort="model.ort")
    written = json.loads(_one_graph_manifest(listed))["graphs"][0]
    assert (written["needs"], written["backends"], written["ort"]) == ([], ["cpu"], "model.ort")
    assert hash(listed) == hash(GraphSpec("model.onnx", "step", "fp32", ort="model.ort"))  # lists left out


def _one_graph_manifest(graph: GraphSpec) -> str:
    return Manifest(
        Architecture("7", 1, 4, 1, 4, 16, 16),
        TokenizerSpec("bytes"),
        [graph],
        [StateSpec("att_x", "att_x", "att_x_out", ["batch", 1, 4])],
    ).to_json()
