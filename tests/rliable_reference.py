"""Writes ``tests/rliable_reference.json``: rliable's statistics on small fixed score matrices, which
``tests/test_analysis.py`` checks :mod:`analysis.stats` against.

rliable is not a dependency of this project: 1.2.0 fails to import beside pandas 3 (its ``arch``
dependency raises a ``TypeError`` in a decorator). Run this script, not pytest, in a throwaway
environment where it imports, for example::

    python3.11 -m venv /tmp/rliable-venv
    /tmp/rliable-venv/bin/pip install rliable 'pandas<3' 'numpy<2.3'
    /tmp/rliable-venv/bin/python tests/rliable_reference.py

It records the package versions it ran with in the JSON. rliable resamples with numpy's global
random state (``np.random.choice``), seeded here, so rerunning it gives the same numbers.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from rliable import library as rly
from rliable import metrics

OUT = Path(__file__).with_name("rliable_reference.json")
# Resamples for the confidence intervals: rliable's default for interval estimates is 50,000;
# 20,000 keeps this script to a minute or two while its Monte-Carlo error stays ~0.003 here.
REPS = 20_000

# Final scores, [runs, tasks]: X has 7 runs, Y 5, on 3 tasks; Z shares two values with Y in
# task 0 (ties count ½ in the probability of improvement).
X = np.array([[1.152, 0.48, 1.375], [1.47, 0.024, 0.349], [1.064, 0.842, 0.992],
              [0.573, 1.44, 1.389], [1.033, 1.564, 1.234], [0.57, 1.184, 0.521],
              [1.439, 0.975, 0.908]])
Y = np.array([[0.46, 1.411, 0.723], [0.586, 0.624, 1.066], [0.983, 1.006, 1.015],
              [1.871, 0.597, 0.544], [0.393, 1.108, 1.364]])
Z = np.array([[0.46, 0.9, 0.2], [0.983, 1.2, 1.7], [0.5, 0.3, 1.1], [1.0, 1.5, 0.8]])
# Thresholds of the performance profile; 0.48 and 1.152 are scores of X (the profile counts
# scores strictly above τ).
TAUS = [0.0, 0.48, 0.5, 1.0, 1.152, 1.5, 2.0]
# Learning curves of one task, [runs, points]: the IQM at each point across runs.
CURVES = np.array([[0.0, 1.0, 2.0, 4.0], [0.5, 1.5, 1.0, 3.0], [0.2, 0.1, 2.5, 5.0],
                   [1.0, 2.0, 3.0, 3.5], [0.3, 0.9, 1.8, 6.0], [0.1, 1.1, 0.4, 2.0]])


def interval(score_dict, func):
    """rliable's percentile interval for each key (its ``get_interval_estimates``)."""
    np.random.seed(0)
    points, intervals = rly.get_interval_estimates(score_dict, func, reps=REPS)
    return ({k: np.asarray(v).tolist() for k, v in points.items()},
            {k: np.asarray(v).tolist() for k, v in intervals.items()})


def main() -> None:
    iqm = lambda s: np.array([metrics.aggregate_iqm(s)])  # noqa: E731
    iqm_points, iqm_cis = interval({"x": X, "y": Y}, iqm)
    poi = lambda a, b: np.array([metrics.probability_of_improvement(a, b)])  # noqa: E731
    poi_points, poi_cis = interval({"x_y": [X, Y], "y_z": [Y, Z]}, poi)
    np.random.seed(0)
    profiles, profile_cis = rly.create_performance_profile({"x": X}, TAUS, reps=REPS)
    # A [runs, tasks, points] array, as rliable takes learning curves (here one task).
    frames = CURVES[:, None, :]
    curve_iqm = lambda s: np.array([metrics.aggregate_iqm(s[..., j])  # noqa: E731
                                    for j in range(s.shape[-1])])
    curve_points, curve_cis = interval({"curves": frames}, curve_iqm)
    record = {
        "provenance": {
            "script": "tests/rliable_reference.py",
            "command": "python tests/rliable_reference.py (in a venv with rliable, pandas<3)",
            "python": sys.version.split()[0],
            **{p: metadata.version(p) for p in ("rliable", "arch", "numpy", "scipy", "pandas")},
            "reps": REPS, "confidence": 0.95, "method": "percentile",
            "seed": "np.random.seed(0) before each interval estimate",
        },
        "inputs": {"X": X.tolist(), "Y": Y.tolist(), "Z": Z.tolist(), "taus": TAUS,
                   "curves": CURVES.tolist()},
        "aggregate_iqm": {"x": metrics.aggregate_iqm(X), "y": metrics.aggregate_iqm(Y)},
        "aggregate_mean": {"x": metrics.aggregate_mean(X), "y": metrics.aggregate_mean(Y)},
        "iqm_ci": {k: [v[0][0], v[1][0]] for k, v in iqm_cis.items()},
        "probability_of_improvement": {
            "x_y": metrics.probability_of_improvement(X, Y),
            "y_x": metrics.probability_of_improvement(Y, X),
            "y_z": metrics.probability_of_improvement(Y, Z),
            "x_x": metrics.probability_of_improvement(X, X)},
        "probability_of_improvement_ci": {k: [v[0][0], v[1][0]] for k, v in poi_cis.items()},
        "performance_profile": {"x": np.asarray(profiles["x"]).tolist()},
        "performance_profile_ci": {"x": np.asarray(profile_cis["x"]).tolist()},
        "curve_iqm": curve_points["curves"],
        "curve_iqm_ci": curve_cis["curves"],
    }
    assert np.allclose(iqm_points["x"], record["aggregate_iqm"]["x"])
    assert np.allclose(poi_points["x_y"], record["probability_of_improvement"]["x_y"])
    OUT.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
