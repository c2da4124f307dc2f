"""`python -m zer02llm.serve checkpoint=<dir> [host=127.0.0.1 port=8000]`: the OpenAI HTTP API over a checkpoint.

GET /v1/models, POST /v1/chat/completions (messages rendered with the chat template, as eval's chat mode),
POST /v1/completions (plain continuation, as eval's continuation mode), each with `stream` as server-sent
events in OpenAI's chunk format, `n` choices and `logprobs`; GET /health tells the engine's state. FastAPI and
uvicorn are an extra (`pip install -e ".[serve]"`), imported only when the server starts; requests are checked in
zer02llm/inference/serving.py and decoded by the inference engine (zer02llm/inference/engine/, docs/serving.md).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at run time,
# and Request is imported inside create_app, lazily
import asyncio
import errno
import json
import logging
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, run_reporting_errors
from zer02llm.config import ConfigError, ServeConfig, engine_problems, register_configs
from zer02llm.inference.serving import (Engine, RequestError, bound_max_tokens, chat_messages, check_body,
                                        check_prompt_length, completion_prompt, make_params, refuse_unsupported)

register_configs()
INSTALL_HINT = 'pip install -e ".[serve]"'
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
WARNING_HEADER = "X-Zer02llm-Warning"  # a prompt past the trained length (docs/serving.md, Limits)
log = logging.getLogger("zer02llm.serve")


def import_web() -> tuple[Any, Any]:
    """fastapi and uvicorn, or a ConfigError that says how to install them."""
    try:
        import fastapi
        import uvicorn
    except ImportError as e:
        raise ConfigError(f"python -m zer02llm.serve needs FastAPI and uvicorn, and {e.name or e} is not installed: "
                          f"{INSTALL_HINT} (or pip install fastapi uvicorn)") from None
    return fastapi, uvicorn


def check_config(cfg: ServeConfig) -> None:
    problems = []
    if not 0 <= cfg.port <= 65535:
        problems.append(f"port={cfg.port}: must be in 0..65535 (0: any free port)")
    problems += engine_problems(cfg.engine, "engine.")
    if cfg.compile:
        problems.append("compile=true: the server's engine decodes in batches; on CUDA it replays CUDA graphs "
                        "(engine.cuda_graphs=true, the default), so leave compile=false")
    if cfg.log_level not in LOG_LEVELS:
        problems.append(f"log_level={cfg.log_level!r}: valid: {', '.join(LOG_LEVELS)}")
    for key in ("max_body_bytes", "request_timeout_s", "timeout_keep_alive_s", "limit_concurrency"):
        if getattr(cfg, key) <= 0:
            problems.append(f"{key}={getattr(cfg, key)}: must be > 0")
    if cfg.model_name is not None and not cfg.model_name.strip():
        problems.append("model_name='': give a name, or null for the run directory's name")
    if problems:
        raise ConfigError("; ".join(problems))


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on before the model loads (uvicorn would find out only after,
    with its Errno 98). Bound as uvicorn binds it (SO_REUSEADDR): a port in TIME_WAIT still counts as free."""
    if port == 0:  # any free port: the OS picks one
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"host={host}: cannot be resolved ({e.strerror}); give an address such as 127.0.0.1 "
                          f"or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise ConfigError(f"host={host} port={port}: cannot listen there ({e.strerror})") from None
            raise ConfigError(f"port={port}: {host}:{port} is already in use by another process; choose another "
                              f"port (e.g. port={port + 1}, or port=0 for any free one) or stop that process") from None


def default_model_name(checkpoint: Path) -> str:
    """The run directory's name for …/<run>/checkpoints/<step>, else the checkpoint directory's."""
    name = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.name
    return name or "zer02llm"


def _error(status: int, message: str, type: str = "invalid_request_error", param: Any = None, code: Any = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(RequestError(message, param, status, code, type).body(), status_code=status)


class Job:
    """One HTTP request's sequences (n of them) in the engine, and their events as the engine emits them."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: Any):
        self.engine, self.prompt_ids, self.params = engine, prompt_ids, params
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        self.seqs: list = []
        self.seqs = engine.submit(prompt_ids, params, self._emit)

    def _emit(self, index: int, delta: Any) -> None:  # on the engine's thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, delta))
        except RuntimeError:  # the event loop is gone: the server is stopping
            self.cancel()

    def cancel(self) -> None:
        """Every sequence of the request leaves the batch at the next step (the client is gone)."""
        for seq in self.seqs:
            seq.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, Delta) until every choice finished; cancelled when the consumer stops early."""
        left = len(self.seqs)
        try:
            while left:
                index, delta = await self.queue.get()
                yield index, delta
                left -= delta.finished
        finally:
            self.cancel()


def _sse(data: object) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, model_name: str, max_body_bytes: int = 1 << 20, request_timeout_s: float = 30.0) -> Any:
    """The FastAPI app over an Engine. Bodies above max_body_bytes are a 413; a body not received within
    request_timeout_s is a 408."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from zer02llm.data.sft import ChatTemplate, TemplateError, TemplateRenderError

    from zer02llm.inference.loading import long_prompt_note

    loaded = engine.loaded
    max_seq_len = loaded.model.cfg.max_seq_len
    try:
        template = ChatTemplate(loaded.tokenizer)
    except TemplateError as e:  # completions still work; chat requests are told why not
        template, no_template = None, str(e)
    created = int(loaded.checkpoint.stat().st_mtime)
    app = FastAPI(title="zer02llm", summary=f"OpenAI-compatible API over {loaded.checkpoint}")
    app.state.engine, app.state.model_name = engine, model_name

    class JobStream(StreamingResponse):
        """An event stream whose job is cancelled when sending stops, however it stopped (client gone)."""

        def __init__(self, content: AsyncIterator[str], job: Job, headers: dict[str, str]):
            super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})
            self.job = job

        async def stream_response(self, send: Any) -> None:
            try:
                await super().stream_response(send)
            finally:
                self.job.cancel()

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                      code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:  # a bug: this request fails, not the server
        return _error(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    def too_large(size: str) -> RequestError:
        return RequestError(f"the request body is {size} bytes; this server takes at most {max_body_bytes} "
                            f"(serve's max_body_bytes)", status=413, code="request_too_large")

    async def receive_bytes(request: Request) -> bytes:
        """The body, refused (413) from its Content-Length before reading and again while reading."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise too_large(length)
        data, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise too_large(f"more than {max_body_bytes}")
            data.append(chunk)
        return b"".join(data)

    async def read_body(request: Request) -> dict:
        try:
            raw = await asyncio.wait_for(receive_bytes(request), request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"the request body did not arrive within {request_timeout_s:g} s (serve's "
                               f"request_timeout_s)", status=408, code="request_timeout") from None
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise RequestError("the request body nests arrays or objects too deeply to parse; a request needs "
                               "only a few levels") from None
        body = check_body(body, model_name)
        refuse_unsupported(body)
        return body

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "zer02llm"}]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict:
        check_body({"model": name}, model_name)
        return {"id": model_name, "object": "model", "created": created, "owned_by": "zer02llm"}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **engine.stats()}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request)
        messages = chat_messages(body)
        if template is None:
            raise RequestError(f"this model cannot chat: {no_template}; use /v1/completions", "messages")
        try:  # off the event loop: a long message must not stall every other client (and /health)
            ids, _ = await asyncio.to_thread(template.encode, messages, add_generation_prompt=True)
        except TemplateRenderError as e:
            raise RequestError(f"the chat template refused these messages: {e.reason}", "messages") from None
        check_prompt_length(ids, max_seq_len, "messages")
        return await respond(request, body, ids, make_params(body, engine.defaults, chat=True), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_body(request)
        prompt = completion_prompt(body)
        # a document begins with bos; tokenized off the event loop, as chat's messages
        ids = [loaded.tokenizer.bos_id] + await asyncio.to_thread(loaded.tokenizer.encode, prompt)
        check_prompt_length(ids, max_seq_len, "prompt")
        return await respond(request, body, ids, make_params(body, engine.defaults, chat=False), chat=False)

    def token_text(token_id: int) -> tuple[str, list[int]]:
        raw = loaded.tokenizer.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), list(raw)

    def logprobs_json(entries: Optional[list], chat: bool, offset: int = 0) -> Optional[dict]:
        """OpenAI's logprobs object of some tokens: chat's {"content": [...]}, completions' parallel lists."""
        if entries is None:
            return None
        if chat:
            content = []
            for e in entries:
                text, raw = token_text(e.token_id)
                top = [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in
                       ((*token_text(i), lp) for i, lp in e.top)]
                content.append({"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top})
            return {"content": content}
        tokens = [token_text(e.token_id)[0] for e in entries]
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{token_text(i)[0]: lp for i, lp in e.top} for e in entries], "text_offset": offsets}

    async def watch_disconnect(request: Request, job: Job) -> None:
        """Cancel the job as soon as the client goes (a non-streamed reply has nothing to send meanwhile)."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel()
                return

    async def respond(request: Request, body: dict, prompt_ids: list[int], params: Any, chat: bool) -> Any:
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object such as {\"include_usage\": true}",
                               "stream_options")
        include_usage = bool((options or {}).get("include_usage"))
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name}
        params = bound_max_tokens(body, params, len(prompt_ids), max_seq_len)
        headers = {}
        if note := long_prompt_note(len(prompt_ids), loaded):
            log.warning("%s %s", request.url.path, note)
            headers[WARNING_HEADER] = note.strip("[]")
        want_logprobs = params.logprobs is not None
        job = Job(engine, prompt_ids, params)  # a full queue: 429 here

        def usage(completion_tokens: int) -> dict:
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                    "total_tokens": len(prompt_ids) + completion_tokens}

        def failure(delta: Any) -> str:
            e = delta.error
            return f"decoding failed: {type(e).__name__}: {e}"

        if not body.get("stream"):
            texts, finishes, counts = [[] for _ in range(params.n)], [None] * params.n, [0] * params.n
            entries: list[list] = [[] for _ in range(params.n)]
            watcher = asyncio.ensure_future(watch_disconnect(request, job))
            try:
                async for index, delta in job.events():
                    if delta.finish_reason == "error":
                        return _error(500, failure(delta), type="server_error")
                    if delta.finish_reason == "cancelled":
                        return _error(499, "the request was cancelled", type="cancelled")
                    texts[index].append(delta.text)
                    entries[index] += delta.logprobs or []
                    counts[index] = delta.num_tokens
                    finishes[index] = delta.finish_reason or finishes[index]
            finally:
                watcher.cancel()
            choices = []
            for i in range(params.n):
                text, lp = "".join(texts[i]), logprobs_json(entries[i], chat) if want_logprobs else None
                if chat:
                    choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                                    "finish_reason": finishes[i]})
                else:
                    choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": finishes[i]})
            return JSONResponse({**head, "choices": choices, "usage": usage(sum(counts))}, headers=headers)

        chunk = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        extra = {"usage": None} if include_usage else {}

        def choice(index: int, text: Optional[str], finish_reason: Optional[str], first: bool = False,
                   logprobs: Optional[dict] = None) -> dict:
            if not chat:
                return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

        async def stream() -> AsyncIterator[str]:
            if chat:
                for i in range(params.n):
                    yield _sse({**chunk, "choices": [choice(i, None, None, first=True)], **extra})
            counts, offsets = [0] * params.n, [0] * params.n
            async for index, delta in job.events():
                if delta.finish_reason == "error":  # the status is sent already: OpenAI's clients raise on this
                    yield _sse(RequestError(failure(delta), type="server_error").body())
                    return
                if delta.finish_reason == "cancelled":
                    return
                counts[index] = delta.num_tokens
                lp = logprobs_json(delta.logprobs, chat, offsets[index]) if want_logprobs and delta.logprobs else None
                offsets[index] += len(delta.text)
                if delta.text or lp is not None:
                    yield _sse({**chunk, "choices": [choice(index, delta.text, None, logprobs=lp)], **extra})
                if delta.finished:
                    yield _sse({**chunk, "choices": [choice(index, None, delta.finish_reason)], **extra})
            if include_usage:
                yield _sse({**chunk, "choices": [], "usage": usage(sum(counts))})
            yield "data: [DONE]\n\n"

        return JobStream(stream(), job, headers)

    return app


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within timeout_s
    of its first byte or of its previous response (uvicorn alone waits forever for the rest of them)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        header_timer: Optional[asyncio.TimerHandle] = None

        def _waiting(self) -> bool:  # no request in progress: what arrives is (part of) the next one's headers
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self.header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expire(self) -> None:
            self.header_timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting() and self.header_timer is None:
                self._arm()
            super().data_received(data)
            if not self._waiting():  # the headers are in: the body has its own bound (read_body)
                self._disarm()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11


def make_server(cfg: ServeConfig) -> Any:
    """A uvicorn.Server ready to run the API for cfg (checked, model loaded); its app holds the Engine."""
    from zer02llm.inference.loading import check_sampling, load_for_inference

    _, uvicorn = import_web()  # before the model loads: a missing extra is the first thing said
    check_config(cfg)
    check_sampling(cfg)
    check_port_free(cfg.host, cfg.port)
    loaded = load_for_inference(cfg.checkpoint, cfg.device, cfg.adapter, cfg.tokenizer_path, cfg.compile, cfg.threads)
    name = cfg.model_name or default_model_name(loaded.checkpoint)
    app = create_app(Engine(loaded, cfg.engine, cfg), name, cfg.max_body_bytes, cfg.request_timeout_s)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5,
                            http=header_timeout_protocol(cfg.request_timeout_s),
                            timeout_keep_alive=cfg.timeout_keep_alive_s, limit_concurrency=cfg.limit_concurrency)
    return uvicorn.Server(config)


def run(cfg: ServeConfig) -> None:
    server = make_server(cfg)
    engine = server.config.app.state.engine
    print(f"serving {engine.loaded.checkpoint} as model '{server.config.app.state.model_name}' on "
          f"http://{cfg.host}:{cfg.port}/v1 (engine: max_batch={cfg.engine.max_batch}, "
          f"kv_budget_tokens={cfg.engine.kv_budget_tokens}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        engine.shutdown()


@hydra.main(version_base="1.3", config_path=None, config_name="serve")
def main(dict_cfg) -> None:
    run_reporting_errors(run, OmegaConf.to_object(dict_cfg))


def cli() -> None:
    """Console entry: free-text values (paths, the model name) need no Hydra quoting."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], ("checkpoint", "adapter", "tokenizer_path", "model_name"))
    main()


if __name__ == "__main__":
    cli()
