"""`python -m zer02llm.serve checkpoint=<dir> [host=127.0.0.1 port=8000]`: the OpenAI HTTP API over a checkpoint.

GET /v1/models, POST /v1/chat/completions (messages rendered with the chat template, as eval's chat mode),
POST /v1/completions (plain continuation, as eval's continuation mode), each with `stream` as server-sent
events in OpenAI's chunk format; GET /health tells the slots in use. FastAPI and uvicorn are an extra
(`pip install -e ".[serve]"`), imported only when the server starts; the engine is zer02llm/inference/serving.py.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at run time,
# and Request is imported inside create_app, lazily
import asyncio
import errno
import json
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, run_reporting_errors
from zer02llm.config import ConfigError, ServeConfig, register_configs
from zer02llm.inference.serving import (Engine, Finished, Job, RequestError, chat_messages, check_body, check_prompt_length,
                              completion_prompt, make_job)

register_configs()
INSTALL_HINT = 'pip install -e ".[serve]"'
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


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
    if cfg.slots < 1:
        problems.append(f"slots={cfg.slots}: must be >= 1 (requests decoded at once)")
    if cfg.compile and cfg.slots > 1:
        problems.append(f"compile=true with slots={cfg.slots}: the compiled decoder keeps one static KV cache, "
                        f"so it serves one request at a time; use slots=1, or compile=false")
    if cfg.log_level not in LOG_LEVELS:
        problems.append(f"log_level={cfg.log_level!r}: valid: {', '.join(LOG_LEVELS)}")
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


async def job_events(engine: Engine, job: Job) -> AsyncIterator[object]:
    """The job's events (text pieces, then a Finished or an Exception) as the slot emits them."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def emit(event: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone: the server is stopping
            job.cancelled.set()

    engine.submit(job, emit)
    try:
        while True:
            event = await queue.get()
            yield event
            if not isinstance(event, str):
                return
    finally:
        job.cancelled.set()  # a client gone mid-reply frees its slot at the next token


def _sse(data: object) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, model_name: str) -> Any:
    """The FastAPI app over an Engine."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from zer02llm.data.sft import ChatTemplate, TemplateError, TemplateRenderError

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

        def __init__(self, content: AsyncIterator[str], job: Job):
            super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            self.job = job

        async def stream_response(self, send: Any) -> None:
            try:
                await super().stream_response(send)
            finally:
                self.job.cancelled.set()

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                      code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:  # a bug: this request fails, not the server
        return _error(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    async def read_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON ({e})") from None
        return check_body(body, model_name)

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
        try:
            ids, _ = template.encode(messages, add_generation_prompt=True)
        except TemplateRenderError as e:
            raise RequestError(f"the chat template refused these messages: {e.reason}", "messages") from None
        check_prompt_length(ids, max_seq_len, "messages")
        return await respond(body, make_job(body, ids, loaded, engine.defaults), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_body(request)
        prompt = completion_prompt(body)
        ids = [loaded.tokenizer.bos_id] + loaded.tokenizer.encode(prompt)  # a document begins with bos
        check_prompt_length(ids, max_seq_len, "prompt")
        return await respond(body, make_job(body, ids, loaded, engine.defaults), chat=False)

    async def respond(body: dict, job: Job, chat: bool) -> Any:
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object such as {\"include_usage\": true}",
                               "stream_options")
        include_usage = bool((options or {}).get("include_usage"))
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name}

        def usage(finished: Finished) -> dict:
            return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": finished.completion_tokens,
                    "total_tokens": len(job.prompt_ids) + finished.completion_tokens}

        def choice(text: str | None, finish_reason: str | None, first: bool = False) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        if not body.get("stream"):
            pieces = []
            async for event in job_events(engine, job):
                if isinstance(event, Exception):
                    return _error(500, f"decoding failed: {type(event).__name__}: {event}", type="server_error")
                if isinstance(event, str):
                    pieces.append(event)
                else:
                    text = "".join(pieces)
                    answer = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                               "finish_reason": event.finish_reason} if chat else choice(text, event.finish_reason))
                    return {**head, "choices": [answer], "usage": usage(event)}
            return _error(500, "decoding ended without a reply", type="server_error")

        chunk = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        extra = {"usage": None} if include_usage else {}

        async def stream() -> AsyncIterator[str]:
            if chat:
                yield _sse({**chunk, "choices": [choice(None, None, first=True)], **extra})
            async for event in job_events(engine, job):
                if isinstance(event, Exception):  # the status is sent already: OpenAI's clients raise on this
                    yield _sse(RequestError(f"decoding failed: {type(event).__name__}: {event}",
                                            type="server_error").body())
                    return
                if isinstance(event, str):
                    yield _sse({**chunk, "choices": [choice(event, None)], **extra})
                else:
                    yield _sse({**chunk, "choices": [choice(None, event.finish_reason)], **extra})
                    if include_usage:
                        yield _sse({**chunk, "choices": [], "usage": usage(event)})
            yield "data: [DONE]\n\n"

        return JobStream(stream(), job)

    return app


def make_server(cfg: ServeConfig) -> Any:
    """A uvicorn.Server ready to run the API for cfg (checked, model loaded); its app holds the Engine."""
    from zer02llm.inference.loading import check_sampling, load_for_inference

    _, uvicorn = import_web()  # before the model loads: a missing extra is the first thing said
    check_config(cfg)
    check_sampling(cfg)
    check_port_free(cfg.host, cfg.port)
    loaded = load_for_inference(cfg.checkpoint, cfg.device, cfg.adapter, cfg.tokenizer_path, cfg.compile, cfg.threads)
    name = cfg.model_name or default_model_name(loaded.checkpoint)
    app = create_app(Engine(loaded, cfg.slots, cfg), name)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run(cfg: ServeConfig) -> None:
    server = make_server(cfg)
    engine = server.config.app.state.engine
    print(f"serving {engine.loaded.checkpoint} as model '{server.config.app.state.model_name}' on "
          f"http://{cfg.host}:{cfg.port}/v1 ({cfg.slots} slot{'s' if cfg.slots > 1 else ''}); Ctrl-C stops",
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
