"""What a batched decode step costs per precision, side by side in one run: `RWKVModel.step` at batch 1, 4 and 16
on the RWKV-7 0.1B shape, the share of the step that is the WKV state's own work, and the serving engine's
iterations at 1 and 16 rows. This is the measurement
behind the serving precision (docs/serving.md, "Which graph serves").

    python benchmarks/batch.py                          # a random 0.1B export under --work: fp32, int8, int8-rowwise
    python benchmarks/batch.py out/v7-01b --precisions int8 int8-rowwise

Every precision is loaded in this process; rounds alternate between them (so that other work on a shared machine
slows all alike), each round times a block of steps per batch size after an untimed one; the numbers are medians
over rounds. "x batch 1" is the throughput of a batch over batch 1's: batch * step(1) / step(batch).

The state layouts: `RWKVModel.step` with the graphs as exported (each state tensor stacked over the layers, cut
by a Split and stacked by a Concat every step) against one state tensor per layer, which the runtime binds by
default on the CPU (runtime/layer_state.py): what the stacking's copies cost.

A change of the batch's rows: the engine rebuilds its batch state (State.gather) when rows join or leave; the first
step on the new state against the next one says what a change costs.

The state work is the part of a step that reads and writes the WKV state (RWKV-7: the WKV7 body per layer, on the
per-layer state the runtime binds), timed alone in a graph made of the export's own WKV7 function: it grows with
the rows (a 0.1B row's state is 2.4 MB) and no int8 kernel makes it cheaper.

Writes benchmarks/results/batch.md and batch.json.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from results_files import write_results  # benchmarks/ is on sys.path when this file runs as a script
from rich.table import Table
from speed import RESULTS, prepare  # benchmarks/ is on sys.path when this file runs as a script

from rwkv_edge.measure.bench import machine
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import RWKVModel

BATCHES = (1, 4, 16)
STEPS_PER_BLOCK = 8


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def alternating_ms(calls: dict, rounds: int) -> dict:
    """Median ms of one call of each of `calls` (key -> a callable taking nothing), in `rounds` rounds that
    alternate over them: each round runs every call once untimed (another one ran last), then a timed block of
    STEPS_PER_BLOCK."""
    samples: dict = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            call()
            start = time.perf_counter()
            for _ in range(STEPS_PER_BLOCK):
                call()
            samples[key].append((time.perf_counter() - start) / STEPS_PER_BLOCK * 1e3)
    return {key: float(np.median(v)) for key, v in samples.items()}


def time_steps(models: dict[str, RWKVModel], rounds: int, batches=BATCHES) -> dict[str, dict[int, float]]:
    """Median ms of one step per (model, batch), rounds alternating over models and batches."""
    states = {(p, b): m.new_state(b) for p, m in models.items() for b in batches}
    ids = {b: np.arange(b, dtype=np.int64) + 100 for b in batches}
    calls = {(p, b): functools.partial(models[p].step, ids[b], state) for (p, b), state in states.items()}
    ms = alternating_ms(calls, rounds)
    return {p: {b: ms[(p, b)] for b in batches} for p in models}


def time_engine(model: RWKVModel, rows: int, max_tokens: int) -> float:
    """Median ms of an engine iteration while `rows` greedy requests decode together (the iterations that stepped
    all of them: no prompt chunk, no one joining or leaving)."""
    from rwkv_edge.runtime.engine import Engine, EngineConfig, Request
    from rwkv_edge.runtime.sampling import SamplingParams

    engine = Engine(model, model.load_tokenizer(), EngineConfig(max_batch=rows, state_cache_mb=0))
    times: list[tuple[float, int, bool]] = []
    decode, prefill = engine._decode_step, engine._prefill_chunks  # timed from outside: the engine has no hooks
    chunk_ran = [False]

    def timed_prefill() -> None:
        chunk_ran[0] = bool(engine._waiting or engine._prefilling)
        prefill()

    def timed_decode() -> None:
        before, start = len(engine._rows), time.perf_counter()
        decode()
        times.append((time.perf_counter() - start, before, chunk_ran[0]))

    engine._prefill_chunks, engine._decode_step = timed_prefill, timed_decode
    rng = np.random.default_rng(0)
    greedy = SamplingParams(temperature=0.0)
    with engine:  # starts it, and shuts it down after
        handles = [
            engine.submit(
                Request(
                    prompt_ids=[int(t) for t in rng.integers(100, 60000, 16)], max_tokens=max_tokens, sampling=greedy
                )
            )
            for _ in range(rows)
        ]
        for handle in handles:
            handle.result()
    full = [t for t, n, chunk in times if n == rows and not chunk]
    return float(np.median(full)) * 1e3


def engine_iterations(model: RWKVModel, max_tokens: int) -> dict[int, float] | None:
    """time_engine at 1 and 16 rows, or None where the engine refuses batches of this model (its batched rows
    differ from a row alone on this CPU, runtime/engine.py)."""
    from rwkv_edge.runtime.engine import BatchedRowsDiffer

    try:
        return {b: time_engine(model, b, max_tokens) for b in (1, 16)}
    except BatchedRowsDiffer:
        return None


def state_work_graph(step_file: Path, n_layer: int, n_head: int, head_size: int) -> onnx.ModelProto:
    """The WKV state's part of an RWKV-7 step as the runtime binds it (one state tensor per layer): n_layer WKV7
    calls (the export's own function), each reading its layer's state and writing the new one."""
    wkv7 = next(f for f in onnx.load(step_file, load_external_data=False).functions if f.name == "WKV7")
    vectors = "rwkvab"
    layer = ["batch", n_head, head_size, head_size]
    inputs = [helper.make_tensor_value_info(f"wkv.{i}", TensorProto.FLOAT, layer) for i in range(n_layer)]
    inputs += [helper.make_tensor_value_info(v, TensorProto.FLOAT, ["batch", n_head, head_size]) for v in vectors]
    nodes = [
        helper.make_node("WKV7", [f"wkv.{i}", *vectors], [f"y{i}", f"wkv_out.{i}"], domain=wkv7.domain)
        for i in range(n_layer)
    ]
    nodes.append(helper.make_node("Sum", [f"y{i}" for i in range(n_layer)], ["y"]))
    names = ["y"] + [f"wkv_out.{i}" for i in range(n_layer)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    graph = helper.make_graph(nodes, "wkv_state_work", inputs, outputs)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(wkv7.domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[wkv7])


def time_state_work(export_dir: Path, threads: int, rounds: int) -> dict[int, float]:
    manifest = load_manifest(export_dir)
    a = manifest.architecture
    model = state_work_graph(export_dir / manifest.graph("step", "fp32").file, a.n_layer, a.n_head, a.head_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    bindings = {}
    for b in BATCHES:
        layer = (b, a.n_head, a.head_size, a.head_size)
        feeds = {f"wkv.{i}": rng.normal(size=layer).astype(np.float32) for i in range(a.n_layer)}
        feeds |= {v: (0.1 * rng.normal(size=(b, a.n_head, a.head_size))).astype(np.float32) for v in "rwkvab"}
        outputs = {f"wkv_out.{i}": np.empty(layer, np.float32) for i in range(a.n_layer)}
        outputs["y"] = np.empty((b, a.n_head, a.head_size), np.float32)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in outputs.items():  # preallocated, as the runtime binds its state buffers
            binding.bind_output(name, "cpu", 0, np.float32, value.shape, value.ctypes.data)
        bindings[b] = (binding, feeds, outputs)  # the arrays stay alive with their binding
    calls = {b: functools.partial(session.run_with_iobinding, bound[0]) for b, bound in bindings.items()}
    return alternating_ms(calls, rounds)


def time_state_layouts(export_dir: Path, precision: str, threads: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median ms of `RWKVModel.step` at batch 1 and 16 with the graphs as exported (each state tensor stacked over
    the layers) and with one state tensor per layer (the runtime's default on the CPU), in alternating rounds."""
    layouts = {"stacked (as exported)": False, "one tensor per layer (the runtime)": True}
    models = {
        name: RWKVModel.load(export_dir, precision=precision, threads=threads, layer_state=layered)
        for name, layered in layouts.items()
    }
    return time_steps(models, rounds, batches=(1, 16))


def time_batch_change(export_dir: Path, precision: str, threads: int, rounds: int) -> dict[str, float]:
    """What a change of the batch's rows costs the engine (runtime/engine.py rebuilds its batch with State.gather
    when rows join or leave): median ms of gathering 12 rows of a 16-row state and its first step, of the next step
    on that state, and of a step of the 16 rows, in alternating rounds."""
    from rwkv_edge.runtime.state import State

    model = RWKVModel.load(export_dir, precision=precision, threads=threads)
    full = model.new_state(16)
    ids = np.arange(16, dtype=np.int64) + 100
    samples: dict[str, list[float]] = {"gather 12 of 16 rows + first step": [], "next step": [], "16 rows": []}
    for _ in range(rounds):
        start = time.perf_counter()
        model.step(ids, full)
        samples["16 rows"].append(time.perf_counter() - start)
        start = time.perf_counter()
        part = State.gather([(full, row) for row in range(12)])
        model.step(ids[:12], part)
        samples["gather 12 of 16 rows + first step"].append(time.perf_counter() - start)
        start = time.perf_counter()
        model.step(ids[:12], part)
        samples["next step"].append(time.perf_counter() - start)
    return {name: float(np.median(times)) * 1e3 for name, times in samples.items()}


def batch_change_table(precision: str, change_ms: dict[str, float]) -> Table:
    table = Table(title=f"{precision}: a change of the batch's rows (16 -> 12), median ms")
    for column, justify in (("", "left"), ("ms", "right"), ("x the next step", "right")):
        table.add_column(column, justify=justify)
    for name, ms in change_ms.items():
        table.add_row(name, f"{ms:.2f}", f"{ms / change_ms['next step']:.2f}")
    return table


def layouts_table(precision: str, layouts: dict[str, dict[int, float]]) -> Table:
    table = Table(title=f"{precision} decode step (RWKVModel.step), state layout")
    for column in ("state layout", "batch 1 ms", "batch 16 ms", "x batch 1 (throughput)", "x batch 1 (latency)"):
        table.add_column(column, justify="left" if column == "state layout" else "right")
    for layout, ms in layouts.items():
        table.add_row(layout, f"{ms[1]:.2f}", f"{ms[16]:.2f}", f"{16 * ms[1] / ms[16]:.2f}", f"{ms[16] / ms[1]:.2f}")
    return table


def results_table(steps: dict[str, dict[int, float]], state_ms: dict[int, float] | None) -> Table:
    table = Table(title="decode step ms (median of alternating rounds) and throughput over batch 1")
    table.add_column("precision")
    for b in BATCHES:
        table.add_column(f"batch {b} ms", justify="right")
        if b > 1:
            table.add_column(f"x batch 1 ({b} rows)", justify="right")
    if state_ms:
        table.add_column("state work at 16, share", justify="right")
    for precision, ms in steps.items():
        cells = []
        for b in BATCHES:
            cells.append(f"{ms[b]:.2f}")
            if b > 1:
                cells.append(f"{b * ms[1] / ms[b]:.2f}")
        if state_ms:
            cells.append(f"{state_ms[16] / ms[16]:.0%}")
        table.add_row(precision, *cells)
    if state_ms:
        table.add_row(
            "(state work alone)", *sum(([f"{state_ms[b]:.2f}"] + ([""] if b > 1 else []) for b in BATCHES), []), ""
        )
    return table


def engine_table(engine_ms: dict[str, dict[int, float]]) -> Table:
    table = Table(title="engine iterations with every row decoding (runtime/engine.py, greedy, median ms)")
    for column in ("precision", "1 row ms", "16 rows ms", "x 1 row (throughput)", "x 1 row (latency)"):
        table.add_column(column, justify="left" if column == "precision" else "right")
    for precision, ms in engine_ms.items():
        if ms is None:
            table.add_row(precision, "refused for batches: its batched rows differ from a row alone", "", "", "")
            continue
        table.add_row(precision, f"{ms[1]:.2f}", f"{ms[16]:.2f}", f"{16 * ms[1] / ms[16]:.2f}", f"{ms[16] / ms[1]:.2f}")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", nargs="?", type=Path, help="export directory; default: a random 0.1B export in --work")
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8", "int8-rowwise"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--engine-tokens", type=int, default=96, help="tokens per request of the engine's runs")
    p.add_argument(
        "--layout-precision",
        default="int8-rowwise",
        help="the precision whose steps are timed with the state stacked and one tensor per layer ('': skip)",
    )
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rwkv-batch-bench")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()

    if args.export_dir is None:
        args.work.mkdir(parents=True, exist_ok=True)
        _, args.export_dir = prepare("v7-0.1b", args.work, args.precisions, log)
    manifest = load_manifest(args.export_dir)
    load_before = os.getloadavg()
    models = {}
    for precision in args.precisions:
        log(f"load {precision}")
        models[precision] = RWKVModel.load(args.export_dir, precision=precision, threads=args.threads)
    log("time the steps")
    steps = time_steps(models, args.rounds)
    log("time the engine's iterations")
    engine_ms = {p: engine_iterations(m, args.engine_tokens) for p, m in models.items()}
    del models
    state_ms = None
    if manifest.architecture.version == "7":
        log("time the state work")
        state_ms = time_state_work(args.export_dir, args.threads, args.rounds)
    layouts = change_ms = None
    if args.layout_precision and any(g.precision == args.layout_precision for g in manifest.graphs):
        log(f"time the state layouts ({args.layout_precision})")
        layouts = time_state_layouts(args.export_dir, args.layout_precision, args.threads, args.rounds)
        log(f"time a change of the batch's rows ({args.layout_precision})")
        change_ms = time_batch_change(args.export_dir, args.layout_precision, args.threads, args.rounds)
    a = manifest.architecture
    result = {
        "setup": {
            "model": f"RWKV-{a.version} L{a.n_layer} C{a.n_embd} vocab {a.vocab_size}",
            "threads": args.threads,
            "rounds": args.rounds,
            "steps_per_block": STEPS_PER_BLOCK,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "machine": machine(args.threads),
        },
        "step_ms": {p: {str(b): round(v, 3) for b, v in ms.items()} for p, ms in steps.items()},
        "engine_iteration_ms": {
            p: None if ms is None else {str(b): round(v, 3) for b, v in ms.items()} for p, ms in engine_ms.items()
        },
        "state_work_ms": None if state_ms is None else {str(b): round(v, 3) for b, v in state_ms.items()},
        "state_layouts_ms": None
        if layouts is None
        else {args.layout_precision: {k: {str(b): round(v, 3) for b, v in ms.items()} for k, ms in layouts.items()}},
        "batch_change_ms": None
        if change_ms is None
        else {args.layout_precision: {k: round(v, 3) for k, v in change_ms.items()}},
    }
    tables = [results_table(steps, state_ms), engine_table(engine_ms)]
    if layouts is not None:
        tables.append(layouts_table(args.layout_precision, layouts))
        tables.append(batch_change_table(args.layout_precision, change_ms))
    setup = result["setup"]
    header = (
        f"# Batched decode step\n\n`python benchmarks/batch.py EXPORT`: {setup['model']}, {setup['threads']} "
        f"threads, {setup['machine']['cpu']}; load average before/after {setup['load_average_before']} / "
        f"{setup['load_average_after']} (a shared machine: ratios are the numbers to quote).\n\n"
    )
    write_results(args.results, "batch", result, header, tables)


if __name__ == "__main__":
    main()
