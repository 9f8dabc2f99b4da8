"""Decode and prefill speed side by side in one run, on the same random-weight checkpoint of realistic shape.
Timed: BlinkDL's `rwkv` package (cpu fp32: decode one token at a time, prefill in its own sequence mode), ORT fp32,
ORT int8 (and int4 when asked), each with the memory-bandwidth floor of a decode step. How to read the numbers:
docs/performance.md.

    python benchmarks/speed.py                                   # RWKV-7 0.1B and RWKV-4 169M shapes, 2 threads
    python benchmarks/speed.py --shapes v7-0.1b --precisions int8 int4 --work /tmp/bench

ORT opens each export from the optimized cache (RWKVModel.load(optimized_cache=...) under WORK/optimized-cache: the
one session's graph saved optimized for this machine); --no-optimized-cache times the default load instead, which
the run also prints.

Decode is timed twice: each side alone (the package first, then ORT: the table), and the package and ORT in
alternating blocks of tokens, so that a change in the shared machine's speed moves both sides alike: the speed-up
quoted is the median over rounds of the per-round ratio. Each block starts SETTLE_S (measure/bench.py) after the
other side's: the workers of the side that ran last keep spinning for a while and slow the other down.

Writes benchmarks/results/speed.json, speed.md (the tables, as `rwkv-export bench` prints them) and speed.png
(the plot the README shows).
Random weights: speed, memory and size only (quality: `rwkv-export eval` on a trained model). Ratios between
rows of one run are the numbers to quote: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rwkv_edge.cli.tables import bench_table, plain_text
from rwkv_edge.common.timing import median_ms
from rwkv_edge.exporter.pipeline import export_checkpoint
from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint, save_neox_stub_tokenizer
from rwkv_edge.measure.bench import SETTLE_S, bench_export, machine, time_decode
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import RWKVModel
from rwkv_edge.validation.reference_rwkv import _child_env, _pth_copy

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (version, n_layer, n_embd, head_size, vocab)
SHAPES = {"v7-0.1b": ("7", 12, 768, 64, 65536), "v4-169m": ("4", 12, 768, 768, 50277)}

_PACKAGE_CHILD = r"""
import json, sys, time
import numpy as np
import torch
req = json.loads(open(sys.argv[1]).read())
torch.set_num_threads(req["threads"])
from rwkv.model import RWKV
model = RWKV(model=req["model"], strategy="cpu fp32")
rng = np.random.default_rng(0)
ids = [int(t) for t in rng.integers(0, req["vocab"], size=max(req["lengths"]) + req["tokens"] + req["warmup"])]
state, times = None, []
for i, t in enumerate(ids[: req["tokens"] + req["warmup"]]):
    start = time.perf_counter()
    out, state = model.forward([t], state)
    if i >= req["warmup"]:
        times.append(time.perf_counter() - start)
prefill = {}
for n in req["lengths"]:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        model.forward(ids[:n], None)  # more than one token: the package's sequence mode
        best = min(best, time.perf_counter() - start)
    prefill[n] = n / best
print(json.dumps({"decode_ms": float(np.median(times) * 1e3), "prefill_tokens_s": prefill}))
"""


def bench_package(
    pth: Path, version: str, vocab: int, threads: int, tokens: int, warmup: int, lengths, work: Path
) -> dict:
    """`pth`: the checkpoint in the key order the package reads (reference_rwkv._pth_copy)."""
    req = {
        "model": str(pth)[: -len(".pth")],
        "threads": threads,
        "vocab": vocab,
        "tokens": tokens,
        "warmup": warmup,
        "lengths": list(lengths),
    }
    (work / "pkg.json").write_text(json.dumps(req))
    proc = subprocess.run(
        [sys.executable, "-c", _PACKAGE_CHILD, str(work / "pkg.json")],
        capture_output=True,
        text=True,
        env=_child_env(version, "", threads),
        cwd=work,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the rwkv package failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The package kept alive, decoding blocks of tokens on request: its decode and ORT's are then timed in alternating
# blocks, so a change in the shared machine's speed during the run moves both sides alike.
_PACKAGE_SERVER = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[3]))
from rwkv.model import RWKV
model = RWKV(model=sys.argv[1], strategy="cpu fp32")
rng, state = np.random.default_rng(0), None
print("ready", flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        start = time.perf_counter()
        out, state = model.forward([int(rng.integers(0, int(sys.argv[2])))], state)
        times.append(time.perf_counter() - start)
    print(json.dumps(times), flush=True)
"""
PACKAGE = "rwkv package cpu fp32"


def interleaved_decode(
    pth: Path,
    version: str,
    vocab: int,
    out: Path,
    precisions: list[str],
    threads: int,
    work: Path,
    optimized_cache: Path | None,
    rounds: int = 20,
    block: int = 8,
) -> dict:
    """Decode ms/token of the package and of ORT per precision, timed in alternating blocks of `block` tokens for
    `rounds` rounds: medians per token, and per precision the median over rounds of package block / its block."""
    server = subprocess.Popen(
        [sys.executable, "-c", _PACKAGE_SERVER, str(pth)[: -len(".pth")], str(vocab), str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(version, "", threads),
        cwd=work,
    )
    try:
        while server.stdout.readline().strip() != "ready":  # the package prints its own loading notes first
            if server.poll() is not None:
                raise SystemExit("the rwkv package failed to load the checkpoint")
        models = {
            p: RWKVModel.load(out, precision=p, threads=threads, optimized_cache=optimized_cache) for p in precisions
        }
        states = {p: m.new_state(1) for p, m in models.items()}
        rng = np.random.default_rng(1)

        def run_block(name: str) -> list[float]:
            if name == PACKAGE:
                server.stdin.write(f"{block}\n")
                server.stdin.flush()
                return json.loads(server.stdout.readline())
            times = []
            for _ in range(block):
                start = time.perf_counter()
                models[name].step([int(rng.integers(0, vocab))], states[name])
                times.append(time.perf_counter() - start)
            return times

        names = [PACKAGE, *precisions]
        for name in names:
            run_block(name)  # warm-up
        times = {n: [] for n in names}
        block_medians = {n: [] for n in names}
        for _ in range(rounds):
            for name in names:
                time.sleep(SETTLE_S)
                got = run_block(name)
                times[name] += got
                block_medians[name].append(median_ms(got))
    finally:
        server.stdin.close()
        server.wait()
    pkg = np.array(block_medians[PACKAGE])
    return {
        "rounds": rounds,
        "block": block,
        "ms": {n: round(median_ms(t), 3) for n, t in times.items()},
        "speedup_vs_package": {p: round(float(np.median(pkg / np.array(block_medians[p]))), 2) for p in precisions},
    }


def prepare(name: str, work: Path, precisions: list[str], log) -> tuple[Path, Path]:
    version, L, C, N, V = SHAPES[name]
    ck = work / f"{name}.pth"
    if not ck.exists():
        save_checkpoint(make_checkpoint(version, L, C, N, V), ck)
    out = work / f"{name}-onnx"
    if not (out / "rwkv.json").exists():
        log(f"{name}: export (step + prefill graphs)")
        tok = "world" if V == 65536 else None
        if tok is None:
            tok = str(save_neox_stub_tokenizer(V, work / f"{name}-tokenizer.json"))
        export_checkpoint(ck, out, tokenizer=tok, prefill="last", overwrite=True)
    have = {g.precision for g in load_manifest(out).graphs}
    for p in precisions:
        if p == "fp32" or p in have:
            continue
        try:
            from rwkv_edge.quant.pipeline import quantize_export
        except ImportError:
            log(f"{name}: rwkv_edge.quant not available, no {p}")
            continue
        log(f"{name}: quantize {p}")
        quantize_export(out, p)
    return ck, out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / 4
    for i, res in enumerate(results):
        bars = [("rwkv pkg fp32", res["package"]["decode_ms"], None, None)]
        bars += [
            (f"ORT {r['precision']}", r["decode_ms"], r["floor_ms"], r.get("kernels_ms")) for r in res["ort"]["rows"]
        ]
        for j, (label, ms, floor, kernels) in enumerate(bars):
            x = i + (j - (len(bars) - 1) / 2) * width
            ax1.bar(x, ms, width, color=f"C{j}", label=label if i == 0 else None)
            ax1.text(x, ms, f"{ms:.1f}", ha="center", va="bottom", fontsize=7)
            if floor:
                ax1.hlines(
                    floor,
                    x - width / 2,
                    x + width / 2,
                    colors="k",
                    linestyles="dashed",
                    label="bandwidth floor" if i == 0 and j == 1 else None,
                )
            if kernels:
                ax1.hlines(
                    kernels,
                    x - width / 2,
                    x + width / 2,
                    colors="k",
                    linestyles="dotted",
                    label="weight kernels alone" if i == 0 and j == 1 else None,
                )
        pre = [("rwkv pkg fp32 (seq mode)", res["package"]["prefill_tokens_s"].get("512"))]
        pre += [(f"ORT {r['precision']} prefill graph", r["prefill_tokens_s"].get("512")) for r in res["ort"]["rows"]]
        pre += [("ORT fp32 stepping", res["ort"]["rows"][0]["stepped_tokens_s"].get("512"))]
        for j, (label, v) in enumerate(pre):
            if v is None:
                continue
            x = i + (j - (len(pre) - 1) / 2) * (0.8 / len(pre))
            ax2.bar(x, v, 0.8 / len(pre), color=f"C{j + 4}", label=label if i == 0 else None)
            ax2.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    names = [r["shape"] for r in results]
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("decode ms / token (batch 1, lower is better)")
    ax1.legend(fontsize=7)
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("prefill tokens / s at 512 tokens (higher is better)")
    ax2.legend(fontsize=7)
    m = results[0]["ort"]["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, ORT {m['onnxruntime']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def markdown(machine_info: dict, results: list[dict]) -> str:
    """speed.md: per shape ORT's table (measure.bench's columns) and the package's and interleaved numbers."""
    parts = [f"machine: `{json.dumps(machine_info)}`"]
    for res in results:
        fp32 = next(r for r in res["ort"]["rows"] if r["precision"] == "fp32")
        pkg = res["package"]
        inter = res["ort"]["interleaved_decode"]
        notes = [
            f"rwkv package cpu fp32: decode {pkg['decode_ms']:.2f} ms/token; sequence mode "
            + ", ".join(f"{n} tokens {v:.0f} tok/s" for n, v in pkg["prefill_tokens_s"].items())
            + f"; ORT fp32 decode speedup {pkg['decode_ms'] / fp32['decode_ms']:.2f}x (each timed alone, package "
            "first)",
            f"decode timed in alternating blocks ({inter['rounds']} rounds of {inter['block']} tokens), ms/token: "
            + ", ".join(f"{n} {ms:.2f}" for n, ms in inter["ms"].items())
            + "; speed-up over the package (median of per-round ratios): "
            + ", ".join(f"ORT {p} {x:.2f}x" for p, x in inter["speedup_vs_package"].items()),
            "ORT decode with threads that sleep between ops (spinning=False, for cores shared with other work): "
            + ", ".join(f"{p} {ms:.2f} ms" for p, ms in res["ort"]["decode_ms_no_spinning"].items()),
        ]
        if "decode_ms_one_session" in res["ort"]:
            notes.append(
                "ORT decode without the optimized cache (one session, the sequence graph's one-token branch): "
                + ", ".join(f"{p} {ms:.2f} ms" for p, ms in res["ort"]["decode_ms_one_session"].items())
            )
        parts.append(plain_text(bench_table(res["ort"])))
        parts.append("\n".join(f"- {line}" for line in notes))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens timed (after --warmup)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="prompt lengths for prefill")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="for the floor; default: measured in the run")
    parser.add_argument("--work", type=Path, help="keep checkpoints and exports here (default: a temp dir, removed)")
    parser.add_argument(
        "--no-optimized-cache",
        action="store_true",
        help="time ORT as RWKVModel.load opens an export by default (one session on the CPU) instead of "
        "from the optimized cache under WORK/optimized-cache",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rwkv-speed-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for name in args.shapes:
            ck, out = prepare(name, work, args.precisions, log)
            log(f"{name}: rwkv package")
            pth = _pth_copy(ck, work / f"pkg-{ck.stem}.pth")  # the package's key order: made once, read by both runs
            package = bench_package(
                pth, SHAPES[name][0], SHAPES[name][4], args.threads, args.tokens, args.warmup, args.lengths, work
            )
            log(f"{name}: ORT")
            cache = None if args.no_optimized_cache else work / "optimized-cache"
            ort_result = bench_export(
                out,
                threads=args.threads,
                tokens=args.tokens,
                warmup=args.warmup,
                bandwidth_gbs=args.bandwidth_gbs,
                prefill_lengths=args.lengths,
                on_step=log,
                precisions=[p for p in args.precisions if p in {"fp32", "int8", "int4", "fp16"}],
                optimized_cache=cache,
            )
            ort_result["optimized_cache"] = cache is not None
            precisions = [row["precision"] for row in ort_result["rows"]]
            log(f"{name}: ORT decode without spinning threads")
            ort_result["decode_ms_no_spinning"] = {
                p: round(
                    time_decode(
                        RWKVModel.load(out, precision=p, threads=args.threads, spinning=False, optimized_cache=cache),
                        args.tokens,
                        args.warmup,
                    ),
                    3,
                )
                for p in precisions
            }
            if cache is not None:
                log(f"{name}: ORT decode without the optimized cache (one session)")
                ort_result["decode_ms_one_session"] = {
                    p: round(
                        time_decode(RWKVModel.load(out, precision=p, threads=args.threads), args.tokens, args.warmup), 3
                    )
                    for p in precisions
                }
            log(f"{name}: decode interleaved with the rwkv package")
            ort_result["interleaved_decode"] = interleaved_decode(
                pth, SHAPES[name][0], SHAPES[name][4], out, precisions, args.threads, work, cache
            )
            ort_result = json.loads(json.dumps(ort_result))  # int keys -> str, as in the file
            results.append({"shape": name, "package": json.loads(json.dumps(package)), "ort": ort_result})

    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(machine(args.threads), results)
    print(text)
    (args.out / "speed.md").write_text(text)
    (args.out / "speed.json").write_text(
        json.dumps({"machine": machine(args.threads), "results": results}, indent=2) + "\n"
    )
    plot(results, args.out / "speed.png")
    print(f"wrote {args.out / 'speed.json'}, speed.md, speed.png", file=sys.stderr)


if __name__ == "__main__":
    main()
