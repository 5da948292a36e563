"""worldmodels.categorical_rssm: protocol shapes and timing, straight-through sampling, KL
balancing's gradient split against the plain KL's, the layer-norm GRU by hand, the loss terms
against an independent computation, and CEM planning on the categorical RSSM. Tiny sizes
throughout."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from wmrl.planners.cem import CEMConfig, cem_plan
from wmrl.worldmodels import WorldModel
from wmrl.worldmodels.categorical_rssm import (
    CategoricalRSSM,
    CategoricalRSSMConfig,
    kl_balance_loss,
    kl_categorical,
    straight_through_onehot,
)
from wmrl.worldmodels.nets import LayerNormGRUCell, make_optimizer

PIXELS, VECTOR = (64, 64, 3), (5,)
A = 2


def tiny(obs_shape=VECTOR, **overrides) -> CategoricalRSSM:
    torch.manual_seed(0)
    cfg = CategoricalRSSMConfig(
        deter=16,
        hidden=16,
        stoch=4,
        classes=5,
        cnn_depth=4,
        mlp_layers=2,
        mlp_units=16,
        **overrides,
    )
    return CategoricalRSSM(obs_shape, A, cfg)


def make_batch(obs_shape=VECTOR, B=2, T=5, seed=0):
    rng = np.random.default_rng(seed)
    if len(obs_shape) == 3:
        obs = rng.integers(0, 256, (B, T, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(B, T, *obs_shape)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    if T > 3:
        is_first[1, 3] = True
    action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32) * ~is_first[..., None]
    reward = rng.normal(size=(B, T)).astype(np.float32) * ~is_first
    is_terminal = np.zeros((B, T), bool)
    is_terminal[0, T - 1] = True
    return {
        "obs": obs,
        "action": action,
        "reward": reward,
        "is_first": is_first,
        "is_terminal": is_terminal,
    }


@pytest.mark.parametrize("obs_shape", [VECTOR, PIXELS])
def test_protocol_shapes(obs_shape):
    model = tiny(obs_shape)
    assert isinstance(model, WorldModel)
    b = make_batch(obs_shape, B=2, T=3)
    post = model.observe(b["obs"], b["action"], b["is_first"])
    assert post["deter"].shape == (2, 3, 16) and post["stoch"].shape == (2, 3, 4, 5)
    assert model.features(post).shape == (2, 3, 4 * 5 + 16) == (2, 3, model.feat_dim)
    last = {k: v[:, -1] for k, v in post.items()}
    states = model.imagine(last, torch.zeros(2, 7, A))
    assert states["logits"].shape == (2, 7, 4, 5)
    assert model.reward(states).shape == (2, 7)
    assert torch.equal(model.continuation(states), torch.ones(2, 7))
    assert model.decode(states).shape == (2, 7, *obs_shape)
    if len(obs_shape) == 3:
        frames = model.decode_frames(states)
        assert frames.dtype == torch.uint8 and frames.shape == (2, 7, *obs_shape)
        assert model.encoder.embed_dim == 32 * 4  # 2 x 2 x 8 * depth


def test_straight_through_forward_is_one_hot_and_gradient_is_the_probs():
    torch.manual_seed(0)
    logits = torch.randn(1000, 3, 4, requires_grad=True)
    sample = straight_through_onehot(logits)
    onehot = torch.nn.functional.one_hot(sample.detach().argmax(-1), 4).float()
    assert torch.allclose(sample.detach(), onehot, atol=1e-6)  # sample + probs - sg(probs)
    # The samples follow the probabilities: class frequencies within 4 sigma.
    probs = torch.softmax(logits.detach(), -1)
    freq, expect = sample.detach().mean(0), probs.mean(0)
    assert (freq - expect).abs().max() < 4 * math.sqrt(0.25 / 1000)
    # one categorical, many draws: frequencies within 4 sigma of the probabilities
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    draws = straight_through_onehot(p.log().expand(100_000, 5)).mean(0)
    assert (draws - p).abs().max() < 4 * math.sqrt(0.25 / 100_000) and draws[-1] == 0
    w = torch.randn(1000, 3, 4)
    (grad,) = torch.autograd.grad((w * sample).sum(), logits)
    (grad_probs,) = torch.autograd.grad((w * torch.softmax(logits, -1)).sum(), logits)
    assert torch.allclose(grad, grad_probs, atol=1e-6) and grad.abs().max() > 1e-3


def test_kl_categorical_matches_torch_distributions():
    torch.manual_seed(1)
    q, p = torch.randn(3, 4, 32, 32), torch.randn(3, 4, 32, 32)
    expect = kl_divergence(Categorical(logits=q), Categorical(logits=p)).sum(-1)
    assert torch.allclose(kl_categorical(q, p), expect, atol=1e-4)


def test_kl_balancing_sends_0_8_of_the_gradient_to_the_prior_and_0_2_to_the_posterior():
    torch.manual_seed(2)
    post = torch.randn(2, 5, 4, 6, requires_grad=True)
    prior = torch.randn(2, 5, 4, 6, requires_grad=True)
    loss, value = kl_balance_loss(post, prior, balance=0.8, free=0.0)
    g_post, g_prior = torch.autograd.grad(loss, [post, prior])
    plain = kl_divergence(Categorical(logits=post), Categorical(logits=prior)).sum(-1).mean()
    p_post, p_prior = torch.autograd.grad(plain, [post, prior])
    assert torch.allclose(loss, plain) and torch.allclose(value.mean(), plain)
    assert torch.allclose(g_prior, 0.8 * p_prior, atol=1e-7)
    assert torch.allclose(g_post, 0.2 * p_post, atol=1e-7)
    assert g_prior.abs().max() > 1e-3 and g_post.abs().max() > 1e-3


def test_free_nats_apply_to_the_mean_kl():
    torch.manual_seed(3)
    post = torch.randn(8, 4, 6, requires_grad=True)
    prior = torch.randn(8, 4, 6, requires_grad=True)
    kl = kl_categorical(post, prior).detach()
    free = float(kl.mean()) - 0.1  # below the mean, above some of the steps
    assert (kl < free).any()
    loss, _ = kl_balance_loss(post, prior, 0.8, free=free, free_avg=True)
    (g_avg,) = torch.autograd.grad(loss, prior)
    assert torch.allclose(loss, kl.mean())
    # Every step keeps its gradient when the mean is above `free` ...
    assert (g_avg.abs().sum((-2, -1)) > 0).all()
    loss, _ = kl_balance_loss(post, prior, 0.8, free=free, free_avg=False)
    (g_each,) = torch.autograd.grad(loss, prior)
    assert torch.allclose(loss, torch.clamp(kl, min=free).mean())
    # ... while per-step free nats silence the steps below it.
    assert torch.equal(g_each.abs().sum((-2, -1)) == 0, kl < free)
    loss, _ = kl_balance_loss(post, prior, 0.8, free=float(kl.mean()) + 1.0, free_avg=True)
    assert math.isclose(float(loss.detach()), float(kl.mean()) + 1.0, rel_tol=1e-6)
    assert not loss.requires_grad or torch.autograd.grad(loss, prior)[0].abs().max() == 0


def test_layer_norm_gru_by_hand():
    torch.manual_seed(4)
    cell = LayerNormGRUCell(3, 4)
    with torch.no_grad():
        cell.norm.weight.uniform_(0.5, 1.5)
        cell.norm.bias.uniform_(-0.5, 0.5)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    parts = torch.cat([x, h], -1) @ cell.linear.weight.T + cell.linear.bias
    mu, var = parts.mean(-1, keepdim=True), parts.var(-1, unbiased=False, keepdim=True)
    parts = (parts - mu) / torch.sqrt(var + 1e-3) * cell.norm.weight + cell.norm.bias
    r, c, u = parts[:, :4], parts[:, 4:8], parts[:, 8:]
    r, u = torch.sigmoid(r), torch.sigmoid(u - 1)
    expect = u * torch.tanh(r * c) + (1 - u) * h
    assert torch.allclose(cell(x, h), expect, atol=1e-6)


def test_prior_at_t_uses_action_t_and_is_first_resets():
    model = tiny()
    b = make_batch()
    torch.manual_seed(5)
    post, prior = model.observe_with_prior(b["obs"], b["action"], b["is_first"])
    action = torch.as_tensor(b["action"])
    for bi, t in [(0, 2), (1, 2), (0, 4)]:
        prev = {k: v[bi : bi + 1, t - 1] for k, v in post.items()}
        step = model.img_step(prev, action[bi : bi + 1, t])
        assert torch.allclose(step["deter"], prior["deter"][bi : bi + 1, t], atol=1e-6)
        assert torch.allclose(step["logits"], prior["logits"][bi : bi + 1, t], atol=1e-5)
    # (1, 3) starts an episode: its prior comes from the initial state and a zero action.
    step = model.img_step(model.initial(1), torch.zeros(1, A))
    assert torch.allclose(step["deter"], prior["deter"][1:2, 3], atol=1e-6)
    assert torch.allclose(step["deter"], prior["deter"][0:1, 0], atol=1e-6)


def test_loss_terms_by_hand():
    model = tiny(VECTOR, free_nats=0.5, reward_scale=2.0, kl_scale=0.3, pred_discount=True)
    b = make_batch()
    torch.manual_seed(6)
    loss, metrics, post = model.loss(b)
    torch.manual_seed(6)
    _, prior = model.observe_with_prior(b["obs"], b["action"], b["is_first"])
    obs, reward = torch.as_tensor(b["obs"]), torch.as_tensor(b["reward"])
    nll = 0.5 * (model.decode(post) - obs) ** 2 + 0.5 * math.log(2 * math.pi)
    obs_loss = nll.sum(-1).mean()
    reward_loss = (0.5 * (model.reward(post) - reward) ** 2 + 0.5 * math.log(2 * math.pi)).mean()
    kl = kl_divergence(Categorical(logits=post["logits"]), Categorical(logits=prior["logits"]))
    kl = max(float(kl.sum(-1).mean().detach()), 0.5)
    cont = model.continuation(post)
    target = 1.0 - torch.as_tensor(b["is_terminal"]).float()
    disc = -(target * cont.log() + (1 - target) * (1 - cont).log()).mean()
    expect = obs_loss + 2.0 * reward_loss + 0.3 * kl + disc
    assert math.isclose(float(loss), float(expect), rel_tol=1e-5)
    assert math.isclose(metrics["obs_loss"], float(obs_loss), rel_tol=1e-5)
    assert math.isclose(metrics["discount_loss"], float(disc), rel_tol=1e-5)


def test_pixels_scaled_to_minus_half_half():
    model = tiny(PIXELS)
    obs = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(model.preprocess(obs), torch.tensor([-0.5, -0.3, 0.5]))
    with pytest.raises(ValueError, match="uint8"):
        model.preprocess(obs.float())


def test_optimizer_decays_weights_by_1_minus_wd_whatever_the_lr():
    w = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = make_optimizer([w], lr=3e-4, eps=1e-5, weight_decay=1e-2)
    w.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 2.0 * (1 - 1e-2)))


def test_a_few_steps_lower_the_loss():
    model = tiny(VECTOR, free_nats=0.0)
    cfg = model.cfg
    opt = make_optimizer(model.parameters(), 1e-2, cfg.adam_eps, cfg.weight_decay)
    b = make_batch(B=4, T=6)
    torch.manual_seed(7)
    first, _ = model.train_step(b, opt)
    for _ in range(30):
        last, post = model.train_step(b, opt)
    # The Gaussian NLLs cannot fall below 0.5 ln(2 pi) per dim (5.5 here); the rest shrinks.
    # Over seeds 0-7 the obs loss fell by 0.8-1.2 and the total (with the sampled KL) by
    # 0.33-0.74.
    assert last["loss"] < first["loss"] - 0.25 and last["obs_loss"] < first["obs_loss"] - 0.7
    assert not post["deter"].requires_grad


def test_cem_plans_on_the_categorical_rssm():
    """Horizon 1, reward = the first deter unit (deterministic given the action): CEM's action
    must score as well as the best of a fine grid of actions."""
    model = tiny()
    model.reward = lambda state: state["deter"][..., 0]
    post = model.observe(*(torch.as_tensor(make_batch()[k]) for k in ("obs", "action", "is_first")))
    belief = {k: v[:, -1] for k, v in post.items()}
    torch.manual_seed(8)
    cfg = CEMConfig(horizon=1, iterations=6, candidates=300, top_k=30)
    action = cem_plan(model, belief, A, cfg)
    assert action.shape == (2, A) and action.abs().max() <= 1
    g = torch.linspace(-1, 1, 41)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, A)
    with torch.no_grad():
        for n in range(2):
            start = {k: v[n : n + 1].expand(len(grid), *v.shape[1:]) for k, v in belief.items()}
            best = model.img_step(start, grid)["deter"][:, 0].max()
            got = model.img_step({k: v[n : n + 1] for k, v in belief.items()}, action[n : n + 1])
            assert float(got["deter"][0, 0]) >= float(best) - 0.01
