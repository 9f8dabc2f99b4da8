"""quant/functions.py: what a quantizer drops (the WKV function, the rwkv opset import) comes back from the fp32
model, and a quantizer that broke the WKV nodes or the graph I/O is caught."""

import copy

import onnx
import pytest

from rwkv_edge.quant.functions import check_contract, restore_contract
from rwkv_edge.runtime.errors import RWKVEdgeError


@pytest.fixture(scope="module")
def original(exported):
    _, out = exported("7", 2, 64, 16, 301)
    return onnx.load(out / "model.onnx")


def test_dropped_function_and_opset_come_back(original):
    q = copy.deepcopy(original)
    del q.functions[:]
    keep = [o for o in q.opset_import if o.domain != "rwkv"]
    del q.opset_import[:]
    q.opset_import.extend(keep)
    restore_contract(q, original)
    assert [(f.domain, f.name) for f in q.functions] == [("rwkv", "WKV7")]
    assert {o.domain: o.version for o in q.opset_import}["rwkv"] == 1
    onnx.checker.check_model(q)


def test_changed_function_is_replaced(original):
    q = copy.deepcopy(original)
    del q.functions[0].node[-1]
    restore_contract(q, original)
    assert q.functions[0] == original.functions[0]


def test_lost_wkv_node_is_caught(original):
    q = copy.deepcopy(original)
    wkv = next(n for n in q.graph.node if n.domain == "rwkv")
    q.graph.node.remove(wkv)
    with pytest.raises(RWKVEdgeError, match="changed the WKV nodes: expected 2 rwkv::WKV7, found 1"):
        check_contract(q, original)


def test_changed_graph_io_is_caught(original):
    q = copy.deepcopy(original)
    q.graph.output[0].name = "renamed"
    with pytest.raises(RWKVEdgeError, match="changed the graph outputs"):
        check_contract(q, original)
