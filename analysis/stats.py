"""Statistics for few-seed RL results (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice"), as pure functions on arrays of scores.

Scores are ``[runs, tasks]`` arrays: one row per seed, one column per environment. The
definitions follow rliable 1.2.0 (``rliable.metrics`` and ``rliable.library``), which is not a
dependency here because its ``arch`` dependency fails to import next to pandas 3; the tests check
these functions against values computed once with rliable (``tests/rliable_reference.json``,
written by ``tests/rliable_reference.py``) and against naive second implementations.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# Resamples of every bootstrap interval: rliable's default for interval estimates. Between
# bootstrap seeds the suite's interval ends move by up to 10 (45 at 2,000 resamples).
BOOTSTRAP_REPS = 50_000
# Resamples drawn and evaluated at once: memory of CHUNK × runs × tasks (× points) per array.
CHUNK = 2_000


def interquartile_mean(scores: np.ndarray) -> float:
    """Mean of the middle 50% of all scores pooled, ``scipy.stats.trim_mean(x, 0.25)``.

    ``int(0.25·n)`` scores are cut from each end; with fewer than 4 scores nothing is cut and
    the IQM is the mean.
    """
    return float(_iqm_of_each(np.asarray(scores, dtype=float).reshape(1, -1))[0])


def mean(scores: np.ndarray) -> float:
    """Mean over runs of each task, averaged over tasks (rliable's ``aggregate_mean``)."""
    return float(_mean_of_each(np.asarray(scores, dtype=float)[None])[0])


# The statistics above and probability_of_improvement below, each of a whole chunk of
# bootstrap resamples at once (a leading axis of k resamples).

def _iqm_of_each(resamples: np.ndarray) -> np.ndarray:
    """:func:`interquartile_mean` of each resample of ``[k, ...]``, its scores pooled."""
    flat = np.sort(resamples.reshape(len(resamples), -1), axis=1)
    cut = int(0.25 * flat.shape[1])
    return flat[:, cut:flat.shape[1] - cut].mean(axis=1)


def _mean_of_each(resamples: np.ndarray) -> np.ndarray:
    """:func:`mean` of each matrix of ``[k, runs, tasks]``."""
    return resamples.mean(axis=1).mean(axis=1)


def _probability_of_improvement_of_each(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`probability_of_improvement` of each pair of ``[k, runs, tasks]`` matrices."""
    diff = x[:, :, None, :] - y[:, None, :, :]  # [k, x runs, y runs, tasks]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2)).mean(axis=1)


def stratified_bootstrap_ci(statistic: Callable[..., float], *score_sets: np.ndarray,
                            reps: int = BOOTSTRAP_REPS, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic(*score_sets)`` by stratified bootstrap.

    Each resample draws, for every ``[runs, tasks]`` array and every task (the stratum), as many
    runs as it has, with replacement; the arrays are resampled independently. The statistics of
    this module are evaluated :data:`CHUNK` resamples at a time; any other, one at a time.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s, dtype=float) for s in score_sets]
    of_each = _OF_EACH.get(statistic)
    estimates = np.empty(reps)
    for first in range(0, reps, CHUNK):
        count = min(CHUNK, reps - first)
        resampled = [np.take_along_axis(array[None], rng.integers(
            0, array.shape[0], size=(count, *array.shape)), axis=1) for array in arrays]
        estimates[first:first + count] = (
            of_each(*resampled) if of_each is not None else
            [statistic(*(r[k] for r in resampled)) for k in range(count)])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y): the chance that a run of X beats a run of Y on a task, averaged over tasks.

    Per task it is the Mann-Whitney U statistic over all pairs of runs, ties counting ½
    (rliable's ``probability_of_improvement``). ``x`` and ``y`` are ``[runs, tasks]``; their run
    counts may differ.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(_probability_of_improvement_of_each(x[None], y[None])[0])


def performance_profile(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of runs with a score above each threshold τ, averaged over tasks.

    rliable's ``create_performance_profile`` with ``use_score_distribution=True``.
    """
    scores = np.asarray(scores, dtype=float)
    return np.array([np.mean(np.mean(scores > tau, axis=0)) for tau in thresholds])


def performance_profile_ci(scores: np.ndarray, thresholds: Sequence[float],
                           reps: int = BOOTSTRAP_REPS, confidence: float = 0.95,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise stratified-bootstrap percentile bands of :func:`performance_profile`."""
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores, dtype=float)
    taus = np.asarray(thresholds, dtype=float)
    profiles = np.empty((reps, len(taus)))
    for first in range(0, reps, CHUNK):
        count = min(CHUNK, reps - first)
        resampled = np.take_along_axis(scores[None], rng.integers(
            0, scores.shape[0], size=(count, *scores.shape)), axis=1)
        # [k, runs, tasks, taus] → share above each τ per task → mean over tasks
        profiles[first:first + count] = (resampled[..., None] > taus).mean(axis=1).mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(profiles, tail, axis=0), np.percentile(profiles, 100 - tail, axis=0)


def normalize(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(scores − low) / (high − low)``: 0 at ``low`` (random), 1 at ``high`` (reference)."""
    return (np.asarray(scores, dtype=float) - low) / (high - low)


def iqm_along_runs(scores: np.ndarray) -> np.ndarray:
    """:func:`interquartile_mean` over axis −2 (runs) of ``[..., runs, points]``, vectorised."""
    ordered = np.sort(np.asarray(scores, dtype=float), axis=-2)
    runs = ordered.shape[-2]
    cut = int(0.25 * runs)
    return ordered[..., cut:runs - cut, :].mean(axis=-2)


def curve_iqm_ci(curves: np.ndarray, reps: int = BOOTSTRAP_REPS, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM across runs at each point of ``[runs, points]`` curves, with bootstrap percentile bands.

    NaN marks a point where a run was not measured (before its first evaluation, after its
    last); each point's IQM and band use only the runs measured there, and are NaN where none
    was. One task, so the stratified bootstrap resamples runs; points measured by the same runs
    share their resampled runs, so a band is the band of whole curves.
    """
    curves = np.asarray(curves, dtype=float)
    rng = np.random.default_rng(seed)
    iqm, low, high = (np.full(curves.shape[1], np.nan) for _ in range(3))
    measured = ~np.isnan(curves)
    tail = 100 * (1 - confidence) / 2
    # One bootstrap per set of measured runs; with complete curves that is one for every point.
    patterns, which = np.unique(measured, axis=1, return_inverse=True)
    which = which.ravel()
    for p in np.argsort([np.flatnonzero(which == p)[0] for p in range(patterns.shape[1])]):
        rows, points = np.flatnonzero(patterns[:, p]), np.flatnonzero(which == p)
        if rows.size == 0:
            continue
        sub = curves[np.ix_(rows, points)]
        estimates = np.concatenate([
            iqm_along_runs(sub[rng.integers(0, rows.size, size=(min(CHUNK, reps - first),
                                                                rows.size))])
            for first in range(0, reps, CHUNK)])
        iqm[points] = iqm_along_runs(sub)
        low[points], high[points] = np.percentile(estimates, [tail, 100 - tail], axis=0)
    return iqm, low, high


# The statistics :func:`stratified_bootstrap_ci` evaluates a chunk of resamples at a time.
_OF_EACH: dict[Callable, Callable] = {interquartile_mean: _iqm_of_each, mean: _mean_of_each,
                                      probability_of_improvement:
                                      _probability_of_improvement_of_each}
