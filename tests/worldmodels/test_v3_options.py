"""DreamerV3's options on the shared modules (Hafner et al. 2023): symlog and its inverse, the
two-hot encoding and loss by hand, Keras initialisation's ranges, unimix categoricals, symlog
observations and the two-hot reward head of the categorical RSSM."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from wmrl.worldmodels.categorical_rssm import CategoricalRSSM, CategoricalRSSMConfig
from wmrl.worldmodels.nets import TwoHot, keras_init_, mlp, symexp, symlog


def test_symlog_values_and_inverse():
    x = torch.tensor([-1e6, -50.0, -1.0, -1e-3, 0.0, 1e-3, 2.0, 1e4], dtype=torch.float64)
    expected = np.sign(x.numpy()) * np.log(np.abs(x.numpy()) + 1)
    assert np.allclose(symlog(x).numpy(), expected)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)


def test_two_hot_target_by_hand():
    th = TwoHot(torch.zeros(5), low=-2.0, high=2.0)  # grid -2, -1, 0, 1, 2
    y = torch.tensor([math.exp(0.5) - 1, 1.0 - math.e, 0.0, 1e9, -1e9])  # symlog .5, -1, 0, ...
    got = th.target(y)
    expected = torch.tensor(
        [
            [0, 0, 0.5, 0.5, 0],  # halfway between 0 and 1
            [0, 1, 0, 0, 0],  # on a bin
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 1],  # beyond the grid: the end bin
            [1, 0, 0, 0, 0],
        ]
    )
    assert torch.allclose(got, expected, atol=1e-6)
    y = torch.tensor([math.exp(0.25) - 1])  # symlog .25: 3/4 on bin 0, 1/4 on bin 1
    assert torch.allclose(th.target(y), torch.tensor([[0, 0, 0.75, 0.25, 0]]), atol=1e-6)


def test_two_hot_expectation_and_loss():
    torch.manual_seed(0)
    th = TwoHot(torch.zeros(3, 255))
    y = torch.tensor([0.3, -42.0, 1234.5])
    # the encoding's expectation over the grid is symlog(y): symexp of it gives y back
    assert torch.allclose(symexp((th.target(y) * th.grid).sum(-1)), y, rtol=1e-4)
    assert torch.allclose(th.mean(), torch.zeros(3), atol=1e-5)  # uniform: a prediction of 0
    logits = torch.randn(2, 5)
    th = TwoHot(logits, low=-2.0, high=2.0)
    y = torch.tensor([math.exp(0.5) - 1, 0.0])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([-(0.5 * logp[0, 2] + 0.5 * logp[0, 3]), -logp[1, 2]])
    assert torch.allclose(th.loss(y), expected, atol=1e-6)
    probs = torch.softmax(logits, -1)
    assert torch.allclose(th.mean(), symexp((probs * th.grid).sum(-1)), atol=1e-6)


def test_two_hot_regression_fits_targets_of_any_scale():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = torch.where(x[:, 0] > 0, 500.0, 0.5)
    net = mlp(1, 255, 32, 2, nn.ELU)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        loss = TwoHot(net(x)).loss(y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = TwoHot(net(x)).mean()
    assert torch.allclose(pred[x[:, 0] > 0.2], torch.tensor(500.0), rtol=0.05)
    assert torch.allclose(pred[x[:, 0] < -0.2], torch.tensor(0.5), atol=0.05)


def test_keras_init_is_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    net = keras_init_(mlp(300, 100, 400, 2, nn.ELU))
    for layer in (m for m in net if isinstance(m, nn.Linear)):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.abs()
        assert w.max() <= bound and w.max() > 0.99 * bound
        assert layer.bias.abs().max() == 0
    # torch's default bound for the 300 -> 400 layer is 1/sqrt(300) = 0.058; glorot's 0.093
    assert math.sqrt(6 / 700) > 1.5 / math.sqrt(300)


def tiny(**overrides) -> CategoricalRSSM:
    torch.manual_seed(0)
    cfg = CategoricalRSSMConfig(
        deter=16, hidden=16, stoch=4, classes=5, mlp_layers=2, mlp_units=16, **overrides
    )
    return CategoricalRSSM((5,), 2, cfg)


def test_unimix_mixes_a_uniform_into_every_categorical():
    model = tiny(unimix=0.01)
    with torch.no_grad():
        for layer in model.img_out:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(100.0)  # very peaked logits before the mix
        state = model.img_step(model.initial(8), torch.rand(8, 2) * 2 - 1)
    probs = state["logits"].exp()
    assert torch.allclose(probs.sum(-1), torch.ones(8, 4), atol=1e-5)
    assert probs.min() >= 0.01 / 5 * (1 - 1e-4)  # at least u / K for every class
    assert probs.max() <= 1 - 0.01 + 0.01 / 5 + 1e-5


def test_symlog_observations_and_two_hot_reward_head():
    model = tiny(symlog_obs=True, reward_bins=255)
    obs = torch.tensor([[100.0, -3.0, 0.0, 0.5, -1000.0]])
    assert torch.allclose(model.preprocess(obs), symlog(obs))
    state = model.observe(obs[:, None], torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool))
    feat = model.features(state)
    assert torch.allclose(model.decode(state), symexp(model.decoder(feat)))
    assert torch.allclose(model.reward(state), torch.zeros(1, 1), atol=1e-5)  # zero head
    batch = {
        "obs": torch.randn(2, 6, 5) * 50,
        "action": torch.rand(2, 6, 2) * 2 - 1,
        "reward": torch.full((2, 6), 20.0),
        "is_first": torch.tensor([[True] + [False] * 5] * 2),
    }
    _, metrics, _ = model.loss(batch)
    # a uniform head's cross-entropy against any two-hot target is ln(255)
    assert metrics["reward_loss"] == pytest.approx(math.log(255), rel=1e-5)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(200):
        loss, _, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    post = model.observe(batch["obs"], batch["action"], batch["is_first"])
    assert model.reward(post).mean().item() == pytest.approx(20.0, rel=0.05)
