"""Behaviour cloning, as CORL's any_percent_bc.py with the whole dataset (frac 1.0): a
deterministic tanh policy regressed on the dataset's actions, L = mean (pi(s) - a)^2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wmrl.offline.common import DeterministicActor, OfflineAlgorithm, adam, floats


@dataclass
class BCConfig:
    lr: float = 3e-4
    hidden: int = 256
    layers: int = 2
    batch_size: int = 256
    normalize_states: bool = True
    normalize_reward: bool = False


class BC(OfflineAlgorithm):
    name = "bc"

    def __init__(self, obs_dim, action_dim, cfg: BCConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = DeterministicActor(obs_dim, action_dim, cfg.hidden, cfg.layers, max_action)
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=cfg.lr)}

    def update(self, batch):
        loss = F.mse_loss(self.actor(batch["observations"]), batch["actions"])
        self.step("actor", loss)
        self.updates += 1
        return floats({"actor_loss": loss})

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs)
