"""Plan2Explore (Sekar et al. 2020) as LEXA's explorer uses it (Mendonca et al. 2021), on
DreamerV2's world model: danijar/dreamerv2 `expl.py` (the Plan2Explore class) with the
`disag_*` and `expl_*` values of its configs.yaml. The training loop is DreamerV2's
(`planners/methods/dreamer.py`, `--explore plan2explore`).

An ensemble of one-step predictors (`worldmodels.disagreement`) learns on the replay's posterior
states to predict the next step's stochastic latent from the current state and action. Their
disagreement on imagined steps is the reward of the explorer, a second imagination actor-critic
(`planners.actor_critic.ActorCritic`, the task's class and settings) that imagines from the
same posterior starts in the same world model and acts in the env while the run explores. The
task actor-critic learns the extrinsic reward from the same replay all along, so it can be
evaluated without ever having acted (zero-shot) or take over the acting (few-shot adaptation).

Which input is paired with which target (rows t of a replay chunk, or k of an imagined
sequence; action[t] is the action that led to row t, as in `envs/replay.py` and the
actor-critic's diagram):

    row:           t-1             t                t+1
    state:         z_(t-1)         z_t              z_(t+1)
    action[row]:   a_(t-2)         a_(t-1)          a_t          a_t is taken in z_t
    "taken":       x_t = [in(z_t), action[t+1]]  ->  y = stoch(z_(t+1))     (the paper's
                   q(z_(t+1) | z_t, a_t), the default)
    "arrived":     x_t = [in(z_t), action[t]]    ->  y = stoch(z_(t+1))     (danijar's code)

A pair counts in the loss only where not is_first[t+1] (the target must follow from x_t; danijar's
chunks never cross episodes, this replay's may). In imagination (k = 0..H, z_0 the replay's
posterior), the reward at index k is for arriving in z_k, as `model.reward(z_k)` is:

    state:         z_0    z_1                 z_2                 ...  z_H
    action[k]:     0      a_1                 a_2                 ...  a_H
    "taken":       0      D(in(z_0), a_1)     D(in(z_1), a_2)     ...  D(in(z_(H-1)), a_H)
    "arrived":     D(in(z_0), 0)  D(in(z_1), a_1)  D(in(z_2), a_2) ...  D(in(z_H), a_H)

With "taken", reward[k] is the novelty of the step z_(k-1) --a_k--> z_k; nothing arrives in
z_0 in imagination, so reward[0] is 0: it enters only the critic's target at z_0, never the
actor's (which at z_k maximises t_(k+1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wmrl.infra.metrics import settle_metrics
from wmrl.infra.runtime import autocast
from wmrl.planners.actor_critic import ActorCritic, ActorCriticConfig, frozen
from wmrl.worldmodels.disagreement import DisagreementEnsemble
from wmrl.worldmodels.nets import make_optimizer

State = dict[str, torch.Tensor]


@dataclass
class Plan2ExploreConfig:
    """danijar/dreamerv2 configs.yaml, the `disag_*` and `expl_*` keys of `defaults` (neither
    dmc_vision nor dmc_proprio changes them). disag_offset is 1: one-step predictors."""

    members: int = 10  # disag_models
    layers: int = 4  # expl_head: 4 x 400, ELU, a unit-variance Gaussian output (dist mse)
    units: int = 400
    target: Literal["stoch", "deter", "feat", "embed"] = "stoch"  # disag_target
    inputs: Literal["feat", "deter"] = "feat"  # what of z_t the members read (danijar: feat)
    action_cond: bool = True  # disag_action_cond: the action is an input too
    action: Literal["taken", "arrived"] = "taken"  # which action (the module's diagram): the
    # one taken in z_t (the paper's), or the one that led to z_t (danijar's code)
    log: bool = False  # disag_log: the reward is ln(disagreement)
    intr_scale: float = 1.0  # expl_intr_scale
    extr_scale: float = 0.0  # expl_extr_scale: > 0 adds the scaled extrinsic reward
    norm_momentum: float = 1.0  # expl_reward_norm: 1 keeps the divisor at 1 (no normalising)
    norm_scale: float = 1.0
    norm_eps: float = 1e-8
    lr: float = 3e-4  # expl_opt
    adam_eps: float = 1e-5
    grad_clip: float = 100.0
    weight_decay: float = 1e-6
    init: Literal["torch", "keras"] = "torch"  # keras: glorot-uniform members, zero biases

    def __post_init__(self):
        if self.members < 2 or self.units < 1 or self.layers < 0:
            raise ValueError(
                f"p2e needs members >= 2, units >= 1, layers >= 0; got {self.members}, "
                f"{self.units}, {self.layers}"
            )


class RewardNorm(nn.Module):
    """danijar's StreamNorm for a reward: mag <- momentum mag + (1 - momentum) mean|r| over the
    batch, then r / (mag + eps) * scale. Momentum 1 (danijar's setting) leaves mag at 1, so the
    reward passes unscaled; 0 normalises by each batch alone. No host sync."""

    def __init__(self, momentum: float = 1.0, scale: float = 1.0, eps: float = 1e-8):
        super().__init__()
        self.momentum, self.scale, self.eps = momentum, scale, eps
        self.register_buffer("mag", torch.ones(()))

    def forward(self, reward: torch.Tensor) -> torch.Tensor:
        if self.momentum != 1.0:
            with torch.no_grad():
                batch = reward.detach().abs().float().mean()
                self.mag.mul_(self.momentum).add_((1 - self.momentum) * batch)
        return reward / (self.mag + self.eps) * self.scale


def target_size(model, target: str) -> int:
    """The size D of what the members predict, for a DreamerV2 or PlaNet RSSM `model`."""
    if target == "embed":
        size = getattr(model.encoder, "embed_dim", None)
        if size is None:  # DreamerV2's vector encoder: an MLP ending on its last activation
            size = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][-1].out_features
        return int(size)
    sizes = {"stoch": model.feat_dim - model.cfg.deter, "deter": model.cfg.deter}
    return sizes[target] if target in sizes else model.feat_dim  # "feat": concat(stoch, deter)


class Plan2Explore(nn.Module):
    """The disagreement ensemble with its optimiser, the reward normalisers, and the explorer
    (an `ActorCritic` with its own optimisers). Build it for a world model, then `.to(device)`.

    Args:
        model: a `worldmodels.rssm.RecurrentStateSpaceModel` (DreamerV2's categorical RSSM or
            PlaNet's Gaussian one): its states hold "deter" and "stoch".
        action_dim: A.
        ac_cfg: the explorer's settings (danijar: the task actor-critic's).
    """

    def __init__(
        self,
        model,
        action_dim: int,
        cfg: Plan2ExploreConfig | None = None,
        ac_cfg: ActorCriticConfig | None = None,
    ):
        super().__init__()
        self.cfg = cfg = cfg or Plan2ExploreConfig()
        in_dim = model.feat_dim if cfg.inputs == "feat" else model.cfg.deter
        in_dim += action_dim if cfg.action_cond else 0
        out_dim = target_size(model, cfg.target)
        self.ensemble = DisagreementEnsemble(
            in_dim, out_dim, cfg.members, cfg.units, cfg.layers, cfg.init
        )
        self.explorer = ActorCritic(model.feat_dim, action_dim, ac_cfg)
        self.intr_norm = RewardNorm(cfg.norm_momentum, cfg.norm_scale, cfg.norm_eps)
        self.extr_norm = RewardNorm(cfg.norm_momentum, cfg.norm_scale, cfg.norm_eps)
        self.optimizer = make_optimizer(
            self.ensemble.parameters(), cfg.lr, cfg.adam_eps, cfg.weight_decay
        )

    def optimizers_state_dict(self) -> dict:
        return {"ensemble": self.optimizer.state_dict(), **self.explorer.optimizers_state_dict()}

    def load_optimizers_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["ensemble"])
        self.explorer.load_optimizers_state_dict(state)

    # ------------------------------------------------------------------------- the pairing
    def member_inputs(self, inputs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The members' inputs x for a sequence (the module's diagram): inputs (B, T, I) of rows
        0..T-1 and action (B, T, A), action[t] the one that led to row t -> x (B, T', I [+ A]),
        x[:, t] predicting row t + 1. "taken": T' = T - 1 (the last row's action is not
        taken yet); "arrived": T' = T."""
        if self.cfg.action == "taken":
            inputs, action = inputs[:, :-1], action[:, 1:]
        if not self.cfg.action_cond:
            return inputs
        return torch.cat([inputs, action.to(inputs.dtype)], -1)

    def _targets(self, model, post: State, batch: dict) -> torch.Tensor:
        """What the members predict at every row: (B, T, D), without gradient."""
        target = self.cfg.target
        with torch.no_grad():
            if target == "embed":
                obs = torch.as_tensor(batch["obs"], device=post["deter"].device)
                return model.encoder(model.preprocess(obs)).float()
            if target == "stoch":
                return post["stoch"].reshape(*post["deter"].shape[:-1], -1).float()
            return (post["deter"] if target == "deter" else model.features(post)).float()

    def transitions(self, model, post: State, batch: dict):
        """The ensemble's training pairs from a replay batch's posteriors `post` (B, T):
        x (B, T-1, I'), y (B, T-1, D), mask (B, T-1) true where row t+1 follows row t (not
        is_first[t+1]); all without gradient (danijar's stop-gradients)."""
        device = post["deter"].device
        is_first = torch.as_tensor(batch["is_first"], device=device, dtype=torch.bool)
        action = torch.as_tensor(batch["action"], device=device, dtype=torch.float32)
        action = action * ~is_first[..., None]  # the zero action the model sees there
        T = is_first.shape[1]
        inputs = model.features(post) if self.cfg.inputs == "feat" else post["deter"]
        x = self.member_inputs(inputs.detach(), action)[:, : T - 1]
        return x, self._targets(model, post, batch)[:, 1:], ~is_first[:, 1:]

    # -------------------------------------------------------------------------- the reward
    def reward(self, model, seq: dict) -> tuple[torch.Tensor, dict]:
        """The explorer's reward (N, H+1) for an imagined `seq` (`ActorCritic.imagine`'s, without
        "reward"), aligned as the module's diagram: intr_scale * norm(D) (ln D with `log`),
        plus extr_scale * norm(model.reward) when extr_scale > 0. Gradients flow through the
        (frozen) members into the actions and states. Also returns the metrics
        `disagreement` and `intrinsic_reward` (means over the imagined steps that have one)."""
        cfg = self.cfg
        inputs = seq["feat"] if cfg.inputs == "feat" else seq["state"]["deter"]
        disag = self.ensemble.disagreement(self.member_inputs(inputs, seq["action"]))
        intr = cfg.intr_scale * self.intr_norm(torch.log(disag) if cfg.log else disag)
        metrics = {"disagreement": disag.mean(), "intrinsic_reward": intr.mean()}
        reward = F.pad(intr, (1, 0)) if cfg.action == "taken" else intr
        if cfg.extr_scale:
            extr = self.extr_norm(model.reward(seq["state"]).float())
            reward = reward + cfg.extr_scale * extr
        return reward, metrics

    # -------------------------------------------------------------------------- the update
    def update(self, model, post: State, batch: dict, is_terminal=None, sync: bool = True) -> dict:
        """One ensemble step on the pairs of a replay batch, then one explorer step imagining
        from its posteriors `post` (B, T) on the intrinsic reward; the world model's weights
        and the task actor-critic are not touched.

        Returns `ensemble_loss`, `ensemble_grad_norm`, `disagreement`, `intrinsic_reward` and
        the explorer's metrics as `expl/...`: floats with `sync` (a non-finite loss raises
        before its step), else device tensors, nothing waiting for the device."""
        x, y, mask = self.transitions(model, post, batch)
        with autocast(mask.device):
            loss, _ = self.ensemble.loss(x, y, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self.ensemble.parameters(), self.cfg.grad_clip)
        what, fix = "Plan2Explore's ensemble loss or gradient", "lower --p2e.lr"
        out = settle_metrics({"ensemble_loss": loss, "ensemble_grad_norm": norm}, sync, what, fix)
        self.optimizer.step()

        seen: dict = {}

        def reward_fn(seq):
            reward, metrics = self.reward(model, seq)
            seen.update(metrics)
            return reward

        with frozen(self.ensemble):  # its gradient reaches the actions, not its weights
            expl = self.explorer.update(model, post, is_terminal, sync=sync, reward_fn=reward_fn)
        out.update(settle_metrics(seen, sync, "the intrinsic reward", fix))
        out.update({f"expl/{k}": v for k, v in expl.items()})
        return out
