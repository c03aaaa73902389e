"""After training: ``trpo.load_agent`` and ``python -m trpo.evaluate``, as a user meets them."""

import ctypes.util
import os
import subprocess
import sys

import gymnasium as gym
import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, TINY, network_config
from trpo.io import logger as logger_module
from trpo.agent import AgentLoadError, TaskError, load_agent
from trpo.config import Activation, Init, NetworkConfig
from trpo.evaluate import evaluate_agent, main, play_episode
from trpo.networks import build_policy
from trpo.io.run_folder import CHECKPOINT, RunFolder
from trpo.seeding import stream_seeds
from trpo.train import train

ENVS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "hopper": "Hopper-v5"}
# Pendulum's episodes last 200 steps: 100 halve the time its GIF takes to write and read.
SHORTER = {"pendulum": ["env.max_episode_steps=100"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(env)``: the folder of a finished two-iteration run on ``env`` (trained once)."""
    from trpo.config import compose

    made = {}

    def run(env):
        if env not in made:
            cfg = compose([f"env={env}", *TINY, *SHORTER.get(env, [])])
            made[env] = tmp_path_factory.mktemp(env)
            train(cfg, made[env])
        return made[env]

    return run


def evaluate_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "trpo.evaluate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


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
    network = NetworkConfig(**{**config["network"],
                               "activation": Activation(config["network"]["activation"]),
                               "init": Init(config["network"]["init"])})
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


@pytest.mark.parametrize("env", ENVS)
def test_the_loaded_agent_replays_the_final_evaluation_of_training(runs, env):
    """Training's last evaluation, played again with the agent on the seeds training drew:
    the same return (normalisation, clipping and the task's settings are those of training).

    To 1e-6, not exactly: training evaluates its episodes as one batch and the agent one state at
    a time, and on some CPUs (AVX-512 here) torch's matrix product rounds the last bit of a
    float32 differently by batch size (returns then differ at 1e-8)."""
    run_dir = runs(env)
    agent = load_agent(run_dir)
    seeds = stream_seeds(agent.config.seed, "evaluation", agent.config.eval_episodes,
                         agent.iteration)
    with agent.make_env() as task:
        returns = [play_episode(agent, task, seed)[0] for seed in seeds]
    final = pd.read_csv(run_dir / "progress.csv")["eval_return_mean"].iloc[-1]
    assert np.mean(returns) == pytest.approx(final, rel=1e-6)


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
    policy = build_policy(agent.observation_space, agent.action_space, network_config())
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
             "other": tmp_path / "other", "started": tmp_path / "started"}
    for name in ("empty", "other", "started"):
        cases[name].mkdir()
    RunFolder(cases["started"]).write_status("running")
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
    assert messages["started"] == (f"{cases['started']} has no agent.pt or checkpoint yet: "
                                   "the run has not reached its first checkpoint")


def test_an_agent_whose_task_cannot_be_made_here_says_so(runs, tmp_path):
    saved = torch.load(runs("cartpole") / "agent.pt", weights_only=True)
    saved["config"]["env"]["id"] = "NoSuchTask-v0"
    RunFolder(tmp_path).save_agent(saved)
    with pytest.raises(TaskError, match=r"agent.pt: its task 'NoSuchTask-v0' cannot be made "
                                        r"here \(NameNotFound: "):
        load_agent(tmp_path)
    result = evaluate_cli(tmp_path)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr


# --------------------------------------------------------------------- python -m trpo.evaluate


def test_the_command_prints_what_it_loaded_and_the_returns_the_api_gives(runs):
    run_dir = runs("cartpole")
    result = evaluate_cli(run_dir, "--episodes", 3, "--seed", 5)
    assert result.returncode == 0, result.stderr[-2000:]
    returns, lengths, _ = evaluate_agent(load_agent(run_dir), 3, seed=5)
    assert result.stdout.splitlines() == [
        f"loaded agent.pt of {run_dir}: iteration 2 of 2 (256 environment steps), "
        "a completed run",
        "CartPole-v1: 3 episodes (deterministic: the mode action), --seed 5",
        f"return {returns.mean():.2f} ± {returns.std():.2f} (min {returns.min():.2f}, "
        f"max {returns.max():.2f})",
        f"length {lengths.mean():.1f} ± {lengths.std():.1f}",
    ]


def test_the_command_says_which_checkpoint_of_an_unfinished_run_it_loaded(compose_config,
                                                                          tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        fail_at_iteration(patch, 3)
        with pytest.raises(OSError):
            train(compose_config(["env=cartpole", *TINY, "total_steps=512",
                                  "checkpoint_every=2"]), tmp_path)
    result = evaluate_cli(tmp_path, "--episodes", 1, "--stochastic")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[:2] == [
        f"loaded checkpoint.ckpt of {tmp_path}: iteration 2 of 4 (256 environment steps), "
        "a failed run",
        "CartPole-v1: 1 episode (stochastic: actions sampled), --seed 0"]


def test_bad_input_exits_the_process_with_2_and_one_line(tmp_path):
    result = evaluate_cli(tmp_path / "missing")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: no such folder: {tmp_path / 'missing'}\n"


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "error: --seed must be an integer in [0, 2**32), got -1"),
    (["--video", "/proc/x.mp4"], "error: --video /proc/x.mp4: its folder /proc takes no new file"),
])
def test_a_bad_seed_or_an_unwritable_video_folder_is_one_line_exit_2(runs, args, message):
    result = evaluate_cli(runs("cartpole"), "--episodes", 1, *args)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message)


@pytest.mark.parametrize("case", ["no folder", "empty folder", "another tool", "garbled",
                                  "episodes", "video extension", "video folder", "no run"])
def test_bad_input_returns_2_with_one_line(runs, tmp_path, capsys, case):
    """``main`` in this process (the command is ``sys.exit(main())``), for speed."""
    run_dir, options = runs("cartpole"), []
    if case == "no folder":
        run_dir, expected = tmp_path / "missing", f"error: no such folder: {tmp_path / 'missing'}"
    elif case == "empty folder":
        run_dir, expected = tmp_path, f"error: {tmp_path} is not a trpo-lab run folder"
    elif case in ("another tool", "garbled"):
        run_dir = tmp_path
        if case == "another tool":
            torch.save({"model": torch.zeros(3)}, tmp_path / "agent.pt")
        else:
            (tmp_path / "agent.pt").write_bytes(b"not a torch file")
        (tmp_path / CHECKPOINT).write_bytes(b"garbled")
        expected = f"error: {tmp_path} has no usable agent: agent.pt: "
    elif case == "episodes":
        options, expected = ["--episodes", "0"], "error: --episodes must be at least 1, got 0"
    elif case == "video extension":
        options = ["--video", tmp_path / "out.avi"]
        expected = f"error: --video {tmp_path / 'out.avi'}: a video must end in .mp4 or .gif"
    elif case == "video folder":
        options = ["--video", tmp_path / "no" / "out.mp4"]
        expected = f"error: --video {tmp_path / 'no' / 'out.mp4'}: its folder"
    else:
        run_dir, options = None, ["--episodes", "3"]
        expected = "error: the following arguments are required: run_dir"
    assert main([str(a) for a in ([run_dir] if run_dir else []) + options]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith(expected), err
    assert out == ""


def read_video(path):
    """An MP4's number of frames and three of them (first, middle, last), ``[3, H, W, 3]``.
    (A GIF keeps one of consecutive equal frames, lengthening its duration: read its frames
    with Pillow if needed.)"""
    reader = imageio.get_reader(path)
    try:
        count = reader.count_frames()
        return count, np.stack([reader.get_data(i) for i in (0, count // 2, count - 1)])
    finally:
        reader.close()


@pytest.mark.parametrize("env, name, episodes", [("cartpole", "cartpole.mp4", 1),
                                                 ("pendulum", "pendulum.gif", 2)])
def test_a_classic_control_video_holds_the_frames_of_its_episodes(runs, tmp_path, env, name,
                                                                  episodes):
    run_dir, out = runs(env), tmp_path / name
    headless = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = evaluate_cli(run_dir, "--episodes", 2, "--video", out, "--video-episodes",
                          episodes, env=headless)
    assert result.returncode == 0, result.stderr[-2000:]
    _, lengths, _ = evaluate_agent(load_agent(run_dir), 2)
    # A frame at each reset and after each step: 50 fps (CartPole) and 30 (Pendulum) are kept.
    count = int(sum(lengths[:episodes] + 1))
    fps = {"cartpole": 50, "pendulum": 30}[env]
    assert result.stdout.splitlines()[-1] == (
        f"video {out}: {episodes} episode{'s' * (episodes > 1)}, {count} frames at {fps} fps")
    size = {"cartpole": (400, 600, 3), "pendulum": (500, 500, 3)}[env]
    if out.suffix == ".mp4":
        written, frames = read_video(out)
        assert written == count
    else:
        frames = iio.imread(out, index=None)[..., :3]
        assert 1 < len(frames) <= count
    assert frames.shape[1:] == size and frames.std() > 10  # drawn, not blank


@pytest.mark.parametrize("gl", [None, "osmesa"])
def test_a_hopper_video_renders_offscreen_without_a_display(runs, tmp_path, gl):
    """With MUJOCO_GL unset and no display, the command picks a headless OpenGL that works
    here (EGL from libegl-mesa0 on this project's machines, else OSMesa); MUJOCO_GL=osmesa,
    the route the error messages name, needs Debian's libosmesa6, which .ci/run installs."""
    if gl == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        pytest.skip("libosmesa6 is not installed here (.ci/run installs it)")
    run_dir, out = runs("hopper"), tmp_path / "hopper.mp4"
    headless = {k: v for k, v in os.environ.items()
                if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    if gl:
        headless["MUJOCO_GL"] = gl
    result = evaluate_cli(run_dir, "--episodes", 1, "--video", out, env=headless)
    assert result.returncode == 0, result.stderr[-2000:]
    _, lengths, _ = evaluate_agent(load_agent(run_dir), 1)
    count, frames = read_video(out)
    # Hopper renders at 125 fps: every 3rd frame is kept (41.67 fps), from the reset on.
    assert count == 1 + lengths[0] // 3
    assert result.stdout.splitlines()[-1] == (
        f"video {out}: 1 episode, {count} frames at 41.67 fps")
    assert frames.shape[1:] == (480, 480, 3)
    assert frames.std() > 10 and not np.array_equal(frames[0], frames[-1])  # a scene, moving


def test_a_mujoco_video_that_cannot_render_says_what_to_install(runs, tmp_path):
    """An OpenGL that cannot load (here OSMesa asked for under PyOpenGL's EGL platform, which
    fails alike on every machine) stops the command with one line naming the fix."""
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "egl"}
    result = evaluate_cli(runs("hopper"), "--episodes", 1, "--video", tmp_path / "h.mp4",
                          env=env)
    assert result.returncode == 1 and not (tmp_path / "h.mp4").exists()
    assert len(result.stderr.splitlines()) == 1
    line = result.stderr.strip()
    assert line.startswith("error: MuJoCo cannot render offscreen here (MUJOCO_GL=osmesa: ")
    assert line.endswith("on Debian/Ubuntu: apt-get install libosmesa6 and pip install "
                         "PyOpenGL, then run with MUJOCO_GL=osmesa")


# --------------------------------------------------------------- run folders from elsewhere


def folder_naming_a_module(runs, root):
    """A copy of a finished CartPole run whose agent.pt names the task ``shared_run.evil:Evil-v0``,
    with ``shared_run/evil.py`` beside it: importing it writes ``imported`` (the exploit)."""
    import shutil

    folder = root / "shared_run"
    shutil.copytree(runs("cartpole"), folder)
    agent = torch.load(folder / "agent.pt", weights_only=True)
    agent["config"]["env"]["id"] = "shared_run.evil:Evil-v0"
    torch.save(agent, folder / "agent.pt")
    (folder / CHECKPOINT).unlink()  # agent.pt is then the agent to load
    (folder / "evil.py").write_text("open('imported', 'w').write('code ran')\n")
    return folder


def test_a_run_folder_naming_a_module_runs_no_code_unless_the_user_names_it(runs, tmp_path):
    folder = folder_naming_a_module(runs, tmp_path)
    command = [sys.executable, "-m", "trpo.evaluate", "shared_run", "--episodes", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=120)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert "would import module 'shared_run.evil'" in line
    assert "--allow-module shared_run.evil" in line
    assert not (tmp_path / "imported").exists()
    with pytest.raises(AgentLoadError, match="allow_modules"):
        load_agent(folder)
    assert not (tmp_path / "imported").exists()
    # Named by the user, the module is imported (and, registering no Evil-v0, fails as a task).
    allowed = subprocess.run([*command, "--allow-module", "shared_run.evil"], cwd=tmp_path,
                             capture_output=True, text=True, env=env, timeout=120)
    assert (tmp_path / "imported").exists() and allowed.returncode == 1
