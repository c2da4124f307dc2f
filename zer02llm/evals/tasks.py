"""Tasks: a local file of items (JSONL or Parquet) plus how to score them, and suites of tasks.

Three kinds, told apart by the items' fields (docs/evaluation.md has the schemas):
- multiple_choice: {"context", "choices": [...], "answer": index}: the choice the model finds likeliest
  after the context (acc) or likeliest per byte of the choice (acc_norm);
- cloze: {"context", "target"}: the greedy continuation of the context is the target (LAMBADA);
- generative: {"question", "answer"}: a greedy reply, the answer extracted from it and from the item's answer
  (GSM8K's `#### n`, the last number, a regex, or the whole text) and compared.

A task spec (YAML or JSON) names the file and the options; a bare data file is a task with the defaults;
a suite spec lists task specs. `tasks=sample` is the suite shipped for the sample corpus.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from zer02llm.config import ConfigError
from zer02llm.resources import sample_data_path

KINDS = ("multiple_choice", "cloze", "generative")
FORMATS = ("auto", "plain", "chat")
EXTRACTORS = ("gsm8k", "last_number", "exact")  # and "regex:<pattern>" (group 1, or the whole match)
DATA_SUFFIXES = (".jsonl", ".parquet")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
SHIPPED_SUITES = {"sample": sample_data_path("tasks") / "sample.yaml"}


@dataclass
class Item:
    """One task item; the fields its kind reads (the others stay empty)."""

    context: str = ""  # multiple choice and cloze
    choices: list[str] = field(default_factory=list)  # multiple choice
    answer: Any = None  # multiple choice: the right choice's index; generative: the reference answer text
    target: str = ""  # cloze
    question: str = ""  # generative


@dataclass
class Task:
    """A task's items and how to score them (each option is also a key of the task spec)."""

    name: str
    kind: str
    path: str
    items: list[Item] = field(default_factory=list, repr=False)
    num_fewshot: int = 0
    # where few-shot examples come from; null: the task's own items, never the item being asked
    fewshot_path: Optional[str] = None
    # between a context and its continuation (choice, target); "" when the choices carry their own space
    delimiter: str = " "
    # between few-shot examples and before the question
    fewshot_delimiter: str = "\n\n"
    # generative, plain format: the prompt of a question; a few-shot example is this + " " + its answer
    template: str = "Question: {question}\nAnswer:"
    # generative: "plain" continues the template, "chat" asks through the tokenizer's chat template
    # (few-shot examples as earlier turns); "auto": chat for SFT and DPO checkpoints
    format: str = "auto"
    extract: str = "last_number"  # generative: how answers are read (EXTRACTORS, or "regex:<pattern>")
    max_new_tokens: int = 64  # generative
    stop: list[str] = field(default_factory=lambda: ["\n\n", "Question:"])  # generative, plain format
    # the accuracy of guessing; null: 1 / choices averaged over items (multiple choice), 0 otherwise
    chance: Optional[float] = None

    def chance_accuracy(self, items: Optional[list[Item]] = None) -> float:
        """The task's chance, or that of guessing among each of `items`' choices (all items by default)."""
        items = self.items if items is None else items
        if self.chance is not None:
            return self.chance
        if self.kind != "multiple_choice" or not items:
            return 0.0
        return sum(1 / len(item.choices) for item in items) / len(items)


OPTION_KEYS = {f.name for f in dataclasses.fields(Task)} - {"items", "kind", "name", "path"}


def kind_of(record: dict, where: str) -> str:
    if "choices" in record:
        return "multiple_choice"
    if "target" in record:
        return "cloze"
    if "question" in record:
        return "generative"
    raise ConfigError(f"{where}: cannot tell the task kind from the keys {sorted(record)}: a multiple-choice "
                      f"item has context/choices/answer, a cloze item context/target, a generative item "
                      f"question/answer (docs/evaluation.md)")


def parse_item(record: Any, kind: str, where: str) -> Item:
    """A record as an Item of `kind`, or a ConfigError naming the line and the field at fault."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    needed = {"multiple_choice": ("context", "choices", "answer"), "cloze": ("context", "target"),
              "generative": ("question", "answer")}[kind]
    missing = [key for key in needed if key not in record]
    if missing:
        raise ConfigError(f"{where}: a {kind} item needs {', '.join(needed)}; {', '.join(missing)} missing")
    if kind == "multiple_choice":
        choices, answer = record["choices"], record["answer"]
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            raise ConfigError(f"{where}: choices={choices!r}: must be a list of at least two non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ConfigError(f"{where}: answer={answer!r}: must be the index of the right choice, 0..{len(choices) - 1}")
        return Item(context=str(record["context"]), choices=list(choices), answer=answer)
    if kind == "cloze":
        if not isinstance(record["target"], str) or not record["target"]:
            raise ConfigError(f"{where}: target={record['target']!r}: must be a non-empty string")
        return Item(context=str(record["context"]), target=record["target"])
    if not isinstance(record["question"], str) or not record["question"]:
        raise ConfigError(f"{where}: question={record['question']!r}: must be a non-empty string")
    return Item(question=record["question"], answer=str(record["answer"]))


def read_records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) of each line of a JSONL file or row of a Parquet file, blank lines skipped."""
    if not path.is_file():
        raise ConfigError(f"task file {path}: no such file")
    if path.suffix == ".parquet":
        from zer02llm.data.sources import require

        table = require("parquet", path).read_table(path)
        return [(f"{path}: row {i + 1}", row) for i, row in enumerate(table.to_pylist())]
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append((f"{path}: line {number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: line {number}: not valid JSON ({e.msg})") from None
    return records


def read_items(path: Path, kind: Optional[str] = None) -> tuple[str, list[Item]]:
    """The kind (given, or told by the first record) and the items of a task file."""
    records = read_records(path)
    if not records:
        raise ConfigError(f"task file {path}: no items in it")
    kind = kind or kind_of(records[0][1] if isinstance(records[0][1], dict) else {}, records[0][0])
    return kind, [parse_item(record, kind, where) for where, record in records]


def check_options(task: Task, where: str) -> None:
    problems = []
    if task.kind not in KINDS:
        problems.append(f"kind={task.kind!r}: must be one of {', '.join(KINDS)}")
    if task.num_fewshot < 0:
        problems.append(f"num_fewshot={task.num_fewshot}: must be >= 0")
    if task.format not in FORMATS:
        problems.append(f"format={task.format!r}: must be one of {', '.join(FORMATS)}")
    if task.extract not in EXTRACTORS and not task.extract.startswith("regex:"):
        problems.append(f"extract={task.extract!r}: must be one of {', '.join(EXTRACTORS)} or regex:<pattern>")
    if task.max_new_tokens <= 0:
        problems.append(f"max_new_tokens={task.max_new_tokens}: must be > 0")
    if "{question}" not in task.template:
        problems.append(f"template={task.template!r}: must contain {{question}}")
    if task.chance is not None and not 0 <= task.chance < 1:
        problems.append(f"chance={task.chance}: must be in [0, 1)")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def task_from_spec(spec: dict, base: Path, where: str) -> Task:
    """A task from its spec: `path` (relative to the spec's directory), optional `name`, `kind` and options."""
    unknown = set(spec) - OPTION_KEYS - {"path", "name", "kind"}
    if unknown:
        from zer02llm.config import nearest_keys

        name = sorted(unknown)[0]
        raise ConfigError(f"{where}: {name}: no such task option; "
                          f"{nearest_keys(name, OPTION_KEYS | {'path', 'name', 'kind'})}")
    if "path" not in spec:
        raise ConfigError(f"{where}: a task spec needs path: <the items' JSONL or Parquet file>")
    path = (base / spec["path"]).resolve() if not Path(spec["path"]).is_absolute() else Path(spec["path"])
    kind, items = read_items(path, spec.get("kind"))
    options = {key: value for key, value in spec.items() if key in OPTION_KEYS}
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    if options.get("fewshot_path") and not Path(options["fewshot_path"]).is_absolute():
        options["fewshot_path"] = str((base / options["fewshot_path"]).resolve())
    task = Task(name=str(spec.get("name") or path.stem), kind=kind, path=str(path), items=items, **options)
    check_options(task, where)
    return task


def read_spec(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    import yaml  # PyYAML, a dependency of OmegaConf

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_tasks(name: str) -> list[Task]:
    """The tasks one `tasks=[...]` entry names: a shipped suite, a data file, a task spec or a suite spec."""
    if name in SHIPPED_SUITES:
        path = SHIPPED_SUITES[name]
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ConfigError(f"tasks=[{name}]: no such file, and not a shipped suite; give a task file "
                              f"({', '.join(DATA_SUFFIXES)}), a task or suite spec ({', '.join(SPEC_SUFFIXES)}), "
                              f"or one of: {', '.join(SHIPPED_SUITES)}")
    if path.suffix in DATA_SUFFIXES:
        task = Task(name=path.stem, kind="", path=str(path.resolve()))
        task.kind, task.items = read_items(path)
        return [task]
    if path.suffix not in SPEC_SUFFIXES:
        raise ConfigError(f"tasks=[{name}]: unknown file type {path.suffix!r}: a task file is "
                          f"{' or '.join(DATA_SUFFIXES)}, a spec {', '.join(SPEC_SUFFIXES)}")
    spec = read_spec(path)
    if isinstance(spec, dict) and "tasks" in spec:  # a suite
        entries = spec["tasks"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"{path}: tasks: must be a list of task specs (mappings with a path)")
        return [task_from_spec(entry, path.parent, f"{path}: task {i + 1}") for i, entry in enumerate(entries)]
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a task spec is a mapping (path: ..., options), a suite has tasks: [...]")
    return [task_from_spec(spec, path.parent, str(path))]


def load_all(names: list[str]) -> list[Task]:
    """Every task the entries name, each name once (a repeated name is refused: results are keyed by it)."""
    tasks = [task for name in names for task in load_tasks(str(name))]
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ConfigError(f"tasks: two tasks are named {task.name!r}: give one of them name: in its spec")
        seen.add(task.name)
    return tasks
