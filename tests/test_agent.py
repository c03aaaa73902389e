"""After training: ``trpo.load_agent`` and ``python -m trpo.evaluate``, as a user meets them."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, TINY
from trpo import logger as logger_module
from trpo.agent import AgentLoadError, load_agent
from trpo.config import Activation, NetworkConfig
from trpo.networks import build_policy
from trpo.run_folder import CHECKPOINT, RunFolder
from trpo.train import train

ENVS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "hopper": "Hopper-v5"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(env)``: the folder of a finished two-iteration run on ``env`` (trained once)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF_DIR

    made = {}

    def run(env):
        if env not in made:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"env={env}", *TINY])
            made[env] = tmp_path_factory.mktemp(env)
            train(cfg, made[env])
            GlobalHydra.instance().clear()
        return made[env]

    return run



def raw_observations(env_id, count=8):
    """``count`` raw observations of ``env_id``, from resets and random steps."""
    env = gym.make(env_id)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    batch = [obs]
    while len(batch) < count:
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        batch.append(obs if not (terminated or truncated) else env.reset()[0])
    env.close()
    return np.stack(batch)


def naive_policy(run_dir):
    """What the saved policy does with a batch of raw observations, written out from agent.pt
    by hand: ``clip((obs - mean) / sqrt(var + 1e-8), ±obs_clip)``, the policy's mode, clipped
    to the action space."""
    saved = torch.load(run_dir / "agent.pt", weights_only=True)
    config = saved["config"]
    env = gym.make(config["env"]["id"])
    network = NetworkConfig(policy_hidden=list(config["network"]["policy_hidden"]),
                            activation=Activation(config["network"]["activation"]))
    policy = build_policy(env.observation_space, env.action_space, network)
    policy.load_state_dict(saved["policy"])
    stats = {k: v.numpy() for k, v in saved["obs_normalizer"].items()}

    def act(raw_obs):
        scaled = np.clip((raw_obs - stats["mean"]) / np.sqrt(stats["var"] + 1e-8),
                         -config["obs_clip"], config["obs_clip"]).astype(np.float32)
        with torch.no_grad():
            actions = policy.mode(policy(torch.from_numpy(scaled))).numpy()
        if isinstance(env.action_space, gym.spaces.Box):
            actions = np.clip(actions, env.action_space.low, env.action_space.high)
        return actions

    return act


# ------------------------------------------------------------------------------ the Python API


def test_importing_trpo_does_not_import_torch():
    code = ("import sys, trpo; print('torch' in sys.modules); trpo.load_agent; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["False", "True"], result.stderr[-2000:]


@pytest.mark.parametrize("env", ENVS)
def test_act_on_raw_observations_is_the_policy_mode_on_normalised_ones(runs, env):
    run_dir = runs(env)
    agent = load_agent(run_dir)
    raw = raw_observations(ENVS[env])
    naive = naive_policy(run_dir)
    np.testing.assert_array_equal(agent.act(raw), naive(raw))  # a batch
    for obs in raw:  # one at a time (a batch of one: float32 sums differ in the last bit)
        np.testing.assert_array_equal(agent.act(obs), naive(obs[None])[0])
    assert agent.act(raw[0]).shape == agent.action_space.shape
    assert agent.iteration == 2 and agent.env_steps == 256 and agent.source.name == "agent.pt"
    assert agent.config.env.id == ENVS[env] and agent.config.steps_per_iteration == 128


def test_stochastic_actions_are_seeded_and_stay_in_the_action_space(runs):
    run_dir = runs("pendulum")
    raw = np.repeat(raw_observations("Pendulum-v1", 1), 500, axis=0)
    first, second = load_agent(run_dir, seed=1), load_agent(run_dir, seed=1)
    actions = first.act(raw, deterministic=False)
    np.testing.assert_array_equal(actions, second.act(raw, deterministic=False))
    assert len(np.unique(actions)) > 100  # samples, not the mean
    assert actions.min() >= -2.0 and actions.max() <= 2.0  # Pendulum's torque bounds
    assert not np.array_equal(actions, load_agent(run_dir, seed=2).act(raw, deterministic=False))


def fail_at_iteration(monkeypatch, iteration):
    """Make training fail (a full disk) when it logs ``iteration``, after its checkpoints."""
    real_write = logger_module.CSVWriter.write

    def write(self, row):
        if row["iteration"] == iteration:
            raise OSError("No space left on device")
        real_write(self, row)

    monkeypatch.setattr(logger_module.CSVWriter, "write", write)


def test_an_unfinished_run_gives_the_agent_of_its_newest_checkpoint(compose_config, tmp_path,
                                                                     monkeypatch):
    cfg = compose_config(["env=hopper", *TINY, "total_steps=512", "checkpoint_every=2"])
    with monkeypatch.context() as patch:
        fail_at_iteration(patch, 4)
        with pytest.raises(OSError):
            train(cfg, tmp_path)
    assert not (tmp_path / "agent.pt").exists()
    agent = load_agent(tmp_path)
    assert agent.source == tmp_path / CHECKPOINT and agent.iteration == 2
    state = next(state for _, state in RunFolder(tmp_path).read_checkpoints())
    raw = raw_observations("Hopper-v5")
    scaled = np.clip((raw - state["obs_normalizer"]["mean"]) / np.sqrt(
        state["obs_normalizer"]["var"] + 1e-8), -10, 10).astype(np.float32)
    policy = build_policy(agent.observation_space, agent.action_space, NetworkConfig())
    policy.load_state_dict(state["policy"])
    with torch.no_grad():
        mean = np.clip(policy.mode(policy(torch.from_numpy(scaled))).numpy(), -1, 1)
    np.testing.assert_array_equal(agent.act(raw), mean)


def test_a_finished_run_trained_on_gives_its_newer_checkpoint(compose_config, tmp_path,
                                                              monkeypatch):
    """agent.pt of iteration 2, then the run extended and stopped after a checkpoint of
    iteration 3: the checkpoint is the newer policy."""
    train(compose_config(["env=cartpole", *TINY]), tmp_path)
    with monkeypatch.context() as patch:
        fail_at_iteration(patch, 4)
        with pytest.raises(OSError):
            train(compose_config(["env=cartpole", *TINY, "total_steps=512",
                                  "checkpoint_every=1"]), tmp_path)
    agent = load_agent(tmp_path)
    assert agent.source.name == CHECKPOINT and agent.iteration == 3


def test_what_cannot_be_loaded_says_why_in_one_line(tmp_path):
    cases = {"missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "other": tmp_path / "other"}
    cases["empty"].mkdir()
    cases["other"].mkdir()
    torch.save({"model": torch.zeros(3)}, cases["other"] / "agent.pt")
    (cases["other"] / "progress.csv").write_text("a,b\n1,2\n")  # SB3 writes one too
    messages = {}
    for name, path in cases.items():
        with pytest.raises(AgentLoadError) as error:
            load_agent(path)
        messages[name] = str(error.value)
        assert "\n" not in messages[name]
    assert messages["missing"] == f"no such folder: {cases['missing']}"
    assert messages["empty"] == (f"{cases['empty']} is not a trpo-lab run folder (no agent.pt, "
                                 "checkpoint.ckpt or status.json)")
    assert messages["other"] == (f"{cases['other']} has no usable agent: agent.pt: not a "
                                 "trpo-lab agent (no policy, obs_normalizer, config, iteration)")
