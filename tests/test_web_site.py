"""deploy/web_site.py (rwkv-export web): the site holds the page, the runtime, exactly the onnxruntime-web files the
page's import map names (and the .mjs/.wasm each loads), and the model files rwkv.json points at (external data
included, only the chosen precisions); an existing site is replaced only with overwrite, and every refusal
leaves what was there."""

import json
import re
import shutil
import subprocess
import sys

import onnx
import pytest
from fake_model import build_fake_export

from rwkv_edge.deploy.web_site import INSTALL_HINT, WEB_DIR, build_site
from rwkv_edge.runtime import RWKVEdgeError
from rwkv_edge.runtime.manifest import load_manifest

pytestmark = pytest.mark.skipif(
    not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir(),
    reason=f"web/node_modules is not installed ({INSTALL_HINT})",
)


@pytest.fixture
def export(tmp_path):
    """A fake export with fp32 and int8 graphs (the same file under two names); the int8 one keeps its weights in
    model.int8.onnx.data, and the sequence graph reads them from there too."""
    out = build_fake_export(tmp_path / "export", with_sequence=True)
    for name in ("model", "prefill"):
        model = onnx.load(out / f"{name}.onnx")
        data = {"save_as_external_data": True, "location": "model.int8.onnx.data", "size_threshold": 0}
        onnx.save(model, out / f"{name}.int8.onnx", **data)
    manifest = json.loads((out / "rwkv.json").read_text())
    manifest["graphs"] += [
        {**g, "file": g["file"].replace(".onnx", ".int8.onnx"), "precision": "int8"} for g in manifest["graphs"]
    ]
    (out / "rwkv.json").write_text(json.dumps(manifest))
    return out


def import_map() -> dict:
    html = (WEB_DIR / "site" / "index.html").read_text()
    return json.loads(re.search(r'<script type="importmap">(.*?)</script>', html, re.S).group(1))["imports"]


def test_the_site_holds_the_page_the_runtime_ort_and_the_model(export, tmp_path):
    site = tmp_path / "site"
    result = build_site(export, site)
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert set(result.files) == files and result.bytes == sum((site / f).stat().st_size for f in files)
    page = {p.relative_to(WEB_DIR / "site").as_posix() for p in (WEB_DIR / "site").rglob("*") if p.is_file()}
    runtime = {"src/" + p.relative_to(WEB_DIR / "src").as_posix() for p in (WEB_DIR / "src").rglob("*") if p.is_file()}
    assert page | runtime <= files and "index.html" in files and "src/index.js" in files
    for target in import_map().values():  # every module the page imports is in the site
        assert target.removeprefix("./") in files, target
    ort = {f for f in files if f.startswith("ort/")}
    dist = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
    assert ort == {
        "ort/ort.wasm.min.mjs",
        "ort/ort-wasm-simd-threaded.mjs",  # the wasm build's loader and binary
        "ort/ort-wasm-simd-threaded.wasm",
        "ort/ort.webgpu.min.mjs",
        "ort/ort-wasm-simd-threaded.asyncify.mjs",  # the WebGPU build's
        "ort/ort-wasm-simd-threaded.asyncify.wasm",
    }, "the page's import map changed: update this list"
    assert all((site / f).read_bytes() == (dist / f[4:]).read_bytes() for f in ort)
    model = {f for f in files if f.startswith("model/")}
    assert model == {
        f"model/{name}"
        for name in ("rwkv.json", "model.onnx", "prefill.onnx", "model.int8.onnx", "prefill.int8.onnx")
        + ("model.int8.onnx.data",)
    }
    assert load_manifest(site / "model") == load_manifest(export)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_only_the_chosen_precisions(export, tmp_path):
    result = build_site(export, tmp_path / "site", ["int8"])
    assert result.precisions == ["int8"]
    manifest = load_manifest(tmp_path / "site" / "model")
    assert [g.file for g in manifest.graphs] == ["model.int8.onnx", "prefill.int8.onnx"]
    assert not (tmp_path / "site" / "model" / "model.onnx").exists()
    assert (tmp_path / "site" / "model" / "model.int8.onnx.data").is_file()
    with pytest.raises(RWKVEdgeError, match=r"has no graph of precision int4 \(it has: fp32, int8\)"):
        build_site(export, tmp_path / "other", ["int4"])
    assert not (tmp_path / "other").exists()


def test_an_existing_site_is_replaced_only_with_overwrite(export, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "mine.txt").write_text("keep me")
    with pytest.raises(RWKVEdgeError, match=r"site is not empty; pass --overwrite to replace it"):
        build_site(export, site)
    assert [p.name for p in site.iterdir()] == ["mine.txt"]
    build_site(export, site, overwrite=True)
    assert not (site / "mine.txt").exists() and (site / "index.html").is_file()
    for target in (export, export.parent):  # never over the export, nor over a folder holding it
        with pytest.raises(RWKVEdgeError, match="the site would replace the export"):
            build_site(export, target, overwrite=True)
    assert (export / "rwkv.json").is_file()


def test_refusals_name_what_is_missing(export, tmp_path):
    web = tmp_path / "web"
    shutil.copytree(WEB_DIR / "site", web / "site")
    shutil.copytree(WEB_DIR / "src", web / "src")
    with pytest.raises(
        RWKVEdgeError, match=r"node_modules is missing; run: cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci$"
    ):
        build_site(export, tmp_path / "site", web_dir=web)
    model = onnx.load(export / "model.int8.onnx", load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.bin"
    onnx.save(model, export / "model.int8.onnx")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    with pytest.raises(RWKVEdgeError, match="external data outside"):
        build_site(export, tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_the_cli_builds_the_site(export, tmp_path):
    run = [sys.executable, "-m", "rwkv_edge.cli", "web", str(export), "-o", str(tmp_path / "site")]
    done = subprocess.run([*run, "--precision", "fp32"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "precisions fp32" in done.stdout and "rwkv-edge-web serve" in done.stdout
    again = subprocess.run(run, capture_output=True, text=True)
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 2 and len(lines) == 1 and "pass --overwrite" in lines[0], again.stderr
