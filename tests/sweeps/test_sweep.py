"""Sweep summaries: a real 2x2 multirun with the callback (one job directory each, then summary.md,
summary.csv and loss_curves.png in the sweep directory), the command line, and summarize() on
hand-made job directories (finished, failed, still running, half-written files)."""

from __future__ import annotations

import atexit
import csv
import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from zer02llm import sweep
from zer02llm.sweeps import summary as sweep_summary
from zer02llm.sweep import SweepSummaryCallback
from zer02llm.sweeps.summary import FAILED, INCOMPLETE, OK, NotASweepError, collect, summarize

from conftest import TINY, run_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEPT = {"model.dim": ("32", "48"), "model.n_layers": ("1", "2")}
# the conftest's tiny model, minus the swept keys, and only a few steps
BASE = [o for o in TINY if o.split("=")[0] not in SWEPT] + ["train.max_steps=4", "train.log_interval=2"]
# works whether or not conf/config.yaml already lists the callback (an override of the same group option)
WITH_CALLBACK = "hydra/callbacks=sweep_summary"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def md_rows(path: Path) -> list[list[str]]:
    """The data rows of the Markdown table, as lists of stripped cells."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---"), lines[:2]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


# --- a real sweep -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> tuple[Path, str]:
    """`python -m zer02llm.train -m model.dim=32,48 model.n_layers=1,2 ...` with the callback."""
    work = tmp_path_factory.mktemp("sweep")
    sweeps = [f"{key}={','.join(values)}" for key, values in SWEPT.items()]
    proc = run_module("zer02llm.train", ["-m", WITH_CALLBACK, *sweeps, *BASE, "hydra.sweep.dir=sw"], cwd=work)
    return work / "sw", proc.stdout


def test_each_job_of_the_sweep_has_its_own_run_directory(real_sweep):
    sweep_dir, _ = real_sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    seen = set()
    for n in range(4):
        job = sweep_dir / str(n)
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log", ".hydra/overrides.yaml",
                     "checkpoints/last/model.safetensors"):
            assert (job / name).exists(), f"{job}/{name}"
        resolved = yaml.safe_load((job / "config.yaml").read_text())
        seen.add((resolved["model"]["dim"], resolved["model"]["n_layers"]))
        assert json.loads((job / sweep_summary.JOB_STATUS).read_text()) == {"status": "COMPLETED"}  # on_job_end
    assert seen == {(32, 1), (32, 2), (48, 1), (48, 2)}


def test_the_callback_writes_the_summary_when_the_sweep_ends(real_sweep):
    sweep_dir, stdout = real_sweep
    rows = read_csv(sweep_dir / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert list(rows[0])[:len(sweep_summary.CSV_COLUMNS)] == sweep_summary.CSV_COLUMNS
    params = {}
    for row in rows:
        job = sweep_dir / row["job"]
        resolved = yaml.safe_load((job / "config.yaml").read_text())["model"]
        dim, layers = resolved["dim"], resolved["n_layers"]
        # the overrides, parsed from .hydra/overrides.yaml: only the swept keys label a job
        assert row["overrides"] == f"model.dim={dim} model.n_layers={layers}"
        assert (row["model.dim"], row["model.n_layers"]) == (str(dim), str(layers))
        assert row["status"] == OK and row["error"] == ""
        assert int(row["steps"]) == 4
        summary = json.loads((job / "summary.json").read_text())
        assert int(row["params"]) == summary["params"]
        for column in ("non_embedding_params", "tokens", "flops_per_token"):
            assert int(row[column]) == summary[column], column
        assert float(row["flops"]) == summary["flops"] == summary["flops_per_token"] * summary["tokens"]
        for column in ("final_train_loss", "final_val_loss", "tokens_per_s", "wall_seconds"):
            assert math.isfinite(float(row[column])), column
        assert 0 < float(row["final_train_loss"]) < 10 and 0 < float(row["final_val_loss"]) < 10
        last = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()][-1]
        assert float(row["final_train_loss"]) == pytest.approx(last["loss"])
        assert float(row["final_val_loss"]) == pytest.approx(last["val_loss"])
        assert float(row["tokens_per_s"]) > 0 and float(row["wall_seconds"]) > 0
        params[dim, layers] = int(row["params"])
    # more width or more layers means more parameters
    assert params[32, 1] < params[32, 2] < params[48, 2] and params[32, 1] < params[48, 1] < params[48, 2]

    table = md_rows(sweep_dir / "summary.md")
    assert len(table) == 4
    for cells, row in zip(table, rows):
        assert len(cells) == len(sweep_summary.MD_HEADER)
        assert cells[0] == row["job"] and cells[1] == row["overrides"] and cells[-1] == OK
        assert float(cells[7]) == pytest.approx(float(row["final_train_loss"]), abs=1e-4)
    text = (sweep_dir / "summary.md").read_text()
    assert "4 jobs (4 ok)" in text and "Common overrides: `" in text and "data.seq_len=32" in text
    assert "| job | overrides | parameters |" in stdout  # the table is printed too
    png = sweep_dir / "loss_curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


def test_command_line_rewrites_the_summary_and_refuses_a_non_sweep(real_sweep, tmp_path):
    sweep_dir, _ = real_sweep
    (sweep_dir / "summary.csv").unlink()
    proc = run_module("zer02llm.sweep", [str(sweep_dir)], cwd=tmp_path)
    assert "| 3 | model.dim=48 model.n_layers=2 |" in proc.stdout
    assert len(read_csv(sweep_dir / "summary.csv")) == 4
    for not_a_sweep in (sweep_dir / "0", tmp_path / "missing"):  # a single run's directory, nothing
        proc = run_module("zer02llm.sweep", [str(not_a_sweep)], cwd=tmp_path, check=False)
        assert proc.returncode == 2
        assert "not a sweep directory" in proc.stderr or "not a directory" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_sweep_with_a_diverging_job_still_gets_its_summary(tmp_path):
    """Hydra's sweeper raises when a job failed and never calls on_multirun_end: the atexit hook
    writes the summary, and job_status.json (from on_job_end) names the job's exception."""
    proc = run_module("zer02llm.train", ["-m", WITH_CALLBACK, "train.lr=1e-3,1e30", "model.dim=32",
                                         "model.n_layers=1", *BASE, "hydra.sweep.dir=sw"], cwd=tmp_path,
                      check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    rows = read_csv(tmp_path / "sw" / "summary.csv")
    assert [(r["overrides"], r["status"]) for r in rows] == [("train.lr=0.001", OK), ("train.lr=1e+30", FAILED)]
    assert rows[1]["error"].startswith("FloatingPointError: loss is nan")
    assert "stopped before all its jobs ended" in proc.stdout


@pytest.mark.slow
def test_submitit_launcher_summary_is_written_by_the_launching_process(tmp_path):
    """With submitit the jobs run in other processes (on_job_end there), and on_multirun_end runs in
    the process started with -m, after every job's result is back."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_module("zer02llm.train", ["-m", WITH_CALLBACK, "hydra/launcher=submitit_local",
                                         "model.dim=32,48", "model.n_layers=1", *BASE, "hydra.sweep.dir=sw"],
                      cwd=tmp_path)
    sweep_dir = tmp_path / "sw"
    assert (sweep_dir / ".submitit").is_dir()  # not mistaken for a job
    assert [r["status"] for r in read_csv(sweep_dir / "summary.csv")] == [OK, OK]
    assert "| 1 | model.dim=48 |" in proc.stdout  # printed by the launching process
    for n in (0, 1):
        assert json.loads((sweep_dir / str(n) / sweep_summary.JOB_STATUS).read_text())["status"] == "COMPLETED"


# --- hand-made job directories --------------------------------------------------------------------

def make_job(root: Path, name: str, overrides: list[str] | None = None, summary: dict | None = None,
             metrics: list[dict] | None = None, log: str | None = None, status: dict | None = None,
             tail: str = "") -> Path:
    job = root / name
    job.mkdir(parents=True)
    if overrides is not None:
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics) + tail)
    if log is not None:
        (job / "train.log").write_text(log)
    if status is not None:
        (job / sweep_summary.JOB_STATUS).write_text(json.dumps(status))
    return job


def rows_of(steps: list[int], base: float, val: bool = False) -> list[dict]:
    rows = [{"step": s, "loss": base - 0.1 * s, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0 + s,
             "tokens": 128 * s} for s in steps]
    if val:
        rows[-1].update(val_loss=base - 0.05 * steps[-1], val_ppl=1.0, val_bpb=(base - 0.05 * steps[-1]) / 4)
    return rows


@pytest.fixture
def hand_made(tmp_path) -> Path:
    root = tmp_path / "sweep"
    common = ["data.seq_len=32"]
    make_job(root, "0", ["train.lr=1e-3", *common], metrics=rows_of([2, 4], 9.0, val=True),
             summary={"params": 1000, "active_params": 1000, "steps": 4, "final_loss": 8.6, "final_val_loss": 8.8,
                      "final_val_bpb": 2.5, "tokens_per_s": 1003.0, "wall_seconds": 75.5},
             log="[2026-11-28 01:00:00,000][zer02llm.train][INFO] - run directory: x\n")
    # a config error: no metrics, no summary, the message in the log (two lines)
    make_job(root, "1", ["train.lr=1e-2", *common],
             log="[2026-11-28 01:00:01,000][zer02llm.train][ERROR] - invalid configuration:\n"
                 "  - model.dim=100 is not divisible by model.n_heads=8\n"
                 "[2026-11-28 01:00:01,001][zer02llm.train][INFO] - after\n")
    # still running: metrics only, the last line half-written
    make_job(root, "2", ["train.lr=1e-1", *common], metrics=rows_of([2, 4, 6], 9.0), tail='{"step": 8, "lo')
    # raised inside training: the callback's job_status.json says so
    make_job(root, "3", ["train.lr=1e30", *common], metrics=rows_of([2], 9.0),
             status={"status": "FAILED", "error": "FloatingPointError: loss is nan at step 4"})
    make_job(root, "10", None)  # created, nothing written yet: listed after 3, not between 1 and 2
    (root / ".submitit" / "123_0").mkdir(parents=True)  # launcher files, not jobs
    (root / "notes").mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_statuses_and_figures_of_hand_made_jobs(hand_made):
    jobs = {j.name: j for j in collect(hand_made)}
    assert list(jobs) == ["0", "1", "2", "3", "10"]
    assert [jobs[n].status for n in jobs] == [OK, FAILED, INCOMPLETE, FAILED, INCOMPLETE]
    ok = jobs["0"]
    assert (ok.params, ok.steps, ok.final_loss, ok.final_val_loss, ok.wall_seconds) == (1000, 4, 8.6, 8.8, 75.5)
    assert jobs["1"].error == "invalid configuration: - model.dim=100 is not divisible by model.n_heads=8"
    assert jobs["1"].final_loss is None and jobs["1"].steps is None
    running = jobs["2"]  # the last logged figures; parameters and wall time unknown
    assert running.steps == 6 and running.final_loss == pytest.approx(8.4) and running.final_val_loss is None
    assert running.params is None and running.wall_seconds is None
    assert running.tokens_per_s == pytest.approx(1004.0)
    assert [s for s, _ in running.train_curve] == [2, 4, 6]
    assert jobs["3"].error == "FloatingPointError: loss is nan at step 4"
    assert jobs["10"].overrides == [] and jobs["10"].train_curve == []


def test_summarize_hand_made_sweep_writes_all_three_files(hand_made, capsys):
    md = summarize(hand_made)
    assert md == hand_made / "summary.md"
    printed = capsys.readouterr().out
    assert "| job | overrides |" in printed

    table = md_rows(md)
    assert [(c[0], c[1], c[-1]) for c in table] == [
        ("0", "train.lr=1e-3", OK), ("1", "train.lr=1e-2", FAILED), ("2", "train.lr=1e-1", INCOMPLETE),
        ("3", "train.lr=1e30", FAILED), ("10", "", INCOMPLETE)]
    # no N or FLOPs in this summary.json and no config to count them from; tokens from the last metrics row
    assert table[0][2:12] == ["1.00K", "", "4", "512", "", "8.6000", "8.8000", "2.5000", "1,003", "0:01:16"]
    assert table[1][2:12] == [""] * 10  # a failed job: empty figures
    assert table[2][2:12] == ["", "", "6", "", "", "8.4000", "", "", "1,004", ""]
    text = md.read_text()
    assert "5 jobs (1 ok, 2 failed, 2 incomplete). Swept: `train.lr`." in text
    assert "Common overrides: `data.seq_len=32`." in text
    assert "Best final val loss: job 0 (train.lr=1e-3), 8.8000." in text
    assert "- job 3: FloatingPointError: loss is nan at step 4" in text

    rows = read_csv(hand_made / "summary.csv")
    assert [(r["job"], r["status"], r["train.lr"]) for r in rows] == [
        ("0", OK, "1e-3"), ("1", FAILED, "1e-2"), ("2", INCOMPLETE, "1e-1"), ("3", FAILED, "1e30"),
        ("10", INCOMPLETE, "")]
    assert rows[0]["params"] == "1000" and float(rows[0]["final_val_loss"]) == 8.8
    assert float(rows[0]["final_val_bpb"]) == 2.5
    assert rows[2]["params"] == "" and float(rows[2]["final_train_loss"]) == pytest.approx(8.4)
    assert (hand_made / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_a_sweep_of_jobs_without_metrics_still_gets_a_plot(tmp_path):
    make_job(tmp_path, "0", ["a=1"])
    summarize(tmp_path, echo=False)
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert md_rows(tmp_path / "summary.md") == [["0", "a=1"] + [""] * 10 + [INCOMPLETE]]


def test_jobs_that_scored_tasks_get_a_core_column(tmp_path):
    """train.eval_tasks' CORE (summary.json's task/core, else the last metrics row's) before the status."""
    make_job(tmp_path, "0", ["train.lr=1e-3"], summary={"final_loss": 1.0, "task/core": 0.25})
    make_job(tmp_path, "1", ["train.lr=1e-2"], metrics=[{"step": 5, "loss": 2.0, "task/core": -0.125}])
    make_job(tmp_path, "2", ["train.lr=1e-1"], summary={"final_loss": 3.0})
    summarize(tmp_path, echo=False)
    assert "| tokens/s | wall time | CORE | status |" in (tmp_path / "summary.md").read_text()
    assert [(r[0], r[-2], r[-1]) for r in md_rows(tmp_path / "summary.md")] == [
        ("0", "+0.2500", OK), ("1", "-0.1250", INCOMPLETE), ("2", "", OK)]
    rows = read_csv(tmp_path / "summary.csv")
    assert list(rows[0])[len(sweep_summary.CSV_COLUMNS)] == "task_core"
    assert [r["task_core"] for r in rows] == ["0.25", "-0.125", ""]


def test_markdown_cells_escape_pipes(tmp_path):
    make_job(tmp_path, "0", ["prompt=a|b"], summary={"final_loss": 1.0})
    make_job(tmp_path, "1", ["prompt=c"], summary={"final_loss": 2.0})
    summarize(tmp_path, echo=False)
    assert "| 0 | prompt=a\\|b |" in (tmp_path / "summary.md").read_text()


def test_not_a_sweep(tmp_path):
    with pytest.raises(NotASweepError, match="is not a directory"):
        collect(tmp_path / "missing")
    with pytest.raises(NotASweepError, match="not a sweep directory"):
        collect(tmp_path)
    run = make_job(tmp_path, "run", ["a=1"], summary={"final_loss": 1.0})
    (run / "checkpoints").mkdir()
    with pytest.raises(NotASweepError, match="single run"):
        collect(run)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(run)])
    assert exit_info.value.code == 2


# --- the callback, called directly ----------------------------------------------------------------

def hydra_config(sweep_dir: Path, output_dir: Path | None = None, multirun: bool = True):
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN if multirun else RunMode.RUN,
                                       "sweep": {"dir": str(sweep_dir)},
                                       "runtime": {"output_dir": str(output_dir or sweep_dir)}}})


def test_callback_records_each_jobs_end(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    callback = SweepSummaryCallback()
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bad value\nsecond line"))
    job = tmp_path / "0"
    job.mkdir()
    callback.on_job_end(config=hydra_config(tmp_path, job), job_return=failed)
    assert json.loads((job / sweep_summary.JOB_STATUS).read_text()) == {"status": "FAILED",
                                                                "error": "ValueError: bad value second line"}
    callback.on_job_end(config=hydra_config(tmp_path, job), job_return=JobReturn(status=JobStatus.COMPLETED))
    assert json.loads((job / sweep_summary.JOB_STATUS).read_text()) == {"status": "COMPLETED"}
    single = tmp_path / "single"
    single.mkdir()
    callback.on_job_end(config=hydra_config(tmp_path, single, multirun=False), job_return=failed)
    assert not (single / sweep_summary.JOB_STATUS).exists()  # a single run's directory is left as it was


def test_callback_summarizes_at_the_end_and_never_raises(tmp_path, caplog):
    make_job(tmp_path, "0", ["a=1"], summary={"final_loss": 1.0}, metrics=rows_of([1], 2.0))
    callback = SweepSummaryCallback(echo=False)
    callback.on_multirun_start(config=hydra_config(tmp_path))
    callback.on_multirun_end(config=hydra_config(tmp_path))
    assert (tmp_path / "summary.md").exists() and not callback._pending
    callback._at_exit()  # unregistered by on_multirun_end; a no-op anyway
    assert "stopped before" not in (tmp_path / "summary.md").read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="zer02llm.sweep"):
        callback.on_multirun_start(config=hydra_config(empty))
        callback.on_multirun_end(config=hydra_config(empty))  # not a sweep: a warning, no exception
    assert "sweep summary of" in caplog.text and "not a sweep directory" in caplog.text


def test_callback_summarizes_at_exit_when_the_sweep_raised(tmp_path):
    make_job(tmp_path, "0", ["a=1"], metrics=rows_of([1], 2.0), status={"status": "FAILED", "error": "E: x"})
    callback = SweepSummaryCallback(echo=False)
    callback.on_multirun_start(config=hydra_config(tmp_path))
    try:
        callback._at_exit()  # what the interpreter runs when Hydra exits on the job's exception
    finally:
        atexit.unregister(callback._at_exit)
    text = (tmp_path / "summary.md").read_text()
    assert "stopped before all its jobs ended normally" in text and "- job 0: E: x" in text
    assert not callback._pending


def test_callback_survives_pickling(tmp_path):
    """submitit pickles the callbacks along with the task, to run on_job_end in each job."""
    import pickle

    callback = SweepSummaryCallback()
    callback.on_multirun_start(config=hydra_config(tmp_path))
    try:
        copy = pickle.loads(pickle.dumps(callback))
    finally:
        atexit.unregister(callback._at_exit)
    assert copy._sweep_dir == str(tmp_path.resolve()) and copy.echo


def test_job_return_fields_used_by_the_callback():
    """on_job_end reads the exception without re-raising it (JobReturn.return_value would)."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("x"))
    assert isinstance(ret._return_value, RuntimeError) and ret.status.name == "FAILED"
