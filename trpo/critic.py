"""Fitting the value network by regression on its targets."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 − Var[target − predicted] / Var[target]: 1 is a perfect fit, ≤ 0 no better than a constant.

    NaN when the target has no variance.
    """
    target_var = np.var(target)
    return float("nan") if target_var == 0 else float(1.0 - np.var(target - predicted) / target_var)


class ValueFitter:
    """Adam on the mean squared error, ``epochs`` passes over the batch in shuffled minibatches."""

    def __init__(self, value: nn.Module, lr: float, epochs: int, minibatch_size: int):
        self.value, self.epochs, self.minibatch_size = value, epochs, minibatch_size
        self.optimizer = torch.optim.Adam(value.parameters(), lr=lr)

    def fit(self, obs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Regress V(obs) (``[B, obs_dim]``) on ``targets`` (``[B]``); return the final batch MSE."""
        for _ in range(self.epochs):
            order = torch.randperm(obs.shape[0])
            for start in range(0, obs.shape[0], self.minibatch_size):
                index = order[start:start + self.minibatch_size]
                loss = (self.value(obs[index]) - targets[index]).pow(2).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        with torch.no_grad():
            return {"value_loss": float((self.value(obs) - targets).pow(2).mean())}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
