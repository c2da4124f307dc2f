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
from zer02llm.config import ConfigError, EvalConfig, register_configs
from zer02llm.resources import shipped_path

register_configs()
PROMPT = ">>> "


class Session:
    """One conversation with a loaded model: builds each prompt, samples, keeps the history."""

    def __init__(self, cfg: EvalConfig, write: Callable[[str], None]):
        from zer02llm.inference import check_sampling, load_for_inference, make_generator

        self.cfg, self.write = cfg, write
        self.params = check_sampling(cfg)
        if cfg.history_turns < 0:
            raise ConfigError(f"history_turns={cfg.history_turns}: must be >= 0")
        self.loaded = load_for_inference(cfg.checkpoint, cfg.device, cfg.adapter, cfg.tokenizer_path)
        self.chat = cfg.chat if cfg.chat is not None else self.loaded.mode == "sft"
        self.template = None
        if self.chat:
            from zer02llm.data.sft import ChatTemplate

            self.template = ChatTemplate(self.loaded.tokenizer)
        self.generator = make_generator(self.loaded, cfg.seed)
        self.history: list[dict[str, str]] = []  # earlier user/assistant turns, oldest first

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, text: str) -> list[int]:
        tokenizer = self.loaded.tokenizer
        if not self.chat:
            return [tokenizer.bos_id] + tokenizer.encode(text)
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        history = list(self.history)
        limit = self.loaded.model.cfg.max_seq_len
        while True:  # drop the oldest exchanges until the prompt leaves room to answer
            ids, _ = self.template.encode(system + history + [{"role": "user", "content": text}],
                                          add_generation_prompt=True)
            if len(ids) < limit or not history:
                return ids
            history = history[2:]

    def reply(self, text: str) -> dict:
        """Answer one prompt (streaming when cfg.stream) and return the JSONL record."""
        from zer02llm.inference import stream_reply

        ids = self.prompt_ids(text)
        if not self.chat and self.cfg.stream:
            self.write(text)
        reply = stream_reply(self.loaded, ids, self.cfg, self.params, self.write if self.cfg.stream else None,
                             generator=self.generator)
        # without streaming, the whole reply at once (a continuation with its prompt, as streamed)
        self.write("\n" if self.cfg.stream else ("" if self.chat else text) + reply.text + "\n")
        if self.chat and self.cfg.history_turns > 0:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply.text}]
            self.history = self.history[-2 * self.cfg.history_turns:]
        return {"prompt": text, "response": reply.text, "tokens": reply.num_tokens,
                "seconds": round(reply.seconds, 3), "mode": "chat" if self.chat else "continue"}


def read_prompts(cfg: EvalConfig, stdin: TextIO) -> Optional[list[str]]:
    """The prompts to answer non-interactively, or None for an interactive session."""
    prompts = list(cfg.prompts)
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise ConfigError(f"prompts_file={cfg.prompts_file}: no such file")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if prompts:
        return prompts
    if not stdin.isatty():
        return [line.strip() for line in stdin if line.strip()]
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


def run(cfg: EvalConfig, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> list[dict]:
    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    session = Session(cfg, write)
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


@hydra.main(version_base="1.3", config_path=str(shipped_path("conf")), config_name="eval")
def main(dict_cfg) -> None:
    run_reporting_errors(run, OmegaConf.to_object(dict_cfg))


def cli() -> None:
    """Console entry: free-text values (prompts, paths) need no Hydra quoting."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], ("checkpoint", "adapter", "tokenizer_path", "system_prompt",
                                                       "prompts_file", "output"), list_keys=("prompts",))
    main()


if __name__ == "__main__":
    cli()
