"""Fitting the value network by regression on its targets."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any, Callable, Optional

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

    With ``background=True``, :meth:`fit` returns at once and the fit runs in a worker process
    (:func:`_fit_worker`), on another core, while the next rollout steps the environments
    (values are only needed after a rollout). :meth:`wait` copies the fitted weights back into
    the value network; call it before the network is used or saved. The result is the same as a
    fit in the foreground: the worker runs the same code, on the same weights, with the
    fitter's own seeded generator and as many torch threads as this process.
    """

    def __init__(self, value: nn.Module, lr: float, epochs: int, minibatch_size: int,
                 seed: int = 0, background: bool = False):
        self.value, self.epochs, self.minibatch_size = value, epochs, minibatch_size
        # The fused kernel is the fastest Adam on CPU for these small networks.
        self.optimizer = torch.optim.Adam(value.parameters(), lr=lr, fused=True)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_fit_s = 0.0  # seconds the last fit took, in whichever process ran it
        self._worker: Optional[_FitWorker] = _FitWorker(self) if background else None
        self._pending = False

    def fit(self, obs: torch.Tensor, targets: torch.Tensor) -> None:
        """Regress V(obs) (``[B, obs_dim]``) on ``targets`` (``[B]``); a value network with
        ``fit_targets`` (:class:`trpo.networks.ValueNetwork`) regresses its MLP on what that
        makes of them."""
        self.wait()
        if hasattr(self.value, "fit_targets"):
            targets = self.value.fit_targets(targets)
        if self._worker is None:
            self._fit(obs, targets)
            return
        self._worker.send("fit", {"value": _plain(self.value.state_dict()),
                                  "obs": obs.numpy(), "targets": targets.numpy()})
        self._pending = True

    def wait(self) -> None:
        """Block until a background fit has finished and its weights are in the value network;
        re-raise its error, if any (once)."""
        if not self._pending:
            return
        self._pending = False
        answer = self._worker.receive()
        self.value.load_state_dict(_tensors(answer["value"]))
        self.last_fit_s = answer["fit_s"]

    def close(self) -> None:
        """Wait for a background fit and end the worker process."""
        try:
            self.wait()
        finally:
            if self._worker is not None:
                self._worker.close()

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
                    predict = getattr(self.value, "raw", self.value)
                    loss = nn.functional.mse_loss(predict(shuffled_obs[first:last]),
                                                  shuffled_targets[first:last])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                else:
                    mse_gradients(layers, shuffled_obs[first:last], shuffled_targets[first:last])
                self.optimizer.step()
        self.last_fit_s = time.perf_counter() - start

    def _own_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def state_dict(self) -> dict:
        self.wait()
        if self._worker is None:
            return self._own_state()
        state = self._worker.ask("get_state", None)
        return {"optimizer": _tensors(state["optimizer"]),
                "generator": torch.from_numpy(state["generator"])}

    def load_state_dict(self, state: dict) -> None:
        self.wait()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self._worker is not None:
            self._worker.ask("set_state", {"optimizer": _plain(self.optimizer.state_dict()),
                                           "generator": self.generator.get_state().numpy()})


def _map_leaves(tree: Any, kind: type, convert: Callable[[Any], Any]) -> Any:
    """``tree`` (dicts, lists and tuples) with each leaf of type ``kind`` converted."""
    if isinstance(tree, kind):
        return convert(tree)
    if isinstance(tree, dict):
        return {k: _map_leaves(v, kind, convert) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_leaves(v, kind, convert) for v in tree)
    return tree


def _plain(tree: Any) -> Any:
    """``tree`` with its tensors as NumPy arrays (sent between processes as plain bytes)."""
    return _map_leaves(tree, torch.Tensor, lambda tensor: tensor.detach().numpy())


def _tensors(tree: Any) -> Any:
    """The inverse of :func:`_plain`."""
    return _map_leaves(tree, np.ndarray, torch.from_numpy)


class _FitWorker:
    """The process a background :class:`ValueFitter` fits in, holding a copy of the fitter (its
    network, optimiser state and generator), driven through a pipe."""

    def __init__(self, fitter: ValueFitter):
        # fork: the worker starts in milliseconds with this process's modules (forkserver and
        # spawn import them again, about 3 s). The trainer makes its fitter before W&B, the
        # MuJoCo batch (threads from its first reset) or anything else has started a thread,
        # so the fork copies no thread's held lock.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.pipe, there = context.Pipe()
        setup = {"value": fitter.value, "lr": fitter.optimizer.defaults["lr"],
                 "epochs": fitter.epochs, "minibatch_size": fitter.minibatch_size,
                 "generator": fitter.generator.get_state().numpy(),
                 "threads": torch.get_num_threads(), "forked": context.get_start_method() == "fork"}
        self.process = context.Process(target=_fit_worker, args=(there, setup), daemon=True,
                                       name="value-fit")
        self.process.start()
        there.close()

    def send(self, command: str, payload: Any) -> None:
        self.pipe.send((command, payload))

    def receive(self) -> Any:
        try:
            answer = self.pipe.recv()
        except EOFError:
            raise RuntimeError(f"the value-fit process ended (exit code "
                               f"{self.process.exitcode})") from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def ask(self, command: str, payload: Any) -> Any:
        self.send(command, payload)
        return self.receive()

    def close(self) -> None:
        try:
            self.send("close", None)
        except (OSError, EOFError):
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


def _fit_worker(pipe, setup: dict) -> None:
    """The value-fit process's loop: ``fit`` (weights, batch → fitted weights), ``get_state``,
    ``set_state`` and ``close``; an error is sent back to be raised by the main process."""
    # The main process decides when this one ends, and it alone answers signals: Ctrl-C reaches
    # the whole process group, SLURM signals every process of a job, and a forked worker would
    # run the handlers it inherited (submitit's USR2 handler would requeue the job again).
    for signum in signal.valid_signals():
        if signum in (signal.SIGINT, signal.SIGTERM) or callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_IGN)
    if setup["forked"]:
        # A forked worker holds every file the main process had open: the run folder's lock,
        # which would outlive a killed main process, and the main process's end of the pipe,
        # whose copy here would keep recv() from ever seeing that process go.
        keep = pipe.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    torch.set_num_threads(setup["threads"])
    fitter = ValueFitter(setup["value"], setup["lr"], setup["epochs"], setup["minibatch_size"])
    fitter.generator.set_state(torch.from_numpy(setup["generator"]))
    while True:
        try:
            command, payload = pipe.recv()
        except (EOFError, OSError):  # the main process is gone
            return
        if command == "close":
            return
        try:
            if command == "fit":
                fitter.value.load_state_dict(_tensors(payload["value"]))
                fitter._fit(torch.from_numpy(payload["obs"]),
                            torch.from_numpy(payload["targets"]))
                answer = {"value": _plain(fitter.value.state_dict()), "fit_s": fitter.last_fit_s}
            elif command == "get_state":
                state = fitter._own_state()
                answer = {"optimizer": _plain(state["optimizer"]),
                          "generator": state["generator"].numpy()}
            else:  # set_state
                fitter.optimizer.load_state_dict(_tensors(payload["optimizer"]))
                fitter.generator.set_state(torch.from_numpy(payload["generator"]))
                answer = None
        except Exception as error:  # raised in the main process by receive()
            answer = error
        try:
            pipe.send(answer)
        except OSError:  # the main process was killed while this one worked: end quietly
            return


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
