"""The tiny RWKV-7 export the web tests share, and what the Python runtime says about it.

One export per pytest process (the export is the slow part): RWKV-7, 2 layers, C 64, 2 heads, the World vocab
(65536 rows, so its weights pass 32 MiB and the fp32 graphs keep them in model.onnx.data, the external-data path
the browser loads too), a sequence graph, and the int8 siblings (MatMulNBits; int8-dynamic where the quantizer
writes it as its own precision; int8-rowwise). The parity fixtures hold the Python runtime's answers on it in files
that a JS test reads with no numpy: float32 little-endian `.f32` arrays, the rest JSON (see write_parity_fixtures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from rwkv_edge.runtime import RWKVModel, State
from rwkv_edge.runtime.manifest import MANIFEST_NAME

SHAPE = {"version": "7", "n_layer": 2, "n_embd": 64, "head_size": 32, "vocab_size": 65536}
BLOCK_SIZE = 32  # two MatMulNBits blocks per row of a C=64 matrix
STEPS = 64
PREFILL_CHUNK = 16  # feed's 40-token prompt runs as chunks of 16, 16 and 8
FEED_LENGTH = 40
# Multilingual on purpose: ASCII, Latin accents, Greek, Cyrillic, Arabic, Devanagari, CJK, emoji with a skin tone
# modifier and a ZWJ sequence, a flag, tabs and a newline: every length of UTF-8 sequence and World's byte tokens.
TOKENIZER_TEXT = (
    "Hello, world! Grüße aus Köln, naïve café. Ελληνικά, русский, العربية, हिन्दी.\n"
    "日本語のテキストと中文，한국어도。 Emoji: 🙂👍🏽 👩‍💻 🇯🇵\tend  "
)

_built: dict[Path, Path] = {}


def shared_export(root: Path) -> Path:
    """The export under `root` (made on the first call of the process, reused after)."""
    if root in _built:
        return _built[root]
    from rwkv_edge.exporter.pipeline import export_checkpoint
    from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
    from rwkv_edge.quant.pipeline import quantize_export
    from rwkv_edge.quant.schemes import get_scheme

    root.mkdir(parents=True, exist_ok=True)
    shape = dict(SHAPE)
    ck = save_checkpoint(make_checkpoint(shape.pop("version"), **shape, seed=0), root / "model.pth")
    out = root / "export"
    export_checkpoint(ck, out, tokenizer="world", prefill="last")
    quantize_export(out, "int8", block_size=BLOCK_SIZE)
    if get_scheme("int8-dynamic").precision == "int8-dynamic":
        quantize_export(out, "int8-dynamic", block_size=BLOCK_SIZE)
    quantize_export(out, "int8-rowwise", block_size=BLOCK_SIZE)
    _built[root] = out
    return out


def precisions(export_dir: Path) -> list[str]:
    """The precisions with a step graph in the export, in manifest order."""
    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    return [g["precision"] for g in manifest["graphs"] if g["kind"] == "step"]


def with_bytes_tokenizer(export_dir: Path, dst: Path) -> Path:
    """A copy of the export whose manifest names the bytes tokenizer (ids 0..255 of the 65536-row vocab). A copy,
    not hard links: onnx refuses to read external data that has several links."""
    shutil.copytree(export_dir, dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    manifest["tokenizer"] = {"kind": "bytes", "file": None}
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return dst


def with_ort_graphs(export_dir: Path, dst: Path) -> Path:
    """A copy of the export with every graph also in ORT format (`rwkv-export ort`), listed as graphs[].ort."""
    from rwkv_edge.deploy.ort_format import convert_export

    shutil.copytree(export_dir, dst)
    convert_export(dst)
    return dst


def _f32(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(array, dtype="<f4").tofile(path)
    return path.name


def write_parity_fixtures(export_dir: Path, fixtures: Path) -> dict:
    """The Python runtime's answers on `export_dir`, written under `fixtures` with reference.json naming them:

    - steps: per precision and batch (1, 2), STEPS random tokens per row and the logits after each step,
      [STEPS, batch, vocab];
    - feed: per precision and batch, a FEED_LENGTH-token prompt per row fed in PREFILL_CHUNK chunks, the last logits;
    - state: a batch-2 state after the feed prompt saved with State.save, the next token per row, and the logits
      after it (what a JS loadState + step must give);
    - tokenizer: TOKENIZER_TEXT's World ids and bytes ids; random World ids and their bytes; the text those decode
      to (invalid UTF-8 replaced) and its World ids.
    """
    from rwkv_edge.runtime import load_tokenizer
    from rwkv_edge.runtime.manifest import TokenizerSpec

    rng = np.random.default_rng(7)
    vocab = SHAPE["vocab_size"]
    reference: dict = {"vocab_size": vocab, "steps": STEPS, "prefill_chunk": PREFILL_CHUNK, "precisions": {}}
    step_tokens = {b: rng.integers(0, vocab, size=(STEPS, b)) for b in (1, 2)}
    feed_tokens = {b: rng.integers(0, vocab, size=(b, FEED_LENGTH)) for b in (1, 2)}
    reference["step_tokens"] = {str(b): t.tolist() for b, t in step_tokens.items()}
    reference["feed_tokens"] = {str(b): t.tolist() for b, t in feed_tokens.items()}
    for precision in precisions(export_dir):
        model = RWKVModel.load(export_dir, precision=precision, prefill_chunk=PREFILL_CHUNK)
        entry: dict = {"steps": {}, "feed": {}}
        for b, tokens in step_tokens.items():
            state = model.new_state(b)
            logits = np.stack([model.step(row, state).copy() for row in tokens])
            entry["steps"][str(b)] = _f32(fixtures / "logits" / f"step_{precision}_b{b}.f32", logits)
        for b, tokens in feed_tokens.items():
            logits = model.feed(tokens, model.new_state(b))
            entry["feed"][str(b)] = _f32(fixtures / "logits" / f"feed_{precision}_b{b}.f32", logits)
        reference["precisions"][precision] = entry

    model = RWKVModel.load(export_dir, precision="fp32", prefill_chunk=PREFILL_CHUNK)
    state = model.new_state(2)
    model.feed(feed_tokens[2], state)
    (fixtures / "state").mkdir(parents=True, exist_ok=True)
    state.save(fixtures / "state" / "python_b2.npz")
    next_tokens = rng.integers(0, vocab, size=2)
    reference["state"] = {
        "file": "state/python_b2.npz",
        "prompt": feed_tokens[2].tolist(),
        "next_tokens": next_tokens.tolist(),
        "next_logits": "state/" + _f32(fixtures / "state" / "python_b2_next.f32", model.step(next_tokens, state)),
    }

    world = model.load_tokenizer()
    ids = world.encode(TOKENIZER_TEXT)
    assert world.decode(ids) == TOKENIZER_TEXT
    # Random vocab entries side by side: many tokens' bytes, and text whose longest matches cross token borders.
    random_ids = rng.integers(1, world.vocab_size, size=3000).tolist()
    random_text = world.decode(random_ids)
    reference["tokenizer"] = {
        "text": TOKENIZER_TEXT,
        "world": ids,
        "bytes": load_tokenizer(TokenizerSpec("bytes")).encode(TOKENIZER_TEXT),
        "random_ids": random_ids,
        "random_ids_bytes": world.decode_bytes(random_ids).hex(),
        "random_text": random_text,
        "random_text_world": world.encode(random_text),
    }
    (fixtures / "reference.json").write_text(json.dumps(reference))
    return reference


def std_deviation(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| / std(ref) per row, the worst row (docs/numerics.md's measure of logits)."""
    got, ref = np.atleast_2d(got), np.atleast_2d(ref)
    return float(max(np.abs(g - r).max() / r.std() for g, r in zip(got, ref)))


def continue_js_state(export_dir: Path, js_state: Path, reference: dict) -> tuple[float, dict[str, float]]:
    """A state the JS runtime saved after the feed prompt, loaded with State.load and stepped with the reference's
    next tokens: (logits deviation from Python's own continuation in std units, per state tensor max|d| / max|ref|
    against Python's state after the same prompt)."""
    model = RWKVModel.load(export_dir, precision="fp32", prefill_chunk=PREFILL_CHUNK)
    mine = model.new_state(2)
    model.feed(np.array(reference["state"]["prompt"]), mine)
    theirs = State.load(js_state, model)
    tensors = {
        name: float(np.abs(theirs.to_numpy()[name] - a).max() / np.abs(a).max()) for name, a in mine.to_numpy().items()
    }
    tokens = np.array(reference["state"]["next_tokens"])
    return std_deviation(model.step(tokens, theirs), model.step(tokens, mine)), tensors
