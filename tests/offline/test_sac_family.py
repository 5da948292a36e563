"""CQL, SAC-N and EDAC against independent computations: loops over the ensemble's members (as
plain nn.Sequential copies), explicit logsumexps and per-member autograd."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from offline_helpers import A, B, S, make_batch

from wmrl.offline.common import EnsembleCritic, TanhGaussianActor
from wmrl.offline.cql import CQL, CQLConfig, _tanh_log_prob, cql_penalty
from wmrl.offline.edac import EDAC, EDACConfig, diversity_loss
from wmrl.offline.sacn import SACN, SACNConfig, soft_q_target

pytestmark = pytest.mark.usefixtures("one_thread")


def q_of(net, obs, action):
    """One member's Q(s, a) from an nn.Sequential copy, for any leading shape."""
    return net(torch.cat([obs, action], -1)).squeeze(-1)


# ------------------------------------------------------------------------------------ CQL


@pytest.mark.parametrize("importance_sample", [True, False])
@pytest.mark.parametrize("max_action,temp", [(1.0, 1.0), (2.0, 0.5)])
def test_cql_penalty_matches_a_loop(importance_sample, max_action, temp):
    g = torch.Generator().manual_seed(0)
    n, k = 2, 4
    q_data = torch.randn(n, B, generator=g)
    q_rand, q_curr, q_next = (torch.randn(n, B, k, generator=g) * 3 for _ in range(3))
    lp_curr, lp_next = (torch.randn(B, k, generator=g) for _ in range(2))
    out = cql_penalty(
        q_data, q_rand, q_curr, q_next, lp_curr, lp_next, A, temp, max_action, importance_sample
    )
    # density of U[-m, m]^A is (1 / 2m)^A
    log_density = A * math.log(1.0 / (2.0 * max_action))
    for i in range(n):
        for b in range(B):
            if importance_sample:
                values = [q_rand[i, b, j] - log_density for j in range(k)]
                values += [q_next[i, b, j] - lp_next[b, j] for j in range(k)]
                values += [q_curr[i, b, j] - lp_curr[b, j] for j in range(k)]
            else:
                values = [*q_rand[i, b], q_data[i, b], *q_next[i, b], *q_curr[i, b]]
            x = torch.stack(values) / temp
            expected = temp * (x.max() + torch.log(torch.exp(x - x.max()).sum())) - q_data[i, b]
            torch.testing.assert_close(out[i, b], expected)
    if importance_sample and max_action == 1.0:  # CORL's constant log(0.5^A)
        torch.testing.assert_close(
            out[0, 0] + q_data[0, 0],
            temp * torch.logsumexp(torch.cat([q_rand[0, 0] - math.log(0.5**A),
                                              q_next[0, 0] - lp_next[0],
                                              q_curr[0, 0] - lp_curr[0]]) / temp, 0),
        )  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cql_lagrange": True, "backup_entropy": True, "cql_temp": 0.7},
        {"cql_max_target_backup": True, "cql_clip_diff_max": 0.5},
    ],
)
def test_cql_critic_loss_is_td_plus_alpha_times_penalty_by_hand(options):
    torch.manual_seed(0)
    m, k = 2.0, 3
    cfg = CQLConfig(hidden=16, layers=2, cql_n_actions=k, **options)
    algo = CQL(S, A, cfg, max_action=m)
    batch = make_batch(max_action=m)
    g = torch.Generator().manual_seed(1)

    def actions(*shape):
        return (torch.rand(*shape, A, generator=g) * 2 - 1) * m

    backup_shape = (B, k) if cfg.cql_max_target_backup else (B,)
    samples = {
        "next_actions": actions(*backup_shape),
        "next_log_pi": torch.randn(*backup_shape, generator=g),
        "random_actions": actions(B, k),
        "current_actions": actions(B, k),
        "current_log_pi": torch.randn(B, k, generator=g),
        "next_state_actions": actions(B, k),
        "next_state_log_pi": torch.randn(B, k, generator=g),
    }
    alpha = torch.tensor(0.3)
    loss, metrics, alpha_prime_loss = algo.critic_loss(batch, alpha, samples)

    nets = [algo.critic.member(i) for i in range(2)]
    targets = [algo.critic_target.member(i) for i in range(2)]
    s, a, s2 = batch["observations"], batch["actions"], batch["next_observations"]
    y = []
    for b in range(B):
        if cfg.cql_max_target_backup:
            per_k = [min(q_of(t, s2[b], samples["next_actions"][b, j]) for t in targets)
                     for j in range(k)]  # fmt: skip
            j = int(torch.stack(per_k).argmax())
            v, log_pi = per_k[j], samples["next_log_pi"][b, j]
        else:
            v = min(q_of(t, s2[b], samples["next_actions"][b]) for t in targets)
            log_pi = samples["next_log_pi"][b]
        if cfg.backup_entropy:
            v = v - alpha * log_pi
        y.append(batch["rewards"][b] + cfg.discount * (1 - batch["dones"][b]) * v)
    y = torch.stack(y)

    expected, expected_alpha_prime_loss = 0.0, 0.0
    alpha_prime = math.e  # log alpha' starts at 1
    for net in nets:
        q = q_of(net, s, a)
        td = F.mse_loss(q, y)
        diffs = []
        for b in range(B):
            values = []
            for j in range(k):
                values.append(
                    q_of(net, s[b], samples["random_actions"][b, j]) + A * math.log(2 * m)
                )
                values.append(
                    q_of(net, s[b], samples["next_state_actions"][b, j])
                    - samples["next_state_log_pi"][b, j]
                )
                values.append(
                    q_of(net, s[b], samples["current_actions"][b, j])
                    - samples["current_log_pi"][b, j]
                )
            lse = cfg.cql_temp * torch.logsumexp(torch.stack(values) / cfg.cql_temp, 0)
            diffs.append(torch.clamp(lse - q[b], max=cfg.cql_clip_diff_max))
        diff = torch.stack(diffs).mean()
        if cfg.cql_lagrange:
            gap = diff - cfg.cql_target_action_gap
            expected = expected + td + alpha_prime * cfg.cql_alpha * gap
            expected_alpha_prime_loss -= 0.5 * alpha_prime * cfg.cql_alpha * gap
        else:
            expected = expected + td + cfg.cql_alpha * diff
    torch.testing.assert_close(loss, expected)
    if cfg.cql_lagrange:
        torch.testing.assert_close(alpha_prime_loss, expected_alpha_prime_loss)
    else:
        assert alpha_prime_loss is None
    assert metrics["critic_loss"] is loss


@pytest.mark.parametrize("max_action", [1.0, 2.0])
def test_cql_log_prob_of_given_actions_matches_the_sampling_log_prob(max_action):
    torch.manual_seed(0)
    actor = TanhGaussianActor(S, A, hidden=16, layers=2, max_action=max_action, log_std_offset=-1)
    obs = torch.randn(64, S)
    with torch.no_grad():
        action, log_prob = actor(obs)
        torch.testing.assert_close(
            _tanh_log_prob(actor, obs, action), log_prob, atol=1e-3, rtol=1e-4
        )
        # dataset actions on the bounds stay finite
        assert torch.isfinite(_tanh_log_prob(actor, obs, torch.full((64, A), max_action))).all()


# ---------------------------------------------------------------------------- SAC-N, EDAC


def test_sacn_target_is_min_over_members_minus_alpha_log_prob():
    torch.manual_seed(0)
    algo = SACN(S, A, SACNConfig(hidden=16, layers=2, num_critics=5))
    with torch.no_grad():  # targets that differ from the online critics and across members
        for p in algo.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = make_batch()
    alpha = torch.tensor(0.2)
    torch.manual_seed(7)
    y = algo.q_target(batch, alpha)

    torch.manual_seed(7)  # the same draw of a' ~ pi(.|s')
    with torch.no_grad():
        next_a, next_log_pi = algo.actor(batch["next_observations"])
        members = [algo.critic_target.member(i) for i in range(5)]
        for b in range(B):
            qs = [q_of(net, batch["next_observations"][b], next_a[b]) for net in members]
            soft_v = min(qs) - 0.2 * next_log_pi[b]
            expected = batch["rewards"][b] + 0.99 * (1 - batch["dones"][b]) * soft_v
            torch.testing.assert_close(y[b], expected)
            torch.testing.assert_close(
                soft_q_target(batch["rewards"][b : b + 1], batch["dones"][b : b + 1],
                              torch.stack(qs)[:, None], next_log_pi[b : b + 1], 0.2, 0.99)[0],
                expected,
            )  # fmt: skip


def diversity_by_loop(critic: EnsembleCritic, obs, actions):
    n = critic.members
    grads = []
    for i in range(n):
        a = actions.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(q_of(critic.member(i), obs, a).sum(), a)
        grads.append(g)
    per_sample = []
    for b in range(obs.shape[0]):
        total = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    gi, gj = grads[i][b], grads[j][b]
                    total += (gi @ gj) / ((gi.norm() + 1e-10) * (gj.norm() + 1e-10))
        per_sample.append(total / (n - 1))
    return torch.stack(per_sample).mean()


def test_edac_diversity_matches_per_member_autograd():
    torch.manual_seed(0)
    critic = EnsembleCritic(S, A, members=4, hidden=16, layers=2)
    batch = make_batch()
    es = diversity_loss(critic, batch["observations"], batch["actions"])
    torch.testing.assert_close(
        es, diversity_by_loop(critic, batch["observations"], batch["actions"])
    )
    # differentiable in the critic's parameters (the loss EDAC minimises)
    es.backward()
    # (the output bias shifts Q, not its action gradient: it alone gets none)
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_edac_diversity_of_identical_members_is_n():
    torch.manual_seed(0)
    n = 5
    critic = EnsembleCritic(S, A, members=n, hidden=16, layers=2)
    with torch.no_grad():
        for p in critic.parameters():
            p.copy_(p[:1].expand_as(p))
    batch = make_batch()
    # every ordered pair has cosine 1: N (N - 1) / (N - 1)
    es = diversity_loss(critic, batch["observations"], batch["actions"])
    torch.testing.assert_close(es, torch.tensor(float(n)))
    # opposite gradients: members 0, 1 with Q_1 = -Q_0 give cosine -1, 2 * (-1) / 1
    critic = EnsembleCritic(S, A, members=2, hidden=16, layers=2)
    with torch.no_grad():
        for p in critic.parameters():
            p.copy_(p[:1].expand_as(p))
        critic.net[-1].weight[1].neg_()
        critic.net[-1].bias[1].neg_()
    es = diversity_loss(critic, batch["observations"], batch["actions"])
    torch.testing.assert_close(es, torch.tensor(-2.0))


def test_edac_critic_loss_is_sacn_loss_plus_eta_diversity():
    torch.manual_seed(0)
    cfg = EDACConfig(hidden=16, layers=2, num_critics=3, eta=2.5)
    edac = EDAC(S, A, cfg)
    batch, alpha = make_batch(), torch.tensor(0.5)
    torch.manual_seed(3)
    loss, metrics = edac.critic_loss(batch, alpha)
    torch.manual_seed(3)
    td, _ = SACN.critic_loss(edac, batch, alpha)
    es = diversity_by_loop(edac.critic, batch["observations"], batch["actions"])
    torch.testing.assert_close(loss, td + 2.5 * es)
    torch.testing.assert_close(metrics["diversity_loss"], es)


# ---------------------------------------------------------------------------- all three


def _cql(**kw):
    return lambda: CQL(S, A, CQLConfig(hidden=16, layers=2, cql_n_actions=3, **kw), 2.0)


ALGOS = {
    "cql": _cql(),
    "cql-lagrange": _cql(cql_lagrange=True),
    "cql-bc-max-backup": _cql(bc_steps=5, cql_max_target_backup=True, orthogonal_init=False),
    "sacn": lambda: SACN(S, A, SACNConfig(hidden=16, layers=2, num_critics=4), 2.0),
    "edac": lambda: EDAC(S, A, EDACConfig(hidden=16, layers=2, num_critics=4), 2.0),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_update_changes_parameters_and_state_round_trips(name):
    torch.manual_seed(0)
    algo = ALGOS[name]()
    batch = make_batch(max_action=2.0)
    before = copy.deepcopy(algo.state_dict())
    metrics = algo.update(batch)
    assert metrics and all(type(v) is float and math.isfinite(v) for v in metrics.values())
    assert {"critic_loss", "actor_loss", "alpha", "q"} <= set(metrics)
    after = algo.state_dict()
    for prefix in ("actor.", "critic.", "critic_target.", "log_alpha"):
        keys = [k for k in after if k.startswith(prefix) and after[k].is_floating_point()]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix
    assert int(algo.updates) == 1

    obs = torch.randn(5, S)
    action = algo.act(obs)
    assert action.shape == (5, A) and action.abs().max() <= 2.0
    torch.manual_seed(1)
    copy_ = ALGOS[name]()
    copy_.load_state(copy.deepcopy(algo.save_state()))
    torch.testing.assert_close(copy_.act(obs), action, rtol=0, atol=0)
    # the optimisers came along too: the next update is the same
    torch.manual_seed(2)
    m1 = algo.update(batch)
    torch.manual_seed(2)
    m2 = copy_.update(batch)
    assert m1 == m2
    torch.testing.assert_close(copy_.act(obs), algo.act(obs), rtol=0, atol=0)


def test_edac_td_and_diversity_from_one_forward_equal_two_forwards():
    """EDAC's critic loss reads Q for its TD term from the forward that gives ES: the loss and
    its gradient must equal SAC-N's TD loss on a fresh forward plus eta times ES."""
    torch.manual_seed(0)
    cfg = EDACConfig(num_critics=4, hidden=16, eta=2.0)
    algo = EDAC(3, 2, cfg)
    b = make_batch()
    alpha = torch.tensor(0.3)
    torch.manual_seed(1)
    loss, metrics = algo.critic_loss(b, alpha)
    grads = torch.autograd.grad(loss, list(algo.critic.parameters()))
    torch.manual_seed(1)
    target = algo.q_target(b, alpha)
    td = ((algo.critic(b["observations"], b["actions"]) - target) ** 2).mean(1).sum()
    es = diversity_loss(algo.critic, b["observations"], b["actions"])
    torch.testing.assert_close(loss, td + 2.0 * es)
    torch.testing.assert_close(metrics["td_loss"], td)
    for g, h in zip(grads, torch.autograd.grad(td + 2.0 * es, list(algo.critic.parameters())),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(g, h)


def test_sacn_gauges_q_random_std_every_gauge_every_updates():
    torch.manual_seed(0)
    algo = SACN(3, 2, SACNConfig(num_critics=3, hidden=16, gauge_every=3))
    seen = [("q_random_std" in algo.update(make_batch())) for _ in range(7)]
    assert seen == [False, False, True, False, False, True, False]
