"""deploy/ort_format.py and RWKVModel.load(graph_format="ort"): every graph of a tiny RWKV-7 export converted by ONNX
Runtime's own tool gives exactly the logits and state of its .onnx graph (fp32 and int8, one session and two),
rwkv.json lists the .ort files, required_operators.config lists their operators, and every refusal leaves the
export as it was."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rwkv_edge.deploy.ort_format import CONFIG_NAME, convert_export
from rwkv_edge.exporter.pipeline import export_checkpoint
from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
from rwkv_edge.quant.pipeline import quantize_export
from rwkv_edge.runtime import RWKVEdgeError, RWKVModel
from rwkv_edge.runtime.manifest import load_manifest

GRAPHS = {
    "model.onnx": "model.ort",
    "prefill.onnx": "prefill.ort",
    "model.int8.onnx": "model.int8.ort",
    "prefill.int8.onnx": "prefill.int8.ort",
}


@pytest.fixture(scope="module")
def onnx_only(tmp_path_factory):
    """A tiny RWKV-7 export with step and sequence graphs, fp32 and int8, no .ort files."""
    root = tmp_path_factory.mktemp("ort")
    ck = save_checkpoint(make_checkpoint("7", 2, 32, 16, 256, seed=3), root / "v7.pth")
    export_checkpoint(ck, root / "export", tokenizer="bytes", prefill="last")
    quantize_export(root / "export", "int8", block_size=16)
    return root / "export"


@pytest.fixture(scope="module")
def converted(onnx_only, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort-converted") / "export"
    shutil.copytree(onnx_only, out)
    result = convert_export(out)
    assert [(g.source, g.file) for g in result.graphs] == list(GRAPHS.items())
    return out


def cli(*args):
    return subprocess.run([sys.executable, "-m", "rwkv_edge.cli", *map(str, args)], capture_output=True, text=True)


def assert_user_error(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)  # one line, no traceback
    assert all(f in lines[0] for f in fragments), lines[0]


def copy_of(d, tmp_path):
    shutil.copytree(d, tmp_path / "export")
    return tmp_path / "export"


def snapshot(d):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir())}


def run(model: RWKVModel, prompt: np.ndarray, steps: int = 6):
    state = model.new_state(prompt.shape[0])
    logits = [model.feed(prompt, state)]
    for i in range(steps):
        logits.append(model.step(prompt[:, i], state))
    return np.stack(logits), state.to_numpy()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("one_session", [None, False], ids=["one-session", "step-and-sequence"])
def test_ort_graphs_give_the_onnx_logits_exactly(converted, precision, one_session):
    prompt = np.random.default_rng(0).integers(0, 256, size=(2, 40))
    onnx_model = RWKVModel.load(converted, precision=precision, one_session=one_session)
    ort_model = RWKVModel.load(converted, precision=precision, one_session=one_session, graph_format="ort")
    assert {ort_model.decode_graph.file, ort_model.sequence_graph.file} <= set(GRAPHS.values())
    want, want_state = run(onnx_model, prompt)
    got, got_state = run(ort_model, prompt)
    np.testing.assert_array_equal(got, want)  # the same optimized graph: bit for bit (measured), not just close
    for name in want_state:
        np.testing.assert_array_equal(got_state[name], want_state[name])


def test_rwkv_json_lists_the_ort_files_and_the_config_their_operators(converted):
    manifest = load_manifest(converted)
    assert {g.file: g.ort for g in manifest.graphs} == GRAPHS
    assert all((converted / ort).is_file() for ort in GRAPHS.values())
    assert not [p.name for p in converted.iterdir() if p.name.startswith(".staging")]
    assert not list(converted.glob("*.required_operators*.config"))  # the tool's per-graph configs are gone
    lines = (converted / CONFIG_NAME).read_text().splitlines()
    assert sorted(line[4:] for line in lines if line.startswith("# - ")) == sorted(GRAPHS.values())
    ops = {}
    for line in lines:
        if not line.startswith("#"):
            domain, opset, names = line.split(";")
            ops.setdefault(domain, set()).update(names.split(","))
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops["com.microsoft"]  # int8's kernels
    assert {"Scan", "If", "LayerNormalization", "MatMul"} <= ops["ai.onnx"]  # the sequence graph's WKV7Seq, inlined
    assert "WKV7" not in str(ops) and "rwkv" not in ops  # the model's functions are inlined, not kernels


def test_a_second_conversion_is_refused_and_overwrite_replaces_one_precision(converted, tmp_path):
    out = copy_of(converted, tmp_path)
    before = snapshot(out)
    with pytest.raises(RWKVEdgeError, match=r"already has model.ort, prefill.ort, .*; pass --overwrite"):
        convert_export(out)
    assert snapshot(out) == before
    result = convert_export(out, ["fp32"], overwrite=True)
    assert [g.file for g in result.graphs] == ["model.ort", "prefill.ort"]
    after = snapshot(out)
    assert after["model.int8.ort"] == before["model.int8.ort"] and after["model.ort"][0] != before["model.ort"][0]
    assert {g.file: g.ort for g in load_manifest(out).graphs} == GRAPHS
    assert "MatMulNBits" in (out / CONFIG_NAME).read_text()  # the kept int8 .ort files still count


def test_refusals_leave_the_export_as_it_was(onnx_only, tmp_path):
    out = copy_of(onnx_only, tmp_path)
    before = snapshot(out)
    with pytest.raises(RWKVEdgeError, match=r"has no graph of precision int4 \(it has: fp32, int8\)"):
        convert_export(out, ["int4"])
    (out / "model.int8.ort").write_bytes(b"someone's file")
    with pytest.raises(RWKVEdgeError, match=r"already has model.int8.ort; pass --overwrite to replace it$"):
        convert_export(out, ["int8"])
    (out / "model.int8.ort").unlink()
    (out / "prefill.int8.onnx").write_bytes(b"not a graph")
    damaged = snapshot(out)
    with pytest.raises(RWKVEdgeError, match=r"^ONNX Runtime's converter failed \(Error converting .*prefill.int8.onnx"):
        convert_export(out, ["int8"])
    assert snapshot(out) == damaged
    (out / "prefill.int8.onnx").write_bytes(before["prefill.int8.onnx"][1])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging") or p.suffix == ".ort"]


def test_load_asks_for_the_ort_files_it_lacks(onnx_only, converted):
    with pytest.raises(RWKVEdgeError, match=r"^prefill.onnx has no ORT-format file .*run `rwkv-export ort DIR`$"):
        RWKVModel.load(onnx_only, graph_format="ort")
    with pytest.raises(RWKVEdgeError, match=r"^graph_format must be one of onnx, ort, found 'flatbuffer'$"):
        RWKVModel.load(converted, graph_format="flatbuffer")
    with pytest.raises(RWKVEdgeError, match="ORT-format graphs are optimized already"):
        RWKVModel.load(converted, graph_format="ort", optimized_cache=True)


def test_graphs_from_before_the_fields_get_needs_and_backends(onnx_only, tmp_path):
    out = copy_of(onnx_only, tmp_path)
    manifest = json.loads((out / "rwkv.json").read_text())
    for g in manifest["graphs"]:
        del g["needs"], g["backends"]
    (out / "rwkv.json").write_text(json.dumps(manifest))
    convert_export(out, ["fp32"])
    graphs = {g.file: g for g in load_manifest(out).graphs}
    assert graphs["model.int8.onnx"].needs == [
        "com.microsoft.GatherBlockQuantized:bits=8",
        "com.microsoft.MatMulNBits:bits=8",
    ]
    assert graphs["model.onnx"].needs == [] and graphs["model.int8.onnx"].ort is None


def test_requantizing_drops_the_stale_ort_file(converted, tmp_path):
    out = copy_of(converted, tmp_path)
    quantize_export(out, "int8", block_size=32, overwrite=True)
    graphs = {g.file: g.ort for g in load_manifest(out).graphs}
    assert graphs["model.int8.onnx"] is None and not (out / "model.int8.ort").exists()
    assert graphs["model.onnx"] == "model.ort" and (out / "model.ort").is_file()


def test_the_cli_converts_and_generates_from_ort(onnx_only, tmp_path):
    out = copy_of(onnx_only, tmp_path)
    assert_user_error(cli("generate", out, "--format", "ort"), "has no ORT-format file", "rwkv-export ort DIR")
    r = cli("ort", out, "--precision", "int8")
    assert r.returncode == 0, r.stderr
    assert "wrote model.int8.ort" in r.stdout and f"wrote {CONFIG_NAME}" in r.stdout
    args = ["generate", out, "--precision", "int8", "--prompt", "ab", "--max-tokens", "12", "--temperature", "0"]
    from_onnx, from_ort = cli(*args), cli(*args, "--format", "ort")
    assert from_ort.returncode == 0, from_ort.stderr
    assert from_ort.stdout == from_onnx.stdout
