"""The serving engine: many requests decoded together on one model by one thread (continuous batching).

engine = Engine(model, tokenizer, EngineConfig(max_batch=16))
engine.start()
handle = engine.submit(Request(prompt_ids=tokenizer.encode("Hello"), max_tokens=64, stop=("\\n\\n",)))
for event in handle:            # Event("token", text, token_ids) ..., then one Event("done", completion=...)
    print(event.text, end="")

A decode step reads every weight once whatever its batch, so stepping many streams as one batch shares that cost
(how far it pays depends on the kernels: docs/serving.md). Requests come and go at any step. Each loop iteration
starts waiting requests while rows are free, runs one sequence-graph call for prompts (the next chunk of the oldest
request running its prompt, batched with the next chunks of equal length of the others, within
EngineConfig.prefill_tokens: a long prompt never stalls the running streams by more than one call), then one
model.step for every running row. A request whose prompt is done joins at the next step, a finished or cancelled
one leaves at once; the batch state is rebuilt with State.gather (one copy at most) only when its membership
changes.
A request that shares a cached-boundary prefix with one still running its prompt waits until that prefix's state
is cached, so that the prefix is computed once.

A request's output never depends on what else runs. Its prompt runs in chunks aligned to multiples of
model.prefill_chunk from the prompt's start (and cut at its cache points), whatever it is batched with; rows of a
batch never interact (docs/format.md), and a row of a batched call is bit for bit the call alone (fp32, fp16,
int8-rowwise); it samples with its own Sampler and seed. The int8-dynamic scheme breaks this (one activation scale
per call for the whole batch) and is refused unless max_batch == 1; weight-only int8 (MatMulNBits) computes one
row otherwise than several on some CPUs, so it is probed at start and refused for batches where it does.
int8-rowwise is the fast int8 for batches. Prompt states are cached at the chunk boundaries
(runtime/prompt_cache.py), so a cache hit resumes exactly the computation of a cold run.

The loop thread is the only one that touches the model and the batch; submit, cancel, stats and the state store are
safe from any thread. Events go to the request's on_event callback (called on the loop thread: it must be quick; an
exception in it cancels that request only) or, without one, to a queue the handle iterates. An exception in a model
call fails the requests of that call with an error event; the loop serves the others.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .errors import RWKVEdgeError
from .generate import TextStream, decodable_logits, greedy_token_ids
from .prompt_cache import INITIAL_ORIGIN, CachedPrefix, PromptCache, StateStore, prefix_keys, prompt_boundaries
from .sampling import Sampler, SamplingParams
from .state import State
from .tokenizer import Tokenizer

MB = 1 << 20
RECENT_TTFT = 1024  # time-to-first-token values EngineStats keeps


class QueueFull(RWKVEdgeError):
    """EngineConfig.max_waiting requests already wait; the caller may retry later (HTTP 429)."""


class BatchedRowsDiffer(RWKVEdgeError):
    """The model computes a row of a batch otherwise than the row alone (rows_match_alone): max_batch must be 1."""


class PromptTooLong(RWKVEdgeError):
    """The prompt has more tokens than EngineConfig.max_prompt_tokens."""


def _whole(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise RWKVEdgeError(f"{name} must be a whole number >= {low}, found {value!r}")
    return int(value)


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 16  # rows stepped together
    max_waiting: int = 64  # queued (not yet started) requests; more -> QueueFull
    state_cache_mb: float = 256.0  # prompt-state cache budget (LRU, bytes of its arrays); 0 disables the cache
    max_prompt_tokens: int = 8192  # submit() raises PromptTooLong beyond
    stored_states_mb: float = 256.0  # states stored by id (put_state, return_state), LRU
    # prompt tokens one loop iteration runs at most, over the chunks of equal length it batches (at least one chunk):
    # bounds how long the running streams wait for prompts
    prefill_tokens: int = 256

    def __post_init__(self) -> None:
        _whole(self.max_batch, "max_batch", 1)
        _whole(self.prefill_tokens, "prefill_tokens", 1)
        _whole(self.max_waiting, "max_waiting", 0)
        _whole(self.max_prompt_tokens, "max_prompt_tokens", 1)
        for name in ("state_cache_mb", "stored_states_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise RWKVEdgeError(f"{name} must be a number of MB >= 0, found {value!r}")


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]  # at least one token
    max_tokens: int = 256  # tokens to generate at most; 0: only run the prompt (e.g. with return_state)
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: never emitted, finish_reason "stop"
    stop_token_ids: tuple[int, ...] = ()  # e.g. 0 (World's end of text); finish_reason "stop"
    state_id: str | None = None  # start from a stored state (put_state or an earlier return_state)
    return_state: bool = False  # store the final state; Completion.state_id names it
    # prompt positions (e.g. the end of each chat message) where the prompt is cut into chunks and its state
    # cached too, so that the next turn or another question after the same system prompt resumes right there
    cache_points: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        ids = self.prompt_ids
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__") or len(ids) == 0:
            raise RWKVEdgeError(f"prompt_ids must be a non-empty list of token ids, found {ids!r}")
        object.__setattr__(self, "prompt_ids", [_whole(t, "a prompt token id", 0) for t in ids])
        _whole(self.max_tokens, "max_tokens", 0)
        if not isinstance(self.sampling, SamplingParams):
            raise RWKVEdgeError(f"sampling must be a SamplingParams, found {type(self.sampling).__name__}")
        if self.seed is not None:
            _whole(self.seed, "seed", 0)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise RWKVEdgeError(f"stop strings must be non-empty text, found {s!r}")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(_whole(t, "a stop token id", 0) for t in self.stop_token_ids))
        object.__setattr__(self, "cache_points", tuple(_whole(p, "a cache point", 0) for p in self.cache_points))
        if self.state_id is not None and not isinstance(self.state_id, str):
            raise RWKVEdgeError(f"state_id must be a string, found {self.state_id!r}")


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # every generated token, a stop token's and those of a cut stop string included
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens the prompt cache skipped
    time_to_first_token_s: float | None  # from submit to the first token; None if none was generated
    state_id: str | None  # the stored final state (return_state): it has consumed the prompt and token_ids


@dataclass(frozen=True)
class Event:
    kind: str  # "token", then one "done" or "error"
    text: str = ""  # token: the text delta (whole characters; held-back text comes with a later event)
    token_ids: list[int] = field(default_factory=list)  # token: the ids generated since the previous event
    completion: Completion | None = None  # done
    message: str | None = None  # error: one line


@dataclass(frozen=True)
class EngineStats:
    running: int  # requests holding a row: in the batch or running their prompt
    waiting: int  # queued, not started
    batch_size: int  # rows of the last step
    tokens_generated: int  # total
    prompt_tokens: int  # total prompt tokens of started requests, cached ones included
    prefill_chunks: int  # prompt chunks run through the model (a cache hit skips some)
    cache_hits: int
    cache_misses: int
    cache_bytes: int
    cache_entries: int
    stored_states: int
    steps: int  # batched decode steps
    time_to_first_token_s: list[float]  # recent values, oldest first


class RequestHandle:
    """A submitted request: iterate its events (when submitted without on_event), cancel it, wait for its result."""

    def __init__(self, engine: "Engine", request: Request, on_event: Callable[[Event], None] | None):
        self.request = request
        self._engine = engine
        self._on_event = on_event
        self._events: queue.SimpleQueue | None = queue.SimpleQueue() if on_event is None else None
        self._finished = threading.Event()
        self._completion: Completion | None = None
        self._error: str | None = None
        self.cancel_requested = False

    def cancel(self) -> None:
        """Stop the request: its row leaves the batch before the next step; finish_reason "cancelled"."""
        self.cancel_requested = True
        self._engine._wake()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def __iter__(self) -> Iterator[Event]:
        if self._events is None:
            raise RWKVEdgeError("this request sends its events to its on_event callback; it cannot be iterated")
        while True:
            event = self._events.get()
            yield event
            if event.kind != "token":
                return

    def result(self, timeout: float | None = None) -> Completion:
        """The completion, once the request is done; raises RWKVEdgeError with the message of an error event."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise RWKVEdgeError(self._error)
        return self._completion

    def _deliver(self, event: Event) -> bool:
        """Hand an event on; False when the callback raised. Nothing follows the final event."""
        if self._finished.is_set():
            return True
        if event.kind == "done":
            self._completion = event.completion
        elif event.kind == "error":
            self._error = event.message
        ok = True
        if self._on_event is None:
            self._events.put(event)
        else:
            try:
                self._on_event(event)
            except Exception:  # the callback is the app's: it must not reach the loop
                ok = False
        if event.kind != "token":
            self._finished.set()
        return ok


class _Job:
    """A request's progress on the loop thread."""

    def __init__(self, request: Request, handle: RequestHandle, sampler: Sampler, text: TextStream, submitted: float):
        self.request, self.handle, self.sampler, self.text = request, handle, sampler, text
        self.submitted = submitted
        self.prompt = np.asarray(request.prompt_ids, dtype=np.int64)
        self.greedy = request.sampling.temperature == 0 and not request.sampling.penalizes  # one shared argmax
        self.origin = request.state_id or INITIAL_ORIGIN
        self.keys: dict[int, bytes] = {}  # prompt-cache keys by prefix length
        self.boundaries: list[int] = []  # where the prompt is cut into chunks (prompt_boundaries)
        # until it joins the batch: the state whose row `state_row` is its own (several jobs share the state of one
        # prompt call until their calls part); None: the initial state, before its first prompt call
        self.state: State | None = None
        self.state_row = 0
        self.position = 0  # prompt tokens in `state`
        self.cached_tokens = 0
        self.row: int | None = None  # its row of the batch state
        self.tokens: list[int] = []
        self.unsent: list[int] = []  # generated since the last event
        self.parts: list[str] = []  # the text sent
        self.pending: int | None = None  # sampled, to be fed at the next step
        self.finish_reason: str | None = None
        self.closing = False  # finished; the next step only feeds its last token, for the returned state
        self.ttft: float | None = None


def _one_line(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if isinstance(error, RWKVEdgeError) else f"{type(error).__name__}: {text}"


def rows_share_activation_scales(model) -> bool:
    """Whether the model's decode graph is the int8-dynamic scheme (MatMulInteger with one activation scale per
    call): its batch rows then change each other. Read from the manifest: the graph's precision or its `needs`
    list, or for older manifests the quantization record in `source`."""
    graph = model.decode_graph
    if graph.precision == "int8-dynamic":
        return True
    ops = _needed_ops(graph)
    if ops is not None:
        return "MatMulInteger" in ops  # not int8-rowwise's MatMulIntegerToFloat
    record = model.manifest.source.get("quantization", {}).get(graph.file, {})
    return isinstance(record, dict) and (record.get("scheme") == "int8-dynamic" or record.get("method") == "dynamic")


def uses_weight_only_kernels(model) -> bool:
    """Whether the decode graph runs MatMulNBits (weight-only int8/int4), whose CPU kernel takes another path for
    one row than for several on some CPUs (with AVX512-VNNI: int8 activations per block when M > 1)."""
    return "MatMulNBits" in (_needed_ops(model.decode_graph) or set())


def _needed_ops(graph) -> set[str] | None:
    """The op names of a graph's `needs` (e.g. "com.microsoft.MatMulNBits:bits=8" -> "MatMulNBits"), None for an
    older manifest without the list."""
    needs = getattr(graph, "needs", None)
    return None if needs is None else {kernel.split(":")[0].split(".")[-1] for kernel in needs}


def rows_match_alone(model) -> bool:
    """Probe: two rows stepped together and fed a 3-token chunk together give, bit for bit, the logits each row gets
    alone. Two short calls per path, at batch 2 and 1."""
    vocab = model.vocab_size
    rows = np.array([[1 % vocab, 2 % vocab, 3 % vocab], [5 % vocab, 4 % vocab, 6 % vocab]], dtype=np.int64)
    together = model.new_state(2)
    fed = model.feed(rows, together).copy()
    stepped = model.step(rows[:, 0], together).copy()
    for i in range(2):
        alone = model.new_state(1)
        if not np.array_equal(model.feed(rows[i : i + 1], alone)[0], fed[i]):
            return False
        if not np.array_equal(model.step(rows[i : i + 1, 0], alone)[0], stepped[i]):
            return False
    return True


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, config: EngineConfig = EngineConfig()):
        if not isinstance(config, EngineConfig):
            raise RWKVEdgeError(f"config must be an EngineConfig, found {type(config).__name__}")
        if config.max_batch > 1 and rows_share_activation_scales(model):
            raise RWKVEdgeError(
                f"{model.decode_graph.file} is int8-dynamic (one activation scale per call for the whole batch), "
                f"so batched rows would change each other's output; serve it with max_batch=1, "
                f"or quantize with the per-row scheme (rwkv-export quantize --scheme int8-rowwise)"
            )
        if config.max_batch > 1 and uses_weight_only_kernels(model) and not rows_match_alone(model):
            raise BatchedRowsDiffer(
                f"{model.decode_graph.file} (MatMulNBits) computes a row of a batch otherwise than the row alone on "
                f"this CPU, so a request's output would depend on the load; serve it with max_batch=1, or quantize "
                f"with the per-row scheme (rwkv-export quantize --scheme int8-rowwise), or serve fp32"
            )
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self._chunk = int(model.prefill_chunk)
        self._cache = PromptCache(int(config.state_cache_mb * MB))
        self._states = StateStore(int(config.stored_states_mb * MB))
        self._cv = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._prefilling: list[_Job] = []  # started, running their prompts, oldest first
        self._rows: list[_Job] = []  # in the batch, or joining it at the next step (row None), in batch order
        self._batch: State | None = None
        self._initial: State | None = None  # one row of the initial state, for prompt calls that mix in fresh rows
        self._membership_changed = False
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._counts = dict(tokens_generated=0, prompt_tokens=0, prefill_chunks=0, steps=0, batch_size=0)
        self._ttft: deque[float] = deque(maxlen=RECENT_TTFT)

    # --- the API -------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        with self._cv:
            if self._thread is not None:
                raise RWKVEdgeError("the engine is already started")
            if self._stopping:
                raise RWKVEdgeError("the engine is shut down; make a new one")
            self._thread = threading.Thread(target=self._loop, name="rwkv-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: Request, on_event: Callable[[Event], None] | None = None) -> RequestHandle:
        """Queue a request; raises PromptTooLong, QueueFull or RWKVEdgeError (bad ids, unknown state_id, engine
        shut down) at once, before anything runs."""
        if not isinstance(request, Request):
            raise RWKVEdgeError(f"submit takes a Request, found {type(request).__name__}")
        n = len(request.prompt_ids)
        if n > self.config.max_prompt_tokens:
            raise PromptTooLong(f"the prompt has {n} tokens; this engine takes at most {self.config.max_prompt_tokens}")
        vocab = self.model.vocab_size
        bad = next((t for t in request.prompt_ids if t >= vocab), None)
        if bad is not None:
            raise RWKVEdgeError(f"prompt token id {bad} is outside the model's vocabulary [0, {vocab})")
        if request.state_id is not None and request.state_id not in self._states:
            raise RWKVEdgeError(f"unknown state_id {request.state_id!r} (never stored, or evicted since)")
        handle = RequestHandle(self, request, on_event)
        sampler = Sampler(request.sampling, 1, vocab, request.seed)
        job = _Job(request, handle, sampler, TextStream(self.tokenizer, request.stop), time.perf_counter())
        with self._cv:
            if not self._accepting:
                raise RWKVEdgeError("the engine is shutting down: it takes no new requests")
            if len(self._waiting) >= self.config.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already (max_waiting); retry later")
            self._waiting.append(job)
            self._cv.notify()
        return handle

    def stats(self) -> EngineStats:
        with self._cv:
            running = len(self._rows) + len(self._prefilling)
            waiting = len(self._waiting)
        c = self._counts
        return EngineStats(
            running=running,
            waiting=waiting,
            batch_size=c["batch_size"],
            tokens_generated=c["tokens_generated"],
            prompt_tokens=c["prompt_tokens"],
            prefill_chunks=c["prefill_chunks"],
            cache_hits=self._cache.hits,
            cache_misses=self._cache.misses,
            cache_bytes=self._cache.bytes,
            cache_entries=self._cache.entries,
            stored_states=len(self._states),
            steps=c["steps"],
            time_to_first_token_s=list(self._ttft),
        )

    def put_state(self, state: State) -> str:
        """Store a batch-1 state of this model (e.g. State.from_bytes of an upload); returns its id."""
        if not isinstance(state, State):
            raise RWKVEdgeError(f"put_state takes a State, found {type(state).__name__}")
        if state.batch != 1:
            raise RWKVEdgeError(f"a stored state holds one sequence; this one has batch {state.batch}")
        state.fits(self.model)
        logits = None if state.logits is None else np.array(state.logits, dtype=np.float32)
        return self._states.put(state.to_numpy(), logits)

    def get_state(self, state_id: str) -> State | None:
        stored = self._states.get(state_id)
        if stored is None:
            return None
        arrays, logits = stored
        state = self.model.state_from_numpy(arrays)
        state.logits = None if logits is None else logits.copy()
        return state

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; drain: finish the running and waiting ones, else cancel them. Joins the thread
        (at most `timeout` s). Requests of an engine that was never started are cancelled."""
        with self._cv:
            self._accepting = False
            self._stopping = True
            thread = self._thread
            if not drain or thread is None:
                for job in self._jobs():
                    job.handle.cancel_requested = True
            self._cv.notify()
        if thread is None:
            self._sweep_cancelled()
        elif thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown(drain=False)

    # --- the loop ------------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def _jobs(self) -> list[_Job]:
        return list(self._waiting) + self._prefilling + self._rows

    def _has_work(self) -> bool:
        return bool(self._waiting or self._prefilling or self._rows)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._has_work() and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._has_work():
                    return
            try:
                self._iteration()
            except Exception as e:  # a fault outside the model calls: fail what is in flight, keep serving
                in_flight = self._prefilling + self._rows
                self._prefilling, self._rows, self._batch = [], [], None
                self._fail(in_flight, e)

    def _iteration(self) -> None:
        self._sweep_cancelled()
        self._admit()
        self._prefill_chunks()
        self._sweep_cancelled()
        self._decode_step()

    def _sweep_cancelled(self) -> None:
        with self._cv:
            cancelled = [job for job in self._waiting if job.handle.cancel_requested]
            if cancelled:
                self._waiting = deque(job for job in self._waiting if not job.handle.cancel_requested)
        gone = [job for job in self._prefilling if job.handle.cancel_requested]
        if gone:
            self._prefilling = [job for job in self._prefilling if not job.handle.cancel_requested]
            cancelled += gone
        leaving = [job for job in self._rows if job.handle.cancel_requested and not job.closing]
        if leaving:
            self._rows = [job for job in self._rows if job not in leaving]
            self._membership_changed = True
        for job in cancelled + leaving:
            self._finish(job, "cancelled")

    # --- prompts -------------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Start waiting requests, oldest first, while rows are free. A request that shares a prompt prefix with
        one already running its prompt waits until that one has passed the prefix, so that it finds the prefix's
        state in the cache instead of computing it again alongside (e.g. many questions behind one system prompt)."""
        held = []
        while True:
            with self._cv:
                if not self._waiting or len(self._rows) + len(self._prefilling) >= self.config.max_batch:
                    break
                job = self._waiting.popleft()
            self._prepare_keys(job)
            if self._behind_a_running_prefix(job):
                held.append(job)
            elif not self._begin(job):
                continue
            elif job.position < len(job.prompt):
                self._prefilling.append(job)
            else:  # the whole prompt was cached
                self._first_token(job)
        if held:
            with self._cv:
                self._waiting.extendleft(reversed(held))

    def _prepare_keys(self, job: _Job) -> None:
        if not job.boundaries:
            job.boundaries = prompt_boundaries(len(job.prompt), self._chunk, job.request.cache_points)
            if self._cache.enabled:
                job.keys = prefix_keys(job.prompt, self._chunk, job.request.cache_points)

    def _behind_a_running_prefix(self, job: _Job) -> bool:
        """Whether a job running its prompt will store a prefix state `job` can use, one it has not stored yet."""
        if not job.keys:
            return False
        for other in self._prefilling:
            if other.origin != job.origin or not other.keys:
                continue
            shared = 0
            for end in job.boundaries:
                if other.keys.get(end) != job.keys[end]:
                    break
                shared = end
            if shared > other.position:
                return True
        return False

    def _prefill_chunks(self) -> None:
        """The next chunk of the oldest job running its prompt, batched with the next chunks of equal length of the
        other such jobs, within config.prefill_tokens: one sequence-graph call."""
        if not self._prefilling:
            return

        def next_end(job: _Job) -> int:
            return next(b for b in job.boundaries if b > job.position)

        length = next_end(self._prefilling[0]) - self._prefilling[0].position
        room = max(1, self.config.prefill_tokens // length)
        group = [job for job in self._prefilling if next_end(job) - job.position == length][:room]
        ids = np.stack([job.prompt[job.position : job.position + length] for job in group])
        try:
            batch = self._prompt_batch(group)
            self.model.feed(ids, batch)
        except Exception as e:
            self._prefilling = [job for job in self._prefilling if job not in group]
            self._fail(group, e)
            return
        self._counts["prefill_chunks"] += len(group)
        for i, job in enumerate(group):
            job.state, job.state_row = batch, i
            job.position += length
            self._remember_prefix(job)
        done = [job for job in group if job.position == len(job.prompt)]
        if done:
            self._prefilling = [job for job in self._prefilling if job not in done]
        for job in done:
            self._first_token(job)

    def _prompt_batch(self, group: list[_Job]) -> State:
        """The state of a prompt call's rows: new for jobs that start from the initial state, else their rows
        gathered (no copy when they are one state's rows in order)."""
        if all(job.state is None for job in group):
            return self.model.new_state(len(group))
        if self._initial is None:
            self._initial = self.model.new_state(1)  # never fed: a source of initial rows
        rows = [(self._initial, 0) if job.state is None else (job.state, job.state_row) for job in group]
        return State.gather(rows)

    def _begin(self, job: _Job) -> bool:
        """The job's starting state: the longest cached prefix of its prompt, else its origin's state."""
        self._counts["prompt_tokens"] += len(job.prompt)
        stored = None
        if job.request.state_id is not None:
            stored = self._states.get(job.request.state_id)
            if stored is None:
                self._fail([job], RWKVEdgeError(f"state_id {job.request.state_id!r} was evicted before it ran"))
                return False
        hit = None  # _admit has prepared the job's boundaries and keys
        if self._cache.enabled:
            hit = self._cache.lookup(job.origin, job.prompt, job.keys)
        if hit is not None:
            job.state = self.model.state_from_numpy(hit.arrays)
            job.state.logits = hit.logits.copy()
            job.position = job.cached_tokens = hit.length
        elif stored is not None:
            job.state = self.model.state_from_numpy(stored[0])
        else:
            job.state = None  # the initial state, made with the first prompt call (for all its fresh rows at once)
        return True

    def _remember_prefix(self, job: _Job) -> None:
        key = job.keys.get(job.position)  # only chunk boundaries and the prompt's end have keys
        if key is None or self._cache.contains(job.origin, job.position, key):
            return
        arrays, logits = self._own_row(job)  # host copies: the state goes on changing
        self._cache.store(job.origin, key, CachedPrefix(job.position, arrays, logits))

    def _own_row(self, job: _Job) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Host copies of the job's own state row and logits [1, vocab] (its state may be shared by a prompt call)."""
        return job.state.row_to_numpy(job.state_row), self._own_logits(job).copy()

    def _own_logits(self, job: _Job) -> np.ndarray:
        return job.state.logits[job.state_row : job.state_row + 1]

    def _first_token(self, job: _Job) -> None:
        """The prompt is done: sample from its logits, then the job joins the batch (or finishes)."""
        if job.request.max_tokens == 0:
            state_id = self._store_state(*self._own_row(job)) if job.request.return_state else None
            job.finish_reason = "length"
            self._finish(job, None, state_id)
            return
        if job.greedy:
            token = int(greedy_token_ids(self._own_logits(job), self.tokenizer)[0])
        else:
            token = int(job.sampler.sample(decodable_logits(self._own_logits(job), self.tokenizer))[0])
        self._accept(job, token)
        self._after_token(job)
        if job.finish_reason is None or job.closing:
            self._rows.append(job)
            self._membership_changed = True

    # --- decoding ------------------------------------------------------------------------------------
    def _decode_step(self) -> None:
        if not self._rows:
            self._batch = None
            return
        if self._membership_changed:
            self._rebuild_batch()
        rows = self._rows
        try:
            logits = self.model.step([job.pending for job in rows], self._batch)
        except Exception as e:
            self._rows, self._batch = [], None
            self._fail(rows, e)
            return
        self._counts["steps"] += 1
        self._counts["batch_size"] = len(rows)
        closing = [i for i, job in enumerate(rows) if job.closing]
        for i in closing:
            self._finish(rows[i], None, self._store_state(self._batch.row_to_numpy(i), logits[i : i + 1]))
        sampling = [i for i, job in enumerate(rows) if not job.closing]
        greedy = [i for i in sampling if rows[i].greedy]
        tokens = {}
        if greedy:
            picks = greedy_token_ids(logits, self.tokenizer)  # every row: cheaper than copying the greedy ones out
            tokens.update((i, int(picks[i])) for i in greedy)
        for i in sampling:
            if i not in tokens:
                tokens[i] = int(rows[i].sampler.sample(decodable_logits(logits[i : i + 1], self.tokenizer))[0])
        for i in sampling:
            self._accept(rows[i], tokens[i])
            self._after_token(rows[i])
        staying = [job for job in rows if job.finish_reason is None or (job.closing and job.pending is not None)]
        if len(staying) != len(rows):
            self._rows = staying
            self._membership_changed = True

    def _rebuild_batch(self) -> None:
        """The batch of the rows in order: kept rows of the last batch and the joining jobs' rows, gathered in one
        copy (none when they are the rows of one state in order: the batch kept as it was, or one prompt call's
        state whose jobs all join)."""
        rows = [(self._batch, job.row) if job.row is not None else (job.state, job.state_row) for job in self._rows]
        self._batch = State.gather(rows)
        for i, job in enumerate(self._rows):
            job.row, job.state, job.state_row = i, None, 0
        self._membership_changed = False

    def _accept(self, job: _Job, token: int) -> None:
        """A sampled token: record it, send the text it completes, decide whether the job is done."""
        request = job.request
        job.tokens.append(token)
        job.unsent.append(token)
        self._counts["tokens_generated"] += 1
        if job.ttft is None:
            job.ttft = time.perf_counter() - job.submitted
            self._ttft.append(job.ttft)
        if token in request.stop_token_ids:
            job.finish_reason = "stop"
            text = job.text.flush()
        else:
            text = job.text.push(token)
            if job.text.stopped:
                job.finish_reason = "stop"
            elif len(job.tokens) >= request.max_tokens:
                job.finish_reason = "length"
                text += job.text.flush()
        if text:
            job.parts.append(text)
            event = Event("token", text=text, token_ids=job.unsent)
            job.unsent = []
            if not job.handle._deliver(event):
                job.handle.cancel_requested = True

    def _after_token(self, job: _Job) -> None:
        """A finished job leaves now, or (return_state) once the next step has fed its last token."""
        token = job.tokens[-1]
        if job.finish_reason is None:
            job.pending = token
        elif job.request.return_state:
            job.pending, job.closing = token, True
        else:
            job.pending = None
            self._finish(job, None)

    def _store_state(self, arrays: dict[str, np.ndarray], logits) -> str | None:
        try:
            return self._states.put(arrays, None if logits is None else np.array(logits, dtype=np.float32))
        except RWKVEdgeError:
            return None  # larger than the whole store: the completion says state_id None

    def _finish(self, job: _Job, reason: str | None, state_id: str | None = None) -> None:
        """Send the job's done event; `reason` overrides its finish reason (cancelled)."""
        if reason is not None:
            job.finish_reason = reason
        job.pending = None
        completion = Completion(
            text="".join(job.parts),
            token_ids=list(job.tokens),
            finish_reason=job.finish_reason,
            prompt_tokens=len(job.prompt),
            completion_tokens=len(job.tokens),
            cached_tokens=job.cached_tokens,
            time_to_first_token_s=job.ttft,
            state_id=state_id,
        )
        job.handle._deliver(Event("done", completion=completion))

    def _fail(self, jobs: list[_Job], error: Exception) -> None:
        message = _one_line(error)
        for job in jobs:
            job.pending = None
            job.handle._deliver(Event("error", message=message))
