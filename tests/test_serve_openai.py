"""rwkv-export serve against the official openai client: a real server process on 127.0.0.1 serving the embedded
byte-level model, its answers checked against the runtime's own greedy generation in this process."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from serve_process import ServerProcess, tiny_export

from rwkv_edge.runtime import RWKVModel, State, generate
from rwkv_edge.serve.chat_template import ChatTemplate

MODEL = "tiny"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(export_dir):
    with ServerProcess(["serve", str(export_dir), "--threads", "1", "--no-spinning", "--model-name", MODEL]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def local(export_dir):
    """The same export opened in this process: what the server must answer."""
    model = RWKVModel.load(export_dir, threads=1)
    return model, model.load_tokenizer()


def greedy(local, prompt: str, max_tokens: int, stop=(), state=None) -> str:
    model, tokenizer = local
    chunks = generate(model, tokenizer, prompt, max_new_tokens=max_tokens, temperature=0, stop=list(stop), state=state)
    return "".join(chunks)


def metric(server, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(server.url("/metrics"), timeout=10).text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def health(server) -> dict:
    return httpx.get(server.url("/health"), timeout=10).json()


def test_models_and_health_name_the_served_model(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert health(server) == {"status": "ok", "model": MODEL, "precision": "fp32", "running": 0, "waiting": 0}


def test_completion_whole_and_streamed_give_the_runtime_greedy_text(client, local):
    prompt = "Elizabeth "
    expected = greedy(local, prompt, 24)
    assert expected and "\ufffd" not in expected  # the model writes text, so equal text means equal tokens

    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    assert whole.object == "text_completion" and whole.model == MODEL
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "length"
    usage = whole.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (len(prompt), 24, len(prompt) + 24)

    streamed = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(streamed)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == expected and len(texts) > 2  # piece by piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_renders_the_rwkv_world_template(client, local):
    messages = [
        {"role": "system", "content": "You write like Jane Austen."},
        {"role": "user", "content": "Tell me of\n\nElizabeth."},
    ]
    prompt = "System: You write like Jane Austen.\n\nUser: Tell me of\nElizabeth.\n\nAssistant:"
    assert ChatTemplate().render([(m["role"], m["content"]) for m in messages]) == prompt
    expected = greedy(local, prompt, 30, stop=["\n\nUser:"]).lstrip(" ")

    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(prompt)

    chunks = list(
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0, stream=True)
    )
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_a_stop_string_cuts_the_text_before_it(client):
    full = client.completions.create(model=MODEL, prompt="Mr. Darcy ", max_tokens=40, temperature=0).choices[0]
    stop = full.text[20:23]
    cut = client.completions.create(model=MODEL, prompt="Mr. Darcy ", max_tokens=40, temperature=0, stop=[stop, "@@"])
    assert cut.choices[0].text == full.text[: full.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_seed_repeats_a_sampled_completion(client):
    ask = dict(model=MODEL, prompt="Jane ", max_tokens=30, temperature=1.0, top_p=0.9)
    ask.update(presence_penalty=0.4, frequency_penalty=0.4)
    first = client.completions.create(**ask, seed=7).choices[0].text
    assert client.completions.create(**ask, seed=7).choices[0].text == first
    assert client.completions.create(**ask, seed=8).choices[0].text != first


def test_concurrent_greedy_requests_each_give_what_they_give_alone(client, server):
    names = ("Elizabeth", "Jane", "Lydia", "Kitty", "Mary", "Mr. Bennet", "Mrs. Bennet", "Mr. Darcy")
    prompts = [f"{name} said " for name in names]

    def ask(prompt: str) -> str:
        return client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    assert len(set(alone)) > 1
    steps, tokens = metric(server, "rwkv_decode_steps_total"), metric(server, "rwkv_generated_tokens_total")
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    # one step per token after each first one if every request ran alone; fewer steps: rows shared a step
    steps = metric(server, "rwkv_decode_steps_total") - steps
    tokens = metric(server, "rwkv_generated_tokens_total") - tokens
    assert tokens == 32 * len(prompts) and steps < tokens - len(prompts)


def test_a_cached_system_prompt_gives_the_cold_tokens(client, server, local):
    model, _ = local
    system = "You tell of the families of Meryton, their visits and their balls, in the manner of the novel. " * 4
    assert len(system) > 2 * model.prefill_chunk

    def chat(question: str):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)

    hits = metric(server, "rwkv_prompt_cache_hits_total")
    cold, warm = chat("Who lives at Netherfield?"), chat("Who lives at Netherfield?")
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens  # the whole prompt was cached
    assert warm.choices[0].message.content == cold.choices[0].message.content

    other = chat("Who is Mr. Collins?")  # the same system prompt: it starts from the system message's end
    prompt = ChatTemplate().render([("system", system), ("user", "Who is Mr. Collins?")])
    system_part = ChatTemplate().render_messages([("system", system)])[0]
    assert len(system_part) % model.prefill_chunk  # off the chunk grid: only the message's cache point is there
    assert other.usage.prompt_tokens_details.cached_tokens == len(system_part.encode())  # bytes tokenizer
    assert other.choices[0].message.content == greedy(local, prompt, 24, stop=["\n\nUser:"]).lstrip(" ")
    assert metric(server, "rwkv_prompt_cache_hits_total") == hits + 2


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    body = {"model": MODEL, "prompt": "Elizabeth ", "max_tokens": 100_000, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url("/v1/completions"), json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            data = [line for line in (next(lines) for _ in range(8)) if line.startswith("data: ")]
            assert data and health(server)["running"] == 1
    deadline = time.monotonic() + 10
    while health(server)["running"] != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds its row"
        time.sleep(0.05)
    generated = metric(server, "rwkv_generated_tokens_total")
    time.sleep(0.3)
    assert metric(server, "rwkv_generated_tokens_total") == generated  # nothing decodes for it any more


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_row(server):
    body = {"model": MODEL, "prompt": "Elizabeth ", "max_tokens": 100_000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url("/v1/completions"), json=body, timeout=1.0)
    deadline = time.monotonic() + 10
    while health(server)["running"] != 0:
        assert time.monotonic() < deadline, "the abandoned request still holds its row"
        time.sleep(0.05)


def test_states_download_continue_and_upload(client, server, local):
    model, _ = local
    first = client.completions.create(
        model=MODEL, prompt="Elizabeth ", max_tokens=8, temperature=0, extra_body={"return_state": True}
    )
    state_id = first.state_id
    download = httpx.get(server.url(f"/v1/states/{state_id}"), timeout=10)
    assert download.status_code == 200 and download.headers["content-type"] == "application/octet-stream"
    state = State.from_bytes(download.content, model)
    # the stored state has read the prompt and every generated token
    expected = greedy(local, " and", 16, state=state)
    assert expected == greedy(local, "Elizabeth " + first.choices[0].text + " and", 16)

    def go_on(from_id: str) -> str:
        ask = dict(model=MODEL, prompt=" and", max_tokens=16, temperature=0, extra_body={"state_id": from_id})
        return client.completions.create(**ask).choices[0].text

    assert go_on(state_id) == expected
    uploaded = httpx.post(server.url("/v1/states"), content=download.content, timeout=10)
    assert uploaded.status_code == 200 and uploaded.json()["object"] == "state"
    assert uploaded.json()["id"] != state_id and go_on(uploaded.json()["id"]) == expected


def test_metrics_are_prometheus_text(server):
    response = httpx.get(server.url("/metrics"), timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    names = {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}
    for name in (
        "rwkv_requests_running",
        "rwkv_requests_waiting",
        "rwkv_batch_size",
        "rwkv_generated_tokens_total",
        "rwkv_prompt_tokens_total",
        "rwkv_prompt_cache_hits_total",
        "rwkv_prompt_cache_misses_total",
        "rwkv_prompt_cache_bytes",
        "rwkv_time_to_first_token_seconds_bucket",
        "rwkv_http_requests_total",
    ):
        assert name in names
    assert metric(server, "rwkv_time_to_first_token_seconds_count") >= 1
