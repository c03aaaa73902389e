"""Solvers that fail on purpose, for crash-safety tests (``solver._target_=tests.toy_solvers...``)."""

import torch

from trpo.solvers import TRPO


class PoisonedTRPO(TRPO):
    """TRPO fed NaN advantages: every update's gradient is NaN and must be rejected."""

    def step(self, batch, progress):
        batch.advantages = torch.full_like(batch.advantages, float("nan"))
        return super().step(batch, progress)


class ZeroAdvantageTRPO(TRPO):
    """TRPO fed all-zero advantages: every gradient is exactly zero and no step is taken."""

    def step(self, batch, progress):
        batch.advantages = torch.zeros_like(batch.advantages)
        return super().step(batch, progress)
