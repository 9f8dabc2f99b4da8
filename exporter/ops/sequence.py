"""The sequence twins of the WKV ops: rwkv::WKV4Seq, rwkv::WKV5Seq, rwkv::WKV7Seq run the one-step recurrence
over a time axis, for the prefill (sequence) graph. Three forms each, as for the step ops, that tests hold equal:
a torch custom op (an eager loop over time), a model-local ONNX function (a `Scan` whose body is the step op's
own function body, behind a one-token fast path), and a numpy twin (a loop over the step op's twin).

Every input that a step op takes per token gains a time axis at position 1 ([B, C] -> [B, T, C],
[B, H, N] -> [B, T, H, N]); the state inputs keep their shape and come out after the last token; per-token
outputs (y, wkv) gain the same time axis. Constant inputs (WKV4's u and w, WKV5's u) ride the Scan as loop-carried
values returned unchanged, so the Scan body reads nothing from an outer scope.

The onnxscript front end has no syntax for Scan, so the functions are built here with onnx.helper from each step
function: the body graph is the step function's nodes (names prefixed, so nothing shadows the outer scope).

A one-token call (decoding through the sequence graph, so that one ONNX Runtime session serves prefill and decode
and packs each weight once) skips the Scan: the function is If(seq == 1, the step function's nodes on the inputs
squeezed at axis 1, the Scan). WKV7Seq's many-token branch is its own (a spec's `many`): a Scan over chunks of
tokens, each chunk's recurrence as batched matmuls (exporter/ops/wkv7_chunked.py). The one-token branch costs
decode less than a Scan of one token (see docs/performance.md; WKV5 gains nothing, and keeps it for uniformity).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from .domain import DOMAIN, OPSET, register_schema, renamed_nodes, rwkv_opset
from .wkv4 import WKV4, wkv4, wkv4_numpy
from .wkv5 import WKV5, wkv5, wkv5_numpy
from .wkv7 import WKV7, wkv7, wkv7_numpy
from .wkv7_chunked import chunked_graph

# For each sequence op: the step op's function, its inputs that are carried state (with the step output that
# carries them on), the constant carried inputs, the inputs scanned over time, and the per-token outputs.
# Inputs and outputs keep the step op's names and order.
# `rank`: each input's rank in the sequence op (a scanned input's per-token slice has one less), and the rank of
# one token's slice of the per-token outputs (the Scan body's types need a rank to pass onnx's checker).
# `many` (optional): builds the If's many-token branch in place of the Scan over the step function's nodes.
SPECS = {
    "WKV4Seq": dict(
        step=WKV4,
        carried={"a": "a_out", "b": "b_out", "p": "q2"},
        constant=["u", "w"],
        scanned=["k", "v"],
        per_token=["wkv"],
        rank=dict(k=3, v=3, a=2, b=2, p=2, u=1, w=1, wkv=2),
    ),
    "WKV5Seq": dict(
        step=WKV5,
        carried={"state": "s"},
        constant=["u"],
        scanned=["r", "k", "v", "w"],
        per_token=["y"],
        rank=dict(state=4, r=4, k=4, v=4, w=4, u=2, y=3),
    ),
    "WKV7Seq": dict(
        step=WKV7,
        carried={"state": "s"},
        constant=[],
        scanned=["r", "w", "k", "v", "a", "b"],
        per_token=["y"],
        rank=dict(state=4, r=4, w=4, k=4, v=4, a=4, b=4, y=3),
        many=chunked_graph,
    ),
}


def _typed(n: str, r: int) -> onnx.ValueInfoProto:
    """float of rank r, every dim symbolic (subgraph types need a rank to pass onnx's checker)"""
    return helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [f"{n}_d{i}" for i in range(r)])


def _sequence_function(
    name: str, step, carried: dict, constant: list, scanned: list, per_token: list, rank: dict, many=None
) -> onnx.FunctionProto:
    """If(seq == 1, one token through the step nodes, the Scan (or `many`'s branch)), the If's outputs being the
    function's."""
    fn = step.to_function_proto()
    inputs, outputs = list(fn.input), list(fn.output)
    missing = (set(carried) | set(constant) | set(scanned)) ^ set(inputs)
    if missing or set(carried.values()) | set(per_token) != set(outputs):
        raise ValueError(f"{name}: spec does not match {fn.name}({inputs}) -> {outputs}")
    out_rank = {o: rank[n] for n, o in carried.items()} | {o: rank[o] + 1 for o in per_token}
    if many is not None:
        many = many(name, next(iter(carried)), scanned, outputs, _typed)  # the state, the one carried input
    else:
        scan = _scan_node(name, fn, carried, constant, scanned, per_token, rank, prefix="many_")
        many = helper.make_graph([scan], f"{name}_many", [], [_typed("many_" + o, out_rank[o]) for o in outputs])
    one = _one_token_graph(name, fn, scanned, per_token, out_rank)
    int64 = onnx.TensorProto.INT64
    nodes = [
        helper.make_node("Constant", [], ["seq_axis"], value=helper.make_tensor("seq_axis", int64, [1], [1])),
        helper.make_node("Shape", [scanned[0]], ["seq_len"], start=1, end=2),  # [1]: every scanned input has it
        helper.make_node("Equal", ["seq_len", "seq_axis"], ["one_token"]),  # seq_axis is also the number 1
        helper.make_node("If", ["one_token"], outputs, then_branch=one, else_branch=many),
    ]
    return helper.make_function(DOMAIN, name, inputs, outputs, nodes, opset_imports=[helper.make_opsetid("", OPSET)])


def _one_token_graph(
    name: str, fn: onnx.FunctionProto, scanned: list, per_token: list, out_rank: dict
) -> onnx.GraphProto:
    """The If's then-branch: the step function's nodes on the scanned inputs squeezed at axis 1 (the others read
    from the outer scope as they are); per-token outputs unsqueezed back to [B, 1, ...]."""
    outer = set(fn.input) - set(scanned)

    def ren(n):
        return n if not n or n in outer else "one_" + n

    nodes = [helper.make_node("Squeeze", [s, "seq_axis"], [ren(s)]) for s in scanned] + renamed_nodes(fn.node, ren)
    results = []
    for o in fn.output:
        if o in per_token:
            nodes.append(helper.make_node("Unsqueeze", [ren(o), "seq_axis"], [ren(o) + "_seq"]))
        results.append(_typed(ren(o) + "_seq" if o in per_token else ren(o), out_rank[o]))
    return helper.make_graph(nodes, f"{name}_one", [], results)


def _scan_node(
    name: str,
    fn: onnx.FunctionProto,
    carried: dict,
    constant: list,
    scanned: list,
    per_token: list,
    rank: dict,
    prefix: str,
) -> onnx.NodeProto:
    """The Scan over time (the If's else-branch), its outputs named `prefix` + the function's outputs."""

    def ren(n):  # "" marks an omitted optional input
        return "body_" + n if n else n

    body_nodes = renamed_nodes(fn.node, ren)
    state_in = list(carried) + constant
    state_out = [ren(carried[n]) for n in carried]
    for c in constant:  # carried unchanged
        body_nodes.append(helper.make_node("Identity", [ren(c)], [ren(c) + "_next"]))
        state_out.append(ren(c) + "_next")
    body = helper.make_graph(
        body_nodes,
        f"{name}_body",
        [_typed(ren(n), rank[n]) for n in state_in] + [_typed(ren(n), rank[n] - 1) for n in scanned],
        [_typed(o, rank[n]) for n, o in zip(state_in, state_out)] + [_typed(ren(o), rank[o]) for o in per_token],
    )
    # The Scan's outputs: the carried values after the last token, the constants (dropped), then the per-token
    # outputs stacked on axis 1.
    scan_out = (
        [prefix + carried[n] for n in carried]
        + [prefix + c + "_unused" for c in constant]
        + [prefix + o for o in per_token]
    )
    return helper.make_node(
        "Scan",
        state_in + scanned,
        scan_out,
        body=body,
        num_scan_inputs=len(scanned),
        scan_input_axes=[1] * len(scanned),
        scan_output_axes=[1] * len(per_token),
    )


FUNCTIONS = {name: _sequence_function(name, **spec) for name, spec in SPECS.items()}


# --- torch custom ops: an eager loop over time (the reference cells' sequence forward) --------------------------
@torch.library.custom_op("rwkv_edge::wkv7_seq", mutates_args=())
def wkv7_seq(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    ys = []
    for t in range(r.shape[1]):
        y, state = wkv7(state, r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state.clone()


@wkv7_seq.register_fake
def _wkv7_seq_fake(state, r, w, k, v, a, b):
    return torch.empty_like(r), torch.empty_like(state)


@torch.library.custom_op("rwkv_edge::wkv5_seq", mutates_args=())
def wkv5_seq(
    state: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    ys = []
    for t in range(r.shape[1]):
        y, state = wkv5(state, r[:, t], k[:, t], v[:, t], w[:, t], u)
        ys.append(y)
    return torch.stack(ys, 1), state.clone()


@wkv5_seq.register_fake
def _wkv5_seq_fake(state, r, k, v, w, u):
    return torch.empty_like(r), torch.empty_like(state)


@torch.library.custom_op("rwkv_edge::wkv4_seq", mutates_args=())
def wkv4_seq(
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    p: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ys = []
    for t in range(k.shape[1]):
        y, a, b, p = wkv4(k[:, t], v[:, t], a, b, p, u, w)
        ys.append(y)
    return torch.stack(ys, 1), a.clone(), b.clone(), p.clone()


@wkv4_seq.register_fake
def _wkv4_seq_fake(k, v, a, b, p, u, w):
    return torch.empty_like(k), torch.empty_like(a), torch.empty_like(b), torch.empty_like(p)


# --- numpy twins ---------------------------------------------------------------------------------------------
def wkv7_seq_numpy(state, r, w, k, v, a, b):
    ys = []
    for t in range(r.shape[1]):
        y, state = wkv7_numpy(state, r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t])
        ys.append(y)
    return np.stack(ys, 1), state


def wkv5_seq_numpy(state, r, k, v, w, u):
    ys = []
    for t in range(r.shape[1]):
        y, state = wkv5_numpy(state, r[:, t], k[:, t], v[:, t], w[:, t], u)
        ys.append(y)
    return np.stack(ys, 1), state


def wkv4_seq_numpy(k, v, a, b, p, u, w):
    ys = []
    for t in range(k.shape[1]):
        y, a, b, p = wkv4_numpy(k[:, t], v[:, t], a, b, p, u, w)
        ys.append(y)
    return np.stack(ys, 1), a, b, p


# --- exporter translations: one rwkv-domain node each -----------------------------------------------------------
def translate_wkv7_seq(state, r, w, k, v, a, b):
    return rwkv_opset.WKV7Seq(state, r, w, k, v, a, b, _num_outputs=2)


def translate_wkv5_seq(state, r, k, v, w, u):
    return rwkv_opset.WKV5Seq(state, r, k, v, w, u, _num_outputs=2)


def translate_wkv4_seq(k, v, a, b, p, u, w):
    return rwkv_opset.WKV4Seq(k, v, a, b, p, u, w, _num_outputs=4)


TRANSLATIONS = {
    wkv4_seq._opoverload: translate_wkv4_seq,
    wkv5_seq._opoverload: translate_wkv5_seq,
    wkv7_seq._opoverload: translate_wkv7_seq,
}
NUMPY_TWINS = {"WKV4Seq": wkv4_seq_numpy, "WKV5Seq": wkv5_seq_numpy, "WKV7Seq": wkv7_seq_numpy}

for _name, _fn in FUNCTIONS.items():
    register_schema(_name, list(_fn.input), list(_fn.output))
