"""rwkv-export as a user meets it: every bad input is one line on stderr and exit code 2, a failed
validation exits 1, and no failed command leaves partial files or touches what the user had."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rwkv_edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_user_error(result, *fragments, code=2):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one clear line, no traceback
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def snapshot(d: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def tiny(exported):
    return exported("7", 2, 64, 16, 301)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["export", "--bogus"], "--bogus"),  # unknown option
        (["bench"], "export_dir"),  # missing argument
        (["bench", ".", "--threads", "0"], "--threads"),  # value out of range
        (["nonsense"], "nonsense"),  # unknown command
    ],
)
def test_usage_errors_are_one_line(tmp_path, args, fragment):
    r = cli(*args, cwd=tmp_path)
    assert_user_error(r, fragment, "--help")
    assert not any(tmp_path.iterdir())


def test_missing_checkpoint(tmp_path):
    r = cli("export", tmp_path / "nope.pth", "-o", tmp_path / "out")
    assert_user_error(r, "nope.pth")
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint(tmp_path):
    src = save_checkpoint(make_checkpoint("7", 1, 32, 16, 300), tmp_path / "m.pth")
    data = src.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    r = cli("export", tmp_path / "cut.pth", "-o", tmp_path / "out")
    assert_user_error(r, "cut.pth")
    assert not (tmp_path / "out").exists()


def test_not_an_rwkv_checkpoint(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    assert_user_error(cli("export", tmp_path / "other.pth", "-o", tmp_path / "out"), "emb.weight")


class Payload:  # any class: weights_only refuses to unpickle it
    pass


def test_pickle_refused_by_weights_only(tmp_path):
    torch.save(
        {"emb.weight": torch.zeros(2, 2), "x": Payload()},
        tmp_path / "evil.pth",
        pickle_protocol=pickle.DEFAULT_PROTOCOL,
    )
    assert_user_error(cli("export", tmp_path / "evil.pth", "-o", tmp_path / "out"), "evil.pth")


def test_directory_without_manifest(tmp_path):
    for args in (["generate", tmp_path], ["inspect", tmp_path]):
        assert_user_error(cli(*args), "rwkv.json")


def test_unknown_provider(tiny):
    _, out = tiny
    assert_user_error(cli("generate", out, "--provider", "tpu", "--max-tokens", "2"), "tpu")


def test_export_refuses_to_replace_a_model_without_overwrite(tiny, tmp_path):
    ck, out = tiny
    before = snapshot(out)
    assert_user_error(cli("export", ck, "-o", out, "--tokenizer", "bytes"), "--overwrite")
    assert snapshot(out) == before


def test_interrupted_export_keeps_the_old_model(tiny, tmp_path, monkeypatch):
    from rwkv_edge.exporter import pipeline

    ck, _ = tiny
    out = tmp_path / "out"
    pipeline.export_checkpoint(ck, out, tokenizer="bytes")
    before = snapshot(out)

    def crash(writer, model, name):
        (writer.folder / name).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.GraphWriter, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_checkpoint(ck, out, tokenizer="bytes", overwrite=True)
    assert snapshot(out) == before  # no staging folder left, nothing half-written


def test_overwrite_replaces_and_removes_stale_graphs(tiny, tmp_path):
    from rwkv_edge.exporter.pipeline import export_checkpoint

    ck, _ = tiny
    out = tmp_path / "out"
    export_checkpoint(ck, out, tokenizer="bytes")
    manifest = json.loads((out / "rwkv.json").read_text())
    manifest["graphs"].append({**manifest["graphs"][0], "file": "model.int8.onnx", "precision": "int8"})
    (out / "rwkv.json").write_text(json.dumps(manifest))
    (out / "model.int8.onnx").write_bytes((out / "model.onnx").read_bytes())
    r = cli("export", ck, "-o", out, "--tokenizer", "bytes", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx",
        "prefill.onnx",
        "rwkv.json",
    ]  # the CLI adds the prefill graph


def test_validate_fails_with_exit_1_on_a_wrong_model(tiny, tmp_path):
    ck, out = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    model = onnx.load(out / "model.onnx")
    for init in model.graph.initializer:
        if init.name == "blocks.1.ffn.value.weight":  # corrupt layer 1 only
            w = onnx.numpy_helper.to_array(init).copy()
            w[:, 0] += 0.5  # every hidden unit now writes into output channel 0
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, bad / "model.onnx")
    (bad / "rwkv.json").write_text((out / "rwkv.json").read_text())
    r = cli("validate", ck, bad, "--steps", "8")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "validation failed" in r.stderr
    report = json.loads((bad / "validation.json").read_text())
    assert report["passed"] is False
    assert any(c["first_divergence"] for c in report["comparisons"] if not c["passed"])


def test_export_validate_inspect_generate(tiny, tmp_path):
    ck, out = tiny
    r = cli("validate", ck, out, "--steps", "32", "--report", tmp_path / "report.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and json.loads((tmp_path / "report.json").read_text())["passed"]
    r = cli("inspect", out)
    assert r.returncode == 0 and "rwkv::WKV7" in r.stdout and "input_ids" in r.stdout
    r = cli("generate", out, "--prompt", "hi", "--max-tokens", "5", "--seed", "1")
    assert r.returncode == 0 and r.stdout.startswith("hi")
