#!/usr/bin/env python3
"""One prepared check of the CUDA path, for a machine with an NVIDIA GPU. Downloads nothing.

For each model (tiny RWKV-7 and RWKV-4, and the RWKV-7 0.1B / RWKV-4 169M shapes, random weights) it exports
the fp32 step graph, makes its fp16 and int8 siblings (`quantize_export`), and for each precision on the CUDA
execution provider checks:
  - placement: no node needs a copy between devices (ORT's own condition for CUDA graphs; the shape subgraphs
    that ORT puts on the CPU on purpose are listed, not failed), and the WKV function is inlined and runs on CUDA,
  - logits over 32 steps (batch 2) against the CPU provider's fp32 graph: max|diff| / std, bounds() per precision,
  - the CUDA-graph ping-pong (RWKVModel.load(cuda_graph=True)) against plain IO-binding runs, batch 2 and 1,
and times decode ms/token (batch 1, median) with plain IO binding and with CUDA graphs, against the `rwkv`
package on the same GPU (`cuda fp16`, `cuda fp32`). It ends with one table.

    bash scripts/gpu_check.sh [--quick] [--json rows.json]    # --quick: tiny models only
    bash scripts/gpu_check.sh --quick --dry-run-on-cpu         # the whole logic rehearsed on the CPU provider

Needs torch, onnx, onnxscript, onnxruntime-gpu, numpy, typer, rich (and the `rwkv` package for its timings).
Exit code 3 when the CUDA execution provider (or a needed package) is missing, 1 when a check fails.

A GPU machine without a package registry and with the CPU-only onnxruntime: fetch the GPU wheel where pip
works, for that machine's Python (e.g. `pip download --no-deps --only-binary=:all: --python-version 3.12
--implementation cp --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1`, ~255 MB), carry it in parts
that fit what one transfer takes (`split -b 55M`), join them there (`cat part.* > the.whl`, check its sha256),
`pip install --no-deps` it, and confirm `onnxruntime.get_available_providers()` lists CUDAExecutionProvider.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name -> (version, n_layer, n_embd, head_size, vocab, tokenizer)
CASES = {
    "v7-tiny": ("7", 2, 64, 16, 301, "bytes"),
    "v4-tiny": ("4", 2, 64, 64, 301, "bytes"),
    "v7-0.1b": ("7", 12, 768, 64, 65536, "world"),
    "v4-169m": ("4", 12, 768, 768, 50277, "neox-stub"),
}
PRECISIONS = ("fp32", "fp16", "int8")
STEPS = 32
TIMED_STEPS = 64
WARMUP_STEPS = 16  # untimed: covers the CUDA-graph warm-up and capture of both parities (runtime/cuda_graph.py)


# max|logits diff| / std(CPU fp32 logits) over STEPS steps, per precision of the graph run on CUDA.
# fp32: cuBLAS may use TF32 on Ampere and later. fp16: quant/fp16.py's bounds (worst step 1e-1, median step 2e-2;
# measured on the CPU with real fp16 arithmetic: worst 3.7e-3..3.2e-2, median 2.8e-3..7.6e-3 over every
# generation). int8: weights and (on the CPU, accuracy_level 4) activations rounded to 8 bits, which random weights
# make large: the CPU dry run measured 0.16, 0.06, 0.63, 0.14 (v7-tiny, v4-tiny, v7-0.1b, v4-169m) against fp32,
# and the activation rounding alone (accuracy_level 4 vs 0, which is what CUDA's MatMulNBits computes) 0.04-0.21;
# a wrong kernel lands several std off.
def bounds() -> tuple[dict, dict]:
    """(worst-step bounds, median-step bounds) per precision; imported late: the check first says what is missing."""
    from rwkv_edge.quant.fp16 import FP16_LOGITS_BOUND, FP16_MEDIAN_LOGITS_BOUND

    # the median step too for fp16: a systematic error shows at every step, rounding at a few
    return {"fp32": 1e-3, "fp16": FP16_LOGITS_BOUND, "int8": 1.0}, {"fp16": FP16_MEDIAN_LOGITS_BOUND}


BOUND_GRAPH_VS_PLAIN = 1e-5  # a replayed graph runs the plain run's kernels on the same buffers
MEMCPY_OPS = ("MemcpyToHost", "MemcpyFromHost")  # a node whose inputs live on the other device


NEEDED = (
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "typer",
    "rich",
)  # `rwkv` is optional: its columns say n/a


def cuda_available() -> tuple[bool, str]:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA / cuDNN from the nvidia-* pip packages, when present
        except Exception as e:  # noqa: BLE001 - report, then let the provider check decide
            print(f"note: onnxruntime.preload_dlls() failed: {e}")
    providers = ort.get_available_providers()
    ok = "CUDAExecutionProvider" in providers
    return ok, f"onnxruntime {ort.__version__}, providers: {', '.join(providers)}"


DEVICE = "cuda"  # --dry-run-on-cpu sets "cpu": the whole check's logic, rehearsed without a GPU


def node_placement(model_path: Path, feeds: dict) -> dict:
    """Run once with ORT profiling; count nodes per provider, and find where the WKV nodes ran."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(model_path.parent / f"profile-{model_path.stem}")
    opts.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if DEVICE == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_path), opts, providers=providers)
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    by_provider, wkv, cpu_ops, ops = {}, {}, set(), set()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        provider = e["args"].get("provider", "?")
        op = e["args"].get("op_name", "?")
        ops.add(op)
        by_provider[provider] = by_provider.get(provider, 0) + 1
        if provider == "CPUExecutionProvider" and DEVICE == "cuda":
            cpu_ops.add(op)
        if "wkv" in e["name"].lower():
            wkv[provider] = wkv.get(provider, 0) + 1
    device_ep = "CUDAExecutionProvider" if DEVICE == "cuda" else "CPUExecutionProvider"
    memcpy = sorted(ops & set(MEMCPY_OPS))
    inlined = not any(op.startswith("WKV") for op in ops)  # the rwkv-domain node became its function's body
    ok = not memcpy and inlined and bool(wkv) and set(wkv) == {device_ep}
    return {"nodes": by_provider, "wkv_nodes": wkv, "cpu_ops": sorted(cpu_ops), "memcpy": memcpy, "placement_ok": ok}


def run_steps(model, tokens: np.ndarray) -> np.ndarray:
    """Logits [batch, steps, vocab] of stepping `tokens` [batch, steps] from a fresh state."""
    state = model.new_state(tokens.shape[0])
    return np.stack([model.step(tokens[:, t], state) for t in range(tokens.shape[1])], 1)


def rel_err(got: np.ndarray, ref: np.ndarray, over_steps=np.max) -> float:
    """max over rows of (max, or another statistic, over steps of) max|diff| / std(reference logits)."""
    return float(over_steps(np.abs(got - ref).max(-1) / ref.std(-1), axis=-1).max())


def timed_ms(model, n: int, vocab: int, warmup: int = WARMUP_STEPS) -> float:
    state = model.new_state(1)
    times = []
    for i in range(n + warmup):
        t0 = time.perf_counter()
        model.step([i % vocab], state)  # logits come back to the host each step, as sampling needs
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


class NotAvailable(Exception):
    """A precision this checkout cannot make yet: reported in the table, not a failure."""


def make_precision(out: Path, precision: str) -> None:
    from rwkv_edge.quant.pipeline import quantize_export
    from rwkv_edge.runtime.errors import RWKVEdgeError

    if precision == "fp32":
        return
    try:
        quantize_export(
            out, precision
        )  # "int8": MatMulNBits bits=8 (CUDA has it since ORT 1.22); "fp16": quant/fp16.py
    except RWKVEdgeError as e:
        if "unknown quantization scheme" in str(e):
            raise NotAvailable(f"{precision}: not available ({e})") from None
        raise


def check_precision(out: Path, precision: str, tokens: np.ndarray, reference: np.ndarray, vocab: int) -> dict:
    from rwkv_edge.runtime import RWKVModel
    from rwkv_edge.runtime.manifest import load_manifest

    worst_bounds, median_bounds = bounds()
    row = {"precision": precision, "bound": worst_bounds[precision]}
    plain = RWKVModel.load(out, provider=DEVICE, precision=precision)
    got = run_steps(plain, tokens)
    row["err_vs_cpu_fp32"] = rel_err(got, reference)
    median_ok = rel_err(got, reference, np.median) <= median_bounds.get(precision, np.inf)
    if precision != "fp32":  # what CUDA adds beyond the precision's own rounding: the same graph on the CPU
        try:
            row["err_vs_cpu_same"] = rel_err(
                got, run_steps(RWKVModel.load(out, provider="cpu", precision=precision), tokens)
            )
        except Exception as e:  # noqa: BLE001 - the CPU provider lacks some fp16 kernels; informational only
            row["err_vs_cpu_same"] = f"n/a ({str(e)[:40]})"

    graphed = RWKVModel.load(out, provider=DEVICE, precision=precision, cuda_graph=True)
    if DEVICE == "cpu":
        row["cuda_graph"] = "rehearsed on cpu"
    else:
        row["cuda_graph"] = (
            "on" if graphed.cuda_graph and graphed.cuda_graph_note is None else f"off: {graphed.cuda_graph_note}"
        )
    pingpong = [
        rel_err(run_steps(graphed, tokens), got),
        rel_err(run_steps(graphed, tokens[:1]), run_steps(plain, tokens[:1])),
    ]
    row["graph_vs_plain"] = max(pingpong)
    if DEVICE == "cuda" and graphed.cuda_graph_note:  # a fallback while stepping is said here too
        row["cuda_graph"] = f"off: {graphed.cuda_graph_note}"

    graph_file = out / load_manifest(out).graph("step", precision).file
    feeds = {
        plain.step_graph.input: tokens[:, 0].astype(np.int64),
        **{
            s.input: v
            for s, v in zip(plain.state_specs, (plain.new_state(2).to_numpy()[s.name] for s in plain.state_specs))
        },
    }
    row.update(node_placement(graph_file, feeds))

    row["ort_ms"] = round(timed_ms(plain, TIMED_STEPS, vocab), 3)
    row["ort_graph_ms"] = round(timed_ms(graphed, TIMED_STEPS, vocab), 3)
    row["ok"] = bool(
        row["err_vs_cpu_fp32"] <= row["bound"]
        and median_ok
        and row["graph_vs_plain"] <= BOUND_GRAPH_VS_PLAIN
        and row["placement_ok"]
        and row["cuda_graph"] in ("on", "rehearsed on cpu")
    )
    return row


def package_ms(ck: Path, version: str, tokens: np.ndarray) -> dict:
    from rwkv_edge.validation.reference_rwkv import run_rwkv_package

    out = {}
    for strategy in ("cuda fp16", "cuda fp32") if DEVICE == "cuda" else ("cpu fp32",):
        key = f"rwkv_{strategy.replace(' ', '_')}_ms"
        try:
            r = run_rwkv_package(
                ck, version, [int(t) for t in tokens[0]] * 2, want_states=False, warmup=4, strategy=strategy
            )
            out[key] = round(float(np.median(r["step_seconds"]) * 1e3), 3)
        except Exception as e:  # noqa: BLE001 - a missing reference is reported, not fatal
            out[key] = f"n/a ({str(e)[:60]})"
    return out


def check_case(name: str, work: Path) -> list[dict]:
    """One row per precision of one model shape."""
    from rwkv_edge.exporter.pipeline import export_checkpoint
    from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint, save_neox_stub_tokenizer
    from rwkv_edge.runtime import RWKVModel

    version, L, C, N, V, tok = CASES[name]
    ck = save_checkpoint(make_checkpoint(version, L, C, N, V), work / f"{name}.pth")
    tokenizer = str(save_neox_stub_tokenizer(V, work / f"{name}.json")) if tok == "neox-stub" else tok
    out = work / name
    t0 = time.perf_counter()
    export_checkpoint(ck, out, tokenizer=tokenizer)
    export_s = round(time.perf_counter() - t0, 1)

    tokens = np.random.default_rng(0).integers(0, V, size=(2, STEPS))
    reference = run_steps(RWKVModel.load(out, provider="cpu"), tokens)  # the CPU provider's fp32 graph
    package = package_ms(ck, version, tokens)
    rows = []
    for precision in PRECISIONS:
        row = {"model": name, "precision": precision}
        t0 = time.perf_counter()
        try:
            make_precision(out, precision)
            row.update(check_precision(out, precision, tokens, reference, V))
        except NotAvailable as e:
            row.update(ok=None, error=str(e))
        except Exception as e:  # noqa: BLE001 - one failing precision must not hide the others' results
            traceback.print_exc()
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:200])
        row.update(package, export_s=export_s, s=round(time.perf_counter() - t0, 1))
        print(f"[{name} {precision}] {row['s']:.0f} s: {row}", flush=True)
        rows.append(row)
    return rows


COLUMNS = [  # (header, key, format)
    ("model", "model", "{}"),
    ("prec", "precision", "{}"),
    ("ok", "ok", "{}"),
    ("err vs cpu fp32", "err_vs_cpu_fp32", "{:.1e}"),
    ("bound", "bound", "{:.0e}"),
    ("vs cpu same prec", "err_vs_cpu_same", "{:.1e}"),
    ("graph vs plain", "graph_vs_plain", "{:.1e}"),
    ("cuda graph", "cuda_graph", "{}"),
    ("placement", "placement_ok", "{}"),
    ("wkv nodes", "wkv_nodes", "{}"),
    ("cpu ops (shape)", "cpu_ops", "{}"),
    ("memcpy", "memcpy", "{}"),
    ("ort ms", "ort_ms", "{:.3f}"),
    ("ort graph ms", "ort_graph_ms", "{:.3f}"),
    ("rwkv cuda fp16 ms", "rwkv_cuda_fp16_ms", "{}"),
    ("rwkv cuda fp32 ms", "rwkv_cuda_fp32_ms", "{}"),
    ("rwkv cpu fp32 ms", "rwkv_cpu_fp32_ms", "{}"),
    ("export s", "export_s", "{}"),
    ("error", "error", "{}"),
]


def table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    cells = [[h for h, _, _ in cols]]
    for r in rows:
        cells.append(
            ["-" if r.get(k) is None else str(r[k]) if isinstance(r[k], str) else f.format(r[k]) for _, k, f in cols]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="rehearse every step on the CPU provider")
    args = parser.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.dry_run_on_cpu else "cuda"

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"Missing Python packages: {', '.join(missing)} (this check installs nothing). Nothing was checked.")
        return 3
    ok, providers = cuda_available()
    print(providers)
    if not ok and DEVICE == "cuda":
        print(
            "The CUDA execution provider is missing (this onnxruntime has none): install onnxruntime-gpu instead of "
            "onnxruntime (pip install 'rwkv-edge[gpu]') on a machine with an NVIDIA GPU and its CUDA libraries. "
            "Nothing was checked."
        )
        return 3
    import torch

    print(
        f"torch {torch.__version__}, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}"
        + (" (dry run: the CPU provider stands in for CUDA)" if DEVICE == "cpu" else "")
    )
    names = [n for n in CASES if not args.quick or n.endswith("tiny")]
    rows, t_start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rwkv-gpu-") as tmp:
        for name in names:
            try:
                rows.extend(check_case(name, Path(tmp)))
            except Exception as e:  # noqa: BLE001 - one failing model must not hide the others' results
                traceback.print_exc()
                rows.append({"model": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:200]})

    device = "CPU provider (dry run)" if DEVICE == "cpu" else "CUDA EP"
    print(
        f"\nGPU check on the {device}, {time.perf_counter() - t_start:.0f} s. Errors: max|logits diff| / std(CPU fp32 "
        f"logits) over {STEPS} steps, batch 2; graph vs plain: CUDA-graph ping-pong vs plain IO binding, bound "
        f"{BOUND_GRAPH_VS_PLAIN:.0e}; ms: decode per token, batch 1, median of {TIMED_STEPS}. ok '-': not available."
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
