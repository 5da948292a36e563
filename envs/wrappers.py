"""Wrappers that give any gymnasium env the toolkit's conventions.

Each records its constructor arguments (`gymnasium.utils.RecordConstructorArgs`), so a wrapped
env's `spec` rebuilds the same stack with `gymnasium.make(env.spec)`; that is how a Minari
dataset written from a toolkit env recovers its environment.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils import RecordConstructorArgs
from PIL import Image


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a `uint8` (H, W, C) frame to `size` = (height, width) with area averaging."""
    if frame.shape[:2] == tuple(size):
        return np.ascontiguousarray(frame)
    image = Image.fromarray(frame)
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BOX), dtype=np.uint8)


def is_image_space(space: gym.Space) -> bool:
    """True for `uint8` Box spaces shaped (H, W, C) with C in {1, 3, 4}."""
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] in (1, 3, 4)
    )


class PixelObservation(gym.ObservationWrapper, RecordConstructorArgs):
    """Replace the observation with the rendered frame, `uint8` (size[0], size[1], 3).

    The wrapped env must have been made with `render_mode="rgb_array"`.
    """

    def __init__(self, env: gym.Env, size: tuple[int, int] = (64, 64)):
        RecordConstructorArgs.__init__(self, size=tuple(size))
        gym.ObservationWrapper.__init__(self, env)
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"PixelObservation needs an env made with render_mode='rgb_array', "
                f"got render_mode={env.render_mode!r}"
            )
        self.size = (int(size[0]), int(size[1]))
        self.observation_space = gym.spaces.Box(0, 255, (*self.size, 3), np.uint8)

    def observation(self, observation):
        return resize_frame(np.asarray(self.env.render())[..., :3], self.size)


class ResizeImage(gym.ObservationWrapper, RecordConstructorArgs):
    """Resize an image observation (`uint8` (H, W, C)) to `size` = (height, width)."""

    def __init__(self, env: gym.Env, size: tuple[int, int] = (64, 64)):
        RecordConstructorArgs.__init__(self, size=tuple(size))
        gym.ObservationWrapper.__init__(self, env)
        if not is_image_space(env.observation_space):
            raise ValueError(
                f"ResizeImage needs a uint8 (H, W, C) image space, got {env.observation_space}"
            )
        self.size = (int(size[0]), int(size[1]))
        channels = env.observation_space.shape[-1]
        self.observation_space = gym.spaces.Box(0, 255, (*self.size, channels), np.uint8)

    def observation(self, observation):
        return resize_frame(np.asarray(observation), self.size)


class ActionRepeat(gym.Wrapper, RecordConstructorArgs):
    """Repeat each action `repeat` times, summing rewards and stopping at an episode end."""

    def __init__(self, env: gym.Env, repeat: int):
        RecordConstructorArgs.__init__(self, repeat=int(repeat))
        gym.Wrapper.__init__(self, env)
        if int(repeat) < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info
