"""The statistics of the v2 proof: mean ± std over seeds, a paired test per seed, Kendall tau with
a bootstrap confidence interval. Pure functions of lists; None wherever a value is undefined."""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy.stats import kendalltau, ttest_rel


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def median_of(xs: list[float | None]) -> float | None:
    """The median, None where a value is missing (a results file written before it was recorded)."""
    return None if not xs or None in xs else statistics.median(xs)


def mean_std(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def paired(a: list[float], b: list[float]) -> dict:
    """``a`` against ``b``, paired by position (the seed): the per-seed differences, their mean and
    std, and the two-sided paired t-test's p-value (None under two pairs or with no spread)."""
    diffs = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(diffs)
    p = None
    if len(diffs) > 1 and (std or 0) > 0:
        p = _finite(ttest_rel(a, b).pvalue)
    return {"diffs": diffs, "mean": mean, "std": std, "p": p, "wins": sum(d > 0 for d in diffs), "n": len(diffs)}


def tau_ci(x: list[float], y: list[float], *, resamples: int, level: float = 0.95, seed: int = 0) -> dict:
    """Kendall tau of (x, y), its p-value, and a percentile bootstrap interval over the pairs
    (seeded; resamples where tau is undefined, all ties, are left out)."""
    stat = kendalltau(x, y) if len(x) > 1 else None
    tau = None if stat is None else _finite(stat.statistic)
    tau = None if tau is None else round(tau, 12)  # a ratio of pair counts: past 12 digits is float noise
    out = {"tau": tau, "p": None if tau is None else _finite(stat.pvalue), "lo": None, "hi": None, "n": len(x),
           "level": level}
    if tau is None:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (resamples, len(x)))
    taus = kendall_tau_b(np.asarray(x, dtype=float)[idx], np.asarray(y, dtype=float)[idx])
    taus = np.round(taus[np.isfinite(taus)], 12)
    if taus.size:
        out["lo"], out["hi"] = (float(v) for v in np.quantile(taus, [(1 - level) / 2, (1 + level) / 2]))
    return out


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b (scipy's default) of each row pair of ``x`` and ``y`` (shape R x n) at once:
    the bootstrap's thousands of resamples would take minutes one scipy call at a time. NaN where
    a row is all ties."""
    dx = np.sign(x[:, :, None] - x[:, None, :])
    dy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (dx * dy).sum((1, 2)) / np.sqrt((dx * dx).sum((1, 2)) * (dy * dy).sum((1, 2)))
