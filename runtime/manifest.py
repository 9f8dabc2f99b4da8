"""rwkv.json: the one file an app needs to drive an exported model with plain ONNX Runtime.

Schema (format "rwkv-edge/1"), see DESIGN.md section 2:

    {
      "format": "rwkv-edge/1",
      "architecture": {"version": "7", "n_layer": 12, "n_embd": 768, "n_head": 12, "head_size": 64,
                       "vocab_size": 65536, "n_ffn": 3072},
      "tokenizer": {"kind": "world" | "neox20b" | "bytes", "file": "rwkv_vocab_v20230424.txt" | null},
      "graphs": [{"file": "model.onnx", "kind": "step", "precision": "fp32",
                  "input": "input_ids", "output": "logits", "opset": 18,
                  "logits": "last"}],        # sequence graphs ("prefill.onnx"): "last" or "all" positions;
                                             # fp16 RWKV-4..6 graphs also "rescale_every": 6 (see GraphSpec)
      "state": [{"name": "att_x", "input": "att_x", "output": "att_x_out",
                 "shape": ["batch", 12, 768], "dtype": "float32", "init": 0.0,
                 "init_file": null}, ...],   # or "wkv_init.npy": a state-tuned initial value (see StateSpec)
      "source": {...}   # free-form provenance: checkpoint name, sha256, exporter version
    }
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import RWKVEdgeError

FORMAT = "rwkv-edge/1"
MANIFEST_NAME = "rwkv.json"
VERSIONS = ("4", "5", "5.1", "5.2", "6", "7")
TOKENIZER_KINDS = ("world", "neox20b", "bytes")
GRAPH_KINDS = ("step", "sequence")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
LOGITS_POSITIONS = (
    "last",
    "all",
)  # a sequence graph's logits: [batch, vocab] of the last position, or [batch, seq, vocab]


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
    precision: str  # "fp32", "fp16", "int8", "int4"
    input: str = "input_ids"
    output: str = "logits"
    opset: int = 18
    logits: str = (
        "last"  # sequence graphs: "last" (logits [batch, vocab]) or "all" (every position, [batch, seq, vocab])
    )
    # fp16 RWKV-4..6: the residual stream is halved after every this many layers (the rwkv package's RESCALE_LAYER),
    # baked into the graph; logits and state mean what fp32's do. 0: not rescaled (written to rwkv.json only when set).
    rescale_every: int = 0


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
            if not g["rescale_every"]:
                del g["rescale_every"]  # manifests without a rescaled graph read as before, by older readers too
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if d.get("format") != FORMAT:
            raise RWKVEdgeError(f"rwkv.json: format must be {FORMAT!r}, found {d.get('format')!r}")
        try:
            arch = Architecture(**d["architecture"])
            tok = TokenizerSpec(**d["tokenizer"])
            graphs = [GraphSpec(**g) for g in d["graphs"]]
            state = [StateSpec(**s) for s in d["state"]]
        except (KeyError, TypeError) as e:
            raise RWKVEdgeError(f"rwkv.json: malformed manifest ({e})") from None
        m = cls(architecture=arch, tokenizer=tok, graphs=graphs, state=state, source=d.get("source", {}))
        m.check()
        return m

    def check(self) -> None:
        """Enforce the contract: known enums, and no path that escapes the export directory."""
        a = self.architecture
        if a.version not in VERSIONS:
            raise RWKVEdgeError(f"rwkv.json: architecture.version must be one of {VERSIONS}, found {a.version!r}")
        if self.tokenizer.kind not in TOKENIZER_KINDS:
            raise RWKVEdgeError(
                f"rwkv.json: tokenizer.kind must be one of {TOKENIZER_KINDS}, found {self.tokenizer.kind!r}"
            )
        for g in self.graphs:
            if g.kind not in GRAPH_KINDS or g.precision not in PRECISIONS:
                raise RWKVEdgeError(f"rwkv.json: graph {g.file!r} has kind {g.kind!r} / precision {g.precision!r}")
            if g.logits not in LOGITS_POSITIONS:
                raise RWKVEdgeError(
                    f"rwkv.json: graph {g.file!r} has logits {g.logits!r}; expected one of {LOGITS_POSITIONS}"
                )
            if not isinstance(g.rescale_every, int) or g.rescale_every < 0:
                raise RWKVEdgeError(
                    f"rwkv.json: graph {g.file!r} has rescale_every {g.rescale_every!r}; expected a whole number >= 0"
                )
        init_files = [s.init_file for s in self.state if s.init_file is not None]
        for rel in [g.file for g in self.graphs] + ([self.tokenizer.file] if self.tokenizer.file else []) + init_files:
            check_relative_path(rel)


def check_relative_path(rel: str) -> None:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel != p.as_posix():
        raise RWKVEdgeError(f"rwkv.json: path {rel!r} must be a plain relative path inside the export directory")


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
