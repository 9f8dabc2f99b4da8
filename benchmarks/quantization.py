"""Quantized decode on a realistic shape: file size, ms/token and peak memory of the fp32 graph and of every
quantization scheme / block size, side by side in one run (docs/quantization.md, docs/performance.md).

    python benchmarks/quantization.py                                  # RWKV-7 0.1B shape, 2 threads
    python benchmarks/quantization.py --variants int8:128 int4:32 --tokens 200 --json out.json

Random weights: this measures size, speed and memory, not quality (`rwkv-export eval` on a trained model does).
One ORT session is alive at a time (an idle session's thread pool spins and would steal the cores of the one
being timed); every variant is timed in `--passes` interleaved passes and the fastest pass's median is kept
(the machine is shared and noisy). Peak memory: VmHWM of a fresh process that opens the graph and runs 16 steps
(measure/memory.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from rwkv_edge.cli.tables import plain_text
from rwkv_edge.common.onnx_files import graph_bytes
from rwkv_edge.common.timing import median_ms
from rwkv_edge.measure.memory import process_memory
from rwkv_edge.quant.pipeline import quantize_export
from rwkv_edge.runtime import RWKVModel

SHAPES = {"v7-0.1b": ("7", 12, 768, 64, 65536), "v4-169m": ("4", 12, 768, 768, 50277)}
DEFAULT_VARIANTS = ["int8:32", "int8:128", "int8:128:lowrank", "int8-dynamic:128", "int4:32", "int4:128"]


def time_steps(export_dir: Path, precision: str, tokens: list[int], threads: int, warmup: int) -> float:
    model = RWKVModel.load(export_dir, precision=precision, threads=threads)
    state = model.new_state(1)
    times = []
    for i, t in enumerate(tokens):
        start = time.perf_counter()
        model.step([t], state)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del model, state
    gc.collect()
    return median_ms(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="v7-0.1b", choices=list(SHAPES))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        help="scheme:block_size, or scheme:block_size:group+group to keep those weight groups in float",
    )
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep checkpoint and exports here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    version, L, C, N, V = SHAPES[args.shape]
    with tempfile.TemporaryDirectory(prefix="rwkv-quant-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        fp32_dir = work / "fp32"
        if not (fp32_dir / "rwkv.json").exists():  # torch needed only here (--work with an fp32 export skips it)
            from rwkv_edge.exporter.pipeline import export_checkpoint
            from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint

            ck = save_checkpoint(make_checkpoint(version, L, C, N, V), work / "model.pth")
            export_checkpoint(ck, fp32_dir, tokenizer="bytes")
            ck.unlink()
        rows = [{"variant": "fp32", "dir": fp32_dir, "precision": "fp32", "quantize_s": None}]
        for v in args.variants:
            scheme, block, *keep = v.split(":")
            keep_float = tuple(keep[0].split("+")) if keep else ()
            d = work / v.replace(":", "-")
            if not (d / "rwkv.json").exists():
                d.mkdir(exist_ok=True)
                os.link(fp32_dir / "model.onnx", d / "model.onnx")  # read only: quantize never writes it
                (d / "rwkv.json").write_text((fp32_dir / "rwkv.json").read_text())
            start = time.perf_counter()
            result = quantize_export(d, scheme, block_size=int(block), keep_float=keep_float, overwrite=True)
            rows.append(
                {
                    "variant": v,
                    "dir": d,
                    "precision": result.precision,
                    "quantize_s": round(time.perf_counter() - start, 1),
                }
            )
            print(f"quantized {v}", file=sys.stderr)

        tokens = [int(t) for t in np.random.default_rng(0).integers(0, V, args.tokens)]
        passes = {r["variant"]: [] for r in rows}
        for _ in range(args.passes):
            for r in rows:
                passes[r["variant"]].append(time_steps(r["dir"], r["precision"], tokens, args.threads, warmup=10))
        fp32_bytes = graph_bytes(fp32_dir, "model.onnx")
        for r in rows:
            f = "model.onnx" if r["precision"] == "fp32" else f"model.{r['precision']}.onnx"
            r["bytes"] = graph_bytes(r["dir"], f)
            r["size_ratio"] = r["bytes"] / fp32_bytes
            r["ms_per_token"] = min(passes[r["variant"]])
            r["ms_passes"] = passes[r["variant"]]
            r["peak_rss_mb"] = process_memory(r["dir"], r["precision"], threads=args.threads).peak_rss_mib
            r["rss_over_file"] = r["peak_rss_mb"] * 2**20 / r["bytes"]
            r["dir"] = str(r["dir"])
        base = rows[0]["ms_per_token"]
        for r in rows:
            r["speedup"] = base / r["ms_per_token"]

    machine = (
        f"{platform.machine()}, {args.threads} threads, batch 1, best of {args.passes} medians of "
        f"{args.tokens - 10} tokens"
    )
    table = Table(title=escape(f"{args.shape} quantized decode ({machine})"))
    for col in ("variant", "MiB", "vs fp32", "ms/token", "speedup", "peak RSS MiB", "RSS/file"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['bytes'] / 2**20:.1f}",
            f"{r['size_ratio']:.1%}",
            f"{r['ms_per_token']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['rss_over_file']:.2f}",
        )
    print(plain_text(table))
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
