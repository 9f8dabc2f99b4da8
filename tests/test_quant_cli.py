"""rwkv-export quantize / eval / validate --precision as a user meets them: bad input is one line and exit 2,
and no failed command touches a file."""

import json
import shutil

import pytest
from test_cli import assert_user_error, cli, snapshot


@pytest.fixture
def export_copy(exported, tmp_path):
    _, out = exported("7", 2, 64, 16, 301)
    dst = tmp_path / "export"
    shutil.copytree(out, dst)
    return dst


def test_quantize_then_eval(export_copy):
    r = cli("quantize", export_copy, "--block-size", "32")
    assert r.returncode == 0, r.stderr
    assert (
        "wrote model.int8.onnx" in r.stdout and "of model.onnx's" in r.stdout and "next: rwkv-export eval" in r.stdout
    )
    r = cli("eval", export_copy, "--max-tokens", "64", "--no-memory")
    assert r.returncode == 0, r.stderr
    assert "fp32" in r.stdout and "int8" in r.stdout and "top-1" in r.stdout
    report = json.loads((export_copy / "eval.json").read_text())
    assert [x["precision"] for x in report["results"]] == ["fp32", "int8"] and report["tokens"] == 64
    r = cli("generate", export_copy, "--precision", "int8", "--max-tokens", "4", "--seed", "0")
    assert r.returncode == 0, r.stderr


def test_second_quantize_is_one_line_and_changes_nothing(export_copy):
    assert cli("quantize", export_copy).returncode == 0
    before = snapshot(export_copy)
    assert_user_error(cli("quantize", export_copy), "already has a graph of precision int8", "--overwrite")
    assert snapshot(export_copy) == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--scheme", "int3"], ["unknown quantization scheme 'int3'", "int8, int8-dynamic, int8-rowwise, int4"]),
        (["--block-size", "100"], ["block size must be one of"]),
        (["--keep-float", "heads"], ["unknown weight group 'heads'"]),
    ],
)
def test_bad_options(export_copy, args, fragments):
    before = snapshot(export_copy)
    assert_user_error(cli("quantize", export_copy, *args), *fragments)
    assert snapshot(export_copy) == before


def test_directory_without_fp32_model(export_copy, tmp_path):
    (export_copy / "model.onnx").unlink()
    before = snapshot(export_copy)
    assert_user_error(cli("quantize", export_copy), "model.onnx", "missing", "rwkv-export export")
    assert snapshot(export_copy) == before
    assert_user_error(cli("quantize", tmp_path / "nowhere"), "no such directory")
    assert_user_error(cli("eval", tmp_path / "nowhere"), "no such directory")


def test_eval_errors(export_copy, tmp_path):
    assert_user_error(cli("eval", export_copy, "--text", tmp_path / "missing.txt"), "missing.txt", "no such text file")
    assert_user_error(cli("eval", export_copy, "--precision", "int8"), "no int8 step graph", "rwkv-export quantize")


def test_validate_precision_without_that_graph(exported, export_copy):
    ck, _ = exported("7", 2, 64, 16, 301)
    assert_user_error(cli("validate", ck, export_copy, "--precision", "int8"), "no step graph of precision int8")
    assert_user_error(cli("validate", ck, export_copy, "--precision", "int2"), "no quality bound for precision 'int2'")
