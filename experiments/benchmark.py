"""Training speed, measured side by side in one run: ``python -m experiments.benchmark``.

Four figures, each against sb3-contrib's TRPO (the optional ``bench`` extra) on the same
machine, interleaved (A B A B ...) and repeated, medians quoted:

1. **one run** (``--envs``, ``--solvers``): this project's training with the default config,
   evaluation and logging on (``progress.csv`` and W&B offline), against sb3-contrib's TRPO with
   matched settings (the same envs × steps per update, network, CG iterations and damping, line
   search, critic epochs, minibatch and learning rate, observation and reward normalisation),
   and the raw vectorised environment (8 sync envs in one process, random actions) for scale.
   Steps per second of training after the first iteration (start-up), evaluation included;
   each in a fresh process.
2. **a sweep** (``--sweep``): ``python run.py -m env=hopper,walker seed=0,1,2
   total_steps=200000`` against the same six sb3-contrib runs (matched settings), two at a
   time: wall time, the ratio ours / theirs.
3. **the whole process** (``--whole``): ``python run.py env=hopper total_steps=204800`` against
   sb3-contrib with rl-baselines3-zoo's TRPO settings for the same steps, each timed from start
   to exit as a user times it: the speed-up theirs / ours.
4. **seeds batched in one process, at best** (``--seed-batching``): what goal 2's sweep and a
   10-seed sweep could reach if each group of seeds trained batched over a seed dimension
   (:mod:`experiments.seed_batching`: the batchable parts measured on one core, a floor that
   leaves out the rest), against sb3-contrib's sweep of goal 2.

``--backends`` names the simulators measured (``env.backend``; default: Gymnasium's and the
batched MuJoCo backend): the raw envs and TRPO on each in goal 1, a sweep and a whole process on
each in goals 2 and 3.

Speed figures need a quiet machine: the load average is printed at the start and the end, with
a warning when other work was running. Tables go to ``experiments/results/benchmark/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trpo.config import compose

ROOT = Path(__file__).resolve().parents[1]
ENVS = {"hopper": "Hopper-v5", "walker": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5",
        "ant": "Ant-v5"}
BACKENDS = ("gymnasium", "mujoco")
SOLVERS = ("trpo", "npg", "kl_penalty")
# A 1-minute load average above this at the start means other work shares the cores.
QUIET_LOAD = 0.5


def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------- workers


def worker_raw(env: str, steps: int, backend: str = "gymnasium",
               num_envs: int | None = None) -> dict:
    """Random actions through the training envs, the config's 8 unless ``num_envs`` says
    (Gymnasium's: one process on one core; the MuJoCo batch's: its threads on the cores a run
    may use)."""
    import torch

    from trpo.envs import make_vector_env

    torch.set_num_threads(1)
    cfg = compose([f"env={env}", f"env.backend={backend}"])
    envs = make_vector_env(cfg.env, num_envs or cfg.num_envs)
    space = envs.action_space
    rng = np.random.default_rng(0)
    envs.reset(seed=list(range(envs.num_envs)))
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


def worker_ours(env: str, solver: str, iterations: int, out: Path,
                backend: str = "gymnasium") -> dict:
    """The default config (on ``backend``) for ``iterations`` updates, evaluation and logging
    on; speed over every iteration after the first (start-up), from progress.csv's wall clock."""
    import pandas as pd

    from trpo.train import train
    from trpo.learner import fit_in_background

    cfg = compose([f"env={env}", f"solver={solver}", f"env.backend={backend}",
                   f"total_steps={iterations * 2048}",
                   "logger.writers=[wandb]", "logger.console_every=1000000"])
    train(cfg, out)
    full = pd.read_csv(out / "progress.csv")
    progress = full.iloc[1:]  # the first iteration is start-up
    parts = [c for c in progress.columns if c.startswith("time_") and c != "time_eval_s"]
    top_parts = ["time_rollout_s", "time_advantage_s", "time_policy_s", "time_eval_s"]
    if not fit_in_background(cfg):  # in the background it overlaps the rollout
        top_parts.append("time_value_s")
    iteration_s = full["wall_s"].diff().iloc[1:]
    other = iteration_s - progress[top_parts].sum(axis=1)
    breakdown = {c.removeprefix("time_").removesuffix("_s"): float(progress[c].median())
                 for c in parts}
    breakdown["eval"] = float(progress["time_eval_s"].mean())  # spread over the iterations
    breakdown["logging_other"] = float(other.median())
    steps = full["env_steps"].iloc[-1] - full["env_steps"].iloc[0]
    return {"steps_per_s": float(steps / iteration_s.sum()), "peak_mb": peak_memory_mb(),
            "iteration_s": float(iteration_s.median()), "breakdown": breakdown}


def sb3_matched(env: str, seed: int = 0):
    """sb3-contrib TRPO with the settings of this project's default config, on ``env``: the
    baseline's builder, given default TRPO's CG, line search and 8 × 256 steps."""
    import torch

    from experiments.sb3_baseline import make_model

    torch.set_num_threads(1)
    trpo = compose([f"env={env}"]).solver
    cfg = compose([f"env={env}", "solver=sb3_trpo", f"solver.target_kl={trpo.max_kl}",
                   f"solver.cg_max_steps={trpo.cg_iters}", f"solver.cg_damping={trpo.cg_damping}",
                   f"solver.line_search_shrinking_factor={trpo.backtrack_factor}",
                   f"solver.line_search_max_iter={trpo.max_backtracks}"])
    return make_model(cfg, seed)


def worker_sb3(env: str, iterations: int) -> dict:
    """sb3-contrib TRPO, matched settings: steps per second after one start-up update."""
    model = sb3_matched(env)
    steps = model.n_steps * model.n_envs
    model.learn(steps)  # start-up, as the first iteration of ours
    start = time.perf_counter()
    model.learn(iterations * steps, reset_num_timesteps=False)
    return {"steps_per_s": iterations * steps / (time.perf_counter() - start),
            "peak_mb": peak_memory_mb()}


def worker_sb3_run(env: str, steps: int, seed: int) -> dict:
    """One sb3-contrib run of ``steps`` with matched settings (a job of goal 2's sweep)."""
    sb3_matched(env, seed).learn(steps)
    return {"peak_mb": peak_memory_mb()}


def worker_sb3_zoo(env: str, steps: int) -> dict:
    """sb3-contrib TRPO with rl-baselines3-zoo's MuJoCo settings (hyperparams/trpo.yml: 2 envs
    × 1,024 steps, batch 128, 20 critic updates at 1e-3, 25 CG steps, damping 0.1, γ 0.99,
    λ 0.95, VecNormalize), as a zoo user runs it (goal 3)."""
    import torch

    from experiments.sb3_baseline import make_model

    torch.set_num_threads(1)
    make_model(compose([f"env={env}", "solver=sb3_trpo", "num_envs=2"]), seed=0).learn(steps)
    return {"peak_mb": peak_memory_mb()}


WORKERS = {"raw": lambda env, steps, backend="gymnasium": worker_raw(env, int(steps), backend),
           "ours": lambda env, solver, its, out, backend="gymnasium": worker_ours(
               env, solver, int(its), Path(out), backend),
           "sb3": lambda env, its: worker_sb3(env, int(its)),
           "sb3_run": lambda env, steps, seed: worker_sb3_run(env, int(steps), int(seed)),
           "sb3_zoo": lambda env, steps: worker_sb3_zoo(env, int(steps))}


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


def timed(command: list[str]) -> float:
    """Wall seconds of ``command`` run to its end in the checkout (raises if it fails)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def measure(args: argparse.Namespace, scratch: Path, with_sb3: bool
            ) -> tuple[list[dict], list[dict]]:
    """Goal 1: speed rows (medians over repeats) and time breakdowns, every env × contender."""
    import pandas as pd

    rows, breakdowns = [], []
    for env in args.envs:
        # Interleave the measurements so slow drifts of a noisy machine hit all of them alike.
        samples: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            plan = []
            for backend in args.backends:
                # The other solvers differ from TRPO in the update alone: on the first backend.
                solvers = args.solvers if backend == args.backends[0] else ["trpo"]
                plan.append((f"raw env {backend}",
                             ("raw", env, str(args.iterations * 2048), backend)))
                plan += [(f"ours {s} {backend}", ("ours", env, s, str(args.iterations),
                                                  str(scratch / f"{env}-{s}-{backend}-{repeat}"),
                                                  backend)) for s in solvers]
            if with_sb3:
                plan.append(("sb3-contrib trpo", ("sb3", env, str(args.iterations))))
            for name, worker_args in plan:
                print(f"[{env} {repeat + 1}/{args.repeats}] {name} ...", file=sys.stderr,
                      flush=True)
                samples.setdefault(name, []).append(run_worker(*worker_args))
        median = {name: float(np.median([s["steps_per_s"] for s in runs]))
                  for name, runs in samples.items()}
        for name, runs in samples.items():
            backend = name.rsplit(" ", 1)[-1]  # sb3-contrib steps Gymnasium's envs
            raw = f"raw env {backend if backend in BACKENDS else 'gymnasium'}"
            rows.append({"env": ENVS[env], "what": name, "steps_per_s": median[name],
                         "vs_raw_env": median[name] / median.get(raw, float("nan")),
                         "vs_sb3_trpo": (median[name] / median["sb3-contrib trpo"]
                                         if with_sb3 else float("nan")),
                         "peak_mb": max(s["peak_mb"] for s in runs), "repeats": len(runs)})
            if name.startswith("ours"):
                parts = pd.DataFrame([s["breakdown"] for s in runs]).median()
                breakdowns.append({"env": ENVS[env], "solver": name.removeprefix("ours "),
                                   **{k: 1e3 * v for k, v in parts.items()}})
    return rows, breakdowns


def sb3_sweep(steps: int, jobs: int = 2) -> None:
    """Goal 2's six runs with sb3-contrib, ``jobs`` at a time, each in a process of its own."""
    commands = [[sys.executable, "-m", "experiments.benchmark", "--worker", "sb3_run", env,
                 str(steps), str(seed)] for env in ("hopper", "walker") for seed in range(3)]
    running: list[subprocess.Popen] = []
    for command in commands:
        while len(running) >= jobs:
            time.sleep(0.05)
            for process in [p for p in running if p.poll() is not None]:
                if process.returncode:
                    raise RuntimeError(f"an sb3-contrib run of the sweep failed: {command}")
                running.remove(process)
        running.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL))
    if any(process.wait() for process in running):
        raise RuntimeError("an sb3-contrib run of the sweep failed")


def measure_sweep(repeats: int, steps: int, backends: list[str]) -> list[dict]:
    """Goal 2: the six-run sweep on each backend against sb3-contrib two at a time,
    interleaved; a row per backend."""
    ours: dict[str, list[float]] = {backend: [] for backend in backends}
    theirs = []
    for repeat in range(repeats):
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="trpo-benchmark-sweep-") as sweep_dir:
                print(f"[sweep {repeat + 1}/{repeats}] ours, {backend} ...", file=sys.stderr,
                      flush=True)
                ours[backend].append(timed([sys.executable, "run.py", "-m", "env=hopper,walker",
                                            "seed=0,1,2", f"total_steps={steps}",
                                            f"env.backend={backend}",
                                            f"hydra.sweep.dir={sweep_dir}"]))
        print(f"[sweep {repeat + 1}/{repeats}] sb3-contrib ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        sb3_sweep(steps)
        theirs.append(time.perf_counter() - start)
    rows = []
    for backend, times in ours.items():
        ratios = [a / b for a, b in zip(times, theirs)]
        rows.append({"backend": backend, "runs": 6, "steps_per_run": steps,
                     "ours_s": float(np.median(times)), "sb3_s": float(np.median(theirs)),
                     "ratio": float(np.median(ratios)),
                     "ratios": " ".join(f"{r:.3f}" for r in ratios), "repeats": repeats})
    return rows


def measure_whole(repeats: int, steps: int, backends: list[str]) -> list[dict]:
    """Goal 3: ``python run.py env=hopper total_steps=...`` on each backend against the zoo's
    sb3-contrib run, whole processes, start-up included, interleaved; a row per backend."""
    ours: dict[str, list[float]] = {backend: [] for backend in backends}
    theirs = []
    for repeat in range(repeats):
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="trpo-benchmark-whole-") as run_dir:
                print(f"[whole {repeat + 1}/{repeats}] ours, {backend} ...", file=sys.stderr,
                      flush=True)
                ours[backend].append(timed([sys.executable, "run.py", "env=hopper",
                                            f"env.backend={backend}", f"total_steps={steps}",
                                            f"hydra.run.dir={run_dir}/run"]))
        print(f"[whole {repeat + 1}/{repeats}] sb3-contrib (zoo settings) ...", file=sys.stderr,
              flush=True)
        theirs.append(timed([sys.executable, "-m", "experiments.benchmark", "--worker",
                             "sb3_zoo", "hopper", str(steps)]))
    rows = []
    for backend, times in ours.items():
        speedups = [b / a for a, b in zip(times, theirs)]
        rows.append({"backend": backend, "steps": steps, "ours_s": float(np.median(times)),
                     "sb3_zoo_s": float(np.median(theirs)), "speedup": float(np.median(speedups)),
                     "speedups": " ".join(f"{r:.3f}" for r in speedups), "repeats": repeats})
    return rows


def measure_seed_batching(steps: int, repeats: int, sb3_repeats: int) -> dict:
    """Goal 2's sweep and a 10-seed sweep if each group of seeds trained batched in
    one process, at best (:func:`experiments.seed_batching.group_floor_s`), beside sb3-contrib's
    six runs two at a time (``sb3_repeats`` times, median; 0: not measured)."""
    from experiments import seed_batching

    rows = seed_batching.measure(["hopper", "walker"], [1, 3, 5], steps, repeats)
    cores = _cores()  # a sweep runs a job, here a group of seeds, per core
    sweep_floor = sum(seed_batching.group_floor_s(rows, env, 3, steps)
                      for env in ("hopper", "walker")) / cores
    sb3_times = []
    for repeat in range(sb3_repeats):
        print(f"[seed batching] sb3-contrib's sweep {repeat + 1}/{sb3_repeats} ...",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        sb3_sweep(steps)
        sb3_times.append(time.perf_counter() - start)
    sb3_s = float(np.median(sb3_times)) if sb3_times else float("nan")
    suite_steps = 1_000_000  # a 10-seed sweep of one task: the suite's runs
    lines = [f"the sweep (hopper, walker × 3 seeds, {steps:,} steps): at least "
             f"{sweep_floor:.0f} s on {cores} cores; sb3-contrib {sb3_s:.0f} s; at most "
             f"{sb3_s / sweep_floor:.2f}×"]
    floor = {"steps": steps, "sweep_floor_s": sweep_floor, "sb3_sweep_s": sb3_s,
             "sweep_speedup_at_most": sb3_s / sweep_floor, "rows": rows}
    for env in ("hopper", "walker"):
        one = next(r for r in rows if r["env"] == env and r["seeds"] == 1)
        rate = 10 * suite_steps / seed_batching.group_floor_s(rows, env, 5, suite_steps)
        share = rate / (cores * one["raw_steps_per_s"])
        floor[f"{env}_10_seeds_steps_per_s_at_most"] = rate
        floor[f"{env}_share_of_raw_at_most"] = share
        lines.append(f"10 seeds of {env} ({suite_steps:,} steps, 5 per core): at most "
                     f"{rate:,.0f} steps/s, {share:.2f} of the simulator's raw rate on {cores} "
                     f"cores")
    floor["summary"] = "\n".join(lines)
    return floor


def load_average() -> str:
    """``/proc/loadavg``'s three averages (1, 5 and 15 minutes)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--iterations", type=int, default=15,
                        help="policy updates timed per run, after one start-up update")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of every measurement; the tables show medians")
    parser.add_argument("--sweep", action="store_true",
                        help="also goal 2: the six-run sweep against sb3-contrib, two at a time")
    parser.add_argument("--sweep-repeats", type=int,
                        help="repeats of goal 2's sweeps (default: --repeats)")
    parser.add_argument("--sweep-steps", type=int, default=200_000,
                        help="environment steps of each sweep run (default: %(default)s)")
    parser.add_argument("--whole", action="store_true",
                        help="also goal 3: python run.py env=hopper as a whole process against "
                             "the zoo's sb3-contrib run")
    parser.add_argument("--whole-steps", type=int, default=204_800,
                        help="environment steps of goal 3's runs (default: %(default)s)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        default=["gymnasium", "mujoco"],
                        help="the env.backend values measured (default: %(default)s)")
    parser.add_argument("--no-runs", action="store_true",
                        help="leave out goal 1 (with --sweep, --whole or --seed-batching)")
    parser.add_argument("--seed-batching", action="store_true",
                        help="also the floor of a sweep whose seeds train batched in one process "
                             "(experiments/seed_batching.py), against sb3-contrib's sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "benchmark")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *worker_args = args.worker
        print(json.dumps(WORKERS[kind](*worker_args)))
        return 0

    import pandas as pd

    start_load = load_average()
    print(f"load average at the start: {start_load}", file=sys.stderr, flush=True)
    if start_load != "unknown" and float(start_load.split()[0]) > QUIET_LOAD:
        print(f"warning: the machine is not quiet (1-minute load {start_load.split()[0]} > "
              f"{QUIET_LOAD}): the figures will be skewed", file=sys.stderr, flush=True)
    with_sb3 = sb3_available()
    if not with_sb3:
        print("sb3-contrib is not installed (pip install -c constraints.txt -e '.[bench]'); "
              "measuring without it", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {_cores()} cores, Python "
               f"{platform.python_version()}")
    if not args.no_runs:
        # Each run trains afresh in a folder of this invocation (a folder kept from an earlier
        # benchmark would make the run resume, or refuse a changed config, instead of training).
        with tempfile.TemporaryDirectory(prefix="trpo-benchmark-") as scratch:
            rows, breakdowns = measure(args, Path(scratch), with_sb3)
        table, breakdown = pd.DataFrame(rows), pd.DataFrame(breakdowns)
        table.to_csv(args.out / "speed.csv", index=False)
        breakdown.to_csv(args.out / "breakdown_ms.csv", index=False)
        print(f"\n1. One run: steps per second (median of {args.repeats}; {machine}):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
        print("\nPer-iteration time of this project's runs (median ms per 2048 steps; eval is "
              "the mean per iteration):")
        print(breakdown.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    backends = args.backends
    if args.sweep and with_sb3:
        sweeps = measure_sweep(args.sweep_repeats or args.repeats, args.sweep_steps, backends)
        pd.DataFrame(sweeps).to_csv(args.out / "sweep.csv", index=False)
        for sweep in sweeps:
            print(f"\n2. Sweep: -m env=hopper,walker seed=0,1,2 total_steps="
                  f"{args.sweep_steps:,} env.backend={sweep['backend']}: {sweep['ours_s']:.0f} s;"
                  f" sb3-contrib's six runs, two at a time: {sweep['sb3_s']:.0f} s; ratio "
                  f"{sweep['ratio']:.2f} (each pair: {sweep['ratios']})")
    if args.whole and with_sb3:
        wholes = measure_whole(args.repeats, args.whole_steps, backends)
        pd.DataFrame(wholes).to_csv(args.out / "whole_process.csv", index=False)
        for whole in wholes:
            print(f"\n3. Whole process, {args.whole_steps:,} steps: python run.py env=hopper "
                  f"env.backend={whole['backend']}: {whole['ours_s']:.0f} s; sb3-contrib with "
                  f"the zoo's settings {whole['sb3_zoo_s']:.0f} s; speed-up "
                  f"{whole['speedup']:.2f} (each pair: {whole['speedups']})")
    if args.seed_batching:
        floor = measure_seed_batching(args.sweep_steps, args.repeats,
                                      args.sweep_repeats or 1 if with_sb3 else 0)
        floor["load_start"], floor["load_end"] = start_load, load_average()
        pd.DataFrame(floor.pop("rows")).to_csv(args.out / "seed_batching.csv", index=False)
        summary = floor.pop("summary")
        pd.DataFrame([floor]).to_csv(args.out / "seed_batching_floor.csv", index=False)
        print(f"\n4. Seeds batched in one process, at best (seed_batching.csv):\n{summary}")
    end_load = load_average()
    if not (args.seed_batching and args.no_runs and not (args.sweep or args.whole)):
        # goals 1-3's tables; the seed-batching floor carries its own
        with open(args.out / "load_average.txt", "w") as file:
            file.write(f"start {start_load}\nend {end_load}\n")
    print(f"\nload average at the start: {start_load}; at the end: {end_load}")
    return 0


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
