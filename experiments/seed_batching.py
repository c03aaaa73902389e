"""How fast a sweep could be if a group's seeds trained in one process, batched over seeds.

``python -m experiments.benchmark --seed-batching`` measures, on one core (a sweep job's share
of the machine), the parts of a training iteration that batching seeds could shrink, each for
one seed alone (this project's code) and for S seeds stacked on a leading dimension:

* **the value fit** (the critic's epochs of Adam on minibatches): the project's
  :class:`trpo.critic.ValueFitter` per seed, against one fit of S stacked networks (``bmm``, the
  backward pass written out, one fused Adam), the same numbers to rounding;
* **the policy's conjugate gradient** (the solver's CG iterations of analytic Fisher-vector
  products on the iteration's states): the project's :func:`trpo.solvers.conjugate_gradient`
  per seed, against S stacked Jᵀ M J products written out, each seed with its own CG scalars,
  also the same numbers to rounding.

With the simulator's raw rate on one core (S seeds' environments stepped as one batch) and a
run's measured evaluation and start-up, it bounds what a batched sweep can reach from below:
each group's time is at least its start-up plus, per seed, the simulator, the evaluations and
the fastest measured value fit and CG per iteration. Everything else an iteration does (the
surrogate's gradient, the line search, the rollout's policy forward passes, normalisers,
advantages, logging, checkpoints) is left out, and the groups are taken as perfectly balanced
over the cores: a real batched sweep is slower than this floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def one_core() -> None:
    """Pin this process to the machine's last CPU, as a sweep job with one core."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def run_pinned(args: list[str]) -> dict:
    """``python -m experiments.seed_batching ARGS`` on one core; its JSON answer."""
    result = subprocess.run([sys.executable, "-m", "experiments.seed_batching", *args],
                            cwd=ROOT, capture_output=True, text=True, preexec_fn=one_core)
    if result.returncode != 0:
        raise RuntimeError(f"seed-batching worker {' '.join(args)} failed:\n"
                           f"{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _task(env: str):
    """The env option's composed config and its observation and action sizes."""
    from trpo.config import compose
    from trpo.envs import make_env

    cfg = compose([f"env={env}"])
    with make_env(cfg.env) as made:
        return cfg, made.observation_space, made.action_space


# ------------------------------------------------------------------------------- value fit


def _stacked_value_fit(nets, obs, targets, cfg, generators):
    """One fit of S value MLPs ([S, B, obs] states, [S, B] targets) with their weights stacked:
    the critic's epochs and minibatches, each seed's own shuffle; returns the fitted weights."""
    import torch

    linears = [[m for m in net.net if isinstance(m, torch.nn.Linear)] for net in nets]
    weights = [torch.stack([seed[i].weight.detach().t() for seed in linears]).contiguous()
               for i in range(len(linears[0]))]
    biases = [torch.stack([seed[i].bias.detach() for seed in linears]).unsqueeze(1)
              for i in range(len(linears[0]))]
    params = [p for pair in zip(weights, biases) for p in pair]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.Adam(params, lr=cfg.critic.lr, fused=True)
    size, minibatch = obs.shape[1], cfg.critic.minibatch_size
    with torch.no_grad():
        for _ in range(cfg.critic.epochs):
            order = torch.stack([torch.randperm(size, generator=g) for g in generators])
            shuffled_obs = torch.gather(obs, 1, order.unsqueeze(-1).expand(-1, -1, obs.shape[2]))
            shuffled_targets = torch.gather(targets, 1, order)
            for first in range(0, size, minibatch):
                x = shuffled_obs[:, first:first + minibatch]
                y = shuffled_targets[:, first:first + minibatch]
                hidden = [x]
                for w, b in zip(weights[:-1], biases[:-1]):
                    hidden.append(torch.tanh(torch.baddbmm(b, hidden[-1], w)))
                out = torch.baddbmm(biases[-1], hidden[-1], weights[-1])
                grad = (2.0 / x.shape[1]) * (out.squeeze(-1) - y).unsqueeze(-1)
                for layer in reversed(range(len(weights))):
                    weights[layer].grad.copy_(torch.bmm(hidden[layer].transpose(1, 2), grad))
                    biases[layer].grad.copy_(grad.sum(1, keepdim=True))
                    if layer:
                        grad = (torch.bmm(grad, weights[layer].transpose(1, 2))
                                * (1 - hidden[layer] ** 2))
                optimizer.step()
    return weights


def measure_value_fit(env: str, seeds: int, repeats: int) -> dict:
    """ms per seed of the project's value fit, one seed at a time and batched over ``seeds``;
    the largest weight difference between the two."""
    import torch

    from trpo.critic import ValueFitter
    from trpo.networks import ValueNetwork

    torch.set_num_threads(1)
    cfg, obs_space, _ = _task(env)
    obs_dim, size = int(np.prod(obs_space.shape)), cfg.steps_per_iteration
    data = torch.randn(seeds, size, obs_dim), torch.randn(seeds, size)
    solo, batched, difference = [], [], 0.0
    for _ in range(repeats + 1):
        nets = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            nets.append(ValueNetwork(obs_dim, cfg.network))
        start = time.perf_counter()
        stacked = _stacked_value_fit(nets, *data, cfg,
                                     [torch.Generator().manual_seed(s) for s in range(seeds)])
        batched.append(time.perf_counter() - start)
        fitters = [ValueFitter(net, cfg.critic.lr, cfg.critic.epochs, cfg.critic.minibatch_size,
                               seed=seed) for seed, net in enumerate(nets)]
        start = time.perf_counter()
        for seed, fitter in enumerate(fitters):
            fitter._fit(data[0][seed], data[1][seed])
        solo.append(time.perf_counter() - start)
        difference = max(difference, max(float((stacked[0][s] - nets[s].net[0].weight.detach().t())
                                               .abs().max()) for s in range(seeds)))
    # The first repeat warms up the allocator and the kernels.
    return {"solo_ms": 1e3 * float(np.median(solo[1:])) / seeds,
            "batched_ms": 1e3 * float(np.median(batched[1:])) / seeds,
            "max_difference": difference}


# --------------------------------------------------------------------- conjugate gradient


def _stacked_fisher_product(policies, obs, damping):
    """``v ↦ (F + damping·I) v`` for S Gaussian tanh-MLP policies at once (``v`` ``[S, P]`` in
    the order W₁ᵀ, b₁, W₂ᵀ, b₂, W₃ᵀ, b₃, log σ): J v forward, M, then Jᵀ backward, written out."""
    import torch

    linears = [[m for m in p.mean if isinstance(m, torch.nn.Linear)] for p in policies]
    weights = [torch.stack([seed[i].weight.detach().t() for seed in linears]).contiguous()
               for i in range(len(linears[0]))]
    biases = [torch.stack([seed[i].bias.detach() for seed in linears]).unsqueeze(1)
              for i in range(len(linears[0]))]
    log_std = torch.stack([p.log_std.detach() for p in policies])
    hidden = [obs]
    for w, b in zip(weights[:-1], biases[:-1]):
        hidden.append(torch.tanh(torch.baddbmm(b, hidden[-1], w)))
    slopes = [1 - h * h for h in hidden[1:]]
    fisher_mean = torch.exp(-2 * log_std).unsqueeze(1) / obs.shape[1]
    shapes = [t.shape for pair in zip(weights, biases) for t in pair] + [log_std.shape]
    sizes = [int(np.prod(s[1:])) for s in shapes]
    count = len(policies)

    def product(v):
        parts = [c.reshape(s) for c, s in zip(torch.split(v, sizes, dim=1), shapes)]
        dweights, dbiases, dlog_std = parts[0:-1:2], parts[1:-1:2], parts[-1]
        tangent = None
        for layer, (w, dw, db) in enumerate(zip(weights, dweights, dbiases)):
            tangent_out = torch.baddbmm(db, hidden[layer], dw)
            if tangent is not None:
                tangent_out = tangent_out + torch.bmm(tangent, w)
            tangent = tangent_out * slopes[layer] if layer < len(slopes) else tangent_out
        grad = tangent * fisher_mean
        out = []
        for layer in reversed(range(len(weights))):
            out = [torch.bmm(hidden[layer].transpose(1, 2), grad).reshape(count, -1),
                   grad.sum(1).reshape(count, -1)] + out
            if layer:
                grad = torch.bmm(grad, weights[layer].transpose(1, 2)) * slopes[layer - 1]
        return torch.cat(out + [2.0 * dlog_std], 1) + damping * v

    return product


def _stacked_conjugate_gradient(product, b, iterations):
    """CG on S systems at once, each with its own step scalars."""
    x, r, p = b.new_zeros(b.shape), b.clone(), b.clone()
    rr = (r * r).sum(1, keepdim=True)
    for _ in range(iterations):
        ap = product(p)
        alpha = rr / (p * ap).sum(1, keepdim=True)
        x += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum(1, keepdim=True)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def measure_policy_cg(env: str, seeds: int, repeats: int) -> dict:
    """ms per seed of the solver's CG (its iterations of Fisher-vector products on an
    iteration's states), the project's one seed at a time and batched over ``seeds``; the
    largest difference between the two products of one vector."""
    import torch

    from trpo.networks import build_policy
    from trpo.solvers import PolicyBatch, analytic_fisher_vector_product, conjugate_gradient

    torch.set_num_threads(1)
    cfg, obs_space, action_space = _task(env)
    size, iterations, damping = cfg.steps_per_iteration, cfg.solver.cg_iters, cfg.solver.cg_damping
    obs = torch.randn(seeds, size, int(np.prod(obs_space.shape)))
    policies = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        policies.append(build_policy(obs_space, action_space, cfg.network))
    params = [[p for p in policy.parameters() if p.requires_grad] for policy in policies]
    gradients = torch.randn(seeds, sum(p.numel() for p in params[0]))
    actions = torch.zeros(size, *action_space.shape)
    solo, batched = [], []
    for _ in range(repeats + 1):  # the first warms up
        start = time.perf_counter()
        for seed, policy in enumerate(policies):
            batch = PolicyBatch.from_policy(policy, obs[seed], actions, torch.zeros(size))
            product = analytic_fisher_vector_product(policy, batch, params[seed], damping)
            conjugate_gradient(product, gradients[seed], iterations, residual_tol=0.0)
        solo.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            product = _stacked_fisher_product(policies, obs, damping)
            _stacked_conjugate_gradient(product, gradients, iterations)
        batched.append(time.perf_counter() - start)
    return {"solo_ms": 1e3 * float(np.median(solo[1:])) / seeds,
            "batched_ms": 1e3 * float(np.median(batched[1:])) / seeds,
            "max_difference": _product_difference(policies[0], obs[0], damping)}


def _product_difference(policy, obs, damping) -> float:
    """max |F v| difference between the project's product and the stacked one, for one v."""
    import torch

    from trpo.solvers import PolicyBatch, analytic_fisher_vector_product

    named = dict(policy.named_parameters())
    parts = {name: torch.randn_like(p) for name, p in named.items()}
    layers = [name.rsplit(".", 1)[0] for name in named if name.endswith(".weight")]

    def stacked_order(tensors):
        return torch.cat([t for layer in layers for t in (tensors[f"{layer}.weight"].t()
                                                          .reshape(-1), tensors[f"{layer}.bias"])]
                         + [tensors["log_std"]])

    params = list(named.values())
    batch = PolicyBatch.from_policy(policy, obs, torch.zeros(obs.shape[0], policy.log_std.numel()),
                                    torch.zeros(obs.shape[0]))
    ours = analytic_fisher_vector_product(policy, batch, params, damping)(
        torch.cat([parts[name].reshape(-1) for name in named]))
    split, offset = {}, 0
    for name, p in named.items():
        split[name] = ours[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    with torch.no_grad():
        theirs = _stacked_fisher_product([policy], obs[None], damping)(stacked_order(parts)[None])
    return float((theirs[0] - stacked_order(split)).abs().max())


# ------------------------------------------------------------------- simulator and a run


def measure_raw(env: str, seeds: int, steps: int) -> dict:
    """Raw steps per second of ``seeds`` × the run's environments stepped as one batch."""
    from experiments.benchmark import worker_raw
    from trpo.config import compose

    envs = seeds * compose([f"env={env}"]).num_envs
    return worker_raw(env, steps, "mujoco", num_envs=envs)


def measure_run(env: str, steps: int) -> dict:
    """``python run.py env=ENV total_steps=STEPS`` on this core: whole seconds, training
    seconds, evaluation seconds (from its progress.csv) and iterations."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="trpo-seed-batching-") as scratch:
        start = time.perf_counter()
        subprocess.run([sys.executable, "run.py", f"env={env}", f"total_steps={steps}",
                        "logger.writers=[]", f"hydra.run.dir={scratch}/run"], cwd=ROOT,
                       check=True, capture_output=True)
        whole = time.perf_counter() - start
        progress = pd.read_csv(Path(scratch) / "run" / "progress.csv")
    return {"whole_s": whole, "train_s": float(progress["wall_s"].iloc[-1]),
            "eval_s": float(progress["time_eval_s"].sum()), "iterations": len(progress)}


# --------------------------------------------------------------------------------- floor


def measure(envs: list[str], group_sizes: list[int], steps: int, repeats: int) -> list[dict]:
    """A row per env and group size: each part's ms per seed, measured on one core."""
    rows = []
    for env in envs:
        run = run_pinned(["run", env, str(steps)])
        for seeds in group_sizes:
            print(f"[seed batching] {env}, {seeds} seeds per group ...", file=sys.stderr,
                  flush=True)
            fit = run_pinned(["value_fit", env, str(seeds), str(repeats)])
            cg = run_pinned(["policy_cg", env, str(seeds), str(repeats)])
            raw = run_pinned(["raw", env, str(seeds), str(steps // 2)])
            rows.append({"env": env, "seeds": seeds, "steps": steps,
                         "raw_steps_per_s": raw["steps_per_s"],
                         "value_fit_solo_ms": fit["solo_ms"],
                         "value_fit_batched_ms": fit["batched_ms"],
                         "value_fit_max_difference": fit["max_difference"],
                         "policy_cg_solo_ms": cg["solo_ms"], "policy_cg_batched_ms": cg["batched_ms"],
                         "policy_cg_max_difference": cg["max_difference"],
                         "run_whole_s": run["whole_s"], "run_train_s": run["train_s"],
                         "run_eval_s": run["eval_s"], "iterations": run["iterations"]})
    return rows


def group_floor_s(rows: list[dict], env: str, seeds: int, steps: int) -> float:
    """Least core-seconds a group of ``seeds`` seeds of ``env`` needs for ``steps`` each: its
    start-up, and per seed the simulator, the evaluations and, per iteration, the fastest value
    fit and CG measured (alone, or batched at any group size up to ``seeds``)."""
    mine = [r for r in rows if r["env"] == env and r["seeds"] <= seeds]
    row = max(mine, key=lambda r: r["seeds"])
    scale = steps / row["steps"]
    network_ms = (min(min(r["value_fit_solo_ms"], r["value_fit_batched_ms"]) for r in mine)
                  + min(min(r["policy_cg_solo_ms"], r["policy_cg_batched_ms"]) for r in mine))
    start_up = row["run_whole_s"] - row["run_train_s"]
    per_seed = (steps / row["raw_steps_per_s"] + scale * row["run_eval_s"]
                + scale * row["iterations"] * network_ms / 1e3)
    return start_up + seeds * per_seed


def main(argv: list[str]) -> int:
    """The one-core workers: ``value_fit|policy_cg ENV SEEDS REPEATS``, ``raw ENV SEEDS STEPS``,
    ``run ENV STEPS``; prints the answer as JSON."""
    kind, env, *numbers = argv
    values = [int(n) for n in numbers]
    answer = {"value_fit": measure_value_fit, "policy_cg": measure_policy_cg,
              "raw": measure_raw, "run": measure_run}[kind](env, *values)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
