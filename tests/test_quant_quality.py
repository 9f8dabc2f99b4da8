"""Quality bounds of the quantized embedded default model (the project's trained tiny RWKV-7) on text it was
not trained on: the held-out tail of its training text, which is also eval's built-in text.

The quality bounds (QUALITY_BOUNDS, docs/numerics.md) hold int8 to >= 98% top-1 agreement and <= +2% perplexity
vs fp32; the project's target on trained models is +1% (docs/quantization.md), so the test holds int8 to the tighter
of each. The measured values are in docs/quantization.md.
"""

import json
import shutil
from pathlib import Path

import pytest

from rwkv_edge.exporter.default_model import default_checkpoint
from rwkv_edge.quant.evaluate import BUILTIN_TEXT, QUALITY_BOUNDS, evaluate
from rwkv_edge.quant.pipeline import quantize_export

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    from rwkv_edge.exporter.pipeline import export_checkpoint

    out = tmp_path_factory.mktemp("default") / "export"
    export_checkpoint(default_checkpoint(), out, prefill="last")  # as `rwkv-export export` does
    quantize_export(out, "int8")
    quantize_export(out, "int8-rowwise")
    quantize_export(out, "int4")
    return out


def test_builtin_text_was_held_out_in_training():
    card = json.loads((default_checkpoint().parent / "model_card.json").read_text())
    start, end = card["training_text"]["held_out_bytes"]
    text = (REPO / card["training_text"]["file"]).read_bytes()
    assert end == len(text) and BUILTIN_TEXT.read_bytes() == text[start:end]


def test_quantized_default_model_keeps_its_quality(default_export):
    report = evaluate(default_export, threads=2, max_tokens=8192)  # every precision; docs/quantization.md: all of it
    assert report.tokens == 8192
    fp32, int8, rowwise, int4 = (report.result(p) for p in ("fp32", "int8", "int8-rowwise", "int4"))
    assert fp32.top1_accuracy > 0.4  # the model is trained: it predicts the text, so the comparison means something
    assert int8.perplexity_change <= 0.01, int8
    assert int8.top1_agreement >= 0.98, int8
    assert int8.within_bounds
    assert rowwise.within_bounds and rowwise.perplexity_change <= 0.01, rowwise  # the serving precision
    bound = QUALITY_BOUNDS["int4"]
    assert int4.within_bounds, (int4, bound)
    assert int8.bytes < 0.4 * fp32.bytes and int4.bytes < int8.bytes


@pytest.mark.parametrize("precision", ["int8", "int8-rowwise"])
def test_validate_accepts_the_int8_graph(default_export, tmp_path, precision):
    """rwkv-export validate --precision int8 (or the serving int8-rowwise): the quality bounds vs the `rwkv`
    package, not the fp32 ones."""
    from test_cli import cli

    work = tmp_path / "export"
    shutil.copytree(default_export, work)
    r = cli("validate", work, "--precision", precision, "--max-tokens", "1024")  # >= 1000 tokens, docs/numerics.md
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{precision} vs the rwkv package on 1024 tokens" in r.stdout and "[opt-off]" in r.stdout
    report = json.loads((work / f"validation.{precision}.json").read_text())
    assert report["passed"] and report["precision"] == precision and report["tokens"] == 1024
    assert [c["name"] for c in report["comparisons"]] == [
        f"onnx {precision} [opt-off] vs rwkv",
        f"onnx {precision} [opt-all] vs rwkv",
    ]
    for c in report["comparisons"]:
        assert c["top1_agreement"] >= 0.98 and c["perplexity_change"] <= 0.02
    # the prefill graph against stepping; WKV7Seq's chunked form rounds unlike stepping even with optimizations
    # off, so both levels take the measured rounding scale, not the plain 1e-4
    sequence = {c["name"]: c for c in report["sequence"]}
    assert sorted(sequence) == [
        f"prefill {precision}[opt-all] row 0 vs stepping",
        f"prefill {precision}[opt-off] row 0 vs stepping",
    ]
    assert all(c["bound"] > 1e-4 for c in sequence.values())
