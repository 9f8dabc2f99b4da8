"""The serving engine: batched rows equal the same requests alone (tokens, logits and state bit for bit), seeds,
the prompt cache, cancellation, limits, finish reasons, stored states, faults that must not stop the loop, shutdown.

Most tests run the fake model of tests/fake_model.py with its sequence graph (the CPU default: one session, decoding
through the sequence graph); the batching test also runs a tiny random RWKV-7 export."""

from __future__ import annotations

import dataclasses
import io
import json
import threading

import numpy as np
import pytest
from fake_model import build_fake_export

from rwkv_edge.runtime import RWKVEdgeError, RWKVModel, SamplingParams, State
from rwkv_edge.runtime.engine import Engine, EngineConfig, PromptTooLong, QueueFull, Request
from rwkv_edge.runtime.generate import decodable_logits

CHUNK = 4
DEFAULTS = EngineConfig()
WAIT = 30  # seconds a test waits for a result before it fails
GREEDY = SamplingParams(temperature=0)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, top_k=40)
PROMPTS = [list(np.random.default_rng(n).integers(0, 256, size=n)) for n in (3, 5, 8, 9, 13, 2, 7, 11)]


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("engine"), vocab=256, n_layer=2, n_embd=8, with_sequence=True)


@pytest.fixture()
def model(fake_dir):
    return RWKVModel.load(fake_dir, prefill_chunk=CHUNK, threads=1)


class CountingModel:
    """Stands in for RWKVModel, delegating to it: counts the prompt chunks fed and the rows stepped, and raises
    where told (a model call that fails)."""

    def __init__(self, model: RWKVModel):
        self._model = model
        self.feeds = 0
        self.step_rows: list[int] = []
        self.fail_feed_with: int | None = None  # a prompt token that makes feed raise
        self.fail_step_number: int | None = None  # the step call (1-based) that raises

    def __getattr__(self, name):
        return getattr(self._model, name)

    def feed(self, ids, state):
        if self.fail_feed_with is not None and self.fail_feed_with in np.asarray(ids).ravel():
            raise RuntimeError("feed failed on purpose")
        self.feeds += 1
        return self._model.feed(ids, state)

    def step(self, ids, state):
        self.step_rows.append(len(ids))
        if len(self.step_rows) == self.fail_step_number:
            raise RuntimeError("step failed on purpose")
        return self._model.step(ids, state)


def _run(model, requests: list[Request], config: EngineConfig = DEFAULTS):
    """Submit all at once; (completions, engine) once every request is done."""
    engine = Engine(model, model.load_tokenizer(), config)
    handles = [engine.submit(r) for r in requests]
    with engine:
        return [h.result(timeout=WAIT) for h in handles], engine


def _alone(model, request: Request, config: EngineConfig = DEFAULTS):
    return _run(model, [request], config)[0][0]


def _greedy_reference(model, prompt, n: int, state=None):
    """Tokens of greedy decoding with plain model calls (the prompt in the engine's chunks), and the state after
    the prompt and all n tokens."""
    state = model.new_state(1) if state is None else state
    logits = model.feed(prompt, state)
    tokens = []
    tokenizer = model.load_tokenizer()
    for _ in range(n):
        tokens.append(int(decodable_logits(logits, tokenizer)[0].argmax()))
        logits = model.step([tokens[-1]], state)
    return tokens, state


# --- batching -------------------------------------------------------------------------------------------------


def _rows_equal_alone(model):
    lengths = (20, 6, 13, 9, 17, 3, 11, 15)  # rows leave at different steps
    requests = [Request(p, max_tokens=n, sampling=GREEDY, return_state=True) for p, n in zip(PROMPTS, lengths)]
    config = EngineConfig(max_batch=8)
    together, engine = _run(model, requests, config)
    assert engine.stats().steps < sum(lengths)  # the rows were stepped together
    for request, batched in zip(requests, together):
        alone, alone_engine = _run(model, [request], config)
        assert batched.token_ids == alone[0].token_ids
        assert batched.finish_reason == "length" and batched.completion_tokens == request.max_tokens
        mine, theirs = engine.get_state(batched.state_id), alone_engine.get_state(alone[0].state_id)
        np.testing.assert_array_equal(mine.logits, theirs.logits)  # the logits of its last step, bit for bit
        for name, value in mine.to_numpy().items():
            np.testing.assert_array_equal(value, theirs.to_numpy()[name])
        tokens, _ = _greedy_reference(model, request.prompt_ids, request.max_tokens)
        assert batched.token_ids == tokens


def test_concurrent_greedy_rows_equal_each_request_alone(model):
    _rows_equal_alone(model)


def test_concurrent_greedy_rows_equal_alone_on_rwkv7(exported):
    _, export_dir = exported("7", 2, 64, 16, 301)  # vocab 301 > the bytes tokenizer's 256: ids masked too
    _rows_equal_alone(RWKVModel.load(export_dir, prefill_chunk=CHUNK, threads=1))


def test_concurrent_greedy_rows_equal_alone_on_int8_rowwise(exported, tmp_path):
    """The serving scheme is allowed batches, and keeps every request's output its own."""
    import shutil

    from rwkv_edge.quant.pipeline import quantize_export

    _, export_dir = exported("7", 2, 64, 16, 301)
    shutil.copytree(export_dir, tmp_path / "export")
    quantize_export(tmp_path / "export", "int8-rowwise", block_size=32)
    _rows_equal_alone(RWKVModel.load(tmp_path / "export", precision="int8-rowwise", prefill_chunk=CHUNK, threads=1))


def test_seeded_sampling_gives_the_same_text_alone_and_among_others(model):
    request = Request(PROMPTS[4], max_tokens=24, sampling=SAMPLED, seed=7)
    alone = _alone(model, request)
    others = [Request(p, max_tokens=30, sampling=SamplingParams(temperature=1.3)) for p in PROMPTS[:5]]
    among, _ = _run(model, others[:2] + [request] + others[2:], EngineConfig(max_batch=8))
    assert among[2].token_ids == alone.token_ids and among[2].text == alone.text
    reseeded = _alone(model, dataclasses.replace(request, seed=8))
    assert reseeded.token_ids != alone.token_ids


def test_prompt_runs_one_chunk_per_iteration_while_others_decode(model):
    counting = CountingModel(model)
    short = Request(PROMPTS[0], max_tokens=12, sampling=GREEDY)
    long = Request(list(range(40)), max_tokens=2, sampling=GREEDY)  # 10 chunks
    (a, b), _ = _run(counting, [short, long])
    # the short request joined after its one chunk; the long prompt's 10 chunks each came with a step of it
    assert counting.step_rows[:10] == [1] * 10 and counting.step_rows[10] == 2
    assert a.token_ids == _alone(model, short).token_ids and b.token_ids == _alone(model, long).token_ids


# --- prompt cache ---------------------------------------------------------------------------------------------


def test_cache_hit_gives_cold_tokens_and_skips_cached_chunks(model):
    prompt = list(np.random.default_rng(3).integers(0, 256, size=10))
    longer = prompt + [7, 8, 9]
    counting = CountingModel(model)
    engine = Engine(counting, model.load_tokenizer(), EngineConfig())
    with engine:
        first = engine.submit(Request(prompt, max_tokens=8, sampling=GREEDY, return_state=True)).result(WAIT)
        fed = counting.feeds
        again = engine.submit(Request(prompt, max_tokens=8, sampling=GREEDY, return_state=True)).result(WAIT)
        assert counting.feeds == fed  # the whole prompt was cached: no model call for it
        fed = counting.feeds
        extended = engine.submit(Request(longer, max_tokens=8, sampling=GREEDY, return_state=True)).result(WAIT)
        assert counting.feeds - fed == 2  # tokens 8..12 only: [8, 12) and [12, 13)
        stats = engine.stats()
    assert first.cached_tokens == 0 and again.cached_tokens == 10 and extended.cached_tokens == 8
    assert (stats.cache_hits, stats.cache_misses) == (2, 1)
    assert stats.cache_entries == 5 and stats.cache_bytes > 0  # 4, 8, 10; then 12, 13
    cold = {}
    for name, p in (("prompt", prompt), ("longer", longer)):
        cold_engine = Engine(model, model.load_tokenizer(), EngineConfig(state_cache_mb=0))
        with cold_engine:
            done = cold_engine.submit(Request(p, max_tokens=8, sampling=GREEDY, return_state=True)).result(WAIT)
            assert done.cached_tokens == 0 and cold_engine.stats().cache_entries == 0
            cold[name] = (done.token_ids, cold_engine.get_state(done.state_id))
    assert first.token_ids == again.token_ids == cold["prompt"][0]
    assert extended.token_ids == cold["longer"][0]
    for done, (_, cold_state) in ((again, cold["prompt"]), (extended, cold["longer"])):
        state = engine.get_state(done.state_id)
        np.testing.assert_array_equal(state.logits, cold_state.logits)
        for name, value in state.to_numpy().items():
            np.testing.assert_array_equal(value, cold_state.to_numpy()[name])


def test_cache_points_cut_the_prompt_and_a_hit_there_gives_cold_tokens(model):
    """A cache point (a chat message's end) off the chunk grid: the next question after the same system prompt
    resumes right there, with the tokens and state of a cold run cut at the same places."""
    system = list(np.random.default_rng(4).integers(0, 256, size=6))  # CHUNK 4: 6 is off the grid
    first, second = system + [1, 2, 3], system + [9, 8, 7]
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    with engine:
        engine.submit(Request(first, max_tokens=4, sampling=GREEDY, cache_points=(6,))).result(WAIT)
        hit = engine.submit(Request(second, max_tokens=4, sampling=GREEDY, cache_points=(6,), return_state=True))
        hit = hit.result(WAIT)
        uncut = engine.submit(Request(second, max_tokens=4, sampling=GREEDY)).result(WAIT)
    assert hit.cached_tokens == 6
    assert uncut.cached_tokens == 4  # cut elsewhere: only the entry at 4, whose computation it shares, is found
    cold_engine = Engine(model, model.load_tokenizer(), EngineConfig(state_cache_mb=0))
    with cold_engine:
        cold = cold_engine.submit(Request(second, max_tokens=4, sampling=GREEDY, cache_points=(6,), return_state=True))
        cold = cold.result(WAIT)
        cold_state = cold_engine.get_state(cold.state_id)
    assert hit.token_ids == cold.token_ids
    state = engine.get_state(hit.state_id)
    for name, value in state.to_numpy().items():
        np.testing.assert_array_equal(value, cold_state.to_numpy()[name])


def test_cache_stays_within_its_byte_budget(model):
    entry = sum(np.zeros(s.concrete_shape(1), dtype=s.dtype).nbytes for s in model.state_specs) + 4 * model.vocab_size
    budget = 2.5 * entry / (1 << 20)  # room for two entries
    requests = [Request(p, max_tokens=1, sampling=GREEDY) for p in PROMPTS[:4]]
    _, engine = _run(model, requests, EngineConfig(state_cache_mb=budget))
    stats = engine.stats()
    assert stats.cache_entries == 2 and stats.cache_bytes == 2 * entry


# --- cancellation, limits -------------------------------------------------------------------------------------


def test_cancel_from_the_callback_frees_the_row_before_the_next_step(model):
    counting = CountingModel(model)
    engine = Engine(counting, model.load_tokenizer(), EngineConfig())
    seen = []

    def cancel_at_three(event):
        seen.extend(event.token_ids)
        if len(seen) >= 3:
            cancelling.cancel()

    other = Request(PROMPTS[1], max_tokens=12, sampling=GREEDY)
    with engine:
        cancelling = engine.submit(Request(PROMPTS[0], max_tokens=1000, sampling=GREEDY), on_event=cancel_at_three)
        kept = engine.submit(other)
        cancelled = cancelling.result(WAIT)
        done = kept.result(WAIT)
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens == len(seen)
    # its first token came from its prompt, every other from a step; the other request's likewise
    assert sum(counting.step_rows) == (len(seen) - 1) + (other.max_tokens - 1)
    assert done.token_ids == _alone(model, other).token_ids


def test_cancel_from_another_thread_stops_a_running_request(model):
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    first_token = threading.Event()
    with engine:
        handle = engine.submit(Request(PROMPTS[2], max_tokens=100_000), on_event=lambda e: first_token.set())
        assert first_token.wait(WAIT)
        handle.cancel()
        completion = handle.result(WAIT)
        assert engine.stats().running == 0
    assert completion.finish_reason == "cancelled" and 0 < completion.completion_tokens < 100_000


def test_queue_full_and_prompt_too_long(model):
    engine = Engine(model, model.load_tokenizer(), EngineConfig(max_waiting=2, max_prompt_tokens=5))
    queued = [engine.submit(Request([1, 2, 3, 4, 5])) for _ in range(2)]  # not started: they wait
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        engine.submit(Request([1]))
    with pytest.raises(PromptTooLong, match="6 tokens; this engine takes at most 5"):
        engine.submit(Request([1, 2, 3, 4, 5, 6]))
    assert engine.stats().waiting == 2
    engine.shutdown()  # never started: what waits is cancelled
    assert [h.result(WAIT).finish_reason for h in queued] == ["cancelled", "cancelled"]


def test_bad_requests_are_refused_with_one_line(model):
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    for make, match in (
        (lambda: Request([]), "non-empty list"),
        (lambda: Request([1], max_tokens=-1), "max_tokens"),
        (lambda: Request([1], stop=("",)), "non-empty text"),
        (lambda: engine.submit(Request([300])), "outside the model's vocabulary"),
        (lambda: engine.submit(Request([1], state_id="nope")), "unknown state_id"),
    ):
        with pytest.raises(RWKVEdgeError, match=match) as e:
            make()
        assert "\n" not in str(e.value)


# --- finish reasons -------------------------------------------------------------------------------------------


def test_stop_strings_stop_ids_and_max_tokens(model):
    full = _alone(model, Request(PROMPTS[3], max_tokens=40, sampling=GREEDY))
    assert full.finish_reason == "length" and full.completion_tokens == 40
    stop = full.text[6:8]
    cut = _alone(model, Request(PROMPTS[3], max_tokens=40, sampling=GREEDY, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text and cut.token_ids == full.token_ids[: cut.completion_tokens]
    stop_id = full.token_ids[5]
    k = full.token_ids.index(stop_id)
    before = model.load_tokenizer().decode(full.token_ids[:k])
    # a stop string that its last character might begin holds that character back: the stop id releases it
    held = (before[-1] + "\x01\x02",)
    by_id = _alone(model, Request(PROMPTS[3], max_tokens=40, sampling=GREEDY, stop=held, stop_token_ids=(stop_id,)))
    assert by_id.finish_reason == "stop" and by_id.token_ids == full.token_ids[: k + 1]
    assert by_id.text == before
    short = _alone(model, Request(PROMPTS[3], max_tokens=7, sampling=GREEDY))
    assert short.finish_reason == "length" and short.token_ids == full.token_ids[:7]


def test_events_carry_the_text_and_the_ids(model):
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    with engine:
        handle = engine.submit(Request(list(b"Hello, world"), max_tokens=25, sampling=GREEDY))
        events = list(handle)
    *tokens, last = events
    assert last.kind == "done" and all(e.kind == "token" and e.text for e in tokens)
    assert "".join(e.text for e in tokens) == last.completion.text
    assert [t for e in tokens for t in e.token_ids] == last.completion.token_ids
    assert last.completion.time_to_first_token_s > 0 and engine.stats().time_to_first_token_s


# --- stored states ------------------------------------------------------------------------------------------


def test_returned_state_continues_the_conversation(model):
    prompt, reply = PROMPTS[4], [10, 32, 65, 66]
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    with engine:
        first = engine.submit(Request(prompt, max_tokens=6, sampling=GREEDY, return_state=True)).result(WAIT)
        second = engine.submit(Request(reply, max_tokens=6, sampling=GREEDY, state_id=first.state_id)).result(WAIT)
        downloaded = engine.get_state(first.state_id).to_bytes()
        uploaded_id = engine.put_state(State.from_bytes(downloaded, model))
        again = engine.submit(Request(reply, max_tokens=6, sampling=GREEDY, state_id=uploaded_id)).result(WAIT)
        stored = engine.get_state(first.state_id)
    tokens, state = _greedy_reference(model, prompt, 6)
    assert first.token_ids == tokens
    for name, value in state.to_numpy().items():  # it has consumed the prompt and every returned token
        np.testing.assert_array_equal(stored.to_numpy()[name], value)
    continued, _ = _greedy_reference(model, reply, 6, state=state)
    assert second.token_ids == continued and again.token_ids == continued


def test_max_tokens_zero_returns_the_prompt_state(model):
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    with engine:
        done = engine.submit(Request(PROMPTS[2], max_tokens=0, return_state=True)).result(WAIT)
        state = engine.get_state(done.state_id)
    reference = model.new_state(1)
    model.feed(PROMPTS[2], reference)
    assert done.finish_reason == "length" and done.token_ids == []
    np.testing.assert_array_equal(state.logits, reference.logits)


def test_uploaded_states_of_the_wrong_shape_or_model_are_refused(model, tmp_path):
    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    other = RWKVModel.load(build_fake_export(tmp_path / "other", vocab=256, n_layer=2, n_embd=4, with_sequence=True))
    good = model.new_state(1).to_bytes()
    with np.load(io.BytesIO(good)) as npz:
        parts = {k: npz[k] for k in npz.files}
    parts["state.att_x"] = parts["state.att_x"][:, :, :3]
    wrong_shape = io.BytesIO()
    np.savez(wrong_shape, **parts)
    meta = json.loads(str(parts["__meta__"][()]))
    assert meta["architecture"]["n_embd"] == 8
    for data, match in (
        (b"not a state", "uploaded state: not an rwkv-edge state file"),
        (other.new_state(1).to_bytes(), "state was saved for RWKV-7 .*n_embd=4.* but this model is .*n_embd=8"),
        (wrong_shape.getvalue(), "state tensor 'att_x': expected shape"),
    ):
        with pytest.raises(RWKVEdgeError, match=match) as e:
            State.from_bytes(data, model)
        assert "\n" not in str(e.value)
    with pytest.raises(RWKVEdgeError, match="one sequence; this one has batch 2"):
        engine.put_state(model.new_state(2))
    with pytest.raises(RWKVEdgeError, match="state does not fit this model"):
        engine.put_state(other.new_state(1))
    assert engine.get_state(engine.put_state(State.from_bytes(good, model))) is not None


# --- faults ---------------------------------------------------------------------------------------------------


def test_a_callback_that_raises_cancels_only_its_request(model):
    def broken(event):
        raise ValueError("the app's bug")

    engine = Engine(model, model.load_tokenizer(), EngineConfig())
    fine = Request(PROMPTS[5], max_tokens=10, sampling=GREEDY)
    with engine:
        bad = engine.submit(Request(PROMPTS[6], max_tokens=1000, sampling=GREEDY), on_event=broken)
        good = engine.submit(fine)
        assert bad.result(WAIT).finish_reason == "cancelled"
        assert good.result(WAIT).token_ids == _alone(model, fine).token_ids
        after = engine.submit(fine).result(WAIT)  # the loop still serves
    assert after.token_ids == good.result().token_ids


def test_a_failing_model_call_fails_its_requests_and_the_loop_serves_on(model):
    counting = CountingModel(model)
    counting.fail_feed_with = 255
    counting.fail_step_number = 3
    fine = Request(PROMPTS[5], max_tokens=6, sampling=GREEDY)
    engine = Engine(counting, model.load_tokenizer(), EngineConfig())
    # queued before the loop starts, so that both greedy rows are in the batch by the third step however the
    # threads are scheduled (a tiny model steps faster than this thread could submit between steps)
    poisoned = engine.submit(Request([255, 2], max_tokens=5))  # a chunk length of its own: it runs alone
    in_step = [engine.submit(Request(p, max_tokens=8, sampling=GREEDY)) for p in PROMPTS[:2]]
    with engine:
        with pytest.raises(RWKVEdgeError, match="RuntimeError: feed failed on purpose"):
            poisoned.result(WAIT)
        for handle in in_step:  # both ran in the third step
            with pytest.raises(RWKVEdgeError, match="RuntimeError: step failed on purpose"):
                handle.result(WAIT)
        after = engine.submit(fine).result(WAIT)
    assert after.token_ids == _alone(model, fine).token_ids


@pytest.mark.parametrize(
    "marker",
    [
        {"precision": "int8-dynamic"},
        {"precision": "int8", "needs": ["MatMulInteger"]},
        {"precision": "int8", "source": {"scheme": "int8-dynamic", "method": "dynamic"}},
    ],
)
def test_int8_dynamic_is_refused_for_batches(model, marker):
    graph = dataclasses.replace(model.decode_graph, precision=marker["precision"], needs=marker.get("needs"))
    model.decode_graph = graph
    if "source" in marker:
        model.manifest = dataclasses.replace(model.manifest, source={"quantization": {graph.file: marker["source"]}})
    with pytest.raises(RWKVEdgeError, match="int8-dynamic .* serve it with max_batch=1") as e:
        Engine(model, model.load_tokenizer(), EngineConfig(max_batch=2))
    assert "\n" not in str(e.value)
    Engine(model, model.load_tokenizer(), EngineConfig(max_batch=1))
    model.manifest = dataclasses.replace(model.manifest, source={"quantization": {graph.file: {"scheme": "int8"}}})
    model.decode_graph = dataclasses.replace(graph, precision="int8", needs=["com.microsoft.MatMulNBits:bits=8"])
    Engine(model, model.load_tokenizer(), EngineConfig(max_batch=2))  # weight-only int8 whose rows match alone


class RowsApartModel(CountingModel):
    """A MatMulNBits graph on a CPU where a row of a batch comes out otherwise than alone."""

    def __init__(self, model):
        super().__init__(model)
        self.decode_graph = dataclasses.replace(
            model.decode_graph, precision="int8", needs=["com.microsoft.MatMulNBits:bits=8"]
        )

    def step(self, ids, state):
        logits = super().step(ids, state)
        return logits + (1e-6 if len(ids) > 1 else 0.0)


def test_weight_only_int8_whose_batched_rows_differ_is_refused_for_batches(model):
    apart = RowsApartModel(model)
    with pytest.raises(RWKVEdgeError, match="MatMulNBits.* otherwise than the row alone .* max_batch=1") as e:
        Engine(apart, model.load_tokenizer(), EngineConfig(max_batch=2))
    assert "\n" not in str(e.value)
    Engine(apart, model.load_tokenizer(), EngineConfig(max_batch=1))


def test_requests_behind_a_shared_prefix_wait_for_its_cached_state(model):
    """Four prompts behind one 8-token prefix, queued together: the first computes the prefix while the others
    wait, then they start from its cached state and all four last chunks run as one batch; every answer is the one
    the request gets alone."""
    system = [int(t) for t in np.random.default_rng(9).integers(0, 256, size=8)]  # CHUNK 4: boundaries 4 and 8
    requests = [Request(system + [i, i + 1], max_tokens=5, sampling=GREEDY) for i in range(4)]
    counting = CountingModel(model)
    done, engine = _run(counting, requests)
    assert [d.cached_tokens for d in done] == [0, 8, 8, 8]
    assert engine.stats().prefill_chunks == 2 + 4  # the prefix's 2 chunks, then each prompt's last one
    assert counting.feeds == 2 + 1  # the four last chunks in one call
    for request, d in zip(requests, done):
        assert d.token_ids == _alone(model, request, EngineConfig(state_cache_mb=0)).token_ids


# --- shutdown -------------------------------------------------------------------------------------------------


def test_shutdown_drains_running_and_waiting_requests(model):
    counting = CountingModel(model)
    engine = Engine(counting, model.load_tokenizer(), EngineConfig(max_batch=2)).start()
    handles = [engine.submit(Request(p, max_tokens=15, sampling=GREEDY)) for p in PROMPTS[:5]]
    engine.shutdown(drain=True, timeout=WAIT)
    assert [h.result(0).finish_reason for h in handles] == ["length"] * 5
    assert max(counting.step_rows) == 2  # waiting requests start only as rows free up
    assert not engine._thread.is_alive()
    with pytest.raises(RWKVEdgeError, match="takes no new requests"):
        engine.submit(Request([1]))


def test_shutdown_without_drain_cancels_everything(model):
    engine = Engine(model, model.load_tokenizer(), EngineConfig(max_batch=1)).start()
    handles = [engine.submit(Request(p, max_tokens=100_000)) for p in PROMPTS[:3]]
    engine.shutdown(drain=False, timeout=WAIT)
    assert [h.result(0).finish_reason for h in handles] == ["cancelled"] * 3
    assert not engine._thread.is_alive() and engine._thread.daemon
