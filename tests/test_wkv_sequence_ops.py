"""rwkv::WKV4Seq / WKV5Seq / WKV7Seq (ops/sequence.py): the model-local function (a Scan over time behind a
one-token fast path; run by ONNX Runtime, and its one-token branch by onnx's ReferenceEvaluator), the torch custom op
and the numpy twin agree, at several tokens and at one, and equal stepping the one-step op token by token."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from rwkv_edge.exporter.ops import NUMPY_TWINS, sequence

B, T, H, N, C = 2, 5, 3, 4, 7


def inputs(name: str, T: int = T) -> list[np.ndarray]:
    rng = np.random.default_rng(0)

    def f(*s):
        return rng.standard_normal(s).astype(np.float32)

    def decay(*s):
        return rng.uniform(0.5, 1.0, s).astype(np.float32)

    return {
        "WKV7Seq": lambda: [
            f(B, H, N, N),
            f(B, T, H, N),
            decay(B, T, H, N),
            f(B, T, H, N),
            f(B, T, H, N),
            f(B, T, H, N) * 0.1,
            f(B, T, H, N) * 0.1,
        ],
        "WKV5Seq": lambda: [f(B, H, N, N), f(B, T, H, N), f(B, T, H, N), f(B, T, H, N), decay(B, T, H, N), f(H, N)],
        "WKV4Seq": lambda: [f(B, T, C), f(B, T, C), f(B, C), np.abs(f(B, C)), f(B, C), f(C), -np.abs(f(C))],
    }[name]()


def run_one_token_branch(name: str, args: list[np.ndarray]) -> list[np.ndarray]:
    """The function's one-token branch as a graph of its own, under onnx's ReferenceEvaluator (which cannot even
    build a Scan over axis 1, so it cannot take the whole function)."""
    fn = sequence.FUNCTIONS[name]
    branch = fn.node[-1]
    one = next(a.g for a in branch.attribute if a.name == "then_branch")
    constants = [n for n in fn.node if n.op_type == "Constant"]
    graph = helper.make_graph(
        constants + list(one.node),
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * a.ndim) for n, a in zip(fn.input, args)],
        list(one.output),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ReferenceEvaluator(model).run(None, dict(zip(fn.input, args)))


def run_function(name: str, args: list[np.ndarray]) -> list[np.ndarray]:
    fn = sequence.FUNCTIONS[name]
    expected = NUMPY_TWINS[name](*args)
    graph = helper.make_graph(
        [helper.make_node(name, list(fn.input), [o + "_" for o in fn.output], domain="rwkv")],
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * a.ndim) for n, a in zip(fn.input, args)],
        [
            helper.make_tensor_value_info(o + "_", TensorProto.FLOAT, [None] * e.ndim)
            for o, e in zip(fn.output, expected)
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("rwkv", 1)], functions=[fn]
    )
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(fn.input, args)))


@pytest.mark.parametrize("T", [T, 1], ids=["scan", "one-token"])
@pytest.mark.parametrize("name", ["WKV4Seq", "WKV5Seq", "WKV7Seq"])
def test_three_forms_agree_and_equal_stepping(name, T):
    args = inputs(name, T)
    twin = NUMPY_TWINS[name](*args)
    onnx_out = run_function(name, args)
    reference_out = run_one_token_branch(name, args) if T == 1 else twin  # ORT takes the whole function
    torch_op = {"WKV4Seq": sequence.wkv4_seq, "WKV5Seq": sequence.wkv5_seq, "WKV7Seq": sequence.wkv7_seq}[name]
    torch_out = [t.numpy() for t in torch_op(*map(torch.from_numpy, args))]
    assert onnx_out[0].shape[:2] == (B, T)  # per-token outputs keep the time axis at 1
    for got_onnx, got_reference, got_torch, ref in zip(onnx_out, reference_out, torch_out, twin):
        assert got_onnx.shape == got_reference.shape == ref.shape
        np.testing.assert_allclose(got_onnx, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_reference, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_torch, ref, rtol=1e-5, atol=1e-5)

    # the sequence twin is the step twin applied token by token
    step = NUMPY_TWINS[name.removesuffix("Seq")]
    per_token = {"WKV4Seq": [0, 1], "WKV5Seq": [1, 2, 3, 4], "WKV7Seq": [1, 2, 3, 4, 5, 6]}[name]
    values = list(args)
    ys = []
    for t in range(T):
        out = step(*[args[i][:, t] if i in per_token else values[i] for i in range(len(args))])
        ys.append(out[0])
        if name == "WKV4Seq":
            values[2], values[3], values[4] = out[1:]
        else:
            values[0] = out[1]
    np.testing.assert_allclose(np.stack(ys, 1), twin[0], rtol=1e-6, atol=1e-6)


def test_scan_body_is_the_step_function():
    """The Scan body and the one-token branch hold the step op's own nodes (no second copy of the math to keep in
    sync)."""
    from rwkv_edge.exporter.ops import FUNCTIONS

    for name in ("WKV4", "WKV5"):
        branch = FUNCTIONS[name + "Seq"].node[-1]
        assert branch.op_type == "If"
        one, many = (next(a.g for a in branch.attribute if a.name == n) for n in ("then_branch", "else_branch"))
        (scan,) = many.node
        assert scan.op_type == "Scan"
        body = next(a.g for a in scan.attribute if a.name == "body")
        step_ops = [n.op_type for n in FUNCTIONS[name].node]
        assert [n.op_type for n in body.node if n.op_type != "Identity"] == step_ops
        assert [n.op_type for n in one.node if n.op_type not in ("Squeeze", "Unsqueeze")] == [
            o for o in step_ops if o not in ("Squeeze", "Unsqueeze")
        ]


def test_wkv7_one_token_branch_is_the_step_function_and_many_tokens_go_in_chunks():
    """WKV7Seq's one-token branch holds the step op's own nodes; over more tokens it runs chunks of CHUNK tokens
    (exporter/ops/wkv7_chunked.py) in a Scan, not the step's nodes token by token."""
    from rwkv_edge.exporter.ops import FUNCTIONS
    from rwkv_edge.exporter.ops.wkv7_chunked import CHUNK

    branch = FUNCTIONS["WKV7Seq"].node[-1]
    one, many = (next(a.g for a in branch.attribute if a.name == n) for n in ("then_branch", "else_branch"))
    step_ops = [n.op_type for n in FUNCTIONS["WKV7"].node]
    assert [n.op_type for n in one.node if n.op_type not in ("Squeeze", "Unsqueeze")] == [
        o for o in step_ops if o not in ("Squeeze", "Unsqueeze")
    ]
    (scan,) = [n for n in many.node if n.op_type == "Scan"]
    body = next(a.g for a in scan.attribute if a.name == "body")
    assert "MatMul" in {n.op_type for n in body.node} and CHUNK >= 16


@pytest.mark.parametrize("T", [2, 3, 16, 31, 32, 33, 70, 100])
def test_wkv7_chunks_equal_stepping_across_chunk_boundaries(T):
    """One chunk of its own length (T < CHUNK), whole chunks, a partial last one (padded with tokens that keep the
    state), and several chunks in a row:
    outputs and state as the per-token loop's, within float32 rounding."""
    rng = np.random.default_rng(T)

    def f(*s):
        return rng.standard_normal(s).astype(np.float32)

    kk = f(B, T, H, N)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    gate = 1 / (1 + np.exp(-f(B, T, H, N)))
    w = np.exp(-0.606531 / (1 + np.exp(-f(B, T, H, N)))).astype(np.float32)  # RWKV-7's decay range
    args = [f(B, H, N, N), f(B, T, H, N), w, f(B, T, H, N), f(B, T, H, N), -kk, (kk * gate).astype(np.float32)]
    y, state = run_function("WKV7Seq", args)
    ref_y, ref_state = NUMPY_TWINS["WKV7Seq"](*[a.astype(np.float64) for a in args])
    assert y.shape == (B, T, H, N) and state.shape == (B, H, N, N)
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=2e-5 * np.abs(ref_y).max())
    np.testing.assert_allclose(state, ref_state, rtol=0, atol=2e-5 * np.abs(ref_state).max())
