"""The value fit (trpo.critic): the written-out backward pass equals autograd's, and a
background fit's errors reach the main process."""

import copy

import pytest
import torch

from tests.conftest import network_config

pytestmark = pytest.mark.unit


def test_an_error_in_a_background_value_fit_is_raised_by_wait():
    from trpo.critic import ValueFitter

    fitter = ValueFitter(torch.nn.Linear(3, 1), lr=1e-3, epochs=1, minibatch_size=4,
                         background=True)
    fitter.fit(torch.zeros(8, 5), torch.zeros(8))  # wrong input width: fails in the worker
    with pytest.raises(RuntimeError):
        fitter.wait()
    fitter.wait()  # the error is reported once
    fitter.close()


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_the_value_fit_without_autograd_gives_autograd_s_parameters_to_the_bit(activation):
    """The written-out backward pass (tanh, relu) is an exact speed-up; elu falls back."""
    from trpo.critic import ValueFitter, mlp_layers
    from trpo.networks import ValueNetwork

    torch.manual_seed(0)
    value = ValueNetwork(11, network_config(activation=activation))
    twin, initial = copy.deepcopy(value), copy.deepcopy(value)
    obs, targets = torch.randn(1024, 11), torch.randn(1024)
    assert (mlp_layers(value) is None) == (activation == "elu")
    ValueFitter(value, 1e-3, 3, 128, seed=4).fit(obs, targets)

    optimizer = torch.optim.Adam(twin.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):  # the same fit through autograd
        order = torch.randperm(1024, generator=generator)
        for first in range(0, 1024, 128):
            index = order[first:first + 128]
            loss = torch.nn.functional.mse_loss(twin(obs[index]), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for fitted, reference, start in zip(value.parameters(), twin.parameters(),
                                        initial.parameters()):
        assert torch.equal(fitted, reference) and not torch.equal(fitted, start)


def test_a_fit_worker_whose_main_process_is_gone_ends_quietly():
    """As after kill -9 of a run mid-fit: the worker's answer has nowhere to go, and it ends
    with exit code 0 instead of a BrokenPipeError traceback."""
    from trpo.critic import ValueFitter
    from trpo.networks import ValueNetwork

    fitter = ValueFitter(ValueNetwork(3, network_config()), 1e-3, 20, 8, background=True)
    fitter.fit(torch.randn(2048, 3), torch.randn(2048))  # a fit of a few hundred steps
    worker = fitter._worker
    worker.pipe.close()  # the main process's end of the pipe goes, as when it is killed
    worker.process.join(timeout=60)
    assert worker.process.exitcode == 0
