"""What `python -m zer02llm.serve` runs under its HTTP layer: OpenAI request bodies checked and turned into
prompts and sampling settings, and the inference engine they go to.

No web framework here (serve.py holds the FastAPI app), so all of it runs and is tested without the extra.

Concurrency: the engine (zer02llm/inference/engine/, docs/serving.md) runs in a background thread; every
request joins its running batch between two decode steps, and each step decodes all of them in one
forward. Every request samples from a generator of its own, so a seeded request repeats whatever else
runs; greedy answers equal eval's (batch 1) token for token. Beyond engine.max_queue waiting requests a new
one is refused with 429 and Retry-After.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional, Union

from zer02llm.config import EngineConfig, SamplingOptions
from zer02llm.inference.engine.engine import LLMEngine, QueueFull
from zer02llm.inference.engine.sequence import Delta, SamplingParams, Sequence
from zer02llm.inference.engine.text import StopMatcher  # noqa: F401  (re-exported: the stop-string rule)
from zer02llm.inference.loading import Loaded

log = logging.getLogger(__name__)

JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
              dict: "an object"}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class RequestError(Exception):
    """A request the server refuses: becomes OpenAI's {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None, type: str = "invalid_request_error",
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type
        self.headers = headers

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


def bound_max_tokens(body: dict, params: SamplingParams, prompt_tokens: int, max_seq_len: int) -> SamplingParams:
    """params whose max_tokens fits the served context (model.max_seq_len) after the prompt: a max_tokens the
    client gave that does not fit is refused, as OpenAI does; the server's default is cut to what fits."""
    room = max_seq_len - prompt_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if value > room:
                raise RequestError(f"This model's maximum context length is {max_seq_len} tokens "
                                   f"(model.max_seq_len); the prompt has {prompt_tokens} tokens and '{name}'={value} "
                                   f"asks for up to {prompt_tokens + value} in all. Give '{name}' <= {max(room, 1)}, "
                                   f"or shorten the prompt.", name, code="context_length_exceeded")
            return params
    return params if params.max_tokens <= room else _replace(params, max_tokens=max(room, 1))


# OpenAI fields this server does not implement: refused by name, never silently ignored. Each maps to a test
# of the value that means "nothing asked" (absent or null always is)
UNSUPPORTED = {
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "functions": lambda v: v == [],
    "function_call": lambda v: v == "none",
    "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text" and len(v) == 1,
    "logit_bias": lambda v: v == {},
    "audio": lambda v: False,
    "modalities": lambda v: v == ["text"],
    "prediction": lambda v: False,
}


def refuse_unsupported(body: dict) -> None:
    """A 400 naming the first OpenAI field this server cannot honour (instead of a 200 that ignores it)."""
    for name, harmless in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and not harmless(value):
            raise RequestError(f"'{name}'={json.dumps(value)[:200]} is not supported by this server (a plain text "
                               f"model: no tools or function calls, no structured output, no logit_bias, no audio); "
                               f"omit '{name}'", name, code="unsupported_parameter")


MAX_N = 16  # choices per request (n)


def make_params(body: dict, defaults: SamplingOptions, chat: bool) -> SamplingParams:
    """The sampling settings of a request: its own, else the server's defaults (OpenAI's unless configured)."""
    n = _get(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise RequestError(f"'n'={n}: must be in 1..{MAX_N}", "n")
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := _get(body, name, int)) is not None and value < 1:
            raise RequestError(f"'{name}'={value}: must be >= 1", name)
    max_tokens = _get(body, "max_completion_tokens", int) or _get(body, "max_tokens", int) or defaults.max_new_tokens
    temperature = _get(body, "temperature", float, defaults.temperature)
    if not 0 <= temperature <= 2:
        raise RequestError(f"'temperature'={temperature}: must be in [0, 2] (0 is greedy)", "temperature")
    top_p = _get(body, "top_p", float, defaults.top_p)
    if not 0 < top_p <= 1:
        raise RequestError(f"'top_p'={top_p}: must be in (0, 1]", "top_p")
    top_k = _get(body, "top_k", int, defaults.top_k)  # not OpenAI's: vLLM's extra field
    if top_k < 0:
        raise RequestError(f"'top_k'={top_k}: must be >= 0 (0 turns it off)", "top_k")
    repetition = _get(body, "repetition_penalty", float, defaults.repetition_penalty)  # vLLM's extra field
    if repetition <= 0:
        raise RequestError(f"'repetition_penalty'={repetition}: must be > 0 (1 turns it off)", "repetition_penalty")
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        penalties[name] = _get(body, name, float, 0.0)
        if not -2 <= penalties[name] <= 2:
            raise RequestError(f"'{name}'={penalties[name]}: must be in [-2, 2]", name)
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError(f"'stop' must be a non-empty string or an array of up to 4 of them, got {stop!r}", "stop")
    seed = _get(body, "seed", int, defaults.seed)
    if seed is not None and not -2 ** 63 <= seed < 2 ** 64:
        raise RequestError(f"'seed'={seed}: must fit in 64 bits", "seed")
    _get(body, "stream", bool)
    logprobs = None
    if chat:  # chat: logprobs (bool) and top_logprobs (0..20)
        top = _get(body, "top_logprobs", int)
        if _get(body, "logprobs", bool, False):
            logprobs = top or 0
            if not 0 <= logprobs <= 20:
                raise RequestError(f"'top_logprobs'={top}: must be in 0..20", "top_logprobs")
        elif top is not None:
            raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:  # completions: logprobs (0..5), the number of top tokens
        logprobs = _get(body, "logprobs", int)
        if logprobs is not None and not 0 <= logprobs <= 5:
            raise RequestError(f"'logprobs'={logprobs}: must be in 0..5", "logprobs")
    if _get(body, "echo", bool, False):
        raise RequestError("'echo' is not supported: the reply never repeats the prompt", "echo")
    if _get(body, "best_of", int, 1) not in (1, n):
        raise RequestError("'best_of' is not supported (only best_of = n)", "best_of")
    return SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), top_k=top_k,
                          repetition_penalty=float(repetition), seed=seed, stop=stop, logprobs=logprobs, n=n,
                          **{k: float(v) for k, v in penalties.items()})


class Engine:
    """The serving side of the inference engine: requests in from the event loop, Deltas out on its thread."""

    def __init__(self, loaded: Loaded, config: EngineConfig, defaults: SamplingOptions):
        """defaults: the sampling settings of a request that does not give its own (the server's config)."""
        self.loaded, self.config, self.defaults = loaded, config, defaults
        self.llm = LLMEngine(loaded.model, loaded.tokenizer, config).start()

    def stats(self) -> dict[str, Any]:
        return self.llm.stats()

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               emit: Callable[[int, Delta], None]) -> list[Sequence]:
        """params.n sequences of the prompt (seeds seed, seed+1, ... when seeded); each Delta goes to
        emit(choice index, delta). All or none: a full queue is a 429 RequestError."""
        try:
            self.llm.check_request(prompt_ids, params)
        except ValueError as e:
            raise RequestError(str(e), "max_tokens" if "max_tokens" in str(e) else None) from None
        seqs: list[Sequence] = []
        try:
            for k in range(params.n):
                sample = params if params.n == 1 else _replace(params, n=1,
                                                               seed=None if params.seed is None else params.seed + k)
                seqs.append(self.llm.add_request(prompt_ids, sample, on_delta=lambda d, k=k: emit(k, d)))
        except QueueFull:
            for seq in seqs:
                seq.cancel()
            raise RequestError(f"the server is busy: {self.config.max_queue} requests are waiting already; retry in a "
                               f"moment", status=429, code="rate_limit_exceeded", type="rate_limit_error",
                               headers={"Retry-After": "1"}) from None
        return seqs

    def shutdown(self) -> None:
        self.llm.stop()


def _replace(params: SamplingParams, **changes: Any) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, **changes)
