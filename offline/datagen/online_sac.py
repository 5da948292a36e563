"""Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications": twin
critics and an automatically tuned temperature), online; the behaviour policies of the datasets
that `offline.datagen.make_dataset` writes.

critic:  y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
         L_Q = sum_i mean (Q_i(s, a) - y)^2
actor:   L_pi = mean (alpha log pi(a~|s) - min_i Q_i(s, a~)),  a~ ~ pi(.|s) (reparameterised)
alpha:   L_alpha = -mean log_alpha (log pi(a~|s) + H_target),  H_target = -action_dim
         (d L / d log_alpha = entropy - H_target: alpha grows while the entropy is below target)
targets: Q' <- (1 - tau) Q' + tau Q after every update

    sac = SAC(obs_dim, action_dim, SACConfig(), max_action=symmetric_bound(env.action_space))
    sac.sample(obs)        # exploration, (B, S) -> (B, A)
    sac.act(obs)           # evaluation: max_action * tanh(mean)
    sac.update(batch)      # batch as in offline.common, dones = terminations only

Online, in one env (`OnlineSAC`, the behaviour policies of `offline.datagen.make_dataset`): the
first `start_steps` env steps take uniform random actions, every later one samples a ~ pi(.|s)
and makes one update on a minibatch of the replay. Every transition is also kept as an episode
in Minari's layout (`EpisodeRecorder`), and the actor is snapshotted (and scored) every
`eval_every` env steps:

    online = OnlineSAC(env, cfg, run.device, "env 'gym:Hopper-v5'")
    online.train(run, eval_env, eval_seed, keep={})   # to cfg.sac_steps, with checkpoints
    online.recorder.episodes, online.snapshots        # the data and the policies
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from wmrl.envs.datasets import to_transitions
from wmrl.envs.rollout import episode_returns
from wmrl.infra import Every, MeanMetrics, Run
from wmrl.infra.metrics import nonfinite_fix
from wmrl.offline.common import (
    EnsembleCritic,
    OfflineAlgorithm,
    TanhGaussianActor,
    TransitionBuffer,
    floats,
    soft_update,
    symmetric_bound,
)


@dataclass
class SACConfig:
    """SAC v2 (paper, table 1); the states and rewards are the env's own (no normalisation)."""

    discount: float = 0.99  # gamma
    tau: float = 5e-3  # target critics' Polyak rate
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    hidden: int = 256  # units per hidden layer, actor and critics
    layers: int = 2  # hidden layers
    batch_size: int = 256
    target_entropy: float | None = None  # H_target; none: -action_dim (the paper's heuristic)
    init_log_alpha: float = 0.0  # log of the initial temperature alpha (alpha = 1)


class SAC(OfflineAlgorithm):
    name = "sac"

    def __init__(self, obs_dim, action_dim, cfg: SACConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = TanhGaussianActor(obs_dim, action_dim, cfg.hidden, cfg.layers, max_action)
        self.critic = EnsembleCritic(obs_dim, action_dim, 2, cfg.hidden, cfg.layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(cfg.init_log_alpha)))
        te = cfg.target_entropy
        self.target_entropy = -float(action_dim) if te is None else float(te)
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr),
        }

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature exp(log_alpha), a constant for the critic's and the actor's losses."""
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    def critic_target_value(self, batch) -> torch.Tensor:
        """y (B,) = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi."""
        next_a, next_log_prob = self.actor(batch["next_observations"])
        next_q = self.critic_target(batch["next_observations"], next_a).min(0).values
        soft_v = next_q - self.alpha * next_log_prob
        return batch["rewards"] + self.cfg.discount * (1.0 - batch["dones"]) * soft_v

    def actor_loss(self, obs: torch.Tensor):
        """L_pi, and log pi(a~|s) (B,) for the temperature's loss."""
        action, log_prob = self.actor(obs)
        # Only the actor learns from this loss: no weight gradients for the critics.
        self.critic.requires_grad_(False)
        q = self.critic(obs, action).min(0).values
        self.critic.requires_grad_(True)
        return (self.alpha * log_prob - q).mean(), log_prob

    def alpha_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """L_alpha = -mean log_alpha (log pi + H_target); its gradient is entropy - H_target."""
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

    def update(self, batch):
        target = self.critic_target_value(batch)
        q = self.critic(batch["observations"], batch["actions"])
        critic_loss = ((q - target) ** 2).mean(1).sum()
        self.step("critic", critic_loss)

        actor_loss, log_prob = self.actor_loss(batch["observations"])
        self.step("actor", actor_loss)
        alpha_loss = self.alpha_loss(log_prob)
        self.step("alpha", alpha_loss)

        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.updates += 1
        return floats(
            {
                "critic_loss": critic_loss,
                "actor_loss": actor_loss,
                "alpha_loss": alpha_loss,
                "alpha": self.alpha,
                "entropy": -log_prob.detach().mean(),
                "q": q.detach().mean(),
            }
        )

    @torch.no_grad()
    def act(self, obs):
        """Deterministic actions (B, A) = max_action * tanh(mean) for states (B, S)."""
        return self.actor(obs, deterministic=True)[0]

    @torch.no_grad()
    def sample(self, obs):
        """Stochastic actions (B, A) ~ pi(.|s) for states (B, S): exploration and data."""
        return self.actor(obs)[0]


# -------------------------------------------------------------------------- episodes


class EpisodeRecorder:
    """Transitions as episodes in Minari's layout (`envs.replay.validate_episode`): observations
    (T+1, S), actions (T, A), rewards, terminations, truncations (T,); the last episode may be
    in progress (`reset` starts one, `step` adds a transition and closes it at its end)."""

    def __init__(self):
        self.episodes: list[dict[str, np.ndarray]] = []
        self._open: dict[str, list] | None = None
        self.total_steps = 0

    def reset(self, obs) -> None:
        self.cut()
        self._open = {"observations": [np.asarray(obs)], "actions": [], "rewards": []}
        self._open.update(terminations=[], truncations=[])

    def step(self, action, reward, next_obs, terminated: bool, truncated: bool) -> None:
        ep = self._open
        ep["observations"].append(np.asarray(next_obs))
        ep["actions"].append(np.asarray(action))
        ep["rewards"].append(float(reward))
        ep["terminations"].append(bool(terminated))
        ep["truncations"].append(bool(truncated))
        self.total_steps += 1
        if terminated or truncated:
            self._close()

    def cut(self) -> None:
        """End the episode in progress as truncated (a size limit, an interrupted run)."""
        if self._open is not None and self._open["actions"]:
            if not (self._open["terminations"][-1] or self._open["truncations"][-1]):
                self._open["truncations"][-1] = True
            self._close()
        self._open = None

    def _close(self) -> None:
        self.episodes.append(self._arrays())
        self._open = None

    def _arrays(self) -> dict[str, np.ndarray]:
        ep = self._open
        return {
            "observations": np.stack(ep["observations"]),
            "actions": np.stack(ep["actions"]).astype(np.float32),
            "rewards": np.asarray(ep["rewards"], np.float32),
            "terminations": np.asarray(ep["terminations"], bool),
            "truncations": np.asarray(ep["truncations"], bool),
        }

    def prefix(self, steps: int) -> list[dict[str, np.ndarray]]:
        """The episodes holding the first `steps` transitions; the one cut there is truncated."""
        out, left = [], steps
        for ep in self.episodes:
            if left == 0:
                break
            out.append(cut_episode(ep, left))
            left -= len(out[-1]["actions"])
        if left:
            raise ValueError(f"asked for {steps} transitions of {self.total_steps} closed ones")
        return out

    def state_dict(self) -> dict:
        """All episodes (the one in progress last, as `open`) concatenated, as tensors."""
        eps = list(self.episodes)
        is_open = self._open is not None and bool(self._open["actions"])
        if is_open:
            eps.append(self._arrays())
        if not eps:
            return {"lengths": torch.zeros(0, dtype=torch.long), "open": False}
        cat = {k: torch.from_numpy(np.concatenate([ep[k] for ep in eps])) for k in eps[0]}
        return {**cat, "lengths": torch.tensor([len(ep["actions"]) for ep in eps]), "open": is_open}

    def load_state_dict(self, state: dict) -> None:
        """Restore the episodes; one in progress comes back closed as truncated (the env that
        was running it is gone)."""
        self.episodes, self._open, self.total_steps = [], None, 0
        o = a = 0
        for t in state["lengths"].tolist():
            ep = {k: state[k][a : a + t].numpy() for k in ("actions", "rewards")}
            ep.update({k: state[k][a : a + t].numpy() for k in ("terminations", "truncations")})
            ep["observations"] = state["observations"][o : o + t + 1].numpy()
            o, a = o + t + 1, a + t
            self.episodes.append(ep)
            self.total_steps += t
        if state["open"]:
            last = self.episodes[-1]
            last["truncations"][-1] = not last["terminations"][-1]


def cut_episode(ep: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """The first `steps` transitions of an episode; a cut before its end is a truncation."""
    if steps >= len(ep["actions"]):
        return ep
    out = {k: v[:steps] for k, v in ep.items() if k != "observations"}
    out["observations"] = ep["observations"][: steps + 1]
    out["truncations"] = out["truncations"].copy()
    out["truncations"][-1] = not out["terminations"][-1]
    return out


def replay_buffer(rec: EpisodeRecorder, capacity: int, obs_dim, action_dim, device):
    """SAC's replay rebuilt from the recorded episodes: the last `capacity` transitions, in
    order, so that the oldest is overwritten next, as in the buffer that was lost."""
    buf = TransitionBuffer(capacity, obs_dim, action_dim, device)
    if rec.episodes:
        t = {k: v[-capacity:] for k, v in to_transitions(rec.episodes).items()}
        buf.add(
            t["observations"], t["actions"], t["rewards"], t["next_observations"],
            t["terminals"].astype(np.float32),
        )  # fmt: skip
    return buf


def actor_policy(actor: TanhGaussianActor, deterministic: bool, space: gym.spaces.Box):
    """obs (S,) -> action (A,) in the space's dtype, sampled or the tanh of the mean."""
    device = next(actor.parameters()).device

    @torch.no_grad()
    def policy(obs):
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
        return actor(x, deterministic)[0][0].cpu().numpy().astype(space.dtype)

    return policy


# ---------------------------------------------------------------------------- online


def train_row(metrics: MeanMetrics, steps: int, seconds: float, what: str) -> dict:
    """train/<loss term>: each term's mean over the updates since the last row (none before
    SAC acts), and train/steps_per_s over the `steps` env steps of those `seconds`. Raises
    FloatingPointError naming `what` if a mean is not finite."""
    fix = nonfinite_fix(
        "the env's data (observations or rewards not finite or far out of scale)",
        "the settings (learning rates --sac.*-lr, too high)",
        "The last checkpoint is from before it: resume from it with lower ones",
    )
    means = metrics.mean(what, fix)
    row = {f"train/{k}": v for k, v in means.items()}
    row["train/steps_per_s"] = steps / seconds
    return row


class OnlineSAC:
    """SAC acting and learning in one env, with what a resumed run needs (`state_dict`): the
    agent, the sampler of its minibatches, every transition as episodes (`recorder`, from which
    the replay is rebuilt), the actor's snapshots and the env step.

    Args:
        env: a gymnasium env with flat Box observations (S,) and actions in [-m, m].
        cfg: the run's config (`make_dataset.MakeDatasetConfig`): `sac` (a SACConfig), seed,
            sac_steps, start_steps, replay_size, log_every, eval_every, checkpoint_every,
            eval_episodes and eval_deterministic.
        device: where SAC and its replay live.
        what: the env as error messages name it ("env 'gym:Hopper-v5'").
    """

    def __init__(self, env: gym.Env, cfg, device, what: str = "the env"):
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(
                f"{what} has observations {space}; SAC here needs flat vectors (S,) "
                "(for dm-control: obs_type state)"
            )
        max_action = symmetric_bound(env.action_space, what)
        self.env, self.cfg, self.device = env, cfg, device
        self.sac = SAC(space.shape[0], env.action_space.shape[0], cfg.sac, max_action).to(device)
        self.sampler = torch.Generator(device=device)
        self.sampler.manual_seed(cfg.seed)
        self.recorder = EpisodeRecorder()
        self.snapshots: list[dict] = []  # {"step", "return", "actor" (state dict on the CPU)}
        self.step = 0

    def state_dict(self) -> dict:
        """SAC (nets and optimisers), the recorded episodes, the snapshots, the env step and the
        minibatch sampler's state: the checkpoint's entries besides the caller's own."""
        return {
            "sac": self.sac.save_state(),
            "episodes": self.recorder.state_dict(),
            "snapshots": self.snapshots,
            "step": self.step,
            "sampler": self.sampler.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sac.load_state(state["sac"])
        self.recorder.load_state_dict(state["episodes"])
        self.snapshots, self.step = state["snapshots"], int(state["step"])
        self.sampler.set_state(state["sampler"].cpu())  # a generator state is a CPU tensor

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action (A,) for state (S,): uniform random before `start_steps`, then a ~ pi(.|s)."""
        if self.step < self.cfg.start_steps:
            return self.env.action_space.sample()
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]
        return self.sac.sample(x)[0].cpu().numpy().astype(self.env.action_space.dtype)

    def actor_at(self, snapshot: dict) -> TanhGaussianActor:
        """The actor of a snapshot, on the device, in eval mode."""
        sac, c = self.sac, self.cfg.sac
        actor = TanhGaussianActor(sac.obs_dim, sac.action_dim, c.hidden, c.layers, sac.max_action)
        actor.load_state_dict(snapshot["actor"])
        return actor.to(self.device).eval()

    def snapshot(self, eval_env: gym.Env, seed: int, evaluate=episode_returns) -> np.ndarray:
        """Score the actor by `evaluate(eval_env, policy, cfg.eval_episodes, seed)` (returns
        (episodes,)), keep a copy of it with its mean return, and return the returns."""
        policy = actor_policy(self.sac.actor, self.cfg.eval_deterministic, self.env.action_space)
        returns = evaluate(eval_env, policy, self.cfg.eval_episodes, seed)
        actor = {k: v.detach().cpu().clone() for k, v in self.sac.actor.state_dict().items()}
        self.snapshots.append({"step": self.step, "return": float(returns.mean()), "actor": actor})
        return returns

    def train(self, run: Run, eval_env: gym.Env, eval_seed: int, keep: dict,
              evaluate=episode_returns) -> None:  # fmt: skip
        """Act and learn from `self.step` to `cfg.sac_steps` env steps, one update per step
        that SAC acts. Logs train/return and train/length per episode, the losses averaged over
        `log_every` steps, and eval/return and time/wall_s at each snapshot (every `eval_every`
        steps and at the end, scored by `snapshot`). Writes `{**state_dict(), **keep}` (`keep`:
        the caller's own entries) every `checkpoint_every` steps and at the end. The episode
        running at the end is cut (truncated)."""
        cfg, env, rec = self.cfg, self.env, self.recorder
        S, A = self.sac.obs_dim, self.sac.action_dim
        replay = replay_buffer(rec, min(cfg.replay_size, cfg.sac_steps), S, A, self.device)
        # A fresh env seed after a resume: the interrupted env's state cannot be restored.
        obs, _ = env.reset(seed=cfg.seed + self.step)
        env.action_space.seed(cfg.seed + self.step)
        rec.reset(obs)
        every_log = Every(cfg.log_every, start=self.step)
        every_eval = Every(cfg.eval_every, start=self.step)
        every_checkpoint = Every(cfg.checkpoint_every, start=self.step)
        metrics, ep_return, ep_length = MeanMetrics(), 0.0, 0
        t0, steps0 = time.perf_counter(), self.step
        while self.step < cfg.sac_steps:
            acting = self.step >= cfg.start_steps
            action = self.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            replay.add(obs, action, reward, next_obs, float(terminated))
            if acting:  # one update per step that SAC acts
                metrics.add(self.sac.update(replay.sample(cfg.sac.batch_size, self.sampler)))
            rec.step(action, reward, next_obs, terminated, truncated)
            self.step += 1
            step, end, row, postfix = self.step, self.step == cfg.sac_steps, {}, {}
            ep_return, ep_length = ep_return + float(reward), ep_length + 1
            obs = next_obs
            if terminated or truncated:
                row.update({"train/return": ep_return, "train/length": ep_length})
                postfix["ret"] = f"{ep_return:.1f}"
                obs, _ = env.reset()
                rec.reset(obs)
                ep_return, ep_length = 0.0, 0
            # Each counter is called on every step (before `or end`), so none skips a period.
            if every_log(step) or end:
                what = f"SAC in {run.dir} by env step {step}"
                row.update(train_row(metrics, step - steps0, time.perf_counter() - t0, what))
                t0, steps0 = time.perf_counter(), step
            if every_eval(step) or end:
                returns = self.snapshot(eval_env, eval_seed, evaluate)
                row.update({"eval/return": returns.mean(), "eval/return_std": returns.std()})
                row["time/wall_s"] = run.wall()
                t0, steps0 = time.perf_counter(), step  # evaluation is not training speed
            if row:
                run.log(step, row)
            if every_checkpoint(step) or end or run.stopping:
                run.checkpoint({**self.state_dict(), **keep})
            run.advance(step, **postfix)
            run.stop_point()
        rec.cut()
