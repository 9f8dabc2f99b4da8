"""One copy of the weights for two saved optimized graphs: the sequence graph's initializers read the step graph's
data file wherever the bytes there are the same, prepacked forms included.

ONNX Runtime saves an optimized graph with `session.save_external_prepacked_constant_initializers` on: each
initializer's external_data then holds, beside location / offset / length, one `prepacked_<i>` entry per packed
form a kernel made of it, "<kernel key>|<offset>;<length>;<a third field, kept as written>" into the same data
file. A session that opens the graph maps those blobs instead of packing the weights again, and two sessions that
map one file share its pages (counted once in PSS). The step and the sequence graph of one precision hold the
same weights, packed alike (the same blobs, under another kernel's key where the step graph fused a MatMul into a
Gemm): pointed at one file, they decode through the step graph and prefill through the sequence graph for the
memory of one graph (runtime/optimized_cache.py's pair entries).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

ALIGN = 64  # byte alignment of each blob in a rewritten data file, as ONNX Runtime writes them


class _Blobs:
    """Read-only views of the data files of one folder, mapped once."""

    def __init__(self, folder: Path):
        self.folder, self.maps = folder, {}

    def get(self, location: str, offset: int, length: int) -> memoryview:
        if location not in self.maps:
            with open(self.folder / location, "rb") as f:
                self.maps[location] = (
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
                )
        return memoryview(self.maps[location])[offset : offset + length]

    def close(self) -> None:
        for m in self.maps.values():
            if isinstance(m, mmap.mmap):
                try:
                    m.close()
                except BufferError:  # a view is still held (an exception's frame): the map goes with it
                    pass


def _external_tensors(graph: onnx.GraphProto):
    """The graph's tensors stored as external data, its subgraphs' included (ORT saves the constants of an If or
    Scan body there too)."""
    import onnx

    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            tensors += [attr.t] if attr.type == onnx.AttributeProto.TENSOR else list(attr.tensors)
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                tensors += _external_tensors(sub)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _packed(entries: dict[str, str]) -> dict[str, tuple[int, int, str]]:
    """prepacked_<i> entries -> {kernel key: (offset, length, the third field)}"""
    out = {}
    for k, v in entries.items():
        if k.startswith("prepacked"):
            key, _, where = v.rpartition("|")
            offset, length, count = where.split(";")
            out[key] = (int(offset), int(length), count)
    return out


def _in_reference(mine: dict[str, str], theirs: dict[str, str], blobs: _Blobs) -> dict[str, str] | None:
    """`mine`'s external data entries re-pointed at the bytes `theirs` holds, or None when its original bytes or one
    of its packed forms are not there. A packed form matches by content: the same packing under another kernel's
    key (the step graph's Gemm where the sequence graph has a MatMul) is the same blob."""
    length = int(mine["length"])
    if int(theirs["length"]) != length or (
        blobs.get(mine["location"], int(mine["offset"]), length)
        != blobs.get(theirs["location"], int(theirs["offset"]), length)
    ):
        return None
    new = {"location": theirs["location"], "offset": theirs["offset"], "length": theirs["length"]}
    candidates = [(offset, size) for offset, size, _ in _packed(theirs).values()]
    for i, (key, (offset, size, count)) in enumerate(_packed(mine).items()):
        blob = blobs.get(mine["location"], offset, size)
        found = next((o for o, n in candidates if n == size and blobs.get(theirs["location"], o, n) == blob), None)
        if found is None:
            return None
        new[f"prepacked_{i}"] = f"{key}|{found};{size};{count}"
    return new


def share_data_file(graph: Path, reference: Path) -> int:
    """Rewrite the saved optimized `graph` so that each initializer that `reference` (another saved graph in the same
    folder) holds byte for byte, packed forms included, reads it from `reference`'s data file; the others move to a
    fresh data file of `graph`'s, which replaces its own. Returns how many initializers now read `reference`'s file.
    Raises ValueError, the files untouched, when a data entry does not read as ONNX Runtime writes them, and
    ModuleNotFoundError without the onnx package (imported here: the rest of the runtime needs only onnxruntime)."""
    import onnx

    folder = graph.parent
    model = onnx.load(graph, load_external_data=False)
    external = _external_tensors(model.graph)
    theirs = {t.name: _entries(t) for t in _external_tensors(onnx.load(reference, load_external_data=False).graph)}
    blobs = _Blobs(folder)
    fresh = folder / (graph.name + ".data.new")
    try:
        plan = []  # (initializer, its entries, its entries in the reference or None)
        for t in external:
            mine = _entries(t)
            try:
                _packed(mine)
                plan.append((t, mine, _in_reference(mine, theirs[t.name], blobs) if t.name in theirs else None))
            except (KeyError, ValueError) as e:
                raise ValueError(f"{graph.name}: {t.name}: unexpected external data entry ({e})") from None
        with open(fresh, "wb") as out:
            for t, mine, new in plan:
                if new is None:  # its bytes and packed forms move to the fresh file
                    new = {
                        "location": graph.name + ".data",
                        "length": mine["length"],
                        "offset": str(
                            _append(out, blobs.get(mine["location"], int(mine["offset"]), int(mine["length"])))
                        ),
                    }
                    for i, (key, (offset, length, count)) in enumerate(_packed(mine).items()):
                        new[f"prepacked_{i}"] = (
                            f"{key}|{_append(out, blobs.get(mine['location'], offset, length))};{length};{count}"
                        )
                del t.external_data[:]
                for k, v in new.items():
                    t.external_data.add(key=k, value=v)
    except BaseException:
        fresh.unlink(missing_ok=True)
        raise
    finally:
        blobs.close()
    if fresh.stat().st_size:
        os.replace(fresh, folder / (graph.name + ".data"))
    else:  # every initializer reads the reference's file
        fresh.unlink()
        (folder / (graph.name + ".data")).unlink(missing_ok=True)
    onnx.save(model, graph)
    return sum(new is not None for _, _, new in plan)


def _append(out, data: memoryview) -> int:
    """Write `data` at the next ALIGN boundary of `out`; returns its offset."""
    offset = -(-out.tell() // ALIGN) * ALIGN
    out.write(b"\0" * (offset - out.tell()))
    out.write(data)
    return offset
