"""The server's Prometheus metrics (GET /metrics), in a registry of its own so that several apps share a process.

The engine's counters and gauges are read from `engine.stats()` at each scrape; time to first token is measured
by the server (from a request's arrival to its first token, tokenizing and queueing included) into a histogram.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# engine.stats() field -> (metric kind, name, help)
_ENGINE_METRICS = {
    "running": ("gauge", "rwkv_requests_running", "Requests holding a row: decoding, or running their prompt."),
    "waiting": ("gauge", "rwkv_requests_waiting", "Requests queued, not started."),
    "batch_size": ("gauge", "rwkv_batch_size", "Rows in the last decode step."),
    "tokens_generated": ("counter", "rwkv_generated_tokens", "Tokens generated."),
    "prompt_tokens": ("counter", "rwkv_prompt_tokens", "Prompt tokens of submitted requests."),
    "cache_hits": ("counter", "rwkv_prompt_cache_hits", "Prompts that started from a cached prefix state."),
    "cache_misses": ("counter", "rwkv_prompt_cache_misses", "Prompts that found no cached prefix state."),
    "cache_bytes": ("gauge", "rwkv_prompt_cache_bytes", "Bytes of the states in the prompt-state cache."),
    "cache_entries": ("gauge", "rwkv_prompt_cache_entries", "Entries in the prompt-state cache."),
    "stored_states": ("gauge", "rwkv_stored_states", "States stored by id (uploaded or returned)."),
    "prefill_chunks": ("counter", "rwkv_prefill_chunks", "Prompt chunks run through the model."),
    "steps": ("counter", "rwkv_decode_steps", "Batched decode steps run."),
}
# seconds: a tiny model answers in milliseconds, a long prompt on a small CPU takes seconds
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _EngineCollector(Collector):
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats()
        for field, (kind, name, documentation) in _ENGINE_METRICS.items():
            value = getattr(stats, field, None)
            if value is None:
                continue
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, documentation, value=float(value))


class ServerMetrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine))
        self.time_to_first_token = Histogram(
            "rwkv_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "rwkv_http_requests",
            "Generation requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
