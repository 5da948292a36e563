"""worldmodels.mdnrnn: the mixture NLL against torch.distributions, temperature sampling, the
sequence loss (heads included) against an independent computation, the row timing and resets,
and the VAE + MDN-RNN adapter under the shared protocol (CEM plans with it)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, MixtureSameFamily, Normal

from wmrl.planners.cem import CEMConfig, Planner, cem_plan
from wmrl.worldmodels import WorldModel
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig, WorldModels, mdn_nll, sample_mdn
from wmrl.worldmodels.vae import ConvVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw):
    return MDNRNNConfig(hidden=16, mixtures=3, **kw)


def test_mdn_nll_matches_mixture_same_family():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 8, 5)
    logpi = F.log_softmax(logits, -1)
    mean, logstd = torch.randn(4, 6, 8, 5), 0.5 * torch.randn(4, 6, 8, 5)
    y = torch.randn(4, 6, 8) * 2
    mixture = MixtureSameFamily(Categorical(logits=logits), Normal(mean, logstd.exp()))
    torch.testing.assert_close(mdn_nll(logpi, mean, logstd, y), -mixture.log_prob(y))


def test_temperature_scales_logits_and_std():
    torch.manual_seed(0)
    n, tau = 40_000, 2.0
    # Two far-apart components with weights 1/4, 3/4: at tau the second has probability
    # softmax(log [1, 3] / tau)[1] = sqrt(3) / (1 + sqrt(3)), and each std grows by sqrt(tau).
    logpi = torch.log(torch.tensor([0.25, 0.75])).expand(n, 1, 2)
    mean = torch.tensor([-100.0, 100.0]).expand(n, 1, 2)
    logstd = torch.log(torch.tensor([1.0, 2.0])).expand(n, 1, 2)
    z = sample_mdn(logpi, mean, logstd, tau)[:, 0]
    high = z > 0
    assert high.float().mean().item() == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=0.01)
    assert z[high].std().item() == pytest.approx(2.0 * math.sqrt(tau), rel=0.03)
    assert z[~high].std().item() == pytest.approx(1.0 * math.sqrt(tau), rel=0.03)
    z1 = sample_mdn(logpi, mean, logstd, 1.0)[:, 0]
    assert (z1 > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)


def test_sequence_loss_against_an_independent_computation():
    torch.manual_seed(0)
    cfg = tiny_cfg(reward_head=True, done_head=True, restart_factor=10.0, reward_scale=2.0)
    model = MDNRNN(4, 2, cfg)
    B, T = 3, 6
    z, action = torch.randn(B, T, 4), torch.randn(B, T, 2)
    reward = torch.randn(B, T)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_terminal = torch.zeros(B, T, dtype=torch.bool)
    is_terminal[0, 3] = True
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 4:] = False  # padding
    loss, metrics, (h, _) = model.sequence_loss(z, action, is_first, reward, is_terminal, mask)

    # Independently: the LSTM stepped by hand from zeros on [z_(t-1), action[t]], t >= 1.
    lstm = torch.nn.LSTMCell(6, 16)
    lstm.load_state_dict({k[:-3]: v for k, v in model.lstm.state_dict().items()})
    hx = cx = torch.zeros(B, 16)
    hs = [hx]
    for t in range(1, T):
        hx, cx = lstm(torch.cat([z[:, t - 1], action[:, t]], -1), (hx, cx))
        hs.append(hx)
    h_ref = torch.stack(hs, 1)
    torch.testing.assert_close(h, h_ref)
    out = model.mdn(h_ref).reshape(B, T, 4, 9)
    logits, mean, logstd = out[..., :3], out[..., 3:6], out[..., 6:]
    dist = MixtureSameFamily(Categorical(logits=logits), Normal(mean, logstd.exp()))
    nll = -dist.log_prob(z).mean(-1)  # mean over latent dims, as the reference
    valid = mask & ~is_first
    z_nll = nll[valid].mean()
    r = model.reward_head(h_ref).squeeze(-1)
    reward_loss = ((r - reward) ** 2)[valid].mean()
    logit = model.done_head(h_ref).squeeze(-1)
    p = torch.sigmoid(logit)
    y = is_terminal.float()
    bce = -(10.0 * y * torch.log(p) + (1 - y) * torch.log(1 - p))
    done_loss = bce[valid].mean()
    torch.testing.assert_close(metrics["z_nll"], z_nll)
    torch.testing.assert_close(metrics["reward_loss"], reward_loss)
    torch.testing.assert_close(metrics["done_loss"], done_loss)
    torch.testing.assert_close(loss, z_nll + 2.0 * reward_loss + done_loss)


def test_filter_resets_and_the_fused_path_agree():
    torch.manual_seed(0)
    model = MDNRNN(4, 2, tiny_cfg())
    z, action = torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    is_first = torch.zeros(2, 5, dtype=torch.bool)
    is_first[:, 0] = True
    fused, none = model.filter(z, action, is_first, cells=False)
    stepped, c = model.filter(z, action, is_first, cells=True)
    assert none is None and c.shape == (2, 5, 16)
    torch.testing.assert_close(fused, stepped)
    assert torch.count_nonzero(stepped[:, 0]) == 0  # h = 0 at an episode's first row
    # A restart mid-sequence: row 3 is zeros and row 4 equals row 1 of a fresh sequence that
    # starts at row 3.
    is_first[1, 3] = True
    h, _ = model.filter(z, action, is_first)
    assert torch.count_nonzero(h[1, 3]) == 0
    fresh, _ = model.filter(z[1:, 3:], action[1:, 3:], is_first[1:, 3:])
    torch.testing.assert_close(h[1, 4], fresh[0, 1])
    torch.testing.assert_close(h[0], stepped[0])


def adapter(reward_head=True, done_head=True, temperature=1.0):
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8)
    cfg = tiny_cfg(reward_head=reward_head, done_head=done_head, temperature=temperature)
    return WorldModels(vae, MDNRNN(8, 3, cfg)).eval()


def test_adapter_fits_the_protocol_and_cem_plans_with_it():
    model = adapter()
    assert isinstance(model, WorldModel)
    obs = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    is_first = torch.tensor([[True, False, False, False]] * 2)
    post = model.observe(obs, torch.zeros(2, 4, 3), is_first)
    assert post["z"].shape == (2, 4, 8) and post["h"].shape == post["c"].shape == (2, 4, 16)
    assert model.features(post).shape == (2, 4, 8 + 16)
    assert torch.count_nonzero(post["h"][:, 0]) == 0 and torch.count_nonzero(post["h"][:, 1]) > 0
    last = {k: v[:, -1] for k, v in post.items()}
    states = model.imagine(last, torch.zeros(2, 5, 3))
    assert states["z"].shape == (2, 5, 8)
    assert model.reward(states).shape == model.continuation(states).shape == (2, 5)
    assert 0 < model.continuation(states).min() and model.continuation(states).max() < 1
    frames = model.decode_frames(states)
    assert frames.shape == (2, 5, 64, 64, 3) and frames.dtype == torch.uint8
    cfg = CEMConfig(horizon=3, iterations=2, candidates=16, top_k=4)
    action = cem_plan(model, last, 3, cfg)
    assert action.shape == (2, 3) and action.abs().max() <= 1
    planner = Planner(model, 3, cfg)
    a = planner.act(obs[0, 0].numpy())
    assert a.shape == (3,) and torch.count_nonzero(planner.state["h"]) == 0  # the first frame


def test_img_step_predicts_from_z_and_action():
    model = adapter(done_head=False)
    state = {"z": torch.randn(1, 8), "h": torch.zeros(1, 16), "c": torch.zeros(1, 16)}
    nxt = model.img_step(state, torch.ones(1, 3))
    h, _ = model.mdnrnn.step(state["z"], torch.ones(1, 3), state["h"], state["c"])
    torch.testing.assert_close(nxt["h"], h)
    assert torch.equal(model.continuation(nxt), torch.ones(1))  # no done head: never ends
    with pytest.raises(ValueError, match="reward head"):
        adapter(reward_head=False).reward(nxt)


def test_adapter_loss_on_a_replay_batch_crossing_an_episode_start():
    model = adapter()
    B, T = 2, 5
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = is_first[0, 2] = True
    batch = {
        "obs": torch.randint(0, 256, (B, T, 64, 64, 3), dtype=torch.uint8),
        "action": torch.randn(B, T, 3),
        "reward": torch.randn(B, T),
        "is_first": is_first,
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    }
    loss, metrics, states = model.loss(batch)
    assert math.isfinite(loss.item()) and loss.requires_grad
    assert set(metrics) == {"z_nll", "reward_loss", "done_loss", "loss"}
    assert states["h"].shape == (B, T, 16)
    assert torch.count_nonzero(states["h"][0, 2]) == 0  # reset at the episode start
