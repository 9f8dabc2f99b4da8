"""The sequence (prefill) graph of every generation equals stepping the step graph within the numerics contract's
bound (<= 1e-4, docs/numerics.md, measured as validate.py does), fed in chunks across chunk boundaries, at batch 2;
with logits of the last position (the default) and of every position; sharing the step graph's weight file; and the
runtime feeds prompts through it and, in one session, decodes through it too (fp32 and int8)."""

import numpy as np
import onnx
import pytest
from generic_driver import run_export, run_export_sequence

from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import RWKVModel
from rwkv_edge.validation.validate import BOUND_BATCH, BOUND_VS_REFERENCE, logits_error, state_error

# (version, n_layer, n_embd, head_size, vocab): small, several heads where the generation has heads
SHAPES = [
    ("4", 2, 32, 32, 301),
    ("5", 2, 32, 16, 301),
    ("5.1", 2, 32, 16, 301),
    ("5.2", 2, 32, 16, 301),
    ("6", 2, 64, 32, 301),
    ("7", 2, 32, 16, 301),
]
TOKENS = np.random.default_rng(5).integers(0, 301, size=(2, 11))  # 11 tokens: chunks of 4 end mid-chunk


def export(tmp_path_factory, shape, prefill):
    from rwkv_edge.exporter.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp(f"seq-v{shape[0]}")
    ck = save_checkpoint(make_checkpoint(*shape, seed=2), root / "model.pth")
    export_checkpoint(ck, root / "export", tokenizer="bytes", prefill=prefill)
    return root / "export"


def assert_close_to_stepping(logits, state, ref_logits, ref_state):
    """logits [B, T, vocab] or [B, vocab] (the last position); states by input name, [B, L, ...]."""
    if logits.ndim == 2:
        ref_logits = ref_logits[:, -1:]
        logits = logits[:, None]
    for row in range(logits.shape[0]):
        err = logits_error(logits[row], ref_logits[row])
        assert err.max() <= BOUND_VS_REFERENCE, (row, err)
        for name in ref_state:
            assert state_error(state[name][row], ref_state[name][row])[0] <= BOUND_VS_REFERENCE, (row, name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"v{s[0]}")
def test_sequence_graph_equals_stepping(tmp_path_factory, shape):
    out = export(tmp_path_factory, shape, "last")
    manifest = load_manifest(out)
    sequence = manifest.graph("sequence")
    assert (sequence.file, sequence.logits) == ("prefill.onnx", "last")
    model = onnx.load(out / "prefill.onnx")
    assert [n.op_type for n in model.graph.node if n.domain == "rwkv"] == [
        f"WKV{'4' if shape[0] == '4' else '7' if shape[0] == '7' else '5'}Seq"
    ] * 2
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and dims[0].dim_param and dims[1].dim_param  # [batch, seq], both dynamic

    ref_logits, ref_state = run_export(out, TOKENS)  # the step graph, one token at a time
    for chunk in (4, 11):  # across chunk boundaries, and the whole prompt at once
        logits, state = run_export_sequence(out, TOKENS, chunk=chunk)
        assert logits.shape == (2, 301)
        assert_close_to_stepping(logits, state, ref_logits, ref_state)

    # the runtime feeds prompts through it, and then steps on from the state it left
    rt = RWKVModel.load(out, prefill_chunk=4)
    assert rt.sequence_session is not None
    state = rt.new_state(2)
    logits = rt.feed(TOKENS[:, :-1], state)
    logits = rt.step(TOKENS[:, -1], state)
    assert_close_to_stepping(logits, state.to_numpy(), ref_logits, ref_state)
    assert_one_session_decodes_as_stepping(out, "fp32", ref_logits, ref_state)

    # int8: the quantized prefill graph against int8 stepping, and one int8 session decoding
    from rwkv_edge.quant.pipeline import quantize_export

    quantize_export(out, "int8", block_size=16)
    ref_logits, ref_state = run_export(out, TOKENS, precision="int8")
    logits, state = run_export_sequence(out, TOKENS, chunk=4, precision="int8")
    assert_close_to_stepping(logits, state, ref_logits, ref_state)
    assert_one_session_decodes_as_stepping(out, "int8", ref_logits, ref_state)


def assert_one_session_decodes_as_stepping(out, precision, ref_logits, ref_state):
    """The runtime's CPU default: one session, the sequence graph, for prefill and decode (each weight packed once).
    Its steps (the WKV*Seq functions' one-token branch), a feed/step mix, and step_numpy equal stepping the step
    graph within 1e-4; a batch row equals the same sequence alone within 1e-5; one_session=False opens the step
    graph and agrees."""
    rt = RWKVModel.load(out, precision=precision, prefill_chunk=4)
    assert rt.one_session and rt.step_session is rt.sequence_session and rt.decode_graph.kind == "sequence"
    assert rt.step_graph.file == ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
    state = rt.new_state(2)
    every = np.stack([rt.step(TOKENS[:, t], state) for t in range(TOKENS.shape[1])], axis=1)
    assert_close_to_stepping(every, state.to_numpy(), ref_logits, ref_state)

    mixed = rt.new_state(2)
    rt.feed(TOKENS[:, :3], mixed)
    rt.step(TOKENS[:, 3], mixed)
    rt.feed(TOKENS[:, 4:6], mixed)
    for t in (6, 7):
        rt.step(TOKENS[:, t], mixed)
    assert_close_to_stepping(rt.feed(TOKENS[:, 8:], mixed), mixed.to_numpy(), ref_logits, ref_state)

    alone = rt.new_state(1)
    row = np.stack([rt.step(TOKENS[1:, t], alone) for t in range(TOKENS.shape[1])], axis=1)
    assert logits_error(row[0], every[1]).max() <= BOUND_BATCH
    for name, value in alone.to_numpy().items():
        assert state_error(value[0], state.to_numpy()[name][1])[0] <= BOUND_BATCH, name

    arrays = rt.new_state(2).to_numpy()
    for t in range(3):
        logits, arrays = rt.step_numpy(TOKENS[:, t], arrays)
    assert_close_to_stepping(logits, arrays, ref_logits[:, :3], run_export(out, TOKENS[:, :3], precision=precision)[1])

    two = RWKVModel.load(out, precision=precision, one_session=False)
    assert not two.one_session and two.step_session is not two.sequence_session and two.decode_graph is two.step_graph
    s2 = two.new_state(2)
    two.feed(TOKENS[:, :-1], s2)
    assert_close_to_stepping(two.step(TOKENS[:, -1], s2), s2.to_numpy(), ref_logits, ref_state)


def test_all_positions_and_shared_weights(tmp_path_factory, monkeypatch):
    """prefill="all": logits of every position (perplexity), each within the bound of stepping; above the size
    threshold both graphs read one weight file (prefill.onnx holds no copy of the matrices)."""
    from rwkv_edge.common import onnx_files

    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    out = export(tmp_path_factory, ("7", 2, 32, 16, 301), "all")
    assert load_manifest(out).graph("sequence").logits == "all"
    data = (out / "model.onnx.data").stat().st_size
    assert not (out / "prefill.onnx.data").exists()
    initializers = onnx.load(out / "prefill.onnx", load_external_data=False).graph.initializer
    assert {e.value for t in initializers for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    assert sum(len(t.raw_data) for t in initializers) < data / 10  # only small vectors stay inline

    ref_logits, ref_state = run_export(out, TOKENS)
    logits, state = run_export_sequence(out, TOKENS, chunk=4)
    assert logits.shape == (2, 11, 301)
    assert_close_to_stepping(logits, state, ref_logits, ref_state)

    rt = RWKVModel.load(out, prefill_chunk=4)
    s = rt.new_state(2)
    every = rt.feed(TOKENS, s, all_logits=True)
    assert every.shape == (2, 11, 301)
    np.testing.assert_array_equal(every[:, -1], s.logits)
    assert_close_to_stepping(every, s.to_numpy(), ref_logits, ref_state)


@pytest.mark.parametrize("version, scheme", [("4", "int8"), ("7", "int8"), ("7", "int8-rowwise")])
def test_int8_sequence_graph_equals_int8_stepping(tmp_path_factory, version, scheme):
    """`rwkv-export quantize` quantizes the prefill graph beside the step graph (prefill.int8.onnx); fed in
    chunks it equals stepping model.int8.onnx within the same bound, and the runtime picks it for int8.
    (int8-rowwise: each token of the prompt is a row with its own activation scale, as it is when stepped.)"""
    from rwkv_edge.quant.pipeline import quantize_export

    out = export(tmp_path_factory, (version, 2, 64, 64 if version == "4" else 16, 301), "last")
    quantize_export(out, scheme, block_size=32)
    assert load_manifest(out).graph("sequence", scheme).file == f"prefill.{scheme}.onnx"
    ref_logits, ref_state = run_export(out, TOKENS, precision=scheme)
    logits, state = run_export_sequence(out, TOKENS, chunk=4, precision=scheme)
    assert_close_to_stepping(logits, state, ref_logits, ref_state)
    rt = RWKVModel.load(out, precision=scheme, prefill_chunk=4)
    assert rt.sequence_graph.file == f"prefill.{scheme}.onnx"
    s = rt.new_state(2)
    assert_close_to_stepping(rt.feed(TOKENS, s), s.to_numpy(), ref_logits, ref_state)


def test_bench_reports_every_precision(exported):
    """`rwkv-export bench` measures: decode ms, floor, prefill tok/s (stepping when there is no sequence graph)."""
    import time

    from rwkv_edge.cli.tables import bench_table, plain_text
    from rwkv_edge.measure.bench import bench_export, weight_bytes_per_token

    _, out = exported("7", 2, 64, 16, 301)
    start = time.perf_counter()
    result = bench_export(out, tokens=4, warmup=1, prefill_lengths=(8,), memory=False)
    elapsed_s = time.perf_counter() - start
    (row,) = result["rows"]
    assert row["precision"] == "fp32"
    # ms, not seconds (no ORT step takes a microsecond), and the 4 timed steps are a share of the whole run
    assert 1e-3 < row["decode_ms"] < elapsed_s * 1e3 / 4
    assert 8 / elapsed_s < row["prefill_tokens_s"][8] < 1e6  # 8 tokens fed within the run, none in a microsecond
    assert row["sequence_graph"] is False  # the fixture exports the step graph only
    total = sum(len(t.raw_data) for t in onnx.load(out / "model.onnx").graph.initializer)
    per_token = weight_bytes_per_token(out / "model.onnx")
    assert per_token == total - 301 * 64 * 4 + 64 * 4  # every weight once, the embedding one row
    bandwidth = result["bandwidth_gbs"]  # measured: no value given, the probe sampled before each decode block
    low, high = result["bandwidth_range_gbs"]
    assert 0.5 < low <= bandwidth <= high < 2000 and result["bandwidth_source"].startswith("measured")
    assert low <= row["bandwidth_gbs"] <= high
    # both rounded: the floor to 3 decimals, the bandwidth to 1 (a large share of a loaded machine's few GB/s)
    assert row["floor_ms"] == pytest.approx(
        per_token / (row["bandwidth_gbs"] * 1e9) * 1e3, rel=1.1 * 0.05 / row["bandwidth_gbs"], abs=1e-3
    )

    def assert_over_floor(ratio, ms):
        """4 steps are one decode block, so a ratio is its ms over the floor at the one probe sample, within the
        rounding of the row's fields (ms to 3 decimals, bandwidth to 1, ratios to 2)."""
        expected = ms / (per_token / (row["bandwidth_gbs"] * 1e9) * 1e3)
        rel = 0.0005 / ms + 0.05 / row["bandwidth_gbs"]
        assert abs(ratio - expected) <= 1.1 * rel * expected + 0.005, (ratio, expected)

    assert_over_floor(row["floor_ratio"], row["decode_ms"])
    assert_over_floor(row["kernels_ratio"], row["kernels_ms"])  # the weight readers alone, sampled beside the probe
    table = plain_text(bench_table(result))
    assert "decode ms" in table and "kernels ms" in table and result["machine"]["threads"] == 2
    given = bench_export(out, tokens=2, warmup=1, prefill_lengths=(4,), memory=False, bandwidth_gbs=25)
    assert given["bandwidth_source"] == "given" and given["rows"][0]["floor_ms"] == round(per_token / 25e9 * 1e3, 3)
    assert (
        bench_export(out, tokens=2, warmup=1, prefill_lengths=(4,), memory=False, kernel_probe=False)["rows"][0][
            "kernels_ms"
        ]
        is None
    )


def test_bench_command(exported, tmp_path):
    import json
    import subprocess
    import sys

    _, out = exported("7", 2, 64, 16, 301)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv_edge.cli",
            "bench",
            str(out),
            "--tokens",
            "2",
            "--no-memory",
            "--report",
            str(tmp_path / "bench.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "decode ms" in r.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [row["precision"] for row in report["rows"]] == ["fp32"] and set(report["rows"][0]["prefill_tokens_s"]) == {
        "128",
        "512",
    }
    bad = subprocess.run(
        [sys.executable, "-m", "rwkv_edge.cli", "bench", str(out), "--precision", "int4", "--no-memory"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "int4" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_validate_holds_the_sequence_graph_to_stepping(tmp_path_factory):
    """`rwkv-export validate` also compares the prefill graph, fed in chunks, with stepping (both opt levels, every
    row), and fails when the prefill graph computes something else (one weight of prefill.onnx nudged by 1%)."""
    from rwkv_edge.validation.validate import sequence_comparisons, validate

    shape = ("7", 2, 32, 16, 301)
    out = export(tmp_path_factory, shape, "last")
    ck = out.parent / "model.pth"
    report = validate(ck, out, steps=16, batch=2, seed=3)
    prefill = [c for c in report.comparisons if c.name.startswith("prefill fp32")]
    assert len(prefill) == 4 and all(c.passed for c in prefill) and report.passed, [
        c.name for c in report.comparisons if not c.passed
    ]

    model = onnx.load(out / "prefill.onnx")
    weight = next(t for t in model.graph.initializer if t.name == "blocks.1.ffn.value.weight")
    values = onnx.numpy_helper.to_array(weight) * np.float32(1.01)
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, out / "prefill.onnx")
    broken = sequence_comparisons(out, load_manifest(out), TOKENS)
    assert broken and not any(c.passed for c in broken)
    assert all(c.first_divergence.startswith("step 0") for c in broken)


@pytest.mark.parametrize("version", ["4", "7"])
def test_validate_holds_int8_prefill_to_int8_stepping(tmp_path_factory, version):
    """int8: with ORT optimizations off the two graphs run the same kernels and agree to 1e-4; with them on the
    bound widens to the int8 step graph's own move between opt levels (activation rounding flips)."""
    from rwkv_edge.quant.pipeline import quantize_export
    from rwkv_edge.validation.validate import sequence_comparisons

    out = export(tmp_path_factory, (version, 2, 64, 64 if version == "4" else 16, 301), "last")
    quantize_export(out, "int8", block_size=32)
    comparisons = sequence_comparisons(out, load_manifest(out), TOKENS, "int8")
    assert [c.name for c in comparisons][:2] == [
        "prefill int8[opt-off] row 0 vs stepping",
        "prefill int8[opt-off] row 1 vs stepping",
    ]
    assert all(c.passed for c in comparisons)
    assert all(c.bound == BOUND_VS_REFERENCE for c in comparisons[:2])


def test_validate_holds_fp16_prefill_to_fp16_stepping(tmp_path_factory):
    """fp16 rounds in a different order in the two graphs at any opt level: the bound is 3x the fp16 step graph's
    own distance from fp32 (about 1e-2 here), not 1e-4; a prefill graph that computes something else still fails."""
    from rwkv_edge.quant.pipeline import quantize_export
    from rwkv_edge.validation.validate import sequence_comparisons

    out = export(tmp_path_factory, ("7", 2, 64, 16, 301), "last")
    quantize_export(out, "fp16")
    comparisons = sequence_comparisons(out, load_manifest(out), TOKENS, "fp16")
    assert len(comparisons) == 4 and all(c.passed for c in comparisons)
    assert all(BOUND_VS_REFERENCE < c.bound < 0.1 for c in comparisons)
    model = onnx.load(out / "prefill.fp16.onnx")
    weight = next(t for t in model.graph.initializer if t.name == "blocks.1.ffn.value.weight")
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * np.float16(1.25), weight.name))
    onnx.save(model, out / "prefill.fp16.onnx")  # one weight 25% off: caught
    assert not any(c.passed for c in sequence_comparisons(out, load_manifest(out), TOKENS, "fp16"))


def test_quantized_prefill_reads_the_step_graphs_data_file(tmp_path_factory, monkeypatch):
    """Quantization is deterministic, so the int8 prefill graph's weights are the int8 step graph's bytes: above
    the data-file threshold it points at model.int8.onnx.data (one copy on disk, as for fp32) and still equals
    stepping."""
    from rwkv_edge.common import onnx_files
    from rwkv_edge.quant import pipeline

    out = export(tmp_path_factory, ("7", 2, 64, 16, 301), "last")
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1000)
    result = pipeline.quantize_export(out, "int8", block_size=32)
    assert [g.files for g in result.graphs] == [["model.int8.onnx", "model.int8.onnx.data"], ["prefill.int8.onnx"]]
    prefill = onnx.load(out / "prefill.int8.onnx", load_external_data=False)
    locations = {e.value for t in prefill.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.int8.onnx.data"} and not (out / "prefill.int8.onnx.data").exists()
    ref_logits, ref_state = run_export(out, TOKENS, precision="int8")
    logits, state = run_export_sequence(out, TOKENS, chunk=4, precision="int8")
    assert_close_to_stepping(logits, state, ref_logits, ref_state)
