"""Solvers: conjugate gradient, Fisher-vector products, KL, line search and each update's guarantees."""

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call

from tests.conftest import network_config, solver_kwargs
from trpo.config import Activation, FisherProduct
from trpo.networks import build_policy
from trpo.solvers import (TRPO, KLPenalty, NaturalPolicyGradient, PolicyBatch, PPOClip,
                          VanillaPolicyGradient, analytic_fisher_vector_product,
                          conjugate_gradient, double_backprop_fisher_vector_product, flat_grad,
                          linear_schedule, mean_kl, surrogate)

pytestmark = pytest.mark.unit

PRODUCTS = [analytic_fisher_vector_product, double_backprop_fisher_vector_product]

@pytest.fixture(autouse=True)
def float64_and_seed():
    """Dense-matrix comparisons need float64; other test modules keep float32."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(torch.float32)


def linear_policy(kind, obs_dim=3, act_dim=2):
    """A policy with no hidden layer: mean or logits = W s + b, so its Fisher has a closed form."""
    obs_space = gym.spaces.Box(-1, 1, (obs_dim,))
    action_space = (gym.spaces.Box(-1, 1, (act_dim,)) if kind == "gaussian"
                    else gym.spaces.Discrete(act_dim))
    policy = build_policy(obs_space, action_space,
                          network_config(policy_hidden=[], log_std_init=-0.3))
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.5)
    return policy


def mlp_policy(kind, obs_dim=4, act_dim=2, hidden=(16, 16), activation=Activation.tanh):
    obs_space = gym.spaces.Box(-1, 1, (obs_dim,))
    action_space = (gym.spaces.Box(-1, 1, (act_dim,)) if kind == "gaussian"
                    else gym.spaces.Discrete(act_dim + 1))
    return build_policy(obs_space, action_space,
                        network_config(policy_hidden=list(hidden), activation=activation))


def make_batch(policy, batch_size=256):
    obs_dim = next(m for m in policy.modules() if isinstance(m, torch.nn.Linear)).in_features
    obs = torch.randn(batch_size, obs_dim)
    with torch.no_grad():
        actions = policy(obs).sample()
    # Advantages that favour some actions, so the surrogate has a real gradient.
    advantages = actions.sum(-1) if actions.dim() == 2 else actions.double() - 0.5
    advantages = (advantages - advantages.mean()) / advantages.std()
    return PolicyBatch.from_policy(policy, obs, actions, advantages)


def perturbed(policy, scale=0.3):
    """``policy`` with every parameter moved by scale·N(0, 1): ratios π/π_old differ from 1, and
    σ and the logits move away from 1 and uniform, so an error in a block of the Fisher shows."""
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn_like(p))
    return policy


def flat_params(policy):
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


# ------------------------------------------------------------------------- conjugate gradient


@pytest.mark.parametrize("n", [1, 5, 20])
def test_conjugate_gradient_matches_dense_solve(n):
    rng = np.random.default_rng(n)
    m = rng.normal(size=(n, n))
    a = torch.tensor(m @ m.T + n * np.eye(n))
    b = torch.tensor(rng.normal(size=n))
    x, iterations, residual = conjugate_gradient(lambda v: a @ v, b, iterations=2 * n,
                                                 residual_tol=1e-24)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-12)
    assert residual < 1e-11


def test_conjugate_gradient_stops_once_the_residual_is_small():
    """On a 3×3 system, exact arithmetic converges in 3 iterations; CG must not run on."""
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    x, iterations, residual = conjugate_gradient(lambda v: a @ v, torch.ones(3), iterations=50)
    assert iterations <= 4
    np.testing.assert_allclose(x, [1.0, 0.5, 1 / 3], rtol=1e-6)


def test_conjugate_gradient_stops_at_its_iteration_budget():
    a = torch.diag(torch.arange(1.0, 11.0))
    x, iterations, residual = conjugate_gradient(lambda v: a @ v, torch.ones(10), iterations=3)
    assert iterations == 3
    assert residual == pytest.approx(float((torch.ones(10) - a @ x).norm()), rel=1e-6)


# ------------------------------------------------------------------------ Fisher-vector product


def dense_kl_hessian(policy, batch):
    """The Hessian of the mean KL at θ_old, from autograd on a function of the flat parameters."""
    names = [name for name, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    theta = flat_params(policy)

    def kl_of(flat):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        new = functional_call(policy, params, (batch.obs,))
        return torch.distributions.kl_divergence(batch.old_dist, new).mean()

    return torch.autograd.functional.hessian(kl_of, theta)


def dense_fvp_matrix(policy, batch, product=double_backprop_fisher_vector_product,
                     damping=0.0):
    params = list(policy.parameters())
    fvp = product(policy, batch, params, damping)
    n = sum(p.numel() for p in params)
    return torch.stack([fvp(e) for e in torch.eye(n)], dim=1)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("activation", list(Activation))
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_fisher_vector_product_matches_autograd_hessian_of_mean_kl(kind, activation, product):
    policy = perturbed(mlp_policy(kind, activation=activation), 0.5)
    batch = make_batch(policy, 64)
    hessian = dense_kl_hessian(policy, batch)
    assert hessian.abs().max() > 1e-3  # the Fisher is not trivially small
    np.testing.assert_allclose(dense_fvp_matrix(policy, batch, product), hessian, atol=1e-10)


@pytest.mark.parametrize("product", PRODUCTS)
def test_fisher_vector_product_matches_closed_form_gaussian_fisher(product):
    """μ = W s + b, σ = exp(log_std): F_mean = E[xxᵀ] ⊗ diag(1/σ²) with x = [s, 1]; F_logstd = 2I."""
    policy = linear_policy("gaussian", obs_dim=3, act_dim=2)
    batch = make_batch(policy, 128)
    sigma2 = torch.exp(2 * policy.log_std.detach())
    x = torch.cat([batch.obs, torch.ones(len(batch), 1)], dim=1)
    second_moment = x.T @ x / len(batch)
    # Parameter order: log_std (2), then W (2×3, row-major), then b (2).
    act = 2
    fisher = torch.zeros(act + 6 + act, act + 6 + act)

    def index(i, j):  # W[i, j] for j < 3, b[i] for j == 3
        return act + (i * 3 + j if j < 3 else 6 + i)

    for i in range(act):
        for j in range(4):
            for k in range(4):
                fisher[index(i, j), index(i, k)] = second_moment[j, k] / sigma2[i]
    fisher[:act, :act] = 2 * torch.eye(act)
    np.testing.assert_allclose(dense_fvp_matrix(policy, batch, product), fisher, atol=1e-10)


@pytest.mark.parametrize("product", PRODUCTS)
def test_fisher_vector_product_matches_closed_form_categorical_fisher(product):
    """z = W s + b: F = E_s[J_zᵀ (diag p − p pᵀ) J_z]."""
    policy = linear_policy("categorical", obs_dim=3, act_dim=4)
    batch = make_batch(policy, 128)
    probs = batch.old_dist.probs
    n_params = 4 * 3 + 4
    fisher = torch.zeros(n_params, n_params)
    for s, p in zip(batch.obs, probs):
        logit_fisher = torch.diag(p) - torch.outer(p, p)
        jacobian = torch.zeros(4, n_params)  # ∂z/∂(W row-major, b)
        for i in range(4):
            jacobian[i, i * 3:(i + 1) * 3] = s
            jacobian[i, 12 + i] = 1.0
        fisher += jacobian.T @ logit_fisher @ jacobian
    np.testing.assert_allclose(dense_fvp_matrix(policy, batch, product), fisher / len(batch),
                               atol=1e-10)


@pytest.mark.parametrize("product", PRODUCTS)
def test_damping_adds_a_multiple_of_the_vector(product):
    policy = mlp_policy("gaussian")
    batch = make_batch(policy, 32)
    params = list(policy.parameters())
    v = torch.randn(sum(p.numel() for p in params))
    plain = product(policy, batch, params, 0.0)(v)
    damped = product(policy, batch, params, 0.25)(v)
    np.testing.assert_allclose(damped, plain + 0.25 * v, atol=1e-12)


@pytest.mark.parametrize("kind, act_dim, damping", [("gaussian", 3, 0.3), ("gaussian", 8, 0.8),
                                                    ("categorical", 3, 0.1)])
def test_damping_per_action_dim_is_the_damping_times_the_action_dimensions(kind, act_dim, damping):
    policy = mlp_policy(kind, act_dim=act_dim)
    scaled = NaturalPolicyGradient(policy, **solver_kwargs("npg", cg_damping=0.1,
                                                           cg_damping_per_action_dim=True))
    plain = NaturalPolicyGradient(policy, **solver_kwargs("npg", cg_damping=0.1))
    assert scaled.cg_damping == pytest.approx(damping)
    assert plain.cg_damping == 0.1


@pytest.mark.parametrize("damping", [0.0, 0.1])
@pytest.mark.parametrize("activation", list(Activation))
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_analytic_product_equals_double_backprop_on_random_vectors(kind, activation, damping):
    """Float64: the two products agree to rounding, element by element."""
    policy = perturbed(mlp_policy(kind, hidden=(32, 32), activation=activation), 0.5)
    batch = make_batch(policy, 512)
    params = list(policy.parameters())
    analytic = analytic_fisher_vector_product(policy, batch, params, damping)
    double_backprop = double_backprop_fisher_vector_product(policy, batch, params, damping)
    for _ in range(5):
        v = torch.randn(sum(p.numel() for p in params))
        torch.testing.assert_close(analytic(v), double_backprop(v), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_analytic_product_equals_double_backprop_in_float32_at_training_size(kind):
    """What a run computes: float32, [64, 64] tanh policy, Hopper's sizes, 2,048 states. The
    products agree to 1e-5 of their largest element (float32 rounding is ~1e-7 of it)."""
    torch.set_default_dtype(torch.float32)
    policy = perturbed(mlp_policy(kind, obs_dim=11, act_dim=3, hidden=(64, 64)), scale=0.1)
    batch = make_batch(policy, 2048)
    params = list(policy.parameters())
    analytic = analytic_fisher_vector_product(policy, batch, params, 0.1)
    double_backprop = double_backprop_fisher_vector_product(policy, batch, params, 0.1)
    for _ in range(5):
        v = torch.randn(sum(p.numel() for p in params))
        expected = double_backprop(v)
        assert analytic(v).dtype == torch.float32
        assert float((analytic(v) - expected).abs().max() / expected.abs().max()) < 1e-5


# ------------------------------------------------------------- the states the products use


def time_major_batch(steps=256, envs=8):
    """A batch laid out as the trainer flattens a rollout, [T, N] → [T·N]: sample i is step
    i // N of environment i % N. The first observation coordinate is the sample's index."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy, steps * envs)
    batch.obs[:, 0] = torch.arange(steps * envs, dtype=batch.obs.dtype)
    return policy, batch


def drawn(states):
    return states.obs[:, 0].long()


@pytest.mark.parametrize("k", [2, 5, 8])
def test_the_fvp_subset_has_len_over_k_distinct_states_from_every_environment(k):
    policy, batch = time_major_batch(steps=256, envs=8)
    index = drawn(NaturalPolicyGradient(policy, **solver_kwargs("npg", fvp_subsample=k)).fvp_states(batch))
    assert len(index) == len(batch) // k
    assert len(set(index.tolist())) == len(index)
    assert torch.equal(index, index.sort().values)  # in batch order
    assert set((index % 8).tolist()) == set(range(8))
    # Every k-th state, the old rule, takes environment 0 alone when k = N.
    assert set((torch.arange(len(batch))[::8] % 8).tolist()) == {0}


def test_fvp_subsample_one_takes_the_whole_batch_and_draws_nothing():
    policy, batch = time_major_batch()
    solver = TRPO(policy, **solver_kwargs("trpo", fvp_subsample=1))
    generator, global_rng = solver.fvp_generator.get_state(), torch.get_rng_state()
    assert solver.fvp_states(batch) is batch
    solver.update(batch)
    assert torch.equal(solver.fvp_generator.get_state(), generator)
    assert torch.equal(torch.get_rng_state(), global_rng)


def test_each_update_draws_a_new_subset_and_a_seed_fixes_the_sequence():
    policy, batch = time_major_batch()

    def subsets(seed, draws=3):
        solver = NaturalPolicyGradient(policy, **solver_kwargs("npg", fvp_subsample=4, seed=seed))
        return [drawn(solver.fvp_states(batch)) for _ in range(draws)]

    first = subsets(seed=7)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    for again, before in zip(subsets(seed=7), first):
        assert torch.equal(again, before)
    assert not torch.equal(subsets(seed=8)[0], first[0])


def test_the_global_generator_does_not_change_the_subsets():
    policy, batch = time_major_batch()
    torch.manual_seed(1)
    one = drawn(NaturalPolicyGradient(policy, **solver_kwargs("npg", fvp_subsample=4, seed=3)).fvp_states(batch))
    torch.manual_seed(2)
    other = drawn(NaturalPolicyGradient(policy, **solver_kwargs("npg", fvp_subsample=4, seed=3)).fvp_states(batch))
    assert torch.equal(one, other)


def test_an_update_takes_its_fisher_vector_products_over_the_drawn_subset():
    """The step equals CG on the Fisher of the subset that a twin generator draws."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy, 2048)
    params = list(policy.parameters())
    subset = batch.take(torch.randperm(len(batch), generator=torch.Generator().manual_seed(5))
                        [:len(batch) // 4].sort().values)
    gradient = flat_grad(surrogate(policy, batch), params)
    direction, _, _ = conjugate_gradient(
        analytic_fisher_vector_product(policy, subset, params, 0.1), gradient, 25)
    whole, _, _ = conjugate_gradient(
        analytic_fisher_vector_product(policy, batch, params, 0.1), gradient, 25)
    assert float((direction - whole).norm()) > 1e-3 * float(whole.norm())  # the subset matters
    before = flat_params(policy)
    NaturalPolicyGradient(policy, **solver_kwargs("npg", step_size=0.05, fvp_subsample=4, seed=5)).update(batch)
    np.testing.assert_allclose(flat_params(policy) - before, 0.05 * direction, rtol=1e-8,
                               atol=1e-12)


def test_the_solver_state_carries_the_generator_through_a_checkpoint():
    """A resumed solver draws the subsets the uninterrupted one would: state_dict survives
    torch.save and a weights_only load, as checkpoints are read."""
    import io

    policy, batch = time_major_batch()
    solver = TRPO(policy, **solver_kwargs("trpo", fvp_subsample=4, seed=11))
    solver.fvp_states(batch)
    buffer = io.BytesIO()
    torch.save(solver.state_dict(), buffer)
    expected = [drawn(solver.fvp_states(batch)) for _ in range(2)]
    resumed = TRPO(policy, **solver_kwargs("trpo", fvp_subsample=4, seed=0))
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for before in expected:
        assert torch.equal(drawn(resumed.fvp_states(batch)), before)


def test_fvp_subsample_larger_than_the_batch_is_refused():
    policy = mlp_policy("gaussian")
    with pytest.raises(ValueError, match="leaves no state"):
        TRPO(policy, **solver_kwargs("trpo", fvp_subsample=64)).update(make_batch(policy, 32))


# ----------------------------------------------------------------------------------------- KL


def test_mean_kl_matches_closed_form_diagonal_gaussian():
    policy = linear_policy("gaussian")
    batch = make_batch(policy, 50)
    with torch.no_grad():
        policy.log_std.add_(0.2)
        policy.mean[0].bias.add_(0.3)
        new = policy(batch.obs)
    mu0, s0 = batch.old_dist.mean, batch.old_dist.stddev
    mu1, s1 = new.mean, new.stddev
    expected = (torch.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5).sum(-1)
    with torch.no_grad():
        assert float(mean_kl(policy, batch)) == pytest.approx(float(expected.mean()), rel=1e-10)


def test_mean_kl_matches_closed_form_categorical():
    policy = linear_policy("categorical", act_dim=3)
    batch = make_batch(policy, 50)
    with torch.no_grad():
        policy.logits[0].weight.mul_(1.7)
        q = policy(batch.obs).probs
    p = batch.old_dist.probs
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    with torch.no_grad():
        assert float(mean_kl(policy, batch)) == pytest.approx(float(expected), rel=1e-10)


def test_mean_kl_is_zero_at_the_old_policy():
    policy = mlp_policy("gaussian")
    batch = make_batch(policy, 20)
    with torch.no_grad():
        assert float(mean_kl(policy, batch)) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- the solvers


class BackwardsTRPO(TRPO):
    """TRPO stepping against the natural gradient, so every line-search candidate lowers L."""

    def apply_step(self, batch, old_params, full_step, old_objective, max_kl):
        return super().apply_step(batch, old_params, -full_step, old_objective, max_kl)


def test_line_search_restores_parameters_exactly_when_every_candidate_fails():
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = BackwardsTRPO(policy, **solver_kwargs("trpo", max_backtracks=6)).update(batch)
    for old, new in zip(before, policy.parameters()):
        assert torch.equal(old, new.detach())
    assert metrics["update_accepted"] == 0.0
    assert metrics["linesearch_backtracks"] == 6
    assert metrics["kl"] == 0.0


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("max_kl", [0.001, 0.01, 0.05])
def test_trpo_raises_surrogate_within_trust_region(kind, max_kl):
    policy = mlp_policy(kind)
    batch = make_batch(policy)
    metrics = TRPO(policy, **solver_kwargs("trpo", max_kl=max_kl)).update(batch)
    assert metrics["update_accepted"] == 1.0
    assert metrics["actual_improvement"] > 0
    with torch.no_grad():
        assert float(surrogate(policy, batch)) > 0  # L(θ_old) = mean(A) = 0
        assert 0 < float(mean_kl(policy, batch)) <= max_kl
    assert metrics["kl"] <= max_kl


def test_trpo_updates_the_gaussian_log_std():
    policy = mlp_policy("gaussian")
    before = policy.log_std.detach().clone()
    TRPO(policy, **solver_kwargs("trpo")).update(make_batch(policy))
    assert not torch.equal(before, policy.log_std.detach())


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_npg_trust_region_step_raises_surrogate_with_kl_near_delta(kind):
    """With no line search the KL is only bounded through its quadratic model ½xᵀFx = δ."""
    policy = mlp_policy(kind)
    batch = make_batch(policy)
    metrics = NaturalPolicyGradient(policy, **solver_kwargs("npg", max_kl=0.01)).update(batch)
    assert metrics["actual_improvement"] > 0
    assert metrics["linesearch_backtracks"] == 0
    assert 0.001 < metrics["kl"] <= 0.015


def test_npg_fixed_step_size_is_kakades_update():
    """θ ← θ + α x with x the CG solution: the step's norm is α‖x‖, whatever δ."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    solver = NaturalPolicyGradient(policy, **solver_kwargs("npg", max_kl=123.0, step_size=0.05, cg_iters=30))
    params = list(policy.parameters())
    objective = surrogate(policy, batch)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, params)])
    direction, _, _ = conjugate_gradient(
        analytic_fisher_vector_product(policy, batch, params, 0.1), gradient, 30)
    before = flat_params(policy)
    metrics = solver.update(batch)
    np.testing.assert_allclose(flat_params(policy) - before, 0.05 * direction, atol=1e-8)
    assert metrics["step_norm"] == pytest.approx(0.05 * float(direction.norm()), rel=1e-6)


@pytest.mark.parametrize("solver_class, option", [(TRPO, "trpo"), (NaturalPolicyGradient, "npg")])
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_an_update_with_the_analytic_product_takes_the_double_backprop_step(kind, solver_class,
                                                                            option):
    """25 CG iterations and the line search, float64: the parameters reached agree to 1e-9 of
    the step and every count (CG iterations, backtracks) is the same."""
    policy = mlp_policy(kind)
    batch = make_batch(policy)
    twin = copy.deepcopy(policy)
    before = flat_params(policy)
    analytic = solver_class(policy, **solver_kwargs(option, fvp=FisherProduct.analytic)).update(batch)
    double_backprop = solver_class(twin, **solver_kwargs(option, fvp="double_backprop")).update(batch)
    step, twin_step = flat_params(policy) - before, flat_params(twin) - before
    assert float(step.norm()) > 0 and analytic["update_accepted"] == 1.0
    assert float((step - twin_step).norm() / twin_step.norm()) < 1e-9
    for key in ("cg_iterations", "linesearch_backtracks", "update_accepted"):
        assert analytic[key] == double_backprop[key]
    for key in ("expected_improvement", "actual_improvement", "kl", "cg_residual"):
        assert analytic[key] == pytest.approx(double_backprop[key], rel=1e-6)


def test_the_double_backprop_product_is_chosen_by_name():
    policy = mlp_policy("gaussian")
    assert TRPO(policy, **solver_kwargs("trpo")).fisher_vector_product is analytic_fisher_vector_product
    chosen = NaturalPolicyGradient(policy, **solver_kwargs("npg", fvp="double_backprop")).fisher_vector_product
    assert chosen is double_backprop_fisher_vector_product
    with pytest.raises(ValueError):
        TRPO(policy, **solver_kwargs("trpo", fvp="finite_differences"))


def test_linear_schedule_by_hand():
    assert linear_schedule(0.01, 0.001, 0.0) == 0.01
    assert linear_schedule(0.01, 0.001, 0.5) == pytest.approx(0.0055, rel=1e-12)
    assert linear_schedule(0.01, 0.001, 1.0) == 0.001
    assert linear_schedule(0.01, None, 0.7) == 0.01


@pytest.mark.parametrize("solver_class, option", [(TRPO, "trpo"), (NaturalPolicyGradient, "npg")])
@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_a_shrinking_trust_region_steps_as_the_solver_with_that_fixed_delta(solver_class, option,
                                                                          progress):
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    twin = copy.deepcopy(policy)
    delta = 0.05 + (0.001 - 0.05) * progress  # the schedule written another way
    scheduled = solver_class(policy, **solver_kwargs(option, max_kl=0.05, max_kl_final=0.001)).update(batch, progress)
    fixed = solver_class(twin, **solver_kwargs(option, max_kl=delta)).update(batch)
    torch.testing.assert_close(flat_params(policy), flat_params(twin), rtol=1e-9, atol=0)
    assert scheduled["trust_region"] == pytest.approx(delta, rel=1e-12)
    assert fixed["trust_region"] == delta
    if solver_class is TRPO:
        assert 0 < scheduled["kl"] <= delta


def test_npg_with_a_fixed_step_size_reports_no_trust_region():
    policy = mlp_policy("gaussian")
    metrics = NaturalPolicyGradient(policy, **solver_kwargs("npg", step_size=0.05)).update(make_batch(policy))
    assert math.isnan(metrics["trust_region"])


@pytest.mark.parametrize("progress", [-0.1, 1.5, math.nan])
def test_progress_outside_zero_to_one_is_refused(progress):
    policy = mlp_policy("gaussian")
    with pytest.raises(ValueError, match="progress must be in"):
        TRPO(policy, **solver_kwargs("trpo")).update(make_batch(policy), progress)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_kl_penalty_raises_surrogate_and_keeps_kl_small(kind):
    policy = mlp_policy(kind)
    batch = make_batch(policy)
    metrics = KLPenalty(policy, **solver_kwargs("kl_penalty", target_kl=0.01, beta=1.0, epochs=10, minibatch_size=64)).update(
        batch)
    assert metrics["actual_improvement"] > 0
    assert 0 < metrics["kl"] <= 1.5 * 0.01 * 2  # the adaptive band's upper edge, with slack


@pytest.mark.parametrize("lr, expected_factor", [(1e-2, 2.0), (1e-7, 0.5)])
def test_kl_penalty_adapts_beta_towards_the_target(lr, expected_factor):
    """A large step (KL > 1.5·target) doubles β; a tiny one (KL < target/1.5) halves it."""
    policy = mlp_policy("gaussian")
    solver = KLPenalty(policy, **solver_kwargs("kl_penalty", target_kl=0.01, beta=1.0, lr=lr, epochs=10))
    metrics = solver.update(make_batch(policy))
    assert metrics["beta"] == 1.0  # the β this update used
    assert solver.beta == expected_factor
    assert (metrics["kl"] > 0.015) == (expected_factor == 2.0)


def test_kl_penalty_with_fixed_beta_keeps_it():
    policy = mlp_policy("gaussian")
    solver = KLPenalty(policy, **solver_kwargs("kl_penalty", beta=3.0, adaptive=False, lr=1e-2))
    solver.update(make_batch(policy))
    assert solver.beta == 3.0


def naive_clipped_objective(ratio, advantages, eps):
    """PPO's clipped surrogate sample by sample, written out by the sign of the advantage."""
    total = 0.0
    for r, a in zip(ratio.tolist(), advantages.tolist()):
        total += min(r, 1 + eps) * a if a >= 0 else max(r, 1 - eps) * a
    return total / len(ratio)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_ppo_clip_loss_matches_a_sample_by_sample_implementation(kind):
    policy = mlp_policy(kind)
    batch = make_batch(policy, batch_size=64)
    perturbed(policy)
    with torch.no_grad():
        ratio = torch.exp(policy(batch.obs).log_prob(batch.actions) - batch.old_log_prob)
        loss = PPOClip(policy, **solver_kwargs("ppo_clip", clip_range=0.2)).loss(batch)
    assert ((ratio - 1).abs() > 0.2).any()  # some samples are clipped, or the test is void
    assert float(-loss) == pytest.approx(naive_clipped_objective(ratio, batch.advantages, 0.2),
                                         rel=1e-12)


def test_ppo_clip_gives_no_gradient_through_samples_clipped_in_the_advantage_direction():
    """A sample with A > 0 and r > 1 + ε (or A < 0 and r < 1 − ε) contributes nothing."""
    policy = perturbed(mlp_policy("gaussian"), scale=0.5)
    batch = make_batch(policy, batch_size=64)
    perturbed(policy, scale=0.5)
    with torch.no_grad():
        ratio = torch.exp(policy(batch.obs).log_prob(batch.actions) - batch.old_log_prob)
    solver = PPOClip(policy, **solver_kwargs("ppo_clip", clip_range=0.1))
    flat = (((batch.advantages > 0) & (ratio > 1.1)) | ((batch.advantages < 0) & (ratio < 0.9)))
    assert flat.any() and not flat.all()
    gradient = flat_grad(solver.loss(batch.take(torch.nonzero(flat).squeeze(1))),
                         solver.params)
    assert torch.count_nonzero(gradient) == 0


def test_ppo_clip_and_vpg_losses_have_the_surrogate_gradient_at_the_old_policy():
    """At θ = θ_old, ∇ mean[r·A] = ∇ mean[log π · A], and the clip is inactive (r = 1)."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    params = [p for p in policy.parameters()]
    expected = -flat_grad(surrogate(policy, batch), params)
    for solver in (PPOClip(policy, **solver_kwargs("ppo_clip")), VanillaPolicyGradient(policy, **solver_kwargs("vpg"))):
        np.testing.assert_allclose(flat_grad(solver.loss(batch), params), expected, rtol=1e-10,
                                   atol=1e-14)


def test_vpg_takes_one_adam_step_along_the_policy_gradient():
    """Adam's first step moves each parameter by lr·sign(gradient) (its moments are g and g²)."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    gradient = flat_grad(surrogate(policy, batch), list(policy.parameters()))
    before = flat_params(policy)
    metrics = VanillaPolicyGradient(policy, **solver_kwargs("vpg", lr=1e-3)).update(batch)
    moved = flat_params(policy) - before
    significant = gradient.abs() > 1e-4  # Adam's ε (1e-8) shrinks steps where |g| is tiny
    assert significant.sum() > 100  # of 388 parameters
    np.testing.assert_allclose(moved[significant], 1e-3 * gradient[significant].sign(),
                               rtol=1e-3)
    assert metrics["actual_improvement"] > 0 and metrics["update_accepted"] == 1.0


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_ppo_clip_raises_the_surrogate_and_reports_its_clip_fraction(kind):
    policy = mlp_policy(kind)
    batch = make_batch(policy)
    metrics = PPOClip(policy, **solver_kwargs("ppo_clip")).update(batch)
    assert metrics["actual_improvement"] > 0
    assert 0 <= metrics["clip_fraction"] <= 1 and metrics["kl"] > 0
    with torch.no_grad():
        ratio = torch.exp(policy(batch.obs).log_prob(batch.actions) - batch.old_log_prob)
    assert metrics["clip_fraction"] == pytest.approx(float(((ratio - 1).abs() > 0.2).double()
                                                           .mean()))


def test_first_order_gradient_clipping_bounds_each_step():
    """With max_grad_norm, a single SGD-like step cannot exceed what the clipped norm allows."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    batch.advantages = batch.advantages * 1e6  # a huge gradient
    clipped = VanillaPolicyGradient(policy, **solver_kwargs("vpg", lr=1e-3, max_grad_norm=1e-9))
    gradients = []
    clipped.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: gradients.append(
            torch.cat([p.grad.reshape(-1) for p in clipped.params])))
    clipped.update(batch)
    assert float(gradients[0].norm()) == pytest.approx(1e-9, rel=1e-6)


def test_non_finite_direction_rejects_the_update_and_keeps_parameters():
    """Zero advantages give a zero gradient: the trust-region scale √(2δ/0) is not finite."""
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    batch.advantages = torch.zeros_like(batch.advantages)
    before = flat_params(policy)
    metrics = TRPO(policy, **solver_kwargs("trpo")).update(batch)
    assert torch.equal(before, flat_params(policy))
    assert metrics["update_accepted"] == 0.0
    assert math.isnan(metrics["expected_improvement"]) or metrics["expected_improvement"] == 0


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_fast_sampling_draws_from_the_policy_distribution(kind):
    """policy.sample (the rollout's path) matches forward(obs): mean and spread of 20k draws."""
    policy = mlp_policy(kind)
    obs = torch.randn(1, 4).expand(20000, 4)
    with torch.no_grad():
        draws, dist = policy.sample(obs), policy(obs[:1])
    if kind == "gaussian":
        np.testing.assert_allclose(draws.mean(0), dist.mean[0], atol=0.03)
        np.testing.assert_allclose(draws.std(0), dist.stddev[0], rtol=0.03)
    else:
        frequencies = torch.bincount(draws, minlength=dist.probs.shape[-1]) / len(draws)
        np.testing.assert_allclose(frequencies, dist.probs[0], atol=0.015)


@pytest.mark.parametrize("solver_class, option", [(TRPO, "trpo"), (NaturalPolicyGradient, "npg")])
def test_a_zero_gradient_takes_no_step_and_is_not_a_rejection(solver_class, option):
    policy = mlp_policy("gaussian")
    batch = make_batch(policy)
    batch.advantages = torch.zeros_like(batch.advantages)
    before = flat_params(policy)
    solver = solver_class(policy, **solver_kwargs(option))
    metrics = solver.update(batch)
    assert torch.equal(flat_params(policy), before)
    assert metrics["zero_gradient"] == 1.0 and metrics["update_nonfinite"] == 0.0
    assert metrics["update_accepted"] == 0.0 and metrics["kl"] == 0.0
    normal = solver.update(make_batch(policy))
    assert set(normal) == set(metrics) and normal["zero_gradient"] == 0.0


