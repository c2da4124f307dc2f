"""A checkpoint as an lm-evaluation-harness model, `zer02llm`: any lm-eval task runs on it without an export.

    zer02llm-lm-eval run --model zer02llm --model_args checkpoint=outputs/<date>/<time> --tasks hellaswag
    python -m zer02llm.evals.lm_eval_model run --model zer02llm --model_args checkpoint=... --tasks ...

lm-eval finds models only among those registered in its process, so these commands register `zer02llm` and hand
the rest of the command line to lm-eval's own; from Python, importing this module does the registering
(`lm_eval.simple_evaluate(model="zer02llm", model_args="checkpoint=...")`).

The bos token is handled as our training did: every document began with it, so every context is read after bos
(a text that already begins with it, as a chat template's render does, gets no second one), and a rolling
log-likelihood scores a text's tokens after bos. lm-eval's `hf` model gives the same numbers on an export only
with `add_bos_token=True` (docs/evaluation.md). Requests go through evals.scorer's LanguageModel, so the batched
engine serves this model too once it exists. Needs the `evals` extra (pip install 'zer02llm[evals]').
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

try:
    import lm_eval.models  # noqa: F401 - lm-eval's own models first: it registers them only into an empty registry
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # the optional extra
    raise ImportError(f"the zer02llm model for lm-evaluation-harness needs lm-eval ({e}): "
                      f"pip install 'zer02llm[evals]'") from e

from zer02llm.evals.scorer import encode_pair, make_scorer

log = logging.getLogger(__name__)
DEFAULT_MAX_GEN_TOKS = 256


@register_model("zer02llm")
class Zer02LLM(LM):
    """model_args: checkpoint (a run or checkpoint directory), device (auto), adapter, tokenizer_path, threads,
    max_length (default: the length the checkpoint was trained on). lm-eval's batch_size is accepted and unused:
    each request's continuations already run as one batch."""

    def __init__(self, checkpoint: str, device: str = "auto", adapter: Optional[str] = None,
                 tokenizer_path: Optional[str] = None, threads: Optional[int] = None,
                 max_length: Optional[int] = None, **unused: Any):
        super().__init__()
        import torch

        from zer02llm.inference.loading import load_for_inference

        device = str(device or "auto")
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise
            log.warning("device=%s: no CUDA device here, scoring on the CPU", device)
            device = "cpu"
        loaded = load_for_inference(str(checkpoint), device, adapter, tokenizer_path, False, threads)
        model_len = loaded.model.cfg.max_seq_len
        self.max_length = int(max_length) if max_length else min(loaded.trained_seq_len or model_len, model_len)
        self.loaded, self.tokenizer = loaded, loaded.tokenizer
        self.scorer = make_scorer(loaded.model, self.max_length)
        self.bos_text = self.tokenizer.id_to_token(self.tokenizer.bos_id) or ""
        self._template = None
        self._warned_sampling = False

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "Zer02LLM":
        """model_args win over lm-eval's own settings (its --device defaults to cuda:0): `device=cpu` in
        model_args is not a clash with that default."""
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        return cls(**{**{k: v for k, v in (additional_config or {}).items() if v is not None}, **args})

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> "Zer02LLM":
        return cls(**{**{k: v for k, v in (additional_config or {}).items() if v is not None}, **arg_dict})

    # --- what lm-eval asks -------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self.encode(*request.args) for request in requests]
        # requests that share a context (a multiple-choice item's choices) are scored together: one context pass
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (context, _) in enumerate(pairs):
            groups.setdefault(tuple(context), []).append(index)
        batched = [(list(context), [pairs[i][1] for i in indices]) for context, indices in groups.items()]
        results: list[Optional[tuple[float, bool]]] = [None] * len(pairs)
        for (_, indices), scores in zip(groups.items(), self.scorer.loglikelihoods(batched)):
            for index, score in zip(indices, scores):
                results[index] = (score.logprob, score.greedy)
                self.cache_hook.add_partial("loglikelihood", requests[index].args, results[index])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests) -> list[float]:
        totals = []
        for request in requests:
            (text,) = request.args[:1]
            tokens = self.tokenizer.encode(text)
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=self.tokenizer.bos_id, max_seq_len=self.max_length, context_len=1)]
            scores = self.scorer.loglikelihoods([(context, [continuation]) for context, continuation in windows])
            total = sum(score[0].logprob for score in scores)
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests) -> list[str]:
        """Greedy replies cut at `until`; requests that stop alike (the same `until` and max_gen_toks, as a
        task's all do) go through the batched engine together."""
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        prompts = []
        for i, request in enumerate(requests):
            context, options = request.args[0], dict(request.args[1] or {})
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            if (options.get("do_sample") or options.get("temperature", 0) or 0) and not self._warned_sampling:
                log.warning("zer02llm decodes greedily; the task's sampling settings (%s) are not used",
                            {k: options[k] for k in ("do_sample", "temperature") if k in options})
                self._warned_sampling = True
            prompts.append(self.context_ids(context))
            groups.setdefault((tuple(until), max(1, min(max_new, self.max_length - 1))), []).append(i)
        replies: list[str] = [""] * len(requests)
        for (until, max_new), indices in groups.items():

            def stopped(new: list[int], until=until) -> bool:
                text = self.tokenizer.decode(new)
                return any(stop in text for stop in until)

            generated = self.scorer.generate([prompts[i] for i in indices], max_new, [self.tokenizer.eos_id],
                                             stopped if until else None)
            for i, new in zip(indices, generated):
                text = self.tokenizer.decode(new, skip_special=True)
                replies[i] = text[:min((text.index(stop) for stop in until if stop in text), default=len(text))]
        for request, reply in zip(requests, replies):
            self.cache_hook.add_partial("generate_until", request.args, reply)
        return replies

    # --- chat templates (lm-eval's --apply_chat_template) ----------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return f"zer02llm-{self.tokenizer.fingerprint[:16]}"

    def chat_template(self, chat_template: bool | str = False) -> Optional[str]:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            from zer02llm.data.sft import ChatTemplate

            self._template = ChatTemplate(self.tokenizer)
        return self._template.render(chat_history, add_generation_prompt=add_generation_prompt)

    # --- tokens ---------------------------------------------------------------------------------
    def context_ids(self, text: str) -> list[int]:
        """`text`'s ids after bos, as a document began in training; a text that starts with bos keeps its own."""
        if self.bos_text and text.startswith(self.bos_text):
            return self.tokenizer.encode(text)
        return [self.tokenizer.bos_id] + self.tokenizer.encode(text)

    def encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if self.bos_text and context.startswith(self.bos_text):  # a chat render: its bos is already there
            context_ids, continuation_ids = encode_pair(self.tokenizer, context, continuation)
            return context_ids[1:], continuation_ids
        return encode_pair(self.tokenizer, context, continuation)


def main() -> None:
    """`zer02llm-lm-eval ...`: lm-eval's command line with the zer02llm model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "zer02llm-lm-eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
