"""A run's final score, the one number the analysis, the sweep summary and the studies report.

It averages the evaluations over the last 10% of the run's environment steps rather than
taking the last one: one evaluation of a few episodes swings by hundreds on MuJoCo tasks.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

# The share of a run's environment steps, at its end, whose evaluations the final score averages.
FINAL_WINDOW = 0.1


def final_score(env_steps: np.ndarray, values: np.ndarray, window: float = FINAL_WINDOW) -> float:
    """Mean of ``values`` (NaN where a row logged none) over the rows with
    ``env_steps ≥ (1 − window)·env_steps[-1]``; the last logged value if none falls there; NaN
    if none was ever logged. ``env_steps`` and ``values`` are a run's rows, in order."""
    env_steps, values = np.asarray(env_steps, float), np.asarray(values, float)
    logged = ~np.isnan(values)
    if not logged.any():
        return math.nan
    in_window = logged & (env_steps >= (1 - window) * env_steps[-1])
    return float(values[in_window].mean() if in_window.any() else values[logged][-1])


def final_score_of_rows(rows: Sequence[Mapping[str, Any]]) -> float:
    """:func:`final_score` of a run's rows (``progress.csv``'s, or a run's history: mappings
    with ``env_steps`` and, where evaluated, ``eval_return_mean``); NaN for no rows."""
    return final_score([row.get("env_steps") for row in rows],
                       [row.get("eval_return_mean") for row in rows])


def peak_score(env_steps: np.ndarray, values: np.ndarray,
               window: float = FINAL_WINDOW) -> tuple[float, float]:
    """The best :func:`final_score` the run would have had, had it stopped at one of its logged
    rows: the highest mean of ``values`` over ``window``·(its last ``env_steps``) steps ending
    at a logged row at least that far in (both ends included, as the final score's), the final
    score among them; returned with the steps where that stretch ends. NaN, NaN if nothing was
    logged. How far a run's end falls below its best stretch: late collapse against a plateau."""
    env_steps, values = np.asarray(env_steps, float), np.asarray(values, float)
    final = final_score(env_steps, values, window)
    if math.isnan(final):
        return math.nan, math.nan
    best, at = final, float(env_steps[-1])
    width = window * env_steps[-1]
    logged = ~np.isnan(values)
    for end in env_steps[logged & (env_steps >= width)]:
        stretch = logged & (env_steps >= end - width) & (env_steps <= end)
        score = float(values[stretch].mean())
        if score > best:
            best, at = score, float(end)
    return best, at
