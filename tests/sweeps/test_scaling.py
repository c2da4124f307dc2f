"""Scaling-law fits: known constants recovered from exact and noisy synthetic losses, the refusals, the
compute frontier against a brute-force one, the summary's scaling section on hand-made and real sweeps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from zer02llm.sweeps import summary as sweep_summary

from zer02llm.sweeps import scaling
from zer02llm.sweeps.scaling import FitError, ScalingPoint, compute_frontier, fit_power_law, fit_sweep
from zer02llm.sweeps.summary import FAILED, OK, collect, summarize

from conftest import TINY, run_module
from test_sweep import PNG_MAGIC, make_job, read_csv

E, A, ALPHA = 1.8, 420.0, 0.32


def law(n):
    return E + A * np.power(n, -ALPHA)


def test_exact_data_gives_back_the_constants():
    n = np.geomspace(1e4, 1e9, 7)
    fit = fit_power_law(n, law(n))
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((E, A, ALPHA), rel=1e-7)
    assert fit.rms < 1e-9 and max(fit.E_err, fit.A_err / A, fit.alpha_err) < 1e-6
    assert fit.n == 7 and fit.variable == "N"


def test_noisy_data_gives_the_constants_within_their_uncertainty():
    rng = np.random.default_rng(1234)
    n = np.geomspace(1e4, 1e9, 16)
    fit = fit_power_law(n, law(n) + rng.normal(0.0, 0.01, n.shape))
    for got, err, want in ((fit.E, fit.E_err, E), (fit.A, fit.A_err, A), (fit.alpha, fit.alpha_err, ALPHA)):
        assert 0 < err and abs(got - want) < 4 * err, (got, err, want)
    assert abs(fit.alpha - ALPHA) < 0.01 and abs(fit.E - E) < 0.05
    assert 0.005 < fit.rms < 0.02  # the noise's size, seen through the residuals


def test_the_fit_refuses_too_few_points_and_what_is_no_power_law():
    with pytest.raises(FitError, match="needs at least 4 finished jobs with distinct N, got 3"):
        fit_power_law([1e4, 1e5, 1e6, 1e6, 1e6], [3.0, 2.5, 2.2, 2.21, 2.19])
    with pytest.raises(FitError, match="at least 4 finished jobs with distinct C, got 0"):
        fit_power_law([], [], variable="C")
    n = np.geomspace(1e4, 1e8, 8)
    with pytest.raises(FitError, match="do not fall as a power law of N"):
        fit_power_law(n, 1.0 + 0.1 * np.log(n))  # rising with N
    with pytest.raises(FitError, match="no curvature: over this range of N the loss falls like a \\+ b \\* log N"):
        fit_power_law(n, 5.0 - 0.1 * np.log(n))
    with pytest.raises(FitError, match="all equal"):
        fit_power_law(n, np.full(8, 2.5))


def brute_frontier(flops, losses):
    """i unless some j with at most its FLOPs has a lower loss, or the same loss with fewer FLOPs (or
    is an earlier exact duplicate)."""
    def beats(j, i):
        return j != i and flops[j] <= flops[i] and (
            losses[j] < losses[i] or (losses[j] == losses[i] and (flops[j] < flops[i] or j < i)))
    return [i for i in range(len(flops)) if not any(beats(j, i) for j in range(len(flops)))]


def test_compute_frontier_is_the_undominated_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        flops = list(rng.choice([1e9, 2e9, 4e9, 8e9, 1.6e10], size=9))
        losses = list(np.round(rng.uniform(2, 4, 9), 1))
        assert sorted(compute_frontier(flops, losses)) == brute_frontier(flops, losses)


def points(n, tokens, loss):
    # FLOPs ~ 6 N D: enough to tell matched from varying
    return [ScalingPoint(str(i), float(a), float(b), 6.0 * a * b, float(c)) for i, (a, b, c) in
            enumerate(zip(n, tokens, loss))]


def test_fit_sweep_picks_L_of_N_or_the_compute_frontier():
    n = np.geomspace(1e4, 1e7, 5)
    at_matched_tokens = fit_sweep(points(n, [1e6] * 5, law(n)))
    assert at_matched_tokens.law.variable == "N" and "matched tokens" in at_matched_tokens.reason
    assert at_matched_tokens.law.alpha == pytest.approx(ALPHA, rel=1e-6)
    # compute-matched: tokens = C / (6 N)
    matched_c = fit_sweep([ScalingPoint(str(i), x, 1e12 / (6 * x), 1e12, float(law(x))) for i, x in enumerate(n)])
    assert matched_c.law.variable == "N" and "matched FLOPs" in matched_c.reason
    # both vary: a grid of sizes x token counts; at each compute one job lies on L(C) = 3 + 200 C^-0.2,
    # the others above it by 0.1 per rank. The fit uses the frontier only, and recovers that law
    sizes, tokens = np.repeat(np.geomspace(1e4, 1e6, 3), 3), np.tile(np.geomspace(1e6, 1e8, 3), 3)
    c = 6 * sizes * tokens
    loss = 3.0 + 200.0 * c ** -0.2
    for value in set(c):
        for rank, i in enumerate(sorted(np.flatnonzero(c == value), key=lambda i: sizes[i])):
            loss[i] += 0.1 * rank
    fit = fit_sweep(points(sizes, tokens, loss))
    assert fit.fitted == [str(i) for i in compute_frontier(list(c), list(loss))]
    assert len(fit.fitted) == 5 and "size and tokens both vary: L(C) on the compute frontier (5 of 9 jobs)" in fit.reason
    assert fit.law.variable == "C"
    assert (fit.law.E, fit.law.A, fit.law.alpha) == pytest.approx((3.0, 200.0, 0.2), rel=1e-6)
    assert fit_sweep([]).law is None


def scaled_job(root: Path, name: str, n: int, loss: float, status: dict | None = None) -> Path:
    return make_job(root, name, [f"model.dim={name}"], status=status,
                    summary={"params": n + 1000, "non_embedding_params": n, "steps": 10, "tokens": 1280,
                             "flops_per_token": 6 * n, "flops": 6.0 * n * 1280, "final_loss": loss,
                             "final_val_loss": loss, "final_val_bpb": loss / 2})


def test_the_summary_fits_finished_jobs_only(tmp_path):
    for i, n in enumerate((1e4, 3e4, 1e5, 3e5, 1e6)):
        scaled_job(tmp_path, str(i), int(n), float(law(n)))
    # a job that failed after writing a summary: in the table, never in the fit
    scaled_job(tmp_path, "5", 3_000_000, 0.5, status={"status": "FAILED", "error": "E: late"})
    summarize(tmp_path, echo=False)
    text = (tmp_path / "summary.md").read_text()
    assert "## Scaling" in text and f"]({scaling.SCALING_PNG})" in text
    assert "Jobs in the fit: 0, 1, 2, 3, 4." in text
    fit = fit_power_law([int(n) for n in (1e4, 3e4, 1e5, 3e5, 1e6)], [float(law(n)) for n in (1e4, 3e4, 1e5, 3e5, 1e6)])
    assert f"Fit (size varies at matched tokens: L(N) over the jobs): {fit.describe()}." in text
    assert "alpha = 0.32 ±" in text
    png = tmp_path / scaling.SCALING_PNG
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    rows = {r["job"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert rows["5"]["status"] == FAILED and rows["2"]["non_embedding_params"] == "100000"
    assert float(rows["2"]["flops"]) == 6.0 * 1e5 * 1280 and rows["2"]["tokens"] == "1280"


def test_the_summary_says_how_many_jobs_a_fit_needs(tmp_path):
    for i, n in enumerate((1e4, 1e5, 1e6)):
        scaled_job(tmp_path, str(i), int(n), float(law(n)))
    summarize(tmp_path, echo=False)
    text = (tmp_path / "summary.md").read_text()
    assert "No fit: size varies at matched tokens: L(N) over the jobs; no fit: too few points to fit N" in text
    assert "needs at least 4 finished jobs with distinct N, got 3" in text
    assert (tmp_path / scaling.SCALING_PNG).exists()  # the points are drawn anyway


def test_a_sweep_of_one_size_has_no_scaling_section(tmp_path):
    for i in range(4):
        scaled_job(tmp_path, str(i), 10_000, 3.0 + i)
    summarize(tmp_path, echo=False)
    assert "## Scaling" not in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / scaling.SCALING_PNG).exists()


# --- a real compute-matched sweep -------------------------------------------------------------------

DIMS = (16, 32, 48, 64)
TOKEN_BUDGET = 6400  # 50 steps of batch_size 4 x seq_len 32
SWEEP_BASE = [o for o in TINY if not o.startswith(("model.dim=", "train.eval_interval="))] + \
    ["train.lr=3e-3", "train.eval_interval=1000", "train.eval_batches=4", f"train.token_budget={TOKEN_BUDGET}"]


@pytest.mark.slow
def test_a_real_token_budget_sweep_gets_its_scaling_fit(tmp_path):
    proc = run_module("zer02llm.train", ["-m", "hydra/callbacks=sweep_summary", f"model.dim={','.join(map(str, DIMS))}",
                                         *SWEEP_BASE, "hydra.sweep.dir=sw"], cwd=tmp_path)
    sweep_dir = tmp_path / "sw"
    tokens_per_step = 4 * 1 * 1 * 32  # batch_size x grad_accum x world_size x seq_len (TINY)
    expected_steps = math.floor(TOKEN_BUDGET / tokens_per_step + 0.5)
    for row in read_csv(sweep_dir / "summary.csv"):
        assert row["status"] == OK
        assert int(row["steps"]) == expected_steps  # derived from the budget, not the preset's max_steps
        assert int(row["tokens"]) == expected_steps * tokens_per_step
        assert float(row["flops"]) == int(row["flops_per_token"]) * int(row["tokens"])
    text = (sweep_dir / "summary.md").read_text()
    assert "![final validation loss against N and FLOPs](scaling.png)" in text
    assert "Fit (size varies at matched tokens: L(N) over the jobs): L(N) = E + A * N^-alpha: E = " in text
    assert "Jobs in the fit: 0, 1, 2, 3." in text and "## Scaling" in proc.stdout
    assert (sweep_dir / "scaling.png").read_bytes()[:8] == PNG_MAGIC

    # runs whose summary.json predates N and FLOPs: counted from the job's .hydra/config.yaml instead
    job = sweep_dir / "2"
    summary = json.loads((job / "summary.json").read_text())
    before = collect(sweep_dir)[2]
    for key in ("non_embedding_params", "flops_per_token", "flops"):
        summary.pop(key)
    (job / "summary.json").write_text(json.dumps(summary))
    after = sweep_summary.read_job(job)
    assert (after.non_embedding_params, after.flops_per_token, after.flops) == \
        (before.non_embedding_params, before.flops_per_token, before.flops)
    assert after.non_embedding_params is not None


# --- a score as the sweep's metric (train.sweep_metric=task/core): it rises towards its limit

def score_law(n):
    return 0.9 - 3.0 * np.power(n, -0.25)  # S(N) = E - A N^-alpha


def test_a_rising_score_gives_back_its_constants():
    n = np.geomspace(1e4, 1e9, 7)
    fit = fit_power_law(n, score_law(n), maximize=True)
    assert (fit.E, fit.A, fit.alpha, fit.sign) == pytest.approx((0.9, 3.0, 0.25, -1), rel=1e-7)
    assert fit(n) == pytest.approx(score_law(n), abs=1e-9)
    assert fit.formula() == "S(N) = E - A * N^-alpha"
    with pytest.raises(FitError, match="the scores do not rise as a power law of N"):
        fit_power_law(n, law(n), maximize=True)  # a falling figure is no rising score


def test_the_compute_frontier_of_a_score_is_its_highest_values():
    rng = np.random.default_rng(2)
    for _ in range(20):
        flops = list(rng.choice([1e9, 2e9, 4e9, 8e9], size=8))
        scores = list(np.round(rng.uniform(0, 1, 8), 1))
        assert sorted(compute_frontier(flops, scores, maximize=True)) == brute_frontier(flops, [-s for s in scores])


def test_the_summary_ranks_and_fits_on_the_named_task_score(tmp_path):
    """Jobs that name task/core as their sweep metric: the best job is the highest CORE, not the lowest loss,
    and the fit is CORE's rising law."""
    sizes = (1e4, 3e4, 1e5, 3e5, 1e6)
    for i, n in enumerate(sizes):
        loss = 2.0 + 0.1 * i  # the losses rank the jobs the other way round
        job = scaled_job(tmp_path, str(i), int(n), loss)
        summary = json.loads((job / "summary.json").read_text())
        summary.update({"task/core": float(score_law(n)), "task/days/acc": 0.2 + 0.01 * i,
                        "sweep_metric": "task/core", "sweep_direction": "maximize"})
        (job / "summary.json").write_text(json.dumps(summary))
    summarize(tmp_path, echo=False)
    text = (tmp_path / "summary.md").read_text()
    best = max(range(5), key=lambda i: score_law(sizes[i]))
    assert best == 4 and f"Best CORE: job {best} (model.dim={best}), {score_law(sizes[best]):.4f}." in text
    fit = fit_power_law([int(n) for n in sizes], [float(score_law(n)) for n in sizes], maximize=True)
    assert f"Fit of task/core (size varies at matched tokens: L(N) over the jobs): {fit.describe()}." in text
    assert "S(N) = E - A * N^-alpha: E = 0.9 ±" in text
    assert (tmp_path / scaling.SCALING_PNG).read_bytes()[:8] == PNG_MAGIC


def test_a_task_accuracy_as_the_metric_gets_a_column_and_ranks_the_jobs(tmp_path):
    for i, acc in enumerate((0.4, 0.7, 0.5)):
        job = scaled_job(tmp_path, str(i), 1000, 3.0 - i * 0.1)
        summary = json.loads((job / "summary.json").read_text())
        summary.update({"task/days/acc": acc, "sweep_metric": "task/days/acc", "sweep_direction": "maximize"})
        (job / "summary.json").write_text(json.dumps(summary))
    summarize(tmp_path, echo=False)
    text = (tmp_path / "summary.md").read_text()
    assert "| task/days/acc | status |" in text and "| 0.7000 | ok |" in text
    assert "Best task/days/acc: job 1 (model.dim=1), 0.7000." in text  # not job 2, the lowest loss
    rows = {r["job"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert float(rows["1"]["task/days/acc"]) == 0.7
