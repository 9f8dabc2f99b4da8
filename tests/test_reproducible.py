"""An export depends on the checkpoint alone: the same checkpoint exported (and quantized to int8) from two copies
of the package in different folders gives byte-identical files, so no file names the machine or the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import rwkv_edge.exporter
from rwkv_edge.common.onnx_files import GraphWriter, without_node_metadata
from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint

PACKAGE_ROOT = Path(rwkv_edge.exporter.__file__).resolve().parent.parent  # the folder holding common/, exporter/ ...
SUBPACKAGES = ("common", "runtime", "exporter", "quant", "deploy")  # what export and quantize import

# Run in a fresh interpreter started with -S: the editable install's finder (a .pth file in site-packages) would
# otherwise import the checkout under test rather than the copy.
EXPORT = """
import sys
from pathlib import Path
import rwkv_edge.exporter
from rwkv_edge.exporter.pipeline import export_checkpoint
from rwkv_edge.quant.pipeline import quantize_export

checkpoint, out = sys.argv[1:]
export_checkpoint(checkpoint, out, tokenizer="bytes", prefill="last")
quantize_export(out, "int8")
print(Path(rwkv_edge.exporter.__file__).resolve())
"""


def package_copy(root: Path) -> Path:
    """The package's sources laid out as an installed rwkv_edge namespace: root/rwkv_edge/{common,exporter,...}."""
    for name in SUBPACKAGES:
        shutil.copytree(
            PACKAGE_ROOT / name, root / "rwkv_edge" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return root


def start_export(copy: Path, checkpoint: Path, out: Path) -> subprocess.Popen:
    site_packages = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    env = {"PYTHONPATH": ":".join([str(copy), *site_packages]), "PATH": "/usr/bin:/bin", "HOME": str(copy)}
    return subprocess.Popen(
        [sys.executable, "-S", "-c", EXPORT, str(checkpoint), str(out)],
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_export(run: subprocess.Popen, copy: Path) -> None:
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    used = Path(stdout.strip().splitlines()[-1])
    assert used == (copy / "rwkv_edge" / "exporter" / "__init__.py").resolve(), used


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory) -> tuple[Path, Path]:
    weights = make_checkpoint("7", 1, 32, 16, 256, seed=1)  # 256: the bytes tokenizer
    runs, outs = [], []
    for where in ("first", "second/deeper"):  # different folders, of different lengths
        root = tmp_path_factory.mktemp("checkout") / where
        copy = package_copy(root)
        checkpoint = save_checkpoint(weights, root / "tiny.pth")
        outs.append(root / "export")
        runs.append((start_export(copy, checkpoint, outs[-1]), copy))  # both at once
    for run, copy in runs:
        finish_export(run, copy)
    return outs[0], outs[1]


def test_two_checkouts_export_identical_files(two_exports):
    first, second = two_exports
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"model.onnx", "prefill.onnx", "model.int8.onnx", "prefill.int8.onnx", "rwkv.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_exported_files_name_no_folder(two_exports):
    first, _ = two_exports
    for path in first.iterdir():
        data = path.read_bytes()
        for folder in {str(first.parent), str(PACKAGE_ROOT), "/tmp/", "/home/", "site-packages"}:
            assert folder.encode() not in data, (path.name, folder)


def test_graphs_carry_no_node_metadata(two_exports):
    first, _ = two_exports
    for path in sorted(first.glob("*.onnx")):
        model = onnx.load(path, load_external_data=False)
        nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
        assert nodes, path.name
        for node in _walk(nodes):
            assert not node.metadata_props and not node.doc_string, (path.name, node.name)


def test_writer_clears_node_metadata_in_functions_and_bodies(tmp_path):
    """Every node the writer saves loses its metadata: the main graph's, an If branch's, a function's."""
    from onnx import TensorProto, helper

    def tagged(node):
        node.doc_string = "File /somewhere/cell.py"
        node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value="File /somewhere/cell.py, line 1")
        return node

    branch = helper.make_graph([tagged(helper.make_node("Identity", ["x"], ["y"]))], "branch", [], [])
    fn = helper.make_function(
        "local", "F", ["a"], ["b"], [tagged(helper.make_node("Neg", ["a"], ["b"]))], [helper.make_opsetid("", 18)]
    )
    graph = helper.make_graph(
        [
            tagged(helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)),
            tagged(helper.make_node("F", ["y"], ["z"], domain="local")),
        ],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", 1, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    GraphWriter(tmp_path).save(helper.make_model(graph, opset_imports=opsets, functions=[fn]), "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    nodes = list(_walk(list(model.graph.node) + list(model.functions[0].node)))
    assert [n.op_type for n in nodes] == ["If", "Identity", "Identity", "F", "Neg"]
    assert not any(n.metadata_props or n.doc_string for n in nodes)
    assert b"/somewhere" not in (tmp_path / "m.onnx").read_bytes()
    assert without_node_metadata(model) is model


def _walk(nodes):
    for node in nodes:
        yield node
        for attr in node.attribute:
            yield from _walk(list(attr.g.node) + [n for g in attr.graphs for n in g.node])
