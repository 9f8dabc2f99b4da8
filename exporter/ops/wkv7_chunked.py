"""rwkv::WKV7Seq over many tokens in chunks of CHUNK: each chunk's recurrence as a few batched matmuls, instead of
the step op's nodes once per token (a per-token Scan, which dominated the prefill graph's time).

Per head, with S the state [N (value), N (key)], the step is S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T and
y_t = S_t r_t. Within a chunk starting from S_0, with the cumulative decay L_t = w_1 ... w_t (per key channel),
scale a^_t = L_{t-1} a_t, b^_t = b_t / L_t, k^_t = k_t / L_t, r^_t = L_t r_t. The undecayed state
S^_t = S_t diag(1 / L_t) then grows by rank-1 terms only, S^_t = S_0 + sum_{s<=t} (x_s b^_s^T + v_s k^_s^T), with
x_t = S_{t-1} a_t = S^_{t-1} a^_t. Stacking the chunk's vectors as columns (X, V [N, C]; A^, B^, K^, R^ [C, N]):

    X = (S_0 A^T + V Lak) (I - Lab)^-1        Lab[s, t] = b^_s . a^_t,  Lak[s, t] = k^_s . a^_t   (s < t)
    Y = S_0 R^T + X Ubr + V Ukr               Ubr[s, t] = b^_s . r^_t,  Ukr[s, t] = k^_s . r^_t   (s <= t)
    S_C = (S_0 + X B^ + V K^) diag(L_C)

(I - Lab) is unit upper-triangular: its inverse is (I + L)(I + L^2)(I + L^4)...(I + L^(CHUNK/2)). The decay
w = exp(-0.606531 sigmoid(.)) > 0.545 keeps 1 / L within 0.545^-32 ~ 2.7e8, far inside float32 (the error against
the per-token loop: docs/numerics.md; the speed of each chunk size: docs/performance.md). A sequence of at most CHUNK
tokens is one chunk of its own length; a longer one is padded to whole chunks with tokens that leave the state as it
is (w = 1, the rest 0), and the padding's outputs are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .domain import renamed_nodes

CHUNK = 32
_SQUARINGS = CHUNK.bit_length() - 2  # (I + L)(I + L^2)...(I + L^(CHUNK/2)) inverts I - L, L strictly upper-triangular
_TO_HEADS = [0, 2, 1, 3]  # [B, C, H, N] <-> [B, H, C, N]


def chunked_graph(name: str, state: str, scanned: list[str], outputs: list[str], typed) -> onnx.GraphProto:
    """The If's else-branch of WKV7Seq: `scanned` = r, w, k, v, a, b [B, T, H, N] and `state` [B, H, N, N] from the
    outer scope -> `outputs` = (y [B, T, H, N], state after the last token), prefixed "many_"."""
    r, w, k, v, a, b = scanned
    n = helper.make_node

    def c(vals, nm):  # an int64 Constant node
        return n("Constant", [], [nm], value=numpy_helper.from_array(np.asarray(vals, dtype=np.int64), nm))

    nodes = [
        c([CHUNK], "chunk_max"),
        c([0], "zero"),
        c([1], "one"),
        c([2], "two"),
        c([4], "four"),
        n("Shape", [r], ["seq_len"], start=1, end=2),
        # a sequence of at most CHUNK tokens is one chunk of its own length (no padding work), a longer one is
        # padded to whole chunks of CHUNK: (CHUNK - T % CHUNK) % CHUNK tokens
        n("Min", ["seq_len", "chunk_max"], ["chunk"]),
        n("Mod", ["seq_len", "chunk"], ["rest"]),
        n("Sub", ["chunk", "rest"], ["short"]),
        n("Mod", ["short", "chunk"], ["pad_len"]),
        n("Concat", ["zero", "zero", "zero", "zero", "zero", "pad_len", "zero", "zero"], ["pads"], axis=0),
        n("Constant", [], ["zero_f"], value=helper.make_tensor("zero_f", onnx.TensorProto.FLOAT, [], [0.0])),
        n("Constant", [], ["one_f"], value=helper.make_tensor("one_f", onnx.TensorProto.FLOAT, [], [1.0])),
        n("Shape", [r], ["bthn"]),
        n("Add", ["seq_len", "pad_len"], ["padded_len"]),
        n("Div", ["padded_len", "chunk"], ["chunks"]),
        n("Slice", ["bthn", "zero", "one"], ["batch"]),
        n("Slice", ["bthn", "two", "four"], ["hn"]),
        n("Concat", ["batch", "chunks", "chunk", "hn"], ["by_chunk"], axis=0),
        n("Concat", ["batch", "padded_len", "hn"], ["by_token"], axis=0),
    ]
    chunked = []
    for x in scanned:
        fill = "one_f" if x == w else "zero_f"  # a padding token: w = 1, the rest 0
        nodes += [
            n("Pad", [x, "pads", fill], [f"{x}_padded"], mode="constant"),
            n("Reshape", [f"{x}_padded", "by_chunk"], [f"{x}_chunks"]),
        ]
        chunked.append(f"{x}_chunks")
    body = _chunk_body(typed)
    nodes += [
        n(
            "Scan",
            [state, *chunked],
            ["many_" + outputs[1], "y_chunks"],
            body=body,
            num_scan_inputs=len(scanned),
            scan_input_axes=[1] * len(scanned),
            scan_output_axes=[1],
        ),
        n("Reshape", ["y_chunks", "by_token"], ["y_padded"]),
        n("Slice", ["y_padded", "zero", "seq_len", "one"], ["many_" + outputs[0]]),
    ]
    keep = {state, *scanned, "many_" + outputs[0], "many_" + outputs[1]}
    return helper.make_graph(
        _prefixed(nodes, "chunked_", keep),
        f"{name}_many",
        [],
        [typed("many_" + outputs[0], 4), typed("many_" + outputs[1], 4)],
    )


def _prefixed(nodes: list[onnx.NodeProto], prefix: str, keep: set[str]) -> list[onnx.NodeProto]:
    """The nodes with every name they produce, and its uses, prefixed (a subgraph may not reuse an outer name)."""
    made = {o for nd in nodes for o in nd.output if o and o not in keep}
    return renamed_nodes(nodes, lambda x: prefix + x if x in made else x)


def _chunk_body(typed) -> onnx.GraphProto:
    """One chunk: state [B, H, N, N] and r, w, k, v, a, b [B, C, H, N] (C <= CHUNK) -> the state after it,
    y [B, C, H, N]. The masks are CHUNK x CHUNK constants cut to C x C; the inverse's squarings stay those of CHUNK
    (the extra factors are I, L being nilpotent)."""
    n = helper.make_node
    ones = np.ones((CHUNK, CHUNK), np.float32)
    consts = {"strict": np.triu(ones, 1), "upper": np.triu(ones, 0), "eye": np.eye(CHUNK, dtype=np.float32)}
    nodes = [n("Constant", [], [nm + "_full"], value=numpy_helper.from_array(val, nm)) for nm, val in consts.items()]
    nodes += [
        n("Shape", ["c_r"], ["c_len"], start=1, end=2),
        n("Concat", ["c_len", "c_len"], ["c_len2"], axis=0),
        n("Constant", [], ["zeros2"], value=numpy_helper.from_array(np.asarray([0, 0], np.int64), "zeros2")),
        n("Constant", [], ["axes01"], value=numpy_helper.from_array(np.asarray([0, 1], np.int64), "axes01")),
    ]
    nodes += [n("Slice", [nm + "_full", "zeros2", "c_len2", "axes01"], [nm]) for nm in consts]
    nodes += [
        n("Constant", [], ["time_axis"], value=numpy_helper.from_array(np.asarray(2, np.int64), "time_axis")),
        n("Constant", [], ["last"], value=numpy_helper.from_array(np.asarray([-1], np.int64), "last")),
        n("Constant", [], ["end"], value=numpy_helper.from_array(np.asarray([CHUNK], np.int64), "end")),
        n("Constant", [], ["axis2"], value=numpy_helper.from_array(np.asarray([2], np.int64), "axis2")),
    ]
    for x in ("r", "w", "k", "v", "a", "b"):
        nodes.append(n("Transpose", [f"c_{x}"], [x], perm=_TO_HEADS))  # [B, H, C, N]

    def t(x, y):  # the last two axes swapped
        return n("Transpose", [x], [y], perm=[0, 1, 3, 2])

    nodes += [
        n("Log", ["w"], ["log_w"]),
        n("CumSum", ["log_w", "time_axis"], ["log_l"]),
        n("Exp", ["log_l"], ["l"]),
        n("Neg", ["log_l"], ["neg_log_l"]),
        n("Exp", ["neg_log_l"], ["inv_l"]),
        n("Sub", ["log_l", "log_w"], ["log_l_prev"]),
        n("Exp", ["log_l_prev"], ["l_prev"]),
        n("Mul", ["a", "l_prev"], ["ah"]),
        n("Mul", ["b", "inv_l"], ["bh"]),
        n("Mul", ["k", "inv_l"], ["kh"]),
        n("Mul", ["r", "l"], ["rh"]),
        t("ah", "ah_t"),
        t("rh", "rh_t"),
        t("v", "v_t"),
        n("MatMul", ["bh", "ah_t"], ["bh_ah"]),
        n("Mul", ["bh_ah", "strict"], ["lab"]),
        n("MatMul", ["kh", "ah_t"], ["kh_ah"]),
        n("Mul", ["kh_ah", "strict"], ["lak"]),
        n("MatMul", ["bh", "rh_t"], ["bh_rh"]),
        n("Mul", ["bh_rh", "upper"], ["ubr"]),
        n("MatMul", ["kh", "rh_t"], ["kh_rh"]),
        n("Mul", ["kh_rh", "upper"], ["ukr"]),
        # (I - lab)^-1 = (I + L)(I + L^2)(I + L^4)...(I + L^(CHUNK/2)), L = lab
        n("Add", ["eye", "lab"], ["inv_0"]),
    ]
    power, inverse = "lab", "inv_0"
    for i in range(1, _SQUARINGS + 1):
        nodes += [
            n("MatMul", [power, power], [f"lab_{i}"]),
            n("Add", ["eye", f"lab_{i}"], [f"factor_{i}"]),
            n("MatMul", [inverse, f"factor_{i}"], [f"inv_{i}"]),
        ]
        power, inverse = f"lab_{i}", f"inv_{i}"
    nodes += [
        n("MatMul", ["s0", "ah_t"], ["s_ah"]),
        n("MatMul", ["v_t", "lak"], ["v_lak"]),
        n("Add", ["s_ah", "v_lak"], ["rhs"]),
        n("MatMul", ["rhs", inverse], ["x"]),  # [B, H, N, C]
        n("MatMul", ["s0", "rh_t"], ["s_rh"]),
        n("MatMul", ["x", "ubr"], ["x_ubr"]),
        n("MatMul", ["v_t", "ukr"], ["v_ukr"]),
        n("Add", ["s_rh", "x_ubr"], ["y_0"]),
        n("Add", ["y_0", "v_ukr"], ["y_t"]),  # [B, H, N, C]
        n("Transpose", ["y_t"], ["y"], perm=[0, 3, 1, 2]),  # [B, C, H, N]
        n("MatMul", ["x", "bh"], ["x_bh"]),
        n("MatMul", ["v_t", "kh"], ["v_kh"]),
        n("Add", ["s0", "x_bh"], ["s_1"]),
        n("Add", ["s_1", "v_kh"], ["s_hat"]),
        n("Slice", ["l", "last", "end", "axis2"], ["l_last"]),  # [B, H, 1, N]
        n("Mul", ["s_hat", "l_last"], ["s_next"]),
    ]
    names = ["s0"] + [f"c_{x}" for x in ("r", "w", "k", "v", "a", "b")]
    nodes = _prefixed(nodes, "chunk_", set(names))
    return helper.make_graph(
        nodes, "WKV7Seq_chunk", [typed(x, 4) for x in names], [typed("chunk_s_next", 4), typed("chunk_y", 4)]
    )
