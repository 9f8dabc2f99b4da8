"""RWKVModel and State on a tiny fake export (tests/fake_model.py): stepping, IO binding, batching,
the sequence-graph hook, state files, and every bad input as a one-line RWKVEdgeError."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fake_model import build_fake_export, fake_step_numpy, fake_weights

from rwkv_edge.runtime import RWKVEdgeError, RWKVModel, State, resolve_provider
from rwkv_edge.runtime.manifest import Architecture, GraphSpec, Manifest, StateSpec, TokenizerSpec
from rwkv_edge.runtime.session import LoadOptions, plan_sessions

VOCAB, N_LAYER, N_EMBD = 16, 2, 4
RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return build_fake_export(tmp_path_factory.mktemp("fake"), vocab=VOCAB, n_layer=N_LAYER, n_embd=N_EMBD)


@pytest.fixture(scope="module")
def export_with_sequence(tmp_path_factory) -> Path:
    return build_fake_export(
        tmp_path_factory.mktemp("fake_seq"), vocab=VOCAB, n_layer=N_LAYER, n_embd=N_EMBD, with_sequence=True
    )


@pytest.fixture(scope="module")
def model(export_dir) -> RWKVModel:
    return RWKVModel.load(export_dir, threads=1)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def generic_driver(export_dir: Path, token_rows: list[list[int]]) -> list[np.ndarray]:
    """Run an export with plain ONNX Runtime and only rwkv.json, as an app in any language would:
    init states from the manifest, feed each output back to its input. Imports nothing of rwkv_edge."""
    manifest = json.loads((export_dir / "rwkv.json").read_text())
    step = next(g for g in manifest["graphs"] if g["kind"] == "step" and g["precision"] == "fp32")
    session = ort.InferenceSession(str(export_dir / step["file"]), providers=["CPUExecutionProvider"])
    batch = len(token_rows[0])
    state = {
        s["input"]: np.full([batch if d == "batch" else d for d in s["shape"]], s["init"], dtype=s["dtype"])
        for s in manifest["state"]
    }
    all_logits = []
    for ids in token_rows:
        names = [step["output"]] + [s["output"] for s in manifest["state"]]
        logits, *new = session.run(names, {step["input"]: np.asarray(ids, np.int64), **state})
        state = {s["input"]: v for s, v in zip(manifest["state"], new)}
        all_logits.append(logits)
    return all_logits


TOKENS = [[1, 5, 9], [3, 3, 0], [15, 2, 7], [4, 8, 12], [0, 1, 2]]  # 5 steps of a batch of 3


# --- loading and state -----------------------------------------------------------------------------------


def test_load_reads_manifest_and_opens_cpu(model):
    assert model.provider == "CPUExecutionProvider" and model.device == "cpu"
    assert model.vocab_size == VOCAB
    assert [s.name for s in model.state_specs] == ["att_x", "att_p"]
    assert model.sequence_session is None
    assert "RWKV-7" in repr(model)


def test_new_state_uses_manifest_init_values(model):
    state = model.new_state(3)
    arrays = state.to_numpy()
    assert state.batch == 3
    assert arrays["att_x"].shape == (3, N_LAYER, N_EMBD) and arrays["att_x"].dtype == np.float32
    assert (arrays["att_x"] == 0).all()
    assert (arrays["att_p"] == np.float32(-1e38)).all()
    assert state.logits is None


def test_step_matches_numpy_math(model):
    w = fake_weights(VOCAB, N_LAYER, N_EMBD)
    state = model.new_state(3)
    ref = model.new_state(3).to_numpy()
    for ids in TOKENS:
        logits = model.step(ids, state)
        ref_logits, ref["att_x"], ref["att_p"] = fake_step_numpy(w, np.array(ids), ref["att_x"], ref["att_p"])
        assert logits.shape == (3, VOCAB) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    got = state.to_numpy()
    np.testing.assert_allclose(got["att_x"], ref["att_x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["att_p"], ref["att_p"], rtol=1e-6)


def test_io_binding_equals_plain_session_run(model, export_dir):
    state = model.new_state(3)
    bound = [model.step(ids, state) for ids in TOKENS]
    plain = generic_driver(export_dir, TOKENS)
    for b, p in zip(bound, plain):
        np.testing.assert_array_equal(b, p)
    # and the numpy path of the model itself
    arrays = model.new_state(3).to_numpy()
    for ids, b in zip(TOKENS, bound):
        logits, arrays = model.step_numpy(ids, arrays)
        np.testing.assert_array_equal(logits, b)
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(value, arrays[name])


def test_step_returns_fresh_arrays(model):
    state = model.new_state(1)
    first = model.step([1], state)
    kept = first.copy()
    model.step([2], state)
    np.testing.assert_array_equal(first, kept)  # the binding's buffer is reused, the result is not


def test_batch_rows_never_interact(model):
    batched = model.new_state(3)
    batched_logits = [model.step(ids, batched) for ids in TOKENS]
    for row in range(3):
        alone = model.new_state(1)
        for ids, logits in zip(TOKENS, batched_logits):
            np.testing.assert_array_equal(model.step([ids[row]], alone)[0], logits[row])
        for name, value in alone.to_numpy().items():
            np.testing.assert_array_equal(value[0], batched.to_numpy()[name][row])


def test_feed_equals_stepping(model):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    fed = model.new_state(1)
    logits = model.feed(prompt, fed)
    stepped = model.new_state(1)
    for t in prompt:
        expected = model.step([t], stepped)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(fed.logits, expected)
    batch_state = model.new_state(2)
    batch_logits = model.feed(np.array([prompt, prompt[::-1]]), batch_state)
    np.testing.assert_array_equal(batch_logits[0], expected[0])


def test_feed_uses_sequence_graph_in_chunks(export_with_sequence, monkeypatch):
    seq_model = RWKVModel.load(export_with_sequence, prefill_chunk=3)
    assert seq_model.sequence_session is not None
    prompt = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]]
    step_only = RWKVModel.load(export_with_sequence)
    step_only.sequence_session = None
    expected_state = step_only.new_state(2)
    expected = step_only.feed(prompt, expected_state)

    calls = []
    original = seq_model._run_sequence_chunk
    monkeypatch.setattr(seq_model, "_run_sequence_chunk", lambda ids, st: (calls.append(ids.shape), original(ids, st)))
    monkeypatch.setattr(seq_model, "step", lambda *a: pytest.fail("feed stepped although a sequence graph exists"))
    state = seq_model.new_state(2)
    logits = seq_model.feed(prompt, state)
    assert calls == [(2, 3), (2, 3), (2, 2)]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    for name, value in state.to_numpy().items():
        np.testing.assert_allclose(value, expected_state.to_numpy()[name], rtol=1e-5, atol=1e-6)
    monkeypatch.undo()
    # stepping after a sequence-graph feed continues from the same state
    np.testing.assert_allclose(
        seq_model.step([5, 6], state), step_only.step([5, 6], expected_state), rtol=1e-5, atol=1e-5
    )


def test_load_options(export_dir):
    plain = RWKVModel.load(export_dir, provider="CPUExecutionProvider", threads=2, graph_optimizations=False)
    state = plain.new_state(1)
    assert plain.step([3], state).shape == (1, VOCAB)


# --- the session plan (plan_sessions: which graphs get sessions, from the manifest and the options alone) -------
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def manifest_of(*graphs: tuple[str, str], dtype: str = "float32") -> Manifest:
    """A manifest listing (kind, precision) graphs; no files: planning reads none."""
    return Manifest(
        architecture=Architecture("7", N_LAYER, N_EMBD, 1, N_EMBD, VOCAB, 4 * N_EMBD),
        tokenizer=TokenizerSpec("bytes"),
        graphs=[GraphSpec(f"{kind}.{precision}.onnx", kind, precision) for kind, precision in graphs],
        state=[StateSpec("att_x", "att_x", "att_x_out", ["batch", N_LAYER, N_EMBD], dtype)],
    )


BOTH = manifest_of(("step", "fp32"), ("sequence", "fp32"), ("step", "int8"), ("sequence", "int8"))


def planned(manifest: Manifest = BOTH, **options):
    plan = plan_sessions(manifest, LoadOptions(**options))
    return [f"{g.kind}.{g.precision}" for g in plan.sessions], plan


def test_plan_on_the_cpu_is_one_session_on_the_sequence_graph():
    sessions, plan = planned()
    assert sessions == ["sequence.fp32"] and plan.one_session and plan.decode_graph is plan.sequence_graph
    assert plan.step_graph.file == "step.fp32.onnx"  # named, left unopened
    assert plan.prepacking and not plan.cuda_graph and plan.providers == (CPU,)
    assert planned(precision="int8", optimized_cache=Path("cache"))[0] == ["sequence.int8"]  # the cache: same plan


def test_plan_opens_the_step_graph_alone_without_a_sequence_graph():
    for sessions, plan in (planned(use_sequence_graph=False), planned(manifest_of(("step", "fp32")))):
        assert sessions == ["step.fp32"] and plan.sequence_graph is None and not plan.one_session
        assert plan.decode_graph is plan.step_graph and plan.prepacking
    assert planned(use_sequence_graph=False, one_session=True)[0] == ["step.fp32"]  # nothing to share


def test_plan_of_two_cpu_sessions_reads_fp32_weights_unpacked():
    sessions, plan = planned(one_session=False)
    assert sessions == ["step.fp32", "sequence.fp32"] and plan.decode_graph is plan.step_graph
    assert not plan.prepacking  # the step and the sequence session share one unpacked copy
    assert planned(one_session=False, precision="int8")[1].prepacking  # MatMulNBits needs its packed layout


def test_plan_with_cuda_graphs_decodes_through_the_step_graph():
    sessions, plan = planned(cuda_graph=True)  # on the CPU: a rehearsal of the same bindings
    assert sessions == ["step.fp32", "sequence.fp32"] and plan.cuda_graph and not plan.prepacking
    sessions, plan = planned(provider=CUDA, device_id=1, cuda_graph=True)
    assert sessions == ["step.fp32", "sequence.fp32"] and plan.cuda_graph and plan.prepacking
    assert plan.providers == ((CUDA, {"device_id": 1}), CPU)  # nodes CUDA lacks run on the CPU


def test_plan_on_cuda_opens_two_sessions_unless_asked_for_one():
    sessions, plan = planned(provider=CUDA)
    assert sessions == ["step.fp32", "sequence.fp32"] and plan.prepacking and not plan.cuda_graph
    assert plan.providers == ((CUDA, {"device_id": 0}), CPU)
    sessions, plan = planned(provider=CUDA, one_session=True)
    assert sessions == ["sequence.fp32"] and plan.one_session


@pytest.mark.parametrize(
    "manifest, options, words",
    [
        (BOTH, {"one_session": True, "cuda_graph": True}, "choose one"),
        (BOTH, {"threads": 0}, "threads must be a whole number"),
        (BOTH, {"threads": 1.5}, "threads must be a whole number"),
        (BOTH, {"prefill_chunk": 0}, "prefill_chunk must be >= 1"),
        (BOTH, {"precision": "int4"}, "no step graph of precision int4"),
        (manifest_of(("step", "fp32"), dtype="float33"), {}, "dtype 'float33'"),
    ],
)
def test_plan_refuses_options_that_do_not_fit(manifest, options, words):
    with pytest.raises(RWKVEdgeError) as err:
        plan_sessions(manifest, LoadOptions(**options))
    assert words in one_line_error(err)


def test_load_opens_what_the_plan_says(export_with_sequence):
    one = RWKVModel.load(export_with_sequence, threads=1)
    assert one.step_session is one.sequence_session and one.decode_graph is one.sequence_graph
    two = RWKVModel.load(export_with_sequence, threads=1, one_session=False)
    assert two.step_session is not two.sequence_session and two.decode_graph is two.step_graph
    alone = RWKVModel.load(export_with_sequence, threads=1, use_sequence_graph=False)
    assert alone.sequence_session is None and alone.decode_graph is alone.step_graph


def test_state_numpy_round_trip_copies(model):
    user_arrays = model.new_state(2).to_numpy()
    state = model.state_from_numpy(user_arrays)
    model.step([1, 2], state)
    assert (user_arrays["att_x"] == 0).all()  # the state copied the caller's arrays
    snapshot = state.to_numpy()
    snapshot["att_x"][:] = 99
    assert not (state.to_numpy()["att_x"] == 99).any()


def test_select_concat_copy(model):
    state = model.new_state(3)
    for ids in TOKENS:
        model.step(ids, state)
    parts = [state.select(2), state.select([0, 1])]
    joined = State.concat(parts)
    host, joined_host = state.to_numpy(), joined.to_numpy()
    for name in host:
        np.testing.assert_array_equal(joined_host[name], host[name][[2, 0, 1]])
    np.testing.assert_array_equal(joined.logits, state.logits[[2, 0, 1]])
    copy = state.copy()
    model.step([1, 1, 1], copy)
    np.testing.assert_array_equal(state.to_numpy()["att_x"], host["att_x"])  # the original did not move
    with pytest.raises(RWKVEdgeError) as err:
        state.select([3])
    assert "[0, 3)" in one_line_error(err)


def test_state_save_load_round_trip(model, tmp_path):
    state = model.new_state(2)
    for ids in TOKENS:
        model.step(ids[:2], state)
    path = tmp_path / "chat.state"  # no .npz suffix: the file is written where asked
    state.save(path)
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    loaded = State.load(path, model)
    assert loaded.batch == 2
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(loaded.to_numpy()[name], value)
    np.testing.assert_array_equal(model.step([7, 8], loaded), model.step([7, 8], state))
    assert model.load_state(path).batch == 2


def test_state_file_from_another_model_is_refused(model, tmp_path):
    other = RWKVModel.load(build_fake_export(tmp_path / "other", vocab=VOCAB, n_layer=3, n_embd=N_EMBD))
    other.new_state(1).save(tmp_path / "other.npz")
    with pytest.raises(RWKVEdgeError) as err:
        State.load(tmp_path / "other.npz", model)
    assert "n_layer=3" in one_line_error(err) and "n_layer=2" in str(err.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(RWKVEdgeError) as err:
        State.load(tmp_path / "junk.npz", model)
    assert "not an rwkv-edge state file" in one_line_error(err)
    np.savez(tmp_path / "plain.npz", att_x=np.zeros(3))
    with pytest.raises(RWKVEdgeError) as err:
        State.load(tmp_path / "plain.npz", model)
    assert "not an rwkv-edge state file" in one_line_error(err)
    with pytest.raises(RWKVEdgeError) as err:
        State.load(tmp_path / "nope.npz", model)
    assert "no such state file" in one_line_error(err)


def test_state_of_another_layout_is_refused_by_step(model, tmp_path):
    other = RWKVModel.load(build_fake_export(tmp_path / "wide", vocab=VOCAB, n_layer=N_LAYER, n_embd=8))
    with pytest.raises(RWKVEdgeError) as err:
        model.step([1], other.new_state(1))
    assert "does not fit this model" in one_line_error(err)


def test_state_of_same_layout_works_across_model_instances(export_dir, model):
    twin = RWKVModel.load(export_dir)
    state = model.new_state(1)
    a = model.step([4], state)
    b = twin.step([5], state)
    ref = model.new_state(1)
    model.step([4], ref)
    np.testing.assert_array_equal(b, model.step([5], ref))
    assert a.shape == b.shape


# --- bad input: one clear line each ------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(tmp_path / "nowhere")
    assert "no such directory" in one_line_error(err)


def test_directory_without_manifest(tmp_path):
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(tmp_path)
    assert "rwkv.json" in one_line_error(err)


def test_file_instead_of_directory(export_dir):
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(export_dir / "rwkv.json")
    assert "found a file" in one_line_error(err)


@pytest.mark.parametrize("tokens", [[VOCAB], [-1], [70000]])
def test_token_outside_vocab(model, tokens):
    with pytest.raises(RWKVEdgeError) as err:
        model.step(tokens, model.new_state(1))
    message = one_line_error(err)
    assert f"token id {tokens[0]}" in message and f"[0, {VOCAB})" in message


def test_token_outside_vocab_in_prompt(model):
    with pytest.raises(RWKVEdgeError) as err:
        model.feed([1, 2, 99, 3], model.new_state(1))
    assert "token id 99 at position (0, 2)" in one_line_error(err)


@pytest.mark.parametrize(
    "tokens, words",
    [
        ([1, 2], "for a batch of 3"),
        ([], "for a batch of 3"),
        ([1.0, 2.0, 3.0], "must be integers"),
    ],
)
def test_tokens_of_wrong_count_or_type(model, tokens, words):
    with pytest.raises(RWKVEdgeError) as err:
        model.step(tokens, model.new_state(3))
    assert words in one_line_error(err)


def test_feed_needs_2d_ids_for_a_batch(model):
    with pytest.raises(RWKVEdgeError) as err:
        model.feed([1, 2, 3], model.new_state(2))
    assert "[batch, seq]" in one_line_error(err)


def _arrays(batch=2, **override):
    arrays = {
        "att_x": np.zeros((batch, N_LAYER, N_EMBD), np.float32),
        "att_p": np.zeros((batch, N_LAYER, N_EMBD), np.float32),
    }
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize(
    "arrays, words",
    [
        (
            _arrays(att_x=np.zeros((2, 3, N_EMBD), np.float32)),
            "'att_x': expected shape [2, 2, 4] ([batch, 2, 4]), found [2, 3, 4]",
        ),
        (_arrays(att_p=np.zeros((3, N_LAYER, N_EMBD), np.float32)), "'att_p' has batch 3, but 'att_x' has batch 2"),
        (_arrays(att_x=np.zeros((2, N_LAYER), np.float32)), "'att_x': expected shape [batch, 2, 4], found [2, 2]"),
        (_arrays(att_x=np.zeros((2, N_LAYER, N_EMBD), np.float64)), "'att_x': expected dtype float32, found float64"),
        (_arrays(att_p=None), "missing tensor 'att_p'"),
        (_arrays(wkv=np.zeros(1)), "unknown tensor 'wkv'"),
    ],
)
def test_state_arrays_of_wrong_shape_batch_or_dtype(model, arrays, words):
    with pytest.raises(RWKVEdgeError) as err:
        model.state_from_numpy(arrays)
    assert words in one_line_error(err)


def test_state_of_wrong_batch(model):
    with pytest.raises(RWKVEdgeError) as err:
        model.state_from_numpy(_arrays(batch=2), batch=3)
    assert "has batch 2, expected 3" in one_line_error(err)
    with pytest.raises(RWKVEdgeError) as err:
        model.step([1, 2, 3], model.new_state(2))
    assert "batch of 2" in one_line_error(err)
    with pytest.raises(RWKVEdgeError) as err:
        model.step_numpy([1, 2, 3], _arrays(batch=2))
    assert "batch of 2" in one_line_error(err)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(RWKVEdgeError) as err:
            model.new_state(bad)
        one_line_error(err)


def test_unknown_provider_lists_valid_names(export_dir):
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(export_dir, provider="gpu")
    message = one_line_error(err)
    assert "'gpu'" in message and "cpu, cuda" in message and "CUDAExecutionProvider" in message


def test_provider_names():
    assert (
        resolve_provider("cpu")
        == resolve_provider("CPU")
        == resolve_provider("CPUExecutionProvider")
        == "CPUExecutionProvider"
    )


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is present here")
@pytest.mark.parametrize("name", ["cuda", "CUDAExecutionProvider"])
def test_missing_cuda_is_reported_not_replaced(export_dir, name):
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(export_dir, provider=name)
    message = one_line_error(err)
    assert "not available" in message and "onnxruntime-gpu" in message and "CPUExecutionProvider" in message


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a GPU"
)
def test_cuda_matches_cpu(export_dir, model):
    cuda = RWKVModel.load(export_dir, provider="cuda")
    assert cuda.device == "cuda"
    on_gpu, on_cpu = cuda.new_state(3), model.new_state(3)
    for ids in TOKENS:
        np.testing.assert_allclose(cuda.step(ids, on_gpu), model.step(ids, on_cpu), rtol=1e-5, atol=1e-5)


def test_missing_precision(export_dir):
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(export_dir, precision="int8")
    assert "step/fp32" in one_line_error(err)


def test_graph_and_manifest_disagree(tmp_path):
    d = build_fake_export(tmp_path / "x")
    manifest = json.loads((d / "rwkv.json").read_text())
    manifest["state"][1]["input"] = "att_pp"
    (d / "rwkv.json").write_text(json.dumps(manifest))
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(d)
    assert "no graph input 'att_pp'" in one_line_error(err)


def test_missing_or_corrupt_graph_file(tmp_path):
    d = build_fake_export(tmp_path / "x")
    (d / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(d)
    assert "ONNX Runtime cannot load it" in one_line_error(err)
    (d / "model.onnx").unlink()
    with pytest.raises(RWKVEdgeError) as err:
        RWKVModel.load(d)
    assert "missing" in one_line_error(err)


def test_runtime_never_imports_torch_or_exporter():
    code = (  # onnx too: a runtime-only install has numpy and onnxruntime
        "import sys, rwkv_edge.runtime as r\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx')\n"
        "       or m.startswith(('rwkv_edge.exporter', 'rwkv_edge.quant'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # also imports that only run lazily (inside functions): read every import statement
    for source in RUNTIME_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "torch", f"{source.name} imports {name}"
                assert not any(part in ("exporter", "quant") for part in name.split(".")), (
                    f"{source.name} imports {name}"
                )


def test_runtime_only_install(export_with_sequence, tmp_path):
    """Without onnx (a runtime-only install): the runtime loads and runs, the optimized cache saves its entry
    without a warning, and a command that needs onnx says so in one line."""
    blocked = tmp_path / "site" / "onnx"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError('No module named onnx', name='onnx')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = (
        "import sys, warnings\n"
        "from pathlib import Path\n"
        "from rwkv_edge.runtime import RWKVModel\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    m = RWKVModel.load(sys.argv[1], optimized_cache=sys.argv[2])\n"
        "assert not caught, [str(w.message) for w in caught]\n"
        "assert [p.name.split('-')[0] for p in Path(sys.argv[2]).iterdir()] == ['prefill']\n"
        "s = m.new_state(1)\n"
        "m.feed([1, 2, 3], s)\n"
        "print(m.step([4], s).shape)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(export_with_sequence), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    bench = subprocess.run(
        [sys.executable, "-m", "rwkv_edge.cli", "bench", str(export_with_sequence), "--no-memory"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bench.returncode == 2 and len(bench.stderr.strip().splitlines()) == 1, bench.stderr
    assert "needs the onnx package" in bench.stderr and "pip install onnx" in bench.stderr
