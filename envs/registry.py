"""`make(env_id)`: one entry point for dm-control and gymnasium environments.

dmc:<domain>-<task>   a dm-control suite task (`envs.dmc.DMCEnv`), also registered with
                      gymnasium as `dmc/<domain>-<task>-v0`
gym:<id>              any gymnasium id, with the toolkit's conventions: Box actions rescaled
                      to [-1, 1], optional pixel observations, image observations resized
"""

from __future__ import annotations

import difflib
import functools

import gymnasium as gym
import numpy as np

from wmrl.envs.dmc import DOMAIN_ALIASES, import_suite
from wmrl.envs.wrappers import ActionRepeat, PixelObservation, ResizeImage, is_image_space

# dm_control.suite.ALL_TASKS (dm-control 1.0.50), listed here so that `import wmrl.envs` registers
# the gymnasium ids without importing dm-control (and OpenGL); tests check it against the suite.
DMC_TASKS = (
    ("acrobot", "swingup"), ("acrobot", "swingup_sparse"), ("ball_in_cup", "catch"),
    ("cartpole", "balance"), ("cartpole", "balance_sparse"), ("cartpole", "swingup"),
    ("cartpole", "swingup_sparse"), ("cartpole", "two_poles"), ("cartpole", "three_poles"),
    ("cheetah", "run"), ("dog", "stand"), ("dog", "walk"), ("dog", "trot"), ("dog", "run"),
    ("dog", "fetch"), ("finger", "spin"), ("finger", "turn_easy"), ("finger", "turn_hard"),
    ("fish", "upright"), ("fish", "swim"), ("hopper", "stand"), ("hopper", "hop"),
    ("humanoid", "stand"), ("humanoid", "walk"), ("humanoid", "run"),
    ("humanoid", "run_pure_state"), ("humanoid_CMU", "stand"), ("humanoid_CMU", "walk"),
    ("humanoid_CMU", "run"), ("lqr", "lqr_2_1"), ("lqr", "lqr_6_2"),
    ("manipulator", "bring_ball"), ("manipulator", "bring_peg"), ("manipulator", "insert_ball"),
    ("manipulator", "insert_peg"), ("pendulum", "swingup"), ("point_mass", "easy"),
    ("point_mass", "hard"), ("quadruped", "walk"), ("quadruped", "run"), ("quadruped", "escape"),
    ("quadruped", "fetch"), ("reacher", "easy"), ("reacher", "hard"), ("stacker", "stack_2"),
    ("stacker", "stack_4"), ("swimmer", "swimmer6"), ("swimmer", "swimmer15"),
    ("walker", "stand"), ("walker", "walk"), ("walker", "run"),
)  # fmt: skip


class UnknownEnvError(ValueError):
    """An env id that names no known environment; the message lists close matches."""


def gym_id_for_dmc(domain: str, task: str) -> str:
    """The gymnasium id a dm-control task is registered under: `dmc/<domain>-<task>-v0`."""
    return f"dmc/{domain}-{task}-v0"


def register_dmc(domain: str, task: str) -> str:
    """Register one dm-control task with gymnasium (idempotent); returns its gymnasium id."""
    gym_id = gym_id_for_dmc(domain, task)
    if gym_id not in gym.registry:
        gym.register(
            id=gym_id,
            entry_point="wmrl.envs.dmc:DMCEnv",
            kwargs={"domain": domain, "task": task},
            # DMCEnv ends episodes itself at 1000 env steps (truncated), whatever the repeat.
            max_episode_steps=None,
        )
    return gym_id


def register_all() -> None:
    """Register every suite task as `dmc/<domain>-<task>-v0`; runs on `import wmrl.envs`."""
    for domain, task in DMC_TASKS:
        register_dmc(domain, task)


def parse_dmc_id(name: str) -> tuple[str, str]:
    """`"cartpole-swingup"` -> ("cartpole", "swingup"); `"cup-catch"` -> ("ball_in_cup",
    "catch")."""
    domain, sep, task = name.partition("-")
    domain = DOMAIN_ALIASES.get(domain, domain)
    known = {f"{d}-{t}" for d, t in DMC_TASKS}
    if not sep or f"{domain}-{task}" not in known:
        # A newer dm-control may have tasks the list above lacks.
        if sep and (domain, task) in import_suite().ALL_TASKS:
            return domain, task
        close = difflib.get_close_matches(f"{domain}-{task}", sorted(known), n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join('dmc:' + c for c in close)}?" if close else ""
        raise UnknownEnvError(
            f"unknown dm-control task 'dmc:{name}': ids look like dmc:<domain>-<task>, e.g. "
            f"dmc:cartpole-swingup.{hint} All tasks: envs.registry.DMC_TASKS."
        )
    return domain, task


def make(env_id: str, seed: int | None = None, **options) -> gym.Env:
    """Build an environment from a toolkit id.

    Args:
        env_id: `dmc:<domain>-<task>` or `gym:<gymnasium id>`.
        seed: when given, the env is reset once with it and its action space is seeded, so that
            later `reset()` calls continue a reproducible sequence.
        **options: for `dmc:` see `envs.dmc.DMCEnv` (obs_type "pixels" | "state",
            action_repeat, size, camera, fast_render, render_mode); for `gym:` see `make_gym`.

    Returns:
        A `gymnasium.Env` whose `spec` rebuilds it with `gymnasium.make(env.spec)`.
    """
    prefix, sep, name = env_id.partition(":")
    if not sep or prefix not in ("dmc", "gym"):
        raise UnknownEnvError(
            f"env id {env_id!r} must start with 'dmc:' (dm-control suite, e.g. "
            f"'dmc:cartpole-swingup') or 'gym:' (any gymnasium id, e.g. 'gym:Hopper-v5')"
        )
    if prefix == "dmc":
        env = gym.make(register_dmc(*parse_dmc_id(name)), **options)
    else:
        env = make_gym(name, **options)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_gym(
    gym_id: str,
    obs_type: str | None = None,
    size: tuple[int, int] = (64, 64),
    action_repeat: int = 1,
    normalize_actions: bool = True,
    **kwargs,
) -> gym.Env:
    """A gymnasium env with the toolkit's conventions.

    Args:
        gym_id: any registered gymnasium id, e.g. "Hopper-v5", "CarRacing-v3".
        obs_type: None keeps the env's own observations (image observations, like CarRacing's
            96 x 96 frames, are resized to `size`); "pixels" replaces them with rendered frames
            `uint8` (size[0], size[1], 3); "state" keeps them and never resizes.
        size: (height, width) of pixel observations.
        action_repeat: env steps per `step`, rewards summed.
        normalize_actions: rescale a bounded Box action space to [-1, 1].
        **kwargs: passed to `gymnasium.make`.
    """
    if obs_type not in (None, "pixels", "state"):
        raise ValueError(f"obs_type must be None, 'pixels' or 'state', got {obs_type!r}")
    try:
        if obs_type == "pixels":
            env = _make_rendering(gym_id, size, **kwargs)
            env = PixelObservation(env, size)
        else:
            env = gym.make(gym_id, **kwargs)
    except gym.error.Error as exc:
        if not isinstance(
            exc,
            (
                gym.error.NameNotFound,
                gym.error.NamespaceNotFound,
                gym.error.VersionNotFound,
                gym.error.UnregisteredEnv,
            ),
        ):
            raise
        close = difflib.get_close_matches(gym_id, sorted(gym.registry), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join('gym:' + c for c in close)}?" if close else ""
        raise UnknownEnvError(
            f"unknown gymnasium id 'gym:{gym_id}' ({exc}).{hint} Ids that need an extra "
            f"package (CarRacing: pip install 'gymnasium[box2d]') appear once it is installed."
        ) from exc
    if obs_type is None and is_image_space(env.observation_space):
        env = ResizeImage(env, size)
    space = env.action_space
    if normalize_actions and isinstance(space, gym.spaces.Box) and _needs_rescale(space):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    if action_repeat != 1:
        env = ActionRepeat(env, action_repeat)
    return env


def _make_rendering(gym_id: str, size: tuple[int, int], **kwargs) -> gym.Env:
    """`gymnasium.make` with rgb_array rendering, at `size` directly where the env supports it."""
    kwargs = {"render_mode": "rgb_array", **kwargs}
    try:  # MuJoCo envs take width/height and render small frames far faster than resizing.
        return gym.make(gym_id, width=size[1], height=size[0], **kwargs)
    except TypeError:
        return gym.make(gym_id, **kwargs)


def _needs_rescale(space: gym.spaces.Box) -> bool:
    finite = np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))
    return bool(finite and not (np.all(space.low == -1.0) and np.all(space.high == 1.0)))


def make_vector(
    env_id: str,
    num_envs: int,
    seed: int | None = None,
    asynchronous: bool = True,
    context: str = "spawn",
    **options,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `make(env_id, **options)` stepping at once (one process each).

    Env i is seeded with `seed + i`. Workers start with `spawn` by default: forking a process
    that already holds an OpenGL context or torch threads is fragile. Episodes auto-reset on the
    step after they end (gymnasium's NEXT_STEP mode): that step's action is ignored and it
    returns the first observation of the next episode with reward 0.
    """
    fns = [
        functools.partial(make, env_id, seed=None if seed is None else seed + i, **options)
        for i in range(num_envs)
    ]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, context=context)
    return gym.vector.SyncVectorEnv(fns)


ENV_OPTIONS = ("obs_type", "action_repeat", "max_episode_steps")


def env_options(cfg) -> dict:
    """The `make` options that a config (any object with some of the fields `ENV_OPTIONS`) asks
    for; fields it lacks or leaves None keep the env's defaults."""
    values = {name: getattr(cfg, name, None) for name in ENV_OPTIONS}
    return {name: value for name, value in values.items() if value is not None}
