"""runtime/manifest.schema.json, the JSON Schema of rwkv.json, and the runtime's own checks of it: the schema is
shipped, describes the manifest dataclasses, and jsonschema and load_manifest accept and refuse the same manifests,
the runtime in one line that names the field."""

import copy
import dataclasses
import json
import re
from importlib import resources

import jsonschema
import pytest
from broken_manifests import write_broken_manifest
from fake_model import build_fake_export

from rwkv_edge.runtime import RWKVEdgeError, RWKVModel
from rwkv_edge.runtime import manifest as m
from rwkv_edge.runtime.manifest import Manifest, load_manifest, manifest_schema

SCHEMA = manifest_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# Every field the exporter and quantizer write: a state-tuned RWKV-6 with a sequence graph returning every
# position, fp16 graphs with rescale_every and an int8 graph with its source.quantization entry, needs, backends and
# ORT-format file.
QUANTIZATION = {
    "scheme": "int8",
    "method": "weight_only",
    "block_size": 128,
    "policy": "matrix int8, lowrank int8, head int8, emb int8",
    "from": "model.onnx",
    "bytes": 405389,
    "onnxruntime": "1.32.0",
    "quantized": {"matrix": {"bits": 8, "tensors": 16, "elements": 106496}},
}
FULL = {
    "architecture": {
        "version": "6",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "head_size": 16,
        "vocab_size": 301,
        "n_ffn": 224,
    },
    "tokenizer": {"kind": "bytes", "file": None},
    "graphs": [
        {
            "file": "model.onnx",
            "kind": "step",
            "precision": "fp32",
            "input": "input_ids",
            "output": "logits",
            "opset": 18,
            "logits": "last",
        },
        {
            "file": "prefill.onnx",
            "kind": "sequence",
            "precision": "fp32",
            "input": "input_ids",
            "output": "logits",
            "opset": 18,
            "logits": "all",
        },
        {
            "file": "model.fp16.onnx",
            "kind": "step",
            "precision": "fp16",
            "input": "input_ids",
            "output": "logits",
            "opset": 18,
            "logits": "last",
            "rescale_every": 6,
        },
        {
            "file": "model.int8.onnx",
            "kind": "step",
            "precision": "int8",
            "input": "input_ids",
            "output": "logits",
            "opset": 18,
            "logits": "last",
            "needs": ["com.microsoft.MatMulNBits:bits=8", "com.microsoft.GatherBlockQuantized:bits=8"],
            "backends": ["cpu", "cuda", "node", "wasm", "webgpu"],
            "ort": "model.int8.ort",
        },
    ],  # fmt: skip
    "state": [
        {
            "name": "att_x",
            "input": "att_x",
            "output": "att_x_out",
            "shape": ["batch", 2, 64],
            "dtype": "float32",
            "init": 0.0,
            "init_file": None,
        },
        {
            "name": "wkv",
            "input": "wkv",
            "output": "wkv_out",
            "shape": ["batch", 2, 4, 16, 16],
            "dtype": "float32",
            "init": 0.0,
            "init_file": "wkv_init.npy",
        },
        {
            "name": "ffn_x",
            "input": "ffn_x",
            "output": "ffn_x_out",
            "shape": ["batch", 2, 64],
            "dtype": "float32",
            "init": -1e38,
            "init_file": None,
        },
    ],  # fmt: skip
    "format": "rwkv-edge/1",
    "source": {
        "checkpoint": "m.pth",
        "sha256": "e63ef7e3fbc422b9ff88f9aeec153e5e3b23f0c625e03acfe3399f1a0463fbe9",
        "rwkv_edge": "0.1.0",
        "torch": "2.13.0+cpu",
        "onnx": None,
        "variant": "deepembed",
        "initial_state": {"file": "m.pth", "from": "checkpoint time_state"},
        "quantization": {"model.int8.onnx": QUANTIZATION},
    },
}
DELETE = object()


def changed(path: tuple, value) -> dict:
    """FULL with the field at `path` set to `value` (or deleted)."""
    d = copy.deepcopy(FULL)
    *parents, last = path
    target = d
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return d


def schema_fields(d) -> set[str]:
    """The fields jsonschema's errors point at, spelled as the runtime spells them: graphs[0].file."""
    out = set()
    for e in VALIDATOR.iter_errors(d):
        path = list(e.absolute_path)
        if e.validator == "required":  # reported at the object: name the missing field
            path.append(re.match(r"'(.+)' is a required property", e.message).group(1))
        elif e.validator == "additionalProperties":
            path.append(re.search(r"\('(.+)' was unexpected\)", e.message).group(1))
        text = ""
        for p in path:
            if isinstance(p, int):
                text += f"[{p}]"
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p):
                text += f".{p}" if text else p
            else:
                text += f"[{json.dumps(p)}]"
        out.add(text)
    return out


# ---------------------------------------------------------------------------------------------------- the schema


def test_the_schema_ships_with_the_runtime():
    shipped = resources.files("rwkv_edge.runtime") / "manifest.schema.json"
    assert json.loads(shipped.read_text(encoding="utf-8")) == SCHEMA
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def subschemas(schema: dict):
    yield schema
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            yield from subschemas(sub)
    for key in ("items", "contains", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from subschemas(schema[key])


def test_the_schema_uses_only_what_the_runtime_checks():
    for sub in subschemas(SCHEMA):
        assert set(sub) <= m.CHECKED_KEYWORDS | m.ANNOTATIONS, set(sub) - m.CHECKED_KEYWORDS - m.ANNOTATIONS
        if "$ref" in sub:
            assert sub["$ref"].startswith("#/$defs/") and sub["$ref"][len("#/$defs/") :] in SCHEMA["$defs"]
        if "pattern" in sub:  # anchored: the runtime full-matches, jsonschema searches; both then agree
            assert sub["pattern"].startswith("^") and sub["pattern"].endswith("$")


@pytest.mark.parametrize(
    "name, cls",
    [("architecture", m.Architecture), ("tokenizer", m.TokenizerSpec), ("graph", m.GraphSpec), ("state", m.StateSpec)],
)
def test_the_schema_describes_the_dataclasses(name, cls):
    schema = SCHEMA["$defs"][name]
    fields = dataclasses.fields(cls)
    assert list(schema["properties"]) == [f.name for f in fields]
    assert schema["required"] == [f.name for f in fields if f.default is dataclasses.MISSING]
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert schema["properties"][f.name]["default"] == f.default, f.name
    assert "additionalProperties" not in schema  # a reader ignores fields it does not know


def test_the_schema_has_the_codes_enums():
    props = SCHEMA["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(Manifest)}
    assert SCHEMA["required"] == ["format", "architecture", "tokenizer", "graphs", "state"]
    assert props["format"]["const"] == m.FORMAT
    defs = SCHEMA["$defs"]
    assert defs["architecture"]["properties"]["version"]["enum"] == list(m.VERSIONS)
    assert defs["tokenizer"]["properties"]["kind"]["enum"] == list(m.TOKENIZER_KINDS)
    assert defs["graph"]["properties"]["kind"]["enum"] == list(m.GRAPH_KINDS)
    assert defs["graph"]["properties"]["precision"]["enum"] == list(m.PRECISIONS)
    assert defs["graph"]["properties"]["logits"]["enum"] == list(m.LOGITS_POSITIONS)


# ---------------------------------------------------------------------------------------------------- agreement

VALID = {
    "full": FULL,
    "graph defaults": changed(("graphs", 0), {"file": "model.onnx", "kind": "step", "precision": "fp32"}),
    "state defaults": changed(("state", 0), {"name": "att_x", "input": "att_x", "output": "o", "shape": ["batch"]}),
    "tokenizer file absent": changed(("tokenizer",), {"kind": "world"}),
    "tokenizer file in a folder": changed(("tokenizer",), {"kind": "neox20b", "file": "tok/tokenizer.json"}),
    "source absent": changed(("source",), DELETE),
    "source with fields of its own": changed(("source", "seed"), [1, 2]),
    "quantization entry with fields of its own": changed(("source", "quantization", "model.int8.onnx"), {"x": 1}),
    "an unknown top-level field (a newer optional field)": changed(("comment",), "made by hand"),
    "an unknown architecture field": changed(("architecture", "lora"), {}),
    "an unknown graph field": changed(("graphs", 0, "colour"), "red"),
    "an unknown state field": changed(("state", 1, "layout"), "rows"),
    "a whole number written as 2.0": changed(("architecture", "n_layer"), 2.0),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_manifests_pass_both(name, tmp_path):
    d = VALID[name]
    assert not list(VALIDATOR.iter_errors(d))
    (tmp_path / "rwkv.json").write_text(json.dumps(d))
    manifest = load_manifest(tmp_path)
    assert not list(VALIDATOR.iter_errors(json.loads(manifest.to_json())))  # and what it writes back
    assert type(manifest.architecture.n_layer) is int


# (where, value: DELETE removes the field, the field the runtime names, words of its message)
G, S = ("graphs", 0), ("state", 1)
Q = ("source", "quantization", "model.int8.onnx")
QF = 'source.quantization["model.int8.onnx"]'
BROKEN = [
    (("format",), DELETE, "format", "is missing"),
    (("format",), "rwkv-edge/2", "format", 'expected "rwkv-edge/1", found "rwkv-edge/2"'),
    (("architecture",), DELETE, "architecture", "is missing"),
    (("architecture", "n_layer"), DELETE, "architecture.n_layer", "is missing"),
    (("architecture", "n_layer"), "2", "architecture.n_layer", 'expected a whole number, found "2"'),
    (("architecture", "n_layer"), True, "architecture.n_layer", "expected a whole number, found true"),
    (("architecture", "n_layer"), 2.5, "architecture.n_layer", "expected a whole number, found 2.5"),
    (("architecture", "n_layer"), 0, "architecture.n_layer", "expected a whole number >= 1, found 0"),
    (("architecture", "version"), 7, "architecture.version", "expected a string, found 7"),
    (("architecture", "version"), "8", "architecture.version", 'expected one of "4", "5", "5.1"'),
    (("tokenizer",), 5, "tokenizer", "expected an object, found 5"),
    (("tokenizer", "kind"), "gpt2", "tokenizer.kind", 'expected one of "world", "neox20b", "bytes", found "gpt2"'),
    (("tokenizer", "file"), 3, "tokenizer.file", "expected a string or null, found 3"),
    (("tokenizer", "file"), "/etc/vocab.txt", "tokenizer.file", "a plain relative path inside the export directory"),
    (("graphs",), {}, "graphs", "expected a list, found an object"),
    (("graphs",), [], "graphs", "expected at least 1 entry, found none"),
    ((*G, "precision"), 8, "graphs[0].precision", "expected a string, found 8"),
    ((*G, "precision"), "int3", "graphs[0].precision", 'expected one of "fp32", "fp16", "int8", "int4"'),
    ((*G, "kind"), "batch", "graphs[0].kind", 'expected one of "step", "sequence", found "batch"'),
    ((*G, "file"), DELETE, "graphs[0].file", "is missing"),
    ((*G, "file"), "../model.onnx", "graphs[0].file", 'plain relative path inside the export directory, found "../'),
    ((*G, "file"), "/tmp/model.onnx", "graphs[0].file", "plain relative path"),
    ((*G, "file"), "sub\\model.onnx", "graphs[0].file", "plain relative path"),
    ((*G, "file"), "./model.onnx", "graphs[0].file", "plain relative path"),
    ((*G, "file"), "sub//model.onnx", "graphs[0].file", "plain relative path"),
    ((*G, "file"), "sub/", "graphs[0].file", "plain relative path"),
    ((*G, "file"), "", "graphs[0].file", "plain relative path"),
    ((*G, "file"), ".", "graphs[0].file", "plain relative path"),
    ((*G, "file"), "model\n.onnx", "graphs[0].file", "plain relative path"),
    ((*G, "input"), None, "graphs[0].input", "expected a string, found null"),
    ((*G, "opset"), "18", "graphs[0].opset", 'expected a whole number, found "18"'),
    ((*G, "logits"), "first", "graphs[0].logits", 'expected one of "last", "all", found "first"'),
    ((*G, "rescale_every"), -1, "graphs[0].rescale_every", "expected a whole number >= 0, found -1"),
    ((*G, "rescale_every"), 1.5, "graphs[0].rescale_every", "expected a whole number, found 1.5"),
    ((*G, "needs"), "com.microsoft.MatMulNBits", "graphs[0].needs", "expected a list or null, found"),
    ((*G, "needs"), [8], "graphs[0].needs[0]", "expected a string, found 8"),
    ((*G, "backends"), {"wasm": True}, "graphs[0].backends", "expected a list or null, found an object"),
    ((*G, "ort"), "../model.ort", "graphs[0].ort", "plain relative path inside the export directory"),
    (("state",), [], "state", "expected at least 1 entry, found none"),
    ((*S, "shape"), [2, 4, 16, 16], "state[1].shape", 'expected exactly one "batch" entry, found 0'),
    ((*S, "shape"), ["batch", "batch", 16], "state[1].shape", 'expected exactly one "batch" entry, found 2'),
    ((*S, "shape"), ["batch", 0, 16], "state[1].shape[1]", '"batch" or a whole number >= 1, found 0'),
    ((*S, "shape"), ["batch", "2", 16], "state[1].shape[1]", '"batch" or a whole number >= 1, found "2"'),
    ((*S, "shape"), ["batch", 2.5], "state[1].shape[1]", "expected a string or a whole number, found 2.5"),
    ((*S, "shape"), "batch", "state[1].shape", 'expected a list, found "batch"'),
    ((*S, "init"), "0", "state[1].init", 'expected a number, found "0"'),
    ((*S, "dtype"), 32, "state[1].dtype", "expected a string, found 32"),
    ((*S, "init_file"), "../wkv_init.npy", "state[1].init_file", "plain relative path inside the export directory"),
    ((*S, "output"), DELETE, "state[1].output", "is missing"),
    (("source",), [], "source", "expected an object, found a list"),
    (("source", "checkpoint"), 5, "source.checkpoint", "expected a string, found 5"),
    (("source", "quantization"), "int8", "source.quantization", 'expected an object, found "int8"'),
    ((*Q, "bytes"), "1", f"{QF}.bytes", 'expected a whole number, found "1"'),
    ((*Q, "block_size"), "128", f"{QF}.block_size", "a whole number or null"),
    ((*Q, "quantized", "matrix", "bits"), "8", f"{QF}.quantized.matrix.bits", 'expected a whole number, found "8"'),
]


@pytest.mark.parametrize("where, value, field, words", BROKEN, ids=[f"{i}-{c[2]}" for i, c in enumerate(BROKEN)])
def test_broken_manifests_are_refused_by_both_naming_the_field(where, value, field, words, tmp_path):
    d = changed(where, value)
    assert field in schema_fields(d)  # jsonschema refuses it, at that field
    write_broken_manifest(tmp_path, d)
    with pytest.raises(RWKVEdgeError) as e:
        load_manifest(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"rwkv.json: {field}"), msg
    assert words in msg, msg


def test_a_manifest_that_is_not_an_object(tmp_path):
    assert "" in schema_fields([FULL])
    write_broken_manifest(tmp_path, [FULL])
    with pytest.raises(RWKVEdgeError, match=r"^rwkv.json: expected an object, found a list$"):
        load_manifest(tmp_path)


def test_runtime_load_refuses_naming_the_field(tmp_path):
    out = build_fake_export(tmp_path / "fake")
    good = json.loads((out / "rwkv.json").read_text())
    assert RWKVModel.load(out).vocab_size == good["architecture"]["vocab_size"]
    bad = copy.deepcopy(good)
    bad["graphs"][0]["precision"] = 8
    write_broken_manifest(out, bad)
    with pytest.raises(RWKVEdgeError, match=r"^rwkv.json: graphs\[0\].precision: expected a string, found 8$"):
        RWKVModel.load(out)
    bad = copy.deepcopy(good)
    del bad["architecture"]["n_layer"]
    write_broken_manifest(out, bad)
    with pytest.raises(RWKVEdgeError, match=r"^rwkv.json: architecture.n_layer is missing$"):
        RWKVModel.load(out)


def test_check_refuses_what_would_be_written(tmp_path):
    """The exporter and quantizer call Manifest.check() before they write: the same rules, on the dataclasses."""
    manifest = load_manifest(build_fake_export(tmp_path / "fake"))
    manifest.check()
    bad = dataclasses.replace(manifest, graphs=[dataclasses.replace(manifest.graphs[0], precision="int3")])
    with pytest.raises(RWKVEdgeError, match=r"^rwkv.json: graphs\[0\].precision: expected one of"):
        bad.check()
    bad = dataclasses.replace(manifest, state=[dataclasses.replace(manifest.state[0], shape=[2, 4])])
    with pytest.raises(RWKVEdgeError, match=r'^rwkv.json: state\[0\].shape: expected exactly one "batch" entry'):
        bad.check()
