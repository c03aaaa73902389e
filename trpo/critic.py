"""Fitting the value network by regression on its targets."""

from __future__ import annotations

import threading
import time
from typing import Optional

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
    """Adam on the mean squared error, ``epochs`` passes over the batch in shuffled minibatches.

    With ``background=True``, :meth:`fit` returns at once and the fit runs in a thread, so it
    overlaps the next rollout (values are only needed after a rollout). Call :meth:`wait` before
    the value network is used or saved; the result is the same as a fit in the foreground, since
    the minibatch order comes from the fitter's own seeded generator.
    """

    def __init__(self, value: nn.Module, lr: float, epochs: int, minibatch_size: int,
                 seed: int = 0, background: bool = False):
        self.value, self.epochs, self.minibatch_size = value, epochs, minibatch_size
        self.background = background
        # The fused kernel is the fastest Adam on CPU for these small networks.
        self.optimizer = torch.optim.Adam(value.parameters(), lr=lr, fused=True)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_fit_s = 0.0  # seconds the last fit took, in whichever thread ran it
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def fit(self, obs: torch.Tensor, targets: torch.Tensor) -> None:
        """Regress V(obs) (``[B, obs_dim]``) on ``targets`` (``[B]``)."""
        self.wait()
        if not self.background:
            self._fit(obs, targets)
            return
        self._thread = threading.Thread(target=self._fit_catching, args=(obs, targets),
                                        name="value-fit", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until a background fit has finished; re-raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _fit_catching(self, obs: torch.Tensor, targets: torch.Tensor) -> None:
        try:
            self._fit(obs, targets)
        except BaseException as error:  # handed to the main thread by wait()
            self._error = error

    def _fit(self, obs: torch.Tensor, targets: torch.Tensor) -> None:
        start = time.perf_counter()
        layers = mlp_layers(self.value)
        for _ in range(self.epochs):
            # One gather per epoch; the minibatches are then slices (views) of it.
            order = torch.randperm(obs.shape[0], generator=self.generator)
            shuffled_obs, shuffled_targets = obs[order], targets[order]
            for first in range(0, obs.shape[0], self.minibatch_size):
                last = first + self.minibatch_size
                if layers is None:
                    loss = nn.functional.mse_loss(self.value(shuffled_obs[first:last]),
                                                  shuffled_targets[first:last])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                else:
                    mse_gradients(layers, shuffled_obs[first:last], shuffled_targets[first:last])
                self.optimizer.step()
        self.last_fit_s = time.perf_counter() - start

    def state_dict(self) -> dict:
        self.wait()
        return {"optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.wait()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


# The activations whose backward pass :func:`mse_gradients` writes out, with the kernel autograd
# uses for it (so the gradients are autograd's to the bit).
_BACKWARD = {nn.Tanh: lambda grad, output: torch.ops.aten.tanh_backward(grad, output),
             nn.ReLU: lambda grad, output: torch.ops.aten.threshold_backward(grad, output, 0)}


def mlp_layers(value: nn.Module) -> Optional[list[tuple[nn.Linear, Optional[type]]]]:
    """``value``'s layers as (Linear, the activation after it or None) if it is an MLP of
    Linear layers and activations :func:`mse_gradients` knows, ending in one output; else None
    (the fit then uses autograd)."""
    modules = list(getattr(value, "net", nn.Sequential()))
    layers = []
    for module in modules:
        if isinstance(module, nn.Linear):
            layers.append((module, None))
        elif type(module) in _BACKWARD and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], type(module))
        else:
            return None
    if not layers or layers[-1][1] is not None or layers[-1][0].out_features != 1:
        return None
    return layers


def mse_gradients(layers: list[tuple[nn.Linear, Optional[type]]], obs: torch.Tensor,
                  targets: torch.Tensor) -> None:
    """Set each parameter's ``.grad`` to the gradient of mean[(V(obs) − targets)²] (``obs``
    ``[B, obs_dim]``, ``targets`` ``[B]``), the backward pass written out with the kernels
    autograd uses: the same numbers as ``mse_loss(...).backward()``, without its per-call
    overhead, which dominates for minibatches this small."""
    with torch.no_grad():
        inputs, hidden = [], obs
        for linear, activation in layers:
            inputs.append(hidden)
            hidden = torch.addmm(linear.bias, hidden, linear.weight.t())
            if activation is not None:
                hidden = torch.tanh(hidden) if activation is nn.Tanh else torch.relu(hidden)
        grad = ((2.0 / targets.shape[0]) * (hidden.squeeze(-1) - targets)).unsqueeze(-1)
        for index in range(len(layers) - 1, -1, -1):
            linear, _ = layers[index]
            linear.weight.grad = torch.mm(grad.t(), inputs[index])
            linear.bias.grad = grad.sum(0)
            if index:
                grad = _BACKWARD[layers[index - 1][1]](torch.mm(grad, linear.weight),
                                                       inputs[index])
