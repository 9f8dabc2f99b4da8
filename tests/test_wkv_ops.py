"""Each WKV op in its three forms (torch custom op, onnxscript function run by ORT and by onnx's
ReferenceEvaluator, numpy twin) gives the same numbers, on several steps of a real recurrence."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from rwkv_edge.exporter import ops
from rwkv_edge.exporter.ops import DOMAIN, FUNCTIONS, NUMPY_TWINS, OPSET, attach_functions

B, H, N, C = 3, 2, 8, 16


def wkv7_inputs(rng):
    kk = rng.standard_normal((B, H, N)).astype(np.float32)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    gate = rng.uniform(0, 1, (B, H, N)).astype(np.float32)
    return {
        "state": rng.standard_normal((B, H, N, N)).astype(np.float32),
        "r": rng.standard_normal((B, H, N)).astype(np.float32),
        "w": rng.uniform(0.55, 1.0, (B, H, N)).astype(np.float32),
        "k": rng.standard_normal((B, H, N)).astype(np.float32),
        "v": rng.standard_normal((B, H, N)).astype(np.float32),
        "a": -kk,
        "b": kk * gate,
    }


def wkv4_inputs(rng):
    return {
        "k": rng.standard_normal((B, C)).astype(np.float32) * 3,
        "v": rng.standard_normal((B, C)).astype(np.float32),
        "a": rng.standard_normal((B, C)).astype(np.float32),
        "b": rng.uniform(0.1, 2, (B, C)).astype(np.float32),
        "p": np.concatenate([np.full((1, C), -1e38, np.float32), rng.standard_normal((B - 1, C)).astype(np.float32)]),
        "u": rng.standard_normal(C).astype(np.float32),
        "w": -np.exp(rng.uniform(-5, 2, C)).astype(np.float32),
    }


def wkv5_inputs(rng):
    # RWKV-6's per-token decay [B, H, N]; the v5.x cells pass a constant [H, N] (see the broadcast test)
    return {
        "state": rng.standard_normal((B, H, N, N)).astype(np.float32),
        "r": rng.standard_normal((B, H, N)).astype(np.float32),
        "k": rng.standard_normal((B, H, N)).astype(np.float32),
        "v": rng.standard_normal((B, H, N)).astype(np.float32),
        "w": np.exp(-np.exp(rng.uniform(-6, 1, (B, H, N)))).astype(np.float32),
        "u": rng.standard_normal((H, N)).astype(np.float32),
    }


SPEC = {
    "WKV7": (
        ops.wkv7,
        ["state", "r", "w", "k", "v", "a", "b"],
        ["y", "state_out"],
        wkv7_inputs,
        {"state": "state_out"},
    ),
    "WKV5": (ops.wkv5, ["state", "r", "k", "v", "w", "u"], ["y", "state_out"], wkv5_inputs, {"state": "state_out"}),
    "WKV4": (
        ops.wkv4,
        ["k", "v", "a", "b", "p", "u", "w"],
        ["wkv", "a_out", "b_out", "p_out"],
        wkv4_inputs,
        {"a": "a_out", "b": "b_out", "p": "p_out"},
    ),
}


OUTPUT_SHAPES = {
    "WKV7": lambda x: [x["r"].shape, x["state"].shape],
    "WKV4": lambda x: [x["k"].shape] * 4,
    "WKV5": lambda x: [x["r"].shape, x["state"].shape],
}


def single_node_model(name, inputs, outputs, example):
    node = helper.make_node(name, inputs, outputs, domain=DOMAIN)
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, example[n].shape) for n in inputs],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, OUTPUT_SHAPES[name](example)[i])
            for i, n in enumerate(outputs)
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return attach_functions(model, FUNCTIONS)


def run_steps(step, example, carry, steps=5):
    """Feed each step's state outputs back as inputs: the recurrence, not just one call."""
    x = dict(example)
    outs = None
    for _ in range(steps):
        outs = step(x)
        for i_name, o_name in carry.items():
            x[i_name] = outs[o_name]
    return outs


@pytest.mark.parametrize("name", ["WKV7", "WKV5", "WKV4"])
def test_three_forms_agree(name):
    torch_op, inputs, outputs, make, carry = SPEC[name]
    example = make(np.random.default_rng(0))
    model = single_node_model(name, inputs, outputs, example)
    onnx.checker.check_model(model)

    def torch_step(x):
        res = torch_op(*(torch.from_numpy(x[n]) for n in inputs))
        return {o: r.numpy() for o, r in zip(outputs, res)}

    def numpy_step(x):
        return dict(zip(outputs, NUMPY_TWINS[name](*(x[n] for n in inputs))))

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def ort_step(x):
        return dict(zip(outputs, session.run(outputs, {n: x[n] for n in inputs})))

    reference = ReferenceEvaluator(model)  # evaluates the model-local function body

    def ref_step(x):
        return dict(zip(outputs, reference.run(None, {n: x[n] for n in inputs})))

    class Twin(OpRun):  # the numpy twin as a kernel of the ReferenceEvaluator
        op_domain = DOMAIN

        def _run(self, *args):
            return tuple(NUMPY_TWINS[name](*args))

    Twin.__name__ = name
    twin_eval = ReferenceEvaluator(model, new_ops=[Twin])

    def twin_step(x):
        return dict(zip(outputs, twin_eval.run(None, {n: x[n] for n in inputs})))

    expected = run_steps(torch_step, example, carry)
    for label, step in [("numpy", numpy_step), ("ort", ort_step), ("reference", ref_step), ("twin-kernel", twin_step)]:
        got = run_steps(step, example, carry)
        for o in outputs:
            assert np.all(np.isfinite(got[o])), (label, o)
            np.testing.assert_allclose(got[o], expected[o], rtol=1e-5, atol=1e-5, err_msg=f"{name} {label} {o}")


def test_wkv4_first_token_ignores_minus_infinity_exponent():
    """p = -1e38 (the init) means 'no history': the first token's wkv is exactly its own value,
    whatever a and b hold, and the new exponent is finite."""
    x = wkv4_inputs(np.random.default_rng(1))
    wkv, a_out, b_out, p_out = NUMPY_TWINS["WKV4"](*(x[n] for n in SPEC["WKV4"][1]))
    np.testing.assert_array_equal(wkv[0], x["v"][0])
    assert np.all(np.isfinite(p_out[0])) and np.all(p_out[0] > -1e30)


def test_wkv5_constant_decay_broadcasts_over_the_batch():
    """RWKV-5.x passes one decay per head/channel, [H, N]: every form must read it as that decay for every row."""
    x = wkv5_inputs(np.random.default_rng(2))
    w_const = x["w"][0]  # [H, N]
    full = dict(x, w=np.broadcast_to(w_const, x["w"].shape).copy())
    expected = NUMPY_TWINS["WKV5"](*(full[n] for n in SPEC["WKV5"][1]))
    const = dict(x, w=w_const)
    got_numpy = NUMPY_TWINS["WKV5"](*(const[n] for n in SPEC["WKV5"][1]))
    got_torch = [t.numpy() for t in ops.wkv5(*(torch.from_numpy(const[n]) for n in SPEC["WKV5"][1]))]
    model = single_node_model("WKV5", SPEC["WKV5"][1], SPEC["WKV5"][2], const)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_ort = session.run(None, const)
    for got in (got_numpy, got_torch, got_ort):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_wkv5_matches_the_rwkv_package_step():
    """The op is the package's att_one_v5_1 recurrence: a = k @ v; out = r @ (u * a + s); s = a + w * s,
    with its [H, key, value] state and its [H, N, 1] shaped w and u."""
    x = wkv5_inputs(np.random.default_rng(4))
    t = {n: torch.from_numpy(a[0]) for n, a in x.items() if n != "u"}  # batch row 0
    u = torch.from_numpy(x["u"])
    a = t["k"].view(H, N, 1) @ t["v"].view(H, 1, N)
    out = (t["r"].view(H, 1, N) @ (u.view(H, N, 1) * a + t["state"])).view(H, N)
    s = a + t["w"].view(H, N, 1) * t["state"]
    y, s_ours = NUMPY_TWINS["WKV5"](*(x[n] for n in SPEC["WKV5"][1]))
    np.testing.assert_allclose(y[0], out.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_ours[0], s.numpy(), rtol=1e-6, atol=1e-6)


def test_attach_functions_refuses_unknown_op():
    node = helper.make_node("WKV9", ["x"], ["y"], domain=DOMAIN)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ValueError, match="WKV9"):
        attach_functions(helper.make_model(graph), FUNCTIONS)
