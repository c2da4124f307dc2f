"""Docs that cannot drift: README.md and docs/*.md link only to what exists, and every command line of theirs
that runs a zer02llm entry point composes.

- Links: every relative link (`[text](target)`, `![alt](target)`, `[label]: target`) names a file or
  directory that exists; a `#anchor` names a heading of its page (GitHub's anchors).
- Commands: every `python -m zer02llm.<entry> ...` (also `torchrun ... -m zer02llm.<entry>` and the console
  scripts, `zer02llm-train ...`) in a code block or an inline code span. Its overrides go through the entry
  point's own command-line handling (the quoting of free text, train's unknown-key check), then Hydra composes
  them against the entry's config: conf/ with config `config` for train, the ConfigStore config named after
  the entry for generate, eval, serve, export (zer02llm.config.register_configs). A key or group that does not
  exist fails with the file, the line and Hydra's or zer02llm's message naming it.
  Shell placeholders (`<dir>`, `...`) are not values: their keys must exist, their values are not composed.
  A multirun sweep (`-m model.dim=64,128`) composes with its first value; an Optuna search space
  (`interval(...)`) is checked for its key only. A line ending in `\\` continues on the next.
- Paths: every repository path the text names (`scripts/bench.py`, `tests/sweeps/test_slurm.py`) exists.
- The configuration reference (docs/configuration.md) names every key of every entry point's config.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
PLACEHOLDER = "PLACEHOLDER"
# Hydra's flags that take a value (`--cfg job`): neither they nor their value are overrides
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "(", ")"}


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def console_scripts() -> dict[str, str]:
    """`zer02llm-train` -> `train`, from pyproject.toml's [project.scripts] (no tomllib before Python 3.11)."""
    section = PYPROJECT.read_text().partition("[project.scripts]")[2].partition("\n[")[0]
    return {name: module.removeprefix("zer02llm.")
            for name, module in re.findall(r'^([\w-]+)\s*=\s*"([\w.]+):\w+"', section, re.M)}


# ---------------------------------------------------------------------------------------------------------------
# Markdown: code (fenced blocks and inline spans) apart from prose, headings, links

FENCE = re.compile(r"^\s*(```|~~~)")


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(code lines, prose lines) as (line number, text); fenced blocks are code, everything else prose."""
    code, prose, fence = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match and (fence is None or match.group(1) == fence):
            fence = match.group(1) if fence is None else None
            continue
        (code if fence else prose).append((number, line))
    return code, prose


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters of any script, digits and _
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in split_markdown(path.read_text(encoding="utf-8"))[1]:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def prose_without_code(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Prose lines with inline code spans blanked (a link written inside backticks is not a link)."""
    text = "\n".join(line for _, line in prose)
    text = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return list(zip((n for n, _ in prose), text.split("\n")))


def link_problems(path: Path) -> list[str]:
    problems = []
    for number, line in prose_without_code(split_markdown(path.read_text(encoding="utf-8"))[1]):
        targets = [m.group(1) for m in LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}:{number}: link '{target}'"
            if not resolved.exists():
                problems.append(f"{where}: {resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved}"
                                f" does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with the anchor '#{anchor}' in {resolved.relative_to(REPO)}")
    return problems


REPO_PATH = re.compile(r"(?<![\w./~$-])((?:zer02llm|scripts|conf|tests|tokenizer|docs)/[\w./-]*[\w/])")
BUILT_ONLY = ("zer02llm/_shipped",)  # exists in a built wheel, not in a checkout


def path_problems(path: Path) -> list[str]:
    """Paths of the repository named in the text (`scripts/bench.py`, `tests/sweeps/test_slurm.py`), links or
    not, that do not exist: a moved file leaves no stale name behind."""
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in REPO_PATH.finditer(line):
            named = match.group(1)
            if not named.startswith(BUILT_ONLY) and not (REPO / named).exists():
                problems.append(f"{path.relative_to(REPO)}:{number}: {named} does not exist")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Commands


@dataclass
class Command:
    where: str  # file:line
    entry: str  # train, eval, ...
    text: str  # the command line from the entry on, as written


ENTRY = re.compile(r"(?<![\w./-])-m\s+zer02llm\.(\w+)|(?<![\w./-])(zer02llm-\w+)(?![\w.-])")


def logical_lines(code: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Code lines with `\\` continuations joined, each numbered by its first line."""
    joined, start, parts = [], None, []
    for number, line in code:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        joined.append((start, " ".join(parts)))
        start, parts = None, []
    if parts:
        joined.append((start, " ".join(parts)))
    return joined


def find_commands(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    code, prose = split_markdown(text)
    candidates = logical_lines(code)
    # inline code spans of the prose (which may run over a line break)
    prose_text = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    for match in INLINE_CODE.finditer(prose_text):
        first = numbers[prose_text.count("\n", 0, match.start())]
        candidates.append((first, " ".join(match.group(2).split())))
    scripts = console_scripts()
    commands = []
    for number, line in candidates:
        for match in ENTRY.finditer(line):
            entry = match.group(1) or scripts.get(match.group(2))
            if entry is None:
                continue
            commands.append(Command(f"{path.relative_to(REPO)}:{number}", entry, line[match.end():]))
    return commands


def shell_words(text: str) -> list[str]:
    """The arguments of a command line up to the first shell operator; comments dropped, quotes removed."""
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, text)  # <dir>, <its directory>: placeholders, not redirections
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word in SHELL_OPERATORS or set(word) <= set("|&;<>()"):
            break
        words.append(word)
    return words


def is_placeholder(value: str) -> bool:
    return PLACEHOLDER in value or "..." in value or "…" in value


def hydra_config(entry: str) -> str | None:
    """The config a Hydra entry point composes, or None for an entry that is not a Hydra app."""
    from hydra.core.config_store import ConfigStore

    from zer02llm.config import register_configs

    register_configs()
    if entry == "train":
        return "config"
    return entry if f"{entry}.yaml" in ConfigStore.instance().list("") else None


def entry_point_argv(entry: str, args: list[str]) -> list[str]:
    """The arguments as the entry point hands them to Hydra: its `cli()` runs with `main` stubbed out, so its
    own handling applies (free text quoted, prompts made a list, train's unknown-key check)."""
    module = importlib.import_module(f"zer02llm.{entry}")
    seen: list[list[str]] = []
    stderr = io.StringIO()
    patches = [mock.patch.object(module, "main", lambda: seen.append(sys.argv[1:])),
               mock.patch.object(sys, "argv", [f"zer02llm-{entry}", *args])]
    if hasattr(module, "check_printed_config"):
        patches.append(mock.patch.object(module, "check_printed_config", lambda *a, **k: None))
    with contextlib.ExitStack() as stack, contextlib.redirect_stderr(stderr):
        for patch in patches:
            stack.enter_context(patch)
        try:
            module.cli()
        except SystemExit as e:
            raise ValueError(stderr.getvalue().strip() or f"exit status {e.code}") from None
    return seen[0]


def command_problems(command: Command) -> list[str]:
    """What keeps the command from composing, each naming the file, line and the bad key."""
    from hydra import compose, initialize, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from zer02llm.config import undeclared_keys

    where = f"{command.where}: `zer02llm.{command.entry} {command.text.strip()}`"
    if importlib.util.find_spec(f"zer02llm.{command.entry}") is None:
        return [f"{where}: there is no entry point zer02llm.{command.entry}"]
    config_name = hydra_config(command.entry)
    if config_name is None:
        return []  # an argparse command (python -m zer02llm.sweep <dir>): its module exists
    args, key_only, skip = [], [], False
    for word in shell_words(command.text):
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in FLAGS_WITH_VALUE
        elif word == "..." or "=" not in word:
            continue
        elif is_placeholder(word.partition("=")[2]):
            key_only.append(word.partition("=")[0])
        else:
            args.append(word)
    try:
        args = entry_point_argv(command.entry, args)
    except ValueError as e:
        return [f"{where}: {e}"]
    overrides = []
    parser = OverridesParser.create()
    for arg in args:
        try:
            [override] = parser.parse_overrides([arg])
        except Exception as e:  # Hydra's grammar: the message names the override
            return [f"{where}: {arg}: {e}"]
        if not override.is_sweep_override():
            overrides.append(arg)
            continue
        try:  # a multirun list or range: its first value
            first = next(iter(override.sweep_string_iterator()))
            overrides.append(f"{arg.split('=', 1)[0]}={first}")
        except Exception:  # an Optuna search space (interval, tag): the key only
            key_only.append(arg.split("=", 1)[0])
    if config_name == "config":
        context = initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf"))
    else:
        context = initialize(version_base="1.3", config_path=None)
    try:
        with context:
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception as e:
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        return [f"{where}: {e}{cause}".replace("\n", " ")]
    problems = [f"{where}: {p}" for p in undeclared_keys(cfg) if not p.startswith("hydra")]
    missing = object()
    for key in key_only:
        name = key.lstrip("+~")
        if "/" in name:
            name = name.replace("/", ".")  # hydra/launcher=<x>: the group's node
        if OmegaConf.select(cfg, name, default=missing) is missing and not key.startswith("+"):
            problems.append(f"{where}: {name}: no such key")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    problems = link_problems(path)
    assert not problems, "links that lead nowhere:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_paths_exist(path):
    problems = path_problems(path)
    assert not problems, "paths that name nothing:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_command_lines_compose(path):
    commands = find_commands(path)
    problems = [p for command in commands for p in command_problems(command)]
    assert not problems, "command lines that would not compose:\n" + "\n".join(problems)


def test_the_docs_hold_commands_of_every_entry_point():
    """The scan finds what it should: a change that hides commands from it fails here, not silently."""
    entries = {c.entry for path in doc_files() for c in find_commands(path)}
    assert {"train", "generate", "eval", "serve", "export"} <= entries


def config_keys() -> list[str]:
    """Every key a user can set: `group.key` of the training Config (both model schemas), and the keys of each
    other entry point's ConfigStore config (`base_<entry>`), found in the ConfigStore so a new entry counts."""
    import dataclasses

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from zer02llm.config import Config, MoEConfig, register_configs

    register_configs()
    keys = []
    for field in dataclasses.fields(Config):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            schemas = [type(default)] + ([MoEConfig] if field.name == "model" else [])
            keys += [f"{field.name}.{f.name}" for schema in schemas for f in dataclasses.fields(schema)]
        else:
            keys.append(field.name)
    store = ConfigStore.instance()
    for name in sorted(store.list("")):
        if name.startswith("base_") and name != "base_config.yaml":
            schema = OmegaConf.get_type(store.load(name).node)
            keys += [f.name for f in dataclasses.fields(schema)]
    return sorted(set(keys))


def test_the_configuration_reference_names_every_key():
    """docs/configuration.md lists every key: a key added to a config dataclass without a line there fails."""
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [key for key in config_keys() if f"`{key}`" not in text]
    assert not missing, f"keys missing from docs/configuration.md (write each as `key`): {', '.join(missing)}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def fake_command(line: str, entry: str = "train") -> Command:
    return Command("page.md:1", entry, line)


def test_a_made_up_key_or_group_fails_with_its_name():
    assert command_problems(fake_command("model=moe train.lr=1e-3 data.seq_len=64")) == []
    [problem] = command_problems(fake_command("model.dim=64 train.lrr=1e-3"))
    assert "page.md:1" in problem and "train.lrr" in problem
    [problem] = command_problems(fake_command("hardware=80gb"))
    assert "hardware" in problem and "80gb" in problem
    [problem] = command_problems(fake_command("+train.made_up=1"))
    assert "train.made_up" in problem
    [problem] = command_problems(fake_command("checkpoint=x engine.max_batch=3", entry="eval"))
    assert "engine" in problem
    assert command_problems(fake_command("checkpoint=x engine.max_batch=3", entry="serve")) == []
    [problem] = command_problems(fake_command("prompt=x", entry="nonesuch"))
    assert "no entry point zer02llm.nonesuch" in problem


def test_placeholders_sweeps_quotes_and_continuations(tmp_path):
    ok = [
        "checkpoint=outputs/<date>/<time> prompt=\"Once upon a time, 从前\" seed=0",  # generate's free text
        "-m model.dim=32,64 model.n_layers=1,2 train.flops_budget=1e12  # a comment",
        "-m hydra/sweeper=optuna_tpe 'train.lr=tag(log, interval(1e-4, 3e-2))' 'model.n_heads=choice(4, 8)'",
        "-m hydra/launcher=slurm hydra.launcher.partition=debug hydra.sweep.dir=<its directory> train.resume=auto",
        "--cfg job model.dim=256 | head",
        "data.train_path=[a.jsonl,corpora/web] train.max_steps=... && echo done",
    ]
    entries = ["generate", "train", "train", "train", "train", "train"]
    for line, entry in zip(ok, entries):
        assert command_problems(fake_command(line, entry)) == [], line
    # a placeholder's key must still exist; a sweep's values are composed
    assert "train.lrr" in command_problems(fake_command("train.lrr=<lr>"))[0]
    assert command_problems(fake_command("-m model.dim=64,abc")) == []  # only the first value composes
    assert "model.dim" in command_problems(fake_command("-m model.dim=abc,64"))[0]

    page = write(tmp_path, "text\n```bash\npython -m zer02llm.train model.dim=64 \\\n    train.lrr=1 # x\n"
                           "zer02llm-eval checkpoint=<dir>\n```\nInline `python -m zer02llm.generate\nprompt=hi` too.\n")
    with mock.patch.object(sys.modules[__name__], "REPO", tmp_path):
        commands = find_commands(page)
    assert [(c.where, c.entry) for c in commands] == [("page.md:3", "train"), ("page.md:5", "eval"),
                                                      ("page.md:7", "generate")]
    assert "train.lrr" in command_problems(commands[0])[0] and "page.md:3" in command_problems(commands[0])[0]
    assert command_problems(commands[1]) == command_problems(commands[2]) == []


def test_a_broken_link_or_anchor_fails(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n## Keys (`conf/x.yaml`)\n## Keys (`conf/x.yaml`)\n")
    page = write(tmp_path, "# Title\n[a](other.md) [b](other.md#other-page) [c](other.md#keys-confxyaml-1)\n"
                           "[d](#title) [e](https://example.org/missing) `[f](nowhere.md)`\n"
                           "```\n[g](nowhere.md)\n```\n"
                           "[h](missing.md) [i](other.md#nope) [j](#nope)\n[k]: also-missing.md\n")
    with mock.patch.object(sys.modules[__name__], "REPO", tmp_path):
        problems = link_problems(page)
    assert [p.split(": link ")[1].split("'")[1] for p in problems] == ["missing.md", "other.md#nope", "#nope",
                                                                       "also-missing.md"]
    assert problems[0].startswith("page.md:7")


def test_a_named_path_that_moved_fails(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bench.py").write_text("")
    page = write(tmp_path, "Run `python scripts/bench.py`, see tests/test_slurm.py and zer02llm/_shipped/conf.\n")
    with mock.patch.object(sys.modules[__name__], "REPO", tmp_path):
        assert path_problems(page) == ["page.md:1: tests/test_slurm.py does not exist"]


def test_github_anchors():
    assert slug("Preference tuning (DPO)") == "preference-tuning-dpo"
    assert slug("Keys (`conf/mode/dpo.yaml`)") == "keys-confmodedpoyaml"
    assert slug("Chat and evaluation: `python -m zer02llm.eval`") == "chat-and-evaluation-python--m-zer02llmeval"
    assert slug("From pretraining to chat, on the CPU") == "from-pretraining-to-chat-on-the-cpu"
