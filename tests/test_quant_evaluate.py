"""quant/evaluate.py: the measures are what they claim, and eval compares every precision on the same tokens."""

import shutil
import time

import numpy as np
import pytest

from rwkv_edge.quant.evaluate import (
    BUILTIN_TEXT,
    evaluate,
    nll_and_argmax,
    perplexity,
    read_text,
    top1_agreement,
)
from rwkv_edge.quant.pipeline import quantize_export
from rwkv_edge.runtime.errors import RWKVEdgeError


def test_measures():
    logits = np.array([1.0, 3.0, 2.0], np.float32)
    nll, best = nll_and_argmax(logits, 2)
    assert best == 1
    assert np.isclose(nll, -np.log(np.exp(2.0) / np.exp(logits.astype(np.float64)).sum()))
    assert np.isclose(perplexity(np.full(10, np.log(256.0))), 256.0)  # uniform over 256: perplexity 256
    assert top1_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    big = np.array([1000.0, 0.0], np.float32)  # no overflow in the softmax
    assert nll_and_argmax(big, 0) == (0.0, 0)


def test_builtin_text_is_the_held_out_tail():
    text, name = read_text(None)
    assert text.startswith('"Had you then persuaded yourself that I should?"')
    assert text.rstrip().endswith("had been the means of uniting them.")
    assert len(text.encode()) == 33852 and "held-out" in name
    assert BUILTIN_TEXT.is_file()


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    _, out = exported("7", 2, 64, 16, 301)
    dst = tmp_path_factory.mktemp("eval") / "export"
    shutil.copytree(out, dst)
    quantize_export(dst, "int8", block_size=32)
    quantize_export(dst, "int4", block_size=32)
    return dst


def test_every_precision_on_the_same_tokens(quantized):
    start = time.perf_counter()
    report = evaluate(quantized, "Alice was beginning to get very tired of sitting by her sister.", max_tokens=40)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    assert report.tokens == 40 and [r.precision for r in report.results] == ["fp32", "int8", "int4"]
    fp32, int8, int4 = report.results
    assert fp32.perplexity_change == 0 and fp32.top1_agreement == 1 and fp32.size_ratio == 1
    assert fp32.file == "model.onnx" and int8.file == "model.int8.onnx"
    for r in (int8, int4):
        assert r.bytes < fp32.bytes and 0 < r.size_ratio < 1
        assert 0 < r.perplexity and 0 <= r.top1_agreement <= 1
        # ms, not seconds (no ORT step takes a microsecond), and a step is a share of the whole run's time
        assert 1e-3 < r.ms_per_token < elapsed_ms / report.tokens
    assert int4.bytes < int8.bytes
    assert int8.top1_agreement >= 0.8  # random weights: close, not exact
    assert int8.within_bounds is not None and fp32.within_bounds is None
    d = report.to_dict()
    assert d["results"][1]["precision"] == "int8"


def test_precision_filter_and_errors(quantized):
    report = evaluate(quantized, "abcdefghij", precisions=["int8"])
    assert [r.precision for r in report.results] == ["fp32", "int8"]  # fp32 always: it is the reference
    with pytest.raises(RWKVEdgeError, match="has no fp16 step graph"):
        evaluate(quantized, "abc", precisions=["fp16"])
    with pytest.raises(RWKVEdgeError, match="at least 2"):
        evaluate(quantized, "a")
    with pytest.raises(RWKVEdgeError, match="max tokens must be >= 2"):
        evaluate(quantized, "abc", max_tokens=1)


def test_read_text_errors(tmp_path):
    with pytest.raises(RWKVEdgeError, match="no such text file"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(RWKVEdgeError, match="expected UTF-8 text"):
        read_text(tmp_path / "bin.txt")


def test_peak_memory_in_a_fresh_process(quantized):
    report = evaluate(quantized, "abcdefghij", precisions=["int8"], memory=True)
    for r in report.results:  # MiB of a process holding Python, numpy, onnxruntime and a tiny model
        assert 20 < r.peak_rss_mb < 2000, r
