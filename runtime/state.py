"""The recurrent state of a batch of sequences, held on the model's device between steps.

Each state tensor has two OrtValue buffers: one holds the current value and is bound as the graph
input, the other is bound as the output; after a step they swap roles (ping-pong). A step thus
allocates nothing and never copies the state to the host.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from rwkv_edge.common.files import atomic_path

from .errors import RWKVEdgeError
from .layer_state import layer_name
from .manifest import StateSpec

STATE_FORMAT = "rwkv-edge-state/1"
_META_KEY = "__meta__"
_TENSOR_PREFIX = "state."


def _shape_text(spec: StateSpec) -> str:
    return "[" + ", ".join(str(d) for d in spec.shape) + "]"


def check_state_arrays(
    specs: Sequence[StateSpec], arrays: dict, batch: int | None = None
) -> tuple[int, dict[str, np.ndarray]]:
    """Validate numpy state tensors against the manifest; returns (batch, arrays by name). One-line errors."""
    expected = [s.name for s in specs]
    if not isinstance(arrays, dict):
        raise RWKVEdgeError(
            f"state must be a dict of arrays named {', '.join(expected)}; found {type(arrays).__name__}"
        )
    for name in arrays:
        if name not in expected:
            raise RWKVEdgeError(f"state has unknown tensor {name!r} (expected: {', '.join(expected)})")
    out: dict[str, np.ndarray] = {}
    batch_from = None
    for spec in specs:
        if spec.name not in arrays:
            raise RWKVEdgeError(f"state is missing tensor {spec.name!r} (expected: {', '.join(expected)})")
        arr = np.asarray(arrays[spec.name])
        axis = spec.shape.index("batch")
        if arr.ndim != len(spec.shape):
            raise RWKVEdgeError(
                f"state tensor {spec.name!r}: expected shape {_shape_text(spec)}, found {list(arr.shape)}"
            )
        if batch is None:
            batch, batch_from = arr.shape[axis], spec.name
        if arr.shape[axis] != batch:
            where = f"but {batch_from!r} has batch {batch}" if batch_from else f"expected {batch}"
            raise RWKVEdgeError(f"state tensor {spec.name!r} has batch {arr.shape[axis]}, {where}")
        if arr.shape != spec.concrete_shape(batch):
            raise RWKVEdgeError(
                f"state tensor {spec.name!r}: expected shape {list(spec.concrete_shape(batch))} "
                f"({_shape_text(spec)}), found {list(arr.shape)}"
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise RWKVEdgeError(f"state tensor {spec.name!r}: expected dtype {spec.dtype}, found {arr.dtype}")
        out[spec.name] = arr
    if batch is None or batch < 1:
        raise RWKVEdgeError(f"state batch must be >= 1, found {batch}")
    return batch, out


def load_initial_values(specs: Sequence[StateSpec], export_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state-tuned initial values named by the specs' `init_file` (a .npy of one sequence's value, the shape
    without the batch axis), checked against the manifest. Specs without a file are left out."""
    values = {}
    for spec in specs:
        if spec.init_file is None:
            continue
        path = Path(export_dir) / spec.init_file
        if not path.is_file():
            raise RWKVEdgeError(
                f"{path}: initial state of {spec.name!r} listed in rwkv.json but missing; re-run `rwkv-export export`"
            )
        try:
            value = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise RWKVEdgeError(
                f"{path}: not a .npy array (the initial state of {spec.name!r}); re-run `rwkv-export export`"
            ) from None
        row = tuple(int(d) for d in spec.shape if d != "batch")
        if value.shape != row or value.dtype != np.dtype(spec.dtype):
            raise RWKVEdgeError(
                f"{path}: initial state of {spec.name!r} must be {spec.dtype} {list(row)} "
                f"({_shape_text(spec)} without the batch axis), "
                f"found {value.dtype} {list(value.shape)}"
            )
        values[spec.name] = value
    return values


def initial_arrays(
    specs: Sequence[StateSpec], batch: int, values: dict[str, np.ndarray] | None = None, layer_major: bool = False
) -> dict[str, np.ndarray]:
    """Fresh state arrays for `batch` rows: each row is the spec's initial value from `values` (see
    load_initial_values) or, for the others, filled with the spec's `init`. `layer_major`: the first two axes
    swapped ([L, batch, ...]), the storage of a model with one state tensor per layer."""
    values = values or {}
    out = {}
    for s in specs:
        shape = s.concrete_shape(batch)
        axis = s.shape.index("batch")
        if layer_major:
            shape, axis = (shape[1], shape[0], *shape[2:]), 1
        if s.name in values:
            row = np.expand_dims(values[s.name], axis)
            out[s.name] = np.array(np.broadcast_to(row, shape), dtype=s.dtype, order="C", copy=True)
        else:
            out[s.name] = np.full(shape, s.init, dtype=s.dtype)
    return out


def _mapped_like(a: np.ndarray) -> np.ndarray:
    """A new array like `a` whose pages are already mapped. ONNX Runtime's threads writing a fresh allocation for the
    first time fault it in page by page, far slower than filling it here (measured: docs/performance.md)."""
    out = np.empty_like(a)
    out.fill(0)
    return out


class State:
    """State of `batch` sequences for one model's graphs. Create it with `model.new_state(batch)`,
    `model.state_from_numpy(arrays)` or `State.load(path, model)`; `model.step` advances it in place."""

    def __init__(self, model, arrays: dict[str, np.ndarray], batch: int, *, owned: bool = False):
        # `arrays` must already have passed check_state_arrays for model.state_specs. They are copied (on the CPU
        # an OrtValue shares the numpy buffer, and steps write into it) unless `owned`: arrays made for this state.
        layered = getattr(model, "layer_state", False)
        if layered:  # the graphs take one tensor per layer: keep the layers outermost (runtime/layer_state.py)
            arrays = {n: np.ascontiguousarray(np.swapaxes(a, 0, 1)) for n, a in arrays.items()}
            owned = owned or batch > 1  # a new array, except with one row: then the swap is a view of the caller's
        self._init_storage(model, arrays, batch, owned)

    @classmethod
    def _of_storage(cls, model, storage: dict[str, np.ndarray], batch: int) -> "State":
        """A state over new arrays already in the model's storage layout (select, concat)."""
        state = cls.__new__(cls)
        state._init_storage(model, storage, batch, owned=True)
        return state

    def _init_storage(self, model, arrays: dict[str, np.ndarray], batch: int, owned: bool) -> None:
        self.model = model
        self.batch = batch
        self.specs = list(model.state_specs)
        self.device, self.device_id = model.device, model.device_id
        self.layered = getattr(model, "layer_state", False)
        if self.device == "cpu":  # both buffers are numpy arrays kept here, so select and concat read them in place
            current = {n: a if owned else np.array(a, order="C", copy=True) for n, a in arrays.items()}
            spare = {n: _mapped_like(a) for n, a in current.items()}
            self._host: tuple[dict, dict] | None = (current, spare)
            if self.layered:  # one OrtValue per layer, each over its slice of the array
                self._buffers = tuple(
                    {n: [ort.OrtValue.ortvalue_from_numpy(layer) for layer in a] for n, a in b.items()}
                    for b in self._host
                )
            else:
                self._buffers = tuple(
                    {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in b.items()} for b in self._host
                )
        else:
            self._host = None
            current = {
                n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, self.device_id)
                for n, a in arrays.items()
            }
            spare = {
                s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                    s.concrete_shape(batch), np.dtype(s.dtype).type, self.device, self.device_id
                )
                for s in self.specs
            }
            self._buffers = (current, spare)
        self._current = 0  # index into _buffers of the tensors that hold the state now
        self._bindings: dict = {}  # model -> its prepared IO bindings for this state (see RWKVModel)
        self.logits: np.ndarray | None = None  # float32 [batch, vocab] after the last step or feed

    # --- ping-pong, used by RWKVModel -------------------------------------------------------------
    def buffers(self, parity: int) -> tuple[dict, dict]:
        """(inputs, outputs) OrtValues by state name for a step taken when `_current == parity`."""
        return self._buffers[parity], self._buffers[parity ^ 1]

    def bind(self, binding: ort.IOBinding, parity: int) -> None:
        """Bind every state input and output of a step taken when `_current == parity` (per layer where the
        model's graphs take one tensor per layer)."""
        inputs, outputs = self.buffers(parity)
        for spec in self.specs:
            if self.layered:
                for layer, (now, after) in enumerate(zip(inputs[spec.name], outputs[spec.name])):
                    binding.bind_ortvalue_input(layer_name(spec.input, layer), now)
                    binding.bind_ortvalue_output(layer_name(spec.output, layer), after)
            else:
                binding.bind_ortvalue_input(spec.input, inputs[spec.name])
                binding.bind_ortvalue_output(spec.output, outputs[spec.name])

    def advance(self) -> None:
        self._current ^= 1

    def fits(self, model) -> None:
        """Raise unless this state has the layout and device of `model`'s state."""
        if model is self.model:
            return
        if list(model.state_specs) != self.specs:
            mine = ", ".join(f"{s.name}{_shape_text(s)}" for s in self.specs)
            theirs = ", ".join(f"{s.name}{_shape_text(s)}" for s in model.state_specs)
            raise RWKVEdgeError(f"state does not fit this model: it has {mine}; the model expects {theirs}")
        if getattr(model, "layer_state", False) != self.layered:
            raise RWKVEdgeError(
                "state does not fit this model: one of them keeps one state tensor per layer "
                "(runtime/layer_state.py); move it with model.state_from_numpy(state.to_numpy())"
            )
        if (model.device, model.device_id) != (self.device, self.device_id):
            raise RWKVEdgeError(
                f"state lives on {self.device}:{self.device_id} "
                f"but the model runs on {model.device}:{model.device_id}; "
                f"move it with model.state_from_numpy(state.to_numpy())"
            )

    # --- host access --------------------------------------------------------------------------------
    def to_numpy(self) -> dict[str, np.ndarray]:
        """A host copy of every state tensor, by name."""
        return {name: np.array(a, copy=True) for name, a in self._host_view().items()}

    def row_to_numpy(self, row: int) -> dict[str, np.ndarray]:
        """A host copy of one row (batch 1) of every state tensor, by name."""
        self._check_row(row)
        # A slice of the storage (one block per layer where layered) copied: np.take over the layer-major storage's
        # swapped view walks it element by element, ~100x slower at the 0.1B shape.
        view = self._host_view()
        out = {}
        for s in self.specs:
            cut = (slice(None),) * s.shape.index("batch") + (slice(row, row + 1),)
            out[s.name] = np.array(view[s.name][cut], copy=True)
        return out

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.batch:
            raise RWKVEdgeError(f"row {row} is outside a state of batch {self.batch}")

    def _host_view(self) -> dict[str, np.ndarray]:
        """The state tensors on the host without a copy where they live there (read only: the next step writes)."""
        if self._host is not None:
            current = self._host[self._current]
            return {n: np.swapaxes(a, 0, 1) for n, a in current.items()} if self.layered else current
        return {name: v.numpy() for name, v in self._buffers[self._current].items()}

    def _storage_view(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The arrays as stored (layer-major where layered, no copy) and each one's batch axis."""
        if self._host is None:
            return self._host_view(), {s.name: s.shape.index("batch") for s in self.specs}
        return self._host[self._current], {s.name: 1 if self.layered else s.shape.index("batch") for s in self.specs}

    def copy(self) -> "State":
        state = State(self.model, self.to_numpy(), self.batch)
        state.logits = None if self.logits is None else self.logits.copy()
        return state

    def select(self, rows) -> "State":
        """A new state of the given rows (an int, a list of ints, or a slice), in that order."""
        if isinstance(rows, (int, np.integer)):
            rows = [int(rows)]
        index = np.arange(self.batch)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = [int(r) for r in index if not 0 <= r < self.batch]
        if bad or len(index) == 0:
            raise RWKVEdgeError(f"rows must be in [0, {self.batch}) and not empty, found {bad or 'no rows'}")
        host, axis = self._storage_view()
        arrays = {s.name: np.take(host[s.name], index, axis=axis[s.name]) for s in self.specs}
        state = State._of_storage(self.model, arrays, len(index))  # np.take made new arrays
        state.logits = None if self.logits is None else self.logits[index].copy()
        return state

    @classmethod
    def gather(cls, rows: Sequence[tuple["State", int]]) -> "State":
        """One state whose rows are the given (state, row) pairs, in order, copied once; the state itself when the
        pairs are all its rows in order (nothing copied: it is then shared, not a copy)."""
        if not rows:
            raise RWKVEdgeError("gather needs at least one row")
        first = rows[0][0]
        if all(s is first for s, _ in rows) and [r for _, r in rows] == list(range(first.batch)):
            return first
        runs: list[list] = []  # [state, start, stop): consecutive rows of one state, copied as one slice
        for s, r in rows:
            s._check_row(r)
            if runs and runs[-1][0] is s and runs[-1][2] == r:
                runs[-1][2] = r + 1
            else:
                runs.append([s, r, r + 1])
        return cls._of_runs([tuple(run) for run in runs])

    @classmethod
    def concat(cls, states: Sequence["State"]) -> "State":
        """One state whose rows are those of `states`, in order (to batch sequences together)."""
        if not states:
            raise RWKVEdgeError("concat needs at least one state")
        return cls._of_runs([(s, 0, s.batch) for s in states])

    @classmethod
    def _of_runs(cls, runs: Sequence[tuple["State", int, int]]) -> "State":
        """A new state of the rows [start, stop) of each (state, start, stop), in order: one copy."""
        first = runs[0][0]
        for s, _, _ in runs[1:]:
            s.fits(first.model)
        views = [(s._storage_view()[0], start, stop) for s, start, stop in runs]
        axis = first._storage_view()[1]
        arrays = {}
        for spec in first.specs:
            cut = (slice(None),) * axis[spec.name]
            parts = [view[spec.name][cut + (slice(start, stop),)] for view, start, stop in views]
            arrays[spec.name] = np.concatenate(parts, axis=axis[spec.name])
        state = State._of_storage(first.model, arrays, sum(stop - start for _, start, stop in runs))  # new arrays
        if all(s.logits is not None for s, _, _ in runs):
            state.logits = np.concatenate([s.logits[start:stop] for s, start, stop in runs])
        return state

    # --- files ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (atomically) tagged with the format and the model's architecture."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                self._write_npz(f)

    def to_bytes(self) -> bytes:
        """The .npz that `save` writes, in memory (to send a state over the network)."""
        buffer = io.BytesIO()
        self._write_npz(buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> "State":
        """Read a state saved by `save`; refuses files written for a model of another architecture."""
        path = Path(path)
        if not path.is_file():
            raise RWKVEdgeError(f"{path}: no such state file")
        return cls._read_npz(path, str(path), model)

    @classmethod
    def from_bytes(cls, data: bytes, model) -> "State":
        """A state from the bytes `to_bytes` (or a file `save`) wrote; the same checks as `load`."""
        return cls._read_npz(io.BytesIO(bytes(data)), "uploaded state", model)

    def _write_npz(self, f) -> None:
        meta = {"format": STATE_FORMAT, "architecture": asdict(self.model.manifest.architecture), "batch": self.batch}
        tensors = {_TENSOR_PREFIX + name: a for name, a in self.to_numpy().items()}
        np.savez(f, **{_META_KEY: np.array(json.dumps(meta))}, **tensors)

    @classmethod
    def _read_npz(cls, source, where: str, model) -> "State":
        """`source`: a path or a binary file object; `where` names it in error messages."""
        try:
            with np.load(source, allow_pickle=False) as npz:
                meta = json.loads(str(npz[_META_KEY][()]))
                arrays = {k[len(_TENSOR_PREFIX) :]: npz[k] for k in npz.files if k.startswith(_TENSOR_PREFIX)}
        except (
            ValueError,
            OSError,
            KeyError,
            TypeError,
            EOFError,
            AttributeError,
            zipfile.BadZipFile,
            pickle.UnpicklingError,
        ):
            raise RWKVEdgeError(
                f"{where}: not an rwkv-edge state file (expected an .npz written by State.save)"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise RWKVEdgeError(f"{where}: state format must be {STATE_FORMAT!r}, found {found!r}")
        want = asdict(model.manifest.architecture)
        if meta.get("architecture") != want:
            raise RWKVEdgeError(
                f"{where}: state was saved for {_describe(meta.get('architecture'))}, "
                f"but this model is {_describe(want)}"
            )
        batch, arrays = check_state_arrays(model.state_specs, arrays)
        return State(model, arrays, batch)

    def __repr__(self) -> str:
        return f"State(batch={self.batch}, tensors={[s.name for s in self.specs]}, device={self.device!r})"


def _describe(arch) -> str:
    if not isinstance(arch, dict):
        return "an unknown model"
    return (
        f"RWKV-{arch.get('version')} (n_layer={arch.get('n_layer')}, n_embd={arch.get('n_embd')}, "
        f"vocab_size={arch.get('vocab_size')})"
    )
