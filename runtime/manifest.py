"""rwkv.json: the one file an app needs to drive an exported model with plain ONNX Runtime.

Format "rwkv-edge/1"; manifest.schema.json beside this file is its JSON Schema (shipped as package data, so any app
can validate a manifest with it), and load_manifest enforces that schema itself, without a JSON Schema library:

    {
      "format": "rwkv-edge/1",
      "architecture": {"version": "7", "n_layer": 12, "n_embd": 768, "n_head": 12, "head_size": 64,
                       "vocab_size": 65536, "n_ffn": 3072},
      "tokenizer": {"kind": "world" | "neox20b" | "bytes", "file": "rwkv_vocab_v20230424.txt" | null},
      "graphs": [{"file": "model.onnx", "kind": "step", "precision": "fp32",
                  "input": "input_ids", "output": "logits", "opset": 18,
                  "logits": "last"}],        # sequence graphs ("prefill.onnx"): "last" or "all" positions;
                                             # fp16 RWKV-4..6 graphs also "rescale_every": 6 (see GraphSpec)
                                             # optional "needs", "backends", "ort" (see GraphSpec)
      "state": [{"name": "att_x", "input": "att_x", "output": "att_x_out",
                 "shape": ["batch", 12, 768], "dtype": "float32", "init": 0.0,
                 "init_file": null}, ...],   # or "wkv_init.npy": a state-tuned initial value (see StateSpec)
      "source": {...}   # provenance: checkpoint name, sha256, package versions, "quantization" per graph file
    }
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from rwkv_edge.common.files import write_text_atomic

from .errors import RWKVEdgeError

FORMAT = "rwkv-edge/1"
MANIFEST_NAME = "rwkv.json"
VERSIONS = ("4", "5", "5.1", "5.2", "6", "7")
TOKENIZER_KINDS = ("world", "neox20b", "bytes")
GRAPH_KINDS = ("step", "sequence")
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int8-dynamic", "int8-rowwise")
# a sequence graph's logits: [batch, vocab] of the last position, or [batch, seq, vocab]
LOGITS_POSITIONS = ("last", "all")


@dataclass(frozen=True)
class Architecture:
    version: str  # RWKV generation: "4", "5", "5.1", "5.2", "6" or "7"
    n_layer: int  # number of blocks
    n_embd: int  # model width C
    n_head: int  # WKV heads H (RWKV-4: 1, its WKV is per channel)
    head_size: int  # N = C / H (RWKV-4: C)
    vocab_size: int  # rows of emb.weight
    n_ffn: int  # width of the channel-mixing hidden layer


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str  # "world", "neox20b" or "bytes"
    file: str | None = None  # relative to the export directory; None for bytes


@dataclass(frozen=True)
class GraphSpec:
    file: str  # relative to the export directory
    kind: str  # "step" (input_ids [batch]) or "sequence" (input_ids [batch, seq])
    precision: str  # one of PRECISIONS
    input: str = "input_ids"
    output: str = "logits"
    opset: int = 18
    logits: str = (
        "last"  # sequence graphs: "last" (logits [batch, vocab]) or "all" (every position, [batch, seq, vocab])
    )
    # fp16 RWKV-4..6: the residual stream is halved after every this many layers (the rwkv package's RESCALE_LAYER),
    # baked into the graph; logits and state mean what fp32's do. 0: not rescaled (written to rwkv.json only when set).
    rescale_every: int = 0
    # Running beyond CPython (docs/format.md): the kernels the graph uses beyond standard ONNX and the rwkv functions
    # (e.g. "com.microsoft.MatMulNBits:bits=8"), the backends known to run it, and its ORT-format file. None: not
    # recorded (older exports; a reader tries). Lists are left out of the hash.
    needs: list[str] | None = field(default=None, hash=False)
    backends: list[str] | None = field(default=None, hash=False)
    ort: str | None = None


# GraphSpec fields written to rwkv.json only when set, so that manifests without them read as before
_OMITTED_UNSET = {"rescale_every": 0, "needs": None, "backends": None, "ort": None}


@dataclass(frozen=True)
class StateSpec:
    name: str  # kind of state: att_x, att_a, att_b, att_p, ffn_x (v4) or att_x, wkv, ffn_x (v5+)
    input: str  # graph input name
    output: str  # graph output name holding the next step's value
    shape: list  # e.g. ["batch", L, C]; the string "batch" marks the dynamic axis
    dtype: str = "float32"
    init: float = 0.0  # RWKV-4's att_p starts at -1e38
    # State tuning: a .npy in the export directory holding the initial value of one sequence (the shape without
    # the batch axis, same dtype); every row of a new state starts from it. None: every element starts at `init`.
    init_file: str | None = None

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "batch" else int(d) for d in self.shape)


@dataclass(frozen=True)
class Manifest:
    architecture: Architecture
    tokenizer: TokenizerSpec
    graphs: list[GraphSpec]
    state: list[StateSpec]
    format: str = FORMAT
    source: dict = field(default_factory=dict)

    def graph(self, kind: str = "step", precision: str = "fp32") -> GraphSpec:
        for g in self.graphs:
            if g.kind == kind and g.precision == precision:
                return g
        have = ", ".join(f"{g.kind}/{g.precision}" for g in self.graphs) or "none"
        raise RWKVEdgeError(
            f"no {kind} graph of precision {precision} in this export (it has: {have}); "
            f"run `rwkv-export quantize` or pick another precision"
        )

    def to_json(self) -> str:
        d = asdict(self)
        for g in d["graphs"]:
            for name, unset in _OMITTED_UNSET.items():
                if g[name] == unset:
                    del g[name]  # manifests without the field read as before, by older readers too
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        d = check_manifest_dict(d)
        return cls(
            architecture=_known(Architecture, d["architecture"]),
            tokenizer=_known(TokenizerSpec, d["tokenizer"]),
            graphs=[_known(GraphSpec, g) for g in d["graphs"]],
            state=[_known(StateSpec, s) for s in d["state"]],
            source=d.get("source", {}),
        )

    def check(self) -> None:
        """Enforce the contract on what to_json writes: the schema's types, enums and relative paths."""
        check_manifest_dict(json.loads(self.to_json()))


# ------------------------------------------------------------------------------------- the schema, enforced
# The runtime reads manifest.schema.json and applies it with the small checker below (numpy + onnxruntime only: no
# JSON Schema library). It knows the keywords the schema uses; tests/test_manifest_schema.py holds the schema to
# that set and checks that jsonschema and this checker accept and refuse the same manifests.

SCHEMA_NAME = "manifest.schema.json"
CHECKED_KEYWORDS = frozenset(
    {"$ref", "type", "const", "enum", "pattern", "minimum", "properties", "required", "additionalProperties"}
    | {"items", "minItems", "contains", "minContains", "maxContains"}
)
ANNOTATIONS = frozenset({"$schema", "$defs", "$comment", "title", "description", "default"})
_TYPE_WORDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@functools.cache
def _schema() -> dict:
    return json.loads(resources.files(__package__).joinpath(SCHEMA_NAME).read_text(encoding="utf-8"))


def manifest_schema() -> dict:
    """The JSON Schema of rwkv.json (draft 2020-12), as shipped in this package."""
    return copy.deepcopy(_schema())


def check_manifest_dict(d) -> dict:
    """`d` (a parsed rwkv.json) checked against the schema; returns it with whole-number floats (12.0) as ints.
    Raises RWKVEdgeError naming the first field that breaks the contract."""
    return _check(d, _schema(), "")


def _is_type(value, t: str) -> bool:
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()  # JSON Schema: 12.0 is an integer
        )
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "null": type(None)}[t])


def _show(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(where: str, words: str):
    raise RWKVEdgeError(f"{MANIFEST_NAME}: {where}: {words}" if where else f"{MANIFEST_NAME}: {words}")


def _check(value, schema: dict, where: str):
    if "$ref" in schema:  # "#/$defs/NAME"; the schema's other keywords apply too
        value = _check(value, _schema()["$defs"][schema["$ref"].rsplit("/", 1)[1]], where)
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_is_type(value, t) for t in types):
            _refuse(where, f"expected {' or '.join(_TYPE_WORDS[t] for t in types)}, found {_show(value)}")
        if isinstance(value, float) and "integer" in types and "number" not in types:
            value = int(value)
    if "const" in schema and not (type(value) is type(schema["const"]) and value == schema["const"]):
        _refuse(where, f"expected {_show(schema['const'])}, found {_show(value)}")
    if "enum" in schema and not any(type(value) is type(e) and value == e for e in schema["enum"]):
        _refuse(where, f"expected one of {', '.join(map(_show, schema['enum']))}, found {_show(value)}")
    # a title says the whole rule in words ("a plain relative path ..."), else the keyword's own words
    if "pattern" in schema and isinstance(value, str) and not re.fullmatch(schema["pattern"], value):
        _refuse(
            where, f"expected {schema.get('title', 'a string matching ' + schema['pattern'])}, found {_show(value)}"
        )
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        what = _TYPE_WORDS["integer" if isinstance(value, int) else "number"] + f" >= {schema['minimum']}"
        _refuse(where, f"expected {schema.get('title', what)}, found {_show(value)}")
    if isinstance(value, dict):
        value = _check_object(value, schema, where)
    if isinstance(value, list):
        value = _check_array(value, schema, where)
    return value


def _check_object(value: dict, schema: dict, where: str) -> dict:
    properties = schema.get("properties", {})
    out = {}
    for key in [*properties, *(k for k in schema.get("required", ()) if k not in properties)]:
        here = _field(where, key)
        if key in value:
            out[key] = _check(value[key], properties.get(key, {}), here)
        elif key in schema.get("required", ()):
            raise RWKVEdgeError(f"{MANIFEST_NAME}: {here} is missing")
    extra = schema.get("additionalProperties", True)
    for key in value:
        if key in properties:
            continue
        here = _field(where, key)
        if extra is False:
            _refuse(here, f"unknown field (expected one of {', '.join(properties)})")
        out[key] = _check(value[key], extra, here) if isinstance(extra, dict) else value[key]
    return out


def _field(where: str, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{where}[{json.dumps(key)}]"  # e.g. source.quantization["model.int8.onnx"]
    return f"{where}.{key}" if where else key


def _check_array(value: list, schema: dict, where: str) -> list:
    if len(value) < schema.get("minItems", 0):
        _refuse(where, f"expected at least {schema['minItems']} entry, found {len(value) or 'none'}")
    if "items" in schema:
        value = [_check(item, schema["items"], f"{where}[{i}]") for i, item in enumerate(value)]
    if "contains" in schema:
        low, high = schema.get("minContains", 1), schema.get("maxContains")
        found = sum(1 for item in value if _matches(item, schema["contains"]))
        if found < low or (high is not None and found > high):
            what = _show(schema["contains"]["const"]) if "const" in schema["contains"] else "matching"
            count = "exactly one" if low == high == 1 else f"at least {low}" if high is None else f"{low} to {high}"
            _refuse(where, f"expected {count} {what} entry, found {found}")
    return value


def _matches(value, schema: dict) -> bool:
    try:
        _check(value, schema, "")
    except RWKVEdgeError:
        return False
    return True


def _known(cls, fields: dict):
    """A dataclass from the fields it knows: a reader ignores the others (a newer exporter's optional ones)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


def replace_manifest(export_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Write `manifest` as the export's rwkv.json atomically (a reader sees the old file or the new one), keeping
    the mode the file had."""
    target = Path(export_dir) / MANIFEST_NAME
    mode = target.stat().st_mode & 0o777 if target.exists() else None
    write_text_atomic(target, manifest.to_json(), mode)


def load_manifest(export_dir: str | os.PathLike) -> Manifest:
    d = Path(export_dir)
    if not d.exists():
        raise RWKVEdgeError(f"{d}: no such directory")
    if not d.is_dir():
        raise RWKVEdgeError(f"{d}: expected an export directory, found a file")
    f = d / MANIFEST_NAME
    if not f.is_file():
        raise RWKVEdgeError(f"{d}: not an export directory (no {MANIFEST_NAME}); create one with `rwkv-export export`")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RWKVEdgeError(f"{f}: not valid JSON ({e})") from None
    return Manifest.from_dict(data)
