"""Training speed, measured side by side in one run: ``python -m experiments.benchmark``.

For each env it measures, each in a fresh subprocess (so memory and imports do not mix):

* ``raw env``: the vectorised environment alone, stepped with uniform random actions, with the
  training default's vectorisation (``num_envs`` sync envs, SAME_STEP autoreset);
* this project's training with the default config and logging on (``progress.csv`` and W&B
  offline), for each solver; speed is environment steps per second of iteration time, the first
  iteration (start-up) and evaluation left out;
* sb3-contrib's TRPO with matched settings (the same envs × steps per update, network, CG
  iterations and damping, line search, critic epochs, minibatch and learning rate, observation
  normalisation), when the optional ``bench`` extra is installed.

It prints a table of steps/s, ratios and peak memory, and the per-iteration time breakdown of
this project's runs, and writes both as CSV. ``--sweep`` also times ``-m seed=0,1`` with the
default joblib launcher against the same two runs in sequence.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENVS = {"hopper": "Hopper-v5", "walker": "Walker2d-v5"}
SOLVERS = ("trpo", "npg", "kl_penalty")


def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    import trpo  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


# --------------------------------------------------------------------------------- workers


def worker_raw(env: str, steps: int) -> dict:
    """Random actions through the training default's vector env."""
    import torch

    from trpo.envs import make_vector_env

    torch.set_num_threads(1)
    cfg = compose([f"env={env}"])
    envs = make_vector_env(cfg.env, cfg.num_envs, cfg.vector_mode)
    space = envs.action_space
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    actions = rng.uniform(space.low, space.high, size=(steps // envs.num_envs + 50, *space.shape))
    for a in actions[:50]:  # warm-up
        envs.step(a)
    start = time.perf_counter()
    for a in actions[50:]:
        envs.step(a)
    elapsed = time.perf_counter() - start
    envs.close()
    return {"steps_per_s": (len(actions) - 50) * envs.num_envs / elapsed,
            "peak_mb": peak_memory_mb()}


def worker_ours(env: str, solver: str, iterations: int, out: Path) -> dict:
    """The default config for ``iterations`` updates; speed from progress.csv's timings."""
    import pandas as pd

    from trpo.train import train

    cfg = compose([f"env={env}", f"solver={solver}",
                   f"total_steps={iterations * 2048}", "steps_per_iteration=2048",
                   f"eval_every={10 * iterations}", "logger.mode=offline",
                   "logger.console_every=1000000"])
    train(cfg, out)
    full = pd.read_csv(out / "progress.csv")
    progress = full.iloc[1:]  # the first iteration is start-up
    parts = [c for c in progress.columns if c.startswith("time_") and c != "time_eval_s"]
    top_parts = ["time_rollout_s", "time_advantage_s", "time_policy_s"]
    if not cfg.critic.background:  # in the background it overlaps the rollout
        top_parts.append("time_value_s")
    iteration_s = full["wall_s"].diff().iloc[1:] - progress["time_eval_s"]
    other = iteration_s - progress[top_parts].sum(axis=1)
    breakdown = {c.removeprefix("time_").removesuffix("_s"): float(progress[c].median())
                 for c in parts}
    breakdown["logging_other"] = float(other.median())
    steps = full["env_steps"].iloc[-1] - full["env_steps"].iloc[0]
    return {"steps_per_s": float(steps / iteration_s.sum()), "peak_mb": peak_memory_mb(),
            "iteration_s": float(iteration_s.median()), "breakdown": breakdown}


def worker_sb3(env: str, iterations: int) -> dict:
    """sb3-contrib TRPO with the settings of this project's default config."""
    import torch
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    cfg = compose([f"env={env}"])
    envs = VecNormalize(make_vec_env(cfg.env.id, n_envs=cfg.num_envs, seed=0),
                        norm_obs=cfg.normalize_obs, norm_reward=cfg.normalize_reward,
                        clip_obs=cfg.obs_clip, gamma=cfg.advantage.gamma)
    model = TRPO(
        "MlpPolicy", envs, n_steps=cfg.steps_per_iteration // cfg.num_envs,
        batch_size=cfg.critic.minibatch_size, n_critic_updates=cfg.critic.epochs,
        learning_rate=cfg.critic.lr, gamma=cfg.advantage.gamma, gae_lambda=cfg.advantage.lam,
        cg_max_steps=cfg.solver.cg_iters, cg_damping=cfg.solver.cg_damping,
        target_kl=cfg.solver.max_kl, line_search_shrinking_factor=cfg.solver.backtrack_factor,
        line_search_max_iter=cfg.solver.max_backtracks, normalize_advantage=True,
        policy_kwargs={"net_arch": {"pi": list(cfg.network.policy_hidden),
                                    "vf": list(cfg.network.value_hidden)},
                       "activation_fn": torch.nn.Tanh, "log_std_init": cfg.network.log_std_init},
        seed=0, device="cpu", verbose=0)
    model.learn(cfg.steps_per_iteration)  # start-up, as the first iteration of ours
    start = time.perf_counter()
    model.learn(iterations * cfg.steps_per_iteration, reset_num_timesteps=False)
    return {"steps_per_s": iterations * cfg.steps_per_iteration / (time.perf_counter() - start),
            "peak_mb": peak_memory_mb()}


# ----------------------------------------------------------------------------- orchestration


def run_worker(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--worker", *args],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sb3_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import sb3_contrib"],
                          capture_output=True).returncode == 0


def time_sweep(env: str, steps: int) -> dict:
    """Seconds for ``-m seed=0,1`` with the default launcher and with the basic one."""
    timings = {}
    for launcher in ("parallel", "basic"):
        # A fresh folder, else the runs would resume instead of training.
        with tempfile.TemporaryDirectory(prefix="trpo-benchmark-sweep-") as sweep_dir:
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "run.py", "-m", f"env={env}", "seed=0,1",
                                     f"total_steps={steps}", "logger.mode=disabled",
                                     f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"],
                                    cwd=ROOT, capture_output=True, text=True)
            timings[launcher] = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"the {launcher} sweep failed:\n{result.stderr[-3000:]}")
    return {"parallel_s": timings["parallel"], "sequential_s": timings["basic"],
            "ratio": timings["parallel"] / timings["basic"]}


def measure(args: argparse.Namespace, scratch: Path, with_sb3: bool
            ) -> tuple[list[dict], list[dict]]:
    """Speed rows (medians over repeats) and time breakdowns of every env × contender."""
    import pandas as pd

    rows, breakdowns = [], []
    for env in args.envs:
        # Interleave the measurements so slow drifts of a noisy machine hit all of them alike.
        samples: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            plan = [("raw env", ("raw", env, str(args.iterations * 2048)))]
            plan += [(f"ours {s}", ("ours", env, s, str(args.iterations),
                                    str(scratch / f"{env}-{s}-{repeat}"))) for s in args.solvers]
            if with_sb3:
                plan.append(("sb3-contrib trpo", ("sb3", env, str(args.iterations))))
            for name, worker_args in plan:
                print(f"[{env} {repeat + 1}/{args.repeats}] {name} ...", file=sys.stderr,
                      flush=True)
                samples.setdefault(name, []).append(run_worker(*worker_args))
        median = {name: float(np.median([s["steps_per_s"] for s in runs]))
                  for name, runs in samples.items()}
        for name, runs in samples.items():
            rows.append({"env": ENVS[env], "what": name, "steps_per_s": median[name],
                         "vs_raw_env": median[name] / median["raw env"],
                         "vs_sb3_trpo": (median[name] / median["sb3-contrib trpo"]
                                         if with_sb3 else float("nan")),
                         "peak_mb": max(s["peak_mb"] for s in runs), "repeats": len(runs)})
            if name.startswith("ours"):
                parts = pd.DataFrame([s["breakdown"] for s in runs]).median()
                breakdowns.append({"env": ENVS[env], "solver": name.removeprefix("ours "),
                                   **{k: 1e3 * v for k, v in parts.items()}})
    return rows, breakdowns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--iterations", type=int, default=15,
                        help="policy updates timed per run, after one start-up update")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of every measurement; the table shows medians")
    parser.add_argument("--sweep", action="store_true",
                        help="also time -m seed=0,1 in parallel against in sequence")
    parser.add_argument("--sweep-only", action="store_true",
                        help="time only the sweep (writes sweep.csv)")
    parser.add_argument("--sweep-steps", type=int, default=200_000,
                        help="environment steps of each sweep run; short runs are dominated by "
                             "the start-up of the parallel workers (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "benchmark")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, env, *rest = args.worker
        if kind == "raw":
            result = worker_raw(env, int(rest[0]))
        elif kind == "ours":
            result = worker_ours(env, rest[0], int(rest[1]), Path(rest[2]))
        else:
            result = worker_sb3(env, int(rest[0]))
        print(json.dumps(result))
        return 0

    import pandas as pd

    if args.sweep_only:
        return report_sweep(args)
    with_sb3 = sb3_available()
    if not with_sb3:
        print("sb3-contrib is not installed (pip install -c constraints.txt -e '.[bench]'); "
              "measuring without it", file=sys.stderr)
    # Each run trains afresh in a folder of this invocation (a folder kept from an earlier
    # benchmark would make the run resume, or refuse a changed config, instead of training).
    with tempfile.TemporaryDirectory(prefix="trpo-benchmark-") as scratch:
        rows, breakdowns = measure(args, Path(scratch), with_sb3)
    table = pd.DataFrame(rows)
    breakdown = pd.DataFrame(breakdowns)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "speed.csv", index=False)
    breakdown.to_csv(args.out / "breakdown_ms.csv", index=False)
    machine = f"{platform.processor() or platform.machine()}, {_cores()} cores, Python " \
              f"{platform.python_version()}"
    print(f"\nSteps per second (median of {args.repeats}; {machine}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    print("\nPer-iteration time breakdown of this project's runs (median ms per 2048 steps):")
    print(breakdown.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    if args.sweep:
        report_sweep(args)
    return 0


def report_sweep(args: argparse.Namespace) -> int:
    import pandas as pd

    sweep = time_sweep(args.envs[0], args.sweep_steps)
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"env": ENVS[args.envs[0]], "steps_per_run": args.sweep_steps, **sweep}]
                 ).to_csv(args.out / "sweep.csv", index=False)
    print(f"\n-m env={args.envs[0]} seed=0,1, {args.sweep_steps:,} steps each: "
          f"{sweep['parallel_s']:.1f} s in parallel (joblib, {_cores()} cores), "
          f"{sweep['sequential_s']:.1f} s in sequence: ratio {sweep['ratio']:.2f}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
