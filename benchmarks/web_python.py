"""The Python side of benchmarks/web.mjs: the exports it measures, and the Python runtime as one of its workers.

    python benchmarks/web_python.py prepare WORK       # builds what is missing under WORK; prints their paths (JSON)
    python benchmarks/web_python.py worker CONFIG_JSON # answers web.mjs's JSON-lines requests on stdin/stdout

prepare writes, under WORK:
    v7-0.1b.pth, v7-0.1b-onnx/   random weights of the RWKV-7 0.1B shape: fp32, int8 (MatMulNBits), int8-dynamic
    v7-0.1b-web/                  a copy of its fp32 graphs and int8-dynamic with the head kept float
    tiny/                         the embedded default model: fp32 and int8-dynamic with the head kept float

The worker speaks the protocol of benchmarks/web_worker.mjs (one request per line, one JSON reply per line):
    {"cmd": "decode", "n": 8, "warm": 4}      -> {"times": [ms per step]}
    {"cmd": "prefill", "tokens": 512}         -> {"ms": ...}   (a fresh state, the prompt through feed())
    {"cmd": "score", "text": PATH, "max": N}  -> {"nll": [...], "argmax": [...], "tokens": n}
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

SHAPE = ("7", 12, 768, 64, 65536)  # RWKV-7 0.1B: version, layers, width, head size, vocab
WEB_KEEP_FLOAT = ("head",)  # the web's int8-dynamic: wasm's integer GEMM is slowest on the head (docs/performance.md)


def prepare(work: Path) -> dict:
    from rwkv_edge.exporter.default_model import default_checkpoint
    from rwkv_edge.exporter.pipeline import export_checkpoint
    from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint
    from rwkv_edge.quant.pipeline import quantize_export
    from rwkv_edge.runtime.manifest import load_manifest

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def quantize(out: Path, scheme: str, keep_float: tuple[str, ...] = ()) -> None:
        if scheme not in {g.precision for g in load_manifest(out).graphs}:
            log(f"{out.name}: quantize {scheme}" + (f" (keep float: {', '.join(keep_float)})" if keep_float else ""))
            quantize_export(out, scheme, keep_float=keep_float)

    work.mkdir(parents=True, exist_ok=True)
    main = work / "v7-0.1b-onnx"
    if not (main / "rwkv.json").exists():
        ck = work / "v7-0.1b.pth"
        if not ck.exists():
            log("v7-0.1b: random checkpoint")
            save_checkpoint(make_checkpoint(*SHAPE), ck)
        log("v7-0.1b: export (step + sequence graphs)")
        export_checkpoint(ck, main, tokenizer="world", prefill="last", overwrite=True)
    for scheme in ("int8", "int8-dynamic"):
        quantize(main, scheme)
    web = work / "v7-0.1b-web"
    if not (web / "rwkv.json").exists():
        web.mkdir(exist_ok=True)
        fp32 = load_manifest(main)
        for name in {g.file for g in fp32.graphs if g.precision == "fp32"} | {"model.onnx.data", fp32.tokenizer.file}:
            if not (web / name).exists():  # a copy: onnx refuses external data behind a symbolic or hard link
                shutil.copy2(main / name, web / name)
        manifest = json.loads((main / "rwkv.json").read_text())
        manifest["graphs"] = [g for g in manifest["graphs"] if g["precision"] == "fp32"]
        manifest.get("source", {}).pop("quantization", None)
        (web / "rwkv.json").write_text(json.dumps(manifest, indent=2))
    quantize(web, "int8-dynamic", WEB_KEEP_FLOAT)
    tiny = work / "tiny"
    if not (tiny / "rwkv.json").exists():
        log("tiny: export the embedded default model")
        export_checkpoint(default_checkpoint(), tiny, prefill="last", overwrite=True)
    quantize(tiny, "int8-dynamic", WEB_KEEP_FLOAT)
    return {"main": str(main), "web": str(web), "tiny": str(tiny)}


def worker(cfg: dict) -> None:
    import numpy as np

    from rwkv_edge.quant.evaluate import nll_and_argmax, read_text
    from rwkv_edge.runtime import RWKVModel

    start = time.perf_counter()
    model = RWKVModel.load(cfg["dir"], precision=cfg["precision"], threads=cfg["threads"])
    load_ms = (time.perf_counter() - start) * 1e3
    rng = np.random.default_rng(0)
    state = model.new_state(1)

    def ids(n: int) -> list[int]:
        return [int(t) for t in rng.integers(0, model.vocab_size, size=n)]

    import onnxruntime

    print(json.dumps({"ready": True, "loadMs": load_ms, "ort": onnxruntime.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "decode":
            for t in ids(cmd.get("warm", 4)):
                model.step([t], state)
            times = []
            for t in ids(cmd["n"]):
                begin = time.perf_counter()
                model.step([t], state)
                times.append((time.perf_counter() - begin) * 1e3)
            reply: dict = {"times": times}
        elif cmd["cmd"] == "prefill":
            prompt, fresh = ids(cmd["tokens"]), model.new_state(1)
            begin = time.perf_counter()
            model.feed(prompt, fresh)
            reply = {"ms": (time.perf_counter() - begin) * 1e3}
        elif cmd["cmd"] == "score":
            text, _ = read_text(cmd.get("text"))
            tokens = list(model.load_tokenizer().encode(text))[: cmd["max"] + 1]
            fresh = model.new_state(1)
            nll, argmax = [], []
            for i in range(len(tokens) - 1):
                value, best = nll_and_argmax(model.step([tokens[i]], fresh)[0], tokens[i + 1])
                nll.append(value)
                argmax.append(best)
            reply = {"nll": nll, "argmax": argmax, "tokens": len(tokens) - 1}
        else:
            break
        print(json.dumps(reply), flush=True)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "worker"):
        sys.exit("usage: web_python.py prepare WORK | worker CONFIG_JSON")
    if sys.argv[1] == "prepare":
        print(json.dumps(prepare(Path(sys.argv[2]))))
    else:
        worker(json.loads(sys.argv[2]))


if __name__ == "__main__":
    main()
