"""`python -m zer02llm.serve`: the OpenAI API, spoken to with the official `openai` client.

The server runs in a thread of this process (the same make_server the command runs), so a test can slow
down, script or break the engine under it; one test starts the real command in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

openai = pytest.importorskip("openai", reason="the serve tests talk through the openai client: pip install -e '.[dev]'")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason='the server needs its extra: pip install -e ".[serve]"')

from zer02llm import eval as eval_cli  # noqa: E402
from zer02llm import serve  # noqa: E402
from zer02llm.config import ConfigError, EngineConfig, EvalConfig, ServeConfig  # noqa: E402
from zer02llm.inference.serving import StopMatcher  # noqa: E402
from zer02llm.tokenizer import Tokenizer  # noqa: E402

from conftest import TINY, run_module  # noqa: E402

MAX_SEQ_LEN = 256
PROMPTS = ["你好", "What colour is a frog?", "一加一等于几？", "Tell me a story.", "Hi", "星期三，天气很好",
           "Why is the sky blue?", "小明有三个苹果"]
CHINESE = "小明在公园里看见了一只黄色的小狗，🐶很高兴！"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny SFT run from scratch: enough to answer with varied text, some replies ending at end of turn."""
    work = tmp_path_factory.mktemp("serve")
    run_module("zer02llm.train", [*TINY, "mode=sft", f"model.max_seq_len={MAX_SEQ_LEN}", "data.seq_len=64",
                                  "train.batch_size=8", "train.max_steps=150", "train.lr=5e-3",
                                  "train.eval_interval=500", "hydra.run.dir=tinychat"], cwd=work)
    return work / "tinychat"


@contextlib.contextmanager
def running_server(cfg: ServeConfig) -> Iterator[dict]:
    """The API of `cfg` (port=0: the OS picks a free localhost port) in a thread, stopped on leaving."""
    srv = serve.make_server(cfg)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "srv": srv, "engine": srv.config.app.state.engine}
    finally:
        srv.should_exit = True
        thread.join(15)
        srv.config.app.state.engine.shutdown()


@pytest.fixture(scope="module")
def server(checkpoint):
    with running_server(ServeConfig(checkpoint=str(checkpoint), port=0, log_level="warning",
                                    engine=EngineConfig(max_batch=4, max_queue=64))) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def chat_session(checkpoint):
    """eval's chat mode, in this process: the reference the server must equal."""
    # the server applies no repetition penalty unless asked (OpenAI has none); eval's default is 1.1
    return eval_cli.Session(EvalConfig(checkpoint=str(checkpoint), chat=True, temperature=0.0, max_new_tokens=40,
                                       repetition_penalty=1.0, stream=False),
                            write=lambda text: None, note=lambda text: None)


def stream_chat(client, prompt: str, **kwargs) -> tuple[list[str], str, object]:
    """(content pieces, finish_reason, usage) of a streamed chat completion."""
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": prompt}],
                                                stream=True, **kwargs):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return pieces, finish, usage


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def health(server) -> dict:
    return httpx.get(server["url"] + "/health").json()


def health_once_idle(server, timeout: float = 3.0) -> dict:
    """/health once no request is busy any more (or after timeout seconds): a cancelled request leaves the
    engine at its next step, not at once."""
    deadline = time.monotonic() + timeout
    while health(server)["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return health(server)


def test_models_lists_the_run_directory_name(client):
    assert [m.id for m in client.models.list().data] == ["tinychat"]
    assert client.models.retrieve("tinychat").id == "tinychat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_equals_eval_token_for_token_streaming_or_not(client, chat_session):
    finishes = set()
    for prompt in PROMPTS[:4]:
        expected = chat_session.reply(prompt)
        answer = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=40)
        assert answer.choices[0].message.content == expected["response"]
        assert answer.choices[0].finish_reason == expected["finish_reason"]
        prompt_tokens = len(chat_session.prompt_ids(prompt))
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == \
            (prompt_tokens, expected["tokens"], prompt_tokens + expected["tokens"])
        pieces, finish, usage = stream_chat(client, prompt, temperature=0, max_tokens=40,
                                            stream_options={"include_usage": True})
        assert "".join(pieces) == expected["response"] and finish == expected["finish_reason"]
        assert len([p for p in pieces if p]) > 1  # streamed piece by piece, not in one go
        assert usage.completion_tokens == expected["tokens"] and usage.prompt_tokens == prompt_tokens
        finishes.add(finish)
    assert finishes == {"stop", "length"}, "the prompts should cover both ways a reply ends"
    _, _, usage = stream_chat(client, PROMPTS[0], temperature=0, max_tokens=5)
    assert usage is None  # usage only when stream_options.include_usage asks for it


def test_completions_continue_like_eval_continuation_mode(client, checkpoint):
    prompt = "Once upon a time"
    expected = eval_cli.Session(EvalConfig(checkpoint=str(checkpoint), chat=False, temperature=0.0,
                                           max_new_tokens=12, repetition_penalty=1.0, stream=False),
                                lambda t: None, lambda t: None)
    record = expected.reply(prompt)
    answer = client.completions.create(model="tinychat", prompt=prompt, temperature=0, max_tokens=12)
    assert answer.choices[0].text == record["response"] and answer.choices[0].finish_reason == record["finish_reason"]
    tokenizer = Tokenizer.load(checkpoint / "checkpoints" / "last" / "tokenizer")
    assert answer.usage.prompt_tokens == 1 + len(tokenizer.encode(prompt))  # bos + the prompt
    assert answer.usage.completion_tokens == record["tokens"]
    streamed = client.completions.create(model="tinychat", prompt=prompt, temperature=0, max_tokens=12, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == record["response"]


def test_stop_strings_cut_the_reply_where_they_begin(client, chat_session):
    reference = chat_session.reply(PROMPTS[1])["response"]
    stop = reference[3:5]
    expected = reference[:reference.index(stop)]
    answer = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": PROMPTS[1]}],
                                            temperature=0, max_tokens=40, stop=[stop, "never appears"])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (expected, "stop")
    pieces, finish, _ = stream_chat(client, PROMPTS[1], temperature=0, max_tokens=40, stop=stop)
    assert ("".join(pieces), finish) == (expected, "stop")


def test_stop_matcher_equals_a_naive_cut_for_any_split():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 14)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 2))]
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, len(text))))
        matcher, sent, stopped = StopMatcher(stops), "", False
        for piece in [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]:
            out, stopped = matcher.push(piece)
            sent += out
            if stopped:
                break
        sent += "" if stopped else matcher.flush()
        first = min((i for s in stops if (i := text.find(s)) >= 0), default=None)
        assert (sent, stopped) == ((text[:first], True) if first is not None else (text, False)), (text, stops, cuts)


def test_eight_concurrent_streams_each_equal_their_single_answer(client, server):
    # greedy and seeded sampling alike: every request samples from a generator of its own
    settings = [dict(temperature=0) if i % 2 == 0 else dict(temperature=1.0, top_p=0.95, seed=i) for i in range(8)]
    single = [stream_chat(client, p, max_tokens=60, **s)[:2] for p, s in zip(PROMPTS, settings)]
    together: list = [None] * 8
    barrier = threading.Barrier(8)

    def ask(i: int) -> None:
        barrier.wait()
        together[i] = stream_chat(client, PROMPTS[i], max_tokens=60, **settings[i])[:2]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [("".join(p), f) for p, f in together] == [("".join(p), f) for p, f in single]
    assert health(server)["peak_busy"] == 4  # a full batch decoded at once: the answers had neighbours


def test_chinese_streams_whole_characters_only(client, server, checkpoint, monkeypatch):
    """The scripted ids of CHINESE include tokens that cut a character in two; no chunk may carry U+FFFD."""
    tokenizer = Tokenizer.load(checkpoint / "checkpoints" / "last" / "tokenizer")
    ids = tokenizer.encode(CHINESE)
    assert any(not is_utf8(tokenizer.token_bytes(i)) for i in ids), "the text must hold tokens that split a character"

    script = [*ids, tokenizer.eos_id]
    sampler = server["engine"].llm.sampler
    monkeypatch.setattr(sampler, "sample", lambda logits, seqs: [script[s.num_output] for s in seqs])
    pieces, finish, usage = stream_chat(client, "讲个故事", max_tokens=100, stream_options={"include_usage": True})
    assert "".join(pieces) == CHINESE and finish == "stop" and usage.completion_tokens == len(ids) + 1
    assert all("\ufffd" not in p for p in pieces) and len([p for p in pieces if p]) > 3


def test_bad_requests_get_their_status_and_message(client, server):
    user = [{"role": "user", "content": "hi"}]
    refused = [  # (request, error class, status, words the message must hold)
        (dict(model="gpt-4", messages=user), openai.NotFoundError, 404, "The model 'gpt-4' does not exist"),
        (dict(model="tinychat", messages=user, temperature=-1), openai.BadRequestError, 400, "'temperature'=-1"),
        (dict(model="tinychat", messages=user, top_p=0), openai.BadRequestError, 400, "'top_p'=0: must be in (0, 1]"),
        (dict(model="tinychat", messages=user, top_p=1.5), openai.BadRequestError, 400, "'top_p'=1.5"),
        (dict(model="tinychat", messages=user, max_tokens=0), openai.BadRequestError, 400, "'max_tokens'=0"),
        (dict(model="tinychat", messages=user, n=0), openai.BadRequestError, 400, "'n'=0"),
        (dict(model="tinychat", messages=user, top_logprobs=3), openai.BadRequestError, 400, "'logprobs': true"),
        (dict(model="tinychat", messages=user, presence_penalty=3), openai.BadRequestError, 400,
         "'presence_penalty'=3"),
        (dict(model="tinychat", messages=user, stop=[""]), openai.BadRequestError, 400, "'stop'"),
        (dict(model="tinychat", messages=[]), openai.BadRequestError, 400, "'messages' is required"),
        (dict(model="tinychat", messages=[{"role": "robot", "content": "hi"}]), openai.BadRequestError, 400,
         "'messages[0].role' is 'robot'"),
        (dict(model="tinychat", messages=[{"role": "user", "content": "hello " * 300}]), openai.BadRequestError, 400,
         f"maximum context length is {MAX_SEQ_LEN} tokens"),
        (dict(model="tinychat", messages=user, extra_body={"temperature": "hot"}), openai.BadRequestError, 400,
         "'temperature' must be a number, got a string"),
    ]
    for request, error, status, words in refused:
        with pytest.raises(error) as caught:
            client.chat.completions.create(**request)
        assert caught.value.status_code == status and words in caught.value.message, (request, caught.value.message)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tinychat", prompt="hello " * 300)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "prompt"
    for raw, words in ((b"{bad", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                       (b'{"model": "tinychat"}', "'messages' is required")):
        response = httpx.post(server["url"] + "/v1/chat/completions", content=raw)
        error = response.json()["error"]
        assert response.status_code == 400 and words in error["message"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert httpx.get(server["url"] + "/v1/nothing").status_code == 404
    assert health(server)["status"] == "ok"


def test_a_failing_generation_is_a_500_and_the_server_goes_on(client, server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    failed = health(server)["failed"]
    monkeypatch.setattr(server["engine"].llm.runner, "run", broken)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 500 and "out of memory (simulated)" in caught.value.message
    with pytest.raises(openai.APIError, match="out of memory"):  # streaming: an error event after the headers
        stream_chat(client, "hi")
    monkeypatch.undo()

    def buggy(*args, **kwargs):
        raise TypeError("a bug in the request handling (simulated)")

    monkeypatch.setattr(serve, "make_params", buggy)  # a bug before decoding: the generic handler's 500 JSON
    response = httpx.post(server["url"] + "/v1/completions", json={"model": "tinychat", "prompt": "hi"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert "simulated" in response.json()["error"]["message"]
    monkeypatch.undo()
    assert client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3).choices[0].finish_reason in ("stop", "length")
    assert health(server)["failed"] == failed + 2 and health(server)["busy"] == 0


def test_a_client_that_disconnects_mid_stream_frees_its_place(client, server, monkeypatch):
    runner = server["engine"].llm.runner
    real = runner.run

    def slow(*args, **kwargs):  # 200 tokens would take 10 s: only a cancelled request ends within the deadline
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run", slow)
    before = health(server)
    stream = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=200, temperature=0.8, stream=True)
    next(iter(stream))
    assert health(server)["busy"] == 1
    stream.close()
    after = health_once_idle(server)
    assert after["busy"] == 0 and after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    monkeypatch.undo()
    assert client.completions.create(model="tinychat", prompt="Hi", max_tokens=3).usage.completion_tokens <= 3


def test_n_choices_share_the_prompt_and_each_equal_a_single_answer(client, server):
    single = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": PROMPTS[2]}],
                                            temperature=0, max_tokens=30)
    hits = health(server)["prefix_hit_tokens"]
    many = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": PROMPTS[2]}],
                                          temperature=0, max_tokens=30, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert {c.message.content for c in many.choices} == {single.choices[0].message.content}
    assert many.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert health(server)["prefix_hit_tokens"] > hits  # the prompt's KV computed once, reused by the others
    sampled = client.completions.create(model="tinychat", prompt="Once upon a time", max_tokens=20, n=2, seed=5,
                                        temperature=1.0)
    streamed = ["", ""]
    for chunk in client.completions.create(model="tinychat", prompt="Once upon a time", max_tokens=20, n=2, seed=5,
                                           temperature=1.0, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == [c.text for c in sampled.choices] and streamed[0] != streamed[1]


def test_logprobs_are_the_models_own(client):
    answer = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": PROMPTS[3]}],
                                            temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == entry.logprob  # greedy: the sampled token is the most likely
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    completion = client.completions.create(model="tinychat", prompt="Hi", temperature=0, max_tokens=5, logprobs=1)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == completion.usage.completion_tokens
    plain = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_omitted_sampling_values_are_openais_defaults(client, server, monkeypatch):
    engine, seen = server["engine"], []
    real = engine.submit

    def recording(prompt_ids, params, emit):
        seen.append(params)
        return real(prompt_ids, params, emit)

    monkeypatch.setattr(engine, "submit", recording)
    client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    p = seen[-1]
    assert (p.temperature, p.top_p, p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.n) == \
        (1.0, 1.0, 0.0, 0.0, 1.0, 1)


def test_a_full_queue_is_a_429_with_retry_after(client, server, monkeypatch):
    monkeypatch.setattr(server["engine"].llm.config, "max_queue", 0)
    response = httpx.post(server["url"] + "/v1/chat/completions",
                          json={"model": "tinychat", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error" and "busy" in response.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError):
        stream_chat(client, "hi")
    monkeypatch.undo()
    assert client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_a_client_that_disconnects_before_a_whole_reply_frees_its_place(server, checkpoint, monkeypatch):
    llm = server["engine"].llm
    real = llm.runner.run

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(llm.runner, "run", slow)
    word = Tokenizer.load(checkpoint / "checkpoints" / "last" / "tokenizer").encode("a")[0]
    monkeypatch.setattr(llm.sampler, "sample", lambda logits, seqs: [word] * len(seqs))  # never the end of turn
    before = health(server)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server["url"] + "/v1/chat/completions", timeout=0.5,
                   json={"model": "tinychat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                         "temperature": 0.8})
    after = health_once_idle(server)
    assert after["busy"] == 0 and after["cancelled"] == before["cancelled"] + 1
    assert after["kv_blocks_free"] == after["kv_blocks"]


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[serve\]"'):
        serve.import_web()


def test_bad_settings_are_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint=<dir> is required"):
        serve.make_server(ServeConfig())
    proc = run_module("zer02llm.serve", [f"checkpoint={tmp_path}", "engine.max_batch=0", "port=70000"], cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "engine.max_batch=0: must be an integer >= 1" in proc.stderr
    assert "port=70000" in proc.stderr


def test_the_command_serves_until_stopped(checkpoint, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "zer02llm.serve", f"checkpoint={checkpoint}", f"port={port}",
                             "model_name=tiny"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, models = time.monotonic() + 60, None
        while models is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert models is not None, f"the server did not answer:\n{proc.stdout.read() if proc.poll() else ''}"
        assert [m["id"] for m in models["data"]] == ["tiny"]
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert f"as model 'tiny' on http://127.0.0.1:{port}/v1" in output


def test_default_model_name_is_the_run_directory():
    assert serve.default_model_name(Path("/runs/tinychat/checkpoints/step_0000150")) == "tinychat"
    assert serve.default_model_name(Path("/exported/my-model")) == "my-model"
    assert serve.default_model_name(Path("/")) == "zer02llm"


def test_bench_serve_prints_its_table(server, tmp_path):
    """scripts/bench_serve.py against the running server: it completes and reports every level (no timing limits)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "bench_serve.py"),
                           "--url", server["url"], "--concurrency", "1", "3", "--requests", "3", "--max-tokens", "4",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TTFT median ms" in proc.stdout and "req/s" in proc.stdout
    levels = json.loads(out.read_text())["levels"]
    assert [(r["concurrency"], r["requests"]) for r in levels] == [(1, 3), (3, 3)]
    assert all(r["requests_per_s"] > 0 and 0 < r["mean_completion_tokens"] <= 4 for r in levels)


def test_a_port_in_use_is_refused_before_the_model_loads_naming_the_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # no checkpoint there: the port is checked first, so the answer comes before any loading
        with pytest.raises(ConfigError, match=rf"port={port}: 127.0.0.1:{port} is already in use"):
            serve.make_server(ServeConfig(checkpoint=str(tmp_path / "none"), port=port))
        proc = run_module("zer02llm.serve", [f"checkpoint={tmp_path / 'none'}", f"port={port}"], cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: port={port}: 127.0.0.1:{port} is already in use")


def test_request_shapes_the_api_allows_and_refuses(client, server):
    """Content as an array of text parts, an out-of-range seed, a non-object stream_options."""
    user = [{"role": "user", "content": "Hi there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    plain = client.chat.completions.create(model="tinychat", messages=user, temperature=0, max_tokens=12)
    joined = client.chat.completions.create(model="tinychat", messages=parts, temperature=0, max_tokens=12)
    assert joined.choices[0].message.content == plain.choices[0].message.content  # the parts, joined
    assert joined.usage.prompt_tokens == plain.usage.prompt_tokens
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    for request, words, param in (
            (dict(messages=image), "only text parts", "messages[0].content"),
            (dict(messages=user, seed=2 ** 64), f"'seed'={2 ** 64}: must fit in 64 bits", "seed"),
            (dict(messages=user, stream=True, stream_options="yes"), "'stream_options' must be an object",
             "stream_options")):
        response = httpx.post(server["url"] + "/v1/chat/completions", json={"model": "tinychat", **request})
        error = response.json()["error"]
        assert response.status_code == 400 and words in error["message"] and error["param"] == param, error
    assert health(server)["status"] == "ok"


def test_chat_without_a_chat_template_is_refused_and_completions_still_work(server):
    import copy
    import dataclasses

    from fastapi.testclient import TestClient

    from zer02llm.inference.serving import Engine

    loaded = server["engine"].loaded
    tokenizer = copy.copy(loaded.tokenizer)
    tokenizer.chat_template = None  # a pretrained model's tokenizer may have none
    engine = Engine(dataclasses.replace(loaded, tokenizer=tokenizer), EngineConfig(max_batch=1), ServeConfig(checkpoint="x"))
    try:
        with TestClient(serve.create_app(engine, "plain")) as http:
            response = http.post("/v1/chat/completions", json={"model": "plain", "messages": [
                {"role": "user", "content": "hi"}]})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert "this model cannot chat" in error["message"] and "/v1/completions" in error["message"]
            assert error["param"] == "messages"
            response = http.post("/v1/completions", json={"model": "plain", "prompt": "Once", "max_tokens": 3})
            assert response.status_code == 200 and response.json()["choices"][0]["text"] is not None
    finally:
        engine.shutdown()
