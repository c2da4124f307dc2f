"""`python -m zer02llm.serve` against hostile or careless clients (issue 21, Serving): bounded max_tokens,
unsupported OpenAI fields refused by name, deep JSON, body size, tokenization off the event loop, stalled
connections closed, and the long-prompt warning header.

A real uvicorn server in a thread of this process, on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason='the server needs its extra: pip install -e ".[serve]"')

from zer02llm import serve  # noqa: E402
from zer02llm.config import ConfigError, EngineConfig, ServeConfig  # noqa: E402

from conftest import TINY, run_module  # noqa: E402
from test_serve import running_server  # noqa: E402

MAX_SEQ_LEN = 256  # the served context (model.max_seq_len)
TRAINED = 64  # data.seq_len: the length the model was trained on
MAX_BODY = 64 * 1024
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A few steps of SFT: only the server's checks matter here, not the replies."""
    work = tmp_path_factory.mktemp("servehard")
    run_module("zer02llm.train", [*TINY, "mode=sft", f"model.max_seq_len={MAX_SEQ_LEN}", f"data.seq_len={TRAINED}",
                                  "train.batch_size=4", "train.max_steps=4", "train.eval_interval=500",
                                  "hydra.run.dir=tinychat"], cwd=work)
    return work / "tinychat"


@pytest.fixture(scope="module")
def server(checkpoint):
    cfg = ServeConfig(checkpoint=str(checkpoint), port=0, log_level="warning", max_body_bytes=MAX_BODY,
                      request_timeout_s=TIMEOUT_S, timeout_keep_alive_s=3, limit_concurrency=40,
                      engine=EngineConfig(max_batch=4, max_queue=16))
    with running_server(cfg) as running:
        yield running


def post(server, path: str, body: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(server["url"] + path, json=body, timeout=60, **kwargs)


def chat(**extra) -> dict:
    return {"model": "tinychat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    return error


# 1. max_tokens

def test_max_tokens_past_the_served_context_is_refused_as_openai_does(server):
    for name in ("max_tokens", "max_completion_tokens"):
        error = assert_error(post(server, "/v1/chat/completions", chat(**{"max_tokens": None, name: 10 ** 9})), 400,
                             name, str(MAX_SEQ_LEN), str(10 ** 9))
        assert error["code"] == "context_length_exceeded"
    prompt = {"model": "tinychat", "prompt": "Once upon", "max_tokens": MAX_SEQ_LEN}
    assert_error(post(server, "/v1/completions", prompt), 400, "max_tokens", "model.max_seq_len")
    # what fits is served
    assert post(server, "/v1/completions", {**prompt, "max_tokens": 3}).status_code == 200


# 2. unsupported fields

@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("response_format", {"type": "json_object"}),
    ("logit_bias", {"50": 100}),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
])
def test_unsupported_openai_fields_are_refused_by_name(server, field, value):
    error = assert_error(post(server, "/v1/chat/completions", chat(**{field: value})), 400, field, field,
                         "not supported")
    assert error["code"] == "unsupported_parameter"


def test_the_values_that_ask_for_nothing_are_accepted(server):
    answer = post(server, "/v1/chat/completions", chat(tools=[], tool_choice="none", response_format={"type": "text"},
                                                       logit_bias={}, modalities=["text"], functions=None))
    assert answer.status_code == 200, answer.text


# 3. deep JSON

def test_deeply_nested_json_is_a_400_not_a_500(server):
    depth = 30_000  # 60 kB, within this server's max_body_bytes; the default 1 MiB takes 100,000 levels
    body = b'{"model": "tinychat", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(server["url"] + "/v1/completions", content=body,
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert_error(response, 400, None, "too deeply")
    assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200


# 4. body size, tokenization off the event loop

def test_a_body_past_the_limit_is_a_413_by_content_length_or_while_read(server):
    big = {"model": "tinychat", "prompt": "a" * (MAX_BODY + 10), "max_tokens": 1}
    error = assert_error(post(server, "/v1/completions", big), 413, None, str(MAX_BODY), "max_body_bytes")
    assert error["code"] == "request_too_large"

    def chunks():  # no Content-Length: chunked, so only counting while reading can catch it
        for _ in range(8):
            yield b"x" * (MAX_BODY // 4)

    response = httpx.post(server["url"] + "/v1/completions", content=chunks(), timeout=60)
    assert_error(response, 413, None, "max_body_bytes")
    # under the limit: served
    assert post(server, "/v1/completions", {**big, "prompt": "Hi " * 20}).status_code == 200


def test_prompts_are_tokenized_off_the_event_loop(server, monkeypatch):
    tokenizer = server["engine"].loaded.tokenizer
    on_loop = []

    def running_loop() -> bool:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    encode, encode_batch = tokenizer.encode, tokenizer.encode_batch
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: (on_loop.append(running_loop()), encode(*a, **k))[1])
    monkeypatch.setattr(tokenizer, "encode_batch",
                        lambda *a, **k: (on_loop.append(running_loop()), encode_batch(*a, **k))[1])
    assert post(server, "/v1/completions", {"model": "tinychat", "prompt": "Hi", "max_tokens": 1}).status_code == 200
    assert post(server, "/v1/chat/completions", chat(max_tokens=1)).status_code == 200
    assert on_loop and not any(on_loop), on_loop  # each call ran in a worker thread, none on the event loop


# 5. stalled connections

def raw(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server["port"]), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    started, data = time.monotonic(), b""
    sock.settimeout(limit_s)
    while time.monotonic() - started < limit_s:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            return data, time.monotonic() - started
        data += chunk
    pytest.fail(f"the connection was still open after {limit_s} s (got {data[:200]!r})")


def test_half_sent_headers_are_closed_within_the_timeout(server):
    with raw(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: app")
        data, waited = read_until_closed(sock, TIMEOUT_S + 5)
    assert waited < TIMEOUT_S + 2
    with raw(server) as sock:  # nothing sent at all
        read_until_closed(sock, TIMEOUT_S + 5)
    assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200


def test_a_stalled_body_is_a_408_and_closed(server):
    with raw(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")
        data, waited = read_until_closed(sock, TIMEOUT_S + 5)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"request_timeout_s" in data


def test_the_server_takes_its_timeouts_and_concurrency_limit_from_the_config(server, tmp_path):
    config = server["srv"].config
    assert (config.timeout_keep_alive, config.limit_concurrency) == (3, 40)
    for key in ("max_body_bytes", "request_timeout_s", "timeout_keep_alive_s", "limit_concurrency"):
        with pytest.raises(ConfigError, match=key):
            serve.check_config(ServeConfig(checkpoint=str(tmp_path), **{key: 0}))


# 6. long prompts

def test_a_prompt_past_the_trained_length_is_warned_in_the_log_and_a_header(server, caplog):
    tokenizer = server["engine"].loaded.tokenizer
    prompt = "Once upon a time "
    while len(tokenizer.encode(prompt)) < TRAINED + 10:
        prompt += "there was a frog. "
    assert len(tokenizer.encode(prompt)) + 10 < MAX_SEQ_LEN
    body = {"model": "tinychat", "prompt": prompt, "max_tokens": 2}
    with caplog.at_level(logging.WARNING, logger="zer02llm.serve"):
        answer = post(server, "/v1/completions", body)
    assert answer.status_code == 200, answer.text
    warning = answer.headers[serve.WARNING_HEADER]
    assert f"trained on {TRAINED}" in warning, warning
    assert any(f"trained on {TRAINED}" in r.getMessage() for r in caplog.records)
    with httpx.stream("POST", server["url"] + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        assert f"trained on {TRAINED}" in s.headers[serve.WARNING_HEADER]
        s.read()
    short = post(server, "/v1/completions", {**body, "prompt": "Hi"})
    assert serve.WARNING_HEADER not in short.headers
