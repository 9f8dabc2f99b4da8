"""rwkv_edge.runtime: run exported RWKV models with ONNX Runtime (numpy + onnxruntime only, no torch)."""

from .engine import (
    Completion,
    Engine,
    EngineConfig,
    EngineStats,
    Event,
    PromptTooLong,
    QueueFull,
    Request,
    RequestHandle,
)
from .errors import RWKVEdgeError, ValidationFailed
from .generate import Generation, StopStringFilter, generate
from .manifest import Manifest, load_manifest
from .sampling import Sampler, SamplingParams
from .session import RWKVModel, resolve_provider
from .state import State
from .tokenizer import Tokenizer, load_tokenizer
from .utf8 import Utf8Stream

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Event",
    "Generation",
    "Manifest",
    "PromptTooLong",
    "QueueFull",
    "RWKVEdgeError",
    "RWKVModel",
    "Request",
    "RequestHandle",
    "Sampler",
    "SamplingParams",
    "State",
    "StopStringFilter",
    "Tokenizer",
    "Utf8Stream",
    "ValidationFailed",
    "generate",
    "load_manifest",
    "load_tokenizer",
    "resolve_provider",
]
