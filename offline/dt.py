"""Decision Transformer (Chen, Lu, Rajeswaran, Lee, Grover, Laskin, Abbeel, Srinivas, Mordatch
2021, "Decision Transformer: Reinforcement Learning via Sequence Modeling", NeurIPS), as CORL's
algorithms/offline/dt.py (commit eeeeef2) and its configs/offline/dt/<env>/<dataset>.yaml:
offline RL as sequence modelling. A causal transformer reads an episode's last K steps as
(return-to-go, state, action) tokens and is trained to predict each step's action; conditioned
on a high return-to-go in the env, it acts like the dataset's episodes that earned one.

Indices, for one episode s_0 a_0 r_0 s_1 a_1 r_1 ... s_{T-1} a_{T-1} r_{T-1} (r_t the reward
of the step a_t takes) and a window of K steps from t0:

    R_t = reward_scale * (r_t + r_{t+1} + ... + r_{T-1})      return-to-go, undiscounted

    tokens      R_t0  s_t0  a_t0  R_t0+1  s_t0+1  a_t0+1  ...  R_t0+K-1  s_t0+K-1  a_t0+K-1
    predicts          ^a_t0               ^a_t0+1                        ^a_t0+K-1

Every token gets its timestep's embedding added (t0 + k, also where the window has run past the
episode's end: those rows are padding). The prediction of a_t is read from s_t's hidden state,
which has seen R, s up to t and a up to t - 1 (the causal mask): a_t^ = max_action *
tanh(W h(s_t)). States are z-scored with the dataset's mean and std (+ 1e-6, CORL's DT).

Loss (CORL's): L = sum_{b,k,i} m_bk (a^_bki - a_bki)^2 / (B K A), m_bk = 0 on padding, the
denominator counting padding too. AdamW (lr 1e-4, betas (0.9, 0.999), weight decay 1e-4 on every
parameter) with the learning rate warmed up linearly, lr * min((u + 1) / 10000, 1) at update u,
gradients clipped to norm 0.25.

In the env (`DTPolicy`): R_0 = reward_scale * target return, R_{t+1} = R_t - reward_scale * r_t;
at step t the model reads the last K (R, s, a, t) of the episode, its own action a_t still
zeros (the causal mask hides it from s_t), and acts a_t^. `DT.policies` makes one policy per
target return; the trainer scores each, eval/return being the first's.

Values (CORL's dataclass defaults): width 128, 3 blocks, 1 head, K = 20, timestep embeddings for
1000 + K steps, dropouts 0.1, batch 64, reward_scale 0.001. CORL's configs change, per dataset,
the target returns (hopper 3600 and 1800, halfcheetah 12000 and 6000, walker2d 5000 and 2500 ...),
the batch and learning rate (4096 and 8e-4 everywhere but antmaze) and reward_scale (1 on
antmaze, maze2d and Adroit), which a run applies by itself (`offline.corl_presets`). CORL trains
100k updates on every dataset: --steps 100000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn

from wmrl.infra.config import at_least
from wmrl.offline.common import Normalizer, OfflineAlgorithm, floats
from wmrl.worldmodels.gpt import GPT, init_weights


@dataclass
class DTConfig:
    hidden: int = 128  # width of every token and hidden state (CORL's embedding_dim)
    layers: int = 3  # transformer blocks (num_layers)
    heads: int = 1  # attention heads (num_heads)
    seq_len: int = 20  # K: steps in a training window and in the policy's history
    episode_len: int = 1000  # longest episode: timesteps 0 .. episode_len + seq_len - 1 embedded
    # (a window that runs past an episode's end numbers its padding on)
    attention_dropout: float = 0.1  # on the attention weights
    residual_dropout: float = 0.1  # on each block's attention and MLP outputs
    embedding_dropout: float = 0.1  # on the tokens, after their LayerNorm
    lr: float = 1e-4  # AdamW's peak learning rate (CORL's learning_rate; 8e-4 in its configs
    # everywhere but antmaze, which the preset sets)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's
    weight_decay: float = 1e-4  # AdamW's, on every parameter as CORL's
    warmup_steps: int = 10_000  # the learning rate rises linearly to lr over these updates
    clip_grad: float | None = 0.25  # global gradient norm clipped to this; None: no clipping
    batch_size: int = 64  # windows per update (4096 in CORL's configs but antmaze's: preset)
    reward_scale: float = 0.001  # R_t = reward_scale * the rewards still to come (1 on antmaze,
    # maze2d and Adroit: preset)
    target_returns: tuple[float, ...] = ()  # returns to condition evaluation on, in the env's
    # reward units, eval/return the first's (CORL lists the highest first); empty: the
    # dataset's best episode return (CORL's per-dataset values come with the preset)
    state_std_eps: float = 1e-6  # states z-scored as (s - mean) / (std + state_std_eps), CORL's
    # DT's (its other algorithms, and ours, add 1e-3)
    normalize_states: bool = True  # CORL's DT always z-scores states
    normalize_reward: bool = False  # IQL's reward scaling is not DT's: reward_scale is

    def __post_init__(self):
        at_least(self, 1, "hidden", "layers", "heads", "seq_len", "episode_len", "warmup_steps")
        if self.normalize_reward:
            raise ValueError(
                "dt.normalize_reward: DT scales returns-to-go by --dt.reward-scale, not by IQL's "
                "reward normalisation; leave it false"
            )


def returns_to_go(rewards: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """R_t = scale * (r_t + r_{t+1} + ... + r_{T-1}) for one episode's rewards (T,) -> (T,)
    float32, summed in float64 from the end."""
    rewards = np.asarray(rewards, np.float64)
    return (scale * np.cumsum(rewards[::-1])[::-1]).astype(np.float32)


class SequenceBuffer:
    """Windows of K consecutive steps of the dataset's episodes, as tensors on one device.

    A window's first step is drawn uniformly from every step of the dataset, which is CORL's
    draw (an episode with probability proportional to its length, then a uniform start in it).
    A window that runs past its episode's end is padded on the right with zeros, as CORL's:

        k              0       1       2      3          K = 4, a window from t0 = T - 2
        observations   s_T-2   s_T-1   0      0          (z-scored; padding 0)
        actions        a_T-2   a_T-1   0      0
        returns_to_go  R_T-2   R_T-1   0      0
        timesteps      T-2     T-1     T      T+1
        mask           1       1       0      0

    sample(B, generator) -> {"observations" (B, K, S), "actions" (B, K, A), "returns_to_go"
    (B, K), "timesteps" (B, K) long, "mask" (B, K) float}, drawn and gathered on the device
    without waiting for it."""

    def __init__(
        self,
        episodes: Sequence[dict],
        normalizer: Normalizer,
        seq_len: int,
        reward_scale: float,
        device: torch.device | str = "cpu",
    ):
        if not episodes:
            raise ValueError("SequenceBuffer needs at least one episode")
        lengths = np.array([len(ep["actions"]) for ep in episodes])
        obs = np.concatenate([ep["observations"][:-1] for ep in episodes]).astype(np.float32)
        mean, std = normalizer.mean.cpu().numpy(), normalizer.std.cpu().numpy()
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # each step's episode start

        def put(x, dtype=torch.float32):
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

        self.observations = put((obs - mean) / std)  # (N, S)
        self.actions = put(np.concatenate([ep["actions"] for ep in episodes]))  # (N, A)
        rtg = [returns_to_go(ep["rewards"], reward_scale) for ep in episodes]
        self.returns_to_go = put(np.concatenate(rtg))  # (N,)
        self.steps = put(np.arange(len(first)) - first, torch.long)  # (N,) t in its episode
        self.ends = put(np.repeat(np.cumsum(lengths), lengths), torch.long)  # (N,) its end
        self.seq_len, self.size = int(seq_len), int(lengths.sum())

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        device = self.observations.device
        start = torch.randint(self.size, (batch_size,), device=device, generator=generator)
        offset = torch.arange(self.seq_len, device=device)
        idx = start[:, None] + offset  # (B, K)
        valid = idx < self.ends[start][:, None]  # (B, K)
        idx = torch.where(valid, idx, start[:, None])  # any row of the dataset; zeroed below

        def take(x: torch.Tensor) -> torch.Tensor:
            v = valid.view(*valid.shape, *([1] * (x.ndim - 1)))
            return torch.where(v, x[idx], torch.zeros((), dtype=x.dtype, device=device))

        return {
            "observations": take(self.observations),
            "actions": take(self.actions),
            "returns_to_go": take(self.returns_to_go),
            "timesteps": self.steps[start][:, None] + offset,
            "mask": valid.float(),
        }


class DecisionTransformer(nn.Module):
    """Tokens (R_t, s_t, a_t) with timestep embeddings -> `GPT` -> actions from the states'
    hidden states.

    forward(states (B, T, S), actions (B, T, A), returns_to_go (B, T), timesteps (B, T) long,
    mask (B, T) or None: 1 on real steps, 0 on padding) -> predicted actions (B, T, A) in
    [-max_action, max_action]; T <= seq_len in training, any T in the env."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: DTConfig, max_action: float = 1.0):
        super().__init__()
        d = cfg.hidden
        self.timestep = nn.Embedding(cfg.episode_len + cfg.seq_len, d)
        self.embed_state = nn.Linear(obs_dim, d)
        self.embed_action = nn.Linear(action_dim, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_norm = nn.LayerNorm(d)  # CORL's and the paper's, before the tokens' dropout
        self.gpt = GPT(
            d, cfg.layers, cfg.heads,
            cfg.attention_dropout, cfg.residual_dropout, cfg.embedding_dropout,
        )  # fmt: skip
        self.action_head = nn.Linear(d, action_dim)
        self.max_action = max_action
        self.apply(init_weights)
        # CORL's attention is nn.MultiheadAttention, whose q, k, v projection keeps its own
        # Xavier-uniform weights under CORL's N(0, 0.02) init (a Linear of its, the output's,
        # does not).
        for block in self.gpt.blocks:
            nn.init.xavier_uniform_(block.attention.qkv.weight)

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        time = self.timestep(timesteps)  # (B, T, D)
        tokens = torch.stack(
            [
                self.embed_return(returns_to_go[..., None]) + time,
                self.embed_state(states) + time,
                self.embed_action(actions) + time,
            ],
            dim=2,
        )  # (B, T, 3, D)
        x = self.embed_norm(rearrange(tokens, "b t n d -> b (t n) d"))  # R_0 s_0 a_0 R_1 ...
        padding = None
        if mask is not None:  # each step's three tokens share its mask
            padding = rearrange((mask == 0)[..., None].expand(-1, -1, 3), "b t n -> b (t n)")
        h = self.gpt(x, padding_mask=padding)  # (B, 3T, D)
        return self.max_action * torch.tanh(self.action_head(h[:, 1::3]))


class DT(OfflineAlgorithm):
    """The Decision Transformer in the suite's shape. It learns from `SequenceBuffer` batches
    (`make_buffer`, which the trainer calls in place of its transition buffer) and acts through
    stateful policies (`policies`), one per target return."""

    name = "dt"

    def __init__(self, obs_dim, action_dim, cfg: DTConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.model = DecisionTransformer(obs_dim, action_dim, cfg, max_action)
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.optimizers = {"model": optimizer}
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda u: min((u + 1) / warmup, 1.0)
        )
        self.target_returns = tuple(float(r) for r in cfg.target_returns)

    def make_buffer(self, episodes: Sequence[dict], normalizer: Normalizer) -> SequenceBuffer:
        """The dataset's windows on this algorithm's device (states z-scored by `normalizer`).
        Where the config names no target returns, the dataset's best episode return becomes
        the one target. Refuses episodes longer than `episode_len`, which have no timestep
        embedding."""
        lengths = [len(ep["actions"]) for ep in episodes]
        if max(lengths, default=0) > self.cfg.episode_len:
            raise ValueError(
                f"an episode of the dataset has {max(lengths)} steps, more than the "
                f"{self.cfg.episode_len} that DT embeds timesteps for; set --dt.episode-len "
                f"{max(lengths)}"
            )
        if not self.target_returns:
            best = max(float(np.sum(ep["rewards"], dtype=np.float64)) for ep in episodes)
            self.target_returns = (best,)
        return SequenceBuffer(
            episodes, normalizer, self.cfg.seq_len, self.cfg.reward_scale, self.device
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """CORL's masked MSE: squared errors on real steps, summed, over B * K * A."""
        mask = batch["mask"]
        predicted = self.model(
            batch["observations"], batch["actions"], batch["returns_to_go"],
            batch["timesteps"], mask,
        )  # fmt: skip
        return ((predicted - batch["actions"]) ** 2 * mask[..., None]).mean()

    def update(self, batch):
        loss = self.loss(batch)
        optimizer = self.optimizers["model"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {"loss": loss}
        if self.cfg.clip_grad is not None:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            metrics["grad_norm"] = norm  # before clipping
        optimizer.step()
        self.scheduler.step()
        self.updates += 1
        return floats(metrics)

    @torch.no_grad()
    def act(self, obs):
        """The first step of an episode, conditioned on the first target return: actions
        (B, A) for normalised states (B, S). Later steps need the history: `policies`."""
        policy = DTPolicy(self.model, None, self._targets()[0], self.cfg)
        return policy.first_actions(obs)

    def policies(self, normalizer: Normalizer) -> dict[str, DTPolicy]:
        """One stateful policy per target return, named target_<return>, in the config's order
        (the first is the one eval/return reports)."""
        return {
            f"target_{r:g}": DTPolicy(self.model, normalizer, r, self.cfg) for r in self._targets()
        }

    def _targets(self) -> tuple[float, ...]:
        if not self.target_returns:
            raise ValueError(
                "DT has no target return: give --dt.target-returns, or build its data with "
                "make_buffer, which takes the dataset's best episode return"
            )
        return self.target_returns

    def save_state(self) -> dict:
        return {**super().save_state(), "scheduler": self.scheduler.state_dict()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.scheduler.load_state_dict(state["scheduler"])


class DTPolicy:
    """The Decision Transformer in an env, one episode at a time: raw state (S,) numpy ->
    action (A,) numpy, keeping the episode's last K steps (K = seq_len).

        policy.reset()                  # at each episode's start
        a = policy(obs)                 # then, after env.step(a):
        policy.observe(reward)          # R_{t+1} = R_t - reward_scale * reward

    Step t reads (R, s, a, t) of steps max(0, t - K + 1) .. t, its own action token zeros;
    timesteps past episode_len - 1 stay at episode_len - 1 (CORL ends the episode there)."""

    def __init__(self, model: DecisionTransformer, normalizer, target: float, cfg: DTConfig):
        self.model, self.normalizer, self.target, self.cfg = model, normalizer, target, cfg
        self.device = model.action_head.weight.device
        self.reset()

    def reset(self) -> None:
        s, a = self.model.embed_state.in_features, self.model.action_head.out_features
        self.states = torch.zeros(1, 0, s, device=self.device)  # (1, <= K, S), z-scored
        self.actions = torch.zeros(1, 0, a, device=self.device)  # (1, <= K, A)
        self.returns = torch.zeros(1, 0, device=self.device)  # (1, <= K), scaled
        self.timesteps = torch.zeros(1, 0, dtype=torch.long, device=self.device)  # (1, <= K)
        self.t, self.rtg = 0, self.cfg.reward_scale * self.target  # R_t of the next step

    def observe(self, reward: float) -> None:
        self.rtg -= self.cfg.reward_scale * float(reward)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)[None]
        s = self.normalizer(s) if self.normalizer is not None else s
        k, zeros = self.cfg.seq_len, torch.zeros(1, 1, self.actions.shape[-1], device=self.device)
        t = torch.full((1, 1), min(self.t, self.cfg.episode_len - 1), device=self.device)
        r = torch.full((1, 1), self.rtg, device=self.device)
        self.states = torch.cat([self.states, s[:, None]], 1)[:, -k:]
        self.actions = torch.cat([self.actions, zeros], 1)[:, -k:]
        self.returns = torch.cat([self.returns, r], 1)[:, -k:]
        self.timesteps = torch.cat([self.timesteps, t.long()], 1)[:, -k:]
        action = self.model(self.states, self.actions, self.returns, self.timesteps)[0, -1]
        self.actions[0, -1] = action
        self.t += 1
        return action.cpu().numpy()

    @torch.no_grad()
    def first_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised states (B, S) as the first step of B episodes -> actions (B, A)."""
        b = obs.shape[0]
        actions = torch.zeros(b, 1, self.actions.shape[-1], device=obs.device)
        returns = torch.full((b, 1), self.rtg, device=obs.device)
        timesteps = torch.zeros(b, 1, dtype=torch.long, device=obs.device)
        return self.model(obs[:, None], actions, returns, timesteps)[:, 0]
