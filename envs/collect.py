"""Run a policy in vectorised envs and write every step into a replay.

Gymnasium's vector envs reset an env on the step AFTER its episode ended (NEXT_STEP mode):
that step ignores the action and returns the next episode's first observation with reward 0.
`collect` turns this into clean episodes: the reset step starts a new staged episode in the
replay, it is not a transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from wmrl.envs.datasets import export_replay
from wmrl.envs.registry import env_options, make, make_vector
from wmrl.envs.replay import EpisodeReplay
from wmrl.envs.rollout import env_rng_state, random_policy, set_env_rng_state
from wmrl.infra import Every, Run
from wmrl.infra.config import at_least

Policy = Callable[[np.ndarray], np.ndarray]  # observations (N, ...) -> actions (N, A)


@dataclass
class EpisodeStats:
    """One finished episode: undiscounted return, length in policy steps, how it ended."""

    ret: float
    length: int
    terminated: bool


class Collector:
    """Steps a vector env with a policy; stages transitions per env in `replay` (optional).

    The collector keeps the envs' current observations between calls, so `run` can be called
    repeatedly (e.g. one episode between training phases) without cutting episodes short.

    Attributes a stateful policy reads between calls: `obs` (N, ...) the current observations,
    `is_first` (N,) bool where obs is the first of an episode (the policy resets that env's
    belief), `steps` transitions taken so far (auto-reset steps not counted).
    """

    def __init__(self, vec_env: gym.vector.VectorEnv, replay=None, seed: int | None = None):
        self.env, self.replay = vec_env, replay
        self.num_envs = vec_env.num_envs
        self.obs, _ = vec_env.reset(seed=seed)
        self._resetting = np.zeros(self.num_envs, bool)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, int)
        self.is_first = np.ones(self.num_envs, bool)
        self.steps = 0
        if replay is not None:
            for i in range(self.num_envs):
                replay.add_reset(self.obs[i], worker=i)

    @property
    def between_episodes(self) -> bool:
        """Every env's episode has just ended: nothing is half-collected, so a checkpoint taken
        now, with the envs' generators, resumes exactly."""
        return bool(self._resetting.all())

    def run(
        self,
        policy: Policy,
        episodes: int | None = None,
        steps: int | None = None,
        progress=None,
    ) -> list[EpisodeStats]:
        """Step until `episodes` more episodes have finished or `steps` more transitions
        (summed over envs) were taken, whichever comes first.

        Args:
            policy: observations (N, ...) -> actions (N, A).
            progress: optional tqdm-like bar, advanced by transitions taken.
        Returns:
            the episodes that finished during this call.
        """
        if episodes is None and steps is None:
            raise ValueError("Collector.run needs a budget: episodes=..., steps=... or both")
        finished: list[EpisodeStats] = []
        taken = 0
        while (episodes is None or len(finished) < episodes) and (steps is None or taken < steps):
            n = self.stepping
            finished += self.step(policy)
            taken += n
            if progress is not None:
                progress.update(n)
        return finished

    @property
    def stepping(self) -> int:
        """How many envs take a transition on the next step (the others reset on it)."""
        return int((~self._resetting).sum())

    def step(
        self, policy: Policy, during: Callable[[], object] | None = None
    ) -> list[EpisodeStats]:
        """One step of every env, of which `run` is made: the actions from `policy` (not asked
        when every env resets on this step), then the envs step while `during()`, if given,
        runs; then the step's transitions go to the replay. With an async vector env the envs
        step in their worker processes, so work launched by `during` (a GPU update, which does
        not wait for the device) overlaps the stepping; with a sync one, `during` runs first.
        Either way `during` sees the replay as it was before this step. Returns the episodes
        that finished on this step."""
        if self._resetting.all():  # every env resets now and ignores its action: the
            # policy is not asked (nor draws from its generators for nothing)
            space = self.env.single_action_space
            actions = np.zeros((self.num_envs, *space.shape), space.dtype)
        else:
            actions = np.asarray(policy(self.obs))
        if hasattr(self.env, "step_async"):
            self.env.step_async(actions)
            if during is not None:
                during()
            next_obs, rewards, terminated, truncated, _ = self.env.step_wait()
        else:
            if during is not None:
                during()
            next_obs, rewards, terminated, truncated, _ = self.env.step(actions)
        finished: list[EpisodeStats] = []
        for i in range(self.num_envs):
            if self._resetting[i]:  # auto-reset step: the first observation of an episode
                if self.replay is not None:
                    self.replay.add_reset(next_obs[i], worker=i)
                self._returns[i], self._lengths[i] = 0.0, 0
                continue
            if self.replay is not None:
                self.replay.add_step(
                    actions[i],
                    rewards[i],
                    next_obs[i],
                    bool(terminated[i]),
                    bool(truncated[i]),
                    worker=i,
                )
            self._returns[i] += rewards[i]
            self._lengths[i] += 1
            if terminated[i] or truncated[i]:
                finished.append(EpisodeStats(float(self._returns[i]), int(self._lengths[i]),
                                             bool(terminated[i])))  # fmt: skip
        self.steps += self.stepping
        self.is_first = self._resetting  # those envs just returned a first observation
        self._resetting = np.logical_or(terminated, truncated)
        self.obs = next_obs
        return finished


# -- the collection job behind scripts/collect.py ---------------------------------------------


@dataclass
class CollectConfig:
    """Random-policy episodes into a run directory, optionally exported as a Minari dataset."""

    env: str = "dmc:cartpole-swingup"  # dmc:<domain>-<task> or gym:<gymnasium id>
    logdir: str = "runs/collect"  # the run directory
    seed: int = 0  # env i of the vector is seeded with seed + i; the random actions with seed
    episodes: int = 100  # the budget: episodes to collect (at least; envs finish together)
    num_envs: int = 4  # envs stepping at once, one process each
    obs_type: str | None = None  # pixels or state; none: the env's default (pixels for dmc:)
    action_repeat: int | None = None  # none: the env's default (PlaNet's for dmc:)
    capacity: int = 1_000_000  # replay rows (env steps) kept in memory
    checkpoint_every: int = 10  # episodes between checkpoints
    dataset_id: str | None = None  # export the episodes as this Minari dataset at the end
    ref_min_score: float | None = None  # none: the mean return of the random episodes
    ref_max_score: float | None = None  # an expert's return; required with dataset_id

    def __post_init__(self):
        at_least(self, 1, "episodes", "num_envs", "capacity", "checkpoint_every")


COLLECT_PRESETS = {"default": {}, "smoke": {"episodes": 4, "num_envs": 2, "checkpoint_every": 2}}


def run_collect(cfg: CollectConfig, resume: bool = False) -> dict:
    """Collect `cfg.episodes` random episodes into `cfg.logdir` (replay/, metrics.jsonl with
    each episode's return at the env step it ended, a checkpoint every `cfg.checkpoint_every`
    episodes); with `resume`, continue the run there. Exports the episodes as the Minari
    dataset `cfg.dataset_id` if one is named. Returns a summary dict: episodes, steps, mean
    return (and the dataset id)."""
    if cfg.dataset_id is not None and cfg.ref_max_score is None:
        raise ValueError(
            "--dataset-id needs --ref-max-score (an expert's return, for normalised scores)"
        )
    with Run(cfg, resume, desc="collect") as run:
        meta = {"job": "collect", "env": cfg.env}
        state = run.restore(meta, budget=(cfg.episodes, "--episodes", "episodes"))
        rng = np.random.default_rng(cfg.seed)  # the random actions
        if state is None:
            replay, returns = EpisodeReplay(cfg.capacity, directory=run.dir / "replay"), []
        else:
            replay = EpisodeReplay.load(
                run.dir / "replay", cfg.capacity, max_episodes=state["episodes"],
                next_index=state.get("next_index"), repair=True,
            )  # fmt: skip
            returns = list(state["returns"])
        done = replay.total_episodes
        seed = cfg.seed + 1000 * done
        vec = run.closing(make_vector(cfg.env, min(cfg.num_envs, cfg.episodes), seed=seed,
                                      **env_options(cfg)))  # fmt: skip
        if state is not None and len(state.get("env_rng", ())) == vec.num_envs:
            # The generators as saved: the run meets the episodes it would have met had it
            # never stopped, exactly so when every env's episode had ended at the checkpoint
            # (one env, or dm-control's fixed-length episodes); else fresh seeds, as above.
            set_env_rng_state(vec, state["env_rng"])
            rng.bit_generator.state, seed = state["action_rng"], None
        collector = Collector(vec, replay, seed=seed)
        policy = random_policy(vec.action_space, rng=rng)
        # Episodes are committed in the order `run` reports them, so a running sum of their
        # lengths is the env-step count at which each one ended, even when several end on the
        # same step.
        step = replay.total_steps
        run.begin(step, total=cfg.episodes, initial=done, unit="episode")
        every_checkpoint = Every(cfg.checkpoint_every, start=done)
        while done < cfg.episodes:
            for stats in collector.run(policy, episodes=1):
                returns.append(stats.ret)
                step += stats.length
                run.log(step, {"collect/return": stats.ret, "collect/length": stats.length})
            done = replay.total_episodes
            if every_checkpoint(done) or done >= cfg.episodes or run.stopping:
                run.checkpoint({"episodes": done, "next_index": replay.next_index,
                                "returns": returns, "env_rng": env_rng_state(vec),
                                "action_rng": rng.bit_generator.state})  # fmt: skip
            run.advance(done)
            run.stop_point()
    summary = {
        "episodes": done,
        "steps": replay.total_steps,
        "mean_return": float(np.mean(returns)),
    }
    if cfg.dataset_id is not None:
        ref_min = summary["mean_return"] if cfg.ref_min_score is None else cfg.ref_min_score
        export_replay(
            replay,
            cfg.dataset_id,
            make(cfg.env, **env_options(cfg)),
            ref_min,
            cfg.ref_max_score,
            algorithm_name="random",
            description=f"Random-policy episodes of {cfg.env}.",
        )
        summary["dataset_id"] = cfg.dataset_id
    return summary
