"""planners.actor_critic: lambda-returns by hand, the index alignment of imagined rewards,
values, discounts and weights on a hand-built model, the truncated-normal actor against numeric
integrals, the slow target's schedule, and learning on toy and real protocol models."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from wmrl.planners.actor_critic import ActorCritic, ActorCriticConfig, TruncNormal, lambda_return
from wmrl.worldmodels.categorical_rssm import CategoricalRSSM, CategoricalRSSMConfig
from wmrl.worldmodels.rssm import RSSM, RSSMConfig


def small(**overrides) -> ActorCriticConfig:
    return ActorCriticConfig(layers=2, units=16, **overrides)


def test_lambda_return_by_hand():
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    value = torch.tensor([[10.0, 20.0, 30.0]])
    discount = torch.full((1, 3), 0.9)
    boot = torch.tensor([40.0])
    # t2 = 3 + .9 * 40 = 39; t1 = 2 + .9 (.5 * 30 + .5 * 39) = 33.05;
    # t0 = 1 + .9 (.5 * 20 + .5 * 33.05) = 24.8725
    got = lambda_return(reward, value, discount, boot, 0.5)
    assert torch.allclose(got, torch.tensor([[24.8725, 33.05, 39.0]]))
    # lambda = 1: Monte Carlo, 1 + .9 * 2 + .81 * 3 + .729 * 40 = 34.39 from t0
    assert torch.allclose(
        lambda_return(reward, value, discount, boot, 1.0)[0, 0], torch.tensor(34.39)
    )
    # lambda = 0: one-step targets r_k + .9 v_(k+1)
    got = lambda_return(reward, value, discount, boot, 0.0)
    assert torch.allclose(got, torch.tensor([[19.0, 29.0, 39.0]]))


class Counter(nn.Module):
    """A hand-built protocol model: x_k = k after k steps, reward(z) = 10 x, the episode ends
    (continuation 0.5) at x = 2."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def initial(self, n):
        return {"x": torch.zeros(n, 1)}

    def img_step(self, state, action):
        return {"x": state["x"] + 1 + 0 * action.sum(-1, keepdim=True)}

    def features(self, state):
        return state["x"]

    def reward(self, state):
        return 10 * state["x"][..., 0]

    def continuation(self, state):
        x = state["x"][..., 0]
        return torch.where(x == 2, torch.full_like(x, 0.5), torch.ones_like(x))


def test_imagined_rewards_values_discounts_and_weights_line_up():
    ac = ActorCritic(1, 1, small(horizon=4, discount=0.9, discount_lambda=0.5, actor_ent=0.0))
    ac.target_critic = nn.Linear(1, 1)  # value(z) = 100 + x
    with torch.no_grad():
        ac.target_critic.weight.fill_(1.0)
        ac.target_critic.bias.fill_(100.0)
    seq = ac.imagine(Counter(), {"x": torch.zeros(1, 1)})
    assert seq["feat"][0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert seq["action"].shape == (1, 5, 1) and seq["action"][0, 0, 0] == 0  # a_0 led nowhere
    assert seq["reward"][0].tolist() == [0, 10, 20, 30, 40]  # arriving in z_k
    assert torch.allclose(seq["discount"][0], torch.tensor([0.9, 0.9, 0.45, 0.9, 0.9]))
    assert torch.allclose(seq["weight"][0], torch.tensor([1, 0.9, 0.81, 0.3645, 0.32805]))
    target = ac.target(seq)
    # t3 = 30 + .9 v4 = 123.6; t2 = 20 + .45 (.5 * 103 + .5 * 123.6) = 70.985;
    # t1 = 10 + .9 (.5 * 102 + .5 * 70.985) = 87.84325; t0 = .9 (.5 * 101 + .5 * 87.84325)
    expect = torch.tensor([[84.9794625, 87.84325, 70.985, 123.6]])
    assert torch.allclose(target, expect)
    # The actor at z_k is scored by t_(k+1), weighted by weight_k, k = 0..H-2.
    loss, _ = ac.actor_loss(seq, target)
    assert math.isclose(
        float(loss.detach()), -(87.84325 + 0.9 * 70.985 + 0.81 * 123.6) / 3, rel_tol=1e-6
    )
    # The replay's is_terminal overrides the continuation of z_0: nothing after it counts.
    seq = ac.imagine(Counter(), {"x": torch.zeros(1, 1)}, is_terminal=torch.tensor([True]))
    assert seq["discount"][0, 0] == 0 and torch.equal(seq["weight"][0, 1:], torch.zeros(4))


def test_trunc_normal_against_numeric_integrals():
    loc, scale = torch.tensor([0.7, -0.2]), torch.tensor([0.4, 1.3])
    dist = TruncNormal(loc, scale)
    x = torch.linspace(-1, 1, 40001, dtype=torch.float64)
    for i in range(2):
        d = TruncNormal(loc[i : i + 1].double(), scale[i : i + 1].double())
        p = d.log_prob(x[:, None]).exp()
        assert math.isclose(float(torch.trapezoid(p, x)), 1.0, abs_tol=1e-6)
        assert math.isclose(float(torch.trapezoid(p * x, x)), float(dist.mean[i]), abs_tol=1e-5)
        ent = float(torch.trapezoid(-p * p.log(), x))
        assert math.isclose(ent, float(d.entropy()), abs_tol=1e-5)
    torch.manual_seed(0)
    loc = loc.clone().requires_grad_(True)
    samples = TruncNormal(loc.expand(20000, 2), scale.expand(20000, 2)).rsample()
    assert samples.abs().max() < 1
    assert torch.allclose(samples.mean(0), dist.mean, atol=0.02)
    # Reparameterised: the mean of d sample / d loc is d E[sample] / d loc.
    (grad,) = torch.autograd.grad(samples.sum() / 20000, loc)
    (expect,) = torch.autograd.grad(TruncNormal(loc, scale).mean.sum(), loc)
    assert torch.allclose(grad, expect, atol=0.03) and expect.min() > 0.1


def test_actor_starts_at_mean_0_and_std_1_1():
    ac = ActorCritic(3, 2, small())
    with torch.no_grad():
        ac.actor.net[-1].weight.zero_()
        ac.actor.net[-1].bias.zero_()
    dist = ac.actor(torch.randn(4, 3))
    assert torch.equal(dist.loc, torch.zeros(4, 2))
    assert torch.allclose(dist.scale, torch.full((4, 2), 2 * 0.5 + 0.1))  # 2 sigmoid(0) + 0.1
    assert torch.equal(ac.act(torch.randn(4, 3), sample=False), torch.zeros(4, 2))


class Integrator(nn.Module):
    """x' = x + a / 2, reward = x: the best action is always +1."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.5))

    def img_step(self, state, action):
        return {"x": state["x"] + self.gain * action}

    def features(self, state):
        return state["x"]

    def reward(self, state):
        return state["x"][..., 0]

    def continuation(self, state):
        return torch.ones_like(state["x"][..., 0])


@pytest.mark.parametrize("grad", ["dynamics", "reinforce"])
def test_actor_learns_the_best_action_on_a_toy_model(grad):
    torch.manual_seed(1)
    cfg = small(horizon=5, actor_grad=grad, actor_lr=3e-3, critic_lr=3e-3, slow_target_update=5)
    ac = ActorCritic(1, 1, cfg)
    model = Integrator()
    start = {"x": torch.zeros(16, 4, 1)}  # (B, T, 1)
    mode0 = float(ac.act(torch.zeros(1, 1), sample=False))
    for _ in range(40):
        metrics = ac.update(model, start)
    mode = float(ac.act(torch.zeros(1, 1), sample=False))
    assert mode > 0.5 and mode > mode0 + 0.3, (mode0, mode)
    assert model.gain.grad is None and float(model.gain) == 0.5  # the model is left alone
    assert np.isfinite(metrics["critic_loss"]) and int(ac.updates) == 40


class Regulator(nn.Module):
    """x' = x + a / 2, reward = -x^2: from x the best action is a = -2x (clipped to [-1, 1]),
    which brings x to 0 in one step and keeps it there."""

    def img_step(self, state, action):
        return {"x": state["x"] + 0.5 * action}

    def features(self, state):
        return state["x"]

    def reward(self, state):
        return -(state["x"][..., 0] ** 2)

    def continuation(self, state):
        return torch.ones_like(state["x"][..., 0])


def test_actor_learns_a_state_dependent_optimum_inside_the_bounds():
    """An optimum that is not an action bound, and depends on the state: the actor's mode must
    land on -2x (within 0.1) for |x| < 1/2, and near the bound beyond. An actor pushed the wrong
    way ends at one bound, and one whose gradient does not reach it through the imagined
    dynamics stays near 0."""
    torch.manual_seed(0)
    cfg = ActorCriticConfig(
        layers=2, units=32, horizon=5, actor_lr=1e-3, critic_lr=1e-3, slow_target_update=10
    )
    ac = ActorCritic(1, 1, cfg)
    for _ in range(300):
        ac.update(Regulator(), {"x": torch.rand(16, 8, 1) * 2 - 1})
    x = torch.tensor([-0.8, -0.3, -0.1, 0.1, 0.3, 0.8])[:, None]
    mode = ac.act(x, sample=False)[:, 0]
    best = (-2 * x[:, 0]).clamp(-1, 1)
    assert torch.allclose(mode[1:-1], best[1:-1], atol=0.1), mode
    assert mode[0] > 0.85 and mode[-1] < -0.85, mode


def test_slow_target_is_copied_every_n_updates():
    ac = ActorCritic(1, 1, small(horizon=3, slow_target_update=3, critic_lr=1e-2))
    start = {"x": torch.zeros(4, 2, 1)}

    def same():
        return all(
            torch.equal(a, b)
            for a, b in zip(ac.critic.parameters(), ac.target_critic.parameters(), strict=True)
        )

    history = []
    for _ in range(7):
        ac.update(Integrator(), start)
        history.append(same())
    # Copied after updates 1, 4, 7 (update counts 0, 3, 6 when the copy runs).
    assert history == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("kind", ["planet", "dreamer"])
def test_update_on_real_world_models(kind):
    torch.manual_seed(2)
    if kind == "planet":
        model = RSSM((5,), 2, RSSMConfig(deter=8, stoch=4, hidden=8, reward_hidden=8))
        feat_dim = 12
    else:
        cfg = CategoricalRSSMConfig(
            deter=8, hidden=8, stoch=3, classes=4, mlp_layers=1, mlp_units=8, pred_discount=True
        )
        model = CategoricalRSSM((5,), 2, cfg)
        feat_dim = model.feat_dim
    post = model.observe(torch.randn(3, 4, 5), torch.zeros(3, 4, 2), torch.ones(3, 4, dtype=bool))
    ac = ActorCritic(feat_dim, 2, small(horizon=4))
    before = [p.clone() for p in ac.actor.parameters()]
    model_before = [p.clone() for p in model.parameters()]
    is_terminal = torch.zeros(3, 4, dtype=bool) if kind == "dreamer" else None
    metrics = ac.update(model, post, is_terminal=is_terminal)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["actor_grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, ac.actor.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(model_before, model.parameters(), strict=True))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_return_normalizer_follows_the_percentile_emas_of_numpy():
    from wmrl.planners.actor_critic import ReturnNormalizer

    rng = np.random.default_rng(0)
    norm = ReturnNormalizer(decay=0.9)
    low = high = 0.0
    for i in range(20):
        returns = rng.normal(3.0 * i, 1.0 + i, size=(16, 15))
        scale = norm(torch.as_tensor(returns, dtype=torch.float32))
        low = 0.9 * low + 0.1 * np.percentile(returns, 5)
        high = 0.9 * high + 0.1 * np.percentile(returns, 95)
        assert float(norm.low) == pytest.approx(low, rel=1e-4, abs=1e-4)
        assert float(norm.high) == pytest.approx(high, rel=1e-4, abs=1e-4)
        assert float(scale) == pytest.approx(max(1.0, high - low), rel=1e-4)
    # returns that spread over less than 1 are not scaled up
    assert float(ReturnNormalizer()(torch.full((8,), 0.3))) == 1.0


def test_return_norm_divides_the_dynamics_objective_by_the_scale():
    torch.manual_seed(0)
    plain = ActorCritic(1, 1, small(horizon=5, actor_ent=0.0))
    normed = ActorCritic(1, 1, small(horizon=5, actor_ent=0.0, return_norm=True))
    normed.load_state_dict(plain.state_dict(), strict=False)
    model = Integrator()
    start = {"x": torch.randn(32, 1) * 50}  # returns spread far over 1
    torch.manual_seed(1)
    seq = plain.imagine(model, start)
    target = plain.target(seq)
    loss, _ = plain.actor_loss(seq, target)
    loss_n, metrics = normed.actor_loss(seq, target)
    scale = float(metrics["return_scale"])
    q = np.percentile(target.detach().numpy(), [5, 95])
    assert scale == pytest.approx(max(1.0, 0.01 * (q[1] - q[0])), rel=1e-4)  # first EMA step
    assert float(loss_n.detach()) * scale == pytest.approx(float(loss.detach()), rel=1e-5)


@pytest.mark.parametrize("grad", ["dynamics", "reinforce"])
def test_actor_learns_the_toy_optimum_with_the_v3_options(grad):
    """Return normalisation, a two-hot critic and Keras initialisation together still find the
    best action of the integrator (+1); the two-hot critic starts at a value of 0."""
    torch.manual_seed(1)
    cfg = small(horizon=5, actor_grad=grad, actor_lr=3e-3, critic_lr=3e-3, slow_target_update=5,
                return_norm=True, critic_bins=255, init="keras", actor_ent=3e-4)  # fmt: skip
    ac = ActorCritic(1, 1, cfg)
    assert float(ac.value(torch.randn(1, 1))) == pytest.approx(0.0, abs=1e-5)
    model = Integrator()
    start = {"x": torch.zeros(16, 4, 1)}
    for _ in range(60):
        metrics = ac.update(model, start)
    assert float(ac.act(torch.zeros(1, 1), sample=False)) > 0.5
    assert metrics["return_scale"] >= 1.0


def test_layernorm_normalises_every_hidden_layer_of_actor_and_critic():
    torch.manual_seed(0)
    ac = ActorCritic(6, 2, ActorCriticConfig(layernorm=True, units=32, layers=3))
    for net in (ac.actor.net, ac.critic):
        norms = [m for m in net if isinstance(m, nn.LayerNorm)]
        assert len(norms) == 3
        h = net[:2](torch.randn(64, 6) * 100)  # Linear, LayerNorm: any input scale
        assert torch.allclose(h.mean(-1), torch.zeros(64), atol=1e-5)
        assert torch.allclose(h.std(-1, unbiased=False), torch.ones(64), atol=1e-3)
    assert not any(isinstance(m, nn.LayerNorm) for m in ActorCritic(6, 2, small()).modules())
