"""A graph with one state tensor per layer, rewritten from the export's stacked state (docs/format.md, "State").

The format stacks each state tensor over the layers ([batch, n_layer, ...]); every graph cuts it with
Reshape -> Split(axis 1) and stacks the new state with Unsqueeze -> Concat(axis 1). Both copy the whole state each
step, a cost that grows with the batch (a 0.1B row's WKV state is 2.4 MB). Opened on the CPU, the runtime removes
them: the Split's outputs become graph inputs and the Concat's parts graph outputs, named `{state}.{layer}`, bound to
views of one host array per state tensor kept layer-major ([n_layer, batch, ...]: each layer's rows contiguous).
The same ops run on the same values, so the outputs are bit-identical to the stacked graph's.

A graph that does not have exactly this pattern is left as it is (per_layer_graph returns None). The runtime does not
depend on the onnx package, so the rewrite edits the file's protobuf fields (runtime/onnx_wire.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import onnx_wire as wire
from .manifest import StateSpec

# A graph file this big holds its weights inline: parsing it in Python would cost more memory than the rewrite saves.
MAX_GRAPH_BYTES = 256 << 20
TYPE_FIELD, TYPE_TENSOR, TENSOR_TYPE_ELEM = 2, 1, 1  # ValueInfoProto.type, TypeProto.tensor_type, .elem_type


def layer_name(name: str, layer: int) -> str:
    """The graph input or output of one layer's part of the state tensor `name` (its input or output name)."""
    return f"{name}.{layer}"


def layer_count(spec: StateSpec) -> int:
    return int(spec.shape[1])


def state_input_names(specs: list[StateSpec], layered: bool) -> list[str]:
    if layered:
        return [layer_name(s.input, i) for s in specs for i in range(layer_count(s))]
    return [s.input for s in specs]


def state_output_names(specs: list[StateSpec], layered: bool) -> list[str]:
    if layered:
        return [layer_name(s.output, i) for s in specs for i in range(layer_count(s))]
    return [s.output for s in specs]


def split_layers(specs: list[StateSpec], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stacked state arrays by name -> the per-layer graph inputs (views)."""
    return {layer_name(s.input, i): arrays[s.name][:, i] for s in specs for i in range(layer_count(s))}


def stack_layers(specs: list[StateSpec], outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The per-layer graph outputs, in state_output_names order -> stacked state arrays by name."""
    stacked, at = {}, 0
    for s in specs:
        n = layer_count(s)
        stacked[s.name] = np.stack(outputs[at : at + n], axis=1)
        at += n
    return stacked


def per_layer_graph(path: Path, specs: list[StateSpec]) -> bytes | None:
    """The graph file at `path` rewritten with one state tensor per layer (its weights stay where they were: open the
    bytes with the session option that names the folder of its external data), or None where the pattern differs
    or the file cannot be read as a model."""
    try:
        if Path(path).stat().st_size > MAX_GRAPH_BYTES:
            return None
        model = wire.parse(Path(path).read_bytes())
        graph = next((f for f in model if f.number == wire.MODEL_GRAPH), None)
        rewritten = None if graph is None else _rewrite_graph(wire.parse(graph.value), specs)
    except (OSError, wire.WireError, UnicodeDecodeError):
        return None
    if rewritten is None:
        return None
    graph.value = rewritten
    return wire.serialize(model)


def _rewrite_graph(fields: list[wire.Field], specs: list[StateSpec]) -> bytes | None:
    nodes = [wire.Node(wire.parse(f.value)) for f in fields if f.number == wire.GRAPH_NODE]
    consumers: dict[str, list[wire.Node]] = {}
    for node in nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in nodes for out in node.outputs}
    infos = {n: {} for n in (wire.GRAPH_INPUT, wire.GRAPH_OUTPUT, wire.GRAPH_VALUE_INFO)}  # field -> name -> fields
    info_names = {}  # id of a graph field holding a ValueInfoProto -> its name
    for f in fields:
        if f.number in infos:
            info = wire.parse(f.value)
            info_names[id(f)] = wire.string(info, wire.VALUE_INFO_NAME)
            infos[f.number][info_names[id(f)]] = info
    constants = _int64_constants(fields, nodes)
    dropped: set[int] = set()
    renames: dict[str, str] = {}  # a Split output -> the per-layer input that replaces it, and the like for outputs
    new_inputs, new_outputs, shape_nodes = [], [], []
    for spec in specs:
        n_layer = spec.shape[1]
        if spec.input not in infos[wire.GRAPH_INPUT] or spec.output not in infos[wire.GRAPH_OUTPUT]:
            return None
        if not isinstance(n_layer, int) or spec.shape[0] != "batch":
            return None
        cut = _cut(consumers.get(spec.input, []), consumers, n_layer)
        stack = _stack(producer.get(spec.output), producer, consumers, constants, n_layer)
        if cut is None or stack is None:
            return None
        reshape, split, shapes = cut
        concat, unsqueezes = stack
        dropped |= {id(reshape), id(split), id(concat), *map(id, unsqueezes)}
        shape_nodes += [(node, layer_name(spec.input, 0)) for node in shapes]
        stacked_type = infos[wire.GRAPH_INPUT][spec.input]
        for layer, part in enumerate(split.outputs):
            renames[part] = layer_name(spec.input, layer)
            new_inputs.append(_value_info(renames[part], infos[wire.GRAPH_VALUE_INFO].get(part), stacked_type))
        for layer, node in enumerate(unsqueezes):
            part = node.inputs[0]
            renames[part] = layer_name(spec.output, layer)
            new_outputs.append(_value_info(renames[part], infos[wire.GRAPH_VALUE_INFO].get(part), stacked_type))
    for node, first_layer in shape_nodes:  # the batch size read from the stacked input: read it from layer 0's
        node.rename({node.inputs[0]: first_layer})
    gone = {s.input for s in specs} | {s.output for s in specs} | set(renames)  # names no longer declared
    out = [f for f in fields if f.number != wire.GRAPH_NODE and info_names.get(id(f)) not in gone]
    for node in nodes:
        if id(node) in dropped:
            continue
        node.rename(renames)
        out.append(wire.Field(wire.GRAPH_NODE, wire.BYTES, wire.serialize(node.fields)))
    out += [wire.Field(wire.GRAPH_INPUT, wire.BYTES, wire.serialize(v)) for v in new_inputs]
    out += [wire.Field(wire.GRAPH_OUTPUT, wire.BYTES, wire.serialize(v)) for v in new_outputs]
    return wire.serialize(out)


def _int64_constants(fields: list[wire.Field], nodes: list[wire.Node]) -> dict[str, list[int]]:
    """Small int64 tensors by name: initializers, and Constant nodes' values."""
    tensors = []  # (name, TensorProto fields)
    for f in fields:
        if f.number == wire.GRAPH_INITIALIZER:
            tensor = wire.parse(f.value)
            tensors.append((wire.string(tensor, wire.TENSOR_NAME), tensor))
    for node in nodes:
        value = node.attribute("value") if node.op_type == "Constant" and node.outputs else None
        t = next((f.value for f in value or [] if f.number == wire.ATTR_T), None)
        if t is not None:
            tensors.append((node.outputs[0], wire.parse(t)))
    found = {}
    for name, tensor in tensors:
        values = wire.tensor_int64s(tensor)
        if values is not None:
            found[name] = values
    return found


def _value_info(name: str, like: list[wire.Field] | None, stacked: list[wire.Field]) -> list[wire.Field]:
    """A ValueInfoProto named `name`: the graph's own value_info of that tensor where it has one (its type and
    shape), else the stacked input's element type without a shape."""
    if like is not None:
        return [wire.text_field(wire.VALUE_INFO_NAME, name)] + [f for f in like if f.number != wire.VALUE_INFO_NAME]
    type_proto = next(f.value for f in stacked if f.number == TYPE_FIELD)
    tensor_type = next(f.value for f in wire.parse(type_proto) if f.number == TYPE_TENSOR)
    elem = [f for f in wire.parse(tensor_type) if f.number == TENSOR_TYPE_ELEM]
    only_elem = wire.serialize([wire.Field(TYPE_TENSOR, wire.BYTES, wire.serialize(elem))])
    return [wire.text_field(wire.VALUE_INFO_NAME, name), wire.Field(TYPE_FIELD, wire.BYTES, only_elem)]


def _cut(users: list[wire.Node], consumers: dict, n_layer: int):
    """(Reshape, Split, [Shape nodes]) when the input feeds one Reshape into one Split(axis 1) in n_layer equal
    parts, and otherwise only Shape nodes that read the batch axis."""
    reshapes = [n for n in users if n.op_type == "Reshape" and not n.domain]
    shapes = [n for n in users if n.op_type == "Shape" and not n.domain]
    if len(reshapes) != 1 or len(reshapes) + len(shapes) != len(users):
        return None
    if any(n.int_attribute("start", 0) != 0 or n.int_attribute("end", None) != 1 for n in shapes):
        return None
    splits = consumers.get(reshapes[0].outputs[0], [])
    if len(splits) != 1 or splits[0].op_type != "Split" or splits[0].int_attribute("axis", 0) != 1:
        return None
    if len(splits[0].outputs) != n_layer or len(splits[0].inputs) > 1:  # no `split` sizes input: equal parts
        return None
    return reshapes[0], splits[0], shapes


def _stack(concat: wire.Node | None, producer: dict, consumers: dict, constants: dict, n_layer: int):
    """(Concat, [Unsqueeze per layer]) when the output is a Concat(axis 1) of n_layer Unsqueeze(axes [1]) that feed
    nothing else, and nothing in the graph reads the output."""
    if concat is None or concat.op_type != "Concat" or concat.int_attribute("axis", None) != 1:
        return None
    if len(concat.inputs) != n_layer or consumers.get(concat.outputs[0]):
        return None
    parts = [producer.get(name) for name in concat.inputs]
    for part in parts:
        if part is None or part.op_type != "Unsqueeze" or len(part.inputs) != 2:
            return None
        if constants.get(part.inputs[1]) != [1] or len(consumers.get(part.outputs[0], [])) != 1:
            return None
    return concat, parts
