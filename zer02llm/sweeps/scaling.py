"""Scaling laws over a sweep: L(x) = E + A * x^-alpha fitted to the jobs' train.sweep_metric (by default the
final validation loss); a figure to maximise (a task score: task/core, task/<task>/acc) rises as
S(x) = E - A * x^-alpha, fitted as the loss law of -S.

x is N (non-embedding parameters) when the jobs differ in size at matched tokens or matched FLOPs,
or C (training FLOPs) on the compute frontier when both size and tokens vary: the best value at
each compute, i.e. the jobs that no job with at most their FLOPs beats. E is the value an infinite
model (or compute) would reach, alpha how fast the gap closes.

The fit is numpy only: for each alpha of a grid, E and A by linear least squares; then Gauss-Newton
(with step halving) on all three from the best grid point. Uncertainties: the standard errors of
the covariance s^2 (J^T J)^-1 at the optimum, s^2 = residual sum of squares / (n - 3). Three constants
need at least four points with distinct x (one degree of freedom left for the uncertainty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MIN_POINTS = 4  # 3 constants + 1 degree of freedom for their uncertainty
SCALING_PNG = "scaling.png"
# spreads (max / min) below these count as "the same" across jobs
MATCHED_TOKENS, MATCHED_FLOPS = 1.02, 1.25
_ALPHAS = np.geomspace(1e-3, 5.0, 600)
# below this the fit is the log-linear limit, not a power law (language models: 0.05-0.5)
MIN_ALPHA = 0.01


class FitError(ValueError):
    """No power law could be fitted: too few points, or losses that do not fall as one."""


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + A * x^-alpha (sign -1: S(x) = E - A * x^-alpha) with standard errors; n points, rms residual."""

    variable: str  # "N" or "C"
    E: float
    A: float
    alpha: float
    E_err: float
    A_err: float
    alpha_err: float
    n: int
    rms: float
    sign: int = 1  # +1: falls towards E (a loss); -1: rises towards E (a score)

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.sign * self.A * np.power(x, -self.alpha)

    def formula(self) -> str:
        name, op = ("L", "+") if self.sign > 0 else ("S", "-")
        return f"{name}({self.variable}) = E {op} A * {self.variable}^-alpha"

    def describe(self) -> str:
        """One line: the formula, the constants with their uncertainty, the points and the residual."""
        return (f"{self.formula()}: E = {self.E:.4g} ± {self.E_err:.2g}, A = {self.A:.4g} ± {self.A_err:.2g}, "
                f"alpha = {self.alpha:.4g} ± {self.alpha_err:.2g} ({self.n} jobs, rms residual {self.rms:.2g})")


def _linear_fit(u: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(E, A', sse) of y = E + A' u^-alpha by least squares at a fixed alpha."""
    design = np.stack([np.ones_like(u), u ** -alpha], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(coef[0]), float(coef[1]), float(residual @ residual)


def _jacobian(u: np.ndarray, A: float, alpha: float) -> np.ndarray:
    """d(E + A u^-alpha) / d(E, A, alpha), one row per point."""
    power = u ** -alpha
    return np.stack([np.ones_like(u), power, -A * power * np.log(u)], axis=1)


def fit_power_law(x: Sequence[float], y: Sequence[float], variable: str = "N", maximize: bool = False) -> PowerLaw:
    """The least-squares L(x) = E + A * x^-alpha through the points (maximize: S(x) = E - A * x^-alpha, the
    law of -S); FitError when it cannot be fitted."""
    (values, value), change = (("scores", "score"), "rise") if maximize else (("losses", "loss"), "fall")
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ys = -ys if maximize else ys  # a rising score is the falling loss -S
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-d and of one length, got shapes {xs.shape} and {ys.shape}")
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
    xs, ys = xs[keep], ys[keep]
    distinct = len(np.unique(xs))
    if distinct < MIN_POINTS:
        raise FitError(f"too few points to fit {variable}: L = E + A * {variable}^-alpha has 3 constants, so it "
                       f"needs at least {MIN_POINTS} finished jobs with distinct {variable}, got {distinct}")
    if float(np.ptp(ys)) <= 1e-12 * float(np.max(np.abs(ys))):
        raise FitError(f"the {values} are all equal ({-ys[0] if maximize else ys[0]:.6g}): nothing {change}s with "
                       f"{variable}")
    ref = math.exp(float(np.mean(np.log(xs))))  # fit in u = x / ref: A' = A * ref^-alpha stays near the losses
    u = xs / ref
    E, A_u, _, alpha = min((_linear_fit(u, ys, a) + (a,) for a in _ALPHAS), key=lambda fit: fit[2])
    theta = np.array([E, A_u, alpha])

    def sse(t: np.ndarray) -> float:
        r = ys - (t[0] + t[1] * u ** -t[2])
        return float(r @ r)

    for _ in range(100):  # Gauss-Newton, halving each step until it lowers the residual
        residual = ys - (theta[0] + theta[1] * u ** -theta[2])
        J = _jacobian(u, theta[1], theta[2])
        step, *_ = np.linalg.lstsq(J, residual, rcond=None)
        current, scale = sse(theta), 1.0
        while scale > 1e-10 and not sse(theta + scale * step) < current:
            scale /= 2
        if scale <= 1e-10:
            break
        theta = theta + scale * step
        if np.all(np.abs(scale * step) <= 1e-12 * (1 + np.abs(theta))):
            break
    E, A_u, alpha = (float(v) for v in theta)
    if not (alpha > 0 and A_u > 0 and math.isfinite(E)):
        raise FitError(f"the {values} do not {change} as a power law of {variable} (best fit: alpha={alpha:.3g}, "
                       f"A={A_u:.3g} at {variable}={ref:.3g}): more jobs, or a wider range of {variable}")
    if alpha < MIN_ALPHA:
        raise FitError(f"no curvature: over this range of {variable} the {value} {change}s like a + b * log {variable} "
                       f"(best alpha={alpha:.2g}), the alpha -> 0 limit of the law, where E and A run off to "
                       f"infinity; a wider range of {variable} (or longer runs) shows where the {value} levels off")
    n = len(xs)
    s2 = sse(theta) / (n - 3)
    J = _jacobian(u, A_u, alpha)
    try:
        cov_u = s2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        cov_u = np.full((3, 3), np.inf)
    # back to A = A' * ref^alpha: its gradient in (E, A', alpha) carries the covariance over
    A = A_u * ref ** alpha
    grad = np.array([[1, 0, 0], [0, ref ** alpha, A * math.log(ref)], [0, 0, 1]])
    cov = grad @ cov_u @ grad.T
    errs = np.sqrt(np.clip(np.diag(cov), 0, None))
    return PowerLaw(variable, -E if maximize else E, float(A), alpha, float(errs[0]), float(errs[1]), float(errs[2]),
                    n, math.sqrt(sse(theta) / n), -1 if maximize else 1)


def compute_frontier(flops: Sequence[float], losses: Sequence[float], maximize: bool = False) -> list[int]:
    """Indices of the compute frontier, by increasing FLOPs: the points whose loss is below that of
    every point with at most their FLOPs (ties in FLOPs: the lowest loss only); maximize: the points
    whose score is above."""
    if maximize:
        losses = [-v for v in losses]
    order = sorted(range(len(flops)), key=lambda i: (flops[i], losses[i]))
    frontier, best = [], math.inf
    for i in order:
        if losses[i] < best:
            frontier.append(i)
            best = losses[i]
    return frontier


def spread(values: Sequence[float]) -> float:
    """max / min: 1 for no values or equal ones, inf when some are 0 or less."""
    if not values:
        return 1.0
    return max(values) / min(values) if min(values) > 0 else math.inf


@dataclass
class ScalingPoint:
    """One finished job: its name, N, tokens, FLOPs and the value of the sweep's metric."""

    name: str
    params: float
    tokens: float
    flops: float
    value: float


@dataclass
class ScalingFit:
    """What the sweep's points allow: a law (or why not), over which points, and what the x is."""

    law: Optional[PowerLaw]
    reason: str  # what was fitted and why, or why nothing was
    fitted: list[str]  # names of the jobs the law was fitted on
    metric: str = "final_val_loss"  # what was fitted (train.sweep_metric)


def fit_sweep(points: Sequence[ScalingPoint], metric: str = "final_val_loss", maximize: bool = False) -> ScalingFit:
    """L(N) when the jobs differ in size at matched tokens or FLOPs; L(C) on the compute frontier when
    size and tokens both vary (and FLOPs spread); FitError's message as the reason when neither fits.
    metric names the points' values; maximize: a score, rising towards its limit."""
    if not points:
        return ScalingFit(None, f"no finished job with a {metric_label(metric)}: nothing to fit", [], metric)
    sizes = {p.params for p in points}
    tokens_vary = spread([p.tokens for p in points]) > MATCHED_TOKENS
    flops_vary = spread([p.flops for p in points]) > MATCHED_FLOPS
    if len(sizes) > 1 and (not tokens_vary or not flops_vary):
        chosen, variable = list(points), "N"
        why = "size varies at matched " + ("tokens" if not tokens_vary else "FLOPs") + ": L(N) over the jobs"
    else:
        idx = compute_frontier([p.flops for p in points], [p.value for p in points], maximize)
        chosen, variable = [points[i] for i in idx], "C"
        why = ("size and tokens both vary" if len(sizes) > 1 else "tokens vary") + \
            f": L(C) on the compute frontier ({len(chosen)} of {len(points)} jobs)"
    try:
        law = fit_power_law([p.params if variable == "N" else p.flops for p in chosen], [p.value for p in chosen],
                            variable, maximize)
    except FitError as e:
        return ScalingFit(None, f"{why}; no fit: {e}", [], metric)
    return ScalingFit(law, why, [p.name for p in chosen], metric)


def metric_label(metric: str) -> str:
    """How plots and the summary name a metric: final_val_loss as "final validation loss", others as named."""
    return "final validation loss" if metric == "final_val_loss" else metric


def plot_scaling(points: Sequence[ScalingPoint], fit: ScalingFit, path: Path) -> Path:
    """scaling.png: the metric (final val loss by default) against N and against FLOPs, log axes (a linear
    y axis for a metric that reaches 0 or below), each job a point; the fit drawn on its panel (the
    frontier's jobs ringed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    law = fit.law
    for ax, variable, attr, xlabel in ((axes[0], "N", "params", "non-embedding parameters N"),
                                       (axes[1], "C", "flops", "training FLOPs C")):
        shown = [p for p in points if getattr(p, attr) and getattr(p, attr) > 0]
        xs = [getattr(p, attr) for p in shown]
        ax.scatter(xs, [p.value for p in shown], s=28, color="tab:blue", zorder=3,
                   label=f"job ({'final val loss' if fit.metric == 'final_val_loss' else fit.metric})")
        for p, x in zip(shown, xs):
            ax.annotate(p.name, (x, p.value), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        if law is not None and law.variable == variable:
            fitted = [getattr(p, attr) for p in shown if p.name in fit.fitted]
            grid = np.geomspace(min(fitted) / 1.5, max(fitted) * 1.5, 200)
            ax.plot(grid, law(grid), color="tab:red", linewidth=1.4,
                    label=f"E {'+' if law.sign > 0 else '-'} A·{variable}^-α: E={law.E:.3g}, α={law.alpha:.3g}")
            ax.axhline(law.E, color="tab:red", linestyle=":", linewidth=1, label=f"E = {law.E:.3g}")
            if variable == "C":
                ax.scatter(fitted, [p.value for p in shown if p.name in fit.fitted], s=90, facecolors="none",
                           edgecolors="tab:red", zorder=4, label="compute frontier")
        if shown:
            ax.set_xscale("log")
            if all(p.value > 0 for p in shown):
                ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))  # not 8x10^0: losses span little
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "no finished job", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label(fit.metric))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(fit.law.describe() if fit.law else fit.reason, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_lines(fit: ScalingFit) -> list[str]:
    """The summary's scaling section: the plot, what was fitted and the constants, or why nothing was."""
    lines = ["", "## Scaling", "", f"![{metric_label(fit.metric)} against N and FLOPs]({SCALING_PNG})", ""]
    if fit.law is None:
        return lines + [f"No fit: {fit.reason}."]
    of = "" if fit.metric == "final_val_loss" else f" of {fit.metric}"
    return lines + [f"Fit{of} ({fit.reason}): {fit.law.describe()}.", "",
                    f"Jobs in the fit: {', '.join(fit.fitted)}."]
