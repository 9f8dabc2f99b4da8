"""Run BlinkDL's `rwkv` package (the PyTorch original, our numerical reference) on a checkpoint, one token at a time.

It runs in a child process because the package decides at import time which model class it defines
(RWKV-7 when env RWKV_V7_ON=1, RWKV-4..6 otherwise), JIT-compiles on import and prints to stdout. The
child gets its request and hands back its numbers through files in a temp directory, never through stdout.

Returned state: one sequence, stacked over layers (our batch-first layout minus the batch axis):
  RWKV-4:    att_x, att_a, att_b, att_p, ffn_x, each [L, C] (the package starts att_p at -1e30)
  RWKV-5..7: att_x [L, C], wkv [L, H, N, N], ffn_x [L, C]
The wkv axes are the package's own, which differ by generation (see PACKAGE_WKV_AXES):
  5, 5.1, 5.2, 6: (head, key, value): it adds k.view(H,N,1) @ v.view(H,1,N) and reads out r.view(H,1,N) @ S,
                  and decays rows (the key axis) with w.view(H,N,1).
  7:              (head, value, key): it adds v.view(H,N,1) @ k.view(H,1,N) and reads out S @ r.view(H,N,1),
                  and decays columns (the key axis) with w.view(H,1,N).
State-tuned v5/v6 files store att.time_state as (head, value, key): the package transposes it to use it.
The package ignores att.time_state for RWKV-7 (it always starts from zeros).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rwkv_edge.runtime.errors import RWKVEdgeError

_MODULE = "rwkv_edge.validation.reference_rwkv"  # run as `python -m` in the child
V4_STATE = ("att_x", "att_a", "att_b", "att_p", "ffn_x")
STATE = ("att_x", "wkv", "ffn_x")
PACKAGE_WKV_AXES = {v: ("head", "key", "value") for v in ("5", "5.1", "5.2", "6")} | {"7": ("head", "value", "key")}


def run_rwkv_package(
    checkpoint_path: str | os.PathLike,
    version: str,
    tokens: list[int],
    *,
    want_states: bool = True,
    variant: str = "",
    extra_tensors: dict | None = None,
    warmup: int = 2,
    threads: int | None = None,
    timeout: float | None = None,
    strategy: str = "cpu fp32",
) -> dict:
    """Step `tokens` through the `rwkv` package (strategy "cpu fp32" by default; "cuda fp16" for GPU timings),
    forward([token], state) one at a time.

    Returns {"logits": float32 [T, vocab], "step_seconds": float64 [T], "package_version": str,
             "state": {name: float32 array} (final state, see the module docstring; only if want_states),
             "wkv_axes": tuple or None}.
    `warmup` untimed steps on a throwaway state come first, so the JIT's first compiles do not count.
    `threads` sets torch's intra-op threads (None: torch's default, all cores).
    `variant="deepembed"` selects the package's RWKV-7 DeepEmbed code (env RWKV_DE_VERSION=1).
    `extra_tensors` are added to (a copy of) the checkpoint, replacing same-named ones: e.g. a state-tuning
    file's blocks.{i}.att.time_state, which the package only reads from the checkpoint itself.
    """
    if importlib.util.find_spec("rwkv") is None:
        raise RWKVEdgeError(
            "the `rwkv` package is needed to run the PyTorch reference: pip install 'rwkv-edge[reference]'"
        )
    src = Path(checkpoint_path)
    if not src.is_file():
        raise RWKVEdgeError(f"{src}: no such checkpoint file for the `rwkv` package reference")
    if version not in PACKAGE_WKV_AXES and version != "4":
        raise RWKVEdgeError(f"version must be one of 4, 5, 5.1, 5.2, 6, 7 for the `rwkv` package, found {version!r}")
    if not tokens:
        raise RWKVEdgeError("the `rwkv` package reference needs at least one token, found none")

    with tempfile.TemporaryDirectory(prefix="rwkv-edge-ref-") as tmp:
        tmp = Path(tmp)
        # The package only reads .pth, and appends ".pth" to the name it is given (RWKV-7 always, 4..6 if absent).
        usable = src.suffix == ".pth" and not extra_tensors and _package_reads_heads(_keys_in_order(src), version)
        pth = src if usable else _pth_copy(src, tmp / "model.pth", extra_tensors)
        request = {
            "model": str(pth.resolve())[: -len(".pth")],
            "version": version,
            "tokens": [int(t) for t in tokens],
            "want_states": want_states,
            "warmup": warmup,
            "threads": threads,
            "strategy": strategy,
            "out": str(tmp / "out.npz"),
        }
        (tmp / "request.json").write_text(json.dumps(request))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", _MODULE, str(tmp / "request.json")],
                cwd=tmp,  # nothing from the caller's working directory shadows an import
                env=_child_env(version, variant, threads),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise RWKVEdgeError(
                f"the `rwkv` package did not finish {len(tokens)} steps on {src} in {timeout} s"
            ) from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            raise RWKVEdgeError(f"the `rwkv` package failed on {src}: {why}")
        with np.load(request["out"]) as z:
            out = {k: z[k] for k in z.files}

    detected = str(out.pop("package_version"))
    if detected != version:
        raise RWKVEdgeError(
            f"{src}: the `rwkv` package detected RWKV-{detected}, but the checkpoint is RWKV-{version}; "
            f"pass the version load_checkpoint detects (its reference for another version would be wrong)"
        )
    result = {
        "logits": out.pop("logits").astype(np.float32),
        "step_seconds": out.pop("step_seconds"),
        "package_version": detected,
        "wkv_axes": PACKAGE_WKV_AXES.get(version),
    }
    if want_states:
        result["state"] = {k[len("state.") :]: v.astype(np.float32) for k, v in out.items() if k.startswith("state.")}
    return result


def _child_env(version: str, variant: str, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(
            threads
        )  # before torch starts its pools; spinning extra threads on a busy CPU costs ms
    for k in ("RWKV_V7_ON", "RWKV_DE_VERSION", "RWKV_DML_ON"):
        env.pop(k, None)
    if version == "7":
        env["RWKV_V7_ON"] = "1"
    if variant == "deepembed":
        env["RWKV_DE_VERSION"] = "1"
    env["RWKV_JIT_ON"] = "1"
    env["RWKV_CUDA_ON"] = "0"  # never compile CUDA kernels for a CPU reference
    env["RWKV_RESCALE_LAYER"] = "0"  # no fp16 halving of x every few layers
    return env


def _package_reads_heads(keys: list[str], version: str) -> bool:
    """Whether the package, which detects the version while iterating keys, learns n_head from this key order.

    It takes n_head from `time_decay` (5.x) only once it has seen an `ln_x` key, and from `time_faaaa` (6) only
    after a `time_maa` key; the official order puts time_decay before ln_x inside a block, so a single-layer
    RWKV-5.x file in official order fails to load (and a safetensors file's name order puts time_faaaa first).
    """
    if version not in ("5", "5.1", "5.2", "6"):
        return True
    seen = False
    for k in keys:
        seen = seen or ("ln_x" in k if version != "6" else "time_maa" in k)
        if seen and k.endswith("att.time_decay" if version != "6" else "att.time_faaaa"):
            return True
    return False


def _keys_in_order(src: Path) -> list[str]:
    import torch

    try:  # mmap: only the key list is needed, not gigabytes of tensors
        return list(torch.load(src, map_location="cpu", weights_only=True, mmap=True))
    except Exception:
        return []  # let the copy (or the package) report what is wrong with the file


def _pth_copy(src: Path, dst: Path, extra: dict | None = None) -> Path:
    """A .pth the package can read and detect correctly, from a .safetensors file or a .pth in another key order
    (plus the `extra` tensors)."""
    import torch

    try:
        if src.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(src))
        else:
            weights = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # SafetensorError / RuntimeError / UnpicklingError for a bad file
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RWKVEdgeError(f"{src}: not a readable checkpoint for the `rwkv` package ({why})") from None
    weights = {**weights, **(extra or {})}
    # Blocks in layer order; inside a block, the keys that reveal the version (ln_x, gate, time_maa*) first.
    block = re.compile(r"^blocks\.(\d+)\.(.*)$")

    def order(k: str) -> tuple:
        m = block.match(k)
        if not m:
            return (0, 0, 0, k) if k.startswith("emb.") else (2, 0, 0, k)
        reveals = any(s in m.group(2) for s in ("ln_x", "gate", "time_maa"))
        return (1, int(m.group(1)), 0 if reveals else 1, k)

    torch.save({k: weights[k] for k in sorted(weights, key=order)}, dst)
    return dst


# ---------------------------------------------------------------------------------------------------- child side


def _child_main(request_file: str) -> None:
    req = json.loads(Path(request_file).read_text())
    import torch

    if req["threads"]:
        torch.set_num_threads(req["threads"])
    from rwkv.model import RWKV  # RWKV_x070 when RWKV_V7_ON=1

    model = RWKV(req["model"], req["strategy"])
    cuda = req["strategy"].startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # time the GPU's work, not its queueing
    detected = "7" if os.environ.get("RWKV_V7_ON") == "1" else f"{model.version:g}"
    tokens = req["tokens"]
    with torch.no_grad():
        state = None
        for tok in (tokens * req["warmup"])[: req["warmup"]]:
            _, state = model.forward([tok], state)
        logits, seconds, state = [], [], None
        for tok in tokens:
            t0 = time.perf_counter()
            out, state = model.forward([tok], state)
            sync()
            seconds.append(time.perf_counter() - t0)
            logits.append(out.float().cpu().numpy().copy())
    arrays = {"logits": np.stack(logits), "step_seconds": np.asarray(seconds), "package_version": np.asarray(detected)}
    if req["want_states"]:
        names = V4_STATE if req["version"] == "4" else STATE
        per = len(names)  # the package's state list: per layer, one tensor per kind, in this order
        n_layer = len(state) // per
        for j, name in enumerate(names):
            arrays["state." + name] = np.stack([state[i * per + j].float().cpu().numpy() for i in range(n_layer)])
    np.savez(req["out"], **arrays)


if __name__ == "__main__":
    _child_main(sys.argv[1])
