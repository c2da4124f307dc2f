"""Optuna searches (-m hydra/sweeper=optuna_tpe): the per-trial seeding that makes a resumed study draw
what an uninterrupted one would, the summary of a search, and real CPU searches: 4 trials whose best
one reruns to the same loss, a resume that adds trials, failed trials that do not stop the study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from zer02llm.sweeps import search as hpsearch  # noqa: E402
from zer02llm.sweeps.search import TrialSeededTPESampler, number_trial_directories, sqlite_url  # noqa: E402
from zer02llm.sweeps.summary import summarize  # noqa: E402

from conftest import TINY, run_module  # noqa: E402
from test_sweep import PNG_MAGIC, make_job  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    k = trial.suggest_int("k", 1, 8)
    return (x - 1.5) ** 2 + k


def run_study(storage: str, name: str, trials: int, sampler) -> list[dict]:
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True)
    study.optimize(objective, n_trials=trials)
    return [t.params for t in study.trials]


@pytest.mark.parametrize("startup", [10, 2], ids=["random-startup", "tpe-after-2"])
def test_a_resumed_study_draws_what_an_uninterrupted_one_does(tmp_path, startup):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    in_one_go = run_study(storage, "whole", 6, TrialSeededTPESampler(seed=7, n_startup_trials=startup))
    run_study(storage, "resumed", 3, TrialSeededTPESampler(seed=7, n_startup_trials=startup))
    resumed = run_study(storage, "resumed", 3, TrialSeededTPESampler(seed=7, n_startup_trials=startup))
    assert resumed == in_one_go and len({p["x"] for p in resumed}) == 6
    if startup > 6:  # plain TPE seeds once per process: a resumed startup phase draws its first trials again
        run_study(storage, "plain", 3, optuna.samplers.TPESampler(seed=7, n_startup_trials=startup))
        plain = run_study(storage, "plain", 3, optuna.samplers.TPESampler(seed=7, n_startup_trials=startup))
        assert plain[3:] == plain[:3]
    other_seed = run_study(storage, "other", 3, TrialSeededTPESampler(seed=8, n_startup_trials=startup))
    assert other_seed[0] != in_one_go[0]


def test_trial_directories_and_storage_helpers(tmp_path):
    url = sqlite_url(str(tmp_path / "new" / "deeper" / "optuna.db"))
    assert url == f"sqlite:///{(tmp_path / 'new' / 'deeper' / 'optuna.db').resolve()}"
    assert (tmp_path / "new" / "deeper").is_dir()  # sqlite cannot create it
    study = optuna.create_study(storage=url)
    for _ in range(3):
        trial = study.ask()
        number_trial_directories(None, trial)
        assert trial.params == {hpsearch.SUBDIR_PARAM: trial.number}
        study.tell(trial, 1.0)


def test_the_summary_of_a_search(tmp_path):
    study = optuna.create_study(study_name="zer02llm", storage=sqlite_url(str(tmp_path / hpsearch.OPTUNA_DB)))
    values = [3.2, None, 2.9, 3.5]  # trial 1 failed
    for number, value in enumerate(values):
        trial = study.ask()
        number_trial_directories(None, trial)
        lr = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
        make_job(tmp_path, str(number), [f"train.lr={lr}", "data.seq_len=32"],
                 summary={"final_loss": value, "final_val_loss": value} if value else None,
                 status={"status": "FAILED", "error": "FloatingPointError: loss is nan"} if value is None else None)
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"study_name": "zer02llm"}}}))
    best_lr = study.trials[2].params["train.lr"]
    summarize(tmp_path, echo=False)
    text = (tmp_path / "summary.md").read_text()
    assert "## Optuna search" in text
    assert "Study `zer02llm` (minimize final val loss): 4 trials (3 complete, 1 fail)." in text
    assert "Best trial: 2, final val loss 2.9, job directory `2`." in text
    assert f"Rerun it alone: `python -m zer02llm.train train.lr={best_lr} data.seq_len=32`" in text
    assert "| trial | train.lr | final val loss | state |" in text and hpsearch.SUBDIR_PARAM not in text
    assert f"| 1 | {study.trials[1].params['train.lr']:.4g} |  | fail |" in text
    assert f"| 3 | {study.trials[3].params['train.lr']:.4g} | 3.5 | complete |" in text
    assert (tmp_path / hpsearch.TRIALS_PNG).read_bytes()[:8] == PNG_MAGIC
    assert "## Scaling" not in text  # one model size: no scaling fit


# --- real searches on the CPU ------------------------------------------------------------------------

BASE = [o for o in TINY if not o.startswith(("model.n_layers=", "train.eval_interval=", "train.warmup_steps="))] + \
    ["model.n_layers=1", "train.max_steps=6", "train.warmup_steps=2", "train.log_interval=3",
     "train.eval_interval=100", "train.eval_batches=2"]
SEARCH = ["-m", "hydra/sweeper=optuna_tpe", "hydra/callbacks=sweep_summary", "hydra.sweep.dir=sw",
          "train.lr=tag(log, interval(1e-4, 1e-2))", "train.weight_decay=interval(0.0, 0.2)"]


def trials_of(sweep_dir: Path) -> list:
    return optuna.load_study(study_name="zer02llm", storage=f"sqlite:///{sweep_dir / hpsearch.OPTUNA_DB}").trials


@pytest.mark.slow
def test_a_search_finds_its_best_trial_reruns_it_and_resumes(tmp_path):
    run_module("zer02llm.train", [*SEARCH, "hydra.sweeper.n_trials=4", *BASE], cwd=tmp_path)
    sweep_dir = tmp_path / "sw"
    trials = trials_of(sweep_dir)
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)]
    for t in trials:  # each trial's value is its job's final val loss, in the directory named by its number
        summary = json.loads((sweep_dir / str(t.number) / "summary.json").read_text())
        assert t.value == summary["final_val_loss"]
        assert f"train.lr={t.params['train.lr']}" in yaml.safe_load(
            (sweep_dir / str(t.number) / ".hydra" / "overrides.yaml").read_text())
    best = min(trials, key=lambda t: t.value)
    results = yaml.safe_load((sweep_dir / hpsearch.RESULTS_YAML).read_text())
    assert results["best_value"] == best.value
    text = (sweep_dir / "summary.md").read_text()
    assert f"Best trial: {best.number}, final val loss {best.value:.6g}" in text and "4 trials (4 complete)" in text

    # the best trial's overrides as one plain run: the same loss
    overrides = yaml.safe_load((sweep_dir / str(best.number) / ".hydra" / "overrides.yaml").read_text())
    run_module("zer02llm.train", [*overrides, "hydra.run.dir=rerun"], cwd=tmp_path)
    rerun = json.loads((tmp_path / "rerun" / "summary.json").read_text())
    assert rerun["final_val_loss"] == pytest.approx(best.value, abs=1e-6)

    # the same command into the same directory continues the study
    run_module("zer02llm.train", [*SEARCH, "hydra.sweeper.n_trials=2", *BASE], cwd=tmp_path)
    resumed = trials_of(sweep_dir)
    assert [t.number for t in resumed] == list(range(6))
    assert [(t.params, t.value) for t in resumed[:4]] == [(t.params, t.value) for t in trials]
    assert {t.params["train.lr"] for t in resumed[4:]}.isdisjoint(t.params["train.lr"] for t in trials)
    for t in resumed[4:]:  # new directories; the first four are left as they were
        assert json.loads((sweep_dir / str(t.number) / "summary.json").read_text())["final_val_loss"] == t.value
    assert "6 trials (6 complete)" in (sweep_dir / "summary.md").read_text()


def test_the_search_direction_follows_the_sweep_metric():
    """conf/hydra/sweeper/optuna_tpe.yaml: a loss is minimised, a task score maximised, unless told otherwise."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zer02llm.config import register_configs
    from zer02llm.resources import shipped_path

    register_configs()
    with initialize_config_dir(config_dir=str(shipped_path("conf")), version_base="1.3"):
        for overrides, direction in (([], "minimize"), (["train.sweep_metric=final_val_bpb"], "minimize"),
                                     (["train.sweep_metric=task/core", "train.eval_tasks=[sample]"], "maximize"),
                                     (["train.sweep_metric=task/days/acc", "train.sweep_direction=minimize"],
                                      "minimize")):
            cfg = compose("config", ["hydra/sweeper=optuna_tpe", *overrides], return_hydra_config=True)
            assert OmegaConf.select(cfg, "hydra.sweeper.direction") == direction, overrides


@pytest.mark.slow
def test_a_search_on_a_task_score_maximises_it(tmp_path):
    """train.sweep_metric=task/core: each trial's value is its CORE, the study maximises it, the best trial is the
    highest CORE and the summary says so."""
    run_module("zer02llm.train", ["-m", "hydra/sweeper=optuna_tpe", "hydra/callbacks=sweep_summary",
                                  "hydra.sweep.dir=sw", "hydra.sweeper.n_trials=3", "train.lr=choice(1e-4, 1e-2, 3e-2)",
                                  "train.eval_tasks=[sample]", "train.eval_tasks_limit=8",
                                  "train.sweep_metric=task/core",
                                  *BASE], cwd=tmp_path)
    sweep_dir = tmp_path / "sw"
    study = optuna.load_study(study_name="zer02llm", storage=f"sqlite:///{sweep_dir / hpsearch.OPTUNA_DB}")
    assert study.direction.name == "MAXIMIZE"
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        summary = json.loads((sweep_dir / str(t.number) / "summary.json").read_text())
        assert t.value == summary["task/core"] and summary["sweep_metric"] == "task/core"
    best = max(trials, key=lambda t: t.value)
    assert yaml.safe_load((sweep_dir / hpsearch.RESULTS_YAML).read_text())["best_value"] == best.value
    text = (sweep_dir / "summary.md").read_text()
    assert f"Best trial: {best.number}, CORE {best.value:.6g}" in text and "(maximize CORE)" in text


@pytest.mark.slow
def test_a_bad_sweep_metric_is_refused_before_any_trial_runs(tmp_path):
    proc = run_module("zer02llm.train", [*SEARCH, "hydra.sweeper.n_trials=2", "train.eval_tasks=[sample]",
                                         "train.sweep_metric=task/nosuch/acc", *BASE], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "train.sweep_metric=task/nosuch/acc: no task 'nosuch' among train.eval_tasks" in proc.stderr + \
        (tmp_path / "sw" / "summary.md").read_text()
    assert "task/days/acc" in (tmp_path / "sw" / "0" / "train.log").read_text()  # the names it could give


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    # n_heads=3 does not divide dim=32 (a refused config), lr=1e30 diverges: both are FAIL trials
    run_module("zer02llm.train", ["-m", "hydra/sweeper=optuna_tpe", "hydra/callbacks=sweep_summary",
                                  "hydra.sweep.dir=sw", "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=3",
                                  "train.lr=choice(1e-3, 1e30)", "model.n_heads=choice(4, 3)",
                                  *(o for o in BASE if not o.startswith("model.n_heads="))], cwd=tmp_path)
    trials = trials_of(tmp_path / "sw")
    assert len(trials) == 5
    for t in trials:
        good = t.params["train.lr"] == 1e-3 and t.params["model.n_heads"] == 4
        assert t.state.name == ("COMPLETE" if good else "FAIL"), t
    assert {t.state.name for t in trials} == {"COMPLETE", "FAIL"}  # this seed draws both kinds
    text = (tmp_path / "sw" / "summary.md").read_text()
    assert "Failed jobs:" in text and "fail |" in text


@pytest.mark.slow
def test_a_search_whose_every_trial_failed_says_so_names_their_logs_and_exits_1(tmp_path):
    # n_heads=3 does not divide dim=32: every trial's config is refused
    proc = run_module("zer02llm.train", [*SEARCH, "hydra.sweeper.n_trials=2", "model.n_heads=3",
                                         *(o for o in BASE if not o.startswith("model.n_heads="))], cwd=tmp_path,
                      check=False)
    sweep_dir = tmp_path / "sw"
    assert [t.state.name for t in trials_of(sweep_dir)] == ["FAIL", "FAIL"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "every trial of the search failed (2 of 2)" in proc.stderr
    assert "their logs: sw/0/train.log, sw/1/train.log" in proc.stderr  # hydra.sweep.dir=sw as given


def test_a_trial_stopped_by_a_signal_is_not_counted_as_failed(tmp_path):
    search = hpsearch.Search("zer02llm", [hpsearch.Trial(0, "FAIL", None), hpsearch.Trial(1, "RUNNING", None)])
    message = hpsearch.no_best_trial(search, tmp_path)
    assert message.startswith("every trial of the search failed (1 of 2)")
    assert "1 trial(s) were stopped before they finished" in message and "not a failure" in message
    assert hpsearch.no_best_trial(hpsearch.Search("zer02llm", [hpsearch.Trial(0, "RUNNING", None)]),
                                  tmp_path).startswith("no trial of the search finished")
    assert hpsearch.no_best_trial(hpsearch.Search("zer02llm", [hpsearch.Trial(0, "FAIL", None),
                                                               hpsearch.Trial(1, "COMPLETE", 2.0)]), tmp_path) is None
