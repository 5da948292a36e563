"""PlaNet's recurrent state-space model (Hafner et al. 2019) with Gaussian latents: the model, its
variational bound with free nats, and latent overshooting. Faithful to google-research/planet
(`models/rssm.py`, `networks/conv_ha.py`, `scripts/configs.py`).

Timing, as in the replay (`envs/replay.py`): row t holds o_t, action[t] = a_(t-1) and
reward[t] = r_(t-1), so the prior at t is computed from the state at t-1 and action[t]:

    h_t     = GRU(h_(t-1), dense(s_(t-1), action[t]))       deterministic path, `deter`
    prior_t = p(s_t | h_t)              = N(mean, softplus(.) + min_std)     `stoch`
    post_t  = q(s_t | h_t, embed(o_t))  = N(mean, softplus(.) + min_std)
    decoder(h_t, s_t) ~ o_t             reward head(h_t, s_t) ~ reward[t] = r_(t-1)

Where is_first[t], the state at t-1 is replaced by `initial` (and action[t] by zeros).

A state is a dict of tensors with leading dims (B,) or (B, T): "deter" (..., deter), "mean",
"std", "stoch" (..., stoch), the latter three describing the prior or the posterior.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmrl.infra.metrics import metric_floats, settle_metrics
from wmrl.infra.runtime import compile_methods
from wmrl.worldmodels.nets import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    gaussian_nll,
    mlp,
    postprocess_obs,
    preprocess_obs,
)
from wmrl.worldmodels.protocol import open_loop, stack_states

State = dict[str, torch.Tensor]


@dataclass
class RSSMConfig:
    """PlaNet's hyperparameters (paper, appendix A, and google-research/planet's configs)."""

    deter: int = 200  # GRU state h_t
    stoch: int = 30  # Gaussian latent s_t
    hidden: int = 200  # dense layers of transition and posterior; state encoder/decoder width
    reward_hidden: int = 100  # reward head: 2 ReLU layers of this width (planet's feed_forward)
    min_std: float = 0.1  # std = softplus(x) + min_std
    mean_only: bool = False  # states take the mean instead of a sample (planet's `mean_only`)
    image_bits: int = 5  # pixel quantisation, see `preprocess_obs`
    free_nats: float = 3.0  # KL per time step is max(KL, free_nats)
    kl_scale: float = 1.0  # scale of the one-step (standard) KL; eq. 7's beta_1 = D * kl_scale
    reward_scale: float = 10.0  # planet's configs.py `reward_scale` (the paper does not state it)
    overshooting_distance: int = 1  # D; 1 = the standard bound (planet configs with free nats 3)
    overshooting_kl_scale: float = 1.0  # beta_d for every d > 1
    overshooting_reward_scale: float = 0.0  # reward prediction from d-step priors (0 = off)
    lr: float = 1e-3
    adam_eps: float = 1e-4
    grad_clip: float = 1000.0  # global gradient norm


def kl_normal(q: State, p: State) -> torch.Tensor:
    """KL(N(q.mean, q.std) || N(p.mean, p.std)) summed over the latent dims: (...)."""
    var_ratio = (q["std"] / p["std"]) ** 2
    mahalanobis = ((q["mean"] - p["mean"]) / p["std"]) ** 2
    return 0.5 * (var_ratio + mahalanobis - 1 - torch.log(var_ratio)).sum(-1)


class RecurrentStateSpaceModel(nn.Module):
    """What PlaNet's Gaussian RSSM and DreamerV2's categorical one share: the filtering loop
    (prior step, then posterior step, resetting to `initial` where is_first), open-loop
    imagination, the input checks and the choice of encoder and decoder. A subclass sets
    `img_in` (its first layer fixes the device), `initial`, `img_step`, `obs_step`,
    `features` and `preprocess`."""

    img_in: nn.Sequential

    @property
    def device(self) -> torch.device:
        return self.img_in[0].weight.device

    def _check_obs_shape(self, obs_shape: tuple[int, ...]) -> bool:
        """True for pixels (64, 64, C), False for vectors (obs_dim,); a clear error otherwise."""
        if len(obs_shape) == 3:
            if obs_shape[:2] != (64, 64):
                raise ValueError(
                    f"pixel observations must be (64, 64, C) for the conv encoder, got "
                    f"{obs_shape}; render at 64x64 (envs.make's default)"
                )
            return True
        if len(obs_shape) == 1:
            return False
        raise ValueError(
            f"obs_shape {obs_shape} is neither pixels (64, 64, C) nor a vector (obs_dim,); "
            "flatten vector observations"
        )

    def obs_step(self, prior: State, embed: torch.Tensor) -> State:
        """Posterior from the prior's h_t and the observation's embedding (..., E)."""
        return self._latent(self.obs_out(torch.cat([prior["deter"], embed], -1)), prior["deter"])

    def imagine(self, state: State, actions: torch.Tensor) -> State:
        """Open-loop prior rollout: state (B,), actions (B, H, A) -> states (B, H), where
        states[:, h] follows actions[:, h]."""
        return open_loop(self, state, actions)

    def observe(self, obs, action, is_first, state: State | None = None) -> State:
        """Posterior states (B, T) for obs (B, T, *obs_shape), action (B, T, A), is_first (B, T);
        see the module's timing diagram. For one step, pass T = 1 and the last posterior."""
        return self.observe_with_prior(obs, action, is_first, state)[0]

    def observe_with_prior(self, obs, action, is_first, state: State | None = None):
        """As `observe`, returning (posterior states, one-step prior states), both (B, T)."""
        obs, action, is_first = self._inputs(obs, action, is_first)
        return self._filter(self.encoder(self.preprocess(obs)), action, is_first, state)

    def _filter(self, embed, action, is_first, state):
        B, T = is_first.shape
        init = self.initial(B)
        state = init if state is None else state
        action = action * ~is_first[..., None]
        posts, priors = [], []
        for t in range(T):
            state, prior = self._filter_step(state, init, is_first[:, t], action[:, t], embed[:, t])
            posts.append(state)
            priors.append(prior)
        return stack_states(posts), stack_states(priors)

    def _filter_step(self, state: State, init: State, reset, action, embed):
        """One filtering step (B,): reset to `init` where `reset`, prior, then posterior.
        Returns (posterior, prior)."""
        state = {k: torch.where(_expand(reset, v), init[k], v) for k, v in state.items()}
        prior = self.img_step(state, action)
        return self.obs_step(prior, embed), prior

    def compile_steps(self, **options) -> None:
        """torch.compile the per-step functions that the filtering loop, imagination and
        planning call once per time step (`_filter_step`, `img_step`), `options` passed on:
        each step's small kernels fuse into a few, and the loops stay in Python. The weights
        and the checkpoints are unchanged."""
        compile_methods(self, ("_filter_step", "img_step"), **options)

    def _inputs(self, obs, action, is_first):
        obs = torch.as_tensor(obs, device=self.device)  # uint8 crosses to the device as uint8
        if tuple(obs.shape[2:]) != self.obs_shape:
            raise ValueError(
                f"obs {tuple(obs.shape)} is not (B, T, *{self.obs_shape}); add a time "
                "dimension of 1 for a single step"
            )
        action = torch.as_tensor(action, device=self.device, dtype=torch.float32)
        is_first = torch.as_tensor(is_first, device=self.device, dtype=torch.bool)
        return obs, action, is_first

    def update(
        self, batch: dict, optimizer: torch.optim.Optimizer, sync: bool = True, objective=None
    ):
        """One update on a replay batch (`loss`'s keys): loss, backward, clipping to the global
        norm `cfg.grad_clip`, optimizer step; the same for every model of this family, so a
        training loop takes either (DreamerV2's loop with PlaNet's RSSM is DreamerV1's learner).

        `objective` (batch -> what `_loss` returns) computes the loss in place of `_loss`: a
        data-parallel loop passes its `ModelLoss(self)` wrapped in DDP, whose backward then
        averages the gradients over the ranks.

        Returns (metrics plus `grad_norm`, posterior states (B, T) detached); the metrics as
        with `_optimize`'s `sync`."""
        with self._precision():
            loss, metrics, post = (objective or self._loss)(batch)
        out = self._optimize(loss, metrics, optimizer, sync)
        return out, {k: v.detach() for k, v in post.items()}

    def _precision(self):
        """The context the loss runs in: full precision here (PlaNet); a subclass may autocast."""
        return contextlib.nullcontext()

    def _optimize(self, loss, metrics: dict, optimizer, sync: bool = True) -> dict:
        """Backward, clip to the global norm `cfg.grad_clip`, step; returns the metrics plus
        `grad_norm` (before clipping).

        sync=True: the metrics as floats, in one host sync, and a non-finite loss or gradient
        raises FloatingPointError before the step touches the weights.
        sync=False: nothing waits for the device. The metrics stay detached device tensors, and
        the caller checks them when it syncs anyway (`check_finite`): a non-finite step has
        then already made the weights non-finite, so check before saving a checkpoint."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = nn.utils.clip_grad_norm_(self.parameters(), self.cfg.grad_clip)
        out = settle_metrics(
            metrics,
            sync,
            f"{type(self).__name__} loss or gradient",
            "lower the learning rate or check the batch for NaN observations or rewards",
        )
        optimizer.step()
        return out


class ModelLoss(nn.Module):
    """A world model's training loss as a module's `forward` (batch -> (loss, metrics, posterior
    states), as `_loss`), for DistributedDataParallel: DDP averages the gradients only of a
    backward that follows a forward through it, and this module's parameters are exactly the
    model's. Pass it, wrapped, to `update` as `objective`."""

    def __init__(self, model: RecurrentStateSpaceModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        return self.model._loss(batch)


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) mask with trailing singleton dims to broadcast against `like` (B, ...)."""
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


class RSSM(RecurrentStateSpaceModel):
    """Gaussian RSSM implementing `worldmodels.protocol.WorldModel`.

    Args:
        obs_shape: (64, 64, C) for uint8 pixels (World Models conv encoder/decoder) or
            (obs_dim,) for vector observations (MLP encoder/decoder).
        action_dim: A.
    """

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: RSSMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RSSMConfig()
        self.obs_shape, self.action_dim = tuple(obs_shape), int(action_dim)
        self.pixels = self._check_obs_shape(self.obs_shape)
        self.feat_dim = feat = cfg.deter + cfg.stoch  # the size of `features`
        if self.pixels:
            self.encoder = ConvEncoder(self.obs_shape[2])
            self.decoder = ConvDecoder(feat, self.obs_shape[2])
        else:
            self.encoder = MLPEncoder(self.obs_shape[0], cfg.hidden, cfg.hidden)
            self.decoder = MLPDecoder(feat, cfg.hidden, self.obs_shape[0])
        self.img_in = nn.Sequential(nn.Linear(cfg.stoch + action_dim, cfg.hidden), nn.ReLU())
        self.gru = nn.GRUCell(cfg.hidden, cfg.deter)
        self.img_out = mlp(cfg.deter, 2 * cfg.stoch, cfg.hidden, 1)  # prior p(s_t | h_t)
        self.obs_out = mlp(cfg.deter + self.encoder.embed_dim, 2 * cfg.stoch, cfg.hidden, 1)
        self.reward_head = mlp(feat, 1, cfg.reward_hidden, 2)

    # ------------------------------------------------------------------------------ states
    def initial(self, batch_size: int) -> State:
        """Zeros for deter, mean and stoch; ones for std (so it is a valid distribution)."""
        zeros = torch.zeros(batch_size, self.cfg.stoch, device=self.device)
        deter = torch.zeros(batch_size, self.cfg.deter, device=self.device)
        return {"deter": deter, "mean": zeros, "std": torch.ones_like(zeros), "stoch": zeros}

    def _latent(self, x: torch.Tensor, deter: torch.Tensor) -> State:
        mean, std = x.chunk(2, -1)
        std = F.softplus(std) + self.cfg.min_std
        stoch = mean if self.cfg.mean_only else mean + std * torch.randn_like(std)
        return {"deter": deter, "mean": mean, "std": std, "stoch": stoch}

    def img_step(self, state: State, action: torch.Tensor) -> State:
        """Prior step: state (...,), action (..., A) -> prior state (...,)."""
        x = self.img_in(torch.cat([state["stoch"], action], -1))
        lead = x.shape[:-1]  # GRUCell takes one batch dim; (B, T) batches are flattened
        deter = self.gru(x.reshape(-1, x.shape[-1]), state["deter"].reshape(-1, self.cfg.deter))
        deter = deter.reshape(*lead, self.cfg.deter)
        return self._latent(self.img_out(deter), deter)

    # ------------------------------------------------------------------------------- heads
    def features(self, state: State) -> torch.Tensor:
        """concat(deter, stoch): (..., deter + stoch)."""
        return torch.cat([state["deter"], state["stoch"]], -1)

    def reward(self, state: State) -> torch.Tensor:
        """Mean predicted reward for arriving in `state`: (...,)."""
        return self.reward_head(self.features(state)).squeeze(-1)

    def continuation(self, state: State) -> torch.Tensor:
        """PlaNet does not predict episode ends: ones (...,)."""
        return torch.ones(state["deter"].shape[:-1], device=state["deter"].device)

    def decode(self, state: State) -> torch.Tensor:
        """The decoder's mean (..., *obs_shape). Pixels come in the preprocessed scale
        [-0.5, 0.5) (PlaNet's; `decode_frames` gives uint8); vectors in the observation's."""
        return self.decoder(self.features(state))

    def decode_frames(self, state: State) -> torch.Tensor:
        """Decoded pixels as uint8 (..., 64, 64, C) frames, for GIFs."""
        return postprocess_obs(self.decode(state), self.cfg.image_bits)

    # ------------------------------------------------------------------------------ inputs
    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations on the device -> the decoder's target scale (`preprocess_obs` for
        pixels, with dequantisation noise as in PlaNet's training and acting; float32 for
        vectors)."""
        if not self.pixels:
            return obs.float()
        if obs.dtype != torch.uint8:
            raise ValueError(
                f"pixel observations must be uint8 0..255 (as the replay stores them), got "
                f"{obs.dtype}; convert with postprocess_obs or keep the raw frames"
            )
        return preprocess_obs(obs, self.cfg.image_bits)

    # -------------------------------------------------------------------------------- loss
    def latent_overshooting(self, post: State, prior: State, action, is_first, reward=None):
        """The KL terms of latent overshooting (paper, sec. 4, eq. 7), one per distance.

        kl[d-1] = mean over the (b, t) where p_d exists of max(KL(q_t || p_d,t), free_nats),
        d = 1..D, with the KL summed over latent dims. p_1 = `prior` (observe's one-step prior;
        q_t keeps its gradient, so d = 1 is exactly the standard bound's KL); for d > 1,
        p_d,t = img_step(p_(d-1),(t-1), action[t]) is the open-loop prior from the posterior at
        t-d through actions t-d+1..t, and q_t is stop-gradient (the paper trains multi-step
        predictions towards the posteriors, not the other way around). p_d,t exists for
        t >= d-1 (t-d = -1 starts from the state before the chunk) when no is_first lies in
        t-d+2..t: an open loop never crosses an episode start.

        Args:
            post, prior: (B, T) from `observe_with_prior`; action (B, T, A); is_first (B, T);
            reward (B, T), only used when overshooting_reward_scale > 0.
        Returns:
            kl (D,) and the reward NLL of the d-step priors (D-1,) (zeros when off).
        """
        cfg = self.cfg
        kls = [torch.clamp(kl_normal(post, prior), min=cfg.free_nats).mean()]
        rewards = []
        target = {"mean": post["mean"].detach(), "std": post["std"].detach()}
        state, valid = prior, torch.ones_like(is_first)
        for d in range(2, cfg.overshooting_distance + 1):
            # Slot t of p_d sits at index t - (d-1): every step drops the first time step.
            state = self.img_step({k: v[:, :-1] for k, v in state.items()}, action[:, d - 1 :])
            valid = valid[:, :-1] & ~is_first[:, d - 1 :]
            mask, count = valid.float(), valid.sum().clamp(min=1)
            q_t = {k: v[:, d - 1 :] for k, v in target.items()}
            kl = torch.clamp(kl_normal(q_t, state), min=cfg.free_nats)
            kls.append((kl * mask).sum() / count)
            if cfg.overshooting_reward_scale:
                nll = gaussian_nll(self.reward(state), reward[:, d - 1 :], 0)
                rewards.append((nll * mask).sum() / count)
        zero = kls[0].new_zeros(max(cfg.overshooting_distance - 1, 0))
        return torch.stack(kls), torch.stack(rewards) if rewards else zero

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        cfg = self.cfg
        D = cfg.overshooting_distance
        obs, action, is_first = self._inputs(batch["obs"], batch["action"], batch["is_first"])
        reward = torch.as_tensor(batch["reward"], device=self.device, dtype=torch.float32)
        if not 1 <= D <= is_first.shape[1]:
            raise ValueError(
                f"overshooting_distance={D} must lie in [1, chunk length {is_first.shape[1]}]; "
                "sample longer chunks or lower it"
            )
        target = self.preprocess(obs)
        post, prior = self._filter(self.encoder(target), action, is_first, None)
        feat = self.features(post)
        obs_loss = gaussian_nll(self.decoder(feat), target, len(self.obs_shape)).mean()
        reward_loss = gaussian_nll(self.reward_head(feat).squeeze(-1), reward, 0).mean()
        kl, os_reward = self.latent_overshooting(post, prior, action, is_first, reward)
        # Eq. 7 weights distance d by beta_d / D. Taking beta_1 = D * kl_scale cancels the 1/D
        # of the one-step term (as Kaixhin/PlaNet's main.py does), so it stays the standard
        # bound's KL whatever D, and each d > 1 gets overshooting_kl_scale / D.
        kl_loss = cfg.kl_scale * kl[0] + cfg.overshooting_kl_scale / D * kl[1:].sum()
        loss = (
            obs_loss
            + cfg.reward_scale * reward_loss
            + cfg.overshooting_reward_scale / D * os_reward.sum()
            + kl_loss
        )
        metrics = {
            "loss": loss,
            "obs_loss": obs_loss,
            "reward_loss": reward_loss,
            "kl": kl_normal(post, prior).mean(),  # before free nats
            "kl_loss": kl_loss,
            "post_std": post["std"].mean(),
            "prior_std": prior["std"].mean(),
        }
        if D > 1:
            metrics["overshooting_kl"] = kl[1:].mean()
            metrics["overshooting_reward_loss"] = os_reward.mean()
        return loss, {k: v.detach() for k, v in metrics.items()}, post

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], State]:
        """Negative bound on a replay batch (keys of `EpisodeReplay.sample`: obs (B, T, ...),
        action (B, T, A), reward (B, T), is_first (B, T); numpy or tensors).

        loss = E[-ln p(o_t | s_t)] + reward_scale E[-ln p(r | s_t)] + kl_loss, the NLLs of unit
        Gaussians summed over pixels and channels (or vector dims), every term averaged over
        batch and time; kl_loss from `latent_overshooting` (with D = 1 it is
        kl_scale * mean max(KL, free_nats)).

        Returns:
            (scalar loss, metrics as floats, posterior states (B, T), still in the graph).
        """
        loss, metrics, post = self._loss(batch)
        return loss, metric_floats(metrics), post

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One update: loss, backward, gradient clipping to global norm `grad_clip` (PlaNet's
        clip_by_global_norm), Adam step. Raises FloatingPointError on a non-finite loss before
        the step touches the weights. Returns the metrics plus `grad_norm` (before clipping)."""
        return self.update(batch, optimizer)[0]
