"""Every option of every group composes and instantiates; bad values fail early with the key named."""

import gymnasium as gym
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from trpo.config import CONF_DIR, compose
from trpo.advantages import GAE
from trpo.config import ConfigError, FisherProduct, validate_config
from trpo.envs import make_vector_env
from trpo.networks import ValueNetwork, build_policy
from trpo.solvers import FISHER_VECTOR_PRODUCTS, PolicySolver


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_the_groups_hold_the_promised_options():
    assert set(options("env")) >= {"hopper", "walker", "halfcheetah", "ant", "humanoid", "swimmer",
                                   "inverted_pendulum", "cartpole", "pendulum"}
    assert set(options("network")) >= {"mlp64", "mlp256"}
    assert options("advantage") == ["gae", "mc", "td"]
    assert options("solver") == ["kl_penalty", "npg", "ppo_clip", "sb3_trpo", "trpo", "vpg"]


@pytest.mark.parametrize("ablation", options("ablation"))
def test_each_ablation_option_changes_the_defaults_in_its_own_keys_only(compose_config, ablation):
    from omegaconf import OmegaConf

    from trpo.config import flatten

    def values(overrides):
        cfg = compose_config(overrides)
        validate_config(cfg)
        flat = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        # env.tuned is a block or null: compared whole.
        tuned = {k: flat.pop(k) for k in [k for k in flat if k.startswith("env.tuned.")]}
        flat["env.tuned"] = tuned or flat.get("env.tuned")
        return flat

    # An ablation of a task's own setting shows on that task; the others on one that sets none.
    task = {"sigma_one": ["env=ant"], "damping_as_written": ["env=ant"],
            "untuned": ["env=hopper"], "steps_2048": ["env=ant"]}.get(ablation, ["env=walker"])
    defaults, changed = values(task), values(task + [f"ablation={ablation}"])
    differing = sorted(k for k in defaults if defaults[k] != changed.get(k))
    assert set(changed) == set(defaults)
    expected = {"none": [], "no_reward_norm": ["normalize_reward"],
                "no_obs_norm": ["normalize_obs"], "gae_lambda_097": ["advantage.lam"],
                "critic_5_epochs": ["critic.epochs"], "batch_4096": ["steps_per_iteration"],
                "envs_2x1024": ["num_envs"], "small_trust_region": ["solver.max_kl"],
                "shrinking_trust_region": ["solver.max_kl_final"],
                "log_std_low": ["network.log_std_init"], "steps_1024": ["steps_per_iteration"],
                "damping_per_action_dim": ["solver.cg_damping_per_action_dim"],
                "value_target_norm": ["critic.normalize_targets"],
                "sigma_one": ["env.log_std_init", "network.log_std_init"], "tuned": [],
                "steps_2048": ["env.steps_per_iteration", "steps_per_iteration"],
                "untuned": ["advantage.lam", "critic.epochs", "critic.lr", "env.tuned",
                            "solver.cg_iters", "solver.max_kl"],
                "damping_as_written": ["env.cg_damping_per_action_dim",
                                       "solver.cg_damping_per_action_dim"]}
    assert differing == expected[ablation]


@pytest.mark.parametrize("env", options("env"))
def test_every_env_composes_validates_and_builds(compose_config, env):
    cfg = compose_config([f"env={env}"])
    validate_config(cfg)
    envs = make_vector_env(cfg.env, num_envs=1)
    try:
        assert envs.num_envs == 1
        assert isinstance(envs.single_action_space, (gym.spaces.Box, gym.spaces.Discrete))
    finally:
        envs.close()


@pytest.mark.parametrize("network", options("network"))
@pytest.mark.parametrize("env", ["hopper", "cartpole"])
def test_every_network_instantiates_for_box_and_discrete_actions(compose_config, network, env):
    cfg = compose_config([f"network={network}", f"env={env}"])
    validate_config(cfg)
    env = gym.make(cfg.env.id)
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    policy = build_policy(obs_space, action_space, cfg.network)
    value = ValueNetwork(obs_space.shape[0], cfg.network)
    obs = torch.zeros(5, obs_space.shape[0])
    assert policy(obs).sample().shape[0] == 5
    assert value(obs).shape == (5,)
    first_layer = next(m for m in policy.modules() if isinstance(m, torch.nn.Linear))
    assert first_layer.out_features == cfg.network.policy_hidden[0]


@pytest.mark.parametrize("advantage, lam", [("gae", 0.95), ("td", 0.0), ("mc", 1.0)])
def test_every_advantage_instantiates_to_gae_with_its_lambda(compose_config, advantage, lam):
    cfg = compose_config([f"advantage={advantage}", "env=walker"])  # a task without its own λ
    estimator = instantiate(cfg.advantage)
    assert isinstance(estimator, GAE)
    assert (estimator.gamma, estimator.lam) == (0.99, lam)


# sb3_trpo names a learner of its own (solver.learner), tests/test_sb3_baseline.py.
@pytest.mark.parametrize("solver", [s for s in options("solver") if s != "sb3_trpo"])
def test_every_solver_instantiates_with_a_policy(compose_config, solver):
    cfg = compose_config([f"solver={solver}"])
    validate_config(cfg)
    policy = build_policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)), cfg.network)
    # As the learner builds it, with the run's seed.
    solver = instantiate(cfg.solver, policy=policy, seed=cfg.seed)
    assert isinstance(solver, PolicySolver) and solver.seed == cfg.seed


def test_defaults_are_the_documented_ones(compose_config):
    cfg = compose_config(["env.tuned=null"])  # the options' own, which Hopper-v5 tunes
    assert cfg.env.id == "Hopper-v5"
    assert cfg.solver.max_kl == 0.01
    assert cfg.advantage.lam == 0.95 and cfg.advantage.gamma == 0.99
    assert cfg.solver.cg_iters == 25 and cfg.normalize_reward and cfg.normalize_obs
    assert (cfg.critic.lr, cfg.critic.epochs) == (1e-3, 20)
    assert cfg.solver.fvp is FisherProduct.analytic and cfg.solver.fvp_subsample == 1
    assert list(cfg.network.policy_hidden) == [64, 64]
    assert cfg.logger.wandb.mode.value == "offline"
    assert cfg.total_steps == 1_000_000


@pytest.mark.parametrize("env, gamma, max_kl", [("walker", 0.99, 0.01), ("swimmer", 0.9999, 0.01),
                                                ("halfcheetah", 0.99, 0.04)])
def test_a_task_sets_its_own_discount_and_trust_region_where_the_zoo_does(compose_config, env,
                                                                          gamma, max_kl):
    cfg = compose_config([f"env={env}"])
    assert cfg.advantage.gamma == gamma and cfg.solver.max_kl == max_kl
    assert compose_config([f"env={env}", "solver=sb3_trpo"]).solver.target_kl == max_kl
    # An explicit value still wins over the task's.
    cfg = compose_config([f"env={env}", "advantage.gamma=0.9", "solver.max_kl=0.02"])
    assert cfg.advantage.gamma == 0.9 and cfg.solver.max_kl == 0.02


HOPPER_TUNED = {"advantage.lam": 0.9754470543931001, "critic.lr": 0.0008428296324035232,
                "critic.epochs": 5, "solver.max_kl": 0.008555963390392501, "solver.cg_iters": 5}


@pytest.mark.parametrize("solver", ["trpo", "npg", "kl_penalty", "ppo_clip", "vpg", "sb3_trpo"])
def test_a_tasks_tuned_values_reach_every_solver_that_has_the_setting(compose_config, solver):
    from trpo.config import flatten

    def settings(overrides):
        cfg = compose_config([f"solver={solver}", *overrides])
        validate_config(cfg)
        flat = flatten(OmegaConf.to_container(cfg, resolve=True))
        if solver == "sb3_trpo":  # the baseline's δ
            flat["solver.max_kl"] = flat.pop("solver.target_kl")
        return {key: flat[key] for key in HOPPER_TUNED if key in flat}

    shared = {"advantage.lam", "critic.lr", "critic.epochs"}
    natural_gradient = {"solver.max_kl", "solver.cg_iters"}
    tuned, untuned = settings(["env=hopper"]), settings(["env=hopper", "env.tuned=null"])
    has = shared | (natural_gradient if solver in ("trpo", "npg") else
                    {"solver.max_kl"} if solver == "sb3_trpo" else set())
    assert set(tuned) == has
    assert tuned == {key: HOPPER_TUNED[key] for key in has}
    assert all(untuned[key] != tuned[key] for key in has)
    # A task without tuned values keeps the options' own; an explicit value wins over the task's.
    assert settings(["env=walker"]) == untuned
    assert settings(["env=hopper", "advantage.lam=0.9"])["advantage.lam"] == 0.9


@pytest.mark.parametrize("override, key", [("env.tuned.lam=1.5", "env.tuned.lam"),
                                           ("env.tuned.cg_iters=0", "env.tuned.cg_iters"),
                                           ("env.tuned.max_kl=2", "env.tuned.max_kl")])
def test_a_bad_tuned_value_is_named_by_its_own_key(compose_config, override, key):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config([override]))
    assert error.value.key == key


@pytest.mark.parametrize("solver", ["trpo", "npg"])
def test_a_task_may_set_the_cg_damping_rule_of_both_cg_solvers(compose_config, solver):
    own = ["env=hopper", f"solver={solver}", "env.cg_damping_per_action_dim=true"]
    assert compose_config(own).solver.cg_damping_per_action_dim is True
    assert compose_config([*own, "solver.cg_damping_per_action_dim=false"]
                          ).solver.cg_damping_per_action_dim is False
    assert compose_config(["env=walker", f"solver={solver}"]
                          ).solver.cg_damping_per_action_dim is False
    assert compose_config(["env=ant", f"solver={solver}"]).solver.cg_damping_per_action_dim


def test_a_task_may_set_its_steps_per_update_and_an_explicit_value_still_wins(compose_config):
    assert compose_config(["env=walker"]).steps_per_iteration == 2048
    assert compose_config(["env=ant"]).steps_per_iteration == 1024  # Ant-v5's own
    assert compose_config(["env=ant", "steps_per_iteration=4096"]).steps_per_iteration == 4096
    assert compose_config(["env=ant", "ablation=steps_2048"]).steps_per_iteration == 2048
    with pytest.raises(ConfigError, match=r"^env.steps_per_iteration=0 is not allowed"):
        validate_config(compose_config(["env=ant", "env.steps_per_iteration=0"]))


def test_a_task_may_set_the_policys_initial_sigma_and_an_explicit_value_still_wins(
        compose_config):
    assert compose_config(["env=hopper"]).network.log_std_init == 0.0  # the network option's
    assert compose_config(["env=ant"]).network.log_std_init == -0.5  # Ant-v5's own
    assert compose_config(["env=ant", "ablation=sigma_one"]).network.log_std_init == 0.0
    cfg = compose_config(["env=ant", "network.log_std_init=-1"])
    assert cfg.network.log_std_init == -1.0
    with pytest.raises(ConfigError, match=r"^env.log_std_init=11.0 is not allowed: must be in "
                                          r"\[-10, 10\] or null$"):
        validate_config(compose_config(["env=ant", "env.log_std_init=11"]))


def test_a_run_with_a_tasks_setting_made_by_hand_counts_as_the_same_run(compose_config):
    from omegaconf import OmegaConf

    from trpo.config import trains_the_same

    def saved(overrides):
        return OmegaConf.to_container(compose_config(overrides), resolve=True, enum_to_str=True)

    by_hand = saved(["env=ant", "env.log_std_init=null", "network.log_std_init=-0.5"])
    assert trains_the_same(by_hand, compose_config(["env=ant"]))  # reused, resumed alike
    assert not trains_the_same(saved(["env=ant", "ablation=sigma_one"]),
                               compose_config(["env=ant"]))
    # Hopper-v5's tuned values and Ant-v5's steps per update, likewise.
    tuned_by_hand = saved(["env=hopper", "env.tuned=null",
                           *(f"{key}={value}" for key, value in HOPPER_TUNED.items())])
    assert trains_the_same(tuned_by_hand, compose_config(["env=hopper"]))
    assert not trains_the_same(saved(["env=hopper", "ablation=untuned"]),
                               compose_config(["env=hopper"]))
    steps_by_hand = saved(["env=ant", "env.steps_per_iteration=null", "steps_per_iteration=1024"])
    assert trains_the_same(steps_by_hand, compose_config(["env=ant"]))


@pytest.mark.parametrize("solver", ["trpo", "npg"])
@pytest.mark.parametrize("fvp", list(FisherProduct))
def test_each_fisher_vector_product_is_chosen_by_config(compose_config, solver, fvp):
    cfg = compose_config([f"solver={solver}", f"solver.fvp={fvp.value}"])
    validate_config(cfg)
    policy = build_policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)), cfg.network)
    built = instantiate(cfg.solver, policy=policy, seed=0)
    assert built.fisher_vector_product is FISHER_VECTOR_PRODUCTS[fvp]


def test_module_colon_id_env_ids_are_accepted(compose_config):
    cfg = compose_config(["env=cartpole", "env.id=tests.toy_envs:Counter-v0"])
    validate_config(cfg)


@pytest.mark.parametrize("override, key", [
    ("solver.max_kl=0", "solver.max_kl"),
    ("solver.max_kl=-0.01", "solver.max_kl"),
    ("solver.max_kl_final=0", "solver.max_kl_final"),
    ("advantage.lam=1.5", "advantage.lam"),
    ("advantage.lam=-0.1", "advantage.lam"),
    ("advantage.gamma=0", "advantage.gamma"),
    ("advantage.gamma=1.01", "advantage.gamma"),
    ("total_steps=0", "total_steps"),
    ("total_steps=-5", "total_steps"),
    ("steps_per_iteration=0", "steps_per_iteration"),
    ("steps_per_iteration=100", "steps_per_iteration"),  # not a multiple of num_envs=8
    ("num_envs=0", "num_envs"),
    ("critic.minibatch_size=0", "critic.minibatch_size"),
    ("solver=kl_penalty", None),  # valid, the control case
    ("env.id=NoSuchEnv-v0", "env.id"),
    ("env.id=no_such_module:Thing-v0", "env.id"),
])
def test_out_of_range_values_raise_one_line_naming_the_key(compose_config, override, key):
    """The schema's checks, then the environment's (trpo.envs.checks), as a run does them."""
    from trpo.envs.checks import check_envs

    cfg = compose_config([override])
    if key is None:
        validate_config(cfg)
        check_envs(cfg)
        return
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
        check_envs(cfg)
    message = str(error.value)
    assert error.value.key == key
    assert message.startswith(f"{key}=") and "\n" not in message


def test_npg_only_values(compose_config):
    with pytest.raises(ConfigError, match=r"^solver\.step_size="):
        validate_config(compose_config(["solver=npg", "solver.step_size=-1"]))
    with pytest.raises(ConfigError, match=r"^solver\.target_kl="):
        validate_config(compose_config(["solver=kl_penalty", "solver.target_kl=0"]))
    with pytest.raises(ConfigError, match=r"^solver\.clip_range="):
        validate_config(compose_config(["solver=ppo_clip", "solver.clip_range=1.5"]))
    with pytest.raises(ConfigError, match=r"^solver\.max_grad_norm="):
        validate_config(compose_config(["solver=ppo_clip", "solver.max_grad_norm=0"]))
    with pytest.raises(ConfigError, match=r"^solver\.minibatch_size="):
        validate_config(compose_config(["solver=vpg", "solver.minibatch_size=0"]))
    validate_config(compose_config(["solver=vpg", "solver.minibatch_size=null"]))


@pytest.mark.parametrize("override, error", [
    ("solver.maxkl=0.1", ConfigCompositionException),       # a typo in a key
    ("total_steps=lots", ConfigCompositionException),       # a wrong type
    ("network.activation=sigmoid", ConfigCompositionException),  # not one of the enum values
    ("solver.fvp=hessian", ConfigCompositionException),  # not one of the enum values
    ("advantage=td", None),
])
def test_typos_and_wrong_types_fail_at_composition(compose_config, override, error):
    if error is None:
        compose_config([override])
        return
    with pytest.raises(error):
        compose_config([override])


def test_lambda_is_not_a_key_of_td_or_mc(compose_config):
    """TD and Monte-Carlo fix λ; setting it is a composition error, not a silent no-op."""
    for advantage in ("td", "mc"):
        with pytest.raises(ConfigCompositionException):
            compose_config([f"advantage={advantage}", "advantage.lam=0.5"])


def test_unknown_group_option_lists_the_choices(compose_config):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["solver=sgd"])
    message = str(error.value)
    assert "trpo" in message and "npg" in message and "kl_penalty" in message


def test_schema_errors_are_omegaconf_validation_errors():
    """The schemas themselves reject wrong types when used directly, outside Hydra."""
    from omegaconf import OmegaConf

    from trpo.config import TRPOConfig

    schema = OmegaConf.structured(TRPOConfig)
    with pytest.raises(ValidationError):
        schema.max_kl = "big"
    with pytest.raises(ConfigAttributeError):
        schema.maxkl = 0.1


@pytest.mark.parametrize("study", options("experiment"))
def test_every_study_composes_validates_and_declares_a_sweep(compose_config, study):
    cfg = compose([f"experiment={study}"], return_hydra_config=True)
    assert cfg.name == study
    assert cfg.hydra.sweeper.params, "a study names the values it sweeps"
    validate_config(compose_config([f"experiment={study}"]))


def stated_values(group: str, option: str, shared: bool = True) -> dict:
    """What ``conf/<group>/<option>.yaml`` states, with (``shared``) what it takes from
    ``conf/shared/`` (raw: interpolations as written)."""
    from omegaconf import OmegaConf

    yaml = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    values = {}
    for entry in yaml.get("defaults", []):
        name = str(entry)
        if shared and name.startswith("/shared/"):
            values.update(OmegaConf.to_container(OmegaConf.load(
                CONF_DIR / f"{name.split('@')[0].lstrip('/')}.yaml"), resolve=False))
    values.update({k: v for k, v in OmegaConf.to_container(yaml, resolve=False).items()
                   if k != "defaults"})
    return values


# Values two options of a group state alike, each from a source of its own.
ALIKE_BY_SOURCE = {("solver", "max_grad_norm", "None"): "no clipping: the PPO paper's KL penalty, "
                                                       "Spinning Up's VPG"}


@pytest.mark.parametrize("group", ["network", "advantage", "solver", "logger"])
def test_no_two_options_of_a_group_state_the_same_value(group):
    """A value options share is written once, in conf/shared/ (tasks' own values, conf/env/,
    coincide by nature and are left out)."""
    from trpo.cli import options

    seen = {}
    for option in options(group):
        for key, value in stated_values(group, option, shared=False).items():
            if (group, key, repr(value)) in ALIKE_BY_SOURCE:
                continue
            other = seen.setdefault((key, repr(value)), option)
            assert other == option, (f"{group}/{option}.yaml and {group}/{other}.yaml both state "
                                     f"{key}: {value!r}; write it once in conf/shared/")


def test_each_default_is_written_once_in_the_option_yaml():
    """A value an option's YAML states has no second default in its schema or constructor."""
    import dataclasses
    import inspect as inspect_module

    from hydra.utils import get_class, get_method
    from omegaconf import MISSING, OmegaConf

    from trpo.cli import option_schema, options

    for group in ("env", "network", "advantage", "solver", "logger"):
        for option in options(group):
            schema = option_schema(group, option)
            yaml = stated_values(group, option)
            stated = set(yaml)
            defaults = {f.name: f.default for f in dataclasses.fields(schema)}
            # A schema default the YAML repeats, rather than sets to a value of its own.
            twice = [k for k in stated if defaults.get(k, MISSING) is not MISSING
                     and getattr(defaults[k], "value", defaults[k]) == yaml[k]]
            assert not twice, f"{group}/{option}.yaml and {schema.__name__} both set {twice}"
            target = defaults.get("_target_")
            if target and target is not MISSING:
                built = (get_class(target) if target[0].isupper() or "." in target
                         and target.rsplit(".", 1)[1][0].isupper() else get_method(target))
                signature = inspect_module.signature(built)
                with_defaults = [name for name, p in signature.parameters.items()
                                 if name in stated and p.default is not p.empty]
                assert not with_defaults, f"{target} has defaults for {with_defaults}"


@pytest.mark.parametrize("override, key", [
    ("solver.cg_damping=inf", "solver.cg_damping"),
    ("solver.max_kl=1e308", "solver.max_kl"),
    ("network.log_std_init=700", "network.log_std_init"),
    ("network.policy_hidden=[100000]", "network.policy_hidden"),
    ("steps_per_iteration=1099511627776", "steps_per_iteration"),
    ("eval_episodes=10000000", "eval_episodes"),
    ("+env.kwargs.frame_skip=0", "env.kwargs"),
    ("+env.kwargs.xml_file=/etc/passwd", "env.kwargs"),
    ("env.max_episode_steps=0", "env.max_episode_steps"),
    ("+env.kwargs.ctrl_cost_weight=abc", "env.kwargs"),  # used to fail at the first step
    ("+env.kwargs.reset_noise_scale=nan", "env.kwargs"),
])
def test_values_that_pass_their_type_but_cannot_train_are_refused_naming_the_key(
        compose_config, override, key):
    from trpo.envs.checks import check_envs

    cfg = compose_config(["env=hopper", override])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
        check_envs(cfg)
    assert error.value.key == key and "\n" not in str(error.value)
