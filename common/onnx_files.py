"""ONNX graphs on disk: saving them into an export folder, and the files each one reads.

A graph whose weights pass EXTERNAL_DATA_BYTES keeps them in a data file beside it (`<graph>.data`): protobuf caps
a file at 2 GiB, and ONNX Runtime maps a data file instead of copying it. A GraphWriter saves the graphs of one
folder in turn, and each initializer byte-identical to one already saved in a data file there points at that copy:
the step and the sequence graph of a precision keep one copy of their weights on disk. Every graph is saved without
per-node metadata (see without_node_metadata), so a file depends on the model alone, not on the machine or the
checkout that made it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx

# Weights above this go to a data file: ONNX Runtime maps a data file but parses a copy out of the protobuf (the
# memory this saves is measured in docs/quantization.md).
EXTERNAL_DATA_BYTES = 32 << 20
TENSOR_MIN_BYTES = 1024  # with a data file, smaller initializers stay inside the graph (as onnx's default)


class GraphWriter:
    """writer = GraphWriter(folder); writer.save(step, "model.onnx"); writer.save(sequence, "prefill.onnx")."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._saved: dict[tuple, list] = {}  # (graph's subfolder, name, signature) -> the tensor's external_data

    def save(self, model: onnx.ModelProto, name: str) -> list[str]:
        """Save `model` as `name` (relative to the folder); returns the files written, relative to the folder.
        The model's initializers that go to a data file are left pointing at it."""
        without_node_metadata(model)
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        where = Path(name).parent
        signatures = {t.name: _signature(t) for t in model.graph.initializer if t.HasField("raw_data")}
        self._point_at_saved(model, where, signatures)
        held = sum(len(t.raw_data) for t in model.graph.initializer)
        if held <= EXTERNAL_DATA_BYTES:
            onnx.save_model(model, path)
            return [name]
        data = path.name + ".data"
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data,
            size_threshold=TENSOR_MIN_BYTES,
        )
        if not path.with_name(data).exists():  # every tensor left in the graph was under the threshold
            return [name]
        os.chmod(path.with_name(data), path.stat().st_mode & 0o777)  # onnx makes it 0600; readable like the graph
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL and t.name in signatures:
                self._saved.setdefault((where, t.name, signatures[t.name]), list(t.external_data))
        return [name, (where / data).as_posix()]

    def _point_at_saved(self, model: onnx.ModelProto, where: Path, signatures: dict) -> None:
        for t in model.graph.initializer:
            entries = self._saved.get((where, t.name, signatures.get(t.name)))
            if entries is None:
                continue
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.extend(entries)


def without_node_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clear every node's metadata_props and doc_string, in place (main graph, If/Scan/Loop bodies, model-local
    functions): torch's exporter records there the Python stack trace of each node, with the absolute paths of the
    source files that traced it, and module scopes that are of no use to a runtime."""
    for node in _all_nodes(model):
        del node.metadata_props[:]
        node.doc_string = ""
    return model


def _all_nodes(model: onnx.ModelProto):
    pending = [model.graph.node, *(f.node for f in model.functions)]
    while pending:
        for node in pending.pop():
            yield node
            for attr in node.attribute:
                pending.extend(g.node for g in [attr.g] if attr.HasField("g"))
                pending.extend(g.node for g in attr.graphs)


def _signature(t: onnx.TensorProto) -> tuple:
    """What makes two initializers the same tensor: type, shape and bytes (hashed, so models need not stay held)."""
    return t.data_type, tuple(t.dims), hashlib.sha256(t.raw_data).digest()


def graph_files(export_dir: str | os.PathLike, file: str) -> set[Path]:
    """A graph's file and every data file its weights live in (one shared with the step graph too)."""
    path = Path(export_dir) / file
    files = {path}
    for t in onnx.load(path, load_external_data=False).graph.initializer:
        files.update(path.parent / e.value for e in t.external_data if e.key == "location")
    return files


def files_bytes(export_dir: str | os.PathLike, graphs: list[str]) -> int:
    """Bytes on disk of the graphs and of the data files they read, each file counted once."""
    paths = set().union(*(graph_files(export_dir, g) for g in graphs))
    return sum(p.stat().st_size for p in paths if p.is_file())


def graph_bytes(export_dir: str | os.PathLike, file: str) -> int:
    """Bytes on disk of a graph and of every data file its weights live in."""
    return files_bytes(export_dir, [file])
