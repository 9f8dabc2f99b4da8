"""A step graph's weight-reading kernels alone, as a graph ONNX Runtime can time (the bench's "kernels" columns).

Every node that reads a weight matrix or table is cut out with its initializers and fed fixed inputs of batch 1:
MatMul, Gemm, MatMulNBits and MatMulInteger with an initializer operand, Gather and GatherBlockQuantized of an
initializer table (one row). Everything else of the step is left out: norms, token shift, activations, the WKV
recurrence and its state. Timed, it is what ONNX Runtime's kernels reach on this machine reading the step's bytes
with nothing else in the way; between the bandwidth floor and the decode time, it tells how much of the gap the
kernels cost and how much the rest of the graph does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from rwkv_edge.common.timing import median_ms, time_calls

# op -> index of the weight (initializer) operand that makes the node one of the step's weight readers
WEIGHT_OPERAND = {"MatMul": 1, "Gemm": 1, "MatMulNBits": 1, "MatMulInteger": 1, "Gather": 0, "GatherBlockQuantized": 0}


def weight_kernels_graph(path: Path) -> onnx.ModelProto:
    """The weight readers of the graph at `path`, their initializers left external (ORT reads them from the
    graph's folder). Raises ValueError if the graph has none."""
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    declared = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]}
    nodes, inputs, outputs = [], [], []
    for node in graph.node:
        at = WEIGHT_OPERAND.get(node.op_type)
        if (
            at is None
            or at >= len(node.input)
            or node.input[at] not in initializers
            or len(initializers[node.input[at]].dims) < 2
        ):
            continue
        kept = onnx.NodeProto()
        kept.CopyFrom(node)
        for i, name in enumerate(node.input):
            if name == "" or name in initializers:
                continue
            fed = f"fed_{len(inputs)}"
            kept.input[i] = fed
            dtype, shape = _operand(node, i, initializers, declared)
            inputs.append(helper.make_tensor_value_info(fed, dtype, shape))
        del kept.output[1:]  # only the result: optional outputs (none used here) would need types
        outputs.append(helper.make_tensor_value_info(kept.output[0], _result_type(node, initializers), None))
        nodes.append(kept)
    if not nodes:
        raise ValueError(f"{path.name}: no node reads a weight matrix")
    used = {name for n in nodes for name in n.input}
    cut = helper.make_graph(nodes, "weight_kernels", inputs, outputs, [t for t in graph.initializer if t.name in used])
    return helper.make_model(cut, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _operand(node: onnx.NodeProto, i: int, initializers: dict, declared: dict) -> tuple[int, list[int]]:
    """Type and batch-1 shape of the non-weight input `i` of a weight reader."""
    weight = initializers[node.input[WEIGHT_OPERAND[node.op_type]]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Gather", "GatherBlockQuantized"):  # the token ids
        return declared.get(node.input[i], TensorProto.INT64), [1]
    if node.op_type == "MatMulInteger":  # quantized activations, or their zero point (a scalar)
        return TensorProto.UINT8, ([1, weight.dims[0]] if i == 0 else [])
    if node.op_type == "MatMulNBits":  # activations of the scales' type
        return initializers[node.input[2]].data_type, [1, int(attrs["K"])]
    k = weight.dims[1] if node.op_type == "Gemm" and attrs.get("transB", 0) else weight.dims[0]
    return weight.data_type, [1, k]


def _result_type(node: onnx.NodeProto, initializers: dict) -> int:
    if node.op_type == "MatMulInteger":
        return TensorProto.INT32
    if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
        return initializers[node.input[2]].data_type
    return initializers[node.input[WEIGHT_OPERAND[node.op_type]]].data_type


class KernelProbe:
    """weight_kernels_graph of a step graph in its own session, with the runtime's threads and spinning; ms()
    times one run of all its kernels. It holds the weights once more while it lives (ORT packs its own copy)."""

    def __init__(self, path: Path, threads: int, spinning: bool = True):
        import onnxruntime as ort

        model = weight_kernels_graph(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(Path(path).parent))
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.feeds = {}
        for arg in self.session.get_inputs():
            dtype = _NUMPY.get(arg.type, np.float32)
            shape = [d if isinstance(d, int) else 1 for d in arg.shape]
            if np.issubdtype(dtype, np.integer):
                self.feeds[arg.name] = np.zeros(shape, dtype)  # token 0 / zero points
            else:
                self.feeds[arg.name] = (rng.standard_normal(shape) * 0.1).astype(dtype)
        self.session.run(None, self.feeds)  # warm-up: first-run allocations

    def ms(self, runs: int = 5) -> float:
        """Median ms of `runs` runs, after two untimed ones: the first runs after a pause or the bandwidth probe
        are slow (docs/performance.md)."""
        return median_ms(time_calls(self.run, runs, untimed=2))

    def run(self) -> None:
        self.session.run(None, self.feeds)


_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}
