"""ONNX exports of random-weight RWKV-4 and RWKV-7 checkpoints agree with BlinkDL's `rwkv` package within the
numerics contract's bounds (docs/numerics.md) over 32 steps, at batch 1 and 2, with ORT graph optimizations off and
on."""

import numpy as np
import onnx
import pytest
from generic_driver import run_export

from rwkv_edge.validation.validate import BOUND_VS_REFERENCE, validate

# (version, n_layer, n_embd, head_size, vocab): head_size 64 and smaller, several heads, odd vocab sizes
SHAPES = [
    ("7", 2, 64, 16, 301),  # 4 heads of 16
    ("7", 3, 128, 64, 1003),  # 2 heads of 64
    ("4", 2, 64, 64, 301),
    ("4", 3, 96, 96, 1003),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"v{s[0]}-L{s[1]}-C{s[2]}-N{s[3]}-V{s[4]}")
def test_export_matches_rwkv_package(exported, shape):
    ck, out = exported(*shape)
    report = validate(ck, out, steps=32, batch=2, seed=1)
    failed = [(c.name, c.logits_err, c.state_err, c.first_divergence) for c in report.comparisons if not c.passed]
    assert report.passed, failed
    names = {c.name for c in report.comparisons}
    assert {"onnx[opt-off] b=1 vs rwkv", "onnx[opt-all] b=1 vs rwkv", "onnx[opt-all] b=2 row 1 vs alone"} <= names
    # the errors are real measurements, not zeros from comparing a thing with itself
    headline = next(c for c in report.comparisons if c.name == "onnx[opt-all] b=1 vs rwkv")
    assert 0 < headline.logits_err <= BOUND_VS_REFERENCE
    assert len(headline.per_step) == 32


@pytest.mark.parametrize("shape", SHAPES[::2], ids=lambda s: f"v{s[0]}")
def test_graph_contract(exported, shape):
    """WKV is an rwkv-domain node with a model-local function; batch is dynamic; names as in the manifest."""
    _, out = exported(*shape)
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model)
    wkv_ops = [n for n in model.graph.node if n.domain == "rwkv"]
    assert len(wkv_ops) == shape[1]  # one per layer
    assert {(f.domain, f.name) for f in model.functions} == {("rwkv", wkv_ops[0].op_type)}
    assert {o.domain: o.version for o in model.opset_import}["rwkv"] == 1
    ids = model.graph.input[0]
    assert ids.name == "input_ids" and ids.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    initializers = {i.name for i in model.graph.initializer}
    assert "blocks.0.att.key.weight" in initializers  # official names survive


@pytest.mark.parametrize("shape", SHAPES[:1] + SHAPES[2:3], ids=lambda s: f"v{s[0]}")
def test_generic_driver_runs_export_and_rows_are_independent(exported, shape):
    _, out = exported(*shape)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, shape[4], size=(3, 12))
    logits, state = run_export(out, tokens)
    assert logits.shape == (3, 12, shape[4]) and np.all(np.isfinite(logits))
    for row in range(3):
        alone, alone_state = run_export(out, tokens[row : row + 1])
        np.testing.assert_allclose(logits[row], alone[0], rtol=0, atol=1e-5 * alone.std())
        for name in state:
            np.testing.assert_allclose(state[name][row], alone_state[name][0], rtol=1e-5, atol=1e-6)
    # a row's history matters: the same last token after different prefixes gives different logits
    tokens[:, -1] = tokens[0, -1]
    logits, _ = run_export(out, tokens)
    assert not np.allclose(logits[0, -1], logits[1, -1])


def test_large_models_store_weights_as_external_data(tmp_path, monkeypatch):
    """Above the threshold (32 MiB in real use) the weights go to model.onnx.data beside the graph, and the
    export still runs through the manifest-only driver."""
    from rwkv_edge.common import onnx_files
    from rwkv_edge.exporter.pipeline import export_checkpoint
    from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint

    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    ck = save_checkpoint(make_checkpoint("7", 1, 64, 32, 300), tmp_path / "m.pth")
    export_checkpoint(ck, tmp_path / "out", tokenizer="bytes")
    assert (tmp_path / "out" / "model.onnx.data").stat().st_size > (tmp_path / "out" / "model.onnx").stat().st_size
    logits, _ = run_export(tmp_path / "out", np.array([[1, 2, 3]]))
    assert np.all(np.isfinite(logits))
