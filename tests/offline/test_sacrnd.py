"""SAC-RND: the RND bonus, the prior's FiLM and the predictor's bilinear layer against hand
computations on set weights; the critic's target and the actor's loss against hand computations
with stub networks; the anti-exploration premise; a smoke run of the script and its resume."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from offline_helpers import A, B, S, make_batch, train_offline_main
from torch import nn

from wmrl.offline.sacrnd import RND, SACRND, FiLMPrior, RunningMoments, SACRNDConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw):
    return SACRNDConfig(**{"hidden": 16, "rnd_hidden": 16, "rnd_embedding": 4, **kw})


# ------------------------------------------------------------------------------------ RND


def test_running_moments_are_those_of_every_row_seen():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=g) * 3 + 1 for n in (5, 1, 17, 64)]
    moments = RunningMoments((3,))
    for x in batches:
        moments.update(x)
    rows = torch.cat(batches).double()
    torch.testing.assert_close(moments.mean.double(), rows.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moments.var.double(), rows.var(0, unbiased=False), rtol=1e-5, atol=0)
    assert moments.count.item() == pytest.approx(87, abs=1e-3)
    scalar = RunningMoments()
    scalar.update(torch.tensor([1.0, 3.0]))
    scalar.update(torch.tensor([5.0]))
    assert (scalar.mean.item(), scalar.var.item()) == pytest.approx((3.0, 8 / 3), rel=1e-4)


def set_(param, values):
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=torch.float32).reshape(param.shape))


def hand_set_rnd() -> RND:
    """S = 2, A = 1, 2 hidden units, a 1-dim embedding; weights set for the hand computation
    below, input moments mu_s = (1, 1), sigma_s = (1, 2), mu_a = 0, sigma_a = 2, sigma_e = 0.5."""
    rnd = RND(obs_dim=2, action_dim=1, hidden=2, embedding=1)
    prior, pred = rnd.prior, rnd.predictor
    set_(prior.film.weight, [[1, 0], [0, 1], [1, 1], [0, 0]])  # scale = s^, shift = (s1 + s2, 0)
    set_(prior.film.bias, [0, 0, 0, -1])  # ... shift = (s1 + s2, -1)
    set_(prior.l1.weight, [[1], [-1]])
    set_(prior.l1.bias, [0, 0])
    set_(prior.l2.weight, [[1, 0], [0, 1]])
    set_(prior.l2.bias, [0, 0])
    set_(prior.l3.weight, [[1, 0], [0, 1]])
    set_(prior.l3.bias, [0, 1])
    set_(prior.out.weight, [[1, -1]])
    set_(prior.out.bias, [0.5])
    set_(pred.bilinear.weight, [[[1, 2]], [[-1, 0]]])  # U_1 = (1, 2), U_2 = (-1, 0)
    set_(pred.bilinear.bias, [0, 0.5])
    linears = [m for m in pred.net if isinstance(m, nn.Linear)]
    for lin in linears[:2]:
        set_(lin.weight, [[1, 0], [0, 1]])
        set_(lin.bias, [0, 0])
    set_(linears[2].weight, [[0.5, 1]])
    set_(linears[2].bias, [1])
    set_(rnd.state_moments.mean, [1, 1])
    set_(rnd.state_moments.var, [1, 4])
    set_(rnd.action_moments.mean, [0])
    set_(rnd.action_moments.var, [4])
    set_(rnd.error_moments.var, 0.25)
    return rnd


def test_bonus_matches_a_hand_computation_on_set_weights():
    rnd = hand_set_rnd()
    # s = (3, 3), a = 1  ->  s^ = (2, 1), a^ = 0.5
    # prior: h = relu(l2(relu(0.5, -0.5))) = (0.5, 0); l3(h) = (0.5, 1);
    #        scale = (2, 1), shift = (3, -1); relu(scale * l3(h) + shift) = (4, 0); 4 - 0 + 0.5
    # predictor: relu(0.5 (1*2 + 2*1), 0.5 (-1*2) + 0.5) = (2, 0); 0.5 * 2 + 1 * 0 + 1 = 2
    # e = (2 - 4.5)^2 = 6.25;  b = e / sigma_e = 6.25 / 0.5
    s, a = torch.tensor([[3.0, 3.0]]), torch.tensor([[1.0]])
    s_hat, a_hat = torch.tensor([[2.0, 1.0]]), torch.tensor([[0.5]])
    torch.testing.assert_close(rnd.prior(s_hat, a_hat), torch.tensor([[4.5]]))
    torch.testing.assert_close(rnd.predictor(s_hat, a_hat), torch.tensor([[2.0]]))
    torch.testing.assert_close(rnd.error(s, a), torch.tensor([6.25]))
    torch.testing.assert_close(rnd.bonus(s, a), torch.tensor([12.5]))


def test_bonus_is_the_squared_distance_of_the_outputs_over_the_error_std():
    rnd = RND(S, A, hidden=8, embedding=3)

    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out, self.seen = torch.tensor(out), []

        def forward(self, obs, action):
            self.seen.append((obs, action))
            return self.out.expand(obs.shape[0], -1)

    rnd.predictor, rnd.prior = Fixed([1.0, 2.0, -1.0]), Fixed([0.0, 4.0, 1.0])
    set_(rnd.state_moments.mean, [1, 2, 3])
    set_(rnd.state_moments.var, [4, 1, 9])
    set_(rnd.action_moments.mean, [0.5, -0.5])
    set_(rnd.action_moments.var, [0.25, 1])
    set_(rnd.error_moments.var, 4.0)
    obs, action = torch.randn(5, S), torch.randn(5, A)
    # (1 - 0)^2 + (2 - 4)^2 + (-1 - 1)^2 = 9, over sigma_e = 2
    torch.testing.assert_close(rnd.bonus(obs, action), torch.full((5,), 4.5))
    s_hat, a_hat = rnd.predictor.seen[0]
    torch.testing.assert_close(s_hat, (obs - torch.tensor([1.0, 2, 3])) / torch.tensor([2.0, 1, 3]))
    torch.testing.assert_close(a_hat, (action - torch.tensor([0.5, -0.5])) / torch.tensor([0.5, 1]))
    assert rnd.prior.seen[0][0] is s_hat and rnd.prior.seen[0][1] is a_hat


def test_prior_film_scales_and_shifts_by_the_state_and_both_nets_see_the_action():
    rnd = hand_set_rnd()
    prior = rnd.prior
    s_hat = torch.tensor([[2.0, 1.0]])
    scale, shift = prior.film(s_hat).chunk(2, -1)
    torch.testing.assert_close(scale, torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(shift, torch.tensor([[3.0, -1.0]]))
    # a^ = -0.5: h = (0, 0.5), l3(h) = (0, 1.5), scale * l3(h) + shift = (3, 0.5); 3 - 0.5 + 0.5
    a_hat = torch.tensor([[-0.5]])
    h = torch.relu(prior.l2(torch.relu(prior.l1(a_hat))))
    torch.testing.assert_close(scale * prior.l3(h) + shift, torch.tensor([[3.0, 0.5]]))
    torch.testing.assert_close(prior(s_hat, a_hat), torch.tensor([[3.0]]))
    # the same action at another state: scale (1, 1), shift (2, -1): relu(0 + 2, 1.5 - 1) = (2, .5)
    torch.testing.assert_close(prior(torch.tensor([[1.0, 1.0]]), a_hat), torch.tensor([[2.0]]))
    # the predictor's bilinear layer: a^T U_k s^ + u_k; relu(2, -0.5) at a^ = 0.5 (above) and
    # relu(-2, 1.5) at a^ = -0.5: (0, 1.5) -> 0.5 * 0 + 1 * 1.5 + 1
    torch.testing.assert_close(rnd.predictor.bilinear(a_hat, s_hat), torch.tensor([[-2.0, 1.5]]))
    torch.testing.assert_close(rnd.predictor(s_hat, a_hat), torch.tensor([[2.5]]))
    torch.testing.assert_close(rnd.predictor(s_hat, -a_hat), torch.tensor([[2.0]]))


def test_random_prior_and_predictor_outputs_change_with_the_action_at_one_state():
    torch.manual_seed(0)
    prior = FiLMPrior(S, A, hidden=32, embedding=8)
    rnd = RND(S, A, hidden=32, embedding=8)
    s = torch.randn(1, S).expand(16, S)
    a = torch.rand(16, A) * 2 - 1
    for net in (prior, rnd.predictor):
        out = net(s, a)
        assert (out - out[:1]).abs()[1:].amax(-1).min() > 1e-4


def test_the_bonus_gradient_reaches_the_action_through_the_predictor_only():
    torch.manual_seed(0)
    rnd = RND(S, A, hidden=16, embedding=4)
    rnd.state_moments.var.fill_(1.0)  # z-scoring by mean 0, std 1 (+ 1e-8)
    rnd.action_moments.var.fill_(1.0)
    rnd.error_moments.update(torch.rand(32) * 3)
    std = rnd.error_moments.std
    obs = torch.randn(B, S)
    action = (torch.rand(B, A) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(rnd.bonus(obs, action).sum(), action)

    def grad_of(error_fn):
        a = action.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad((error_fn(obs / (1 + 1e-8), a / (1 + 1e-8)) / std).sum(), a)
        return g

    with torch.no_grad():  # fbar(s, a) a constant: 2 (f - fbar) df/da / sigma_e
        prior_out = rnd.prior(obs / (1 + 1e-8), action / (1 + 1e-8))
    expected = grad_of(lambda s, a: ((rnd.predictor(s, a) - prior_out) ** 2).sum(-1))
    torch.testing.assert_close(grad, expected)
    # had the prior's output kept its graph, the gradient would differ
    through_both = grad_of(lambda s, a: ((rnd.predictor(s, a) - rnd.prior(s, a)) ** 2).sum(-1))
    assert not torch.allclose(grad, through_both, atol=1e-4)


def test_rnd_trains_first_with_a_fixed_prior_then_freezes():
    torch.manual_seed(0)
    algo = SACRND(S, A, small(rnd_steps=3), max_action=2.0)
    prior = copy.deepcopy(algo.rnd.prior.state_dict())
    batches = [make_batch(seed=i, max_action=2.0) for i in range(6)]
    errors = []
    for batch in batches[:3]:
        with torch.no_grad():  # the error each update sees: its batch in the moments, then e
            probe = copy.deepcopy(algo.rnd)
            probe.state_moments.update(batch["observations"])
            probe.action_moments.update(batch["actions"])
            errors.append(probe.error(batch["observations"], batch["actions"]))
        before = copy.deepcopy(algo.rnd.predictor.state_dict())
        metrics = algo.update(batch)
        assert {"rnd_loss", "rnd_std", "rnd_data", "rnd_random"} == set(metrics)
        after = algo.rnd.predictor.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    # input moments of every batch; sigma_e of every training error (each before its step)
    states = torch.cat([b["observations"] for b in batches[:3]])
    actions = torch.cat([b["actions"] for b in batches[:3]])
    torch.testing.assert_close(algo.rnd.state_moments.mean, states.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        algo.rnd.action_moments.var, actions.var(0, unbiased=False), rtol=1e-4, atol=0
    )
    torch.testing.assert_close(
        algo.rnd.error_moments.var, torch.cat(errors).var(unbiased=False), rtol=1e-4, atol=0
    )
    rnd = copy.deepcopy(algo.rnd.state_dict())
    for batch in batches[3:]:
        metrics = algo.update(batch)
        assert {"critic_loss", "actor_loss", "alpha", "rnd_policy"} <= set(metrics)
    assert all(torch.equal(rnd[k], v) for k, v in algo.rnd.state_dict().items())
    assert all(torch.equal(prior[k], v) for k, v in algo.rnd.prior.state_dict().items())
    assert not any(p.requires_grad for p in algo.rnd.prior.parameters())
    assert all(p.grad is None for p in algo.rnd.prior.parameters())
    assert int(algo.updates) == 6
    assert all(math.isfinite(v) for v in metrics.values())


def test_training_the_predictor_lowers_the_bonus_on_the_data_only():
    # Anti-exploration's premise: after fitting the dataset's (s, a), the bonus is low there and
    # stays high for actions the behaviour policy never takes.
    torch.manual_seed(0)
    n = 256
    states = torch.randn(n, S)
    behaviour = 0.3 * torch.tanh(states @ torch.randn(S, A))  # one narrow action per state
    far = -torch.sign(behaviour)  # the opposite corner of [-1, 1]^A
    batch = dict(make_batch(n), observations=states, actions=behaviour)
    algo = SACRND(S, A, small(rnd_hidden=64, rnd_embedding=32, rnd_lr=1e-3, rnd_steps=10_000))
    algo.update(batch)  # the moments, then the first step
    with torch.no_grad():  # e, the bonus's numerator (sigma_e is one number at any time)
        data_before = algo.rnd.error(states, behaviour).mean()
    for _ in range(400):
        algo.update(batch)
    with torch.no_grad():
        data_after = algo.rnd.error(states, behaviour).mean()
        bonus = {
            "data": algo.rnd.bonus(states, behaviour).mean(),
            "far": algo.rnd.bonus(states, far).mean(),
            "uniform": algo.rnd.bonus(states, torch.rand(n, A) * 2 - 1).mean(),
        }
    assert data_after < 0.2 * data_before
    assert bonus["far"] > 100 * bonus["data"] and bonus["uniform"] > 20 * bonus["data"]


# -------------------------------------------------------------------------- actor, critic


class StubActor(nn.Module):
    """pi(s) = (tanh s_1, tanh s_2), log pi = 0.1 sum s; the same when deterministic."""

    def forward(self, obs, deterministic=False):
        return torch.tanh(obs[..., :A]), 0.1 * obs.sum(-1)


class StubCritic(nn.Module):
    """Q_1 = sum s + sum a, Q_2 = sum s - 2 sum a."""

    members = 2

    def forward(self, obs, action):
        return torch.stack([obs.sum(-1) + action.sum(-1), obs.sum(-1) - 2 * action.sum(-1)])


def stub_bonus(calls):
    def bonus(obs, action):
        calls.append((obs, action))
        return (obs**2).sum(-1) + 3 * (action**2).sum(-1)

    return bonus


def test_critic_target_subtracts_critic_beta_times_the_bonus_at_s_next_and_pi(monkeypatch):
    algo = SACRND(S, A, small(actor_beta=7.0, critic_beta=0.3, discount=0.9))
    algo.actor, algo.critic_target = StubActor(), StubCritic()
    calls = []
    monkeypatch.setattr(algo.rnd, "bonus", stub_bonus(calls))
    batch = make_batch()
    y = algo.q_target(batch, torch.tensor(0.2))

    (call,) = calls
    s2 = batch["next_observations"]
    torch.testing.assert_close(call[0], s2)
    torch.testing.assert_close(call[1], torch.tanh(s2[:, :A]))
    for b in range(B):
        s, r, d = s2[b].tolist(), batch["rewards"][b].item(), batch["dones"][b].item()
        a = [math.tanh(x) for x in s[:A]]
        q = min(sum(s) + sum(a), sum(s) - 2 * sum(a))
        bonus = sum(x * x for x in s) + 3 * sum(x * x for x in a)
        expected = r + 0.9 * (1 - d) * (q - 0.2 * 0.1 * sum(s) - 0.3 * bonus)
        assert y[b].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_actor_loss_subtracts_actor_beta_times_the_bonus_at_s_and_pi(monkeypatch):
    algo = SACRND(S, A, small(actor_beta=7.0, critic_beta=0.3))
    algo.actor, algo.critic = StubActor(), StubCritic()
    calls = []
    monkeypatch.setattr(algo.rnd, "bonus", stub_bonus(calls))
    batch = make_batch()
    loss, log_pi, metrics = algo.actor_loss(batch["observations"], torch.tensor(0.2))

    (call,) = calls
    obs = batch["observations"]
    torch.testing.assert_close(call[0], obs)
    torch.testing.assert_close(call[1], torch.tanh(obs[:, :A]))
    terms = []
    for b in range(B):
        s = obs[b].tolist()
        a = [math.tanh(x) for x in s[:A]]
        q = min(sum(s) + sum(a), sum(s) - 2 * sum(a))
        bonus = sum(x * x for x in s) + 3 * sum(x * x for x in a)
        terms.append(0.2 * 0.1 * sum(s) + 7.0 * bonus - q)
    assert loss.item() == pytest.approx(sum(terms) / B, rel=1e-5)
    torch.testing.assert_close(log_pi, 0.1 * obs.sum(-1))


def test_sac_update_order_actor_alpha_critic(monkeypatch):
    """The critic's target uses the updated actor and alpha from before its step; the alpha loss
    is alpha (H - target_entropy), H from the actor's step; the critic loss sums the members'
    mean squared errors."""
    torch.manual_seed(0)
    algo = SACRND(S, A, small(rnd_steps=1), max_action=2.0)
    batch = make_batch(max_action=2.0)
    algo.update(batch)  # the RND step
    with torch.no_grad():
        algo.log_alpha.fill_(math.log(0.5))
    actor_before = copy.deepcopy(algo.actor.state_dict())
    seen = {}
    q_target = algo.q_target

    def spy(batch, alpha):
        seen["alpha"] = alpha.item()
        seen["actor"] = copy.deepcopy(algo.actor.state_dict())
        seen["y"] = q_target(batch, alpha)
        seen["q"] = algo.critic(batch["observations"], batch["actions"]).detach()
        return seen["y"]

    monkeypatch.setattr(algo, "q_target", spy)
    metrics = algo.update(batch)
    assert seen["alpha"] == pytest.approx(0.5)
    assert algo.log_alpha.exp().item() != pytest.approx(0.5)  # alpha took its step after
    assert any(not torch.equal(actor_before[k], v) for k, v in seen["actor"].items())
    assert all(torch.equal(algo.actor.state_dict()[k], v) for k, v in seen["actor"].items())
    assert metrics["alpha_loss"] == pytest.approx(0.5 * (metrics["batch_entropy"] + A), rel=1e-5)
    expected = sum(((seen["q"][i] - seen["y"]) ** 2).mean() for i in range(2))
    assert metrics["critic_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_networks_are_corl_s():
    algo = SACRND(S, A, SACRNDConfig())
    kinds = [type(m).__name__ for m in algo.critic.net]
    assert kinds == ["EnsembleLinear", "ReLU", "EnsembleLayerNorm"] * 3 + ["EnsembleLinear"]
    assert algo.critic.members == 2
    linears = [m for m in algo.actor.net if isinstance(m, nn.Linear)]
    assert len(linears) == 4 and all(torch.all(m.bias == 0.1) for m in linears[:-1])
    assert linears[-1].weight.abs().max() <= 1e-3
    assert (algo.actor.log_std_min, algo.actor.log_std_max) == (-5.0, 2.0)
    assert algo.rnd.predictor.bilinear.weight.shape == (256, A, S)
    assert algo.rnd.prior.out.out_features == 32 and algo.log_alpha.item() == 0.0
    assert algo.target_entropy == -A


def test_update_state_round_trips_in_both_phases():
    torch.manual_seed(0)
    algo = SACRND(S, A, small(rnd_steps=2), max_action=2.0)
    batch = make_batch(max_action=2.0)
    obs = torch.randn(5, S)
    for _ in range(3):
        algo.update(batch)
        torch.manual_seed(1)
        copy_ = SACRND(S, A, small(rnd_steps=2), max_action=2.0)
        copy_.load_state(copy.deepcopy(algo.save_state()))
        torch.manual_seed(2)
        m1 = algo.update(batch)
        torch.manual_seed(2)
        m2 = copy_.update(batch)
        assert m1 == m2
        torch.testing.assert_close(copy_.act(obs), algo.act(obs), rtol=0, atol=0)
    action = algo.act(obs)
    assert action.shape == (5, A) and action.abs().max() <= 2.0


# --------------------------------------------------------------------------- the script


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Minari's notes on unset metadata
def test_smoke_run_finishes_with_finite_losses_and_resumes(dataset_id, tmp_path):
    run = tmp_path / "smoke"
    argv = ["--algo", "sacrnd", "--preset", "smoke", "--dataset", dataset_id, "--logdir", str(run)]
    assert train_offline_main(argv)["steps"] == 200
    trained = [r for r in rows(run) if "train/updates_per_s" in r]
    assert [r["step"] for r in trained] == [50, 100, 150, 200]
    assert {"train/rnd_loss", "train/critic_loss", "train/rnd_policy"} <= set(trained[0])
    assert "train/rnd_loss" not in trained[1]  # 20 RND updates in the smoke preset
    assert all(np.isfinite(v) for r in trained for v in r.values())
    assert json.loads((run / "config.json").read_text())["sacrnd"]["rnd_steps"] == 20

    assert train_offline_main(["--logdir", str(run), "--resume", "--steps", "260"])["steps"] == 260
    steps = [r["step"] for r in rows(run) if "train/updates_per_s" in r]
    assert steps == [50, 100, 150, 200, 250, 260]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resumed_run_equals_an_uninterrupted_one_across_the_rnd_phase(dataset_id, tmp_path):
    def args(logdir, steps):
        return ["--algo", "sacrnd", "--dataset", dataset_id, "--preset", "smoke",
                "--sacrnd.rnd_steps", "20", "--steps", str(steps), "--eval_every", "10",
                "--eval_episodes", "1", "--log_every", "10", "--logdir", str(logdir)]  # fmt: skip

    train_offline_main(args(tmp_path / "whole", 40))
    train_offline_main(args(tmp_path / "split", 10))  # stops inside the RND phase
    train_offline_main(["--logdir", str(tmp_path / "split"), "--resume", "--steps", "40"])
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in whole] == [10, 20, 30, 40]
    drop = ("train/updates_per_s", "time/wall_s")
    for a, b in zip(whole, split, strict=True):
        assert {k: v for k, v in a.items() if k not in drop} == pytest.approx(
            {k: v for k, v in b.items() if k not in drop}
        )
