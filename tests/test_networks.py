"""The value network's target normalisation, against a naive second computation."""

import copy

import numpy as np
import pytest
import torch

from tests.conftest import network_config
from trpo.critic import ValueFitter
from trpo.networks import ValueNetwork

pytestmark = pytest.mark.unit


def test_without_normalisation_the_targets_are_the_returns_and_there_are_no_buffers():
    value = ValueNetwork(3, network_config())
    returns = torch.tensor([1.0, -2.0, 5.0])
    assert value.fit_targets(returns) is returns
    assert list(dict(value.named_buffers())) == []
    obs = torch.randn(4, 3)
    assert torch.equal(value(obs), value.raw(obs))


def test_the_targets_are_standardised_by_the_mean_and_variance_of_every_batch_so_far():
    value = ValueNetwork(3, network_config(), normalize_targets=True)
    batches = [torch.tensor([1.0, 2.0, 3.0, 10.0]), torch.tensor([-4.0, 0.5]),
               torch.tensor([7.0, 7.0, 8.0])]
    seen = []
    for batch in batches:
        targets = value.fit_targets(batch)
        seen.extend(batch.tolist())
        # Naively: the population mean and variance of all returns seen (the prior count of
        # 1e-4 moves them by less than 1e-4).
        mean, var = np.mean(seen), np.var(seen)
        np.testing.assert_allclose(targets.numpy(), (batch.numpy() - mean) / np.sqrt(var),
                                   rtol=1e-4, atol=1e-4)
        assert float(value.target_count) == pytest.approx(len(seen), abs=1e-3)


def test_the_value_is_the_mlp_output_rescaled_by_the_statistics():
    value = ValueNetwork(3, network_config(), normalize_targets=True)
    value.fit_targets(torch.tensor([10.0, 20.0, 30.0]))
    obs = torch.randn(5, 3)
    std = np.sqrt(float(value.target_var) + 1e-8)
    np.testing.assert_allclose(value(obs).detach().numpy(),
                               float(value.target_mean) + std * value.raw(obs).detach().numpy(),
                               rtol=1e-6)


def test_a_fit_on_normalised_targets_predicts_the_returns_and_the_state_carries_the_statistics():
    torch.manual_seed(0)
    value = ValueNetwork(2, network_config(), normalize_targets=True)
    obs = torch.randn(512, 2)
    returns = 100.0 + 30.0 * obs[:, 0]  # far from unit scale
    fitter = ValueFitter(value, 1e-2, 15, 64, seed=1)
    fitter.fit(obs, returns)
    residual = (value(obs) - returns).detach()
    assert float(residual.abs().mean()) < 5.0  # within a sixth of the returns' spread
    restored = ValueNetwork(2, network_config(), normalize_targets=True)
    restored.load_state_dict(copy.deepcopy(value.state_dict()))
    assert torch.equal(restored(obs), value(obs))
