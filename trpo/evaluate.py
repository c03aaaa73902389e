"""Evaluate a trained agent, and watch it: ``python -m trpo.evaluate RUN_DIR``.

Loads the run's ``agent.pt`` (a finished run) or its newest usable checkpoint (an unfinished
one), plays ``--episodes`` episodes with the policy's deterministic action (``--stochastic``
samples instead) and prints the mean ± standard deviation of their returns and lengths.
``--video out.mp4`` (or ``.gif``) records the first ``--video-episodes`` of them, rendered
offscreen (:mod:`trpo.video`). Episode resets, and stochastic actions, are seeded by
``--seed``: the same command prints the same numbers.

Exit codes: 0; 1 if the task or its video cannot be made here (the message says what to
install); 2 for bad input (no such folder, no agent in it, a bad option). Either error is one
line on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from trpo.agent import Agent, AgentLoadError, TaskError, build_agent, newest_policy
from trpo.io.run_folder import RunFolder
from trpo.seeding import stream_seeds
from trpo.video import VideoError, VideoWriter, check_video_path, frame_step, prepare_rendering
from trpo.video import render as render_frame


class UsageError(Exception):
    """Bad input: ``str(error)`` is the one line to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        raise UsageError(f"{message} (see python -m trpo.evaluate --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trpo.evaluate",
                description="Load the agent of a run folder (agent.pt, or the newest checkpoint "
                            "of an unfinished run), play episodes and print the mean ± std of "
                            "their returns and lengths; optionally record a video.",
                epilog="Exit codes: 0; 1 if the task or its video cannot be made here; 2 for "
                       "bad input.")
    p.add_argument("run_dir", type=Path, help="a run folder (the hydra.run.dir of a run)")
    p.add_argument("--episodes", type=int, default=10, metavar="N",
                   help="episodes to play (default 10)")
    p.add_argument("--video", type=Path, metavar="PATH",
                   help="write the first episode(s) to PATH, .mp4 or .gif")
    p.add_argument("--video-episodes", type=int, default=1, metavar="K",
                   help="episodes in the video, the first K played (default 1)")
    p.add_argument("--stochastic", action="store_true",
                   help="sample actions from the policy instead of taking its mode")
    p.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                   help="import MODULE for a task named MODULE:Id (a run folder's task is made "
                        "only from modules you name: a folder from elsewhere could name any)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seeds the episodes' resets and stochastic actions (default 0)")
    return p


def play_episode(agent: Agent, env, seed: int, deterministic: bool = True,
                 writer: Optional[VideoWriter] = None, every: int = 1) -> tuple[float, int]:
    """One episode of ``agent`` in ``env`` reset with ``seed``: its undiscounted return and
    length. With ``writer``, every ``every``-th frame from the reset on goes into it."""
    obs, _ = env.reset(seed=seed)
    if writer is not None:
        writer.add(render_frame(env))
    total, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic))
        total += float(reward)
        steps += 1
        done = terminated or truncated
        if writer is not None and steps % every == 0:
            writer.add(render_frame(env))
    return total, steps


def evaluate_agent(agent: Agent, episodes: int, seed: int = 0, deterministic: bool = True,
                   video: Optional[Path] = None, video_episodes: int = 1
                   ) -> tuple[np.ndarray, np.ndarray, Optional[VideoWriter]]:
    """Returns and lengths of ``episodes`` episodes (arrays of shape ``[episodes]``) and the
    closed video writer (``None`` without ``video``), whose file holds the first
    ``video_episodes``. ``seed`` seeds the episodes' resets and (re-seeding ``agent``) its
    stochastic actions. A :class:`VideoError` leaves no video file behind."""
    seeds = stream_seeds(seed, "watch", episodes)
    agent.seed(seed)
    env = agent.make_env(render_mode="rgb_array") if video else agent.make_env()
    writer = None
    try:
        every = 1
        if video:
            prepare_rendering(env)
            fps = float(env.metadata.get("render_fps") or 30)
            every = frame_step(fps)
            writer = VideoWriter(video, fps / every)
        results = []
        try:
            for i, episode_seed in enumerate(seeds):
                results.append(play_episode(agent, env, episode_seed, deterministic,
                                            writer if i < video_episodes else None, every))
        except BaseException:
            if writer is not None:
                writer.close(keep=False)
            raise
        if writer is not None:
            writer.close()
    finally:
        env.close()
    returns, lengths = (np.array(column) for column in zip(*results))
    return returns, lengths, writer


def _describe(folder: RunFolder, agent: Agent) -> str:
    total = math.ceil(int(agent.config.total_steps) / int(agent.config.steps_per_iteration))
    state = folder.state()
    run = {"completed": "a completed run", "running": "a run still training",
           "interrupted": "an interrupted run", "failed": "a failed run",
           "pruned": "a tuning trial stopped by its pruner"}.get(state, "a run")
    return (f"loaded {agent.source.name} of {folder.path}: iteration {agent.iteration} of "
            f"{total} ({agent.env_steps:,} environment steps), {run}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.episodes < 1:
            raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
        if not 0 <= args.seed < 2**32:
            raise UsageError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
        if args.video is not None:
            if not 1 <= args.video_episodes <= args.episodes:
                raise UsageError(f"--video-episodes must be in [1, --episodes={args.episodes}], "
                                 f"got {args.video_episodes}")
            try:
                check_video_path(args.video)
            except ValueError as error:
                raise UsageError(f"--video {error}") from None
        folder = RunFolder(args.run_dir)
        saved, problems = newest_policy(folder)
        agent = build_agent(saved, allow_modules=args.allow_module)
    except TaskError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (UsageError, AgentLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"note: {problem} (not used)", file=sys.stderr)
    print(_describe(folder, agent), flush=True)
    try:
        returns, lengths, writer = evaluate_agent(
            agent, args.episodes, args.seed, not args.stochastic, args.video,
            args.video_episodes)
    except VideoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    how = "stochastic: actions sampled" if args.stochastic else "deterministic: the mode action"
    print(f"{agent.config.env.id}: {args.episodes} episode{'s' * (args.episodes > 1)} ({how}), "
          f"--seed {args.seed}")
    print(f"return {returns.mean():.2f} ± {returns.std():.2f} "
          f"(min {returns.min():.2f}, max {returns.max():.2f})")
    print(f"length {lengths.mean():.1f} ± {lengths.std():.1f}")
    if writer is not None:
        played = args.video_episodes
        print(f"video {writer.path}: {played} episode{'s' * (played > 1)}, {writer.frames} "
              f"frames at {writer.fps:.4g} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
