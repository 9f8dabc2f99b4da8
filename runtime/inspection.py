"""What an export directory holds: manifest, each graph's inputs/outputs with shapes, opsets, file sizes.
Uses onnxruntime for the I/O (always installed) and onnx, when present, for opsets and op counts."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import onnxruntime as ort

from .manifest import Manifest, load_manifest


def inspect_export(export_dir: str | os.PathLike) -> dict:
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    graphs = []
    for g in manifest.graphs:
        path = export_dir / g.file
        info = {"file": g.file, "kind": g.kind, "precision": g.precision, "bytes": _bytes_on_disk(path)}
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        info["inputs"] = [(i.name, i.type, i.shape) for i in session.get_inputs()]
        info["outputs"] = [(o.name, o.type, o.shape) for o in session.get_outputs()]
        info.update(_graph_structure(path))
        graphs.append(info)
    return {"dir": str(export_dir), "manifest": manifest, "graphs": graphs, "files": _files(export_dir)}


def _bytes_on_disk(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _graph_structure(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        return {}
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)
    return {
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "functions": [f"{f.domain}::{f.name}" for f in model.functions],
        "ops": dict(ops.most_common()),
        "parameters": sum(_numel(t.dims) for t in model.graph.initializer),
    }


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _files(export_dir: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in export_dir.iterdir() if p.is_file())


__all__ = ["inspect_export", "Manifest"]
