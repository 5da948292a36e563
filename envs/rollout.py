"""Running a policy in one gymnasium env: whole episodes, returns for evaluation, uniform random
actions, and the action repeat that converts policy steps to env steps.

A policy here is any callable obs -> action on NumPy arrays (one env; `envs.collect.Collector`
runs batched policies in vector envs).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from wmrl.envs.registry import make


def env_action_repeat(env) -> int:
    """The action repeat of an env built by `envs.make` (DMCEnv's or the ActionRepeat
    wrapper's), 1 when there is none."""
    repeat, current = 1, env
    while current is not None:
        if hasattr(current, "repeat") and type(current).__name__ == "ActionRepeat":
            repeat *= int(current.repeat)
        if hasattr(current, "action_repeat") and type(current).__name__ == "DMCEnv":
            repeat *= int(current.action_repeat)
        current = getattr(current, "env", None)
    return repeat


def run_episode(env, policy, replay=None, record: bool = False):
    """One episode with `policy(obs) -> action (A,)`; transitions go into `replay` if given.

    Returns (return, policy steps, rows) where rows, if `record`, is the episode in the replay's
    row layout ({"obs": (T+1, ...), "action": (T+1, A)} with action[t] = a_(t-1)), else None.
    """
    obs, _ = env.reset()
    if replay is not None:
        replay.add_reset(obs)
    observations, actions = [obs], [np.zeros(env.action_space.shape, np.float32)]
    ret, steps = 0.0, 0
    while True:
        action = np.asarray(policy(obs), dtype=np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        if replay is not None:
            replay.add_step(action, reward, obs, bool(terminated), bool(truncated))
        if record:
            observations.append(obs)
            actions.append(action)
        ret += float(reward)
        steps += 1
        if terminated or truncated:
            break
    rows = {"obs": np.stack(observations), "action": np.stack(actions)} if record else None
    return ret, steps, rows


def episode_returns(
    env,
    act,
    episodes: int,
    seed: int,
    *,
    reset: Callable[[], None] | None = None,
    observe: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Undiscounted returns (episodes,) of `act` (obs (S,) numpy -> action (A,) numpy) in `env`,
    one reset seed per episode (seed, seed + 1, ...), so every evaluation sees the same starts.

    A policy with a memory of its episode (the Decision Transformer's history and return-to-go)
    passes `reset()`, called at each episode's start before its first action, and
    `observe(reward)`, called with the reward of each step it took."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        if reset is not None:
            reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            if observe is not None:
                observe(float(reward))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return np.array(returns)


def random_policy(action_space, seed: int | None = None, rng: np.random.Generator | None = None):
    """Uniform random actions in a Box space, single (A,) or batched (N, A): obs -> action.

    Draws from `rng` when given (a run's own generator, saved in its checkpoint), else from a new
    generator seeded with `seed`."""
    rng = np.random.default_rng(seed) if rng is None else rng
    low, high = action_space.low, action_space.high

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high).astype(action_space.dtype)

    return act


def env_rng_state(env) -> list[dict]:
    """The state of the generator each env draws its episodes from (gymnasium's `np_random`;
    `envs.dmc.DMCEnv` draws its initial states from it too): one entry for an env, one per
    sub-env for a vector env. Saved in a checkpoint at an episode boundary, it lets a resumed
    run meet the same episodes as a run that never stopped (`set_env_rng_state`)."""
    gens = env.call("np_random") if isinstance(env, gym.vector.VectorEnv) else (env.np_random,)
    return [g.bit_generator.state for g in gens]


def set_env_rng_state(env, states: list[dict]) -> None:
    """Put back the generators `env_rng_state` saved (ValueError if their count does not match
    the env's), so that the next `reset()` without a seed starts the same episode as it would
    have in the saved run."""
    vector = isinstance(env, gym.vector.VectorEnv)
    count = env.num_envs if vector else 1
    if len(states) != count:
        raise ValueError(f"saved env generators are {len(states)}, the env has {count}")
    gens = []
    for state in states:
        gen = np.random.Generator(getattr(np.random, state["bit_generator"])())
        gen.bit_generator.state = state
        gens.append(gen)
    if vector:
        env.set_attr("np_random", gens)
    else:
        env.np_random = gens[0]


def eval_env(dataset, env_id: str = ""):
    """The env that scores a policy learned from `dataset` (an `envs.OfflineDataset`):
    `make(env_id)` when an id is given, else the env the dataset was recorded in
    (`dataset.recover_environment()`). Raises `DatasetMismatchError`, naming the fix, unless its
    spaces equal the dataset's."""
    env = make(env_id) if env_id else dataset.recover_environment()
    try:
        dataset.check_env(env)
    except Exception:
        env.close()
        raise
    return env
