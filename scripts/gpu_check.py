#!/usr/bin/env python3
"""One prepared check of the CUDA path, for a machine with an NVIDIA GPU. Downloads nothing.

For each model (tiny RWKV-7 and RWKV-4, and the RWKV-7 0.1B / RWKV-4 169M shapes, random weights) it
exports the fp32 step graph, then on the CUDA execution provider checks:
  - every node runs on CUDA (none falls back to the CPU) and the inlined WKV function runs there too,
  - logits over 32 steps match the CPU provider (max|diff| / std, bound 1e-3: cuBLAS may use TF32),
  - the runtime's IO binding (state resident on the GPU, ping-pong buffers) matches plain session.run,
and times decode ms/token (batch 1, median) against the `rwkv` package on the same GPU (`cuda fp16`,
`cuda fp32`). It ends with one table.

    python scripts/gpu_check.py [--quick]        # --quick: tiny models only

Needs torch, onnx, onnxscript, onnxruntime-gpu, numpy, typer, rich (and the `rwkv` package for its
timings). Exit code 3 when the CUDA execution provider is missing, 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # random-weight checkpoints in the official layout

# name -> (version, n_layer, n_embd, head_size, vocab, tokenizer)
CASES = {
    "v7-tiny": ("7", 2, 64, 16, 301, "bytes"),
    "v4-tiny": ("4", 2, 64, 64, 301, "bytes"),
    "v7-0.1b": ("7", 12, 768, 64, 65536, "world"),
    "v4-169m": ("4", 12, 768, 768, 50277, "neox-stub"),
}
STEPS = 32
TIMED_STEPS = 64
BOUND_GPU_VS_CPU = 1e-3


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
    """Run once with ORT profiling on CUDA; count nodes per provider, and where the WKV nodes ran."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(model_path.parent / "profile")
    opts.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if DEVICE == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_path), opts, providers=providers)
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_provider, wkv, cpu_ops = {}, {}, set()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        provider = e["args"].get("provider", "?")
        op = e["args"].get("op_name", "?")
        by_provider[provider] = by_provider.get(provider, 0) + 1
        if provider == "CPUExecutionProvider" and DEVICE == "cuda":
            cpu_ops.add(op)
        if "WKV" in e["name"] or "wkv" in e["name"]:
            wkv[provider] = wkv.get(provider, 0) + 1
    return {"by_provider": by_provider, "wkv_nodes": wkv, "cpu_ops": sorted(cpu_ops)}


def run_steps(model, tokens: np.ndarray) -> np.ndarray:
    state = model.new_state(tokens.shape[0])
    return np.stack([model.step(tokens[:, t], state) for t in range(tokens.shape[1])], 1)


def timed_ms(model, n: int, warmup: int = 5) -> float:
    state = model.new_state(1)
    times = []
    for i in range(n + warmup):
        t0 = time.perf_counter()
        model.step([i % 200], state)  # logits come back to the host each step, as sampling needs
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def check_case(name: str, work: Path) -> dict:
    from checkpoints import make_checkpoint, save_checkpoint, save_neox_stub_tokenizer

    from rwkv_edge.exporter.pipeline import export_checkpoint
    from rwkv_edge.exporter.reference_rwkv import run_rwkv_package
    from rwkv_edge.runtime import RWKVModel

    version, L, C, N, V, tok = CASES[name]
    row = {"model": name}
    ck = save_checkpoint(make_checkpoint(version, L, C, N, V), work / f"{name}.pth")
    tokenizer = str(save_neox_stub_tokenizer(V, work / f"{name}.json")) if tok == "neox-stub" else tok
    out = work / name
    t0 = time.perf_counter()
    export_checkpoint(ck, out, tokenizer=tokenizer)
    row["export_s"] = round(time.perf_counter() - t0, 1)

    tokens = np.random.default_rng(0).integers(0, V, size=(2, STEPS))
    cpu = RWKVModel.load(out, provider="cpu")
    gpu = RWKVModel.load(out, provider=DEVICE)
    ref = run_steps(cpu, tokens)
    got = run_steps(gpu, tokens)
    row["err_vs_cpu"] = float((np.abs(got - ref).max(-1) / ref.std(-1)).max())

    # IO binding (state on the GPU, ping-pong) against plain session.run with host arrays
    state = {s.name: np.full(s.concrete_shape(2), s.init, np.float32) for s in gpu.state_specs}
    plain = []
    for t in range(STEPS):
        logits, state = gpu.step_numpy(tokens[:, t], state)
        plain.append(logits)
    row["binding_vs_plain"] = float(np.abs(np.stack(plain, 1) - got).max() / ref.std())

    feeds = {"input_ids": tokens[:, 0].astype(np.int64),
             **{s.input: np.full(s.concrete_shape(2), s.init, np.float32) for s in gpu.state_specs}}
    placement = node_placement(out / "model.onnx", feeds)
    row["nodes"] = placement["by_provider"]
    row["wkv_nodes"] = placement["wkv_nodes"]
    row["cpu_ops"] = placement["cpu_ops"]

    row["ort_cuda_fp32_ms"] = round(timed_ms(gpu, TIMED_STEPS), 3)
    row["ort_cpu_fp32_ms"] = round(timed_ms(cpu, 16, warmup=2), 2)
    for strategy in ("cuda fp16", "cuda fp32") if DEVICE == "cuda" else ("cpu fp32",):
        try:
            r = run_rwkv_package(ck, version, [int(t) for t in tokens[0]] * 2, want_states=False, warmup=4, strategy=strategy)
            row[f"rwkv_{strategy.replace(' ', '_')}_ms"] = round(float(np.median(r["step_seconds"]) * 1e3), 3)
        except Exception as e:  # noqa: BLE001 - a missing reference is reported, not fatal
            row[f"rwkv_{strategy.replace(' ', '_')}_ms"] = f"n/a ({str(e)[:60]})"
    row["ok"] = (row["err_vs_cpu"] <= BOUND_GPU_VS_CPU and row["binding_vs_plain"] <= 1e-5
                 and not row["cpu_ops"] and bool(row["wkv_nodes"])
                 and set(row["wkv_nodes"]) == {"CUDAExecutionProvider" if DEVICE == "cuda" else "CPUExecutionProvider"})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="rehearse every step on the CPU provider")
    args = parser.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.dry_run_on_cpu else "cuda"

    ok, providers = cuda_available()
    print(providers)
    if not ok and DEVICE == "cuda":
        print("The CUDA execution provider is missing: install onnxruntime-gpu (pip install 'rwkv-edge[gpu]') "
              "on a machine with an NVIDIA GPU and CUDA 13 libraries. Nothing was checked.")
        return 3
    import torch

    print(f"torch {torch.__version__}, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '?'}")
    names = [n for n in CASES if not args.quick or n.endswith("tiny")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rwkv-gpu-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            try:
                rows.append(check_case(name, Path(tmp)))
            except Exception as e:  # noqa: BLE001 - one failing model must not hide the others' results
                traceback.print_exc()
                rows.append({"model": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:200]})
            print(f"[{name}] {time.perf_counter() - t0:.0f} s: {rows[-1]}", flush=True)

    print("\nGPU check (fp32 step graph, CUDA EP; errors are max|diff|/std(ref logits); ms are per token, batch 1)")
    cols = ["model", "ok", "err_vs_cpu", "binding_vs_plain", "nodes", "wkv_nodes", "cpu_ops",
            "ort_cuda_fp32_ms", "ort_cpu_fp32_ms", "rwkv_cuda_fp16_ms", "rwkv_cuda_fp32_ms", "export_s", "error"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.2e}" if isinstance(r.get(c), float) and c.startswith(("err", "binding")) else str(r.get(c, "-"))
                         for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
