"""MOReL's pessimistic MDP (P-MDP; Kidambi et al. 2020, sec. 4, eq. 4) as a gymnasium vector env,
batched in torch on the model's device.

With the learned dynamics P_hat (an ensemble), the unknown state-action detector
USAD(s, a) = [disc(s, a) > threshold], disc(s, a) = max_(i, j) ||f_i(s, a) - f_j(s, a)||_2,
and the absorbing state HALT, the P-MDP is

    P_p(s' | s, a) = delta(s' = HALT)   if USAD(s, a) or s = HALT
                   = P_hat(s' | s, a)   otherwise
    r_p(s, a)      = -kappa             if s = HALT (here: the step that enters it)
                   = r(s, a)            otherwise

Entering HALT ends the episode (terminated = True, no bootstrap), so the value of HALT is
-kappa for that step; the paper's absorbing state would repeat -kappa forever, which with
kappa = 0 (the official configs) is the same thing. `halt_penalty` is kappa.

Checked against aravindr93/mjrl (v2): `mjrl/algos/mbrl/model_based_npg.py` and
`projects/morel/run_morel.py`. The official code rolls every start state out in each member for
the whole horizon, then truncates a path at its first (s_t, a_t) with disc > `truncate_lim`,
keeping that step with its reward plus `truncate_reward` (0.0 in every config) and marking the
path terminated. `halt_reward="model"` reproduces that reward (r_hat(s, a) - kappa);
the default "penalty" is the paper's -kappa. Member sampling "episode" (default) is the
official scheme: one member for a whole episode, members assigned in turn so each rolls out as
many paths; "step" draws a member per step (MBPO / MOPO style).

Timing of one sub-env (next-step autoreset, declared in `metadata["autoreset_mode"]`):

    step k:      reset      1        2      ...   L (HALT, terminal or horizon)   L + 1
    returns      s_0        s_1      s_2          s_L, r_(L-1), done              s'_0, reward 0
    action used  -          a_0      a_1          a_(L-1)                         ignored

On the step after an episode ends the sub-env restarts from a fresh start state, returns reward
0 with terminated = truncated = False, and ignores its action. At HALT the returned final
observation is s_(L-1) itself (the model's prediction there is not trusted).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from wmrl.worldmodels.ensemble import DynamicsEnsemble
from wmrl.worldmodels.protocol import open_loop

__all__ = ["PessimisticMDP", "PessimisticMDPEnv", "PessimisticModel", "halt_reward"]


def halt_reward(reward: torch.Tensor, halt_penalty: float, mode: str) -> torch.Tensor:
    """The reward of the step that enters HALT: -kappa ("penalty", the paper) or
    r_hat(s, a) - kappa ("model", the official truncation)."""
    return -halt_penalty + (reward if mode == "model" else 0.0)


class PessimisticMDP(VectorEnv):
    """N copies of the P-MDP stepped as one batch.

    Observations, rewards and flags are torch tensors on `device` (obs (N, S) float32, reward
    (N,) float32, terminated / truncated (N,) bool); actions may be tensors or arrays (N, A) and
    are clipped to the action space (the real env clips controls, so the model sees the same).
    `gymnasium.wrappers.vector.ArrayConversion` turns it into a NumPy vector env if needed.

    Args:
        model: `predict(obs (B, S), action (B, A), member (B,) long) -> dict(next_obs (B, S),
            reward (B,), terminated_prob (B,))`, `disagreement(obs, action) -> (B,)`, `members`.
        start_states: (K, S) the dataset's episode-start observations; resets draw from them
            uniformly with replacement (the official `init_states_buffer`).
        threshold: USAD threshold on disc(s, a); None (or inf) never halts (naive MBRL).
        action_space: Box (A,) of the real env.
        halt_penalty: kappa >= 0 (official `truncate_reward` = -kappa, 0.0 in every config).
        horizon: H, the episode length at which paths truncate (official `horizon`: 700 for
            d4rl hopper-medium, 500 for the hopper_v3 example).
        num_envs: N.
        observation_space: Box (S,); by default unbounded float32.
        termination: "threshold" ends an episode when terminated_prob > 0.5; "sample" draws
            Bernoulli(terminated_prob). (The official code uses hand-written env termination
            functions; a learned head replaces them here.)
        member_sampling: "episode" (official) or "step", see the module docstring.
        halt_reward: "penalty" (paper: -kappa) or "model" (official: r_hat(s, a) - kappa).
        device: where everything runs; by default the model's parameters' device, else CPU.
        seed: seeds the torch generator (starts, members, sampled terminations).

    info of `step`: "halted" (N,) bool (this step entered HALT), "halt_fraction" (0-dim tensor:
    HALT steps / transitions since the last `reset`, autoreset steps not counted), "member"
    (N,) long (the member that made this step).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        model,
        start_states,
        threshold: float | None,
        action_space: gym.spaces.Box,
        halt_penalty: float = 0.0,
        horizon: int = 700,
        num_envs: int = 1,
        observation_space: gym.spaces.Box | None = None,
        termination: str = "threshold",
        member_sampling: str = "episode",
        halt_reward: str = "penalty",
        device=None,
        seed: int | None = None,
    ):
        if device is None:
            param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        starts = torch.as_tensor(np.asarray(start_states), dtype=torch.float32)
        if starts.ndim != 2 or len(starts) == 0:
            raise ValueError(
                f"start_states must be a non-empty (K, S) array of episode-start observations, "
                f"got shape {tuple(starts.shape)}"
            )
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"action_space must be a flat Box (A,), got {action_space}")
        if observation_space is None:
            observation_space = gym.spaces.Box(-np.inf, np.inf, starts.shape[1:], np.float32)
        if observation_space.shape != tuple(starts.shape[1:]):
            raise ValueError(
                f"start_states have {starts.shape[1]} dims but observation_space is "
                f"{observation_space.shape}; pass the space of the dataset's observations"
            )
        choices = {
            "termination": (termination, ("threshold", "sample")),
            "member_sampling": (member_sampling, ("episode", "step")),
            "halt_reward": (halt_reward, ("penalty", "model")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if halt_penalty < 0 or horizon < 1 or num_envs < 1:
            raise ValueError(
                f"need halt_penalty >= 0, horizon >= 1, num_envs >= 1; got {halt_penalty}, "
                f"{horizon}, {num_envs}"
            )
        if threshold is not None and not threshold > 0:
            raise ValueError(f"threshold must be > 0 (or None for no HALT), got {threshold}")

        self.model, self.starts = model, starts.to(self.device)
        self.threshold = None if threshold is None or np.isinf(threshold) else float(threshold)
        self.halt_penalty, self.horizon = float(halt_penalty), int(horizon)
        self.termination, self.member_sampling = termination, member_sampling
        self.halt_reward = halt_reward
        self.num_envs, self.members = int(num_envs), int(model.members)
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self._low = torch.as_tensor(action_space.low, dtype=torch.float32, device=self.device)
        self._high = torch.as_tensor(action_space.high, dtype=torch.float32, device=self.device)

        self._gen = torch.Generator(device=self.device)
        if seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(int(seed))
        N, S = self.num_envs, starts.shape[1]
        self._obs = torch.zeros(N, S, device=self.device)
        self._t = torch.zeros(N, dtype=torch.long, device=self.device)
        self._member = torch.zeros(N, dtype=torch.long, device=self.device)
        self._autoreset = torch.zeros(N, dtype=torch.bool, device=self.device)
        self._episodes = torch.zeros((), dtype=torch.long, device=self.device)
        self._steps = torch.zeros((), dtype=torch.long, device=self.device)
        self._halts = torch.zeros((), dtype=torch.long, device=self.device)

    def _start(self, which: torch.Tensor) -> None:
        """Start new episodes in the sub-envs where `which` (N,) bool is set."""
        idx = torch.randint(
            len(self.starts), (self.num_envs,), generator=self._gen, device=self.device
        )
        self._obs = torch.where(which[:, None], self.starts[idx], self._obs)
        self._t = torch.where(which, 0, self._t)
        # members in turn over episodes, so every member rolls out as many paths (official)
        order = self._episodes + which.long().cumsum(0) - 1
        self._member = torch.where(which, order % self.members, self._member)
        self._episodes = self._episodes + which.sum()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start every sub-env afresh (and zero the HALT statistics): -> obs (N, S), {}."""
        if isinstance(seed, list | tuple):  # gymnasium allows one seed per sub-env; one stream
            seed = seed[0]
        super().reset(seed=seed)
        if seed is not None:
            self._gen.manual_seed(int(seed))
        zero = torch.zeros((), dtype=torch.long, device=self.device)
        self._episodes, self._steps, self._halts = zero, zero, zero  # replaced, never mutated
        every = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._start(every)
        self._autoreset = ~every
        return self._obs.clone(), {}

    @torch.no_grad()
    def step(self, actions):
        """One P-MDP step in every sub-env: actions (N, A) -> obs (N, S), reward (N,),
        terminated (N,), truncated (N,), info (see the class docstring)."""
        a = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        a = a.reshape(self.num_envs, -1).clamp(self._low, self._high)
        s, N = self._obs, self.num_envs
        if self.member_sampling == "step":
            member = torch.randint(self.members, (N,), generator=self._gen, device=self.device)
        else:
            member = self._member
        pred = self.model.predict(s, a, member)
        next_obs, reward = pred["next_obs"].float(), pred["reward"].float()
        p_term = pred["terminated_prob"].float()
        if self.termination == "sample":
            terminated = torch.rand(N, generator=self._gen, device=self.device) < p_term
        else:
            terminated = p_term > 0.5
        if self.threshold is None:
            halted = torch.zeros(N, dtype=torch.bool, device=self.device)
        else:
            halted = self.model.disagreement(s, a) > self.threshold  # USAD
        reward = torch.where(
            halted, halt_reward(reward, self.halt_penalty, self.halt_reward), reward
        )
        terminated = terminated | halted
        self._obs = torch.where(halted[:, None], s, next_obs)
        self._t = self._t + 1
        truncated = (self._t >= self.horizon) & ~terminated

        # sub-envs whose episode ended on the previous step restart now (next-step autoreset)
        restart = self._autoreset
        self._start(restart)
        reward = reward.masked_fill(restart, 0.0)
        terminated, truncated, halted = (x & ~restart for x in (terminated, truncated, halted))
        self._autoreset = terminated | truncated
        self._steps = self._steps + (~restart).sum()
        self._halts = self._halts + halted.sum()
        info = {
            "halted": halted,
            "halt_fraction": self._halts / self._steps.clamp(min=1),
            "member": member,
        }
        return self._obs.clone(), reward, terminated, truncated, info

    def render(self):
        return None


class PessimisticMDPEnv(gym.Env):
    """One P-MDP as a plain `gymnasium.Env` with NumPy observations (float32), for
    `gymnasium.utils.env_checker.check_env` and single-episode use. Arguments as
    `PessimisticMDP` (num_envs is 1). Call `reset` after an episode ends. info of `step`:
    "halted" (bool) and "halt_fraction" (float)."""

    metadata = {"render_modes": []}

    def __init__(self, model, start_states, threshold, action_space, **kwargs):
        if kwargs.pop("num_envs", 1) != 1:
            raise ValueError("PessimisticMDPEnv is one env; use PessimisticMDP for num_envs > 1")
        self.vec = PessimisticMDP(model, start_states, threshold, action_space, **kwargs)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, _ = self.vec.reset(seed=seed)
        return obs[0].cpu().numpy().astype(np.float32), {}

    def step(self, action):
        action = torch.as_tensor(np.asarray(action, dtype=np.float32)[None])
        obs, reward, terminated, truncated, info = self.vec.step(action)
        info = {"halted": bool(info["halted"][0]), "halt_fraction": float(info["halt_fraction"])}
        return (
            obs[0].cpu().numpy().astype(np.float32),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            info,
        )


class PessimisticModel:
    """The P-MDP as a model of the shared protocol (`../shared/DESIGN.md`), so that a planner
    (CEM-MPC, `planners.cem`) can plan in it: MOReL's planning alternative to NPG.

    It wraps a `worldmodels.ensemble.DynamicsEnsemble`, whose states carry each step's USAD
    disc(s, a), and adds "halted" (bool) to them. A step from a live state whose
    disc(s, a) > threshold enters HALT: it gets `halt_reward` (as `PessimisticMDP`), its
    continuation is 0 (so a planner's return counts nothing after it) and its obs stays s. Steps
    from HALT have reward 0 and continuation 0. Without HALT the ensemble's reward and
    continuation (1 - P(termination)) pass through.

    `halt_fraction()` is HALT entries / live model steps imagined since `reset_counts()` (every
    candidate of every CEM iteration counts); it reads the device counters (one sync).

    Args:
        ensemble: the fitted `DynamicsEnsemble` (eval mode).
        threshold: USAD threshold; None never halts.
        halt_penalty: kappa >= 0.
        halt_reward: "model" (official, r_hat - kappa) or "penalty" (paper, -kappa).
    """

    def __init__(self, ensemble, threshold, halt_penalty: float = 0.0, halt_reward="model"):
        if halt_reward not in ("model", "penalty"):
            raise ValueError(f"halt_reward must be 'model' or 'penalty', got {halt_reward!r}")
        self.ensemble, self.halt_penalty, self.halt_mode = (
            ensemble,
            float(halt_penalty),
            halt_reward,
        )
        self.threshold = None if threshold is None or threshold == float("inf") else threshold
        self.reset_counts()

    def parameters(self):
        return self.ensemble.parameters()

    def reset_counts(self) -> None:
        device = self.ensemble.device
        self._halts = torch.zeros((), dtype=torch.long, device=device)
        self._steps = torch.zeros((), dtype=torch.long, device=device)

    def halt_fraction(self) -> float:
        return float(self._halts / self._steps.clamp(min=1))

    @staticmethod
    def _live(state: dict) -> dict:
        state = dict(state)
        state["halted"] = torch.zeros_like(state["reward"], dtype=torch.bool)
        return state

    def initial(self, batch_size: int) -> dict:
        return self._live(self.ensemble.initial(batch_size))

    def observe(self, obs, action, is_first, state=None) -> dict:
        return self._live(self.ensemble.observe(obs, action, is_first))

    @torch.no_grad()
    def img_step(self, state: dict, action: torch.Tensor) -> dict:
        was = state["halted"]
        inner = {k: v for k, v in state.items() if k != "halted"}
        nxt = self.ensemble.img_step(inner, action)
        if self.threshold is None:
            enter = torch.zeros_like(was)
        else:
            enter = ~was & (nxt["disagreement"] > self.threshold)
        halted = was | enter
        reward = torch.where(
            enter, halt_reward(nxt["reward"], self.halt_penalty, self.halt_mode), nxt["reward"]
        )
        self._halts = self._halts + enter.sum()
        self._steps = self._steps + (~was).sum()
        return {
            **nxt,
            "obs": torch.where(halted[..., None], state["obs"], nxt["obs"]),
            "reward": reward.masked_fill(was, 0.0),
            "terminated": torch.where(
                halted, torch.ones_like(nxt["terminated"]), nxt["terminated"]
            ),
            "halted": halted,
        }

    def imagine(self, state: dict, actions: torch.Tensor) -> dict:
        """state (B,), actions (B, H, A) -> states (B, H); states[:, h] follows actions[:, h]."""
        return open_loop(self, state, actions)

    # The states are the ensemble's plus "halted" (HALT already folded into reward and
    # terminated), so the ensemble's readers serve.
    features = DynamicsEnsemble.features
    reward = DynamicsEnsemble.reward
    continuation = DynamicsEnsemble.continuation
    decode = DynamicsEnsemble.decode
