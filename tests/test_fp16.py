"""fp16 graphs (quant/fp16.py, quant/rescale.py) on the CPU: the structure the contract asks for (fp16 weights, the
WKV nodes and their state in float32, graph I/O and functions unchanged), the rwkv package's fp16 rescale (exact in
float32, and it is what keeps a deep RWKV-4 finite in fp16), fp16 numerics within the bounds that
scripts/gpu_check.py holds CUDA to, the manifest, and the commands' refusals.

fp16 arithmetic is simulated with onnx's ReferenceEvaluator (every op computes in fp16 as numpy does it), with
layer norm statistics in float32 as the ONNX spec (stash_type 1) and ORT's CUDA kernel have them. ORT's CPU
provider opens fp16 graphs but runs most fp16 ops in float32 behind inserted casts, so it cannot show an overflow.
"""

import hashlib
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from generic_driver import run_export, run_export_sequence
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from test_cli import assert_user_error, cli, snapshot

from rwkv_edge.exporter.pipeline import export_checkpoint
from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
from rwkv_edge.quant import pipeline
from rwkv_edge.quant.fp16 import (
    FP16_LOGITS_BOUND,
    FP16_MEDIAN_LOGITS_BOUND,
    FP16_STATE_BOUND,
    convert_fp16,
    to_fp16,
    wkv_zone,
)
from rwkv_edge.quant.pipeline import quantize_export
from rwkv_edge.quant.rescale import RESCALE_EVERY, rescale_every, rescale_residual
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import GraphSpec, Manifest, load_manifest

# One shape per generation, the ones other test files export too (the session cache shares them).
SHAPES = {
    "4": ("4", 2, 64, 64, 301),
    "5": ("5", 2, 64, 16, 301),
    "5.1": ("5.1", 2, 128, 64, 1003),
    "5.2": ("5.2", 2, 96, 32, 301),
    "6": ("6", 2, 64, 16, 301),
    "7": ("7", 2, 64, 16, 301),
}
WKV_STATE = {"4": ("att_a", "att_b", "att_p")}  # the recurrence's own state; v5+: "wkv"
DEEP_LAYERS = 7  # one rescale step (after layer 5) and one rescaled layer (6)
FP16_MAX = 65504.0


class LayerNormalization(OpRun):
    """ONNX's LayerNormalization as the spec says (stash_type 1): mean and variance in float32, output in X's type
    (onnx's reference op squares fp16 values in fp16, which overflows where no real kernel does)."""

    def _run(self, X, Scale, B=None, axis=None, epsilon=None, stash_type=None):
        x = X.astype(np.float32)
        mean = x.mean(axis=axis, keepdims=True)
        inv_std = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axis, keepdims=True) + epsilon)
        y = (x - mean) * inv_std * Scale.astype(np.float32) + (0 if B is None else B.astype(np.float32))
        return y.astype(X.dtype), mean.astype(X.dtype), inv_std.astype(X.dtype)


def fp16_session(model: onnx.ModelProto):
    return ReferenceEvaluator(model, new_ops=[LayerNormalization]).run


def ort_session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda outputs, feeds: session.run(outputs, feeds)


def step_through(run, manifest: Manifest, tokens: np.ndarray, extra=()):
    """tokens [batch, steps] through a step graph -> logits [batch, steps, vocab], final state, and the largest
    |value| of the `extra` outputs over all steps."""
    batch = tokens.shape[0]
    state = {s.input: np.full(s.concrete_shape(batch), s.init, dtype=np.float32) for s in manifest.state}
    names = ["logits", *(s.output for s in manifest.state), *extra]
    logits, peak = [], 0.0
    for t in range(tokens.shape[1]):
        out = run(names, {"input_ids": tokens[:, t].astype(np.int64), **state})
        logits.append(out[0])
        state = {s.input: v for s, v in zip(manifest.state, out[1:])}
        peak = max([peak, *(float(np.abs(v.astype(np.float32)).max()) for v in out[1 + len(manifest.state) :])])
    return np.stack(logits, 1), state, peak


def errors(logits, state, ref_logits, ref_state):
    """(max|logits diff| / std(ref logits), {state: max|diff| / max|ref|})."""
    return (
        float(np.abs(logits - ref_logits).max() / ref_logits.std()),
        {k: float(np.abs(state[k] - ref_state[k]).max() / np.abs(ref_state[k]).max()) for k in ref_state},
    )


def fp16_values(model: onnx.ModelProto) -> list[str]:
    """Every value of an fp32 graph that its fp16 graph computes in fp16 (all but the WKV zone's), made a graph
    output (ORT returns only those)."""
    typed = onnx.shape_inference.infer_shapes(model)
    zone = wkv_zone(model)
    kept = {o for n in model.graph.node if n.name in zone for o in n.output} | {t.name for t in model.graph.initializer}
    names = [
        v.name
        for v in typed.graph.value_info
        if v.type.tensor_type.elem_type == TensorProto.FLOAT and v.name not in kept
    ]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in names)
    return names


def assert_fp16_structure(fp16: onnx.ModelProto, fp32: onnx.ModelProto, version: str):
    """fp16 weights, float32 WKV zone, graph I/O and functions as in fp32."""
    onnx.checker.check_model(fp16, full_check=True)
    assert [(v.name, v.type) for v in fp16.graph.input] == [(v.name, v.type) for v in fp32.graph.input]
    assert [(v.name, v.type) for v in fp16.graph.output] == [(v.name, v.type) for v in fp32.graph.output]
    assert list(fp16.functions) == list(fp32.functions)
    assert {o.domain: o.version for o in fp16.opset_import} == {o.domain: o.version for o in fp32.opset_import}

    weights = {t.name: t.data_type for t in fp16.graph.initializer}
    matrices = [n.input[1] for n in fp16.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert matrices and all(weights[w] == TensorProto.FLOAT16 for w in matrices)
    assert weights["emb.weight"] == TensorProto.FLOAT16

    typed = onnx.shape_inference.infer_shapes(fp16)
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)
    }
    types.update(weights)
    wkv = [n for n in fp16.graph.node if n.domain == "rwkv"]
    assert len(wkv) == sum(n.domain == "rwkv" for n in fp32.graph.node) > 0
    for n in wkv:  # the recurrence computes in float32: every float input and output of the node is float32
        assert {types[v] for v in (*n.input, *n.output)} <= {TensorProto.FLOAT, TensorProto.INT64}, n.name
    # the WKV state goes from graph input to graph output without a Cast (never rounded to fp16)
    producers = {o: n for n in fp16.graph.node for o in n.output}
    for name in WKV_STATE.get(version, ("wkv",)):
        assert not [n.name for n in fp16.graph.node if name in n.input and n.op_type == "Cast"], name
        assert producers[f"{name}_out"].op_type != "Cast", name


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deep_v4(tmp_path_factory):
    """A 7-layer RWKV-4 exported with `dtype="fp16"` and its sequence graph: fp32 and fp16 side by side."""
    root = tmp_path_factory.mktemp("deep-v4")
    ck = save_checkpoint(make_checkpoint("4", DEEP_LAYERS, 32, 32, 256), root / "model.pth")
    export_checkpoint(ck, root / "export", tokenizer="bytes", prefill="last", dtype="fp16")
    return root / "export"


def copy_export(exported, version, tmp_path):
    _, out = exported(*SHAPES[version])
    shutil.copytree(out, tmp_path / "export")
    return tmp_path / "export"


# ------------------------------------------------------------------------------------------------- tests

# what rwkv.json says an fp16 graph needs, and the backends known to run that (deploy/backends.py)
FP16_NEEDS = {"needs": ["float16"], "backends": ["cpu", "cuda", "node", "wasm"]}


def test_export_dtype_fp16_writes_both_graphs_beside_fp32(deep_v4):
    manifest = json.loads((deep_v4 / "rwkv.json").read_text())
    graphs = {(g["kind"], g["precision"]): g for g in manifest["graphs"]}
    assert set(graphs) == {("step", "fp32"), ("sequence", "fp32"), ("step", "fp16"), ("sequence", "fp16")}
    assert graphs["step", "fp16"] == {
        **graphs["step", "fp32"],
        "file": "model.fp16.onnx",
        "precision": "fp16",
        "rescale_every": RESCALE_EVERY,
        **FP16_NEEDS,
    }
    assert graphs["sequence", "fp16"] == {
        **graphs["sequence", "fp32"],
        "file": "prefill.fp16.onnx",
        "precision": "fp16",
        "rescale_every": RESCALE_EVERY,
        **FP16_NEEDS,
    }
    assert "rescale_every" not in graphs["step", "fp32"]  # written only where set
    assert all(s["dtype"] == "float32" for s in manifest["state"])
    info = manifest["source"]["quantization"]["model.fp16.onnx"]
    assert info["scheme"] == "fp16" and info["from"] == "model.onnx" and info["block_size"] is None
    for fp32_file, fp16_file in (("model.onnx", "model.fp16.onnx"), ("prefill.onnx", "prefill.fp16.onnx")):
        assert_fp16_structure(onnx.load(deep_v4 / fp16_file), onnx.load(deep_v4 / fp32_file), "4")
    assert load_manifest(deep_v4).graph("step", "fp16").rescale_every == RESCALE_EVERY


@pytest.mark.parametrize("version", ["4", "7"])
def test_quantize_to_fp16_keeps_the_contract(exported, tmp_path, version):
    out = copy_export(exported, version, tmp_path)
    fp32_before = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    if version == "7":  # as a user types it
        r = cli("quantize", out, "--to", "fp16")
        assert r.returncode == 0, r.stderr
        assert "wrote model.fp16.onnx" in r.stdout and "WKV state float32" in r.stdout and "no rescale" in r.stdout
    else:
        quantize_export(out, "fp16")
    assert hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest() == fp32_before
    manifest = json.loads((out / "rwkv.json").read_text())
    fp32, fp16 = manifest["graphs"]
    expected = {**fp32, "file": "model.fp16.onnx", "precision": "fp16", **FP16_NEEDS}
    assert fp16 == ({**expected, "rescale_every": 6} if version == "4" else expected)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]
    assert_fp16_structure(onnx.load(out / "model.fp16.onnx"), onnx.load(out / "model.onnx"), version)

    # the generic driver (plain ORT, CPU) runs it from rwkv.json, in float32 I/O, near fp32
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 16))
    logits, state = run_export(out, tokens, precision="fp16")
    ref, ref_state = run_export(out, tokens)
    assert logits.dtype == np.float32 and all(v.dtype == np.float32 for v in state.values())
    logits_err, state_err = errors(logits, state, ref, ref_state)
    assert logits_err <= FP16_LOGITS_BOUND and max(state_err.values()) <= FP16_STATE_BOUND, (logits_err, state_err)


@pytest.mark.parametrize("version", list(SHAPES))
def test_fp16_numerics_every_generation(exported, version):
    """True fp16 arithmetic vs ORT fp32 over 32 random tokens at batch 2, within the stated bounds."""
    _, out = exported(*SHAPES[version])
    manifest = load_manifest(out)
    fp32 = onnx.load(out / "model.onnx")
    fp16 = convert_fp16(onnx.load(out / "model.onnx"), version, manifest.architecture.n_layer)
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 32))
    ref, ref_state, _ = step_through(ort_session(fp32), manifest, tokens)
    logits, state, _ = step_through(fp16_session(fp16), manifest, tokens)
    logits_err, state_err = errors(logits, state, ref, ref_state)
    median_step = float(np.median(np.abs(logits - ref).max(axis=(0, 2)) / ref.std()))
    assert 0 < logits_err <= FP16_LOGITS_BOUND and median_step <= FP16_MEDIAN_LOGITS_BOUND, (logits_err, median_step)
    assert max(state_err.values()) <= FP16_STATE_BOUND, (logits_err, state_err)
    assert rescale_every(version) == (
        0 if version == "7" else RESCALE_EVERY
    )  # the package: RWKV class yes, RWKV_x070 no


def test_rescale_is_exact_in_float32(deep_v4):
    """Halving is exact in binary floating point and layer norms are scale-invariant but for their epsilon: with
    epsilon 0 the rescaled graph gives the very same logits and state; with the exported epsilon, within fp32's
    validation bound."""
    manifest = load_manifest(deep_v4)
    original = onnx.load(deep_v4 / "model.onnx")
    rescaled = rescale_residual(onnx.load(deep_v4 / "model.onnx"), DEEP_LAYERS, RESCALE_EVERY)
    w = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    rw = {t.name: numpy_helper.to_array(t) for t in rescaled.graph.initializer}
    for i in range(DEEP_LAYERS):
        for name in (f"blocks.{i}.att.output.weight", f"blocks.{i}.ffn.value.weight"):
            np.testing.assert_array_equal(rw[name], w[name] / 2 ** (i // RESCALE_EVERY))
    assert sum(n.op_type == "Mul" and n.name.startswith("rescale_after_layer_") for n in rescaled.graph.node) == 1

    def no_epsilon(model):
        for n in model.graph.node:
            for a in n.attribute:
                if n.op_type == "LayerNormalization" and a.name == "epsilon":
                    a.f = 0.0
        return model

    tokens = np.random.default_rng(1).integers(0, 256, size=(2, 32))
    for every, bound in ((RESCALE_EVERY, 1e-4), (1, None)):  # every layer: the hardest case for the epsilon
        model = rescale_residual(onnx.load(deep_v4 / "model.onnx"), DEEP_LAYERS, every)
        ref, ref_state, _ = step_through(ort_session(no_epsilon(onnx.load(deep_v4 / "model.onnx"))), manifest, tokens)
        logits, state, _ = step_through(ort_session(no_epsilon(model)), manifest, tokens)
        logits_err, state_err = errors(logits, state, ref, ref_state)
        assert logits_err <= 1e-6 and max(state_err.values()) <= 1e-6, (every, logits_err, state_err)
        if bound:
            ref, ref_state, _ = step_through(ort_session(onnx.load(deep_v4 / "model.onnx")), manifest, tokens)
            logits, state, _ = step_through(
                ort_session(rescale_residual(onnx.load(deep_v4 / "model.onnx"), DEEP_LAYERS, every)), manifest, tokens
            )
            logits_err, state_err = errors(logits, state, ref, ref_state)
            assert logits_err <= bound and max(state_err.values()) <= bound, (logits_err, state_err)


def test_rescale_keeps_a_deep_rwkv4_finite_in_fp16(deep_v4):
    """Scale the last layer's ffn.value up until, in fp32, some value the graph computes (the residual stream, the
    layer's own products) reaches 1.4x fp16's largest: without the rescale the fp16 graph turns inf/NaN; with the
    package's (halve after layer 5, layer 6's output weights / 2) every value stays under it, and the fp16 graph is
    finite and within the fp16 bounds of the fp32 graph."""
    manifest = load_manifest(deep_v4)
    tokens = np.random.default_rng(2).integers(0, 256, size=(2, 8))

    def scaled(s: float) -> onnx.ModelProto:
        model = onnx.load(deep_v4 / "model.onnx")
        for t in model.graph.initializer:
            if t.name == f"blocks.{DEEP_LAYERS - 1}.ffn.value.weight":
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(s), t.name))
        return model

    def peak(model):  # the largest |value| the fp32 graph computes on these tokens
        names = fp16_values(model)
        return step_through(ort_session(model), manifest, tokens, extra=names)[2]

    s = 1.4 * FP16_MAX / (peak(scaled(1000.0)) / 1000.0)
    assert peak(scaled(s)) > 1.3 * FP16_MAX
    assert peak(rescale_residual(scaled(s), DEEP_LAYERS, RESCALE_EVERY)) < FP16_MAX / 1.2

    ref, ref_state, _ = step_through(ort_session(scaled(s)), manifest, tokens)
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow this test shows
        plain, _, _ = step_through(fp16_session(to_fp16(scaled(s))), manifest, tokens)
    assert not np.isfinite(plain).all()
    logits, state, _ = step_through(fp16_session(convert_fp16(scaled(s), "4", DEEP_LAYERS)), manifest, tokens)
    assert np.isfinite(logits).all() and all(np.isfinite(v).all() for v in state.values())
    logits_err, state_err = errors(logits, state, ref, ref_state)
    assert logits_err <= FP16_LOGITS_BOUND and max(state_err.values()) <= FP16_STATE_BOUND, (logits_err, state_err)


def test_fp16_sequence_graph_agrees_with_stepping(deep_v4):
    tokens = np.random.default_rng(3).integers(0, 256, size=(2, 12))
    ref, ref_state = run_export(deep_v4, tokens)
    last, state = run_export_sequence(deep_v4, tokens, chunk=5, precision="fp16")
    logits_err, state_err = errors(last, state, ref[:, -1], ref_state)
    assert logits_err <= FP16_LOGITS_BOUND and max(state_err.values()) <= FP16_STATE_BOUND, (logits_err, state_err)


def test_manifest_rescale_every_is_optional(deep_v4):
    d = json.loads((deep_v4 / "rwkv.json").read_text())
    for g in d["graphs"]:
        g.pop("rescale_every", None)  # as older exports wrote it
    old = Manifest.from_dict(d)
    assert {g.rescale_every for g in old.graphs} == {0} and "rescale_every" not in old.to_json()
    assert GraphSpec("m.onnx", "step", "fp16").rescale_every == 0
    d["graphs"][0]["rescale_every"] = -6
    with pytest.raises(RWKVEdgeError, match=r"graphs\[0\].rescale_every: expected a whole number >= 0, found -6"):
        Manifest.from_dict(d)


def test_failed_conversion_changes_nothing(exported, tmp_path, monkeypatch):
    out = copy_export(exported, "7", tmp_path)
    before = snapshot(out)

    def broken(*args):
        raise RWKVEdgeError("the fp16 graph does not load")

    monkeypatch.setattr(pipeline, "_check_opens", broken)
    with pytest.raises(RWKVEdgeError, match="does not load"):
        quantize_export(out, "fp16")
    assert snapshot(out) == before
    monkeypatch.undo()
    quantize_export(out, "fp16")
    again = snapshot(out)
    with pytest.raises(
        RWKVEdgeError, match="already has a graph of precision fp16 \\(model.fp16.onnx\\); pass --overwrite"
    ):
        quantize_export(out, "fp16")
    assert snapshot(out) == again


def test_bad_precision_options_are_one_line(exported, tmp_path):
    out = copy_export(exported, "7", tmp_path)
    before = snapshot(out)
    assert_user_error(
        cli("export", "-o", tmp_path / "new", "--dtype", "fp8"), "dtype must be one of fp32, fp16", "'fp8'"
    )
    assert not (tmp_path / "new").exists()
    assert_user_error(cli("quantize", out, "--to", "fp8"), "unknown quantization scheme 'fp8'", "fp16")
    assert_user_error(cli("quantize", out, "--to", "fp16", "--keep-float", "head"), "--keep-float", "fp16")
    assert snapshot(out) == before
