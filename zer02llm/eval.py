"""`python -m zer02llm.eval checkpoint=<dir>`: talk to a trained model.

Chat mode (SFT models) renders the conversation with the tokenizer's chat template and stops at the
end-of-turn token; continuation mode (pretrained models) continues each prompt as a document.
In a terminal it reads prompts interactively (`/reset` clears the history, `/exit` quits); with
`prompts=[...]`, `prompts_file=...` or piped standard input it answers each prompt and can write
the results as JSONL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, run_reporting_errors
from zer02llm.config import CHAT_MODES, ConfigError, EvalConfig, register_configs

register_configs()
PROMPT = ">>> "


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Session:
    """One conversation with a loaded model: builds each prompt, samples, keeps the history.

    `write` gets the conversation (stdout); `note` gets one-line remarks about it (stderr): history
    trimmed, a reply cut short.
    """

    def __init__(self, cfg: EvalConfig, write: Callable[[str], None], note: Callable[[str], None] = _to_stderr):
        from zer02llm.inference.loading import check_sampling, load_for_inference, make_generator, trained_context

        self.cfg, self.write, self.note = cfg, write, note
        self.params = check_sampling(cfg)
        if cfg.history_turns < 0:
            raise ConfigError(f"history_turns={cfg.history_turns}: must be >= 0")
        self.loaded = load_for_inference(cfg.checkpoint, cfg.device, cfg.adapter, cfg.tokenizer_path, cfg.compile,
                                         cfg.threads)
        # the adapter's mode when adapter= gives one that records it (an SFT adapter on a pretrained base chats)
        self.chat = cfg.chat if cfg.chat is not None else self.loaded.mode in CHAT_MODES
        max_seq_len = self.loaded.model.cfg.max_seq_len
        # the model never saw positions past the length it was trained on, however large max_seq_len is
        self.context_len = trained_context(self.loaded)
        self.context_name = "data.seq_len it was trained on" if self.context_len < max_seq_len else "model.max_seq_len"
        self.template = None
        if self.chat:
            from zer02llm.data.sft import ChatTemplate

            self.template = ChatTemplate(self.loaded.tokenizer)
        self.generator = make_generator(self.loaded, cfg.seed)
        self.history: list[dict[str, str]] = []  # earlier user/assistant turns, oldest first

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, text: str) -> list[int]:
        """The token ids to continue for `text` (the history trimmed to fit, self.history untouched)."""
        return self.fit(text)[0]

    def fit(self, text: str) -> tuple[list[int], list[dict[str, str]]]:
        """(prompt ids, the history they hold): the oldest exchanges dropped until the prompt is shorter
        than context_len, leaving room to answer."""
        tokenizer = self.loaded.tokenizer
        if not self.chat:
            return [tokenizer.bos_id] + tokenizer.encode(text), []
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        history = list(self.history)
        while True:
            ids, _ = self.template.encode(system + history + [{"role": "user", "content": text}],
                                          add_generation_prompt=True)
            if len(ids) < self.context_len or not history:
                return ids, history
            history = history[2:]

    def reply(self, text: str) -> dict:
        """Answer one prompt (streaming when cfg.stream) and return the JSONL record."""
        from zer02llm.inference.loading import long_prompt_note, stream_reply, truncation_note

        ids, kept = self.fit(text)
        if len(kept) < len(self.history):
            dropped = (len(self.history) - len(kept)) // 2
            self.note(f"[dropped the {dropped} oldest exchange{'s' if dropped > 1 else ''} from the history: the "
                      f"prompt must stay under {self.context_len} tokens, the {self.context_name}]")
            self.history = kept  # dropped for good: the next prompt would drop them again
        if long_prompt := long_prompt_note(len(ids), self.loaded):
            self.note(long_prompt)
        if not self.chat and self.cfg.stream:
            self.write(text)
        reply = stream_reply(self.loaded, ids, self.cfg, self.params, self.write if self.cfg.stream else None,
                             generator=self.generator)
        # without streaming, the whole reply at once (a continuation with its prompt, as streamed)
        self.write("\n" if self.cfg.stream else ("" if self.chat else text) + reply.text + "\n")
        if marker := truncation_note(reply, self.cfg, self.loaded):
            self.note(marker)
        if self.chat and self.cfg.history_turns > 0:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply.text}]
            self.history = self.history[-2 * self.cfg.history_turns:]
        return {"prompt": text, "response": reply.text, "tokens": reply.num_tokens,
                "seconds": round(reply.seconds, 3), "mode": "chat" if self.chat else "continue",
                "finish_reason": reply.finish_reason}


def read_prompts(cfg: EvalConfig, stdin: TextIO) -> Optional[list[str]]:
    """The prompts to answer non-interactively, or None for an interactive session.

    Finding none where prompts were expected (an empty prompts_file or piped input) is a ConfigError:
    exit status 2 like any bad setting, so a script piping nothing does not pass for a successful run.
    """
    prompts = list(cfg.prompts)
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise ConfigError(f"prompts_file={cfg.prompts_file}: no such file")
        from_file = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not from_file and not prompts:
            raise ConfigError(f"prompts_file={cfg.prompts_file}: no prompt in it (one prompt per line)")
        prompts += from_file
    if prompts:
        return prompts
    if not stdin.isatty():
        prompts = [line.strip() for line in stdin if line.strip()]
        if not prompts:
            raise ConfigError("no prompt was read from standard input (it was empty or blank): pipe one prompt "
                              "per line, give prompts=... or prompts_file=..., or run in a terminal to chat")
        return prompts
    return None


def interactive(session: Session, read_line: Callable[[str], str]) -> list[dict]:
    records = []
    mode = "chat" if session.chat else "continuation"
    session.write(f"{mode} with {session.loaded.checkpoint}; /reset clears the history, /exit quits\n")
    while True:
        try:
            line = read_line(PROMPT).strip()
        except EOFError:
            break
        if line == "/exit":
            break
        if line == "/reset":
            session.reset()
            session.write("(history cleared)\n")
        elif line:
            records.append(session.reply(line))
    return records


def run(cfg: EvalConfig, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
        stderr: Optional[TextIO] = None) -> list[dict]:
    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    def note(text: str) -> None:  # remarks apart from the conversation: `> answers.txt` keeps only replies
        err = stderr or sys.stderr
        err.write(text + "\n")
        err.flush()

    session = Session(cfg, write, note)
    prompts = read_prompts(cfg, stdin)
    if prompts is None:
        records = interactive(session, input)
    else:
        records = []
        for prompt in prompts:
            write(f"{PROMPT}{prompt}\n")
            records.append(session.reply(prompt))
    if cfg.output:
        write_jsonl(Path(cfg.output), records)
    return records


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


@hydra.main(version_base="1.3", config_path=None, config_name="eval")
def main(dict_cfg) -> None:
    run_reporting_errors(run, OmegaConf.to_object(dict_cfg))


def cli() -> None:
    """Console entry: free-text values (prompts, paths) need no Hydra quoting."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], ("checkpoint", "adapter", "tokenizer_path", "system_prompt",
                                                       "prompts_file", "output"), list_keys=("prompts",))
    main()


if __name__ == "__main__":
    cli()
