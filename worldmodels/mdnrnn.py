"""The M model of World Models (Ha and Schmidhuber 2018, sec. 2.2 and appendix A.2): an LSTM with
a mixture density output, P(z_(t+1) | a_t, z_t, h_t), as in the reference code
(hardmaru/WorldModelsExperiments `carracing/rnn/rnn.py`, `doomrnn/doomrnn.py`; ctallec/world-models
`models/mdrnn.py`), and `WorldModels`, the VAE + MDN-RNN behind the shared `WorldModel` protocol.

Each latent dimension has its own mixture of `mixtures` Gaussians (the reference's layout: the
output layer gives, per dimension, K logits, K means and K log-stds). Sampling at temperature tau
divides the logits by tau and multiplies the std by sqrt(tau) (the reference's `get_pi_idx` and
`sample_sequence`). Optional heads read the same LSTM output: reward (MSE, as ctallec's) and done
(logistic, positives weighted by `restart_factor` as the reference's Doom `restart` head).

Timing, in the replay's row layout (`envs/replay.py`): row t holds o_t (encoded to z_t),
action[t] = a_(t-1), reward[t] = r_(t-1), is_terminal[t]. The state at row t is (z_t, h_t, c_t):

    h_t = 0                                    where is_first[t] (the reference starts at zeros)
    h_t = LSTM([z_(t-1), action[t]], h_(t-1))  otherwise
    mixture(h_t) ~ z_t    reward_head(h_t) ~ reward[t] = r_(t-1)    done_head(h_t) ~ is_terminal[t]

so the controller's input [z_t, h_t] is the reference's (h_t has seen z and a up to t-1), and
one step of the LSTM on [z_t, a_t] gives the distribution of z_(t+1): the MDN-RNN's prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmrl.worldmodels.protocol import open_loop
from wmrl.worldmodels.vae import ConvVAE

State = dict[str, torch.Tensor]  # "z" (..., z_dim), "h" (..., hidden), "c" (..., hidden)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class MDNRNNConfig:
    """The reference's MDN-RNN hyperparameters (CarRacing `rnn.py`; Doom for the heads)."""

    hidden: int = 256  # LSTM units
    mixtures: int = 5  # Gaussians per latent dimension
    temperature: float = 1.0  # tau when sampling z (img_step, dreams); the Doom dream used 1.15
    reward_head: bool = False  # predict reward[t] from h_t (ctallec's MSE); CEM needs it
    done_head: bool = False  # predict is_terminal[t] from h_t (the reference's Doom `restart`)
    restart_factor: float = 10.0  # weight of terminal steps in the done loss (Doom reference)
    reward_scale: float = 1.0  # weight of the reward MSE in the loss
    lr: float = 1e-3  # Adam
    grad_clip: float = 1.0  # gradients clipped by value, as the reference does
    batch_size: int = 100  # sequences per update
    seq_len: int = 999  # transitions per sequence (the reference's max_seq_len 1000 rows)
    steps: int = 4000  # updates (the reference's num_steps for CarRacing)


def mdn_nll(
    logpi: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """-log sum_k pi_k N(target; mean_k, exp(logstd_k)) per latent dimension.

    Args:
        logpi, mean, logstd: (..., Z, K), logpi normalised (log-softmax over K).
        target: (..., Z).
    Returns:
        (..., Z).
    """
    y = target.unsqueeze(-1)
    log_normal = -0.5 * ((y - mean) * torch.exp(-logstd)).pow(2) - logstd - LOG_SQRT_2PI
    return -torch.logsumexp(logpi + log_normal, dim=-1)


def sample_mdn(
    logpi: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Draw z from the per-dimension mixtures (..., Z, K) at temperature tau: component k with
    probability softmax(logpi / tau), then mean_k + exp(logstd_k) * sqrt(tau) * eps. (..., Z)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = torch.distributions.Categorical(logits=logpi / temperature).sample()[..., None]
    mu, std = mean.gather(-1, k)[..., 0], logstd.gather(-1, k)[..., 0].exp()
    return mu + std * math.sqrt(temperature) * torch.randn_like(mu)


class MDNRNN(nn.Module):
    """LSTM(z_dim + action_dim -> hidden) with per-dimension Gaussian mixture output."""

    def __init__(self, z_dim: int, action_dim: int, cfg: MDNRNNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MDNRNNConfig()
        self.z_dim, self.action_dim = int(z_dim), int(action_dim)
        self.lstm = nn.LSTM(z_dim + action_dim, cfg.hidden, batch_first=True)
        self.mdn = nn.Linear(cfg.hidden, z_dim * cfg.mixtures * 3)
        self.reward_head = nn.Linear(cfg.hidden, 1) if cfg.reward_head else None
        self.done_head = nn.Linear(cfg.hidden, 1) if cfg.done_head else None

    @property
    def device(self) -> torch.device:
        return self.mdn.weight.device

    def initial(self, batch_size: int) -> State:
        zeros = torch.zeros(batch_size, self.cfg.hidden, device=self.device)
        z = torch.zeros(batch_size, self.z_dim, device=self.device)
        return {"z": z, "h": zeros, "c": zeros.clone()}

    # --------------------------------------------------------------------------- recurrence
    def step(self, z: torch.Tensor, action: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One LSTM step on [z, action] (..., Z + A) from (h, c) (..., H): the new (h, c)."""
        x = torch.cat([z, action], -1)
        lead = x.shape[:-1]
        H = self.cfg.hidden
        _, (h, c) = self.lstm(
            x.reshape(-1, 1, x.shape[-1]), (h.reshape(1, -1, H), c.reshape(1, -1, H))
        )
        return h.reshape(*lead, H), c.reshape(*lead, H)

    def filter(self, z, action, is_first, state: State | None = None, cells: bool = True):
        """(h_t, c_t) for every row of a sequence (see the module's timing diagram).

        Args:
            z: (B, T, Z) latents of the rows; action: (B, T, A), action[:, t] = a_(t-1);
            is_first: (B, T) bool; state: the state before row 0 (None: `initial`);
            cells: also return the cell states. Without them a sequence that restarts only at
                row 0 runs as one fused nn.LSTM call (training); with them, step by step.
        Returns:
            h (B, T, H), c (B, T, H) or None.
        """
        B, T = is_first.shape
        state = self.initial(B) if state is None else state
        h, c = self.step(state["z"], action[:, 0], state["h"], state["c"])
        keep = ~is_first[:, 0, None]
        h, c = h * keep, c * keep  # where is_first the state restarts at zeros, unstepped
        if not cells and T > 1 and not is_first[:, 1:].any():
            x = torch.cat([z[:, :-1], action[:, 1:]], -1)
            out, _ = self.lstm(x, (h[None].contiguous(), c[None].contiguous()))
            return torch.cat([h[:, None], out], 1), None
        hs, cs = [h], [c]
        for t in range(1, T):
            h, c = self.step(z[:, t - 1], action[:, t], h, c)
            keep = ~is_first[:, t, None]
            h, c = h * keep, c * keep
            hs.append(h)
            cs.append(c)
        return torch.stack(hs, 1), torch.stack(cs, 1)

    # -------------------------------------------------------------------------------- heads
    def mixture(self, h: torch.Tensor):
        """(logpi, mean, logstd), each (..., Z, K), from LSTM outputs h (..., H)."""
        out = self.mdn(h).reshape(*h.shape[:-1], self.z_dim, 3 * self.cfg.mixtures)
        logit, mean, logstd = out.chunk(3, -1)
        return F.log_softmax(logit, -1), mean, logstd

    def reward(self, h: torch.Tensor) -> torch.Tensor:
        if self.reward_head is None:
            raise ValueError(
                "this MDN-RNN has no reward head; train it with --mdnrnn.reward_head true to "
                "plan with CEM or learn a critic in imagination"
            )
        return self.reward_head(h).squeeze(-1)

    def done_logit(self, h: torch.Tensor) -> torch.Tensor | None:
        return None if self.done_head is None else self.done_head(h).squeeze(-1)

    # --------------------------------------------------------------------------------- loss
    def sequence_loss(
        self, z, action, is_first, reward=None, is_terminal=None, mask=None, cells=False
    ):
        """The MDN-RNN loss on sequences in row layout.

        Args:
            z: (B, T, Z) latents (sampled from the VAE's (mu, logvar), as the reference trains);
            action: (B, T, A); is_first: (B, T); reward (B, T) and is_terminal (B, T), used by the
            heads that exist; mask: (B, T) bool, False on padding rows; cells: see `filter`.
        Returns:
            (loss, metrics, (h, c) (B, T, H), c None without `cells`). Rows where is_first
            have no prediction and count nowhere; z_nll is the mean over rows and latent dims
            (the reference's average).
        """
        h, c = self.filter(z, action, is_first, cells=cells)
        valid = ~is_first if mask is None else mask & ~is_first
        w = valid.float()
        count = w.sum().clamp(min=1)
        nll = mdn_nll(*self.mixture(h), z).mean(-1)
        z_loss = (nll * w).sum() / count
        metrics = {"z_nll": z_loss}
        loss = z_loss
        if self.reward_head is not None:
            mse = (self.reward(h) - reward.float()).pow(2)
            metrics["reward_loss"] = (mse * w).sum() / count
            loss = loss + self.cfg.reward_scale * metrics["reward_loss"]
        if self.done_head is not None:
            target = is_terminal.float()
            pos_weight = torch.tensor(self.cfg.restart_factor, device=h.device)
            bce = F.binary_cross_entropy_with_logits(
                self.done_logit(h), target, pos_weight=pos_weight, reduction="none"
            )
            metrics["done_loss"] = (bce * w).sum() / count
            loss = loss + metrics["done_loss"]
        metrics["loss"] = loss
        return loss, {k: v.detach() for k, v in metrics.items()}, (h, c)


def train_mdnrnn_step(model: MDNRNN, batch: dict, optimizer) -> dict[str, float]:
    """One update on a series batch (`sequence_loss`'s arguments by name), gradients clipped by
    value to `grad_clip`. Raises FloatingPointError on a NaN loss before the step."""
    loss, metrics, _ = model.sequence_loss(**batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_value_(model.parameters(), model.cfg.grad_clip)
    out = {k: float(v) for k, v in metrics.items()}
    if not math.isfinite(out["loss"]):
        raise FloatingPointError(
            f"MDN-RNN loss is not finite ({out}); lower --mdnrnn.lr or check the encoded series"
        )
    optimizer.step()
    return out


class WorldModels(nn.Module):
    """VAE + MDN-RNN as one `worldmodels.WorldModel` (states: "z", "h", "c"; see the module's
    timing diagram). `observe` encodes frames with the VAE (sampling z as the reference's
    controller does, or taking mu with `observe_sample=False`), `img_step` samples the mixture
    at `temperature`, `decode` is the VAE decoder, `features` is [z, h] (the controller's input).
    """

    def __init__(self, vae: ConvVAE, mdnrnn: MDNRNN, observe_sample: bool = True):
        super().__init__()
        if vae.z_dim != mdnrnn.z_dim:
            raise ValueError(f"VAE z_dim {vae.z_dim} != MDN-RNN z_dim {mdnrnn.z_dim}")
        self.vae, self.mdnrnn, self.observe_sample = vae, mdnrnn, observe_sample
        self.temperature = mdnrnn.cfg.temperature
        self.action_dim = mdnrnn.action_dim

    @property
    def device(self) -> torch.device:
        return self.mdnrnn.device

    @property
    def feature_dim(self) -> int:
        return self.vae.z_dim + self.mdnrnn.cfg.hidden

    def initial(self, batch_size: int) -> State:
        return self.mdnrnn.initial(batch_size)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., 64, 64, C) -> z (...,), sampled or the mean."""
        mu, logvar = self.vae.encode(obs)
        return ConvVAE.sample(mu, logvar) if self.observe_sample else mu

    def observe(self, obs, action, is_first, state: State | None = None) -> State:
        """States (B, T) for uint8 obs (B, T, 64, 64, C), action (B, T, A), is_first (B, T)."""
        obs = torch.as_tensor(obs, device=self.device)
        action = torch.as_tensor(action, device=self.device, dtype=torch.float32)
        is_first = torch.as_tensor(is_first, device=self.device, dtype=torch.bool)
        z = self.encode(obs)
        h, c = self.mdnrnn.filter(z, action, is_first, state)
        return {"z": z, "h": h, "c": c}

    def img_step(self, state: State, action: torch.Tensor) -> State:
        """state (...,), action (..., A) -> next state with z sampled at `temperature`."""
        h, c = self.mdnrnn.step(state["z"], action, state["h"], state["c"])
        z = sample_mdn(*self.mdnrnn.mixture(h), self.temperature)
        return {"z": z, "h": h, "c": c}

    def imagine(self, state: State, actions: torch.Tensor) -> State:
        """state (B,), actions (B, H, A) -> states (B, H); states[:, h] follows actions[:, h]."""
        return open_loop(self, state, actions)

    def features(self, state: State) -> torch.Tensor:
        """[z, h]: (..., z_dim + hidden)."""
        return torch.cat([state["z"], state["h"]], -1)

    def reward(self, state: State) -> torch.Tensor:
        """Predicted reward[t] = r_(t-1) from h_t (needs the reward head): (...,)."""
        return self.mdnrnn.reward(state["h"])

    def continuation(self, state: State) -> torch.Tensor:
        """1 - P(done) from the done head, ones without it: (...,)."""
        logit = self.mdnrnn.done_logit(state["h"])
        if logit is None:
            return torch.ones(state["h"].shape[:-1], device=state["h"].device)
        return torch.sigmoid(-logit)

    def decode(self, state: State) -> torch.Tensor:
        """The VAE's reconstruction of z: (..., 64, 64, C) floats in [0, 1]."""
        return self.vae.decode(state["z"])

    def decode_frames(self, state: State) -> torch.Tensor:
        """uint8 (..., 64, 64, C) frames, for GIFs."""
        return self.vae.decode_frames(state["z"])

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], State]:
        """The MDN-RNN loss on a replay batch (obs (B, T, 64, 64, C) uint8, action, reward,
        is_first, is_terminal); the VAE is fixed (World Models trains V before M), z sampled
        from its (mu, logvar). Returns (loss, metrics, states (B, T))."""
        obs = torch.as_tensor(batch["obs"], device=self.device)
        with torch.no_grad():
            z = ConvVAE.sample(*self.vae.encode(obs))

        def get(key, dtype):
            value = batch.get(key)
            return None if value is None else torch.as_tensor(value, device=self.device,
                                                              dtype=dtype)  # fmt: skip

        loss, metrics, (h, c) = self.mdnrnn.sequence_loss(
            z,
            get("action", torch.float32),
            get("is_first", torch.bool),
            reward=get("reward", torch.float32),
            is_terminal=get("is_terminal", torch.bool),
            cells=True,
        )
        return loss, {k: float(v) for k, v in metrics.items()}, {"z": z, "h": h, "c": c}
