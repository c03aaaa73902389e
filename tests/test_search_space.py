"""Search spaces (conf/search_space/): each solver's loads and draws only values its runs accept;
a bad space is refused in one line naming its key."""

import optuna
import pytest

from trpo import search_space
from trpo.config import ConfigError


@pytest.mark.parametrize("solver", ["trpo", "npg", "kl_penalty", "ppo_clip"])
def test_each_solvers_space_shares_the_estimator_and_critic_and_is_accepted(solver):
    parameters = search_space.load(solver)
    keys = [p.key for p in parameters]
    assert keys[:3] == ["advantage.lam", "critic.lr", "critic.epochs"]  # the shared part
    assert all(key.startswith("solver.") for key in keys[3:]) and len(keys) > 3
    search_space.check(parameters, [f"solver={solver}", "env=hopper"])


def test_a_parameter_draws_in_its_range_or_from_its_choices():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    lr = search_space.parameter("critic.lr", {"low": 1e-4, "high": 1e-2, "log": True})
    epochs = search_space.parameter("critic.epochs", {"choices": [5, 10]})
    steps = search_space.parameter("solver.cg_iters", {"low": 5, "high": 30, "integer": True})
    assert 1e-4 <= lr.suggest(trial) <= 1e-2
    assert epochs.suggest(trial) in (5, 10)
    drawn = steps.suggest(trial)
    assert isinstance(drawn, int) and 5 <= drawn <= 30


@pytest.mark.parametrize("key, spec, message", [
    ("solver.max_kl", {"low": 0.1, "high": 0.01},
     "search_space.params.solver.max_kl={'low': 0.1, 'high': 0.01} is not allowed: is an empty "
     "range: low (0.1) must be below high (0.01)"),
    ("solver.max_kl", {"low": 0.0, "high": 0.1, "log": True},
     "search_space.params.solver.max_kl={'low': 0.0, 'high': 0.1, 'log': True} is not allowed: "
     "a log range needs low > 0"),
    ("critic.epochs", {"choices": []},
     "search_space.params.critic.epochs={'choices': []} is not allowed: choices must be a "
     "non-empty list, alone"),
    ("critic.lr", {"low": 1e-4, "hi": 1e-2},
     "search_space.params.critic.lr={'low': 0.0001, 'hi': 0.01} is not allowed: has no setting "
     "hi (settings: low, high, log, integer, choices)"),
])
def test_a_malformed_entry_is_one_line_naming_it(key, spec, message):
    with pytest.raises(ConfigError) as error:
        search_space.parameter(key, spec)
    assert str(error.value) == message


def test_a_key_the_run_lacks_or_a_value_it_refuses_is_one_line_naming_it():
    unknown = search_space.parameter("solver.max_kll", {"low": 0.001, "high": 0.1})
    with pytest.raises(ConfigError, match=r"^search_space\.params\.solver\.max_kll='solver\."
                                          r"max_kll' is not allowed: is not a setting of this "
                                          r"run \(solver has: .*max_kl,") as error:
        search_space.check([unknown], ["solver=trpo"])
    assert "\n" not in str(error.value)
    too_large = search_space.parameter("solver.max_kl", {"low": 0.001, "high": 5.0})
    with pytest.raises(ConfigError, match=r"^search_space\.params\.solver\.max_kl=5\.0 is not "
                                          r"allowed: can draw 5\.0, which the run refuses "
                                          r"\(solver\.max_kl=5\.0 is not allowed: must be at "
                                          r"most"):
        search_space.check([too_large], ["solver=trpo"])
    # A solver's own keys are not settings of another solver's runs.
    with pytest.raises(ConfigError, match=r"^search_space\.params\.solver\.lr='solver\.lr' is "
                                          r"not allowed: is not a setting of this run"):
        search_space.check(search_space.load("ppo_clip"), ["solver=trpo"])


def test_a_solver_without_a_space_is_named_with_those_that_have_one():
    with pytest.raises(ConfigError, match=r"^solver='vpg' is not allowed: has no search space; "
                                          r"the solvers with one: kl_penalty, npg, ppo_clip, "
                                          r"trpo$"):
        search_space.load("vpg")
