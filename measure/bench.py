"""`rwkv-export bench EXPORT_DIR`: how fast an export runs here, for every precision it holds, measured the same
way side by side (what each column means and how to read it: docs/performance.md):

- decode: ms per token at batch 1 (median after warm-up), stepping as RWKVModel does (IO binding; on the CPU the
  sequence graph's one-token branch in one session, optimized_cache or not);
- prefill: tokens/s feeding a 128- and a 512-token prompt (the sequence graph in chunks when the export has one
  for that precision, else stepping), and the same prompt stepped token by token, for the ratio;
- the bandwidth floor: bytes of weights one decode step must read (every initializer once, an embedding table's
  one row) / memory bandwidth (given, or measured here by a probe sampled before each block of decode steps);
  x floor is the median over blocks of each block's time over the floor of its moment;
- kernels: the step's weight-reading kernels alone (its MatMul / MatMulNBits / Gather nodes cut out with their
  weights, weight_kernels.py), sampled beside the probe: what ONNX Runtime's kernels reach on these bytes with
  nothing else in the way, so the gap between the floor and the decode splits into the kernels' part and the
  rest of the graph's (norms, token shift, the WKV recurrence);
- files: bytes on disk of the graphs of that precision (a data file shared by step and sequence counted once);
- memory: a fresh process opens the graphs as RWKVModel.load does (with the same optimized_cache), feeds 128
  tokens and steps 16 (measure/memory.py); its peak RSS, and its PSS after (proportional set size: file pages
  that sessions or processes share counted once, as the kernel does; on Linux only); and the PSS of the step
  graph alone;
- load: seconds RWKVModel.load takes (with optimized_cache, from the saved optimized graphs).

ONNX Runtime, numpy and onnx (to read the graphs), no torch: it runs on the device the model is for.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rwkv_edge.common.onnx_files import files_bytes
from rwkv_edge.common.timing import median_ms, time_calls
from rwkv_edge.measure.memory import process_memory
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.session import RWKVModel

from .weight_kernels import KernelProbe

# The bandwidth probe's matrix: far larger than any cache, like a model's weights; small devices can spare it.
PROBE_MIB = 256
PREFILL_LENGTHS = (128, 512)


@dataclass
class BenchRow:
    precision: str
    decode_ms: float  # median ms per token, batch 1
    floor_ms: float  # weight bytes read per token / bandwidth_gbs
    floor_ratio: float  # decode / floor: median over decode blocks, each against the probe sampled just before it
    weight_mb_per_token: float
    bandwidth_gbs: float  # the floor's bandwidth: given, or the median of the probe's samples between this row's blocks
    effective_gbs: float = 0.0  # weight bytes per token / decode time: the bandwidth the step actually reaches
    kernels_ms: float | None = None  # the step's weight-reading kernels alone (weight_kernels.py), median of samples
    kernels_ratio: float | None = None  # kernels / floor: median over the samples, each against the probe beside it
    prefill_tokens_s: dict = field(default_factory=dict)  # prompt length -> tokens/s through feed()
    stepped_tokens_s: dict = field(default_factory=dict)  # prompt length -> tokens/s stepping one token at a time
    sequence_graph: bool = False
    file_mb: float = 0.0
    peak_rss_mb: float | None = None
    pss_mb: float | None = None  # what the process really holds (shared file pages counted once)
    pss_step_only_mb: float | None = None  # the same with the step graph alone
    load_s: float | None = None  # RWKVModel.load (with optimized_cache: from the saved optimized graphs)


def machine(threads: int | None) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


# Ops that read one row of their tables per token: the table inputs of each (a quantized embedding's data,
# scales and zero points, all gathered along axis 0).
ROW_GATHERS = {"Gather": (0,), "GatherBlockQuantized": (0, 2, 3)}


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of initializers a batch-1 step reads: all of them once, except an embedding table's (one row)."""
    model = onnx.load(path, load_external_data=False)

    def nbytes(t: onnx.TensorProto) -> int:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return int(next((e.value for e in t.external_data if e.key == "length"), 0))
        if t.raw_data:
            return len(t.raw_data)
        return int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize

    sizes = {t.name: (nbytes(t), list(t.dims)) for t in model.graph.initializer}
    gathered = {
        n.input[i]
        for n in model.graph.node
        for i in ROW_GATHERS.get(n.op_type, ())
        if i < len(n.input) and n.input[i] in sizes and _gather_axis(n) == 0
    }
    total = 0
    for name, (size, dims) in sizes.items():
        total += size // max(dims[0], 1) if name in gathered and dims else size
    return total


def _gather_axis(node: onnx.NodeProto) -> int:
    name = "gather_axis" if node.op_type == "GatherBlockQuantized" else "axis"
    return next((a.i for a in node.attribute if a.name == name), 0)


class BandwidthProbe:
    """The memory bandwidth ONNX Runtime reaches here: GB/s of one fp32 MatMul [1, R] x [R, 4096] whose matrix
    (`mib` MiB) is read once per run, with the runtime's threads and session options. That is the decode step's
    situation with nothing else in the way, so a step's floor is its weight bytes over this rate. The session
    stays open so that the bench can sample it between blocks of decode steps: a shared machine's bandwidth drifts
    over minutes (docs/performance.md), and a ratio to a rate measured seconds earlier drifts with it."""

    def __init__(self, threads: int, mib: int = PROBE_MIB, spinning: bool = True):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        cols = 4096
        rows = mib * 2**20 // (4 * cols)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["v", "w"], ["y"])],
            "bandwidth_probe",
            [
                helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, rows]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [rows, cols]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")  # as the runtime
        self.session = ort.InferenceSession(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.weights = np.random.default_rng(0).random((rows, cols), dtype=np.float32)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input("v", ort.OrtValue.ortvalue_from_numpy(np.ones((1, rows), np.float32)))
        # the matrix is an input, not an initializer: ORT never prepacks or copies it
        self.binding.bind_ortvalue_input("w", ort.OrtValue.ortvalue_from_numpy(self.weights))
        self.binding.bind_output("y")
        self.session.run_with_iobinding(self.binding)  # warm-up

    def gbs(self, runs: int = 3) -> float:
        """Median GB/s of `runs` runs, after one untimed run (the first run after a pause is slower)."""
        return self.weights.nbytes / (median_ms(time_calls(self.run, runs, untimed=1)) * 1e6)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)


def time_decode(model: RWKVModel, tokens: int, warmup: int) -> float:
    """Median ms per token of `tokens` steps at batch 1, after `warmup` steps."""
    return decode_against_probe(model, tokens, warmup)["ms"]


DECODE_BLOCK = 8  # decode steps timed between two samples of the bandwidth probe
# A pause between two sessions' (or processes') timed work: the spinning workers of the one that ran last stop
# first; right after a block of decode steps the probe reads low for some tens of ms (docs/performance.md), and
# this pause leaves a margin over that.
SETTLE_S = 0.1
# Untimed steps after the pause, before a timed block: decoding is a continuous loop, and its first steps after a
# pause and a probe run are slower than the loop's (docs/performance.md).
REWARM_STEPS = 4


def decode_against_probe(
    model: RWKVModel,
    tokens: int,
    warmup: int,
    probe: BandwidthProbe | None = None,
    block: int = DECODE_BLOCK,
    kernels: KernelProbe | None = None,
) -> dict:
    """Decode ms per token (median of `tokens` steps after `warmup`), timed in blocks of `block` steps; with a
    probe, its GB/s sampled before each block, and with `kernels` their ms: {"ms", "block_ms": [median per
    block], "gbs": [probe per block], "kernel_ms": [kernels per block]}. A block's ratio to the floor then uses
    the bandwidth of the moment it ran. After the samples, REWARM_STEPS untimed steps start each block."""
    state = model.new_state(1)
    ids = [int(t) for t in np.random.default_rng(0).integers(0, model.vocab_size, size=tokens + warmup)]
    for t in ids[:warmup]:
        model.step([t], state)
    times, block_ms, gbs, kernel_ms = [], [], [], []
    for start in range(warmup, len(ids), block):
        if probe is not None or kernels is not None:
            if probe is not None:
                time.sleep(SETTLE_S)
                gbs.append(probe.gbs())
            if kernels is not None:
                time.sleep(SETTLE_S)
                kernel_ms.append(kernels.ms())
            time.sleep(SETTLE_S)
            for t in ids[start : start + REWARM_STEPS]:
                model.step([t], state)
        got = []
        for t in ids[start : start + block]:
            begin = time.perf_counter()
            model.step([t], state)
            got.append(time.perf_counter() - begin)
        times += got
        block_ms.append(median_ms(got))
    return {"ms": median_ms(times), "block_ms": block_ms, "gbs": gbs, "kernel_ms": kernel_ms}


def time_feed(model: RWKVModel, length: int, step: bool = False, repeats: int = 2) -> float:
    """Tokens/s of the fastest of `repeats` runs feeding a `length`-token prompt to a fresh state."""
    ids = np.random.default_rng(1).integers(0, model.vocab_size, size=(1, length))
    best = float("inf")
    for _ in range(repeats):
        state = model.new_state(1)
        start = time.perf_counter()
        if step:
            for t in ids[0]:
                model.step([int(t)], state)
        else:
            model.feed(ids, state)
        best = min(best, time.perf_counter() - start)
    return length / best


def memory_mb(
    export_dir: Path, precision: str, threads: int, sequence: bool = True, optimized_cache=None
) -> tuple[float | None, float | None]:
    """(peak RSS, PSS) in MiB of a fresh process that opens the graphs as RWKVModel.load does, feeds 128 tokens and
    steps 16 (measure/memory.py); None where unknown or where the process failed. `optimized_cache`: as
    RWKVModel.load's (the entry should exist: building it is not what is measured)."""
    try:
        got = process_memory(
            export_dir,
            precision,
            threads=threads,
            prompt_tokens=128,
            steps=16,
            use_sequence_graph=sequence,
            optimized_cache=optimized_cache,
        )
    except RWKVEdgeError:
        return None, None
    return got.peak_rss_mib, got.pss_mib


def bench_export(
    export_dir: str | os.PathLike,
    *,
    threads: int = 2,
    tokens: int = 64,
    warmup: int = 8,
    bandwidth_gbs: float | None = None,
    precisions: list[str] | None = None,
    prefill_lengths=PREFILL_LENGTHS,
    memory: bool = True,
    optimized_cache=None,
    spinning: bool = True,
    kernel_probe: bool = True,
    on_step=lambda name: None,
) -> dict:
    """`bandwidth_gbs`: the memory bandwidth for the floor; None samples a BandwidthProbe before each decode block.
    `optimized_cache`: as RWKVModel.load's; the timed load then reads the saved optimized graphs.
    `kernel_probe`: on the CPU, also time the step graph's weight-reading kernels alone (weight_kernels.py) before
    each decode block; it holds a second copy of the weights meanwhile."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    bandwidth_source, probe, samples = "given", None, []
    if bandwidth_gbs is None:
        on_step("memory bandwidth probe")
        probe = BandwidthProbe(threads, spinning=spinning)
        bandwidth_source = (
            f"measured: ORT MatMul streaming {PROBE_MIB} MiB, before each block of {DECODE_BLOCK} decode steps"
        )
    present = [g.precision for g in manifest.graphs if g.kind == "step"]
    rows = []
    for precision in precisions or present:
        step_graph = manifest.graph("step", precision)
        files = [g.file for g in manifest.graphs if g.precision == precision]
        on_step(f"{precision}: decode")
        if optimized_cache:  # this load saves the optimized graphs, the timed one below reads them
            RWKVModel.load(
                export_dir, precision=precision, threads=threads, optimized_cache=optimized_cache, spinning=spinning
            )
        start = time.perf_counter()
        model = RWKVModel.load(
            export_dir, precision=precision, threads=threads, optimized_cache=optimized_cache, spinning=spinning
        )  # one model alive at a time
        load_s = time.perf_counter() - start
        kernels = None
        if kernel_probe and model.provider == "CPUExecutionProvider":
            on_step(f"{precision}: weight kernels alone")
            kernels = KernelProbe(export_dir / step_graph.file, threads, spinning=spinning)
        timed = decode_against_probe(model, tokens, warmup, probe, kernels=kernels)
        del kernels  # its copy of the weights
        decode = timed["ms"]
        per_token = weight_bytes_per_token(export_dir / step_graph.file)
        gbs_per_block = timed["gbs"] or [bandwidth_gbs] * len(timed["block_ms"])  # each block against its moment's
        samples += timed["gbs"]
        row_gbs = float(np.median(gbs_per_block))
        ratio = over_floor(timed["block_ms"], gbs_per_block, per_token)
        floor = floor_ms(per_token, row_gbs)
        row = BenchRow(
            precision,
            round(decode, 3),
            round(floor, 3),
            round(ratio, 2),
            round(per_token / 1e6, 1),
            round(row_gbs, 1),
            effective_gbs=round(per_token / decode / 1e6, 1),
            sequence_graph=model.sequence_session is not None,
            file_mb=round(files_bytes(export_dir, files) / 1e6, 1),
            load_s=round(load_s, 3),
        )
        if timed["kernel_ms"]:
            row.kernels_ms = round(float(np.median(timed["kernel_ms"])), 3)
            row.kernels_ratio = round(over_floor(timed["kernel_ms"], gbs_per_block, per_token), 2)
        for n in prefill_lengths:
            on_step(f"{precision}: prefill {n}")
            row.prefill_tokens_s[n] = round(time_feed(model, n), 1)
            row.stepped_tokens_s[n] = (
                round(time_feed(model, n, step=True, repeats=1), 1) if n <= 128 else round(1e3 / decode, 1)
            )
        del model
        if memory:
            on_step(f"{precision}: peak memory")
            rss, pss = memory_mb(export_dir, precision, threads, optimized_cache=optimized_cache)
            row.peak_rss_mb, row.pss_mb = _round(rss), _round(pss)
            if row.sequence_graph:
                row.pss_step_only_mb = _round(memory_mb(export_dir, precision, threads, sequence=False)[1])
        rows.append(row)
    a = manifest.architecture
    return {
        "export_dir": str(export_dir),
        "model": f"RWKV-{a.version} L{a.n_layer} C{a.n_embd} vocab {a.vocab_size}",
        "machine": machine(threads),
        "spinning": spinning,
        "bandwidth_gbs": bandwidth_gbs if probe is None else round(float(np.median(samples)), 1),
        "bandwidth_range_gbs": None if probe is None else [round(min(samples), 1), round(max(samples), 1)],
        "bandwidth_source": bandwidth_source,
        "decode_tokens": tokens,
        "warmup": warmup,
        "rows": [asdict(r) for r in rows],
    }


def floor_ms(weight_bytes: int, gbs: float) -> float:
    """The bandwidth floor of a step: ms to read its weight bytes once at `gbs` GB/s."""
    return weight_bytes / (gbs * 1e9) * 1e3


def over_floor(per_block_ms: list[float], gbs_per_block: list[float], weight_bytes: int) -> float:
    """Median over blocks of each block's ms over the floor at the bandwidth sampled beside that block."""
    return float(np.median([ms / floor_ms(weight_bytes, gbs) for ms, gbs in zip(per_block_ms, gbs_per_block)]))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
