"""The shared parts of the offline suite, BC and TD3+BC, against independent computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from wmrl.offline.bc import BC, BCConfig
from wmrl.offline.common import (
    EnsembleCritic,
    GaussianActor,
    Normalizer,
    TanhGaussianActor,
    TransitionBuffer,
    tanh_log_det,
)
from wmrl.offline.td3bc import TD3BC, TD3BCConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(n=8, obs_dim=3, action_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n, obs_dim, generator=g),
        "actions": torch.rand(n, action_dim, generator=g) * 2 - 1,
        "rewards": torch.randn(n, generator=g),
        "next_observations": torch.randn(n, obs_dim, generator=g),
        "dones": (torch.rand(n, generator=g) < 0.3).float(),
        "next_actions": torch.rand(n, action_dim, generator=g) * 2 - 1,
    }


def test_tanh_gaussian_log_prob_matches_torch_transformed_distribution():
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, hidden=16, layers=2, log_std_offset=-1.0)
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    action, log_prob = actor(obs)
    reference = TransformedDistribution(actor.dist(obs), [TanhTransform(cache_size=1)])
    # Recompute the same pre-tanh sample with the same seed, then score its tanh.
    torch.manual_seed(1)
    u = actor.dist(obs).rsample()
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(
        log_prob, reference.log_prob(torch.tanh(u)).sum(-1), rtol=1e-4, atol=1e-4
    )
    # The stable form equals the naive log(1 - tanh^2) where the latter is accurate.
    x = torch.linspace(-3, 3, 13)[:, None]
    torch.testing.assert_close(tanh_log_det(x), torch.log(1 - torch.tanh(x) ** 2).sum(-1))
    # ... and stays finite where the naive one gives -inf.
    assert torch.isfinite(tanh_log_det(torch.tensor([[30.0]]))).all()


def test_gaussian_actor_log_prob_and_bounds():
    torch.manual_seed(0)
    actor = GaussianActor(3, 2, hidden=16, max_action=2.0, tanh_mean=True)
    with torch.no_grad():
        actor.log_std.fill_(math.log(0.5))
    obs, act = torch.randn(5, 3), torch.rand(5, 2)
    mean = 2.0 * torch.tanh(actor.net(obs))
    expected = Normal(mean, 0.5).log_prob(act).sum(-1)
    torch.testing.assert_close(actor.log_prob(obs, act), expected)
    a, _ = actor(obs * 100)
    assert a.abs().max() <= 2.0


@pytest.mark.parametrize("layernorm", [False, True])
def test_batched_critic_ensemble_equals_its_members_one_by_one(layernorm):
    torch.manual_seed(0)
    critic = EnsembleCritic(4, 2, members=5, hidden=16, layers=3, layernorm=layernorm)
    with torch.no_grad():  # members differ in their LayerNorm parameters too
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, act = torch.randn(7, 4), torch.randn(7, 2)
    q = critic(obs, act)
    assert q.shape == (5, 7)
    x = torch.cat([obs, act], -1)
    by_member = torch.stack([critic.member(i)(x).squeeze(-1) for i in range(5)])
    torch.testing.assert_close(q, by_member)
    # Per-member inputs (N, B, ...) reach only their own member.
    obs_n = torch.randn(5, 7, 4)
    q_n = critic(obs_n, act.expand(5, 7, 2))
    for i in range(5):
        torch.testing.assert_close(q_n[i], critic.member(i)(torch.cat([obs_n[i], act], -1))[:, 0])
    # A loss on member 2 gives gradient to member 2's weights only.
    critic(obs, act)[2].sum().backward()
    w = critic.net[0].weight.grad
    assert w[2].abs().sum() > 0 and w[[0, 1, 3, 4]].abs().sum() == 0


def test_transition_buffer_dones_and_next_actions_follow_episode_bounds():
    # Two episodes: 3 steps ending in a termination, then 2 steps cut by a time limit.
    t = {
        "observations": np.arange(5, dtype=np.float32)[:, None],
        "actions": np.arange(10, 15, dtype=np.float32)[:, None],
        "rewards": np.ones(5, np.float32),
        "next_observations": np.arange(1, 6, dtype=np.float32)[:, None],
        "terminals": np.array([0, 0, 1, 0, 0], bool),
        "timeouts": np.array([0, 0, 0, 0, 1], bool),
    }
    buf = TransitionBuffer.from_transitions(t)
    assert buf.data["dones"].tolist() == [0, 0, 1, 0, 0]  # the time limit still bootstraps
    assert buf.data["next_actions"][:, 0].tolist() == [11, 12, 12, 14, 14]
    b = buf.sample(100, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(b["actions"][:, 0] - 10, b["observations"][:, 0])
    # A growing buffer overwrites its oldest transitions.
    ring = TransitionBuffer(3, 1, 1)
    for i in range(5):
        ring.add([i], [i], i, [i + 1], 0.0)
    assert ring.size == 3 and sorted(ring.data["rewards"].tolist()) == [2, 3, 4]


def test_normalizer_uses_dataset_statistics_plus_eps():
    x = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    norm = Normalizer.fit(x, eps=1e-3)
    std0 = math.sqrt(8 / 3) + 1e-3
    out = norm(torch.tensor([[2.0, 1.0], [4.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [2.0 / std0, 1.0 / 1e-3]]))


def test_td3bc_target_and_actor_loss_by_hand():
    torch.manual_seed(0)
    algo = TD3BC(3, 2, TD3BCConfig(hidden=16, policy_noise=0.0, alpha=2.5))
    b = batch()
    with torch.no_grad():
        a2 = algo.actor_target(b["next_observations"])
        x = torch.cat([b["next_observations"], a2], -1)
        q1, q2 = (algo.critic_target.member(i)(x)[:, 0] for i in range(2))
        y = b["rewards"] + 0.99 * (1 - b["dones"]) * torch.minimum(q1, q2)
    torch.testing.assert_close(algo.critic_target_value(b), y)

    loss, extra = algo.actor_loss(b)
    pi = algo.actor(b["observations"])
    q = algo.critic.member(0)(torch.cat([b["observations"], pi], -1))[:, 0]
    lmbda = 2.5 / q.abs().mean()
    expected = -lmbda * q.mean() + ((pi - b["actions"]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(extra["lambda"], lmbda)
    # lambda is a constant: the actor gradient is that of -lambda Q + BC with lambda fixed.
    loss.backward()
    g = algo.actor.net[0].weight.grad.clone()
    algo.actor.zero_grad()
    (-lmbda.detach() * q.mean() + F.mse_loss(pi, b["actions"])).backward()
    torch.testing.assert_close(algo.actor.net[0].weight.grad, g)


def test_td3bc_updates_actor_every_policy_freq_and_round_trips():
    torch.manual_seed(0)
    algo = TD3BC(3, 2, TD3BCConfig(hidden=16, policy_freq=2))
    before = [p.clone() for p in algo.actor.parameters()]
    m1 = algo.update(batch())
    assert "actor_loss" not in m1 and all(
        torch.equal(a, b) for a, b in zip(before, algo.actor.parameters(), strict=True)
    )
    m2 = algo.update(batch(seed=1))
    assert "actor_loss" in m2 and all(math.isfinite(v) for v in m2.values())
    assert not all(torch.equal(a, b) for a, b in zip(before, algo.actor.parameters(), strict=True))
    copy = TD3BC(3, 2, TD3BCConfig(hidden=16))
    copy.load_state(algo.save_state())
    obs = torch.randn(4, 3)
    torch.testing.assert_close(copy.act(obs), algo.act(obs))
    assert int(copy.updates) == 2


def test_bc_learns_a_known_policy():
    torch.manual_seed(0)
    algo = BC(2, 1, BCConfig(hidden=32, lr=3e-3), max_action=2.0)
    obs = torch.randn(512, 2)
    target = 1.5 * torch.tanh(obs[:, :1])  # inside the bounds of max_action 2
    for _ in range(300):
        i = torch.randint(512, (64,))
        algo.update({"observations": obs[i], "actions": target[i]})
    err = (algo.act(obs) - target).abs().mean()
    assert err < 0.05, err


@pytest.mark.parametrize("layernorm", [False, True])
def test_critic_first_members_equal_the_full_forward_and_give_no_gradient_to_the_rest(layernorm):
    torch.manual_seed(0)
    critic = EnsembleCritic(4, 2, members=3, hidden=16, layers=2, layernorm=layernorm)
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, act = torch.randn(7, 4), torch.randn(7, 2)
    q1 = critic(obs, act, members=1)
    assert q1.shape == (1, 7)
    torch.testing.assert_close(q1, critic(obs, act)[:1], rtol=0, atol=0)
    q1.sum().backward()
    w = critic.net[0].weight.grad
    assert w[0].abs().sum() > 0 and w[1:].abs().sum() == 0


def test_a_step_computes_only_its_own_optimizers_gradients():
    """TD3+BC's actor loss runs through the critic; its step must leave the critic's gradients
    untouched (None) and give the actor the gradient a full backward gives it."""
    torch.manual_seed(0)
    algo = TD3BC(3, 2, TD3BCConfig(hidden=16, policy_freq=1))
    b = batch()
    loss, _ = algo.actor_loss(b)
    expected = torch.autograd.grad(loss, list(algo.actor.parameters()), retain_graph=True)
    before = [p.detach().clone() for p in algo.actor.parameters()]
    algo.optimizers["actor"].zero_grad(set_to_none=True)
    algo.critic.zero_grad(set_to_none=True)
    algo.step("actor", loss)
    assert all(p.grad is None for p in algo.critic.parameters())
    for p, g in zip(algo.actor.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert any((p != q).any() for p, q in zip(algo.actor.parameters(), before, strict=True))


def test_transition_buffer_gathers_every_key_from_the_same_rows_and_saves_only_its_own():
    n, g = 50, np.random.default_rng(0)
    t = {
        "observations": g.normal(size=(n, 3)).astype(np.float32),
        "actions": g.normal(size=(n, 2)).astype(np.float32),
        "rewards": g.normal(size=n).astype(np.float32),
        "next_observations": g.normal(size=(n, 3)).astype(np.float32),
        "terminals": g.random(n) < 0.1,
        "timeouts": np.zeros(n, bool),
    }
    buf = TransitionBuffer.from_transitions(t)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(n, (40,), generator=torch.Generator().manual_seed(3))
    b = buf.sample(40, gen)
    for key, source in [
        ("observations", "observations"), ("actions", "actions"), ("rewards", "rewards"),
        ("next_observations", "next_observations"), ("dones", "terminals"),
    ]:  # fmt: skip
        np.testing.assert_array_equal(b[key].numpy(), t[source][idx.numpy()].astype(np.float32))
    assert b["observations"].shape == (40, 3) and b["rewards"].shape == (40,)
    # The checkpoint holds `size` rows of each key, not the whole shared tensor.
    ring = TransitionBuffer(100, 3, 2)
    obs, act = t["observations"][:5], t["actions"][:5]
    ring.add(obs, act, t["rewards"][:5], obs, np.zeros(5))
    state = ring.state_dict()
    for v in state["data"].values():
        assert v.shape[0] == 5 and v.is_contiguous()
        assert v.untyped_storage().nbytes() == v.numel() * 4
    back = TransitionBuffer(100, 3, 2)
    back.load_state_dict(state)
    for k in TransitionBuffer.keys:
        torch.testing.assert_close(back.data[k][:5], ring.data[k][:5], rtol=0, atol=0)
