"""What `python -m zer02llm.serve` runs under its HTTP layer: OpenAI request bodies checked and turned into
prompts, and an Engine that decodes them on a fixed number of slots.

No web framework here (serve.py holds the FastAPI app), so all of it runs and is tested without the extra.

Concurrency: each slot is a worker thread decoding one request at a time at batch 1, through the same
`sampling.generate` that generate and eval use; requests beyond the slots wait in line. Batch-1 decoding
keeps a request's tokens independent of its neighbours (a batched matmul rounds differently from a
batch-1 one, which can flip a near-tie), so an answer equals eval's, alone or among others. torch releases
the GIL inside its kernels, so the slots decode in parallel, one core each at threads=1.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from zer02llm.inference import sampling
from zer02llm.config import SamplingOptions
from zer02llm.inference.loading import Loaded, make_generator
from zer02llm.tokenizer import StreamDecoder

log = logging.getLogger(__name__)

JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
              dict: "an object"}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class RequestError(Exception):
    """A request the server refuses: becomes OpenAI's {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _json_type(value: Any) -> str:
    return "null" if value is None else next((n for t, n in JSON_TYPES.items() if type(value) is t),
                                               type(value).__name__)


def _get(body: dict, name: str, kind: Union[type, tuple[type, ...]], default: Any = None) -> Any:
    """body[name] if it is of `kind` (JSON null or absent: default), else a RequestError naming it."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds += (int,)  # 1 is a valid number
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(JSON_TYPES[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RequestError(f"'{name}' must be {wanted}, got {_json_type(value)} {value!r}", name)
    return value


@dataclass
class Job:
    """One request's decoding: what the slot needs, and the flag that ends it early (client gone)."""

    prompt_ids: list[int]
    max_new_tokens: int
    params: sampling.SamplingParams
    stop: list[str] = field(default_factory=list)
    generator: Optional[torch.Generator] = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Finished:
    """The last event of a job that ran to its end: why it ended, and how many tokens it sampled."""

    finish_reason: str  # "stop": end of turn or a stop string; "length": max_tokens or model.max_seq_len
    completion_tokens: int


def check_body(body: Any, served_model: str) -> dict:
    """The request's JSON object, its `model` the served one (404 otherwise, as OpenAI answers)."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_json_type(body)}")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(f"'model' is required and must be a string (this server serves {served_model!r})", "model")
    if model != served_model:
        raise RequestError(f"The model '{model}' does not exist; this server serves '{served_model}' "
                           f"(GET /v1/models)", "model", status=404, code="model_not_found")
    return body


def chat_messages(body: dict) -> list[dict[str, str]]:
    """`messages` as the chat template takes them: role and text content (text parts joined)."""
    messages = _get(body, "messages", list)
    if not messages:
        raise RequestError("'messages' is required: a non-empty array of {\"role\", \"content\"} objects", "messages")
    plain = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object with 'role' and 'content', got {_json_type(message)}",
                               where)
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise RequestError(f"'{where}.role' is {role!r}; valid: {', '.join(CHAT_ROLES)}", f"{where}.role")
        if isinstance(content, list):  # content parts: only text ones carry anything for this model
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"'{where}.content': only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                   f"are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"'{where}.content' must be a string or an array of text parts, got "
                               f"{_json_type(content)}", f"{where}.content")
        plain.append({"role": CHAT_ROLES[role], "content": content})
    return plain


def completion_prompt(body: dict) -> str:
    """`prompt` of /v1/completions: a string, or an array holding one (n=1)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(f"'prompt' is required and must be a string (or an array of one string), got "
                           f"{_json_type(prompt)}", "prompt")
    return prompt


def check_prompt_length(prompt_ids: list[int], max_seq_len: int, param: str) -> None:
    if len(prompt_ids) >= max_seq_len:
        raise RequestError(f"This model's maximum context length is {max_seq_len} tokens (model.max_seq_len); "
                           f"the prompt has {len(prompt_ids)} tokens, which leaves no room for a reply. Shorten "
                           f"'{param}'.", param, code="context_length_exceeded")


def make_job(body: dict, prompt_ids: list[int], loaded: Loaded, defaults: SamplingOptions) -> Job:
    """The sampling settings of a request (its own, else the server's defaults) checked into a Job."""
    n = _get(body, "n", int, 1)
    if n != 1:
        raise RequestError(f"'n'={n}: this server returns one choice per request (n=1); send n requests instead",
                           "n")
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := _get(body, name, int)) is not None and value < 1:
            raise RequestError(f"'{name}'={value}: must be >= 1", name)
    max_tokens = _get(body, "max_completion_tokens", int) or _get(body, "max_tokens", int) or defaults.max_new_tokens
    temperature = _get(body, "temperature", float, defaults.temperature)
    if temperature < 0:
        raise RequestError(f"'temperature'={temperature}: must be >= 0 (0 is greedy)", "temperature")
    top_p = _get(body, "top_p", float, defaults.top_p)
    if not 0 < top_p <= 1:
        raise RequestError(f"'top_p'={top_p}: must be in (0, 1]", "top_p")
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"'stop' must be a non-empty string or an array of them, got {stop!r}", "stop")
    seed = _get(body, "seed", int, defaults.seed)
    if seed is not None and not -2 ** 63 <= seed < 2 ** 64:
        raise RequestError(f"'seed'={seed}: must fit in 64 bits", "seed")
    _get(body, "stream", bool)
    params = sampling.SamplingParams(float(temperature), defaults.top_k, float(top_p), defaults.repetition_penalty)
    generator = None
    if params.temperature > 0:  # a generator of its own: a seeded request repeats whatever else runs
        generator = make_generator(loaded, seed)
        if generator is None:
            generator = torch.Generator(loaded.model.tok_embeddings.weight.device)
            generator.seed()
    return Job(prompt_ids, max_tokens, params, stop, generator)


class StopMatcher:
    """Cuts the reply at the first stop string; holds back text that may be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent = stops, "", 0

    def push(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; returns (the text now safe to send, whether a stop string was reached)."""
        self.text += piece
        hits = [i for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]
        if hits:
            cut = min(hits)
            out, self.sent = self.text[self.sent:cut], cut
            return out, True
        hold = 0  # the longest unsent tail that begins some stop string
        for s in self.stops:
            hold = max([hold] + [k for k in range(1, min(len(s), len(self.text) - self.sent + 1))
                                 if self.text.endswith(s[:k])])
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent:end], end
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


class Engine:
    """A fixed number of decoding slots over one loaded model; submit() queues a Job (see make_job).

    Events go to `emit` from the slot's thread, in order: text pieces (str, whole characters only),
    then a Finished, or an Exception when decoding failed. A cancelled job emits nothing more.
    """

    def __init__(self, loaded: Loaded, slots: int, defaults: SamplingOptions):
        """defaults: the sampling settings of a request that does not give its own (the server's config)."""
        self.loaded, self.slots, self.defaults = loaded, slots, defaults
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="zer02llm-slot")
        self._lock = threading.Lock()
        self.busy = self.waiting = self.completed = self.cancelled = self.failed = self.peak_busy = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"slots": self.slots, "busy": self.busy, "waiting": self.waiting, "peak_busy": self.peak_busy,
                    "completed": self.completed, "cancelled": self.cancelled, "failed": self.failed}

    def submit(self, job: Job, emit: Callable[[object], None]) -> Future:
        with self._lock:
            self.waiting += 1
        return self._pool.submit(self._run, job, emit)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, change in changes.items():
                setattr(self, name, getattr(self, name) + change)
            self.peak_busy = max(self.peak_busy, self.busy)

    def _run(self, job: Job, emit: Callable[[object], None]) -> None:
        self._count(waiting=-1, busy=1)
        outcome = "cancelled"
        try:
            if not job.cancelled.is_set():
                finished = self._decode(job, emit)
                if finished is not None:
                    outcome = "completed"
                    emit(finished)
        except Exception as e:  # one request's failure: reported to it, the slot goes on
            log.exception("decoding failed")
            outcome = "failed"
            emit(e)
        finally:
            self._count(busy=-1, **{outcome: 1})

    def _decode(self, job: Job, emit: Callable[[object], None]) -> Optional[Finished]:
        """Sample the reply, emitting its text as it comes; None when the job was cancelled midway."""
        tokenizer = self.loaded.tokenizer
        decoder, matcher = StreamDecoder(tokenizer), StopMatcher(job.stop)
        model = self.loaded.decoder or self.loaded.model
        count, last = 0, None
        tokens = sampling.generate(model, job.prompt_ids, job.max_new_tokens, job.params, tokenizer.eos_id,
                                   job.generator)
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return None
                count, last = count + 1, token
                text, stopped = matcher.push(decoder.push(token))
                if text:
                    emit(text)
                if stopped:
                    return Finished("stop", count)
        finally:
            tokens.close()
        text, stopped = matcher.push(decoder.flush())
        text += "" if stopped else matcher.flush()
        if text:
            emit(text)
        return Finished("stop" if stopped or last == tokenizer.eos_id else "length", count)
