"""envs.make: dm-control and gymnasium envs, their spaces, timing, seeding and errors."""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmrl import envs
from wmrl.envs.dmc import PLANET_ACTION_REPEAT
from wmrl.envs.registry import DMC_TASKS, UnknownEnvError, make_vector
from wmrl.envs.rollout import env_rng_state, set_env_rng_state
from wmrl.envs.wrappers import resize_frame


@pytest.mark.parametrize(
    "env_id, options",
    [
        ("dmc:cartpole-swingup", {}),
        ("dmc:cartpole-swingup", {"obs_type": "state"}),
        ("gym:Hopper-v5", {}),
        ("gym:Pendulum-v1", {}),  # rescaled actions
    ],
)
def test_check_env_passes(env_id, options):
    env = envs.make(env_id, **options)
    check_env(env, skip_render_check=True)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_check_env_carracing_resized():
    pytest.importorskip("Box2D", reason="CarRacing needs the box2d extra")
    env = envs.make("gym:CarRacing-v3")
    assert env.observation_space.shape == (64, 64, 3)
    check_env(env, skip_render_check=True)


def test_dmc_spaces_and_episode_length():
    pixels = envs.make("dmc:cartpole-swingup", seed=0)
    assert pixels.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert pixels.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, _ = pixels.reset()
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3) and obs.std() > 0
    # cartpole: 1000 env steps / action repeat 8 = 125 policy steps, ended by the time limit.
    steps, done = 0, False
    while not done:
        obs, _, terminated, truncated, _ = pixels.step(pixels.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    assert (steps, terminated, truncated) == (125, False, True)

    state = envs.make("dmc:walker-walk", obs_type="state", action_repeat=1, seed=0)
    assert state.observation_space.shape == (24,)  # orientations 14 + height 1 + velocity 9
    state.reset()
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = state.step(np.zeros(6))
        steps, done = steps + 1, terminated or truncated
    assert steps == 1000


def test_planet_action_repeats_and_alias():
    for domain, repeat in [("cartpole", 8), ("reacher", 4), ("cheetah", 4), ("finger", 2),
                           ("walker", 2), ("ball_in_cup", 4)]:  # fmt: skip
        assert PLANET_ACTION_REPEAT[domain] == repeat
    env = envs.make("dmc:cup-catch", obs_type="state")
    assert env.unwrapped.domain == "ball_in_cup" and env.unwrapped.action_repeat == 4


def test_action_repeat_sums_rewards_of_single_steps():
    """Repeat 2 must equal stepping an action_repeat=1 env twice with the same action."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (30, 6))
    twice = envs.make("dmc:cheetah-run", obs_type="state", action_repeat=2, seed=5)
    once = envs.make("dmc:cheetah-run", obs_type="state", action_repeat=1, seed=5)
    obs2, _ = twice.reset(seed=5)
    obs1, _ = once.reset(seed=5)
    np.testing.assert_array_equal(obs1, obs2)
    for action in actions:
        obs2, reward2, *_ = twice.step(action)
        first, second = once.step(action), once.step(action)
        np.testing.assert_allclose(reward2, first[1] + second[1], rtol=1e-6)
        np.testing.assert_allclose(obs2, second[0], rtol=1e-6)


def test_termination_is_not_truncation():
    env = envs.make("dmc:cartpole-balance", obs_type="state", seed=0)
    env.reset()
    # A task that reports discount 0 (a true termination) must come out as terminated.
    env.unwrapped._env.task.get_termination = lambda physics: 0.0
    _, _, terminated, truncated, info = env.step(np.zeros(1))
    assert (terminated, truncated, info["discount"]) == (True, False, 0.0)


def test_actions_are_rescaled_to_the_task_bounds():
    env = envs.make("gym:Pendulum-v1", seed=0)  # native torque bounds [-2, 2]
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    env.reset()
    env.step(np.array([0.5], np.float32))
    assert env.unwrapped.last_u == pytest.approx(1.0)


def test_seeding_reproduces_and_differs():
    def rollout(seed):
        env = envs.make("dmc:reacher-easy", obs_type="state", seed=seed)
        obs = [env.reset()[0]]
        obs += [env.step(env.action_space.sample())[0] for _ in range(5)]
        return np.stack(obs)

    np.testing.assert_array_equal(rollout(1), rollout(1))
    assert not np.allclose(rollout(1), rollout(2))


def test_fast_render_draws_the_same_scene():
    fast = envs.make("dmc:cheetah-run", seed=3)
    default = envs.make("dmc:cheetah-run", seed=3, fast_render=False)
    a, _ = fast.reset(seed=3)
    b, _ = default.reset(seed=3)
    # Only shadows, reflections and anti-aliasing differ: small mean error, same layout.
    assert np.abs(a.astype(int) - b).mean() < 10
    other, _ = fast.reset(seed=4)
    assert np.abs(a.astype(int) - other).max() > 0  # and the frame does depend on the state


def test_gymnasium_registration():
    assert {(d, t) for d, t in DMC_TASKS} == set(envs.dmc.import_suite().ALL_TASKS)
    env = gym.make("dmc/cartpole-swingup-v0", obs_type="state")
    assert env.observation_space.shape == (5,)
    rebuilt = gym.make(envs.make("dmc:walker-walk", obs_type="state").spec)
    assert rebuilt.observation_space.shape == (24,)


def test_spec_rebuilds_wrapped_gym_envs():
    env = envs.make("gym:Pendulum-v1", action_repeat=3)
    rebuilt = gym.make(env.spec)
    assert rebuilt.action_space == env.action_space
    assert rebuilt.spec.additional_wrappers == env.spec.additional_wrappers
    rebuilt.reset(seed=0)
    env.reset(seed=0)
    np.testing.assert_allclose(rebuilt.step([0.3])[1], env.step([0.3])[1])


def test_gym_pixel_observations():
    env = envs.make("gym:Pendulum-v1", obs_type="pixels", size=(48, 40))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (48, 40, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, resize_frame(env.unwrapped.render(), (48, 40)))


def test_resize_frame_averages_areas():
    frame = np.random.default_rng(0).integers(0, 256, (128, 96, 3), dtype=np.uint8)
    blocks = frame.reshape(64, 2, 48, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(resize_frame(frame, (64, 48)).astype(float) - blocks).max() <= 1.0


@pytest.mark.parametrize(
    "env_id, expected",
    [
        ("dmc:cartpole-swingupp", "dmc:cartpole-swingup"),
        ("dmc:walker", "dmc:<domain>-<task>"),
        ("gym:Hoper-v5", "gym:Hopper-v5"),
        ("cartpole-swingup", "must start with 'dmc:'"),
    ],
)
def test_unknown_env_ids_are_named(env_id, expected):
    with pytest.raises(UnknownEnvError, match=expected.replace("<", ".").replace(">", ".")):
        envs.make(env_id)


@pytest.mark.parametrize(
    "variables",
    [
        {"MUJOCO_GL": "bogus"},
        {"MUJOCO_GL": "egl", "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent.json"},
    ],
)
def test_missing_gl_backend_names_the_fix(variables):
    code = "from wmrl import envs; envs.make('dmc:cartpole-swingup').reset()"
    env = {**os.environ, **variables}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "RenderBackendError" in result.stderr
    assert "MUJOCO_GL" in result.stderr and "libegl-mesa0" in result.stderr


def test_vector_envs_step_together():
    vec = envs.make_vector("dmc:cartpole-swingup", num_envs=2, seed=0, obs_type="state")
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 5) and not np.allclose(obs[0], obs[1])
    single = envs.make("dmc:cartpole-swingup", obs_type="state")
    np.testing.assert_allclose(single.reset(seed=1)[0], obs[1])
    for _ in range(125):
        obs, reward, terminated, truncated, _ = vec.step(np.zeros((2, 1), np.float32))
    assert truncated.all() and not terminated.any()
    obs, reward, *_ = vec.step(np.zeros((2, 1), np.float32))  # NEXT_STEP auto-reset
    np.testing.assert_array_equal(reward, 0.0)
    vec.close()


@pytest.mark.parametrize("env_id", ["dmc:cartpole-swingup", "gym:Pendulum-v1"])
def test_the_saved_generators_bring_back_the_next_episodes(env_id):
    """`env_rng_state` at an episode boundary, put back into a new env, gives the episode starts
    the first env went on to; the count of generators must match."""
    options = {"obs_type": "state"} if env_id.startswith("dmc:") else {}
    env = envs.make(env_id, seed=3, **options)
    saved = env_rng_state(env)
    starts = [env.reset()[0] for _ in range(3)]
    assert not np.array_equal(starts[0], starts[1])
    other = envs.make(env_id, seed=99, **options)
    set_env_rng_state(other, saved)
    for start in starts:
        np.testing.assert_array_equal(other.reset()[0], start)

    vec = make_vector(env_id, 2, seed=5, asynchronous=False, **options)
    saved = env_rng_state(vec)
    first = vec.reset()[0]
    vec2 = make_vector(env_id, 2, seed=7, asynchronous=False, **options)
    set_env_rng_state(vec2, saved)
    np.testing.assert_array_equal(vec2.reset()[0], first)
    with pytest.raises(ValueError, match="saved env generators are 1, the env has 2"):
        set_env_rng_state(vec2, saved[:1])
