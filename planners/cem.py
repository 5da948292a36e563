"""CEM-MPC (PlaNet, Hafner et al. 2019, sec. 3): plan with any `worldmodels.WorldModel`.

At every env step the action distribution is reset to N(0, I) over the horizon; J candidate
sequences are sampled (clipped to the bounds), rolled out open loop with `model.imagine`, scored
by their predicted return, and the distribution is refitted to the top K. The first action of the
final mean is executed. Everything stays on the device; N beliefs (N parallel envs) plan at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from wmrl.worldmodels.protocol import map_state


@dataclass
class CEMConfig:
    """PlaNet's planner (paper, sec. 3 and appendix A)."""

    horizon: int = 12  # H
    iterations: int = 10  # I
    candidates: int = 1000  # J
    top_k: int = 100  # K
    action_low: float = -1.0
    action_high: float = 1.0
    exploration_noise: float = 0.3  # Gaussian std added by `Planner.act(explore=True)`

    def __post_init__(self):
        if not 0 < self.top_k <= self.candidates:
            raise ValueError(f"need 0 < top_k <= candidates, got {self.top_k}, {self.candidates}")


@torch.no_grad()
def cem_plan(model, belief, action_dim: int, cfg: CEMConfig) -> torch.Tensor:
    """Plan from `belief`, a model state with batch N: returns the first actions (N, A).

    The return of a candidate is sum_h w_h r(s_h), with w_1 = 1 and w_h the product of
    `model.continuation` over s_1..s_(h-1): rewards after a predicted episode end count less
    (all ones for models that predict no ends, the paper's plain sum).
    """
    J, K, H, A = cfg.candidates, cfg.top_k, cfg.horizon, action_dim
    leaves = []
    map_state(leaves.append, belief)  # any tensor of the belief gives N and the device
    N, device = leaves[0].shape[0], leaves[0].device
    start = map_state(lambda x: x.repeat_interleave(J, 0), belief)  # (N * J,), row n * J + j
    mean = torch.zeros(N, 1, H, A, device=device)
    std = torch.ones(N, 1, H, A, device=device)
    for _ in range(cfg.iterations):
        noise = torch.randn(N, J, H, A, device=device)
        actions = (mean + std * noise).clamp(cfg.action_low, cfg.action_high)
        states = model.imagine(start, rearrange(actions, "n j h a -> (n j) h a"))
        reward, cont = model.reward(states), model.continuation(states)  # (N * J, H)
        weight = torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1).cumprod(1)
        returns = rearrange((weight * reward).sum(1), "(n j) -> n j", n=N)
        top = returns.topk(K, dim=1).indices  # (N, K)
        elite = actions.gather(1, top[:, :, None, None].expand(N, K, H, A))
        mean = elite.mean(1, keepdim=True)
        std = elite.std(1, unbiased=False, keepdim=True)
    return mean[:, 0, 0]


class Planner:
    """Holds a model's belief across an episode and acts with CEM-MPC.

    Args:
        device: where observations go; by default the model's parameters' device (else CPU).
        num_envs: None for one env (obs (*obs_shape) -> action (A,)), or N for N parallel envs
            (obs (N, *obs_shape) -> actions (N, A)), planned for all at once.
    """

    def __init__(
        self, model, action_dim: int, cfg: CEMConfig | None = None, num_envs=None, device=None
    ):
        self.model, self.action_dim, self.cfg = model, action_dim, cfg or CEMConfig()
        self.num_envs = num_envs
        if device is None:  # the model's, where it has parameters
            param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.reset()

    def reset(self, done=None) -> None:
        """Start new episodes in every env, or only where `done` (N,) bool is True: the next
        `act` then passes is_first and a zero action, so the model resets those beliefs."""
        n = self.num_envs or 1
        if done is None:
            self.state = None
            self.action = torch.zeros(n, self.action_dim, device=self.device)
            self.is_first = torch.ones(n, dtype=torch.bool, device=self.device)
            return
        done = torch.as_tensor(done, dtype=torch.bool, device=self.device).reshape(n)
        self.action = self.action * ~done[:, None]
        self.is_first = self.is_first | done

    @torch.no_grad()
    def act(self, obs, explore: bool = False) -> torch.Tensor:
        """Filter `obs` into the belief (with the action that led to it), plan, and return the
        action on the device; with `explore`, add N(0, exploration_noise^2) and clip."""
        obs = torch.as_tensor(obs, device=self.device)
        obs = obs[None, None] if self.num_envs is None else obs[:, None]  # (N, 1, *obs_shape)
        post = self.model.observe(obs, self.action[:, None], self.is_first[:, None], self.state)
        self.state = map_state(lambda x: x[:, -1], post)
        action = cem_plan(self.model, self.state, self.action_dim, self.cfg)
        if explore:
            action = action + self.cfg.exploration_noise * torch.randn_like(action)
            action = action.clamp(self.cfg.action_low, self.cfg.action_high)
        self.action, self.is_first = action, torch.zeros_like(self.is_first)
        return action[0] if self.num_envs is None else action
