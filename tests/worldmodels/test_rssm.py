"""worldmodels.rssm: protocol shapes, step alignment, the bound's terms against independent
computations (torch.distributions, hand-written NLLs), latent overshooting, preprocessing and a
few optimisation steps. Tiny sizes so that the whole file runs in seconds on a 2-core CPU."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from wmrl.worldmodels import (
    RSSM,
    RSSMConfig,
    WorldModel,
    make_optimizer,
    postprocess_obs,
    preprocess_obs,
)

PIXELS, VECTOR = (64, 64, 3), (5,)
A = 2


def tiny(obs_shape=VECTOR, **overrides) -> RSSM:
    torch.manual_seed(0)
    cfg = RSSMConfig(deter=16, stoch=4, hidden=16, reward_hidden=16, **overrides)
    return RSSM(obs_shape, A, cfg)


def make_batch(obs_shape=VECTOR, B=2, T=5, firsts=(), seed=0) -> dict[str, np.ndarray]:
    """A replay-like batch; is_first at t = 0 and at every (b, t) in `firsts`, where the action
    and reward are zero as the replay writes them."""
    rng = np.random.default_rng(seed)
    if len(obs_shape) == 3:
        obs = rng.integers(0, 256, (B, T, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(B, T, *obs_shape)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    for b, t in firsts:
        is_first[b, t] = True
    action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32) * ~is_first[..., None]
    reward = rng.normal(size=(B, T)).astype(np.float32) * ~is_first
    return {"obs": obs, "action": action, "reward": reward, "is_first": is_first}


def tensors(batch):
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def one_step_priors(model, post, action, is_first):
    """Independent of the model's loop: p_t = img_step(state_(t-1), action[t]), state_(t-1) the
    posterior at t-1, or `initial` at an episode start; means and stds only."""
    B, T = is_first.shape
    init, means, stds = model.initial(B), [], []
    for t in range(T):
        reset = is_first[:, t, None] if t else torch.ones(B, 1, dtype=torch.bool)
        prev = init if t == 0 else {k: v[:, t - 1] for k, v in post.items()}
        prev = {k: torch.where(reset, init[k], prev[k]) for k in init}
        prior = model.img_step(prev, action[:, t])
        means.append(prior["mean"])
        stds.append(prior["std"])
    return torch.stack(means, 1), torch.stack(stds, 1)


def kl_per_step(post, prior_mean, prior_std):
    """KL summed over latent dims with torch.distributions: (B, T)."""
    q = Independent(Normal(post["mean"], post["std"]), 1)
    return kl_divergence(q, Independent(Normal(prior_mean, prior_std), 1))


def standard_bound(model, batch, detach_posterior=False):
    """The one-step bound written out from torch.distributions: unit-Gaussian NLLs summed over
    observation dims, reward NLL, max(KL, free_nats); all averaged over batch and time."""
    cfg, b = model.cfg, tensors(batch)
    post = model.observe(b["obs"], b["action"], b["is_first"])
    prior_mean, prior_std = one_step_priors(model, post, b["action"], b["is_first"])
    obs = b["obs"].float()
    obs_nll = -Normal(model.decode(post), 1.0).log_prob(obs).sum(-1).mean()
    reward_nll = -Normal(model.reward(post), 1.0).log_prob(b["reward"]).mean()
    q = {k: v.detach() for k, v in post.items()} if detach_posterior else post
    kl = kl_per_step(q, prior_mean, prior_std).clamp(min=cfg.free_nats).mean()
    return obs_nll + cfg.reward_scale * reward_nll + cfg.kl_scale * kl


# ------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("obs_shape", [PIXELS, VECTOR], ids=["pixels", "state"])
def test_protocol_shapes(obs_shape):
    model, B, T = tiny(obs_shape), 2, 5
    batch = make_batch(obs_shape, B, T)
    assert isinstance(model, WorldModel)
    sizes = {"deter": 16, "mean": 4, "std": 4, "stoch": 4}
    init = model.initial(B)
    assert {k: tuple(v.shape) for k, v in init.items()} == {k: (B, n) for k, n in sizes.items()}

    post = model.observe(batch["obs"], batch["action"], batch["is_first"])
    assert {k: tuple(v.shape) for k, v in post.items()} == {k: (B, T, n) for k, n in sizes.items()}
    last = {k: v[:, -1] for k, v in post.items()}
    step = model.observe(batch["obs"][:, :1], batch["action"][:, :1], np.zeros((B, 1)), last)
    assert step["deter"].shape == (B, 1, 16)
    assert model.img_step(last, torch.zeros(B, A))["stoch"].shape == (B, 4)
    imagined = model.imagine(last, torch.zeros(B, 7, A))
    assert {k: tuple(v.shape) for k, v in imagined.items()} == {
        k: (B, 7, n) for k, n in sizes.items()
    }
    assert model.features(post).shape == (B, T, 20)
    assert model.reward(imagined).shape == (B, 7)
    assert torch.equal(model.continuation(imagined), torch.ones(B, 7))
    assert model.decode(post).shape == (B, T, *obs_shape)
    if obs_shape == PIXELS:
        frames = model.decode_frames(post)
        assert frames.dtype == torch.uint8 and frames.shape == (B, T, *PIXELS)

    loss, metrics, post = model.loss(batch)
    assert loss.shape == () and loss.requires_grad
    assert metrics and all(type(v) is float for v in metrics.values())
    assert post["stoch"].shape == (B, T, 4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="64, 64"):
        RSSM((32, 32, 3), A, RSSMConfig(deter=8, stoch=2, hidden=8))
    model, batch = tiny(PIXELS), make_batch(PIXELS)
    with pytest.raises(ValueError, match="uint8"):
        model.observe(batch["obs"].astype(np.float32), batch["action"], batch["is_first"])
    with pytest.raises(ValueError, match="time dimension"):
        model.observe(batch["obs"][:, 0], batch["action"][:, 0], batch["is_first"][:, 0])
    with pytest.raises(ValueError, match="overshooting_distance"):
        tiny(overshooting_distance=6).loss(make_batch(T=5))


# ------------------------------------------------------------------------------ alignment
def test_is_first_resets_the_state():
    model = tiny(mean_only=True)  # deterministic states, so sequences compare exactly
    b = tensors(make_batch(T=6, firsts=[(0, 3), (1, 3)]))
    full = model.observe(b["obs"], b["action"], b["is_first"])
    alone = model.observe(b["obs"][:, 3:], b["action"][:, 3:], b["is_first"][:, 3:])
    for k in full:
        torch.testing.assert_close(full[k][:, 3:], alone[k])
    # A state carried in is discarded where the chunk starts an episode.
    carried = {k: torch.randn_like(v[:, 0]) for k, v in full.items()}
    again = model.observe(b["obs"], b["action"], b["is_first"], carried)
    for k in full:
        torch.testing.assert_close(again[k], full[k])


def test_prior_at_t_uses_action_t():
    model = tiny(mean_only=True)
    b = tensors(make_batch(T=6))
    post, prior = model.observe_with_prior(b["obs"], b["action"], b["is_first"])
    action = b["action"].clone()
    action[:, 2] += 0.5
    changed = model.observe(b["obs"], action, b["is_first"])
    for k in post:
        torch.testing.assert_close(changed[k][:, :2], post[k][:, :2])
        assert ((changed[k][:, 2:] - post[k][:, 2:]).abs().amax(-1) > 1e-6).all(), k
    # The one-step prior at t is img_step(posterior at t-1, action[t]).
    prev = {k: v[:, 2] for k, v in post.items()}
    step = model.img_step(prev, b["action"][:, 3])
    for k in ("deter", "mean", "std"):
        torch.testing.assert_close(step[k], prior[k][:, 3])


# ----------------------------------------------------------------------------------- loss
def test_kl_with_free_nats_matches_torch_distributions():
    model, batch = tiny(), make_batch(T=6, firsts=[(1, 4)])
    b = tensors(batch)
    torch.manual_seed(1)
    post = model.observe(b["obs"], b["action"], b["is_first"])
    kl = kl_per_step(post, *one_step_priors(model, post, b["action"], b["is_first"])).detach()
    model.cfg.free_nats = kl.median().item()  # so some steps are clipped and some are not
    assert (kl < model.cfg.free_nats).any() and (kl > model.cfg.free_nats).any()
    torch.manual_seed(1)  # the loss draws the same samples as observe did
    _, metrics, _ = model.loss(batch)
    assert metrics["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    expected = torch.maximum(kl, torch.tensor(model.cfg.free_nats)).mean().item()
    assert metrics["kl_loss"] == pytest.approx(expected, rel=1e-5)


def test_reconstruction_and_reward_terms_by_hand():
    model, batch = tiny(PIXELS), make_batch(PIXELS)
    torch.manual_seed(2)
    loss, metrics, post = model.loss(batch)
    torch.manual_seed(2)  # the loss's first draw is the dequantisation noise
    target = preprocess_obs(torch.as_tensor(batch["obs"]))
    squared = (model.decode(post) - target) ** 2  # (B, T, 64, 64, 3)
    obs_nll = (0.5 * squared + 0.5 * math.log(2 * math.pi)).sum((2, 3, 4)).mean()
    assert metrics["obs_loss"] == pytest.approx(obs_nll.item(), rel=1e-5)
    squared = (model.reward(post) - torch.as_tensor(batch["reward"])) ** 2
    reward_nll = (0.5 * squared + 0.5 * math.log(2 * math.pi)).mean()
    assert metrics["reward_loss"] == pytest.approx(reward_nll.item(), rel=1e-5)
    total = obs_nll + model.cfg.reward_scale * reward_nll + metrics["kl_loss"]
    assert loss.item() == pytest.approx(total.item(), rel=1e-5)


def test_overshooting_with_d1_is_the_standard_bound_in_loss_and_gradients():
    # Free nats below the KLs, so the KL gradient (into the posterior too) is not clipped away.
    model, batch = tiny(overshooting_distance=1, free_nats=0.05), make_batch(firsts=[(0, 3)])
    params = list(model.parameters())
    torch.manual_seed(3)
    loss, _, _ = model.loss(batch)
    grads = torch.autograd.grad(loss, params)
    torch.manual_seed(3)
    expected = standard_bound(model, batch)
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(loss, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # The check has teeth: a stop-gradient on the d = 1 posterior changes the gradients.
    torch.manual_seed(3)
    detached = standard_bound(model, batch, detach_posterior=True)
    detached_grads = torch.autograd.grad(detached, params)
    torch.testing.assert_close(detached, expected)
    assert any(not torch.allclose(g, e) for g, e in zip(grads, detached_grads, strict=True))


def test_overshooting_d2_term_is_the_two_step_open_loop_kl():
    D, fn = 2, 0.1
    model = tiny(mean_only=True, overshooting_distance=D, free_nats=fn)
    batch = make_batch(T=6, firsts=[(0, 3)])
    b = tensors(batch)
    post, prior = model.observe_with_prior(b["obs"], b["action"], b["is_first"])
    kl, reward_nll = model.latent_overshooting(post, prior, b["action"], b["is_first"])
    assert kl.shape == (D,) and reward_nll.shape == (D - 1,)

    terms = []
    for i in range(2):
        at = {k: v[i : i + 1] for k, v in post.items()}
        for t in range(1, 6):
            if b["is_first"][i, t]:  # the open loop would cross an episode start
                continue
            start = at if t >= 2 and not b["is_first"][i, t - 1] else None
            state = model.initial(1) if start is None else {k: v[:, t - 2] for k, v in at.items()}
            first_action = b["action"][i : i + 1, t - 1]  # zero where is_first[t - 1]
            state = model.img_step(model.img_step(state, first_action), b["action"][i : i + 1, t])
            q = {k: v[:, t] for k, v in at.items()}
            terms.append(kl_per_step(q, state["mean"], state["std"]).clamp(min=fn))
    assert len(terms) == 2 * 5 - 1  # (0, 3) is masked
    torch.testing.assert_close(kl[1], torch.cat(terms).mean())
    prior_mean, prior_std = one_step_priors(model, post, b["action"], b["is_first"])
    torch.testing.assert_close(kl[0], kl_per_step(post, prior_mean, prior_std).clamp(min=fn).mean())

    # The loss adds beta_(d>1) / D times the d = 2 term to the one-step bound.
    loss_d2, metrics, _ = model.loss(batch)
    model.cfg.overshooting_distance = 1
    loss_d1, _, _ = model.loss(batch)
    assert loss_d2.item() > loss_d1.item()
    assert (loss_d2 - loss_d1).item() == pytest.approx(kl[1].item() / D, rel=1e-4)
    assert metrics["overshooting_kl"] == pytest.approx(kl[1].item(), rel=1e-5)


def test_overshooting_stops_posterior_gradients_only_beyond_d1():
    model = tiny(overshooting_distance=3, free_nats=0.0, overshooting_reward_scale=1.0)
    b = tensors(make_batch(T=5))
    post, prior = model.observe_with_prior(b["obs"], b["action"], b["is_first"])
    post = {k: v.detach().requires_grad_() for k, v in post.items()}
    prior = {k: v.detach().requires_grad_() for k, v in prior.items()}
    kl, reward_nll = model.latent_overshooting(post, prior, b["action"], b["is_first"], b["reward"])
    assert reward_nll.shape == (2,) and (reward_nll > 0).all()
    leaves = [post["mean"], post["std"], prior["stoch"], prior["deter"]]
    g_mean, g_std, g_stoch, g_deter = torch.autograd.grad(
        kl[1:].sum(), leaves, allow_unused=True, retain_graph=True
    )
    for g in (g_mean, g_std):  # targets are stop-gradient for d > 1
        assert g is None or not g.any()
    assert g_stoch.abs().sum() > 0 and g_deter.abs().sum() > 0  # the open loop learns
    g_mean, g_std = torch.autograd.grad(kl[0], leaves[:2])
    assert g_mean.abs().sum() > 0 and g_std.abs().sum() > 0  # d = 1 is the ordinary KL


# -------------------------------------------------------------------------- preprocessing
def test_preprocess_quantises_to_5_bits_with_noise_inside_one_bin():
    obs = torch.arange(256, dtype=torch.uint8).repeat(50)
    x = preprocess_obs(obs)
    assert x.dtype == torch.float32
    assert x.min() >= -0.5 and x.max() < 0.5
    bins = (obs // 8).float()  # 8 bits -> 5 bits
    assert torch.equal(torch.floor((x + 0.5) * 32), bins)
    assert len(torch.unique(bins)) == 32
    noise = x + 0.5 - bins / 32
    assert noise.min() >= 0 and noise.max() < 1 / 32 and noise.std() > 0.25 / 32
    assert torch.equal(preprocess_obs(obs, noise=False), bins / 32 - 0.5)
    assert torch.equal(postprocess_obs(x), (obs // 8) * 8)


# ---------------------------------------------------------------------------- optimisation
def test_a_few_adam_steps_lower_the_loss():
    model, batch = tiny(lr=1e-2), make_batch(T=5)
    optimizer = make_optimizer(model)
    assert optimizer.defaults["eps"] == 1e-4
    cfg = model.cfg  # the part no model can remove: free nats and the NLLs' constants
    floor = cfg.free_nats + (VECTOR[0] + cfg.reward_scale) * 0.5 * math.log(2 * math.pi)
    torch.manual_seed(4)
    before = model.loss(batch)[1]["loss"] - floor
    for _ in range(30):
        metrics = model.train_step(batch, optimizer)
    assert set(metrics) >= {"loss", "grad_norm"}
    torch.manual_seed(4)
    after = model.loss(batch)[1]["loss"] - floor
    assert after < 0.5 * before
