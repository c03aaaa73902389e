"""Random streams (trpo.seeding): no two runs, roles or indices share one."""

import numpy as np
import pytest

from tests.conftest import TINY
from trpo.seeding import stream_seeds

pytestmark = pytest.mark.unit


def test_no_two_runs_or_roles_share_a_random_stream():
    train_envs = [s for seed in range(10) for s in stream_seeds(seed, "train_envs", 8)]
    assert len(set(train_envs)) == 80  # with seed + i, env i of s+1 was env i+1 of s
    evaluation = [s for seed in range(5) for s in stream_seeds(seed, "evaluation", 5, 10)]
    assert len(set(evaluation)) == 25  # with seed + iteration + j, 9 distinct starts
    later = [s for seed in range(5) for s in stream_seeds(seed, "evaluation", 5, 20)]
    assert not set(evaluation) & set(later)
    assert not set(train_envs) & set(evaluation)


def test_neighbouring_seeds_start_their_environments_in_different_states(compose_config,
                                                                         tmp_path):
    from trpo.learner import OnPolicyLearner

    first, second = (OnPolicyLearner(compose_config(["env=hopper", *TINY, f"seed={s}"]))
                     for s in (0, 1))
    try:
        starts = np.concatenate([first.collector.obs, second.collector.obs])
        assert len({tuple(row) for row in starts.round(12)}) == 4
    finally:
        first.close()
        second.close()
