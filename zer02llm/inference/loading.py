"""Loading a trained model for generation and streaming its replies (shared by generate and eval)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from zer02llm import checkpoint as ckpt
from zer02llm.inference import sampling
from zer02llm.config import ConfigError, SamplingOptions, model_config_from_dict, model_problems
from zer02llm.hardware import set_threads
from zer02llm.model import Transformer
from zer02llm.model.lora import apply_lora, load_adapter, load_lora_state_dict, merge_lora
from zer02llm.tokenizer import StreamDecoder, Tokenizer


@dataclass
class Loaded:
    model: Transformer  # eval mode, LoRA adapters merged
    tokenizer: Tokenizer
    checkpoint: Path
    mode: str  # the training mode: "pretrain" or "sft" (an adapter's own when it records one)
    # data.seq_len of the run that trained the checkpoint (None when its config.json does not say):
    # positions past it were never trained, though model.max_seq_len allows them
    trained_seq_len: Optional[int] = None
    # compile=true: the compiled decoder over `model`, kept so that one compile serves every reply
    decoder: Optional[sampling.StaticDecoder] = None
    # the inference engine that stream_reply decodes through (made on first use, kept for the next replies)
    engine: Optional[Any] = None


@dataclass
class Reply:
    text: str
    num_tokens: int
    seconds: float
    # as OpenAI's API names it: "stop" when the stop token (eos / end of turn) was produced,
    # "length" when cut at max_new_tokens or at the model's max_seq_len
    finish_reason: str


def load_for_inference(checkpoint: str, device: str = "auto", adapter: Optional[str] = None,
                       tokenizer_path: Optional[str] = None, compile: bool = False,
                       threads: Optional[int] = None) -> Loaded:
    """A checkpoint (or run directory) as a model ready to sample from, adapters merged in; with compile,
    a StaticDecoder over it (compiled at the first reply)."""
    set_threads(threads, "threads")  # before the model is built: torch sizes its thread pool on first use
    path = ckpt.resolve_checkpoint(checkpoint)
    saved = ckpt.read_checkpoint_config(path)
    model_cfg = model_config_from_dict(saved["model"])
    if problems := model_problems(model_cfg):
        raise ConfigError(f"{path}/config.json holds an invalid model config: " + "; ".join(problems))
    model = Transformer(model_cfg)
    lora = saved.get("lora") or {}
    if lora.get("rank", 0) > 0:  # a LoRA run's checkpoint: base weights and adapters together
        apply_lora(model, lora["rank"], lora["alpha"], 0.0, lora["targets"])
    ckpt.load_weights(model, path)
    mode = saved.get("mode", "pretrain")
    seq_len = ((saved.get("config") or {}).get("data") or {}).get("seq_len")
    if adapter is not None:
        if lora.get("rank", 0) > 0:
            raise ConfigError(f"adapter={adapter}: checkpoint {path} already carries LoRA adapters")
        tensors, meta = load_adapter(adapter)
        if meta.get("model") not in (None, saved["model"]):
            ckpt.check_model_config(meta["model"], model_cfg, Path(adapter))
        apply_lora(model, meta["rank"], meta["alpha"], 0.0, meta["targets"])
        load_lora_state_dict(model, tensors)
        # an SFT adapter on a pretrained base chats, within the length it was tuned on; older adapters
        # record neither: the base's
        mode, seq_len = meta.get("mode", mode), meta.get("seq_len", seq_len)
    merge_lora(model)  # plain linear layers again: no adapter cost per token
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = Tokenizer.load(tokenizer_path or path / "tokenizer")
    trained = seq_len if isinstance(seq_len, int) and seq_len > 0 else None
    model = model.to(device).eval()
    decoder = sampling.StaticDecoder(model) if compile else None  # before any reply: an unfit device fails here
    return Loaded(model, tokenizer, path, mode, trained, decoder)


def check_sampling(options: SamplingOptions) -> sampling.SamplingParams:
    if not options.checkpoint:
        raise ConfigError("checkpoint=<dir> is required: a checkpoint (…/checkpoints/last) or a run directory")
    if options.max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens={options.max_new_tokens}: must be > 0")
    if options.threads is not None and options.threads < 0:
        raise ConfigError(f"threads={options.threads}: must be >= 1, or 0/null for torch's default (one per core)")
    return sampling.SamplingParams(options.temperature, options.top_k, options.top_p, options.repetition_penalty)


def stream_reply(loaded: Loaded, prompt_ids: list[int], options: SamplingOptions, params: sampling.SamplingParams,
                 write: Optional[Callable[[str], None]] = None, stop_id: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> Reply:
    """Sample a reply, handing each decoded piece to `write` as it comes (whole characters only).

    Through the inference engine (the same decoding as serve and LLM.generate), or, with compile=true,
    through the compiled batch-1 decoder (loaded.decoder)."""
    started = time.perf_counter()
    stop = loaded.tokenizer.eos_id if stop_id is None else stop_id
    if loaded.decoder is not None:
        return _stream_compiled(loaded, prompt_ids, options, params, write, stop, generator, started)
    from zer02llm.config import EngineConfig
    from zer02llm.inference.engine.engine import LLMEngine
    from zer02llm.inference.engine.sequence import SamplingParams

    model = loaded.model
    if len(prompt_ids) >= model.cfg.max_seq_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; model.max_seq_len={model.cfg.max_seq_len} "
                         f"leaves no room for new ones")
    needed = min(model.cfg.max_seq_len, len(prompt_ids) + options.max_new_tokens)
    if loaded.engine is None or loaded.engine.blocks.capacity < needed:
        block = EngineConfig.block_size
        budget = -(-max(needed, 2048) // block) * block
        loaded.engine = LLMEngine(model, loaded.tokenizer, EngineConfig(max_batch=1, kv_budget_tokens=budget))
    engine = loaded.engine
    request = SamplingParams(max_tokens=options.max_new_tokens, temperature=params.temperature, top_k=params.top_k,
                             top_p=params.top_p, repetition_penalty=params.repetition_penalty,
                             ignore_eos=stop != loaded.tokenizer.eos_id,
                             stop_token_ids=[stop] if stop != loaded.tokenizer.eos_id and stop >= 0 else [])
    pieces: list[str] = []

    def on_delta(delta) -> None:
        if delta.text:
            pieces.append(delta.text)
            if write is not None:
                write(delta.text)

    was_training = model.training
    model.eval()
    try:
        seq = engine.add_request(prompt_ids, request, on_delta=on_delta, force=True, generator=generator)
        engine.run_until_done()
    finally:
        model.train(was_training)
    if seq.finish_reason == "error":
        raise seq.error
    return Reply("".join(pieces), seq.num_output, time.perf_counter() - started, seq.finish_reason)


def _stream_compiled(loaded: Loaded, prompt_ids: list[int], options: SamplingOptions, params: sampling.SamplingParams,
                     write: Optional[Callable[[str], None]], stop: int, generator: Optional[torch.Generator],
                     started: float) -> Reply:
    decoder = StreamDecoder(loaded.tokenizer)
    pieces: list[str] = []
    count, last = 0, None
    for token in sampling.generate(loaded.decoder, prompt_ids, options.max_new_tokens, params, stop, generator):
        count, last = count + 1, token
        pieces.append(decoder.push(token))
        if write is not None and pieces[-1]:
            write(pieces[-1])
    pieces.append(decoder.flush())
    if write is not None and pieces[-1]:
        write(pieces[-1])
    finish = "stop" if last is not None and last == stop else "length"
    return Reply("".join(pieces), count, time.perf_counter() - started, finish)


def truncation_note(reply: Reply, options: SamplingOptions, loaded: Loaded) -> Optional[str]:
    """A one-line marker for a reply cut short ("[truncated at max_new_tokens=N]"), None for a finished one."""
    if reply.finish_reason != "length":
        return None
    if reply.num_tokens < options.max_new_tokens:  # sampling stopped earlier: the context was full
        return f"[truncated at model.max_seq_len={loaded.model.cfg.max_seq_len}]"
    return f"[truncated at max_new_tokens={options.max_new_tokens}]"


def trained_context(loaded: Loaded) -> int:
    """The longest prompt and reply the model saw in training: its data.seq_len, within model.max_seq_len."""
    max_seq_len = loaded.model.cfg.max_seq_len
    return min(loaded.trained_seq_len or max_seq_len, max_seq_len)


def long_prompt_note(prompt_tokens: int, loaded: Loaded) -> Optional[str]:
    """A one-line warning for a prompt at or past the length the model was trained on (positions it never
    saw, though model.max_seq_len allows them), None otherwise; generate, eval and serve say the same."""
    context = trained_context(loaded)
    if prompt_tokens < context or context >= loaded.model.cfg.max_seq_len:
        return None
    return f"[the prompt has {prompt_tokens} tokens, the model was trained on {context}: expect a poor reply]"


def make_generator(loaded: Loaded, seed: Optional[int]) -> Optional[torch.Generator]:
    device = loaded.model.tok_embeddings.weight.device
    return torch.Generator(device).manual_seed(seed) if seed is not None else None
