"""A tiny RWKV-shaped export directory for runtime tests, built with onnx.helper (no exporter, no torch).

It follows the graph contract (docs/format.md) with made-up math:

    e          = emb[input_ids]                          [batch, C]
    att_x_out  = 0.5 * att_x + e   (every layer)         [batch, L, C]   init 0
    att_p_out  = max(att_p, e)     (every layer)         [batch, L, C]   init -1e38, like RWKV-4's pp
    logits     = (mean_L(att_x_out) + skip[input_ids]) @ head   [batch, vocab]

The optional sequence graph (input_ids [batch, seq]) computes the same as stepping seq times:
att_x_out = 0.5^T * att_x + sum_t 0.5^(T-1-t) e_t, att_p_out = max(att_p, max_t e_t), logits at the last position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.common.files import write_text_atomic
from rwkv_edge.runtime.manifest import Architecture, GraphSpec, Manifest, StateSpec, TokenizerSpec

OPSET = 18


def fake_weights(vocab: int, n_layer: int, n_embd: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.normal(size=(vocab, n_embd)).astype(np.float32),
        "head": rng.normal(size=(n_embd, vocab)).astype(np.float32),
        "skip": rng.normal(size=(vocab, n_embd)).astype(np.float32),
    }


def fake_step_numpy(w: dict, ids: np.ndarray, att_x: np.ndarray, att_p: np.ndarray):
    """The step graph's math in numpy: (logits, att_x_out, att_p_out)."""
    e = w["emb"][ids][:, None, :]
    att_x_out = 0.5 * att_x + e
    att_p_out = np.maximum(att_p, e)
    logits = (att_x_out.mean(axis=1) + w["skip"][ids]) @ w["head"]
    return logits, att_x_out, att_p_out


def _state_io(n_layer: int, n_embd: int) -> list:
    shape = ["batch", n_layer, n_embd]
    return [
        helper.make_tensor_value_info("att_x", TensorProto.FLOAT, shape),
        helper.make_tensor_value_info("att_p", TensorProto.FLOAT, shape),
    ], [
        helper.make_tensor_value_info("att_x_out", TensorProto.FLOAT, shape),
        helper.make_tensor_value_info("att_p_out", TensorProto.FLOAT, shape),
    ]


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def step_graph(w: dict, n_layer: int, n_embd: int) -> onnx.ModelProto:
    vocab = w["emb"].shape[0]
    state_in, state_out = _state_io(n_layer, n_embd)
    nodes = [
        _const("half", np.float32(0.5)),
        _const("axis1", np.array([1], dtype=np.int64)),
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),  # [batch, C]
        helper.make_node("Unsqueeze", ["e", "axis1"], ["e3"]),  # [batch, 1, C]
        helper.make_node("Mul", ["att_x", "half"], ["att_x_half"]),
        helper.make_node("Add", ["att_x_half", "e3"], ["att_x_out"]),
        helper.make_node("Max", ["att_p", "e3"], ["att_p_out"]),
        helper.make_node("ReduceMean", ["att_x_out", "axis1"], ["mean"], keepdims=0),  # [batch, C]
        helper.make_node("Gather", ["skip", "input_ids"], ["skip_row"]),
        helper.make_node("Add", ["mean", "skip_row"], ["mixed_out"]),
        helper.make_node("MatMul", ["mixed_out", "head"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_rwkv_step",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch"]), *state_in],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab]), *state_out],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return _model(graph)


def sequence_graph(w: dict, n_layer: int, n_embd: int) -> onnx.ModelProto:
    vocab = w["emb"].shape[0]
    state_in, state_out = _state_io(n_layer, n_embd)
    nodes = [
        _const("half", np.float32(0.5)),
        _const("one", np.float32(1.0)),
        _const("axis1", np.array([1], dtype=np.int64)),
        _const("last", np.array(-1, dtype=np.int64)),
        _const("zero_i", np.array(0, dtype=np.int64)),
        _const("one_i", np.array(1, dtype=np.int64)),
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),  # [batch, T, C]
        helper.make_node("Shape", ["input_ids"], ["seq_1"], start=1, end=2),  # [1]
        helper.make_node("Squeeze", ["seq_1"], ["seq"]),  # scalar T
        helper.make_node("Range", ["zero_i", "seq", "one_i"], ["t_i"]),  # [T]
        helper.make_node("Cast", ["t_i"], ["t"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["seq"], ["seq_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["seq_f", "one"], ["seq_m1"]),
        helper.make_node("Sub", ["seq_m1", "t"], ["age"]),  # T-1-t
        helper.make_node("Pow", ["half", "age"], ["weight"]),  # 0.5^(T-1-t), [T]
        helper.make_node("Einsum", ["e", "weight"], ["mixed"], equation="btc,t->bc"),
        helper.make_node("Unsqueeze", ["mixed", "axis1"], ["mixed3"]),
        helper.make_node("Pow", ["half", "seq_f"], ["decay"]),
        helper.make_node("Mul", ["att_x", "decay"], ["att_x_decayed"]),
        helper.make_node("Add", ["att_x_decayed", "mixed3"], ["att_x_out"]),
        helper.make_node("ReduceMax", ["e", "axis1"], ["e_max"], keepdims=1),  # [batch, 1, C]
        helper.make_node("Max", ["att_p", "e_max"], ["att_p_out"]),
        helper.make_node("Gather", ["input_ids", "last"], ["last_ids"], axis=1),  # [batch]
        helper.make_node("ReduceMean", ["att_x_out", "axis1"], ["mean"], keepdims=0),
        helper.make_node("Gather", ["skip", "last_ids"], ["skip_row"]),
        helper.make_node("Add", ["mean", "skip_row"], ["mixed_out"]),
        helper.make_node("MatMul", ["mixed_out", "head"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_rwkv_sequence",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]), *state_in],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab]), *state_out],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def build_fake_export(
    out_dir: str | Path,
    *,
    vocab: int = 16,
    n_layer: int = 2,
    n_embd: int = 4,
    seed: int = 0,
    with_sequence: bool = False,
    tokenizer: TokenizerSpec | None = None,
    version: str = "7",
) -> Path:
    """Write model.onnx (+ prefill.onnx) and rwkv.json into `out_dir`; returns the directory.
    `tokenizer`: None means the bytes tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = fake_weights(vocab, n_layer, n_embd, seed)
    onnx.save(step_graph(w, n_layer, n_embd), str(out / "model.onnx"))
    graphs = [GraphSpec(file="model.onnx", kind="step", precision="fp32", opset=OPSET)]
    if with_sequence:
        onnx.save(sequence_graph(w, n_layer, n_embd), str(out / "prefill.onnx"))
        graphs.append(GraphSpec(file="prefill.onnx", kind="sequence", precision="fp32", opset=OPSET))
    shape = ["batch", n_layer, n_embd]
    manifest = Manifest(
        architecture=Architecture(
            version=version,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=1,
            head_size=n_embd,
            vocab_size=vocab,
            n_ffn=4 * n_embd,
        ),
        tokenizer=tokenizer or TokenizerSpec("bytes"),
        graphs=graphs,
        state=[
            StateSpec(name="att_x", input="att_x", output="att_x_out", shape=shape, init=0.0),
            StateSpec(name="att_p", input="att_p", output="att_p_out", shape=shape, init=-1e38),
        ],
        source={"kind": "fake test model", "seed": seed},
    )
    write_text_atomic(out / "rwkv.json", manifest.to_json())
    return out
