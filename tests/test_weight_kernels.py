"""The bench's kernels-alone graph (exporter/weight_kernels.py): exactly the step's weight readers, computing what
they compute in the step, with nothing else of the step in it."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rwkv_edge.measure.weight_kernels import KernelProbe, weight_kernels_graph


def test_cut_holds_every_weight_reader_and_computes_the_same(exported):
    _, out = exported("7", 2, 64, 16, 301)
    source = onnx.load(out / "model.onnx")
    weights = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    matrices = {n for n, w in weights.items() if w.ndim == 2}
    readers = sorted(
        (n.op_type, n.input[1] if n.op_type == "MatMul" else n.input[0])
        for n in source.graph.node
        if n.op_type in ("MatMul", "Gather") and set(n.input) & matrices
    )
    assert len(readers) > 2 * 8  # per layer: r, k, v, output, the low-rank pairs, ffn key and value; head; embedding

    cut = weight_kernels_graph(out / "model.onnx")
    assert sorted((n.op_type, n.input[1] if n.op_type == "MatMul" else n.input[0]) for n in cut.graph.node) == readers
    assert not {n.op_type for n in cut.graph.node} - {"MatMul", "Gather"}  # no norm, no WKV, no elementwise op
    assert not cut.functions

    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(out))
    session = ort.InferenceSession(cut.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        a.name: (
            np.array([7], np.int64) if a.type == "tensor(int64)" else rng.standard_normal(a.shape).astype(np.float32)
        )
        for a in session.get_inputs()
    }
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for node in cut.graph.node:
        if node.op_type == "MatMul":
            np.testing.assert_allclose(
                results[node.output[0]], feeds[node.input[0]] @ weights[node.input[1]], rtol=1e-4, atol=1e-5
            )
        else:
            np.testing.assert_array_equal(results[node.output[0]], weights[node.input[0]][[7]])


@pytest.mark.parametrize(
    "scheme, op", [("int8", "MatMulNBits"), ("int8-dynamic", "MatMulInteger"), ("int4", "MatMulNBits")]
)
def test_kernel_probe_runs_quantized_graphs(exported, tmp_path, scheme, op):
    from rwkv_edge.quant.pipeline import quantize_export

    _, out = exported("7", 2, 64, 16, 301)
    shutil.copytree(out, tmp_path / "export")
    quantize_export(tmp_path / "export", scheme, block_size=32)
    graph = tmp_path / "export" / f"model.{scheme}.onnx"  # each scheme is its own precision
    q = onnx.load(graph)
    cut = weight_kernels_graph(graph)
    assert sum(n.op_type == op for n in cut.graph.node) == sum(n.op_type == op for n in q.graph.node) > 0
    assert [n.op_type for n in cut.graph.node].count("GatherBlockQuantized") == 1  # the int8 embedding
    # ms, not seconds or microseconds: no ORT run takes a microsecond, and a tiny model's kernels take far below 0.1 s
    assert 1e-3 < KernelProbe(graph, threads=1).ms(runs=2) < 100
