"""Per-token decode latency: ORT fp32 (our export, IO binding) against BlinkDL's `rwkv` package (cpu fp32),
side by side in one run, on random-weight checkpoints of realistic shapes (DESIGN.md section 5).

    python benchmarks/decode_latency.py                       # both shapes, 2 threads, 64 tokens
    python benchmarks/decode_latency.py --shapes v7-0.1b --tokens 128 --json out.json

Prints one table; ratios are the numbers to quote (the machine is shared and noisy). Needs the export and
reference extras. Checkpoints and exports go to a temp directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random-checkpoint factory

from checkpoints import make_checkpoint, save_checkpoint  # noqa: E402

from rwkv_edge.exporter.pipeline import export_checkpoint  # noqa: E402
from rwkv_edge.exporter.reference_rwkv import run_rwkv_package  # noqa: E402
from rwkv_edge.exporter.validate import OnnxStepper, compare, make_tokens  # noqa: E402
from rwkv_edge.runtime import RWKVModel  # noqa: E402
from rwkv_edge.runtime.manifest import load_manifest  # noqa: E402

# name -> (version, n_layer, n_embd, head_size, vocab, tokenizer)
SHAPES = {
    "v7-0.1b": ("7", 12, 768, 64, 65536, "world"),
    "v4-169m": ("4", 12, 768, 768, 50277, None),
}


def neox_stub(vocab: int, path: Path) -> Path:
    """A word-level tokenizer JSON with `vocab` ids, standing in for 20B_tokenizer.json (not downloadable here)."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.save(str(path))
    return path


def median_ms(seconds) -> float:
    return float(np.median(seconds) * 1e3)


def time_ort(export_dir: Path, tokens: list[int], threads: int, warmup: int) -> float:
    model = RWKVModel.load(export_dir, threads=threads)
    state = model.new_state(1)
    times = []
    for i, t in enumerate(tokens):
        start = time.perf_counter()
        model.step([t], state)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median_ms(times)


def bench_shape(name: str, tokens_n: int, threads: int, work: Path) -> dict:
    version, L, C, N, V, tokenizer = SHAPES[name]
    ck = save_checkpoint(make_checkpoint(version, L, C, N, V), work / f"{name}.pth")
    if tokenizer is None:
        tokenizer = str(neox_stub(V, work / f"{name}-tokenizer.json"))
    out = work / f"{name}-onnx"
    start = time.perf_counter()
    export_checkpoint(ck, out, tokenizer=tokenizer)
    export_s = time.perf_counter() - start

    tokens = [int(t) for t in make_tokens(V, 1, tokens_n, seed=0)[0]]
    ref = run_rwkv_package(ck, version, tokens, threads=threads, warmup=4)
    stepper = OnnxStepper(out, load_manifest(out), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    logits, states = stepper.run(np.array([tokens]))
    err = compare("onnx vs rwkv", 1e-4, logits[0], {k: v[0] for k, v in states.items()}, ref["logits"], ref["state"])
    ort_ms = time_ort(out, tokens, threads, warmup=4)
    pkg_ms = median_ms(ref["step_seconds"])
    return {
        "shape": name, "version": version, "n_layer": L, "n_embd": C, "head_size": N, "vocab": V,
        "export_seconds": round(export_s, 1),
        "model_mb": round(sum(p.stat().st_size for p in out.glob("model.onnx*")) / 1e6, 1),
        "logits_err": err.logits_err, "state_err": max(err.state_err.values()),
        "rwkv_package_ms": round(pkg_ms, 2), "ort_fp32_ms": round(ort_ms, 2), "speedup": round(pkg_ms / ort_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="rwkv-bench-") as tmp:
        for name in args.shapes:
            rows.append(bench_shape(name, args.tokens, args.threads, Path(tmp)))
            print(f"done {name}", file=sys.stderr)

    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, {args.threads} threads, batch 1, median of {args.tokens - 4} tokens"
    print(f"decode latency ({machine})")
    print(f"{'shape':10} {'MB':>7} {'err logits':>11} {'err state':>10} {'rwkv pkg ms':>12} {'ORT fp32 ms':>12} {'speedup':>8}")
    for r in rows:
        print(f"{r['shape']:10} {r['model_mb']:7.1f} {r['logits_err']:11.2e} {r['state_err']:10.2e} "
              f"{r['rwkv_package_ms']:12.2f} {r['ort_fp32_ms']:12.2f} {r['speedup']:7.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
