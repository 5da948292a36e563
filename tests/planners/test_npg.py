"""planners.npg: GAE against mjrl's per-path loop, conjugate gradients, the Fisher-vector product
against autograd's Hessian of the mean KL, the KL size of an NPG step, NPG on a bandit with a
known optimum, and behaviour cloning of a linear policy."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from wmrl.planners.npg import (
    NPG,
    GaussianMLPPolicy,
    MLPBaseline,
    NPGConfig,
    behaviour_clone,
    cg_solve,
    discounted_returns,
    fisher_vector_product,
    gae,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def discount_sum(x, gamma, terminal=0.0):
    """mjrl `process_samples.discount_sum`."""
    out, run = [], terminal
    for v in x[::-1]:
        run = v + gamma * run
        out.append(run)
    return np.array(out[::-1])


def test_gae_matches_mjrl_loop_for_terminated_and_truncated_paths():
    gamma, lam, T = 0.9, 0.8, 5
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, T, generator=g, dtype=torch.float64)
    values = torch.randn(3, T + 1, generator=g, dtype=torch.float64)
    lengths = [3, 5, 2]  # terminated at 3; truncated at the full T; truncated early (padded)
    ended = [True, False, False]
    mask = torch.zeros(3, T, dtype=torch.bool)
    terminated = torch.zeros(3, T, dtype=torch.bool)
    for b, (L, e) in enumerate(zip(lengths, ended, strict=True)):
        mask[b, :L] = True
        terminated[b, L - 1] = e
        rewards[b, L:] = 99.0  # padding must not leak in
    adv = gae(rewards, values, terminated, mask, gamma, lam)
    ret = discounted_returns(rewards, mask, gamma)
    for b, (L, e) in enumerate(zip(lengths, ended, strict=True)):
        r, v = rewards[b, :L].numpy(), values[b].numpy()
        b1 = np.append(v[:L], 0.0 if e else v[L])  # V(s_L) bootstraps a truncated path
        td = r + gamma * b1[1:] - b1[:-1]
        np.testing.assert_allclose(adv[b, :L].numpy(), discount_sum(td, gamma * lam), rtol=1e-12)
        np.testing.assert_allclose(ret[b, :L].numpy(), discount_sum(r, gamma), rtol=1e-12)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_cg_solves_spd_system():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    for x0 in (None, b):
        x = cg_solve(lambda v: A @ v, b, x0=x0, iters=40, residual_tol=1e-24)
        assert torch.linalg.norm(A @ x - b) < 1e-6
    assert (cg_solve(lambda v: A @ v, torch.zeros_like(b)) == 0).all()


def tiny_policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(3, 2, hidden=(4,), init_log_std=-0.3).double()


def test_fisher_vector_product_is_hessian_of_mean_kl():
    policy = tiny_policy()
    policy.set_transformations([0.1, -0.2, 0.3], [1.5, 0.5, 2.0], [0.2, -0.1], [2.0, 0.5])
    obs = torch.randn(7, 3, dtype=torch.float64)
    with torch.no_grad():
        old_mean, old_log_std = policy(obs), policy.log_std.clone()
    names = [n for n, _ in policy.named_parameters()]
    sizes = [p.numel() for p in policy.parameters()]
    shapes = [p.shape for p in policy.parameters()]
    flat = torch.cat([p.detach().flatten() for p in policy.parameters()])
    buffers = dict(policy.named_buffers())

    def mean_kl(theta):  # torch.distributions' KL, independent of policy.kl
        parts = torch.split(theta, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        mean = functional_call(policy, {**params, **buffers}, (obs,))
        old = torch.distributions.Normal(old_mean, old_log_std.exp())
        new = torch.distributions.Normal(mean, params["log_std"].exp().expand_as(mean))
        return torch.distributions.kl_divergence(old, new).sum(-1).mean()

    H = torch.autograd.functional.hessian(mean_kl, flat)
    v = torch.randn(flat.shape[0], dtype=torch.float64)
    fvp = fisher_vector_product(policy, obs, v, damping=1e-3)
    torch.testing.assert_close(fvp, H @ v + 1e-3 * v, rtol=1e-8, atol=1e-10)
    # the log_std block of a Gaussian's Fisher is 2 I
    k = sum(sizes[: names.index("log_std")])
    torch.testing.assert_close(H[k : k + 2, k : k + 2], 2 * torch.eye(2, dtype=torch.float64))


def bandit_paths(npg, n=256, generator=None):
    """One-step episodes from a constant state; reward -(a - 0.5)^2, optimum a = 0.5."""
    obs = torch.ones(n, 2, 2)
    actions = npg.policy.sample(obs[:, :1], generator=generator)
    rewards = -((actions[..., 0] - 0.5) ** 2)
    ones = torch.ones(n, 1, dtype=torch.bool)
    return dict(observations=obs, actions=actions, rewards=rewards, terminated=ones, mask=ones)


def test_npg_step_has_the_normalised_kl_size():
    torch.manual_seed(0)
    cfg = NPGConfig(step_size=0.02)
    npg = NPG(2, 1, cfg)
    m = npg.update(bandit_paths(npg, generator=torch.Generator().manual_seed(0)))
    # alpha^2 g^T F^-1 g = delta, and the measured KL is the quadratic model's delta / 2
    assert m["delta"] == pytest.approx(cfg.step_size, rel=1e-4)
    assert m["kl"] == pytest.approx(cfg.step_size / 2, rel=0.2)
    assert m["surrogate_after"] > m["surrogate_before"]


def test_npg_moves_the_mean_to_the_optimum():
    torch.manual_seed(0)
    npg = NPG(2, 1, NPGConfig())
    g = torch.Generator().manual_seed(1)
    start = npg.act(torch.ones(1, 2)).item()
    for _ in range(15):
        npg.update(bandit_paths(npg, generator=g))
    assert abs(start) < 0.05  # mjrl's 1e-2 output layer starts near zero
    assert npg.act(torch.ones(1, 2)).item() == pytest.approx(0.5, abs=0.1)
    assert int(npg.updates) == 15


def test_baseline_fits_returns_with_time_features():
    torch.manual_seed(0)
    baseline = MLPBaseline(2, epochs=30, batch_size=64)
    obs = torch.randn(8, 50, 2)
    t = torch.arange(50.0)
    returns = obs[..., 0] + (50 - t) / 50  # a finite horizon: values shrink with t
    mask = torch.ones(8, 50, dtype=torch.bool)
    m = baseline.fit(obs, returns, mask)
    assert m["baseline_error_after"] < 0.1 * m["baseline_error_before"]


def test_behaviour_clone_recovers_a_linear_policy():
    torch.manual_seed(0)
    obs = torch.randn(2048, 3)
    W, b = torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.3, 0.2]]), torch.tensor([0.1, -0.2])
    actions = obs @ W + b
    policy = GaussianMLPPolicy(3, 2)
    log_std = policy.log_std.detach().clone()
    out = behaviour_clone(policy, obs, actions, epochs=40, batch_size=256, lr=1e-3)
    assert out["bc_loss_after"] < 0.01 * actions.var().item() < out["bc_loss_before"]
    test_obs = torch.randn(256, 3)
    rms = (policy.mode(test_obs) - (test_obs @ W + b)).pow(2).mean().sqrt()
    assert rms < 0.05
    assert torch.equal(policy.log_std.detach(), log_std)  # MSE leaves the exploration alone
