"""rwkv-export serve on bad input and faults: each answered with OpenAI's error body and the right status by a real
server process, which goes on serving; a full queue, SIGTERM mid-stream, uploads that do not fit, a custom chat
template, and the command's own one-line errors."""

import io
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from serve_process import ServerProcess, free_port, tiny_export

from rwkv_edge.runtime import RWKVModel, State

MODEL = "tiny"
MAX_PROMPT_TOKENS = 64
TEMPLATE = {"user": "Q: {content}\n", "assistant": "A: {content}\n", "generation": "A:", "stop": ["\nQ:"]}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    """One row, one waiting place, a short prompt limit and a Q/A chat template."""
    template = tmp_path_factory.mktemp("template") / "qa.json"
    template.write_text(json.dumps(TEMPLATE))
    options = ["--max-batch", "1", "--max-waiting", "1", "--max-prompt-tokens", str(MAX_PROMPT_TOKENS)]
    args = ["serve", str(export_dir), "--threads", "1", "--no-spinning", "--model-name", MODEL, *options]
    with ServerProcess([*args, "--chat-template", str(template)]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def health(server) -> dict:
    return httpx.get(server.url("/health"), timeout=10).json()


def assert_openai_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def assert_still_serving(client) -> None:
    answer = client.completions.create(model=MODEL, prompt="Elizabeth ", max_tokens=4, temperature=0)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 4


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_json_is_a_400(server, client, path):
    response = httpx.post(server.url(path), content=b'{"model": "tiny", "prompt": ', timeout=10)
    assert_openai_error(response, 400, code="invalid_json")
    assert_openai_error(httpx.post(server.url(path), content=b"[1, 2]", timeout=10), 400)
    assert_still_serving(client)


@pytest.mark.parametrize(("path", "missing"), [("/v1/completions", "prompt"), ("/v1/chat/completions", "messages")])
def test_a_missing_prompt_or_messages_is_a_400(server, client, path, missing):
    response = httpx.post(server.url(path), json={"model": MODEL, "max_tokens": 4}, timeout=10)
    assert_openai_error(response, 400, param=missing, code="missing_required_parameter")
    empty = {"prompt": ""} if missing == "prompt" else {"messages": []}
    assert_openai_error(httpx.post(server.url(path), json={"model": MODEL, **empty}, timeout=10), 400, param=missing)
    assert_still_serving(client)


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="Hello", max_tokens=4)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hello"}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert_still_serving(client)


def test_a_prompt_longer_than_the_limit_is_a_413(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL, prompt="x" * (MAX_PROMPT_TOKENS + 1), max_tokens=4)
    assert e.value.status_code == 413 and e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * MAX_PROMPT_TOKENS}])
    assert e.value.status_code == 413 and e.value.param == "messages"
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", -0.1),
        ("top_p", 1.5),
        ("n", 2),
        ("max_tokens", 0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
        ("seed", -1),
    ],
)
def test_out_of_range_values_are_a_400_naming_the_parameter(client, param, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hello", **{param: value})
    assert e.value.param == param and str(value) in e.value.message and e.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], **{param: value})
    assert e.value.param == param
    assert_still_serving(client)


def test_features_this_server_lacks_are_a_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hello", logprobs=2)
    assert e.value.param == "logprobs" and e.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], response_format={"type": "json_object"}
        )
    assert e.value.param == "response_format"
    assert_still_serving(client)


def test_a_full_queue_is_a_429_with_retry_after(server, client):
    body = {"model": MODEL, "prompt": "Elizabeth ", "max_tokens": 100_000, "stream": True}
    with httpx.Client(timeout=30) as running, httpx.Client(timeout=30) as waiting:
        with running.stream("POST", server.url("/v1/completions"), json=body) as first:
            lines = first.iter_lines()  # kept: a dropped line iterator closes the connection
            line = next(line for line in lines if line.startswith("data: "))
            assert "choices" in json.loads(line.removeprefix("data: "))  # a token: it holds the one row
            with waiting.stream("POST", server.url("/v1/completions"), json=body) as second:
                assert second.status_code == 200
                deadline = time.monotonic() + 10
                while health(server)["waiting"] != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                with pytest.raises(openai.RateLimitError) as e:
                    client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
                assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
                assert e.value.code == "queue_full"
    deadline = time.monotonic() + 10
    while (h := health(server))["running"] or h["waiting"]:
        assert time.monotonic() < deadline, "the abandoned streams still hold the engine"
        time.sleep(0.05)
    assert_still_serving(client)


def test_unsupported_content_and_roles_are_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "42", "tool_call_id": "1"}])
    assert e.value.param == "messages[0].role"
    image = {"type": "image_url", "image_url": {"url": "http://example.invalid/a.png"}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [image]}])
    assert e.value.param == "messages[0].content[0].type"
    assert_still_serving(client)


@pytest.fixture(scope="module")
def good_state(server, client, export_dir) -> bytes:
    answer = client.completions.create(
        model=MODEL, prompt="Elizabeth ", max_tokens=2, temperature=0, extra_body={"return_state": True}
    )
    return httpx.get(server.url(f"/v1/states/{answer.state_id}"), timeout=10).content


def _rewritten(data: bytes, change) -> bytes:
    """The .npz with change(name, value) applied to each entry (metadata and tensors)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        entries = {name: change(name, npz[name]) for name in npz.files}
    out = io.BytesIO()
    np.savez(out, **entries)
    return out.getvalue()


def _other_model(name: str, value: np.ndarray) -> np.ndarray:
    if name.startswith("state."):
        return value
    meta = json.loads(str(value[()]))
    meta["architecture"]["n_layer"] += 1
    return np.array(json.dumps(meta))


def _wrong_shape(name: str, value: np.ndarray) -> np.ndarray:
    return value[..., :-1] if name.startswith("state.") else value


def test_uploaded_states_that_do_not_fit_are_a_400(server, client, export_dir, good_state):
    model = RWKVModel.load(export_dir, threads=1)
    two_rows = State.concat([State.from_bytes(good_state, model)] * 2).to_bytes()
    for data, says in [
        (_rewritten(good_state, _other_model), "n_layer=4"),
        (_rewritten(good_state, _wrong_shape), "expected shape"),
        (two_rows, "batch 2"),
        (b"not an npz", "not an rwkv-edge state"),
    ]:
        error = assert_openai_error(httpx.post(server.url("/v1/states"), content=data, timeout=10), 400)
        assert says in error["message"] and error["code"] == "invalid_state"
    assert httpx.post(server.url("/v1/states"), content=good_state, timeout=10).status_code == 200
    too_big = httpx.post(server.url("/v1/states"), content=bytes(2 << 20), timeout=10)  # the tiny model's: 40 kB
    assert_openai_error(too_big, 413, code="state_too_large")
    assert_openai_error(httpx.get(server.url("/v1/states/nope"), timeout=10), 404, "state_id", "state_not_found")
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, extra_body={"state_id": "nope"})
    assert e.value.param == "state_id"
    assert_still_serving(client)


def test_an_unknown_path_answers_in_openai_form(server):
    assert_openai_error(httpx.get(server.url("/v1/embeddings"), timeout=10), 404, code="unknown_url")


def test_the_chat_template_file_shapes_the_prompt(client):
    messages = [{"role": "user", "content": "Who is Jane?"}]
    prompt = "Q: Who is Jane?\nA:"
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=["\nQ:"])
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.choices[0].message.content == plain.choices[0].text.lstrip(" ")
    assert reply.choices[0].finish_reason == plain.choices[0].finish_reason


def test_sigterm_lets_a_running_stream_finish_then_exits_0(export_dir):
    max_tokens = 2000
    body = {"model": MODEL, "prompt": "Elizabeth ", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    server = ServerProcess(["serve", str(export_dir), "--threads", "1", "--no-spinning", "--model-name", MODEL])
    server.start()
    try:
        with httpx.Client(timeout=60) as http, http.stream("POST", server.url("/v1/completions"), json=body) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            next(lines)
            server.terminate()
            deadline = time.monotonic() + 10
            while True:  # the listening socket closes at once, while the stream goes on
                try:
                    httpx.get(server.url("/health"), timeout=1)
                except httpx.TransportError:
                    break
                assert time.monotonic() < deadline, "the server still accepts connections after SIGTERM"
                time.sleep(0.05)
            rest = list(lines)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2].removeprefix("data: "))["usage"]["completion_tokens"] == max_tokens
        assert server.wait(30) == 0, server.log()
    finally:
        server.stop()


def _serve_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rwkv_edge.cli", "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def test_without_the_serve_extra_the_command_says_what_to_install(export_dir):
    # fastapi made unimportable, as in a runtime-only install
    code = "import sys; sys.modules['fastapi'] = None; from rwkv_edge.cli.app import main; main()"
    command = [sys.executable, "-c", code, "serve", str(export_dir), "--port", str(free_port())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: rwkv-export serve needs the serve extra: pip install 'rwkv-edge[serve]'"


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"user": "User: {text}"}), "whose one field is {content}"),
        (json.dumps({"usr": "User: {content}"}), "unknown key 'usr'"),
        (json.dumps({"stop": "\n"}), "'stop' must be a list"),
    ],
)
def test_a_bad_chat_template_is_one_line_before_the_model_loads(export_dir, tmp_path, template, says):
    path = tmp_path / "template.json"
    path.write_text(template)
    done = _serve_cli(str(export_dir), "--chat-template", str(path), "--port", str(free_port()))
    assert done.returncode == 2 and says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(f"error: chat template {path}")


def test_a_taken_port_is_one_line(export_dir, server):
    done = _serve_cli(str(export_dir), "--host", "127.0.0.1", "--port", str(server.port))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert f"cannot listen on 127.0.0.1:{server.port}" in done.stderr


def test_the_default_precision_is_the_fastest_for_the_batch():
    """int8-rowwise serves batches (its integer GEMM gets cheaper per row), weight-only int8 one stream at a time."""
    from types import SimpleNamespace

    from rwkv_edge.runtime.manifest import GraphSpec
    from rwkv_edge.serve.server import default_precision

    def manifest(*precisions):  # what default_precision reads of a manifest: its step graphs
        return SimpleNamespace(graphs=[GraphSpec(kind="step", file=f"model.{p}.onnx", precision=p) for p in precisions])

    assert default_precision(manifest("fp32", "int8", "int8-rowwise"), max_batch=16) == "int8-rowwise"
    assert default_precision(manifest("fp32", "int8", "int8-rowwise"), max_batch=1) == "int8"
    assert default_precision(manifest("fp32", "int8-rowwise"), max_batch=1) == "int8-rowwise"
    assert default_precision(manifest("fp32", "int8"), max_batch=16) == "int8"
    assert default_precision(manifest("fp32"), max_batch=16) == "fp32"


def test_without_a_precision_the_server_passes_over_one_refused_for_batches(monkeypatch, tmp_path):
    """Weight-only int8 refused for batches on this CPU (its batched rows differ from a row alone): the server
    says so in one line and serves the next precision; a precision asked for is never replaced."""
    from types import SimpleNamespace

    from rwkv_edge.runtime.engine import BatchedRowsDiffer
    from rwkv_edge.runtime.manifest import GraphSpec
    from rwkv_edge.serve import server

    graphs = [GraphSpec(kind="step", file=f"model.{p}.onnx", precision=p) for p in ("fp32", "int8")]
    monkeypatch.setattr(server, "load_manifest", lambda d: SimpleNamespace(graphs=graphs))

    def engine_of(options, precision, config):
        if precision == "int8":
            raise BatchedRowsDiffer("model.int8.onnx (MatMulNBits) computes a row of a batch otherwise")
        return f"engine of {precision}"

    monkeypatch.setattr(server, "_engine_of", engine_of)
    said = []
    assert server.open_engine(server.ServeOptions(export_dir=tmp_path), announce=said.append) == "engine of fp32"
    assert len(said) == 1 and said[0].startswith("not serving int8: ") and said[0].endswith("serving fp32")
    with pytest.raises(BatchedRowsDiffer):
        server.open_engine(server.ServeOptions(export_dir=tmp_path, precision="int8"), announce=said.append)
