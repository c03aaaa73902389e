"""``python -m experiments.posture RUN_DIR [RUN_DIR ...]``: how each run's agent moves.

For the planar MuJoCo tasks (Hopper, Walker2d, HalfCheetah), whose torso is rooted by a slide
along x, a slide along z and a hinge about y (``qpos[:3]``), plays one deterministic episode of
each run's agent (:func:`trpo.agent.load_agent`, reset seed 0) and prints a row per run: its
return and length, the torso's mean absolute pitch, the share of steps it spent upside down
(pitch beyond 90°) and its mean forward speed. HalfCheetah-v5 has two gaits that TRPO settles
on, upright and on its back, and the returns alone do not say which a run found.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from trpo.agent import AgentLoadError, load_agent
from trpo.evaluate import play_episode

PLANAR_TASKS = ("Hopper", "Walker2d", "HalfCheetah")


@dataclass
class Posture:
    """One episode: return, length, mean |pitch| in degrees, the share of steps with
    |pitch| > 90°, and the mean forward speed (``qvel[0]``, m/s)."""

    episode_return: float
    length: int
    pitch_deg: float
    upside_down: float
    speed: float


def wrapped_pitch(angle: np.ndarray) -> np.ndarray:
    """``angle`` (rad, unbounded: a hinge accumulates turns) as |pitch| in [0°, 180°]."""
    return np.degrees(np.abs(np.arctan2(np.sin(angle), np.cos(angle))))


class TorsoRecorder(gym.Wrapper):
    """Records the torso's pitch (``qpos[2]``, rad) and forward speed (``qvel[0]``) after each
    step of a planar MuJoCo task."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.pitch: list[float] = []
        self.speed: list[float] = []

    def step(self, action):
        result = super().step(action)
        data = self.env.unwrapped.data
        self.pitch.append(float(data.qpos[2]))
        self.speed.append(float(data.qvel[0]))
        return result


def play_posture(run_dir: Path, seed: int = 0, allow_modules=()) -> Posture:
    """One deterministic episode of the agent of ``run_dir``, reset with ``seed``
    (:func:`trpo.evaluate.play_episode`)."""
    agent = load_agent(run_dir, allow_modules=allow_modules)
    task = agent.config.env.id
    if not task.startswith(PLANAR_TASKS):
        raise AgentLoadError(f"{run_dir}: {task} is not a planar task "
                             f"({', '.join(PLANAR_TASKS)})")
    with TorsoRecorder(agent.make_env()) as env:
        total, length = play_episode(agent, env, seed)
    degrees = wrapped_pitch(np.array(env.pitch))
    return Posture(total, length, float(degrees.mean()), float((degrees > 90).mean()),
                   float(np.mean(env.speed)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.posture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--seed", type=int, default=0, help="the episode's reset seed")
    parser.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                        help="import MODULE for a task named MODULE:Id")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not d.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    for n, run_dir in enumerate(args.run_dirs):
        try:
            p = play_posture(run_dir, args.seed, args.allow_module)
        except AgentLoadError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if n == 0:
            print("| run | return | length | mean pitch (°) | upside down | speed (m/s) |")
            print("|---|---|---|---|---|---|")
        print(f"| {run_dir.name} | {p.episode_return:.0f} | {p.length} | {p.pitch_deg:.0f} | "
              f"{p.upside_down:.0%} | {p.speed:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
