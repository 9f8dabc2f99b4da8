"""RWKVModel: an export directory opened with ONNX Runtime, stepped with IO binding.

model = RWKVModel.load("out/", provider="cpu")
state = model.new_state(batch=1)
logits = model.feed(prompt_ids, state)      # [1, vocab], state now holds the prompt
logits = model.step([next_id], state)       # one token per row; state advances in place
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .cuda_graph import NO_GRAPH, CudaGraphSteps, GraphRunFailed, open_step_session, run_options
from .errors import RWKVEdgeError
from .layer_state import per_layer_graph, split_layers, stack_layers, state_input_names, state_output_names
from .manifest import GraphSpec, Manifest, load_manifest
from .optimized_cache import open_cached, resolve_cache_dir
from .state import State, check_state_arrays, initial_arrays, load_initial_values
from .tokenizer import Tokenizer, load_tokenizer

# Short names users type, and the ONNX Runtime provider each means.
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Where OrtValues live for each provider; providers not listed keep the state in host memory.
_DEVICE_OF_PROVIDER = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
_NUMPY_OF_ORT_TYPE = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
DEFAULT_PREFILL_CHUNK = 128  # tokens per sequence-graph call: bounds activation memory on small devices
# On the CPU one session serves prefill and decode: the sequence graph, a step being a chunk of one token (the
# WKV*Seq functions then take a branch without the Scan, see exporter/ops/sequence.py). Each weight feeds one node
# and is packed once; ORT's Python API cannot share packed weights between two sessions (add_initializer shares
# only the unpacked buffers), so a step and a sequence session would hold them twice (docs/performance.md).
# The step graph is opened alone where it must be: no sequence graph of that precision, CUDA graphs (which refuse
# control flow), or load(one_session=False).
# When the step and the sequence graph are both opened on the CPU, the precisions below read their weights
# unpacked from the mapped data file, so as not to hold two packed copies; the costs: a slower decode, and a batch
# row that matches the same sequence alone to rounding instead of bit for bit (M=1 and M>1 products take different
# kernels). MatMulNBits (int8/int4) needs its prepacked layout (far slower without), so quantized graphs keep it.
UNPACKED_PRECISIONS = ("fp32", "fp16")
GRAPH_FORMATS = ("onnx", "ort")  # load(graph_format=...): graphs[].file, or graphs[].ort (ONNX Runtime's ORT format)
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # for a graph opened from bytes


def resolve_provider(name: str) -> str:
    """'cpu' / 'cuda' (any case) or an ONNX Runtime provider name -> the ONNX Runtime name, if it is available."""
    key = str(name).strip()
    ort_name = PROVIDER_ALIASES.get(key.lower())
    if ort_name is None and key in ort.get_all_providers():
        ort_name = key
    if ort_name is None:
        raise RWKVEdgeError(
            f"unknown provider {name!r}; expected one of: {', '.join(PROVIDER_ALIASES)} "
            f"(or an ONNX Runtime name such as CUDAExecutionProvider)"
        )
    available = ort.get_available_providers()
    if ort_name not in available:
        hint = (
            " (install onnxruntime-gpu instead of onnxruntime: pip install 'rwkv-edge[gpu]')"
            if ort_name == "CUDAExecutionProvider"
            else ""
        )
        raise RWKVEdgeError(
            f"provider {name!r} ({ort_name}) is not available in this onnxruntime; "
            f"available: {', '.join(available)}{hint}"
        )
    return ort_name


class _StepBinding:
    """IO bindings of one model with one state: host buffers for ids and logits, and one IOBinding per
    ping-pong parity, so a step only writes the ids and runs."""

    def __init__(self, model: "RWKVModel", state: State):
        graph = model.decode_graph
        chunk = graph.kind == "sequence"  # one token as a [batch, 1] chunk
        ids = np.zeros((state.batch, 1) if chunk else state.batch, dtype=np.int64)
        logits = np.zeros(
            (state.batch, 1, model.vocab_size) if chunk and graph.logits == "all" else (state.batch, model.vocab_size),
            dtype=model.logits_dtype,
        )
        self.ids = ids.reshape(state.batch)  # views: writing self.ids sets the bound input
        self.logits = logits.reshape(state.batch, model.vocab_size)
        ids_value = ort.OrtValue.ortvalue_from_numpy(ids)  # shares the array
        logits_value = ort.OrtValue.ortvalue_from_numpy(logits)  # host memory: the logits come back here
        self.by_parity = []
        for parity in (0, 1):
            binding = model.step_session.io_binding()
            binding.bind_ortvalue_input(graph.input, ids_value)
            binding.bind_ortvalue_output(graph.output, logits_value)
            state.bind(binding, parity)
            self.by_parity.append(binding)


class RWKVModel:
    layer_state = False  # its graphs were opened with one state tensor per layer (runtime/layer_state.py)
    cuda_graph = False  # steps run through runtime/cuda_graph.py's fixed bindings (load(cuda_graph=True))
    cuda_graph_note: str | None = None  # why CUDA graphs were asked for but are not captured, in one line
    _graph_steps: CudaGraphSteps | None = None

    def __init__(
        self,
        manifest: Manifest,
        export_dir: Path,
        step_graph: GraphSpec,
        step_session: ort.InferenceSession,
        sequence_graph: GraphSpec | None,
        sequence_session: ort.InferenceSession | None,
        provider: str,
        device_id: int,
        prefill_chunk: int,
        decode_graph: GraphSpec | None = None,
    ):
        self.manifest = manifest
        self.export_dir = export_dir
        self.step_graph, self.step_session = step_graph, step_session  # step_session: the session step() runs
        self.sequence_graph, self.sequence_session = sequence_graph, sequence_session
        # The graph step() runs: the step graph, or with one session the sequence graph (then step_session is
        # sequence_session, and step_graph names the step graph of this precision that stays unopened).
        self.decode_graph = decode_graph or step_graph
        self.one_session = self.decode_graph.kind == "sequence"
        self.provider = provider  # ONNX Runtime name, e.g. CPUExecutionProvider
        self.device = _DEVICE_OF_PROVIDER.get(provider, "cpu")
        self.device_id = device_id if self.device != "cpu" else 0
        self.prefill_chunk = prefill_chunk
        self.state_specs = list(manifest.state)
        self.vocab_size = manifest.architecture.vocab_size
        out_type = {o.name: o.type for o in step_session.get_outputs()}[self.decode_graph.output]
        self.logits_dtype = _NUMPY_OF_ORT_TYPE.get(out_type, np.float32)
        self.initial_values = load_initial_values(self.state_specs, export_dir)  # state tuning: {name: one row}

    @classmethod
    def load(
        cls,
        export_dir: str | os.PathLike,
        provider: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        *,
        graph_optimizations: bool = True,
        device_id: int = 0,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        use_sequence_graph: bool = True,
        spinning: bool = True,
        cuda_graph: bool = False,
        one_session: bool | None = None,
        optimized_cache: bool | str | os.PathLike | None = None,
        graph_format: str = "onnx",
        layer_state: bool | None = None,
    ) -> "RWKVModel":
        """Open the `precision` graphs of an export directory on `provider`: its sequence graph (if any and
        `use_sequence_graph`) for prompts, and its step graph for decoding (plan_sessions says which sessions).

        `one_session`: decode through the sequence graph too, so one ORT session holds the weights once (see
        UNPACKED_PRECISIONS above for what two sessions cost). None (default): on the CPU without cuda_graph,
        whenever the export has a sequence graph of this precision; False: always open the step graph; True: one
        session on any provider whenever there is a sequence graph (not with cuda_graph).

        `optimized_cache`: True (a folder under ~/.cache) or a folder: save ORT's optimized graphs there for this
        machine and open them with optimizations off next time (faster session creation, for the weights once more
        on disk; see runtime/optimized_cache.py). The same graphs open as without it.

        `spinning`: ORT's worker threads spin between ops (ORT's default) instead of sleeping, so each parallel
        op starts without a wake-up: faster on cores free for the model, the case of a device that runs it. On
        cores shared with other busy work a spinning worker competes with the thread doing the work: turn it off
        there (docs/performance.md).

        `cuda_graph`: with the CUDA provider, capture the step graph as CUDA graphs (one per state and ping-pong
        parity) and replay them; if ONNX Runtime refuses, decode without and say why in `cuda_graph_note`.

        `graph_format`: "onnx" (the graphs' files), or "ort": their ORT-format files (`graphs[].ort`, written by
        `rwkv-export ort`), already optimized, which open the same graphs.

        `layer_state`: open the graphs rewritten with one state tensor per layer, so that a step does not copy the
        whole state to cut and stack it (runtime/layer_state.py; the same outputs bit for bit, and the same State
        API). None (default): on the CPU, for .onnx graphs without optimized_cache, where every opened graph has
        the pattern; True: the same, but an error where it cannot apply; False: the graphs as exported."""
        export_dir = Path(export_dir)
        manifest = load_manifest(export_dir)
        options = LoadOptions(
            threads=threads,
            spinning=spinning,
            graph_optimizations=graph_optimizations,
            provider=resolve_provider(provider),
            device_id=device_id,
            cuda_graph=cuda_graph,
            precision=precision,
            use_sequence_graph=use_sequence_graph,
            one_session=one_session,
            prefill_chunk=prefill_chunk,
            optimized_cache=resolve_cache_dir(optimized_cache),
            graph_format=graph_format,
            layer_state=layer_state,
        )
        return open_plan(plan_sessions(manifest, options), export_dir, manifest, options, cls)

    # --- state ---------------------------------------------------------------------------------------
    def new_state(self, batch: int = 1) -> State:
        """A fresh state: every row starts from the manifest's initial state (its init_file when state-tuned,
        else filled with its init value, e.g. RWKV-4's att_p: -1e38)."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise RWKVEdgeError(f"batch must be a whole number >= 1, found {batch!r}")
        layer_major = self.layer_state and self.device == "cpu"  # made in the layout the state keeps them in
        arrays = initial_arrays(self.state_specs, int(batch), self.initial_values, layer_major=layer_major)
        return State._of_storage(self, arrays, int(batch))

    def state_from_numpy(self, arrays: dict, batch: int | None = None) -> State:
        """A state from host arrays by name (as State.to_numpy gives them); checks names, shapes, dtypes."""
        batch, arrays = check_state_arrays(self.state_specs, arrays, batch)
        return State(self, arrays, batch)

    def load_state(self, path: str | os.PathLike) -> State:
        return State.load(path, self)

    def load_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.manifest.tokenizer, self.export_dir)

    # --- running -------------------------------------------------------------------------------------
    def step(self, tokens, state: State) -> np.ndarray:
        """Feed one token per row; returns float32 logits [batch, vocab] and advances `state` in place."""
        ids = self._token_ids(tokens, state, ndim=1)
        if self._graph_steps is not None:
            return self._graph_step(ids, state)
        binding = self._binding(state)
        binding.ids[:] = ids
        self.step_session.run_with_iobinding(binding.by_parity[state._current])
        state.advance()
        state.logits = binding.logits.astype(np.float32)  # a copy: the buffer is reused next step
        return state.logits

    def feed(self, token_ids, state: State, all_logits: bool = False) -> np.ndarray:
        """Feed a whole prompt: ids [seq] (batch 1) or [batch, seq]. Returns the logits after the last token
        [batch, vocab], or with all_logits those after every token [batch, seq, vocab] (perplexity).

        With a sequence graph in the export it runs in chunks of `prefill_chunk` tokens; otherwise it steps (as it
        also does for all_logits when the sequence graph returns the last position only)."""
        ids = self._token_ids(token_ids, state, ndim=2)
        sequence_all = self.sequence_graph is not None and self.sequence_graph.logits == "all"
        if self.sequence_session is None or (all_logits and not sequence_all):
            every = [self.step(column, state).copy() if all_logits else self.step(column, state) for column in ids.T]
            return np.stack(every, axis=1) if all_logits else state.logits
        chunks = [
            self._run_sequence_chunk(np.ascontiguousarray(ids[:, start : start + self.prefill_chunk]), state)
            for start in range(0, ids.shape[1], self.prefill_chunk)
        ]
        return np.concatenate(chunks, axis=1).astype(np.float32, copy=False) if all_logits else state.logits

    def step_numpy(self, tokens, state_arrays: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step with plain `session.run` and host arrays, no binding: (logits, next state arrays).
        The reference path that the bound one is tested against, and a pattern for apps in other languages."""
        batch, state_arrays = check_state_arrays(self.state_specs, state_arrays)
        ids = self._check_ids(np.asarray(tokens), batch, ndim=1)
        graph = self.decode_graph
        feeds = {graph.input: ids[:, None] if self.one_session else ids}
        feeds |= (
            split_layers(self.state_specs, state_arrays)
            if self.layer_state
            else {s.input: state_arrays[s.name] for s in self.state_specs}
        )
        names = [graph.output] + state_output_names(self.state_specs, self.layer_state)
        logits, *states = self.step_session.run(names, feeds, run_options(NO_GRAPH))  # never captured
        logits = logits.reshape(batch, self.vocab_size).astype(np.float32)
        if self.layer_state:
            return logits, stack_layers(self.state_specs, states)
        return logits, {s.name: v for s, v in zip(self.state_specs, states)}

    def _run_sequence_chunk(self, ids: np.ndarray, state: State) -> np.ndarray:
        # A chunk changes length, so its binding is built per call (once per chunk, not per token).
        state.fits(self)
        every = self.sequence_graph.logits == "all"  # logits [batch, seq, vocab], else [batch, vocab]
        logits = np.zeros((state.batch, *ids.shape[1:2] * every, self.vocab_size), dtype=self.logits_dtype)
        binding = self.sequence_session.io_binding()
        binding.bind_ortvalue_input(self.sequence_graph.input, ort.OrtValue.ortvalue_from_numpy(ids))
        binding.bind_ortvalue_output(self.sequence_graph.output, ort.OrtValue.ortvalue_from_numpy(logits))
        state.bind(binding, state._current)
        self.sequence_session.run_with_iobinding(binding)
        state.advance()
        state.logits = (logits[:, -1] if every else logits).astype(np.float32)
        return logits

    # --- CUDA graphs (runtime/cuda_graph.py) -------------------------------------------------------------
    def _use_cuda_graphs(self, reopen_plain) -> None:
        self.cuda_graph = True
        self._graph_steps = CudaGraphSteps(
            self.step_session,
            self.step_graph.input,
            self.step_graph.output,
            self.state_specs,
            self.vocab_size,
            self.logits_dtype,
            self.device,
            self.device_id,
        )
        self._reopen_plain_step = reopen_plain

    def _graph_step(self, ids: np.ndarray, state: State) -> np.ndarray:
        state.fits(self)
        try:
            logits = self._graph_steps.step(ids, state)
        except GraphRunFailed as e:
            # A capture failed at run time (e.g. an allocation while capturing). The step's inputs are untouched
            # (ping-pong), so reopen the step session without graphs and take the same step again.
            state._bindings.pop(self._graph_steps, None)
            self._graph_steps, self.cuda_graph, self.step_session = None, False, None  # frees the session first
            self.step_session = self._reopen_plain_step()
            self.cuda_graph_note = f"CUDA graphs off, decoding without them: {e}"
            warnings.warn(self.cuda_graph_note, RuntimeWarning, stacklevel=3)
            return self.step(ids, state)
        if self._graph_steps.note and self.cuda_graph_note is None:
            self.cuda_graph_note = self._graph_steps.note
        state.advance()
        state.logits = logits
        return logits

    def _binding(self, state: State) -> _StepBinding:
        if not isinstance(state, State):
            raise RWKVEdgeError(f"expected a State (from model.new_state), found {type(state).__name__}")
        binding = state._bindings.get(self)
        if binding is None:
            state.fits(self)
            binding = state._bindings[self] = _StepBinding(self, state)
        return binding

    def _token_ids(self, tokens, state: State, ndim: int) -> np.ndarray:
        if not isinstance(state, State):
            raise RWKVEdgeError(f"expected a State (from model.new_state), found {type(state).__name__}")
        arr = np.asarray(tokens)
        if ndim == 2 and arr.ndim == 1 and state.batch == 1:
            arr = arr[None, :]  # a plain list of ids is one prompt
        elif ndim == 1 and arr.ndim == 0:
            arr = arr.reshape(1)
        return self._check_ids(arr, state.batch, ndim)

    def _check_ids(self, arr: np.ndarray, batch: int, ndim: int) -> np.ndarray:
        what = "one token id per state row" if ndim == 1 else "token ids shaped [batch, seq]"
        if arr.ndim != ndim or arr.shape[0] != batch or arr.size == 0:
            raise RWKVEdgeError(f"expected {what} for a batch of {batch}, found shape {list(arr.shape)}")
        if arr.dtype.kind not in "iu":
            raise RWKVEdgeError(f"token ids must be integers, found dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise RWKVEdgeError(
                f"token id {int(arr[tuple(where)])} at position {tuple(int(i) for i in where)} "
                f"is outside the vocabulary [0, {self.vocab_size})"
            )
        return arr.astype(np.int64, copy=False)

    def __repr__(self) -> str:
        a = self.manifest.architecture
        return (
            f"RWKVModel(RWKV-{a.version}, n_layer={a.n_layer}, n_embd={a.n_embd}, vocab={a.vocab_size}, "
            f"graph={self.step_graph.file!r}, provider={self.provider!r})"
        )


@dataclass(frozen=True)
class LoadOptions:
    """RWKVModel.load's keywords, grouped; provider and optimized_cache already resolved."""

    # how the sessions run
    threads: int | None = None
    spinning: bool = True
    graph_optimizations: bool = True
    # where
    provider: str = "CPUExecutionProvider"  # ONNX Runtime's name (resolve_provider)
    device_id: int = 0
    cuda_graph: bool = False
    # which graphs
    precision: str = "fp32"
    use_sequence_graph: bool = True
    one_session: bool | None = None  # None: one session on the CPU without cuda_graph
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    # saved optimized graphs (runtime/optimized_cache.py); None: none
    optimized_cache: Path | None = None
    # "onnx": graphs[].file; "ort": graphs[].ort, the ORT-format files of `rwkv-export ort`
    graph_format: str = "onnx"
    layer_state: bool | None = None  # None: where it applies (plan_sessions)


@dataclass(frozen=True)
class SessionPlan:
    """What RWKVModel.load opens, decided from the manifest and the options alone (plan_sessions)."""

    step_graph: GraphSpec  # this precision's step graph; left unopened when the sequence graph decodes
    sequence_graph: GraphSpec | None  # prompts run through it; None: feed() steps
    decode_graph: GraphSpec  # the graph step() runs: step_graph, or sequence_graph in one session
    prepacking: bool  # off where a step and a sequence session would each pack the same weights
    cuda_graph: bool  # the step session is opened for CUDA graphs (runtime/cuda_graph.py)
    providers: tuple  # as handed to ONNX Runtime
    layer_state: bool = False  # open the graphs with one state tensor per layer, if every one has the pattern
    layer_state_required: bool = False  # load(layer_state=True): an error where a graph lacks the pattern

    @property
    def one_session(self) -> bool:
        return self.decode_graph.kind == "sequence"

    @property
    def sessions(self) -> tuple[GraphSpec, ...]:
        """The graphs that get a session, in the order they are opened."""
        if self.one_session:
            return (self.sequence_graph,)
        return (self.step_graph,) + ((self.sequence_graph,) if self.sequence_graph is not None else ())


def plan_sessions(manifest: Manifest, options: LoadOptions) -> SessionPlan:
    """Which graphs get sessions and how, from the manifest and the options; opens nothing. Raises RWKVEdgeError
    for options that do not fit the export or each other."""
    plan = _plan_onnx(manifest, options)
    if options.graph_format not in GRAPH_FORMATS:
        raise RWKVEdgeError(f"graph_format must be one of {', '.join(GRAPH_FORMATS)}, found {options.graph_format!r}")
    refusal = _layer_state_refusal(options)
    if options.layer_state and refusal:
        raise RWKVEdgeError(f"layer_state=True: {refusal}")
    if refusal is None and options.layer_state is not False:
        plan = dataclasses.replace(plan, layer_state=True, layer_state_required=bool(options.layer_state))
    if options.graph_format == "onnx":
        return plan
    if options.optimized_cache is not None:
        raise RWKVEdgeError("optimized_cache saves optimized .onnx graphs; ORT-format graphs are optimized already")
    missing = [g.file for g in plan.sessions if not g.ort]
    if missing:
        raise RWKVEdgeError(
            f"{', '.join(missing)} has no ORT-format file in this export (graphs[].ort); run `rwkv-export ort DIR`"
        )

    def as_ort(g: GraphSpec | None) -> GraphSpec | None:
        return dataclasses.replace(g, file=g.ort) if g is not None and g.ort else g

    return dataclasses.replace(
        plan,
        step_graph=as_ort(plan.step_graph),
        sequence_graph=as_ort(plan.sequence_graph),
        decode_graph=as_ort(plan.decode_graph),
    )


def _layer_state_refusal(options: LoadOptions) -> str | None:
    """Why the graphs cannot be opened with one state tensor per layer (runtime/layer_state.py), or None."""
    if options.provider != "CPUExecutionProvider":
        return "one state tensor per layer is for the CPU provider (the state lives in host arrays)"
    if options.graph_format != "onnx":
        return "ORT-format graphs cannot be rewritten; open the .onnx graphs"
    if options.optimized_cache is not None:
        return "the optimized cache saves the graphs as exported; open them without optimized_cache"
    return None


def _plan_onnx(manifest: Manifest, options: LoadOptions) -> SessionPlan:
    step_graph = manifest.graph("step", options.precision)
    sequence_graph = next(
        (g for g in manifest.graphs if g.kind == "sequence" and g.precision == options.precision), None
    )
    if not options.use_sequence_graph:
        sequence_graph = None
    if options.threads is not None and (int(options.threads) != options.threads or options.threads < 1):
        raise RWKVEdgeError(f"threads must be a whole number >= 1, found {options.threads}")
    if options.prefill_chunk < 1:
        raise RWKVEdgeError(f"prefill_chunk must be >= 1, found {options.prefill_chunk}")
    for spec in manifest.state:
        try:
            np.dtype(spec.dtype)
        except TypeError:
            raise RWKVEdgeError(
                f"rwkv.json: state {spec.name!r} has dtype {spec.dtype!r}; expected a numpy name such as float32"
            ) from None
    if options.one_session and options.cuda_graph:
        raise RWKVEdgeError(
            "cuda_graph captures the step graph, one_session decodes through the sequence graph: choose one"
        )
    on_cpu = options.provider == "CPUExecutionProvider"
    one_session = options.one_session
    if one_session is None:
        one_session = on_cpu and not options.cuda_graph
    one_session = bool(one_session) and sequence_graph is not None
    two_on_cpu = sequence_graph is not None and not one_session and on_cpu
    providers: list = [options.provider]
    if options.provider == "CUDAExecutionProvider":
        providers = [(options.provider, {"device_id": options.device_id})]
    if not on_cpu:
        providers.append("CPUExecutionProvider")  # nodes the EP lacks run on the CPU, as ORT always does
    return SessionPlan(
        step_graph=step_graph,
        sequence_graph=sequence_graph,
        decode_graph=sequence_graph if one_session else step_graph,
        prepacking=not (two_on_cpu and options.precision in UNPACKED_PRECISIONS),
        cuda_graph=options.cuda_graph,  # never with one session (refused above, or one_session decided False)
        providers=tuple(providers),
    )


def open_plan(
    plan: SessionPlan, export_dir: Path, manifest: Manifest, options: LoadOptions, cls: type = RWKVModel
) -> RWKVModel:
    """Open the sessions of `plan` (from the optimized cache where options name one) and the model on them."""
    session_options = _session_options(options, plan)
    providers = list(plan.providers)
    rewritten = _per_layer_graphs(plan, export_dir, manifest) if plan.layer_state else None
    if rewritten is not None:
        session_options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(export_dir))

    def open_graph(graph: GraphSpec, with_providers: list = providers) -> ort.InferenceSession:
        session = _open_session(
            export_dir,
            graph,
            session_options,
            with_providers,
            options.provider,
            options.optimized_cache,
            rewritten.get(graph.file) if rewritten else None,
        )
        _check_graph_io(session, graph, manifest, rewritten is not None)
        return session

    def model(step_session, sequence_session) -> RWKVModel:
        opened = cls(
            manifest,
            export_dir,
            plan.step_graph,
            step_session,
            plan.sequence_graph,
            sequence_session,
            options.provider,
            options.device_id,
            options.prefill_chunk,
            decode_graph=plan.decode_graph,
        )
        opened.layer_state = rewritten is not None
        return opened

    if plan.one_session:
        session = open_graph(plan.sequence_graph)
        return model(session, session)

    def open_step(with_providers: list) -> ort.InferenceSession:
        return open_graph(plan.step_graph, with_providers)

    step_session, graph_bindings, graph_note = open_step_session(
        open_step, providers, options.provider, plan.cuda_graph
    )
    if graph_note and not graph_bindings:
        warnings.warn(graph_note, RuntimeWarning, stacklevel=3)
    sequence_session = open_graph(plan.sequence_graph) if plan.sequence_graph is not None else None
    opened = model(step_session, sequence_session)
    opened.cuda_graph_note = graph_note
    if graph_bindings:
        opened._use_cuda_graphs(lambda: open_step(providers))
    return opened


def _per_layer_graphs(plan: SessionPlan, export_dir: Path, manifest: Manifest) -> dict[str, bytes] | None:
    """Every graph the plan opens, rewritten with one state tensor per layer (by file name), or None when one of
    them has not the pattern (an error with layer_state=True): the sessions share the states, so all or none."""
    rewritten = {}
    for graph in plan.sessions:
        data = per_layer_graph(graph_path(export_dir, graph), manifest.state)
        if data is None:
            if plan.layer_state_required:
                raise RWKVEdgeError(
                    f"layer_state=True: {graph.file} does not cut and stack its state as runtime/layer_state.py expects"
                )
            return None
        rewritten[graph.file] = data
    return rewritten


def _session_options(options: LoadOptions, plan: SessionPlan) -> ort.SessionOptions:
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    if options.threads is not None:
        session_options.intra_op_num_threads = int(options.threads)
    if not options.graph_optimizations:
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
    if not plan.prepacking:
        session_options.add_session_config_entry("session.disable_prepacking", "1")  # one weight copy for both
    return session_options


def _session_maker(providers: list):
    """create(path, options) -> an ORT session on `providers`; ORT's errors become one RWKVEdgeError line."""

    def create(model_path: Path, with_options: ort.SessionOptions, graph: bytes | None = None) -> ort.InferenceSession:
        try:
            source = str(model_path) if graph is None else graph  # bytes: the graph rewritten from model_path
            return ort.InferenceSession(source, sess_options=with_options, providers=providers)
        except Exception as e:  # ORT raises its own exception types with long multi-line text
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RWKVEdgeError(f"{model_path}: ONNX Runtime cannot load it ({first_line})") from None

    return create


def graph_path(export_dir: Path, graph: GraphSpec) -> Path:
    """The file of a graph rwkv.json lists; a missing one is an error in one line that says how to make it."""
    path = export_dir / graph.file
    if not path.is_file():
        again = "ort" if path.suffix == ".ort" else "export"
        raise RWKVEdgeError(f"{path}: listed in rwkv.json but missing; re-run `rwkv-export {again}`")
    return path


def _open_session(
    export_dir: Path,
    graph: GraphSpec,
    options: ort.SessionOptions,
    providers: list,
    wanted: str,
    cache_dir: Path | None = None,
    rewritten: bytes | None = None,
) -> ort.InferenceSession:
    path = graph_path(export_dir, graph)
    create = _session_maker(providers)
    if cache_dir is None:
        session = create(path, options, rewritten)
    else:
        session = open_cached(path, options, providers, cache_dir, create)
    if wanted not in session.get_providers():
        # e.g. onnxruntime-gpu installed but CUDA/cuDNN libraries missing: ORT would quietly use the CPU
        raise RWKVEdgeError(
            f"{wanted} failed to start (session runs on {', '.join(session.get_providers())}); "
            f"check the CUDA and cuDNN libraries that onnxruntime-gpu needs"
        )
    return session


def _check_graph_io(session: ort.InferenceSession, graph: GraphSpec, manifest: Manifest, layered: bool) -> None:
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    for name in [graph.input] + state_input_names(manifest.state, layered):
        if name not in inputs:
            raise RWKVEdgeError(
                f"{graph.file} does not match rwkv.json: no graph input {name!r} (it has {', '.join(sorted(inputs))})"
            )
    for name in [graph.output] + state_output_names(manifest.state, layered):
        if name not in outputs:
            raise RWKVEdgeError(
                f"{graph.file} does not match rwkv.json: no graph output {name!r} (it has {', '.join(sorted(outputs))})"
            )
