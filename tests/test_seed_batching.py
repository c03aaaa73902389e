"""The seed-batching floor (experiments/seed_batching.py): its batched computations do the
project's work, seed by seed, and its floor adds up what it says."""

import pytest
import torch
from omegaconf import OmegaConf

from experiments import seed_batching
from trpo.critic import ValueFitter
from trpo.networks import ValueNetwork, build_policy
from trpo.solvers import PolicyBatch, analytic_fisher_vector_product, conjugate_gradient


@pytest.fixture(scope="module")
def hopper():
    return seed_batching._task("hopper")


def test_a_stacked_value_fit_is_each_seeds_own_fit(hopper):
    cfg, obs_space, _ = hopper
    cfg = OmegaConf.merge(cfg, {"critic": {"epochs": 2}})
    seeds, size, obs_dim = 3, 512, obs_space.shape[0]
    obs, targets = torch.randn(seeds, size, obs_dim), torch.randn(seeds, size)
    nets = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        nets.append(ValueNetwork(obs_dim, cfg.network))
    stacked = seed_batching._stacked_value_fit(
        nets, obs, targets, cfg, [torch.Generator().manual_seed(s) for s in range(seeds)])
    for seed, net in enumerate(nets):
        ValueFitter(net, cfg.critic.lr, cfg.critic.epochs, cfg.critic.minibatch_size,
                    seed=seed)._fit(obs[seed], targets[seed])
        layers = [m for m in net.net if isinstance(m, torch.nn.Linear)]
        for layer, weights in zip(layers, stacked):
            torch.testing.assert_close(weights[seed], layer.weight.detach().t(),
                                       atol=1e-6, rtol=1e-5)


def test_a_stacked_fisher_product_and_cg_are_each_seeds_own(hopper):
    cfg, obs_space, action_space = hopper
    seeds, size = 2, 256
    obs = torch.randn(seeds, size, obs_space.shape[0])
    policies = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        policies.append(build_policy(obs_space, action_space, cfg.network))
    assert seed_batching._product_difference(policies[0], obs[0], 0.1) < 1e-5

    def stacked_order(policy, flat):  # the project's flat order → W₁ᵀ, b₁, ..., log σ
        parts, offset = {}, 0
        for name, p in policy.named_parameters():
            parts[name] = flat[offset:offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        layers = [n.rsplit(".", 1)[0] for n in parts if n.endswith(".weight")]
        return torch.cat([t for layer in layers for t in (parts[f"{layer}.weight"].t().reshape(-1),
                                                          parts[f"{layer}.bias"])]
                         + [parts["log_std"]])

    gradients = [torch.randn(sum(p.numel() for p in policies[0].parameters()))
                 for _ in range(seeds)]
    ours = []
    for seed, policy in enumerate(policies):
        batch = PolicyBatch.from_policy(policy, obs[seed], torch.zeros(size, 3), torch.zeros(size))
        product = analytic_fisher_vector_product(policy, batch, list(policy.parameters()), 0.1)
        ours.append(stacked_order(policy, conjugate_gradient(product, gradients[seed], 10, 0.0)[0]))
    with torch.no_grad():
        theirs = seed_batching._stacked_conjugate_gradient(
            seed_batching._stacked_fisher_product(policies, obs, 0.1),
            torch.stack([stacked_order(p, g) for p, g in zip(policies, gradients)]), 10)
    for seed in range(seeds):
        torch.testing.assert_close(theirs[seed], ours[seed], atol=1e-4, rtol=1e-4)


def test_the_floor_adds_start_up_simulator_evaluation_and_the_fastest_network_work():
    row = {"env": "hopper", "steps": 1000, "raw_steps_per_s": 100.0, "run_whole_s": 12.0,
           "run_train_s": 10.0, "run_eval_s": 1.0, "iterations": 4}
    rows = [{**row, "seeds": 1, "value_fit_solo_ms": 100.0, "value_fit_batched_ms": 120.0,
             "policy_cg_solo_ms": 50.0, "policy_cg_batched_ms": 40.0},
            {**row, "seeds": 3, "value_fit_solo_ms": 100.0, "value_fit_batched_ms": 60.0,
             "policy_cg_solo_ms": 50.0, "policy_cg_batched_ms": 45.0}]
    # per seed at 3 per group: 1000 / 100 s of simulator + 1 s of evaluation + 4 iterations of
    # (60 ms fit + 40 ms CG); start-up 2 s once
    assert seed_batching.group_floor_s(rows, "hopper", 3, 1000) == pytest.approx(
        2.0 + 3 * (10.0 + 1.0 + 4 * 0.1))
    # a group of 1 can use only the single-seed figures; twice the steps doubles the per-seed work
    assert seed_batching.group_floor_s(rows, "hopper", 1, 2000) == pytest.approx(
        2.0 + 20.0 + 2.0 + 8 * 0.14)
