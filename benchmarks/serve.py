"""Serving speed of `rwkv-export serve`, driven over HTTP like a client would, in one run on the RWKV-7 0.1B shape.

    python benchmarks/serve.py out/v7-01b                       # an export with an int8-rowwise graph
    python benchmarks/serve.py                                  # exports a random 0.1B checkpoint under --work

The server runs as `rwkv-export serve` in a subprocess on 127.0.0.1 (2 ORT threads by default), and the run times:
- streaming completions at 1, 4 and 16 concurrent streams (greedy, a fixed max_tokens, no stop strings), in rounds
  of one wave of 1, 4 and 16 streams sent at once: aggregate tokens/s (a wave's tokens over its wall time, from the
  first request sent to the last stream's end; median over rounds) and p50/p99 inter-token latency (the gaps
  between a stream's events), side by side with 1 stream's; each wave is followed by a wave of the same size through
  an engine in the benchmark's own process, built as the server builds its own, with no HTTP and no client: the
  tokens/s the model calls allow on this machine, the ceiling of the server's;
- time to first token of a chat request behind a 2,000-token system prompt, cold (a system prompt never seen) and
  cached (the same system prompt, another question: the prompt-state cache holds its prefix), alternating;
- a bounded load test: 64 streaming requests, 16 at a time, a quarter of them closed mid-stream: every request must
  complete or get a clean error (none hangs), and the server's RSS must come back to within 10% of its idle level.

Targets reported (not asserted): 16 streams >= 6x one stream's tokens/s, p50 ITL at 16 <= 3x one stream's, cached
TTFT <= 1/20 of cold. The load test's conditions are checked: the script exits 1 when one fails (after writing the
results). Writes benchmarks/results/serve.json and serve.md. Random weights: speed only. The client runs on the
server's machine (its timestamps are the latencies); on a shared machine the ratios between rows of one run are the
numbers to quote. Its own work takes cores from the server, 16 times over at 16 streams, so the streams are read with
aiohttp (a C HTTP parser: a third of httpx's CPU per event here), and each level reports the client's CPU per wave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx  # the control requests (health, metrics), outside the timed streams
import numpy as np
from results_files import write_results  # benchmarks/ is on sys.path when this file runs as a script
from rich.table import Table

from rwkv_edge.measure.bench import machine
from rwkv_edge.runtime.manifest import load_manifest
from rwkv_edge.runtime.tokenizer import load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = ("7", 12, 768, 64, 65536)  # RWKV-7 0.1B: version, n_layer, n_embd, head_size, vocab
LEVELS = (1, 4, 16)
SYSTEM_TOKENS = 2000
LOAD_REQUESTS, LOAD_AT_ONCE, LOAD_CANCEL_EVERY, CANCEL_AFTER_EVENTS = 64, 16, 4, 4
REQUEST_TIMEOUT_S = 300.0  # a request slower than this counts as hung
STARTUP_TIMEOUT_S = 600.0
IDLE_RSS_TOLERANCE = 0.10
TARGETS = {"tokens_s_16_vs_1": 6.0, "itl_p50_16_vs_1": 3.0, "ttft_cached_vs_cold": 1 / 20}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the export ---------------------------------------------------------------------------------------------------
def prepare_export(work: Path, precision: str) -> Path:
    """A random-weight checkpoint of the 0.1B shape, exported with its prefill graph and the World tokenizer, and
    quantized to `precision` (kept under `work` for the next run)."""
    from rwkv_edge.exporter.pipeline import export_checkpoint
    from rwkv_edge.exporter.random_checkpoint import make_checkpoint, save_checkpoint

    out = work / "v7-0.1b-onnx"
    if not (out / "rwkv.json").exists():
        ck = work / "v7-0.1b.pth"
        if not ck.exists():
            save_checkpoint(make_checkpoint(*SHAPE), ck)
        log("export: RWKV-7 0.1B shape, random weights (step + prefill graphs)")
        export_checkpoint(ck, out, tokenizer="world", prefill="last", overwrite=True)
    if precision != "fp32" and precision not in {g.precision for g in load_manifest(out).graphs}:
        from rwkv_edge.quant.pipeline import quantize_export

        log(f"quantize: {precision}")
        quantize_export(out, precision)
    return out


# --- the server ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    pid: int


@contextmanager
def running_server(export_dir: Path, precision: str, threads: int, log_path: Path, extra: list[str]):
    """`rwkv-export serve` in a subprocess on a free 127.0.0.1 port, up once /health answers; stopped with SIGINT
    (then SIGKILL after 30 s) whatever happens."""
    port = free_port()
    command = [sys.executable, "-m", "rwkv_edge.cli", "serve", str(export_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--precision", precision, "--threads", str(threads), *extra]
    with open(log_path, "w") as server_log:
        proc = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not answer /health within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield Server(url, proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def engine_metrics(url: str) -> dict[str, float]:
    """The server's rwkv_* Prometheus samples (name -> value), for the idle checks."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10.0).text.splitlines():
        if line.startswith("rwkv_") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def wait_idle(url: str, timeout: float = 60.0) -> dict[str, float]:
    """Poll /metrics until no request is running or waiting; the last sample."""
    deadline = time.monotonic() + timeout
    while True:
        values = engine_metrics(url)
        if values.get("rwkv_requests_running", 0) == 0 and values.get("rwkv_requests_waiting", 0) == 0:
            return values
        if time.monotonic() > deadline:
            raise SystemExit(f"the server was still busy {timeout:.0f} s after the last request: {values}")
        time.sleep(0.2)


# --- one streaming request ------------------------------------------------------------------------------------------
@dataclass
class Stream:
    """What a client saw of one streaming request."""

    sent: float  # perf_counter at send
    events: list[float] = field(default_factory=list)  # arrival of each event that carried text
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False  # the stream ended with data: [DONE]
    status: int | None = None
    error: str | None = None  # an HTTP error or an error event: a clean refusal
    cancelled: bool = False  # closed by this client mid-stream

    @property
    def ttft(self) -> float | None:
        return self.events[0] - self.sent if self.events else None

    @property
    def gaps(self) -> list[float]:
        return list(np.diff(self.events))


def client_session(url: str, connections: int = 64) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


async def stream_request(
    client: aiohttp.ClientSession, path: str, body: dict, cancel_after: int | None = None
) -> Stream:
    """POST a streaming request and read its server-sent events; with `cancel_after`, close the connection after
    that many text events."""
    s = Stream(sent=time.perf_counter())
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.post(path, json=body) as response:
        s.status = response.status
        if response.status != 200:
            s.error = (await response.read()).decode(errors="replace")[:300]
            return s
        async for raw in response.content:  # one line at a time
            if not raw.startswith(b"data: "):
                continue
            data = raw[len(b"data: ") :].strip()
            if data == b"[DONE]":
                s.done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                s.error = json.dumps(chunk["error"])[:300]
                continue
            for choice in chunk.get("choices") or []:
                text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                if text:
                    s.events.append(time.perf_counter())
                s.finish_reason = choice.get("finish_reason") or s.finish_reason
            usage = chunk.get("usage")
            if usage:
                s.completion_tokens = usage.get("completion_tokens")
                s.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cancel_after is not None and len(s.events) >= cancel_after:
                s.cancelled = True
                break  # leaving the block unread closes the connection: the server sees the client go
    return s


# --- the measurements -----------------------------------------------------------------------------------------------
def completion_body(prompt_ids: list[int], max_tokens: int) -> dict:
    return {"prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0}


async def concurrency_levels(url: str, levels, rounds: int, max_tokens: int, prompts, alone=None) -> list[dict]:
    """`rounds` rounds, each a wave of `n` streams sent at once for every n of `levels` in turn (so that the levels
    share the machine's moods: their ratios are the numbers to quote), each stream on a prompt of its own from
    `prompts(n)`: per level, aggregate tokens/s (median over its waves) and the inter-token gaps of every stream.
    With `alone` (engine_alone's wave), each HTTP wave is followed by a wave of the same size through it."""
    waves = {
        n: {"rates": [], "gaps": [], "tokens": [], "short": 0, "walls": [], "client_cpu": [], "alone": []}
        for n in levels
    }
    async with client_session(url) as c:
        for _ in range(rounds):
            for streams in levels:
                start, cpu = time.perf_counter(), time.process_time()
                results = await asyncio.gather(
                    *(stream_request(c, "/v1/completions", completion_body(p, max_tokens)) for p in prompts(streams))
                )
                wall = time.perf_counter() - start
                level = waves[streams]
                level["walls"].append(wall)
                level["client_cpu"].append(time.process_time() - cpu)
                bad = [r for r in results if r.error or not r.done]
                if bad:
                    raise SystemExit(f"{len(bad)} of {streams} streams failed: {bad[0].error or 'no [DONE]'}")
                n = [r.completion_tokens or len(r.events) for r in results]
                level["short"] += sum(1 for r in results if r.finish_reason != "length")
                level["rates"].append(sum(n) / wall)
                level["tokens"] += n
                for r in results:
                    level["gaps"] += r.gaps
                if alone is not None:
                    level["alone"].append(await asyncio.to_thread(alone, prompts(streams), max_tokens))
    out = []
    for streams, level in waves.items():
        ms = np.array(level["gaps"]) * 1e3
        out.append(
            {
                "streams": streams,
                "tokens_s": float(np.median(level["rates"])),
                "tokens_s_rounds": [round(r, 1) for r in level["rates"]],
                "itl_p50_ms": float(np.percentile(ms, 50)),
                "itl_p99_ms": float(np.percentile(ms, 99)),
                "tokens_per_stream": float(np.mean(level["tokens"])),
                "streams_stopped_early": level["short"],
                "client_cpu_s_per_wave": float(np.median(level["client_cpu"])),
                "wall_s_per_wave": float(np.median(level["walls"])),
                "engine_alone_tokens_s": float(np.median(level["alone"])) if level["alone"] else None,
                "engine_alone_tokens_s_rounds": [round(r, 1) for r in level["alone"]],
            }
        )
    return out


@contextmanager
def engine_alone(export_dir: Path, precision: str, threads: int):
    """wave(prompts, max_tokens) -> tokens/s: the same greedy requests submitted at once to an engine in this
    process, built as `rwkv-export serve` builds its own (serve/server.py), with no HTTP and no client: the tokens/s
    that the model calls and the engine allow on this machine, which bound the server's."""
    from rwkv_edge.runtime.engine import Request
    from rwkv_edge.runtime.sampling import SamplingParams
    from rwkv_edge.serve.server import ServeOptions, open_engine

    engine = open_engine(ServeOptions(export_dir, precision=precision, threads=threads), announce=log)
    greedy = SamplingParams(temperature=0.0)

    def wave(prompts: list[list[int]], max_tokens: int) -> float:
        start = time.perf_counter()
        handles = [engine.submit(Request(prompt_ids=p, max_tokens=max_tokens, sampling=greedy)) for p in prompts]
        tokens = sum(h.result(REQUEST_TIMEOUT_S).completion_tokens for h in handles)
        return tokens / (time.perf_counter() - start)

    with engine:  # started here, shut down after
        yield wave


def system_prompt(tokenizer, tokens: int, seed: int) -> str:
    """Plain words that tokenize to about `tokens` tokens; `seed` picks the words, so two seeds share no prefix."""
    rng = np.random.default_rng(seed)
    words = "river morning garden letter window silver quiet travel market winter story mountain paper".split()
    text = f"Note {seed}:"
    while len(tokenizer.encode(text)) < tokens:
        text += " " + " ".join(rng.choice(words, size=50))
    return text


async def first_token(url: str, system: str, question: str) -> Stream:
    body = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
    }
    async with client_session(url) as c:
        s = await stream_request(c, "/v1/chat/completions", body)
    if s.error or s.ttft is None:
        raise SystemExit(f"chat request failed: {s.error or 'no text'}")
    return s


async def time_to_first_token(url: str, tokenizer, runs: int) -> dict:
    """Cold: each run behind a system prompt of its own (no cached prefix); cached: the same system prompt as the
    first cold run, a new question each time. Cold and cached runs alternate, so that both share the machine's
    moods."""
    cold, cached, cached_tokens = [], [], []
    systems = [system_prompt(tokenizer, SYSTEM_TOKENS, seed) for seed in range(runs)]
    for i, system in enumerate(systems):
        cold.append((await first_token(url, system, f"Question {i}: what is the note about?")).ttft)
        s = await first_token(url, systems[0], f"Another question {i}: which word comes first?")
        cached.append(s.ttft)
        cached_tokens.append(s.cached_tokens)
    return {
        "system_prompt_tokens": len(tokenizer.encode(systems[0])),
        "cold_ms": float(np.median(cold) * 1e3),
        "cached_ms": float(np.median(cached) * 1e3),
        "cold_runs_ms": [round(t * 1e3, 1) for t in cold],
        "cached_runs_ms": [round(t * 1e3, 1) for t in cached],
        "cached_tokens": cached_tokens,
    }


async def load_test(url: str, max_tokens: int, prompts: list[list[int]]) -> dict:
    """LOAD_REQUESTS streaming requests, LOAD_AT_ONCE at a time, every LOAD_CANCEL_EVERY-th closed after
    CANCEL_AFTER_EVENTS events. Each request is bounded by REQUEST_TIMEOUT_S: past it, it counts as hung."""
    gate = asyncio.Semaphore(LOAD_AT_ONCE)
    outcome: dict[str, int] = {"completed": 0, "cancelled": 0, "clean_error": 0, "broken": 0, "hung": 0}
    problems: list[str] = []

    async def one(c: aiohttp.ClientSession, i: int) -> None:
        cancel = CANCEL_AFTER_EVENTS if i % LOAD_CANCEL_EVERY == LOAD_CANCEL_EVERY - 1 else None
        async with gate:
            try:
                body = completion_body(prompts[i % len(prompts)], max_tokens)
                s = await asyncio.wait_for(stream_request(c, "/v1/completions", body, cancel), REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                outcome["hung"] += 1
                return
            except aiohttp.ClientError as e:  # a connection the server dropped: not a clean answer
                outcome["broken"] += 1
                problems.append(f"request {i}: {type(e).__name__}: {e}")
                return
        if s.cancelled:
            outcome["cancelled"] += 1
        elif s.error is not None and s.status is not None:
            outcome["clean_error"] += 1
            problems.append(f"request {i}: HTTP {s.status}: {s.error}")
        elif s.done and s.finish_reason is not None:
            outcome["completed"] += 1
        else:
            outcome["broken"] += 1
            problems.append(f"request {i}: the stream ended without [DONE] or a finish reason")

    start = time.perf_counter()
    async with client_session(url, LOAD_AT_ONCE * 2) as c:
        await asyncio.gather(*(one(c, i) for i in range(LOAD_REQUESTS)))
    return {**outcome, "wall_s": time.perf_counter() - start, "problems": problems[:10]}


# --- the report ---------------------------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def streams_table(levels: list[dict]) -> Table:
    one = levels[0]
    t = Table(title="streaming completions (greedy, no stop strings): aggregate tokens/s and inter-token latency")
    columns = ("streams", "tokens/s", "x 1 stream", "ITL p50 ms", "x 1 stream", "ITL p99 ms", "x 1 stream")
    for name in columns + ("client CPU s / wave s", "engine alone tokens/s", "x 1 stream"):
        t.add_column(name, justify="right")
    for lv in levels:
        alone = lv["engine_alone_tokens_s"]
        t.add_row(
            str(lv["streams"]),
            f"{lv['tokens_s']:.1f}",
            f"{ratio(lv['tokens_s'], one['tokens_s']):.2f}",
            f"{lv['itl_p50_ms']:.1f}",
            f"{ratio(lv['itl_p50_ms'], one['itl_p50_ms']):.2f}",
            f"{lv['itl_p99_ms']:.1f}",
            f"{ratio(lv['itl_p99_ms'], one['itl_p99_ms']):.2f}",
            f"{lv['client_cpu_s_per_wave']:.2f} / {lv['wall_s_per_wave']:.2f}",
            "-" if alone is None else f"{alone:.1f}",
            "-" if alone is None else f"{ratio(alone, one['engine_alone_tokens_s']):.2f}",
        )
    return t


def ttft_table(ttft: dict) -> Table:
    t = Table(title=f"time to first token behind a {ttft['system_prompt_tokens']}-token system prompt (chat)")
    for name in ("", "ms (median)", "runs ms", "x cold"):
        t.add_column(name, justify="right")
    t.add_row("cold", f"{ttft['cold_ms']:.1f}", " ".join(map(str, ttft["cold_runs_ms"])), "1.00")
    t.add_row(
        "cached",
        f"{ttft['cached_ms']:.1f}",
        " ".join(map(str, ttft["cached_runs_ms"])),
        f"{ratio(ttft['cached_ms'], ttft['cold_ms']):.3f}",
    )
    return t


def load_table(load: dict) -> Table:
    t = Table(
        title=f"load test: {LOAD_REQUESTS} streaming requests, {LOAD_AT_ONCE} at a time, a quarter closed mid-stream"
    )
    for name in (
        "completed",
        "cancelled",
        "clean error",
        "broken",
        "hung",
        "wall s",
        "RSS idle MiB",
        "RSS after MiB",
        "change",
        "cache MiB idle / after",
    ):
        t.add_column(name, justify="right")
    t.add_row(
        *(str(load[k]) for k in ("completed", "cancelled", "clean_error", "broken", "hung")),
        f"{load['wall_s']:.1f}",
        f"{load['rss_idle'] / 2**20:.0f}",
        f"{load['rss_after'] / 2**20:.0f}",
        f"{load['rss_change']:+.1%}",
        f"{load['cache_bytes_idle'] / 2**20:.0f} / {load['cache_bytes_after'] / 2**20:.0f}",
    )
    return t


def load_problems(load: dict) -> list[str]:
    """The load test's conditions that failed, in words."""
    problems = []
    if load["hung"] or load["broken"]:
        problems.append(f"{load['hung']} requests hung and {load['broken']} ended without a clean answer")
    if not load["rss_within_tolerance"]:
        problems.append(
            f"RSS changed by {load['rss_change']:+.1%} over the load test (tolerance {IDLE_RSS_TOLERANCE:.0%})"
        )
    return problems


def targets(levels: list[dict], ttft: dict) -> dict:
    one, top = levels[0], levels[-1]
    measured = {
        "tokens_s_16_vs_1": ratio(top["tokens_s"], one["tokens_s"]),
        "itl_p50_16_vs_1": ratio(top["itl_p50_ms"], one["itl_p50_ms"]),
        "ttft_cached_vs_cold": ratio(ttft["cached_ms"], ttft["cold_ms"]),
    }
    met = {
        "tokens_s_16_vs_1": measured["tokens_s_16_vs_1"] >= TARGETS["tokens_s_16_vs_1"],
        "itl_p50_16_vs_1": measured["itl_p50_16_vs_1"] <= TARGETS["itl_p50_16_vs_1"],
        "ttft_cached_vs_cold": measured["ttft_cached_vs_cold"] <= TARGETS["ttft_cached_vs_cold"],
    }
    return {k: {"measured": round(v, 3), "target": round(TARGETS[k], 3), "met": met[k]} for k, v in measured.items()}


def targets_table(result: dict) -> Table:
    t = Table(title="targets (reported, not asserted)")
    for name in ("", "measured", "target", "met"):
        t.add_column(name, justify="right")
    words = {
        "tokens_s_16_vs_1": ("16 streams' tokens/s / 1 stream's", ">="),
        "itl_p50_16_vs_1": ("ITL p50 at 16 / at 1", "<="),
        "ttft_cached_vs_cold": ("cached TTFT / cold TTFT", "<="),
    }
    for key, (label, sense) in words.items():
        r = result[key]
        t.add_row(label, f"{r['measured']:.3f}", f"{sense} {r['target']:.3f}", "yes" if r["met"] else "no")
    return t


# --- the run ------------------------------------------------------------------------------------------------------
async def measure(server: Server, export_dir: Path, tokenizer, vocab: int, args) -> dict:
    rng = np.random.default_rng(0)

    def prompts(n: int, length: int = 16) -> list[list[int]]:  # random ids: no two requests share a prefix
        return [[int(t) for t in rng.integers(1, vocab, size=length)] for _ in range(n)]

    with engine_alone(export_dir, args.precision, args.threads) as alone:
        log("warm-up")
        await concurrency_levels(server.url, [4], 1, 8, prompts, alone)
        log(
            f"{', '.join(map(str, LEVELS))} concurrent streams over HTTP, each wave then through the engine alone, "
            f"{args.rounds} rounds"
        )
        levels = await concurrency_levels(server.url, LEVELS, args.rounds, args.max_tokens, prompts, alone)
    log("time to first token")
    ttft = await time_to_first_token(server.url, tokenizer, args.ttft_runs)
    # The load test's prompts run once first, so that the cache entries they add exist at the idle reading: any
    # growth after the load is then memory the server kept, not a cache filling up to its bound.
    load_prompts = prompts(4, 24)
    async with client_session(server.url) as c:
        for p in load_prompts:
            await stream_request(c, "/v1/completions", completion_body(p, args.max_tokens))
    idle_metrics = wait_idle(server.url)
    rss_idle = rss_bytes(server.pid)
    log(f"load test ({LOAD_REQUESTS} requests)")
    load = await load_test(server.url, args.max_tokens, load_prompts)
    after_metrics = wait_idle(server.url)
    time.sleep(1.0)
    load["rss_idle"], load["rss_after"] = rss_idle, rss_bytes(server.pid)
    load["rss_change"] = load["rss_after"] / rss_idle - 1
    load["rss_within_tolerance"] = abs(load["rss_change"]) <= IDLE_RSS_TOLERANCE
    load["none_hung_or_broken"] = load["hung"] == 0 and load["broken"] == 0
    load["cache_bytes_idle"] = idle_metrics.get("rwkv_prompt_cache_bytes")
    load["cache_bytes_after"] = after_metrics.get("rwkv_prompt_cache_bytes")
    return {"levels": levels, "ttft": ttft, "load": load}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", nargs="?", type=Path, help="export directory; default: a random 0.1B export in --work")
    p.add_argument("--precision", default="int8-rowwise", help="the serve default for batches (docs/serving.md)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    p.add_argument("--rounds", type=int, default=5, help="rounds of one wave per concurrency level")
    p.add_argument("--ttft-runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rwkv-serve-bench")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--server-arg", action="append", default=[], help="one more argument for rwkv-export serve")
    args = p.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    export_dir = args.export_dir or prepare_export(args.work, args.precision)
    manifest = load_manifest(export_dir)
    tokenizer = load_tokenizer(manifest.tokenizer, export_dir)
    load_before = os.getloadavg()
    with running_server(export_dir, args.precision, args.threads, args.work / "server.log", args.server_arg) as server:
        result = asyncio.run(measure(server, export_dir, tokenizer, manifest.architecture.vocab_size, args))
    result["targets"] = targets(result["levels"], result["ttft"])
    a = manifest.architecture
    result["setup"] = {
        "model": f"RWKV-{a.version} L{a.n_layer} C{a.n_embd} vocab {a.vocab_size} ({manifest.tokenizer.kind})",
        "precision": args.precision,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(args.threads),
    }
    tables = [streams_table(result["levels"]), ttft_table(result["ttft"]), load_table(result["load"])]
    tables.append(targets_table(result["targets"]))
    setup = result["setup"]
    header = (
        f"# Serving benchmark\n\n`python benchmarks/serve.py EXPORT`: {setup['model']}, {setup['precision']}, "
        f"{setup['threads']} threads, {setup['max_tokens']} tokens per stream; load average before/after "
        f"{setup['load_average_before']} / {setup['load_average_after']} (a shared machine: ratios are the numbers "
        "to quote).\n\n"
    )
    write_results(args.results, "serve", result, header, tables)
    problems = load_problems(result["load"])
    for problem in problems:
        log(f"load test failed: {problem}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
