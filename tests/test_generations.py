"""RWKV-5, 5.1, 5.2 and 6 (and RWKV-7's DeepEmbed variant) go through the same pipeline as 4 and 7: exports of
random-weight checkpoints in the official key layout agree with BlinkDL's `rwkv` package within the numerics
contract's bounds (docs/numerics.md) over 32 steps at batch 1 and 2; the generic manifest-only driver and the runtime
run them; state-tuned models (att.time_state, in the checkpoint or in a separate file) start from the trained state."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from broken_manifests import write_broken_manifest
from generic_driver import greedy_tokens, run_export

from rwkv_edge.exporter.pipeline import export_checkpoint
from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
from rwkv_edge.runtime import RWKVEdgeError, RWKVModel, generate
from rwkv_edge.runtime.inspection import inspect_export
from rwkv_edge.validation.validate import BOUND_BATCH, BOUND_VS_REFERENCE, validate

# (version, n_layer, n_embd, head_size, vocab): several heads, head_size 64 and smaller, vocab not a multiple of 8
SHAPES = [
    ("5", 2, 64, 16, 301),  # 4 heads of 16; per-head decay, no gate
    ("5.1", 2, 128, 64, 1003),  # 2 heads of 64; + gate
    ("5.2", 2, 96, 32, 301),  # 3 heads of 32; per-channel decay and bonus
    ("5.2", 3, 128, 64, 1003),
    ("6", 2, 64, 16, 301),  # data-dependent decay and token shift
    ("6", 3, 128, 64, 1003),
]
ONE_PER_VERSION = [SHAPES[0], SHAPES[1], SHAPES[2], SHAPES[4]]


def ids(s) -> str:
    return f"v{s[0]}-L{s[1]}-C{s[2]}-N{s[3]}-V{s[4]}"


def assert_passed(report, steps=32):
    failed = [(c.name, c.logits_err, c.state_err, c.first_divergence) for c in report.comparisons if not c.passed]
    assert report.passed, failed
    headline = next(c for c in report.comparisons if c.name == "onnx[opt-all] b=1 vs rwkv")
    assert 0 < headline.logits_err <= BOUND_VS_REFERENCE and len(headline.per_step) == steps
    assert {"onnx[opt-off] b=2 row 1 vs rwkv", "onnx[opt-all] b=2 row 1 vs alone"} <= {
        c.name for c in report.comparisons
    }


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_export_matches_rwkv_package(exported, shape):
    ck, out = exported(*shape)
    assert_passed(validate(ck, out, steps=32, batch=2, seed=1))


@pytest.mark.parametrize("shape", ONE_PER_VERSION, ids=ids)
def test_graph_contract_driver_runtime_inspect(exported, shape):
    """One rwkv::WKV5 node per layer with its function; the manifest-only driver, the runtime (IO binding) and
    inspect all work on the export; batch rows are independent."""
    version, L, C, N, V = shape
    _, out = exported(*shape)
    model = onnx.load(out / "model.onnx")
    wkv = [n for n in model.graph.node if n.domain == "rwkv"]
    assert len(wkv) == L and {n.op_type for n in wkv} == {"WKV5"}
    assert {(f.domain, f.name) for f in model.functions} == {("rwkv", "WKV5")}
    manifest = json.loads((out / "rwkv.json").read_text())
    assert manifest["architecture"]["version"] == version
    assert [s["shape"] for s in manifest["state"]] == [["batch", L, C], ["batch", L, C // N, N, N], ["batch", L, C]]

    tokens = np.random.default_rng(3).integers(0, V, size=(3, 10))
    logits, state = run_export(out, tokens)
    alone, alone_state = run_export(out, tokens[1:2])
    # rows are not just close but computed alike (RWKV-6 once rounded its ddlerp differently at batch 1: ~1e-8,
    # which a 12-layer model amplifies past the numerics contract's 1e-5 batch bound, docs/numerics.md)
    np.testing.assert_allclose(logits[1], alone[0], rtol=0, atol=1e-7 * alone.std())
    ref = alone_state["wkv"][0]
    assert np.abs(state["wkv"][1] - ref).max() <= BOUND_BATCH * np.abs(ref).max()  # a batch row vs it alone

    rt = RWKVModel.load(out, threads=1)
    s = rt.new_state(3)
    for t in range(tokens.shape[1]):
        got = rt.step(tokens[:, t], s)
    np.testing.assert_allclose(got, logits[:, -1], rtol=0, atol=1e-5 * logits.std())
    # greedy generation picks what plain ORT's argmax picks (over the bytes tokenizer's 256 ids), and its text is
    # the tokenizer's decoding of those ids
    tokenizer = rt.load_tokenizer()
    gen = generate(rt, tokenizer, "hi", max_new_tokens=4, temperature=0)
    text = "".join(gen)
    assert gen.tokens == greedy_tokens(out, list(b"hi"), 4, vocab=256) and gen.finish_reason == "length"
    assert text == gen.text == tokenizer.decode(gen.tokens)
    info = inspect_export(out)
    assert "rwkv::WKV5" in info["graphs"][0]["ops"] and info["graphs"][0]["functions"] == ["rwkv::WKV5"]


# ---------------------------------------------------------------------------------------------------- state tuning


@pytest.fixture(scope="module")
def tuned_52(tmp_path_factory):
    """A state-tuned RWKV-5.2 checkpoint (att.time_state inside) and its export."""
    root = tmp_path_factory.mktemp("tuned52")
    weights = make_checkpoint("5.2", 2, 96, 32, 301, seed=5, time_state=True)
    ck = save_checkpoint(weights, root / "tuned.pth")
    export_checkpoint(ck, root / "export", tokenizer="bytes")
    return weights, ck, root / "export"


def test_state_tuned_checkpoint_starts_from_its_time_state(tuned_52, tmp_path):
    weights, ck, out = tuned_52
    manifest = json.loads((out / "rwkv.json").read_text())
    assert [s["init_file"] for s in manifest["state"]] == [None, "wkv_init.npy", None]
    init = np.load(out / "wkv_init.npy")
    stored = torch.stack([weights[f"blocks.{i}.att.time_state"] for i in range(2)]).numpy()  # [L, H, value, key]
    np.testing.assert_array_equal(init, stored.transpose(0, 1, 3, 2))  # the package's [H, key, value]
    assert_passed(validate(ck, out, steps=32, batch=2, seed=2))  # the package loads time_state from the file itself

    # every runtime starts each row from it
    assert np.array_equal(RWKVModel.load(out, threads=1).new_state(2).to_numpy()["wkv"], np.stack([init, init]))
    tokens = np.random.default_rng(0).integers(0, 301, size=(2, 4))
    logits, _ = run_export(out, tokens)
    rt = RWKVModel.load(out, threads=1)
    s = rt.new_state(2)
    for t in range(4):
        got = rt.step(tokens[:, t], s)
    np.testing.assert_allclose(got, logits[:, -1], rtol=0, atol=1e-5 * logits.std())

    # the untransposed layout (what a forgotten transpose would export) is caught by validate
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    np.save(bad / "wkv_init.npy", stored)
    assert not validate(ck, bad, steps=4, batch=2).passed


def test_bad_init_files_are_refused(tuned_52, tmp_path):
    from rwkv_edge.runtime.manifest import load_manifest

    _, _, out = tuned_52
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    np.save(bad / "wkv_init.npy", np.zeros((2, 3, 32, 31), np.float32))
    with pytest.raises(
        RWKVEdgeError, match=r"wkv_init.npy: initial state of 'wkv' must be float32 \[2, 3, 32, 32\]"
    ) as e:
        RWKVModel.load(bad)
    assert "\n" not in str(e.value)
    (bad / "wkv_init.npy").unlink()
    with pytest.raises(RWKVEdgeError, match="listed in rwkv.json but missing"):
        RWKVModel.load(bad)
    manifest = json.loads((out / "rwkv.json").read_text())
    manifest["state"][1]["init_file"] = "../wkv_init.npy"
    write_broken_manifest(bad, manifest)
    with pytest.raises(RWKVEdgeError, match=r"state\[1\].init_file: expected a plain relative path"):
        load_manifest(bad)


def test_state_file_via_cli(exported, tmp_path):
    """export --initial-state FILE (only time_state tensors, bf16 as releases ship) and validate --initial-state."""
    ck, _ = exported("6", 2, 64, 16, 301)
    tuned = make_checkpoint("6", 2, 64, 16, 301, seed=0, time_state=True)
    state_file = tmp_path / "state.pth"
    torch.save({k: t.to(torch.bfloat16) for k, t in tuned.items() if k.endswith("time_state")}, state_file)
    out = tmp_path / "out"

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "rwkv_edge.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = cli("export", ck, "-o", out, "--tokenizer", "bytes", "--initial-state", state_file)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "rwkv.json").read_text())
    assert (
        manifest["state"][1]["init_file"] == "wkv_init.npy"
        and manifest["source"]["initial_state"]["file"] == "state.pth"
    )
    r = cli("validate", ck, out, "--steps", "8", "--initial-state", state_file)  # 32 steps: the in-process tests
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr

    with pytest.raises(RWKVEdgeError, match="--initial-state"):  # the package would start from zeros: refused
        validate(ck, out, steps=4)


def test_state_file_errors_are_one_line(exported, tmp_path):
    from rwkv_edge.exporter.checkpoint import load_checkpoint
    from rwkv_edge.exporter.state_tuning import read_state_file

    ck, _ = exported("6", 2, 64, 16, 301)
    arch = load_checkpoint(ck).arch
    cases = {
        "none.pth": ({"emb.weight": torch.zeros(2, 2)}, "found none"),
        "layers.pth": ({"blocks.0.att.time_state": torch.zeros(4, 16, 16)}, "missing for layers [1]"),
        "shape.pth": ({f"blocks.{i}.att.time_state": torch.zeros(2, 32, 32) for i in range(2)}, "expected [4, 16, 16]"),
    }
    for name, (tensors, words) in cases.items():
        torch.save(tensors, tmp_path / name)
        with pytest.raises(RWKVEdgeError) as e:
            read_state_file(tmp_path / name, arch)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_rwkv7_time_state_is_refused_with_a_reason(tmp_path):
    ck = save_checkpoint(make_checkpoint("7", 1, 32, 16, 301, time_state=True), tmp_path / "t7.pth")
    with pytest.raises(RWKVEdgeError, match="ignores att.time_state for RWKV-7") as e:
        export_checkpoint(ck, tmp_path / "out", tokenizer="bytes")
    assert "\n" not in str(e.value) and not (tmp_path / "out" / "rwkv.json").exists()


# ---------------------------------------------------------------------------------------------------- DeepEmbed


def test_rwkv7_deepembed_matches_the_package(tmp_path):
    from rwkv_edge.exporter.cells import build_cell
    from rwkv_edge.exporter.checkpoint import checkpoint_from_weights

    weights = make_checkpoint("7", 2, 64, 16, 301, seed=4, deepembed=True)
    ck = save_checkpoint(weights, tmp_path / "de.pth")
    manifest = export_checkpoint(ck, tmp_path / "out", tokenizer="bytes")
    assert manifest.source["variant"] == "deepembed"
    assert_passed(validate(ck, tmp_path / "out", steps=32, batch=2))  # the package runs with RWKV_DE_VERSION=1

    # the DeepEmbed path is live: without it the same weights give clearly different logits
    plain = {k: t for k, t in weights.items() if ".ffn.s" not in k}
    ids = torch.tensor([5, 77])
    cells = [build_cell(w, checkpoint_from_weights(w).arch) for w in (weights, plain)]
    with torch.no_grad():
        shapes = ((2, 64), (2, 4, 16, 16), (2, 64))
        de, base = (c(ids, *(torch.zeros(2, *s) for s in shapes))[0] for c in cells)  # a fresh zero state each
    assert (de - base).abs().max() / base.std() > 1e-2
