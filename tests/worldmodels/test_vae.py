"""worldmodels.vae: shapes of the reference architecture, the loss against an independent
computation, the KL tolerance floor and its gradient, and that training lowers the loss."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from wmrl.worldmodels.vae import ConvVAE, kl_floor_loss, kl_to_standard_normal, train_vae_step

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 64, 64, 3), generator=g, dtype=torch.uint8)


def test_shapes_and_output_range():
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=32)
    mu, logvar = vae.encode(frames(2)[None])  # leading dims (1, 2)
    assert mu.shape == logvar.shape == (1, 2, 32)
    x = vae.decode(torch.randn(5, 32) * 3)
    assert x.shape == (5, 64, 64, 3) and 0 <= x.min() and x.max() <= 1
    assert vae.decode_frames(torch.zeros(4, 32)).dtype == torch.uint8
    # The reference's sizes: encoder 64 -> 31 -> 14 -> 6 -> 2 (2 * 2 * 256 = 1024 features).
    convs = [m for m in vae.encoder.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert vae.fc_mu.in_features == 1024
    deconvs = [m for m in vae.decoder.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [d.kernel_size[0] for d in deconvs] == [5, 5, 6, 6]
    with pytest.raises(ValueError, match="uint8"):
        vae.encode(frames(1).float())


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(7, 32), torch.randn(7, 32)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), expected)


def test_loss_matches_an_independent_computation():
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8, kl_tolerance=0.5)
    obs = frames(3)
    torch.manual_seed(1)
    loss, metrics = vae.loss(obs)
    torch.manual_seed(1)  # the same eps: encode draws nothing, the sample draws one randn
    mu, logvar = vae.encode(obs)
    z = mu + torch.randn_like(mu) * torch.exp(logvar / 2)
    x = obs.float() / 255
    r = ((x - vae.decode(z)) ** 2).sum(dim=(1, 2, 3)).mean()
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    kl_term = torch.maximum(kl, torch.tensor(0.5 * 8)).mean()
    torch.testing.assert_close(loss, r + kl_term)
    assert metrics["r_loss"].item() == pytest.approx(r.item(), rel=1e-5)
    assert metrics["r_loss"].item() > 100  # summed over 64 * 64 * 3 pixels, not averaged


def test_kl_floor_value_and_gradient():
    floor = 0.5 * 32
    # Below the floor: the loss is the floor and no gradient reaches the encoder's outputs.
    mu = torch.full((4, 32), 0.1, requires_grad=True)
    logvar = torch.full((4, 32), -0.1, requires_grad=True)
    kl = kl_to_standard_normal(mu, logvar)
    assert (kl < floor).all()
    loss = kl_floor_loss(kl, floor)
    loss.backward()
    assert loss.item() == floor
    assert torch.count_nonzero(mu.grad) == 0 and torch.count_nonzero(logvar.grad) == 0
    # Above it: the plain KL, with its gradient d/dmu = mu / B.
    mu = torch.full((4, 32), 2.0, requires_grad=True)
    kl = kl_to_standard_normal(mu, torch.zeros(4, 32))
    loss = kl_floor_loss(kl, floor)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 4.0 * 32)  # 64 > 16
    torch.testing.assert_close(mu.grad, torch.full((4, 32), 2.0 / 4))


def test_the_floor_holds_inside_the_vae_loss():
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=16, kl_tolerance=0.5)
    for layer in (vae.fc_mu, vae.fc_logvar):  # q(z|x) = N(0, I) exactly: KL = 0
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    loss, metrics = vae.loss(frames(2))
    assert metrics["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["kl_loss"].item() == pytest.approx(8.0)
    assert loss.item() == pytest.approx(metrics["r_loss"].item() + 8.0, rel=1e-6)


def test_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8)
    obs = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    obs[0, :, :, 1] = 200  # two frames: green and black
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    first = train_vae_step(vae, obs, optimizer)["r_loss"]
    for _ in range(30):
        last = train_vae_step(vae, obs, optimizer)["r_loss"]
    assert last < 0.5 * first
