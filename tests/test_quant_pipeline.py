"""quant/pipeline.py: a quantized export keeps the artifact contract (manifest, state I/O, WKV functions, the
generic driver runs it), never touches the fp32 model, and refuses what it must refuse leaving every file intact."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from generic_driver import greedy_tokens, run_export

from rwkv_edge.common import onnx_files
from rwkv_edge.deploy.backends import backends_for, file_needs
from rwkv_edge.quant import pipeline
from rwkv_edge.quant.pipeline import quantize_export, target_file
from rwkv_edge.runtime import RWKVModel, generate
from rwkv_edge.runtime.errors import RWKVEdgeError

V7 = ("7", 2, 64, 16, 301)
V4 = ("4", 2, 64, 64, 301)
V6 = ("6", 2, 64, 16, 301)


def copy_export(exported, shape, tmp_path):
    _, out = exported(*shape)
    dst = tmp_path / "export"
    shutil.copytree(out, dst)
    return dst


def snapshot(d):
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(d.iterdir())}


@pytest.mark.parametrize(
    "shape, scheme",
    [
        (V7, "int8"),
        (V7, "int8-dynamic"),
        (V7, "int8-rowwise"),
        (V7, "int4"),
        (V4, "int8"),
        (V4, "int8-rowwise"),
        (V6, "int8"),
    ],
    ids=["v7-int8", "v7-int8-dynamic", "v7-int8-rowwise", "v7-int4", "v4-int8", "v4-int8-rowwise", "v6-int8"],
)
def test_quantized_export_keeps_the_contract(exported, tmp_path, shape, scheme):
    out = copy_export(exported, shape, tmp_path)
    fp32_before = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    manifest_before = json.loads((out / "rwkv.json").read_text())
    result = quantize_export(out, scheme, block_size=32)
    precision = scheme  # each scheme is a precision of its own: model.int8-dynamic.onnx beside model.int8.onnx

    # fp32 untouched, the new graph listed beside it, everything else in the manifest as it was
    assert hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest() == fp32_before
    manifest = json.loads((out / "rwkv.json").read_text())
    graphs = {g["precision"]: g for g in manifest["graphs"]}
    assert graphs["fp32"] == manifest_before["graphs"][0]
    needs = file_needs(out / f"model.{precision}.onnx")  # what the graph written uses, and who runs that
    assert graphs[precision] == {
        **manifest_before["graphs"][0],
        "file": f"model.{precision}.onnx",
        "precision": precision,
        "needs": needs,
        "backends": backends_for(needs),
    }
    assert manifest["state"] == manifest_before["state"] and manifest["architecture"] == manifest_before["architecture"]
    info = manifest["source"]["quantization"][f"model.{precision}.onnx"]
    assert info["scheme"] == scheme and info["block_size"] == 32 and info["from"] == "model.onnx"
    assert result.graphs[0].bytes < 0.6 * result.graphs[0].source_bytes
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]

    # the WKV op and its function survive
    q = onnx.load(out / f"model.{precision}.onnx")
    onnx.checker.check_model(q)
    assert {(f.domain, f.name) for f in q.functions} == {
        (f.domain, f.name) for f in onnx.load(out / "model.onnx").functions
    }
    assert {o.domain: o.version for o in q.opset_import}["rwkv"] == 1
    assert sum(n.domain == "rwkv" for n in q.graph.node) == shape[1]
    ops = {n.op_type for n in q.graph.node}
    kernel = {"int8-dynamic": "MatMulInteger", "int8-rowwise": "MatMulIntegerToFloat"}.get(scheme, "MatMulNBits")
    assert kernel in ops
    assert ("DynamicQuantizeLinear" in ops) == (scheme == "int8-dynamic")  # int8-rowwise quantizes per row itself
    assert "GatherBlockQuantized" in ops

    # the bench's floor reads the quantized embedding one row per token, as it does the float one
    from rwkv_edge.measure.bench import weight_bytes_per_token

    gbq = next(n for n in q.graph.node if n.op_type == "GatherBlockQuantized")
    tables = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer if t.name in gbq.input}
    table_bytes = sum(t.nbytes for t in tables.values())
    row_bytes = sum(t.nbytes // t.shape[0] for t in tables.values())
    all_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in q.graph.initializer)
    assert weight_bytes_per_token(out / f"model.{precision}.onnx") == all_bytes - table_bytes + row_bytes

    # the generic driver (no rwkv_edge) runs it; batch rows stay independent; it says what fp32 says
    tokens = np.random.default_rng(0).integers(0, shape[4], size=(3, 24))
    logits, state = run_export(out, tokens, precision=precision)
    ref, ref_state = run_export(out, tokens)
    assert logits.shape == ref.shape and np.all(np.isfinite(logits))
    assert set(state) == set(ref_state) and all(state[k].shape == ref_state[k].shape for k in state)
    for row in range(3):
        alone, _ = run_export(out, tokens[row : row + 1], precision=precision)
        if scheme == "int8-dynamic":
            # one activation scale per call for the whole batch: a row's numbers depend on its neighbours by
            # about a quantization step (docs/quantization.md), never by more
            assert (logits[row].argmax(-1) == alone[0].argmax(-1)).mean() >= 0.9
            assert np.abs(logits[row] - alone[0]).max() < 0.5 * ref.std()
        elif scheme == "int8-rowwise":  # a scale per row and exact int32 sums: a row alone is the row in a batch
            np.testing.assert_array_equal(logits[row], alone[0])
        else:  # MatMulNBits quantizes each row's activations on its own: rows never interact
            np.testing.assert_allclose(logits[row], alone[0], rtol=0, atol=1e-4 * ref.std())
    agreement = (logits.argmax(-1) == ref.argmax(-1)).mean()
    assert agreement >= (0.6 if precision == "int4" else 0.9), agreement


def test_runtime_and_generate_pick_the_precision(exported, tmp_path):
    out = copy_export(exported, V7, tmp_path)
    quantize_export(out, "int8", block_size=32)
    model = RWKVModel.load(out, precision="int8")
    assert model.step_graph.file == "model.int8.onnx"
    state = model.new_state(2)
    assert model.step([1, 2], state).shape == (2, 301)
    tokenizer = model.load_tokenizer()
    gen = generate(model, tokenizer, "Alice", max_new_tokens=8, temperature=0)
    text = "".join(gen)
    # greedy on the int8 graph: plain ORT's argmax of that graph (over the bytes tokenizer's 256 ids), decoded
    assert gen.tokens == greedy_tokens(out, list(b"Alice"), 8, precision="int8", vocab=256)
    assert len(gen.tokens) == 8 and text == tokenizer.decode(gen.tokens)
    with pytest.raises(RWKVEdgeError, match="no step graph of precision int4"):
        RWKVModel.load(out, precision="int4")


def test_int8_int8_dynamic_and_int4_side_by_side(exported, tmp_path):
    out = copy_export(exported, V7, tmp_path)
    quantize_export(out, "int8")
    quantize_export(out, "int8-dynamic")
    quantize_export(out, "int4")
    manifest = json.loads((out / "rwkv.json").read_text())
    files = ["model.onnx", "model.int8.onnx", "model.int8-dynamic.onnx", "model.int4.onnx"]
    assert [g["file"] for g in manifest["graphs"]] == files
    assert set(manifest["source"]["quantization"]) == set(files[1:])
    assert RWKVModel.load(out, precision="int8-dynamic").step_graph.file == "model.int8-dynamic.onnx"


def test_second_quantize_is_refused_and_overwrite_replaces(exported, tmp_path):
    out = copy_export(exported, V7, tmp_path)
    quantize_export(out, "int8", block_size=32)
    before = snapshot(out)
    with pytest.raises(
        RWKVEdgeError, match="already has a graph of precision int8 \\(model.int8.onnx\\); pass --overwrite"
    ):
        quantize_export(out, "int8")
    assert snapshot(out) == before
    quantize_export(out, "int8", block_size=64, overwrite=True)
    manifest = json.loads((out / "rwkv.json").read_text())
    assert [g["precision"] for g in manifest["graphs"]] == ["fp32", "int8"]
    assert manifest["source"]["quantization"]["model.int8.onnx"]["block_size"] == 64
    assert snapshot(out)["model.onnx"] == before["model.onnx"]


def test_leftover_file_is_not_overwritten(exported, tmp_path):
    out = copy_export(exported, V7, tmp_path)
    (out / "model.int8.onnx").write_bytes(b"someone's file")
    before = snapshot(out)
    with pytest.raises(RWKVEdgeError, match="model.int8.onnx exists but rwkv.json does not list it"):
        quantize_export(out, "int8")
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"scheme": "int5"}, "unknown quantization scheme 'int5'"),
        ({"block_size": 100}, "block size must be one of"),
        ({"keep_float": ("heads",)}, "unknown weight group 'heads'"),
    ],
)
def test_bad_arguments_change_nothing(exported, tmp_path, bad, message):
    out = copy_export(exported, V7, tmp_path)
    before = snapshot(out)
    with pytest.raises(RWKVEdgeError, match=message):
        quantize_export(out, **{"scheme": "int8", **bad})
    assert snapshot(out) == before


def test_directory_without_fp32_model(exported, tmp_path):
    out = copy_export(exported, V7, tmp_path)
    (out / "model.onnx").unlink()
    before = snapshot(out)
    with pytest.raises(RWKVEdgeError, match="model.onnx: the fp32 graph listed in rwkv.json is missing"):
        quantize_export(out)
    assert snapshot(out) == before
    manifest = json.loads((out / "rwkv.json").read_text())
    manifest["graphs"][0]["precision"] = "int8"
    (out / "rwkv.json").write_text(json.dumps(manifest))
    with pytest.raises(RWKVEdgeError, match="quantize needs the fp32 step graph"):
        quantize_export(out)
    with pytest.raises(RWKVEdgeError, match="nothing-here: no such directory"):
        quantize_export(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RWKVEdgeError, match="not an export directory \\(no rwkv.json\\)"):
        quantize_export(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_failure_midway_leaves_files_intact(exported, tmp_path, monkeypatch):
    out = copy_export(exported, V7, tmp_path)
    quantize_export(out, "int8", block_size=32)
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RWKVEdgeError("the quantized graph does not load in ONNX Runtime (simulated)")

    monkeypatch.setattr(pipeline, "_check_opens", broken)
    with pytest.raises(RWKVEdgeError, match="simulated"):
        quantize_export(out, "int8", overwrite=True)
    assert snapshot(out) == before  # the old int8 graph and its manifest entry are still there
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]


def test_large_weights_go_to_a_data_file(exported, tmp_path, monkeypatch):
    out = copy_export(exported, V7, tmp_path)
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    result = quantize_export(out, "int8", block_size=32)
    assert result.graphs[0].files == ["model.int8.onnx", "model.int8.onnx.data"]
    assert (out / "model.int8.onnx.data").stat().st_mode & 0o777 == (out / "model.int8.onnx").stat().st_mode & 0o777
    logits, _ = run_export(out, np.array([[1, 2, 3]]), precision="int8")
    assert np.all(np.isfinite(logits))
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1 << 40)
    quantize_export(out, "int8", block_size=32, overwrite=True)
    assert not (out / "model.int8.onnx.data").exists()  # the replaced graph's data file does not linger
    assert run_export(out, np.array([[1, 2, 3]]), precision="int8")[0].shape == (1, 3, 301)


def test_target_file():
    assert target_file("model.onnx", "int8") == "model.int8.onnx"
    assert target_file("prefill.onnx", "int4") == "prefill.int4.onnx"


def test_quant_never_imports_torch():
    """quant depends on the runtime only: a device without torch quantizes and evaluates."""
    import subprocess
    import sys

    code = (
        "import sys; import rwkv_edge.quant.pipeline, rwkv_edge.quant.evaluate, rwkv_edge.quant.dynamic; "
        "import onnxruntime.quantization, onnxruntime.quantization.matmul_nbits_quantizer; "  # imported lazily by quant
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'rwkv_edge.exporter'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
