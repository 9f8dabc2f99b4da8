"""CUDA graphs for the step graph: ONNX Runtime records one decode step's kernels once and replays them, so a
step costs one graph launch instead of one launch per node.

    model = RWKVModel.load("out/", provider="cuda", cuda_graph=True)
    model.cuda_graph        # True: steps run through the fixed bindings below
    model.cuda_graph_note   # one line when graphs were asked for but are not captured (None otherwise)

What ONNX Runtime's CUDA EP requires (onnxruntime >= 1.18), and how this module meets it:
- A captured graph replays the device addresses it was captured with: inputs, outputs, ORT's temporaries. So a
  step binds fixed buffers only: token ids and logits live in one device buffer per batch size (the ids are
  written in place), the state in its two ping-pong buffers. The two parities of a state bind different buffers,
  so each is its own graph, chosen by the run option gpu_graph_id.
- ORT runs a new gpu_graph_id normally at first (its memory arena grows then; no allocation may happen while
  capturing), then captures, then replays. -1 runs without graphs; 0 is ORT's default, so every run on a
  graph-enabled session names an id, or ORT would capture whatever that run bound as graph 0. We also run each
  binding WARMUP_RUNS times with -1 first, so a new batch size grows the arena before any capture.
- ORT's Python API cannot release one captured graph, so an id never moves to other addresses: ids are keyed
  by the batch and every address a step binds. A state that lands on a freed state's addresses replays that
  graph (same addresses, same shapes: the same work). MAX_GRAPHS bounds the count; past it, steps run uncaptured.
- Graphs live in the CUDA EP's per-thread context: step a graph-enabled model from one thread.
- Session creation refuses enable_cuda_graph when a node needs a copy between devices or the graph has control
  flow ("This session cannot use the graph capture feature ..."): the sequence graph (a Scan) is always opened
  without it, and a refused step graph is reopened without it (see open_step_session).

On other providers (the CPU in tests and in `gpu_check.py --dry-run-on-cpu`) the same bindings run uncaptured:
the buffers' device is a parameter, so all of this logic is testable without a GPU.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnxruntime as ort

from .errors import RWKVEdgeError

GRAPH_ID_OPTION = "gpu_graph_id"  # ORT's run option (kOrtRunOptionsConfigCudaGraphAnnotation)
NO_GRAPH = -1  # gpu_graph_id of a run that is neither captured nor replayed
FIRST_GRAPH_ID = 1  # 0 is ORT's implicit id
WARMUP_RUNS = 2  # uncaptured runs of each binding before its graph id is used (ORT's own minimum is 2)
MAX_GRAPHS = 256  # captured graphs per session, two per state alive at once; each holds device memory


class GraphRunFailed(RWKVEdgeError):
    """A run with a graph id failed (capture refused at run time): the model reopens its step session plainly."""


def run_options(graph_id: int) -> ort.RunOptions:
    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_ID_OPTION, str(graph_id))
    return options


def with_cuda_graph(providers: list) -> list:
    """The provider list with enable_cuda_graph=1 on its CUDA entry."""
    out = []
    for p in providers:
        name, opts = p if isinstance(p, tuple) else (p, {})
        out.append((name, {**opts, "enable_cuda_graph": "1"}) if name == "CUDAExecutionProvider" else p)
    return out


def open_step_session(
    open_session: Callable[[list], ort.InferenceSession], providers: list, provider: str, cuda_graph: bool
) -> tuple[ort.InferenceSession, bool, str | None]:
    """(session, graph bindings, note). With `cuda_graph` on CUDA: the step session opened with CUDA graphs, or,
    if ORT refuses (a node off CUDA, control flow), opened without them, plain bindings, and a one-line note.
    On another provider: the graph bindings run uncaptured (a rehearsal), and the note says so."""
    if not cuda_graph:
        return open_session(providers), False, None
    if provider != "CUDAExecutionProvider":
        return (
            open_session(providers),
            True,
            f"CUDA graphs need the CUDA provider: {provider} runs the same fixed bindings, uncaptured",
        )
    try:
        return open_session(with_cuda_graph(providers)), True, None
    except RWKVEdgeError as e:  # the plain open below raises again if the problem was not the graphs
        return open_session(providers), False, f"CUDA graphs off, decoding without them: {e}"


class CudaGraphSteps:
    """Graph-mode stepping of one step session: fixed ids/logits buffers per batch size, graph ids keyed by the
    addresses they were captured with, and for each state one binding per parity (cached on the state)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_name: str,
        state_specs: list,
        vocab_size: int,
        logits_dtype,
        device: str,
        device_id: int = 0,
        max_graphs: int = MAX_GRAPHS,
    ):
        self.session = session
        self.input_name, self.output_name = input_name, output_name
        self.state_specs = list(state_specs)
        self.vocab_size, self.logits_dtype = vocab_size, np.dtype(logits_dtype)
        self.device, self.device_id = device, device_id
        self.max_graphs = max_graphs
        self._buffers: dict[int, tuple[ort.OrtValue, ort.OrtValue]] = {}  # batch -> (ids, logits) on the device
        self._graph_ids: dict[tuple, int] = {}  # (batch, bound addresses...) -> graph id
        self.note: str | None = None  # set once when max_graphs is reached

    def buffers(self, batch: int) -> tuple[ort.OrtValue, ort.OrtValue]:
        if batch not in self._buffers:
            self._buffers[batch] = (
                ort.OrtValue.ortvalue_from_shape_and_type([batch], np.int64, self.device, self.device_id),
                ort.OrtValue.ortvalue_from_shape_and_type(
                    [batch, self.vocab_size], self.logits_dtype.type, self.device, self.device_id
                ),
            )
        return self._buffers[batch]

    def graph_id(self, key: tuple) -> int:
        """The graph id for these bound addresses: the same key, the same id; a new key, the next id (NO_GRAPH
        past max_graphs)."""
        if key not in self._graph_ids:
            if len(self._graph_ids) >= self.max_graphs:
                if self.note is None:
                    self.note = (
                        f"{self.max_graphs} CUDA graphs captured in this session; further states step uncaptured"
                    )
                return NO_GRAPH
            self._graph_ids[key] = FIRST_GRAPH_ID + len(self._graph_ids)
        return self._graph_ids[key]

    def binding(self, state) -> "GraphStepBinding":
        binding = state._bindings.get(self)
        if binding is None:
            binding = state._bindings[self] = GraphStepBinding(self, state)
        return binding

    def step(self, ids: np.ndarray, state) -> np.ndarray:
        """Run one step for `state` (not advanced here): float32 logits [batch, vocab], a host copy."""
        return self.binding(state).run(ids, state._current)


class GraphStepBinding:
    """One state's two IO bindings (parity 0: buffers A -> B, parity 1: B -> A) over fixed buffers, each with
    its run options: uncaptured for the first WARMUP_RUNS runs, then its graph id."""

    def __init__(self, steps: CudaGraphSteps, state):
        self.steps = steps
        self.ids, self.logits = steps.buffers(state.batch)
        self.graph_ids: list[int] = []  # per parity
        self.runs = [0, 0]  # runs per parity, for the warm-up
        self._bindings, self._options = [], []
        self._warmup = run_options(NO_GRAPH)
        for parity in (0, 1):
            inputs, outputs = state.buffers(parity)
            binding = steps.session.io_binding()
            binding.bind_ortvalue_input(steps.input_name, self.ids)
            binding.bind_ortvalue_output(steps.output_name, self.logits)
            for spec in steps.state_specs:
                binding.bind_ortvalue_input(spec.input, inputs[spec.name])
                binding.bind_ortvalue_output(spec.output, outputs[spec.name])
            key = (
                state.batch,
                self.ids.data_ptr(),
                self.logits.data_ptr(),
                *(inputs[s.name].data_ptr() for s in steps.state_specs),
                *(outputs[s.name].data_ptr() for s in steps.state_specs),
            )
            self.graph_ids.append(steps.graph_id(key))
            self._bindings.append(binding)
            self._options.append(run_options(self.graph_ids[-1]))

    def options(self, parity: int) -> ort.RunOptions:
        return self._options[parity] if self.runs[parity] >= WARMUP_RUNS else self._warmup

    def run(self, ids: np.ndarray, parity: int) -> np.ndarray:
        self.ids.update_inplace(np.ascontiguousarray(ids, dtype=np.int64))  # same address: the graph reads it there
        options = self.options(parity)
        try:
            self.steps.session.run_with_iobinding(self._bindings[parity], options)
        except Exception as e:  # ORT's own exception types, multi-line
            if options is self._warmup or self.graph_ids[parity] == NO_GRAPH:
                raise
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GraphRunFailed(f"a captured step failed ({first_line})") from None
        self.runs[parity] += 1
        logits = self.logits.numpy()  # the step's one device -> host copy; on the CPU a view of the buffer: copied
        return logits.astype(np.float32, copy=self.steps.device == "cpu")
