"""Policy and value MLPs.

A Box action space gets a diagonal Gaussian policy whose mean is an MLP of the observation and
whose log standard deviation is a learned, state-independent parameter (TRPO paper, §8); a
Discrete one gets a Categorical policy over MLP logits. Both return ``torch.distributions``
objects whose ``log_prob``, ``entropy`` and KL are per sample (shape ``[B]``).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from trpo.config import Activation, Init, NetworkConfig
from trpo.normalization import RunningMeanStd

ACTIVATIONS = {Activation.tanh: nn.Tanh, Activation.relu: nn.ReLU, Activation.elu: nn.ELU}


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: Activation, init: Init,
        out_gain: float) -> nn.Sequential:
    """``in_dim → hidden... → out_dim`` with ``activation`` between layers and none at the end.

    With ``Init.orthogonal``, hidden layers get gain √2 and the output layer ``out_gain``, all
    biases zero (OpenAI baselines; SB3's ``ortho_init``).
    """
    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(n_in, n_out)
        is_output = i == len(sizes) - 2
        if init is Init.orthogonal:
            nn.init.orthogonal_(linear.weight, gain=out_gain if is_output else math.sqrt(2))
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not is_output:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """π(a|s) = N(μ_θ(s), diag(exp(log_std)²)) for Box action spaces."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: NetworkConfig):
        super().__init__()
        self.mean = mlp(obs_dim, list(cfg.policy_hidden), act_dim, cfg.activation, cfg.init, 0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))

    def forward(self, obs: torch.Tensor) -> Distribution:
        mean = self.mean(obs)
        return Independent(Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False),
                           1, validate_args=False)

    @staticmethod
    def mode(dist: Distribution) -> torch.Tensor:
        """The most likely action: the mean."""
        return dist.mean

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions drawn from π(·|obs), μ + σ·ε, without building a distribution (the rollout's
        hot path: half the cost of ``forward(obs).sample()``). The layers' own ``forward`` is
        called directly, without ``nn.Module.__call__``'s hook handling: the same numbers."""
        mean = obs
        for layer in self.mean:
            mean = layer.forward(mean)
        return mean + self.log_std.exp() * torch.randn_like(mean)


class CategoricalPolicy(nn.Module):
    """π(a|s) = softmax(logits_θ(s)) for Discrete action spaces."""

    def __init__(self, obs_dim: int, num_actions: int, cfg: NetworkConfig):
        super().__init__()
        self.logits = mlp(obs_dim, list(cfg.policy_hidden), num_actions, cfg.activation, cfg.init,
                          0.01)

    def forward(self, obs: torch.Tensor) -> Distribution:
        return Categorical(logits=self.logits(obs), validate_args=False)

    @staticmethod
    def mode(dist: Distribution) -> torch.Tensor:
        """The most likely action: the arg-max of the logits."""
        return dist.logits.argmax(dim=-1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions drawn from π(·|obs)."""
        return torch.multinomial(torch.softmax(self.logits(obs), dim=-1), 1).squeeze(-1)


class ValueNetwork(nn.Module):
    """V_φ(s): an MLP with one output, shape ``[B]``.

    With ``normalize_targets`` the MLP fits returns standardised by their running mean and
    variance over all batches so far, and V(s) = mean + std · MLP(s) (value normalisation as
    in Andrychowicz et al. 2021; the statistics are buffers, so checkpoints and a background
    fit carry them). Without it, V(s) = MLP(s) and the state dict has no buffers.
    """

    def __init__(self, obs_dim: int, cfg: NetworkConfig, normalize_targets: bool = False,
                 epsilon: float = 1e-8):
        super().__init__()
        self.net = mlp(obs_dim, list(cfg.value_hidden), 1, cfg.activation, cfg.init, 1.0)
        self.normalize_targets, self.epsilon = normalize_targets, epsilon
        if normalize_targets:
            stats = RunningMeanStd()
            self.register_buffer("target_mean", torch.tensor(stats.mean))
            self.register_buffer("target_var", torch.tensor(stats.var))
            self.register_buffer("target_count", torch.tensor(stats.count, dtype=torch.float64))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        raw = self.raw(obs)
        if not self.normalize_targets:
            return raw
        std = torch.sqrt(self.target_var + self.epsilon)
        return (raw.double() * std + self.target_mean).to(raw.dtype)

    def raw(self, obs: torch.Tensor) -> torch.Tensor:
        """The MLP's own output, the quantity the fit regresses on :meth:`fit_targets`."""
        return self.net(obs).squeeze(-1)

    def fit_targets(self, returns: torch.Tensor) -> torch.Tensor:
        """What the MLP regresses on for these returns (``[B]``): the returns themselves, or,
        with ``normalize_targets``, the returns standardised after merging them into the
        running statistics."""
        if not self.normalize_targets:
            return returns
        stats = RunningMeanStd()
        stats.load_state_dict({"mean": self.target_mean.numpy(), "var": self.target_var.numpy(),
                               "count": float(self.target_count)})
        stats.update(returns.double().numpy())
        self.target_mean.fill_(float(stats.mean))
        self.target_var.fill_(float(stats.var))
        self.target_count.fill_(stats.count)
        std = torch.sqrt(self.target_var + self.epsilon)
        return ((returns.double() - self.target_mean) / std).to(returns.dtype)


def build_policy(observation_space: gym.Space, action_space: gym.Space,
                 cfg: NetworkConfig) -> nn.Module:
    """The policy for ``action_space``: Gaussian for Box, Categorical for Discrete."""
    obs_dim = int(np.prod(observation_space.shape))
    if isinstance(action_space, gym.spaces.Box):
        return GaussianPolicy(obs_dim, int(np.prod(action_space.shape)), cfg)
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(obs_dim, int(action_space.n), cfg)
    raise TypeError(f"unsupported action space {action_space}: expected Box or Discrete")
