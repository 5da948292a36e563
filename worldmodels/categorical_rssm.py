"""DreamerV2's world model (Hafner et al. 2021): an RSSM whose stochastic state is 32 categorical
variables of 32 classes each, sampled with straight-through gradients, trained with KL balancing.
Sizes and losses follow danijar/dreamerv2's `dmc_vision` config (deter and hidden 200, ELU, CNN
depth 48, MLP heads 4 x 400, no discount head, KL free 1.0, balance 0.8, free_avg).

Timing, as in the replay (`envs/replay.py`) and the PlaNet RSSM (`worldmodels/rssm.py`): row t
holds o_t, action[t] = a_(t-1), reward[t] = r_(t-1), is_terminal[t]:

    h_t     = GRU(h_(t-1), dense(z_(t-1), action[t]))        deterministic path, `deter`
    prior_t = p(z_t | h_t)              32 x 32 logits        `img_out`
    post_t  = q(z_t | h_t, embed(o_t))  32 x 32 logits        `obs_out`
    decoder(z_t, h_t) ~ o_t,  reward(z_t, h_t) ~ reward[t] = r_(t-1),
    discount(z_t, h_t) ~ 1 - is_terminal[t]   (only with `pred_discount`)

Where is_first[t], the state at t-1 and action[t] are replaced by `initial` (zeros).

A state is a dict with leading dims (B,) or (B, T): "deter" (..., deter), "logits" and "stoch"
(..., stoch, classes); stoch is a one-hot sample carrying the straight-through gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wmrl.infra.metrics import metric_floats
from wmrl.infra.runtime import autocast
from wmrl.worldmodels.nets import (
    ConvDecoder,
    ConvEncoder,
    LayerNormGRUCell,
    TwoHot,
    gaussian_nll,
    init_,
    mlp,
    symexp,
    symlog,
    zero_output_,
)
from wmrl.worldmodels.rssm import RecurrentStateSpaceModel

State = dict[str, torch.Tensor]


@dataclass
class CategoricalRSSMConfig:
    """danijar/dreamerv2 configs.yaml, `defaults` overridden by `dmc_vision`."""

    deter: int = 200  # GRU state h_t (dmc_vision; 1024 by default, 600 for Atari)
    hidden: int = 200  # width of img_in, img_out and obs_out
    stoch: int = 32  # categorical latents
    classes: int = 32  # classes per latent (danijar's `discrete`)
    cnn_depth: int = 48  # encoder 48-96-192-384, decoder 192-96-48-C
    mlp_layers: int = 4  # hidden layers of the heads (reward, discount, vector encoder/decoder)
    mlp_units: int = 400
    pred_discount: bool = False  # a continuation head (dmc_vision: False, no episode ends)
    kl_balance: float = 0.8  # weight of KL(sg(post) || prior); 1 - it goes to the posterior
    free_nats: float = 1.0  # dmc_vision's kl.free (defaults and Atari: 0.0)
    free_avg: bool = True  # max(mean KL, free) rather than mean max(KL, free)
    kl_scale: float = 1.0  # loss_scales.kl (Atari: 0.1)
    reward_scale: float = 1.0  # loss_scales.reward
    discount_scale: float = 1.0  # loss_scales.discount (Atari: 5.0)
    lr: float = 3e-4  # model_opt.lr (dmc_vision)
    adam_eps: float = 1e-5
    grad_clip: float = 100.0  # global gradient norm
    weight_decay: float = 1e-6  # w <- (1 - wd) w every step, as danijar's optimizer
    # DreamerV3's changes (Hafner et al. 2023), off as DreamerV2 has them; free bits per step
    # are free_avg false.
    unimix: float = 0.0  # share of a uniform mixed into every categorical (V3: 0.01)
    symlog_obs: bool = False  # vector observations enter the encoder and are decoded as symlog
    reward_bins: int = 0  # > 0: a two-hot reward head over this many symlog bins (V3: 255),
    # else a unit Gaussian
    init: Literal["torch", "keras"] = "torch"  # keras: glorot-uniform weights, zero biases


def straight_through_onehot(logits: torch.Tensor) -> torch.Tensor:
    """A one-hot sample of Categorical(logits) over the last dim whose gradient is that of the
    probabilities (danijar's OneHotDist.sample): sample + probs - sg(probs).

    (..., K) logits -> (..., K) one-hot (up to rounding: probs - sg(probs) is 0 or 1 ulp).

    The index is drawn by inverse CDF, #{k : cumsum(probs)_k < u} with u ~ U[0, 1): exact, and
    one batched comparison where torch.multinomial samples each of a batch's categoricals
    (16 x 50 x 32 of them) in turn."""
    probs = F.softmax(logits.float(), -1)
    u = torch.rand(probs.shape[:-1] + (1,), device=probs.device)
    K = probs.shape[-1]
    index = (probs.cumsum(-1) < u).sum(-1).clamp(max=K - 1)  # rounding: cumsum[-1] may be < u
    sample = F.one_hot(index, K).to(probs.dtype)
    return sample + probs - probs.detach()


def kl_categorical(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of independent categoricals (..., stoch, classes), summed over the latents:
    (...)."""
    q_log, p_log = F.log_softmax(q_logits.float(), -1), F.log_softmax(p_logits.float(), -1)
    return (q_log.exp() * (q_log - p_log)).sum((-2, -1))


def kl_balance_loss(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    balance: float = 0.8,
    free: float = 0.0,
    free_avg: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL balancing (paper, algorithm 2; danijar's `kl_loss` with forward=False):

        balance * KL(sg(post) || prior) + (1 - balance) * KL(post || sg(prior))

    each term max(mean KL, free) with `free_avg`, else mean max(KL, free); means over batch and
    time. Both terms have the same value, so only the gradients are split: `balance` trains the
    prior towards the posterior, 1 - balance regularises the posterior.

    Returns (scalar loss, KL per step (...) without free nats, for logging).
    """
    value = kl_categorical(post_logits, prior_logits)
    train_prior = kl_categorical(post_logits.detach(), prior_logits)
    train_post = kl_categorical(post_logits, prior_logits.detach())
    if free_avg:
        loss_prior = torch.clamp(train_prior.mean(), min=free)
        loss_post = torch.clamp(train_post.mean(), min=free)
    else:
        loss_prior = torch.clamp(train_prior, min=free).mean()
        loss_post = torch.clamp(train_post, min=free).mean()
    return balance * loss_prior + (1 - balance) * loss_post, value.detach()


class CategoricalRSSM(RecurrentStateSpaceModel):
    """DreamerV2's world model implementing `worldmodels.protocol.WorldModel`.

    Args:
        obs_shape: (64, 64, C) uint8 pixels (CNN encoder and decoder, pixels scaled to
            x / 255 - 0.5) or (obs_dim,) vectors (MLP encoder and decoder of `mlp_layers` x
            `mlp_units`, the dmc_proprio setup).
        action_dim: A.
    """

    def __init__(
        self, obs_shape: tuple[int, ...], action_dim: int, cfg: CategoricalRSSMConfig | None = None
    ):
        super().__init__()
        self.cfg = cfg = cfg or CategoricalRSSMConfig()
        self.obs_shape, self.action_dim = tuple(obs_shape), int(action_dim)
        self.pixels = self._check_obs_shape(self.obs_shape)
        act, units, layers = nn.ELU, cfg.mlp_units, cfg.mlp_layers
        self.latent_dim = cfg.stoch * cfg.classes
        self.feat_dim = self.latent_dim + cfg.deter
        if self.pixels:
            channels = self.obs_shape[2]
            self.encoder = ConvEncoder(channels, depth=cfg.cnn_depth, act=act)
            self.decoder = ConvDecoder(self.feat_dim, channels, depth=cfg.cnn_depth, act=act)
            embed_dim = self.encoder.embed_dim
        else:
            # danijar's MLP encoder ends on its last activation: `layers` Linear+ELU.
            self.encoder = nn.Sequential(
                mlp(self.obs_shape[0], units, units, layers - 1, act), act()
            )
            self.decoder = mlp(self.feat_dim, self.obs_shape[0], units, layers, act)
            embed_dim = units
        self.img_in = nn.Sequential(nn.Linear(self.latent_dim + action_dim, cfg.hidden), act())
        self.gru = LayerNormGRUCell(cfg.hidden, cfg.deter)
        self.img_out = mlp(cfg.deter, self.latent_dim, cfg.hidden, 1, act)  # prior
        self.obs_out = mlp(cfg.deter + embed_dim, self.latent_dim, cfg.hidden, 1, act)  # post
        self.reward_head = mlp(self.feat_dim, cfg.reward_bins or 1, units, layers, act)
        self.discount_head = (
            mlp(self.feat_dim, 1, units, layers, act) if cfg.pred_discount else None
        )
        init_(self, cfg.init)
        if cfg.reward_bins:
            zero_output_(self.reward_head)

    # ------------------------------------------------------------------------------ states
    def initial(self, batch_size: int) -> State:
        """Zeros (danijar's initial state): deter (B, deter), logits and stoch (B, stoch, K)."""
        cfg = self.cfg
        zeros = torch.zeros(batch_size, cfg.stoch, cfg.classes, device=self.device)
        deter = torch.zeros(batch_size, cfg.deter, device=self.device)
        return {"deter": deter, "logits": zeros, "stoch": zeros}

    def _latent(self, x: torch.Tensor, deter: torch.Tensor) -> State:
        logits = x.float().unflatten(-1, (self.cfg.stoch, self.cfg.classes))
        if self.cfg.unimix:  # V3: probs (1 - u) softmax + u / K, whose logs are the logits
            probs = F.softmax(logits, -1)
            probs = (1 - self.cfg.unimix) * probs + self.cfg.unimix / self.cfg.classes
            logits = probs.log()
        return {"deter": deter, "logits": logits, "stoch": straight_through_onehot(logits)}

    def img_step(self, state: State, action: torch.Tensor) -> State:
        """Prior step: state (...,), action (..., A) -> prior state (...,)."""
        x = self.img_in(torch.cat([state["stoch"].flatten(-2), action], -1))
        deter = self.gru(x, state["deter"])
        return self._latent(self.img_out(deter), deter)

    # ------------------------------------------------------------------------------- heads
    def features(self, state: State) -> torch.Tensor:
        """concat(stoch flattened, deter): (..., stoch * classes + deter)."""
        return torch.cat([state["stoch"].flatten(-2), state["deter"]], -1)

    def reward(self, state: State) -> torch.Tensor:
        """Mean predicted reward for arriving in `state`: (...,)."""
        out = self.reward_head(self.features(state)).float()
        return TwoHot(out).mean() if self.cfg.reward_bins else out.squeeze(-1)

    def _reward_loss(self, state: State, reward: torch.Tensor) -> torch.Tensor:
        out = self.reward_head(self.features(state)).float()
        if self.cfg.reward_bins:
            return TwoHot(out).loss(reward)
        return gaussian_nll(out.squeeze(-1), reward, 0)

    def continuation(self, state: State) -> torch.Tensor:
        """Probability that the episode goes on after `state` (...,): the discount head's
        Bernoulli mean with `pred_discount`, else ones (dmc has no episode ends)."""
        if self.discount_head is None:
            return torch.ones(state["deter"].shape[:-1], device=state["deter"].device)
        return torch.sigmoid(self.discount_head(self.features(state)).squeeze(-1).float())

    def decode(self, state: State) -> torch.Tensor:
        """The decoder's mean (..., *obs_shape): pixels in the preprocessed scale [-0.5, 0.5]
        (`decode_frames` gives uint8), vectors in the observation's (symexp of the decoder's
        output with `symlog_obs`)."""
        out = self.decoder(self.features(state)).float()
        return symexp(out) if self.cfg.symlog_obs and not self.pixels else out

    def decode_frames(self, state: State) -> torch.Tensor:
        """Decoded pixels as uint8 (..., 64, 64, C) frames, for GIFs."""
        return ((self.decode(state) + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)

    # ------------------------------------------------------------------------------ inputs
    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations on the device -> the encoder's input and the decoder's target:
        x / 255 - 0.5 for uint8 pixels (danijar's `preprocess`), float32 vectors (symlog'd with
        `symlog_obs`)."""
        if not self.pixels:
            return symlog(obs.float()) if self.cfg.symlog_obs else obs.float()
        if obs.dtype != torch.uint8:
            raise ValueError(
                f"pixel observations must be uint8 0..255 (as the replay stores them), got "
                f"{obs.dtype}"
            )
        return obs.float() / 255.0 - 0.5

    # -------------------------------------------------------------------------------- loss
    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        cfg = self.cfg
        obs, action, is_first = self._inputs(batch["obs"], batch["action"], batch["is_first"])
        reward = torch.as_tensor(batch["reward"], device=self.device, dtype=torch.float32)
        target = self.preprocess(obs)
        post, prior = self._filter(self.encoder(target), action, is_first, None)
        feat = self.features(post)
        obs_loss = gaussian_nll(self.decoder(feat).float(), target, len(self.obs_shape)).mean()
        reward_loss = self._reward_loss(post, reward).mean()
        kl_loss, kl = kl_balance_loss(
            post["logits"], prior["logits"], cfg.kl_balance, cfg.free_nats, cfg.free_avg
        )
        loss = obs_loss + cfg.reward_scale * reward_loss + cfg.kl_scale * kl_loss
        metrics = {
            "loss": loss,
            "obs_loss": obs_loss,
            "reward_loss": reward_loss,
            "kl": kl.mean(),
            "kl_loss": kl_loss,
            "prior_ent": _entropy(prior["logits"]).mean(),
            "post_ent": _entropy(post["logits"]).mean(),
        }
        if self.discount_head is not None:
            if "is_terminal" not in batch:
                raise ValueError("pred_discount needs the batch's is_terminal (B, T)")
            cont = 1.0 - torch.as_tensor(batch["is_terminal"], device=self.device).float()
            logits = self.discount_head(feat).squeeze(-1).float()
            discount_loss = F.binary_cross_entropy_with_logits(logits, cont)
            loss = loss + cfg.discount_scale * discount_loss
            metrics.update(loss=loss, discount_loss=discount_loss)
        return loss, {k: v.detach() for k, v in metrics.items()}, post

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], State]:
        """Negative ELBO with KL balancing on a replay batch (keys of `EpisodeReplay.sample`:
        obs (B, T, ...), action (B, T, A), reward (B, T), is_first (B, T), and is_terminal with
        `pred_discount`; numpy or tensors).

        loss = E[-ln p(o_t | z_t, h_t)] + reward_scale E[-ln p(r | z_t, h_t)] + kl_scale kl_loss
        (+ discount_scale BCE(continuation, 1 - is_terminal)); NLLs of unit Gaussians summed over
        pixels and channels, every term averaged over batch and time, kl_loss from
        `kl_balance_loss`.

        Returns (scalar loss, metrics as floats, posterior states (B, T), still in the graph).
        """
        loss, metrics, post = self._loss(batch)
        return loss, metric_floats(metrics), post

    def _precision(self):
        return autocast(self.device)  # bf16 on CUDA

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer, sync: bool = True):
        """One update: loss (bf16 autocast on CUDA), backward, clipping to global norm
        `grad_clip`, optimizer step; `update` of the base class.

        With `sync` the metrics come back as floats, and a non-finite loss or gradient raises
        FloatingPointError before the step touches the weights. Without it nothing waits for
        the device: the metrics are device tensors, to check when the caller syncs (see
        `RecurrentStateSpaceModel._optimize`).

        Returns (metrics plus `grad_norm`, posterior states (B, T) detached).
        """
        return self.update(batch, optimizer, sync)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), -1)
    return -(log_p.exp() * log_p).sum((-2, -1))
