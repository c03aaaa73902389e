"""Policy solvers. They share one interface and differ only in how they change the parameters.

* :class:`NaturalPolicyGradient` owns the natural-gradient direction: the gradient g of the
  surrogate, the Fisher-vector product of the mean KL (in closed form, Jᵀ M J v, or by double
  backprop) and conjugate gradient for x ≈ F⁻¹g, scaled to the trust region √(2δ / xᵀFx) or by a
  fixed step; it applies the step as it is.
* :class:`TRPO` adds only the backtracking line search that accepts a step when the sampled mean
  KL ≤ δ and the surrogate improves, and restores the old parameters exactly when none does.
* :class:`FirstOrderSolver` runs Adam on a loss over minibatches; its subclasses only say which
  loss: :class:`KLPenalty` (the surrogate minus β·KL, adaptive β), :class:`PPOClip` (the clipped
  surrogate) and :class:`VanillaPolicyGradient` (log π · A, one step).

Every solver reads a :class:`PolicyBatch` and returns a dict of metrics with the same keys on
every call.
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from trpo.config import FisherProduct


def take(dist: Distribution, index: torch.Tensor) -> Distribution:
    """The distributions of the samples ``index`` of a batched Gaussian or Categorical policy."""
    if isinstance(dist, Independent):
        return Independent(take(dist.base_dist, index), dist.reinterpreted_batch_ndims,
                           validate_args=False)
    if isinstance(dist, Normal):
        return Normal(dist.loc[index], dist.scale[index], validate_args=False)
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits[index], validate_args=False)
    raise TypeError(f"cannot index a {type(dist).__name__}")


@dataclass
class PolicyBatch:
    """One batch of on-policy data, flattened over time and environments (B samples)."""

    obs: torch.Tensor  # [B, obs_dim] normalised observations the policy saw
    actions: torch.Tensor  # [B, act_dim] (Box) or [B] (Discrete)
    advantages: torch.Tensor  # [B]
    old_log_prob: torch.Tensor  # [B] log π_old(a|s)
    old_dist: Distribution  # π_old(·|s), batch shape [B], no gradient

    @classmethod
    def from_policy(cls, policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor,
                    advantages: torch.Tensor) -> "PolicyBatch":
        """Record the current policy as π_old on ``obs``."""
        with torch.no_grad():
            dist = policy(obs)
            return cls(obs, actions, advantages, dist.log_prob(actions), dist)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def take(self, index: torch.Tensor) -> "PolicyBatch":
        """The samples ``index`` (a slice, or a tensor of indices)."""
        return PolicyBatch(self.obs[index], self.actions[index], self.advantages[index],
                           self.old_log_prob[index], take(self.old_dist, index))


def probability_ratio(policy: nn.Module, batch: PolicyBatch) -> torch.Tensor:
    """r = π_θ(a|s) / π_old(a|s) for each sample of the batch."""
    return torch.exp(policy(batch.obs).log_prob(batch.actions) - batch.old_log_prob)


def surrogate(policy: nn.Module, batch: PolicyBatch) -> torch.Tensor:
    """L(θ) = mean[π_θ(a|s) / π_old(a|s) · A] (TRPO paper, eq. 14)."""
    return (probability_ratio(policy, batch) * batch.advantages).mean()


def mean_kl(policy: nn.Module, batch: PolicyBatch) -> torch.Tensor:
    """Mean over the batch's states of KL(π_old(·|s) ‖ π_θ(·|s)), in closed form."""
    return kl_divergence(batch.old_dist, policy(batch.obs)).mean()


def flat_grad(output: torch.Tensor, params: list[nn.Parameter], **kwargs) -> torch.Tensor:
    """∂output/∂params as one flat vector."""
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(output, params, **kwargs)])


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       iterations: int, residual_tol: float = 1e-10
                       ) -> tuple[torch.Tensor, int, float]:
    """Solve A x = b for symmetric positive-definite A given only ``matvec(v) = A v``.

    Returns ``(x, iterations run, final residual norm ‖b − A x‖)``; stops early once the squared
    residual is below ``residual_tol`` (Shewchuk 1994, §B2; as in OpenAI baselines).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    iterations_run = 0
    while iterations_run < iterations and rr >= residual_tol:
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations_run += 1
    return x, iterations_run, float(rr.sqrt())


FisherVectorProduct = Callable[[torch.Tensor], torch.Tensor]


def double_backprop_fisher_vector_product(policy: nn.Module, batch: PolicyBatch,
                                          params: list[nn.Parameter],
                                          damping: float) -> FisherVectorProduct:
    """``v ↦ (F + damping·I) v`` where F is the Hessian of the mean KL at θ_old.

    At θ = θ_old the Hessian of KL(π_old ‖ π_θ) equals the Fisher information of the policy
    averaged over the batch's states (TRPO paper, appendix C). The first derivative is built once
    with its graph; each product is one more backward pass through it. ``v`` and the product are
    flat vectors ``[P]`` over ``params``, in their order.
    """
    kl_grad = flat_grad(mean_kl(policy, batch), params, create_graph=True)

    def product(v: torch.Tensor) -> torch.Tensor:
        return flat_grad(kl_grad @ v, params, retain_graph=True) + damping * v

    return product


FisherMap = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def distribution_fisher(dist: Distribution) -> tuple[tuple[torch.Tensor, ...], FisherMap]:
    """The tensors a batch of B distributions is a function of, and ``u ↦ M u / B`` with M each
    state's Fisher information in those tensors, averaged over the states as the mean KL is.

    Diagonal Gaussian: ``(mean [B, A], log σ [B, A])``; M is 1/σ² for the mean and 2 for log σ,
    per dimension. Categorical: ``(logits [B, K],)``; M = diag(p) − p pᵀ, right for raw logits
    too (Categorical's are normalised, so pᵀ dz = 0 and the p pᵀ term adds nothing to F there).
    """
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        mean, log_std = dist.base_dist.loc, dist.base_dist.scale.log()
        states, inverse_variance = mean.shape[0], torch.exp(-2.0 * log_std.detach())

        def gaussian(u: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return u[0] * inverse_variance / states, 2.0 * u[1] / states

        return (mean, log_std), gaussian
    if isinstance(dist, Categorical):
        logits = dist.logits
        states, probs = logits.shape[0], dist.probs.detach()

        def categorical(u: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            weighted = probs * u[0]
            return ((weighted - probs * weighted.sum(-1, keepdim=True)) / states,)

        return (logits,), categorical
    raise TypeError(f"no closed-form Fisher for a {type(dist).__name__}; "
                    "solver.fvp=double_backprop works for any distribution")


def analytic_fisher_vector_product(policy: nn.Module, batch: PolicyBatch,
                                   params: list[nn.Parameter],
                                   damping: float) -> FisherVectorProduct:
    """``v ↦ (F + damping·I) v`` with F = Jᵀ M J at the current parameters (θ_old when a solver
    calls it): the same matrix as :func:`double_backprop_fisher_vector_product`.

    J is the Jacobian of the distribution's parameters on the batch's states with respect to
    ``params`` and M their Fisher, both from :func:`distribution_fisher` (TRPO paper, appendix
    C.1). The forward pass runs once per call, and so does one backward pass u ↦ Jᵀu recorded
    with its graph; that map is linear in u, so differentiating it with respect to u gives J v
    (the double-vjp trick, Townsend 2017). Each product is then two first-order passes, J v and
    Jᵀ(M J v): no second derivative of the network is taken, and nothing is traced anew per
    update as ``torch.func.linearize`` would. ``v`` and the product are flat vectors ``[P]`` over
    ``params``.
    """
    outputs, fisher = distribution_fisher(policy(batch.obs))
    cotangents = tuple(torch.zeros_like(o, requires_grad=True) for o in outputs)
    transposed = flat_grad(outputs, params, grad_outputs=cotangents, create_graph=True)  # Jᵀu

    def product(v: torch.Tensor) -> torch.Tensor:
        jacobian_v = torch.autograd.grad(transposed, cotangents, grad_outputs=v,
                                         retain_graph=True)
        return flat_grad(outputs, params, grad_outputs=fisher(jacobian_v),
                         retain_graph=True) + damping * v

    return product


FISHER_VECTOR_PRODUCTS = {FisherProduct.analytic: analytic_fisher_vector_product,
                          FisherProduct.double_backprop: double_backprop_fisher_vector_product}


def require_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1] (0 at the first update, 1 at the last), "
                         f"got {progress}")


def linear_schedule(start: float, end: float | None, progress: float) -> float:
    """``start`` at progress 0, ``end`` at progress 1, linear between; ``end=None`` is constant."""
    return start if end is None else (1.0 - progress) * start + progress * end


class PolicySolver(ABC):
    """Changes a policy's parameters from one batch. Subclasses implement :meth:`step`.

    Every solver is built as ``Solver(policy, ..., seed=run seed)``. ``seed`` seeds the random
    draws a solver makes itself (NPG's and TRPO's subsets of states for ``fvp_subsample`` > 1),
    which it then carries in :meth:`state_dict`; the first-order solvers' minibatch order still
    comes from torch's global generator, which the trainer seeds and checkpoints.
    """

    def __init__(self, policy: nn.Module, *, seed: int):
        self.policy = policy
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.seed = seed

    def update(self, batch: PolicyBatch, progress: float = 0.0) -> dict[str, float]:
        """One policy update; metrics include the KL between the old and the new policy.

        ``progress`` is how far training is, 0 at the first update and 1 at the last, for
        solvers whose step follows a schedule; it is computed from the iteration, so a resumed
        run follows the same schedule as one that never stopped.
        """
        require_progress(progress)
        with torch.no_grad():
            entropy = float(batch.old_dist.entropy().mean())
        metrics = self.step(batch, progress)
        if "kl" not in metrics:  # a step that measured it already hands it back
            with torch.no_grad():
                metrics["kl"] = float(mean_kl(self.policy, batch))
        metrics["entropy"] = entropy
        return metrics

    @abstractmethod
    def step(self, batch: PolicyBatch, progress: float) -> dict[str, float]:
        """Change the parameters; return this solver's metrics (the same keys on every call),
        with ``kl`` if the step measured the KL of the parameters it leaves."""

    def state_dict(self) -> dict:
        """What the solver carries from one update to the next (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (nothing, for a stateless solver)."""

    def _flat_params(self) -> torch.Tensor:
        return parameters_to_vector(self.params).detach().clone()

    def _set_flat_params(self, flat: torch.Tensor) -> None:
        vector_to_parameters(flat, self.params)


class NaturalPolicyGradient(PolicySolver):
    """Natural policy gradient (Kakade 2001) with the trust-region step scale of TRPO.

    Args:
        max_kl: δ, the step is scaled so that its quadratic KL estimate ½xᵀFx equals δ.
        max_kl_final: δ at the last update, reached linearly from ``max_kl`` over training
            (None: δ stays ``max_kl``). The δ used is reported as ``trust_region``.
        cg_iters, cg_damping, cg_residual_tol: conjugate gradient on (F + damping·I) x = g.
        cg_damping_per_action_dim: damping = ``cg_damping`` × the action's dimensions (the
            policy's ``log_std`` size; 1 for a Categorical policy) instead of ``cg_damping``.
        fvp_subsample: k; Fisher-vector products use len(batch) // k of the batch's states,
            drawn uniformly without replacement at each update from the solver's generator
            (seeded with ``seed``, carried in :meth:`state_dict`). 1: every state, no draw.
        step_size: fixed α for θ += α x instead of the trust-region scale (null: trust region).
        fvp: how F v is computed (a :class:`FisherProduct` or its name), the same matrix either
            way: ``analytic`` (:func:`analytic_fisher_vector_product`) or ``double_backprop``
            (:func:`double_backprop_fisher_vector_product`).
    """

    def __init__(self, policy: nn.Module, *, max_kl: float, max_kl_final: float | None,
                 cg_iters: int, cg_damping: float, cg_damping_per_action_dim: bool,
                 cg_residual_tol: float, fvp_subsample: int, fvp: FisherProduct | str,
                 step_size: float | None, seed: int):
        super().__init__(policy, seed=seed)
        self.max_kl, self.max_kl_final = max_kl, max_kl_final
        action_dims = policy.log_std.numel() if hasattr(policy, "log_std") else 1
        self.cg_iters = cg_iters
        self.cg_damping = cg_damping * action_dims if cg_damping_per_action_dim else cg_damping
        self.cg_residual_tol, self.fvp_subsample, self.step_size = (cg_residual_tol,
                                                                    fvp_subsample, step_size)
        self.fisher_vector_product = FISHER_VECTOR_PRODUCTS[FisherProduct(fvp)]
        self.fvp_generator = torch.Generator().manual_seed(seed)

    def trust_region(self, progress: float) -> float:
        """δ for the update at ``progress`` (0 first, 1 last)."""
        return linear_schedule(self.max_kl, self.max_kl_final, progress)

    def fvp_states(self, batch: PolicyBatch) -> PolicyBatch:
        """The states this update's Fisher-vector products average over: the whole batch for
        ``fvp_subsample`` = 1 (no random draw), else len(batch) // k of them drawn uniformly
        without replacement from the solver's generator, in batch order.

        A uniform draw takes every environment's states of a time-major [T·N] batch in
        proportion; every k-th state would take environment 0 alone when k = N.
        """
        if self.fvp_subsample == 1:
            return batch
        size = len(batch) // self.fvp_subsample
        if size == 0:
            raise ValueError(f"fvp_subsample={self.fvp_subsample} leaves no state of a batch "
                             f"of {len(batch)}")
        order = torch.randperm(len(batch), generator=self.fvp_generator)
        return batch.take(order[:size].sort().values)

    def state_dict(self) -> dict:
        return {"fvp_generator": self.fvp_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.fvp_generator.set_state(state["fvp_generator"])

    def step(self, batch: PolicyBatch, progress: float) -> dict[str, float]:
        max_kl = self.trust_region(progress)
        tick = time.perf_counter()
        old_params = self._flat_params()
        objective = surrogate(self.policy, batch)
        gradient = flat_grad(objective, self.params)
        gradient_s = time.perf_counter() - tick
        if not torch.any(gradient):  # a batch that says nothing (all advantages 0): no step
            return {"trust_region": max_kl if self.step_size is None else math.nan,
                    "cg_iterations": 0.0, "cg_residual": 0.0, "expected_improvement": 0.0,
                    "time_gradient_s": gradient_s, "time_cg_s": 0.0, "zero_gradient": 1.0,
                    **self._reject(old_params, nonfinite=False), "time_linesearch_s": 0.0}

        tick = time.perf_counter()
        fvp = self.fisher_vector_product(self.policy, self.fvp_states(batch), self.params,
                                         self.cg_damping)
        direction, cg_iterations, cg_residual = conjugate_gradient(
            fvp, gradient, self.cg_iters, self.cg_residual_tol)
        curvature = float(direction @ fvp(direction))  # xᵀ(F + damping·I)x
        if self.step_size is None:
            scale = math.sqrt(2.0 * max_kl / curvature) if curvature > 0 else math.nan
        else:
            scale = self.step_size
        full_step = scale * direction
        metrics = {"trust_region": max_kl if self.step_size is None else math.nan,
                   "cg_iterations": float(cg_iterations), "cg_residual": cg_residual,
                   "expected_improvement": float(gradient @ full_step),
                   "time_gradient_s": gradient_s, "time_cg_s": time.perf_counter() - tick,
                   "zero_gradient": 0.0}

        tick = time.perf_counter()
        if not torch.isfinite(full_step).all():
            metrics.update(self._reject(old_params, nonfinite=True))
        else:
            with torch.no_grad():
                metrics.update(self.apply_step(batch, old_params, full_step, float(objective),
                                               max_kl))
        metrics["time_linesearch_s"] = time.perf_counter() - tick
        return metrics

    def apply_step(self, batch: PolicyBatch, old_params: torch.Tensor, full_step: torch.Tensor,
                   old_objective: float, max_kl: float) -> dict[str, float]:
        """Take the full step as it is (no line search), unless it makes L or the KL non-finite;
        ``max_kl`` is the update's δ, which only a line search enforces."""
        self._set_flat_params(old_params + full_step)
        improvement = float(surrogate(self.policy, batch)) - old_objective
        kl = float(mean_kl(self.policy, batch))
        if not (math.isfinite(improvement) and math.isfinite(kl)):
            return self._reject(old_params, nonfinite=True)
        return {"actual_improvement": improvement, "step_norm": float(full_step.norm()),
                "linesearch_backtracks": 0.0, "update_accepted": 1.0, "update_nonfinite": 0.0,
                "kl": kl}

    def _reject(self, old_params: torch.Tensor, nonfinite: bool) -> dict[str, float]:
        """Set the parameters back to θ_old exactly; ``nonfinite`` says why the update failed."""
        self._set_flat_params(old_params)
        return {"actual_improvement": 0.0, "step_norm": 0.0, "linesearch_backtracks": 0.0,
                "update_accepted": 0.0, "update_nonfinite": float(nonfinite)}


class TRPO(NaturalPolicyGradient):
    """Trust region policy optimisation (Schulman et al. 2015): NPG plus a line search.

    The step θ_old + f·s is tried for f = 1, b, b², … (b = ``backtrack_factor``), at most
    ``max_backtracks`` candidates; the first with sampled mean KL ≤ δ and a higher surrogate is
    taken. If none is, the parameters are set back to θ_old bit for bit.
    """

    def __init__(self, policy: nn.Module, *, backtrack_factor: float, max_backtracks: int,
                 **natural_gradient):
        # The step is always scaled to the trust region; the line search then enforces it.
        super().__init__(policy, step_size=None, **natural_gradient)
        self.backtrack_factor, self.max_backtracks = backtrack_factor, max_backtracks

    def apply_step(self, batch: PolicyBatch, old_params: torch.Tensor, full_step: torch.Tensor,
                   old_objective: float, max_kl: float) -> dict[str, float]:
        any_finite = False
        for backtracks in range(self.max_backtracks):
            step = self.backtrack_factor**backtracks * full_step
            self._set_flat_params(old_params + step)
            improvement = float(surrogate(self.policy, batch)) - old_objective
            kl = float(mean_kl(self.policy, batch))
            finite = math.isfinite(kl) and math.isfinite(improvement)
            any_finite |= finite
            if finite and kl <= max_kl and improvement > 0:
                return {"actual_improvement": improvement, "step_norm": float(step.norm()),
                        "linesearch_backtracks": float(backtracks), "update_accepted": 1.0,
                        "update_nonfinite": 0.0, "kl": kl}
        metrics = self._reject(old_params, nonfinite=not any_finite)
        metrics["linesearch_backtracks"] = float(self.max_backtracks)
        return metrics


class FirstOrderSolver(PolicySolver):
    """Adam on a loss, ``epochs`` passes over the batch in shuffled minibatches.

    ``minibatch_size=None`` takes the whole batch as one minibatch; ``max_grad_norm`` clips the
    gradient's global norm before each Adam step (None: no clipping).
    """

    def __init__(self, policy: nn.Module, *, lr: float, epochs: int,
                 minibatch_size: int | None, max_grad_norm: float | None, seed: int):
        super().__init__(policy, seed=seed)
        self.epochs, self.minibatch_size, self.max_grad_norm = epochs, minibatch_size, max_grad_norm
        self.optimizer = torch.optim.Adam(self.params, lr=lr, fused=True)

    @abstractmethod
    def loss(self, minibatch: PolicyBatch) -> torch.Tensor:
        """The loss to minimise on one minibatch."""

    def step(self, batch: PolicyBatch, progress: float) -> dict[str, float]:
        old_params = self._flat_params()
        old_optimizer = copy.deepcopy(self.optimizer.state_dict())
        with torch.no_grad():
            old_objective = float(surrogate(self.policy, batch))
        size = self.minibatch_size or len(batch)
        for _ in range(self.epochs):
            order = torch.randperm(len(batch))
            for start in range(0, len(batch), size):
                loss = self.loss(batch.take(order[start:start + size]))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
                self.optimizer.step()
        with torch.no_grad():
            improvement = float(surrogate(self.policy, batch)) - old_objective
            kl = float(mean_kl(self.policy, batch))
        if not (math.isfinite(improvement) and math.isfinite(kl)
                and torch.isfinite(self._flat_params()).all()):
            # A NaN reached the parameters: undo the whole update, Adam's moments included.
            self._set_flat_params(old_params)
            self.optimizer.load_state_dict(old_optimizer)
            return {"actual_improvement": 0.0, "step_norm": 0.0, "update_accepted": 0.0,
                    "update_nonfinite": 1.0}
        return {"actual_improvement": improvement, "update_accepted": 1.0,
                "update_nonfinite": 0.0, "kl": kl,
                "step_norm": float((self._flat_params() - old_params).norm())}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class KLPenalty(FirstOrderSolver):
    """Maximise L(θ) − β·KL(π_old ‖ π_θ) with Adam (PPO paper, §4, adaptive KL penalty).

    After each update, with d the mean KL it reached: β ← 2β if d > 1.5·target, β ← β/2 if
    d < target/1.5; with ``adaptive=False`` β stays fixed.
    """

    def __init__(self, policy: nn.Module, *, target_kl: float, beta: float, adaptive: bool,
                 **first_order):
        super().__init__(policy, **first_order)
        self.target_kl, self.beta, self.adaptive = target_kl, beta, adaptive

    def loss(self, minibatch: PolicyBatch) -> torch.Tensor:
        return -(surrogate(self.policy, minibatch) - self.beta * mean_kl(self.policy, minibatch))

    def step(self, batch: PolicyBatch, progress: float) -> dict[str, float]:
        beta = self.beta
        metrics = super().step(batch, progress)
        if self.adaptive and metrics["update_accepted"]:
            kl = metrics["kl"]
            if kl > 1.5 * self.target_kl:
                self.beta *= 2.0
            elif kl < self.target_kl / 1.5:
                self.beta /= 2.0
        metrics["beta"] = beta
        return metrics

    def state_dict(self) -> dict:
        return {**super().state_dict(), "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.beta = float(state["beta"])


class PPOClip(FirstOrderSolver):
    """Maximise the clipped surrogate mean[min(r·A, clip(r, 1 − ε, 1 + ε)·A)], r = π_θ / π_old,
    with Adam (PPO paper, Schulman et al. 2017, eq. 7).

    The clip removes the incentive to move r beyond [1 − ε, 1 + ε]; nothing bounds the KL itself.
    """

    def __init__(self, policy: nn.Module, *, clip_range: float, **first_order):
        super().__init__(policy, **first_order)
        self.clip_range = clip_range

    def loss(self, minibatch: PolicyBatch) -> torch.Tensor:
        ratio = probability_ratio(self.policy, minibatch)
        clipped = ratio.clamp(1.0 - self.clip_range, 1.0 + self.clip_range)
        return -torch.min(ratio * minibatch.advantages, clipped * minibatch.advantages).mean()

    def step(self, batch: PolicyBatch, progress: float) -> dict[str, float]:
        metrics = super().step(batch, progress)
        with torch.no_grad():
            ratio = probability_ratio(self.policy, batch)
            metrics["clip_fraction"] = float(((ratio - 1.0).abs() > self.clip_range).float().mean())
        return metrics


class VanillaPolicyGradient(FirstOrderSolver):
    """REINFORCE with a baseline: gradient steps on mean[log π_θ(a|s) · A] (Williams 1992; the
    advantage form of Sutton et al. 2000), with Adam.

    With the defaults, one full-batch step per update (OpenAI Spinning Up's VPG), so the step
    follows the plain policy gradient at θ_old: no trust region, no clipping, no KL term.
    """

    def loss(self, minibatch: PolicyBatch) -> torch.Tensor:
        log_prob = self.policy(minibatch.obs).log_prob(minibatch.actions)
        return -(log_prob * minibatch.advantages).mean()
