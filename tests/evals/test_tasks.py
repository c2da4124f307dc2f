"""Task files and specs: kinds told by their fields, clear refusals, the shipped suite."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from zer02llm.config import ConfigError
from zer02llm.evals.tasks import load_all, load_tasks


def test_the_kind_comes_from_the_fields(tmp_path):
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"context": "c", "choices": ["a", "b"], "answer": 1}])
    cloze = write_jsonl(tmp_path / "cloze.jsonl", [{"context": "c", "target": "t"}])
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"question": "q", "answer": "#### 3"}])
    assert [load_tasks(str(p))[0].kind for p in (mc, cloze, gen)] == ["multiple_choice", "cloze", "generative"]
    assert load_tasks(str(mc))[0].name == "mc"


@pytest.mark.parametrize("record, message", [
    ({"context": "c", "choices": ["a", "b"], "answer": 2}, r"line 1: answer=2: must be the index of the right choice, 0\.\.1"),
    ({"context": "c", "choices": ["a"], "answer": 0}, "choices=.*at least two"),
    ({"context": "c", "choices": ["a", "b"]}, "needs context, choices, answer; answer missing"),
    ({"text": "a pretraining document"}, "cannot tell the task kind"),
])
def test_a_bad_item_is_refused_with_its_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ConfigError, match=message):
        load_tasks(str(path))


def test_a_spec_sets_options_and_a_misspelt_one_is_named(tmp_path):
    write_jsonl(tmp_path / "mc.jsonl", [{"context": "c", "choices": ["a", "b"], "answer": 1}] * 3)
    (tmp_path / "task.json").write_text(json.dumps({"path": "mc.jsonl", "name": "mine", "num_fewshot": 2}))
    (task,) = load_tasks(str(tmp_path / "task.json"))
    assert (task.name, task.num_fewshot, len(task.items)) == ("mine", 2, 3)
    (tmp_path / "typo.yaml").write_text("path: mc.jsonl\nnum_fewshots: 2\n")
    with pytest.raises(ConfigError, match="num_fewshots: no such task option; did you mean num_fewshot"):
        load_tasks(str(tmp_path / "typo.yaml"))
    (tmp_path / "bad.yaml").write_text("path: mc.jsonl\nextract: lastnumber\n")
    with pytest.raises(ConfigError, match="extract='lastnumber': must be one of"):
        load_tasks(str(tmp_path / "bad.yaml"))


def test_parquet_items_read_like_jsonl(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (the data extra)")
    import pyarrow as pa

    pq.write_table(pa.table({"context": ["c1", "c2"], "choices": [["x", "y"], ["u", "v"]], "answer": [0, 1]}),
                   tmp_path / "mc.parquet")
    (task,) = load_tasks(str(tmp_path / "mc.parquet"))
    assert task.kind == "multiple_choice" and [i.choices[i.answer] for i in task.items] == ["x", "v"]


def test_the_shipped_sample_suite():
    tasks = load_all(["sample"])
    assert [t.name for t in tasks] == ["days", "months", "colours", "animals", "sums"]
    assert [t.kind for t in tasks] == ["multiple_choice"] * 4 + ["generative"]
    for task in tasks[:4]:
        assert task.chance_accuracy() == pytest.approx(0.25)
        for item in task.items:  # one right answer among four distinct choices
            assert len(set(item.choices)) == 4
    assert tasks[4].num_fewshot == 3 and tasks[4].chance_accuracy() == 0.0


def test_unknown_names_and_repeated_tasks_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="tasks=\\[nope\\]: no such file, and not a shipped suite"):
        load_all(["nope"])
    with pytest.raises(ConfigError, match="two tasks are named 'days'"):
        load_all(["sample", "sample"])


def test_the_shipped_suite_is_what_its_script_makes(tmp_path):
    """scripts/make_sample_tasks.py rebuilds zer02llm/sample_data/tasks/ byte for byte (and checks each item)."""
    import subprocess
    import sys

    from conftest import REPO

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_tasks.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    shipped = REPO / "zer02llm" / "sample_data" / "tasks"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_bytes() == (shipped / path.name).read_bytes(), path.name
