"""The optimized cache against the default load, side by side in one run: decode ms/token and PSS of
`RWKVModel.load(export, optimized_cache=CACHE)` over those of `RWKVModel.load(export)` (one plain session on the
sequence graph), on random-weight checkpoints of realistic shape, fp32 and int8.

    python benchmarks/optimized_cache.py                        # RWKV-7 0.1B and RWKV-4 169M shapes, 3 runs
    python benchmarks/optimized_cache.py --shapes v7-0.1b --runs 1 --work /tmp/ocache

Decode: each variant in a fresh process, both alive at once, stepping alternating blocks of tokens (the order
swapped every round, each block after a few untimed steps and a pause after the other's: the workers of the one
that ran last spin on), so that other work on a shared machine slows both alike; the ratio quoted is the median
over rounds of the per-round ratio. Memory: PSS of a fresh process per variant after a 128-token feed and 16 steps
(measure/memory.py). The variants' order is swapped from one run to the next; the spread over runs
says how far to trust a ratio. The cache entries are built before the runs: building is not measured. The table
also says which graphs each load opened.

Writes benchmarks/results/optimized_cache.md and .json (with --no-spinning: optimized_cache-no-spinning.*).
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
from speed import RESULTS, SHAPES, prepare  # benchmarks/ is on sys.path when this file runs as a script

from rwkv_edge.measure.bench import REWARM_STEPS, SETTLE_S, machine
from rwkv_edge.measure.memory import process_memory
from rwkv_edge.runtime.session import RWKVModel

# One variant's fresh process: loads the export, then steps blocks of tokens on request, so that the two variants
# can be timed in alternating blocks while both are alive.
_DECODE_SERVER = """
import json, sys, time
import numpy as np
from rwkv_edge.runtime.session import RWKVModel
export_dir, precision, threads, cache, spinning = sys.argv[1:6]
start = time.perf_counter()
model = RWKVModel.load(
    export_dir, precision=precision, threads=int(threads), optimized_cache=cache or None, spinning=spinning == "1"
)
load_s = time.perf_counter() - start
sessions = 1 if model.step_session is model.sequence_session else 1 + (model.sequence_session is not None)
opened = f"{model.decode_graph.kind} graph decodes, {sessions} session(s)"
state, rng = model.new_state(1), np.random.default_rng(0)
print(json.dumps({"load_s": load_s, "opened": opened}), flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        begin = time.perf_counter()
        model.step([int(rng.integers(0, model.vocab_size))], state)
        times.append(time.perf_counter() - begin)
    print(json.dumps(times), flush=True)
"""
VARIANTS = ("plain", "cached")  # RWKVModel.load(export) and RWKVModel.load(export, optimized_cache=CACHE)


class DecodeServer:
    def __init__(self, export_dir: Path, precision: str, threads: int, cache: Path | None, spinning: bool):
        args = [str(export_dir), precision, str(threads), "" if cache is None else str(cache), "1" if spinning else "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DECODE_SERVER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"decode server failed to load {export_dir} ({precision})")
        self.info = json.loads(line)

    def steps(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def interleaved_decode(
    export_dir: Path, precision: str, threads: int, cache: Path, spinning: bool, order, rounds: int, block: int
) -> dict:
    """Both variants' processes alive, stepping alternating blocks of `block` timed tokens (each block after
    REWARM_STEPS untimed ones, SETTLE_S after the other's) for `rounds` rounds, the order within a round swapped
    every round: {variant: {"ms", "load_s", "opened"}, "ratio": median over rounds of cached / plain block medians}."""
    servers = {}
    try:
        for variant in order:
            servers[variant] = DecodeServer(
                export_dir, precision, threads, cache if variant == "cached" else None, spinning
            )
        for server in servers.values():
            server.steps(block)  # warm-up
        times = {v: [] for v in order}
        block_ms = {v: [] for v in order}
        for r in range(rounds):
            for variant in order if r % 2 == 0 else order[::-1]:
                time.sleep(SETTLE_S)
                got = servers[variant].steps(REWARM_STEPS + block)[REWARM_STEPS:]
                times[variant] += got
                block_ms[variant].append(float(np.median(got)) * 1e3)
    finally:
        for server in servers.values():
            server.close()
    out = {v: {"ms": float(np.median(times[v])) * 1e3, **servers[v].info} for v in order}
    out["ratio"] = float(np.median(np.array(block_ms["cached"]) / np.array(block_ms["plain"])))
    return out


def spread(values: list[float]) -> str:
    return f"{np.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=16, help="alternating decode blocks per variant")
    parser.add_argument("--block", type=int, default=8, help="timed decode tokens per block")
    parser.add_argument(
        "--no-spinning", action="store_true", help="load(spinning=False): worker threads sleep between ops"
    )
    parser.add_argument("--work", type=Path, help="keep checkpoints, exports and the cache here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    def log(s: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="rwkv-ocache-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "optimized-cache"
        exports = {name: prepare(name, work, args.precisions, log)[1] for name in args.shapes}
        for name, out in exports.items():
            for p in args.precisions:
                log(f"{name} {p}: build the cache entry")
                RWKVModel.load(out, precision=p, threads=args.threads, optimized_cache=cache)
        rows = []  # one per run, shape and precision
        for run in range(args.runs):
            for name, out in exports.items():
                for p in args.precisions:
                    order = VARIANTS if run % 2 == 0 else VARIANTS[::-1]
                    log(f"run {run + 1}: {name} {p}, {' then '.join(order)}")
                    row = {"run": run + 1, "shape": name, "precision": p, "first": order[0]}
                    decode = interleaved_decode(
                        out, p, args.threads, cache, not args.no_spinning, order, args.rounds, args.block
                    )
                    for variant in order:
                        time.sleep(SETTLE_S)
                        with_cache = cache if variant == "cached" else None
                        pss = process_memory(
                            out, p, threads=args.threads, prompt_tokens=128, steps=16, optimized_cache=with_cache
                        ).pss_mib
                        row[variant] = {**decode[variant], "pss_mib": pss}
                    row["decode_ratio"] = decode["ratio"]
                    row["pss_ratio"] = row["cached"]["pss_mib"] / row["plain"]["pss_mib"]
                    rows.append(row)

    lines = [
        f"machine: {json.dumps(machine(args.threads))}",
        f"decode: both variants' fresh processes stepping alternating blocks, {args.rounds} rounds of "
        f"{args.block} tokens (ms: median per token; ratio: median over rounds of the per-round ratio); "
        f"spinning {not args.no_spinning}",
        "PSS: a fresh process per variant after a 128-token feed + 16 steps (measure/memory.py)",
        f"plain: {rows[0]['plain']['opened']}; cached: {rows[0]['cached']['opened']} (optimized cache)",
        "",
        f"{'run':>3} {'shape':8} {'prec':5} {'first':6} {'plain ms':>8} {'cached ms':>9} {'ratio':>6} "
        f"{'plain PSS':>9} {'cached PSS':>10} {'ratio':>6} {'plain load s':>12} {'cached load s':>13}",
    ]
    for r in rows:
        a, b = r["plain"], r["cached"]
        lines.append(
            f"{r['run']:3} {r['shape']:8} {r['precision']:5} {r['first']:6} {a['ms']:8.2f} {b['ms']:9.2f} "
            f"{r['decode_ratio']:6.3f} {a['pss_mib']:9.0f} {b['pss_mib']:10.0f} {r['pss_ratio']:6.3f} "
            f"{a['load_s']:12.2f} {b['load_s']:13.2f}"
        )
    lines += ["", "cached / plain over the runs, median (min-max):"]
    for name in args.shapes:
        for p in args.precisions:
            mine = [r for r in rows if r["shape"] == name and r["precision"] == p]
            lines.append(
                f"  {name} {p}: decode {spread([r['decode_ratio'] for r in mine])}, "
                f"PSS {spread([r['pss_ratio'] for r in mine])}"
            )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "optimized_cache" + ("-no-spinning" if args.no_spinning else "")
    (args.out / f"{name}.md").write_text("```\n" + table + "\n```\n")
    (args.out / f"{name}.json").write_text(
        json.dumps({"machine": machine(args.threads), "args": vars(args), "rows": rows}, indent=1, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
