"""IQL, AWAC and ReBRAC: their losses against hand computations on tiny batches (the critics
member by member, the Gaussians with torch.distributions), one update each, and checkpoints."""

import copy
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from wmrl.offline.awac import AWAC, AWACConfig, awac_weights
from wmrl.offline.iql import IQL, IQLConfig, advantage_weights, expectile_loss
from wmrl.offline.rebrac import ReBRAC, ReBRACConfig

pytestmark = pytest.mark.usefixtures("one_thread")

OBS, ACT = 3, 2


def batch(n=8, max_action=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n, OBS, generator=g),
        "actions": (torch.rand(n, ACT, generator=g) * 2 - 1) * max_action,
        "rewards": torch.randn(n, generator=g),
        "next_observations": torch.randn(n, OBS, generator=g),
        "dones": torch.tensor([0, 1, 0, 0, 1, 0, 0, 0], dtype=torch.float32)[:n],
        "next_actions": (torch.rand(n, ACT, generator=g) * 2 - 1) * max_action,
    }


def jiggle(*modules, scale=0.3, seed=1):
    """Perturb every parameter so targets differ from their sources and members differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in modules:
            for p in mod.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


def min_q(critic, obs, act):
    """min over members, each member an ordinary nn.Sequential."""
    x = torch.cat([obs, act], -1)
    return torch.minimum(critic.member(0)(x), critic.member(1)(x)).squeeze(-1)


# --------------------------------------------------------------------------------- IQL


def test_expectile_loss_by_hand():
    diff = torch.tensor([-1.0, 2.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.3 * 1 + 0.7 * 4) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (1 + 4) / 2)


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
def test_expectile_loss_is_minimised_at_the_expectile(tau):
    x = torch.tensor(np.random.default_rng(0).standard_normal(15) ** 3)  # skewed, float64

    # The tau-expectile v solves sum |tau - 1(x < v)| (x - v) = 0, decreasing in v: bisect.
    def g(v):
        return float((torch.abs(tau - (x < v).double()) * (x - v)).sum())

    lo, hi = float(x.min()), float(x.max())
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) > 0 else (lo, mid)
    expectile = (lo + hi) / 2
    if tau == 0.5:
        assert expectile == pytest.approx(float(x.mean()))

    v = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = expectile_loss(x - v, tau)
        loss.backward()
        return loss

    opt.step(closure)
    assert v.item() == pytest.approx(expectile, abs=1e-6)


def test_iql_advantage_weights_are_clamped_exponentials():
    adv = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    expected = torch.tensor([math.exp(-3), 1.0, math.exp(1.5), 100.0])  # exp(6) > 100
    torch.testing.assert_close(advantage_weights(adv, 3.0, 100.0), expected)
    big = torch.tensor([1e4], requires_grad=True)
    w = advantage_weights(big, 3.0, 100.0)  # exp overflows to inf before the clamp
    assert w.item() == 100.0 and not w.requires_grad


@pytest.mark.parametrize("deterministic", [False, True])
def test_iql_update_losses_match_a_hand_computation(deterministic):
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=16, iql_deterministic=deterministic, beta=2.0)
    algo = IQL(OBS, ACT, cfg, max_action=2.0)
    jiggle(algo.critic_target, algo.value, algo.actor)
    b = batch(max_action=2.0)
    s, a, s2 = b["observations"], b["actions"], b["next_observations"]
    with torch.no_grad():  # everything from the networks before the update
        u = min_q(algo.critic_target, s, a) - algo.value(s).squeeze(-1)
        w = (2.0 * u).exp().clamp(max=100.0)
        value_loss = (torch.where(u < 0, 0.3, 0.7) * u**2).mean()
        y = b["rewards"] + 0.99 * (1 - b["dones"]) * algo.value(s2).squeeze(-1)
        x = torch.cat([s, a], -1)
        q_loss = sum(((algo.critic.member(i)(x).squeeze(-1) - y) ** 2).mean() for i in (0, 1)) / 2
        if deterministic:
            bc = ((2.0 * torch.tanh(algo.actor.net(s)) - a) ** 2).sum(-1)
        else:
            std = algo.actor.log_std.exp()
            bc = -Normal(2.0 * torch.tanh(algo.actor.net(s)), std).log_prob(a).sum(-1)
        actor_loss = (w * bc).mean()
    m = algo.update(b)
    assert m["value_loss"] == pytest.approx(value_loss.item(), rel=1e-5)
    assert m["q_loss"] == pytest.approx(q_loss.item(), rel=1e-5)
    assert m["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-5)
    assert m["adv_weight"] == pytest.approx(w.mean().item(), rel=1e-5)


# -------------------------------------------------------------------------------- AWAC


def test_awac_weights_are_clamped_exponentials():
    adv = torch.tensor([-1.0, 0.0, 0.1, 5.0])
    expected = torch.tensor([math.exp(-3), 1.0, math.exp(0.3), 100.0])  # exp(15) > 100
    torch.testing.assert_close(awac_weights(adv, 1 / 3, 100.0), expected)


def test_awac_losses_match_torch_normal():
    torch.manual_seed(0)
    algo = AWAC(OBS, ACT, AWACConfig(hidden=16, awac_lambda=0.5), max_action=1.0)
    jiggle(algo.critic, algo.critic_target, algo.actor)
    with torch.no_grad():
        algo.actor.log_std.copy_(torch.tensor([math.log(0.5), math.log(0.2)]))
    b = batch()
    s, a = b["observations"], b["actions"]
    std = torch.tensor([0.5, 0.2])

    torch.manual_seed(7)
    loss, _ = algo.actor_loss(b)
    torch.manual_seed(7)
    with torch.no_grad():
        pi = Normal(algo.actor.net(s), std)  # linear mean
        a_pi = pi.rsample().clamp(-1, 1)
        adv = min_q(algo.critic, s, a) - min_q(algo.critic, s, a_pi)
        w = (adv / 0.5).exp().clamp(max=100.0)
        expected = (-pi.log_prob(a).sum(-1) * w).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    torch.manual_seed(8)
    critic_loss, _ = algo.critic_loss(b)
    torch.manual_seed(8)
    with torch.no_grad():
        s2 = b["next_observations"]
        a2 = Normal(algo.actor.net(s2), std).rsample().clamp(-1, 1)
        y = b["rewards"] + 0.99 * (1 - b["dones"]) * min_q(algo.critic_target, s2, a2)
        x = torch.cat([s, a], -1)
        expected = sum(((algo.critic.member(i)(x).squeeze(-1) - y) ** 2).mean() for i in (0, 1))
    assert critic_loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------ ReBRAC


def rebrac(**kw):
    torch.manual_seed(0)
    cfg = ReBRACConfig(hidden=16, batch_size=8, **kw)
    algo = ReBRAC(OBS, ACT, cfg, max_action=2.0)
    jiggle(algo.critic, algo.critic_target, algo.actor, algo.actor_target)
    return algo


def test_rebrac_layers_and_init_follow_corl():
    algo = ReBRAC(OBS, ACT, ReBRACConfig(hidden=16, actor_ln=True), max_action=1.0)
    kinds = [type(m).__name__ for m in algo.critic.net]
    assert kinds[:3] == ["EnsembleLinear", "ReLU", "EnsembleLayerNorm"]
    assert [type(m).__name__ for m in algo.actor.net][:3] == ["Linear", "ReLU", "LayerNorm"]
    assert torch.all(algo.critic.net[0].bias == 0.1) and torch.all(algo.actor.net[0].bias == 0.1)
    assert algo.critic.net[-1].weight.abs().max() <= 3e-3
    assert algo.actor.net[-1].weight.abs().max() <= 1e-3


def test_rebrac_critic_target_has_the_bc_penalty():
    algo = rebrac(policy_noise=0.0, critic_bc_coef=0.3)
    b = batch(max_action=2.0)
    s2 = b["next_observations"]
    with torch.no_grad():
        a2 = (2.0 * torch.tanh(algo.actor_target.net(s2))).clamp(-2, 2)
        penalty = ((a2 - b["next_actions"]) ** 2).sum(-1)
        next_q = min_q(algo.critic_target, s2, a2) - 0.3 * penalty
        y = b["rewards"] + 0.99 * (1 - b["dones"]) * next_q
        x = torch.cat([b["observations"], b["actions"]], -1)
        critic_loss = sum(((algo.critic.member(i)(x).squeeze(-1) - y) ** 2).mean() for i in (0, 1))
    torch.testing.assert_close(algo.critic_target_value(b), y)
    assert algo.update(b)["critic_loss"] == pytest.approx(critic_loss.item(), rel=1e-5)


def test_rebrac_target_noise_is_scaled_and_clipped():
    algo = rebrac(policy_noise=0.3, noise_clip=0.1, critic_bc_coef=0.3)
    b = batch(max_action=2.0)
    s2 = b["next_observations"]
    torch.manual_seed(3)
    y = algo.critic_target_value(b)
    torch.manual_seed(3)  # the same normal draws, by hand
    with torch.no_grad():
        eps = (torch.randn(len(s2), ACT) * 0.3 * 2.0).clamp(-0.1 * 2.0, 0.1 * 2.0)
        assert (eps.abs() == 0.2).any() and (eps.abs() < 0.2).any()  # both cases occur
        a2 = (2.0 * torch.tanh(algo.actor_target.net(s2)) + eps).clamp(-2, 2)
        next_q = min_q(algo.critic_target, s2, a2) - 0.3 * ((a2 - b["next_actions"]) ** 2).sum(-1)
        expected = b["rewards"] + 0.99 * (1 - b["dones"]) * next_q
    torch.testing.assert_close(y, expected)


def test_rebrac_actor_loss_normalises_q_without_a_gradient():
    algo = rebrac(actor_bc_coef=0.5)
    b = batch(max_action=2.0)
    s, a = b["observations"], b["actions"]
    loss, extra = algo.actor_loss(b)
    algo.actor.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in algo.actor.parameters()]

    # By hand, lambda a plain float, so no gradient can pass through it.
    pi = 2.0 * torch.tanh(algo.actor.net(s))
    q = min_q(algo.critic, s, pi)
    lam = 1.0 / q.abs().mean().item()
    expected = (0.5 * ((pi - a) ** 2).sum(-1) - lam * q).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert extra["lambda"].item() == pytest.approx(lam, rel=1e-6)
    algo.actor.zero_grad()
    expected.backward()
    for g, p in zip(grads, algo.actor.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_rebrac_actor_updates_on_corl_schedule():
    algo = rebrac(policy_freq=2)
    b = batch(max_action=2.0)
    has_actor = ["actor_loss" in algo.update(b) for _ in range(4)]
    assert has_actor == [True, False, True, False]


# ------------------------------------------------------------------------ all three

CASES = {
    "iql": (IQL, IQLConfig(hidden=16, batch_size=8, max_steps=10)),
    "iql-deterministic-dropout": (
        IQL,
        IQLConfig(hidden=16, iql_deterministic=True, actor_dropout=0.1, max_steps=10),
    ),
    "awac": (AWAC, AWACConfig(hidden=16, batch_size=8)),
    "rebrac": (ReBRAC, ReBRACConfig(hidden=16, batch_size=8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_changes_parameters_and_checkpoints_round_trip(case):
    cls, cfg = CASES[case]
    torch.manual_seed(0)
    algo = cls(OBS, ACT, copy.deepcopy(cfg), max_action=2.0)
    b = batch(max_action=2.0)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    metrics = algo.update(b)
    assert metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert "actor_loss" in metrics and int(algo.updates) == 1
    after = algo.state_dict()
    for prefix in ("actor.", "critic."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix))
    if case.startswith("iql"):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("value."))
        # CosineAnnealingLR over max_steps = 10: lr_t = actor_lr (1 + cos(pi t / 10)) / 2
        lr_1 = cfg.actor_lr * (1 + math.cos(math.pi / 10)) / 2
        assert metrics["actor_lr"] == pytest.approx(lr_1)
        assert algo.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(lr_1)

    state = copy.deepcopy(algo.save_state())  # as a checkpoint on disk: no shared storage
    torch.manual_seed(1)
    other = cls(OBS, ACT, copy.deepcopy(cfg), max_action=2.0)
    other.load_state(state)
    algo.eval(), other.eval()  # dropout off for act
    obs = torch.randn(5, OBS)
    torch.testing.assert_close(other.act(obs), algo.act(obs), rtol=0, atol=0)
    assert other.act(obs).abs().max() <= 2.0
    if case.startswith("iql"):
        assert other.actor_scheduler.state_dict() == algo.actor_scheduler.state_dict()
    # Optimiser moments and schedules carried over: the next update is the same on both.
    algo.train(), other.train()
    torch.manual_seed(2)
    m1 = algo.update(b)
    torch.manual_seed(2)
    m2 = other.update(b)
    assert m1 == m2
    if case.startswith("iql"):
        assert m2["actor_lr"] == pytest.approx(cfg.actor_lr * (1 + math.cos(2 * math.pi / 10)) / 2)
    for k, v in algo.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v, rtol=0, atol=0)
