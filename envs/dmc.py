"""dm-control suite tasks as gymnasium environments, with fast 64 x 64 pixel rendering.

`DMCEnv(domain, task)` is what `envs.make("dmc:<domain>-<task>")` and
`gymnasium.make("dmc/<domain>-<task>-v0")` build. Observations are `uint8` pixels (H, W, 3) by
default or, with `obs_type="state"`, the task's proprioceptive observations flattened into one
`float32` vector. Actions lie in [-1, 1] and are rescaled to the task's action bounds. One
`step` repeats the action `action_repeat` times (PlaNet's per-domain values by default) and
sums the rewards; an episode is 1000 env steps, so `1000 / action_repeat` policy steps.
dm-control ends an episode with discount 0 on a true termination and discount 1 at the time
limit; they become gymnasium's `terminated` and `truncated`.

Rendering cost is what limits pixel RL on a CPU. dm-control's `physics.render` builds a new
camera and scene per call and draws shadows, reflections and 4x multisampling; at 64 x 64 none of
that is visible, so we render through one persistent camera with all three off (much faster:
`scripts/benchmark.py --only render` measures by how much).
"""

from __future__ import annotations

import os

# dm-control picks its OpenGL backend when first imported; headless machines need EGL.
os.environ.setdefault("MUJOCO_GL", "egl")
# Mesa's software renderer (llvmpipe) splits each frame across worker threads; for 64 x 64 frames
# the hand-off costs more than the drawing, and rendering on the calling thread is faster
# (`scripts/benchmark.py --only render`). It must be set before the first GL context; GPU
# drivers ignore it.
os.environ.setdefault("LP_NUM_THREADS", "0")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.utils import seeding  # noqa: E402

# PlaNet (Hafner et al. 2019, appendix) action repeats; other domains use Dreamer's default of 2.
PLANET_ACTION_REPEAT = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "finger": 2,
    "walker": 2,
    "ball_in_cup": 4,
}
DEFAULT_ACTION_REPEAT = 2
DOMAIN_ALIASES = {"cup": "ball_in_cup"}
# Camera 0 looks at the agent in every domain but quadruped, whose tracking camera is 2.
DEFAULT_CAMERA = {"quadruped": 2}

GL_HELP = (
    "MuJoCo needs an OpenGL backend to render pixels. On a headless Debian/Ubuntu machine install "
    "the software EGL renderer (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) and keep "
    "MUJOCO_GL=egl (the default here); alternatives are MUJOCO_GL=osmesa (apt-get install "
    "libosmesa6) or MUJOCO_GL=glfw with a display. For state observations (obs_type='state') "
    "no rendering is needed: set MUJOCO_GL=disable."
)


class RenderBackendError(RuntimeError):
    """No working OpenGL backend for MuJoCo; the message says what to install or set."""


def import_suite():
    """Import `dm_control.suite`, turning OpenGL backend failures into a clear error."""
    try:
        from dm_control import suite
    except Exception as exc:  # dm-control raises RuntimeError/AttributeError/ImportError here
        raise RenderBackendError(
            f"Importing dm_control failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: "
            f"{type(exc).__name__}: {exc}. {GL_HELP}"
        ) from exc
    return suite


class DMCEnv(gym.Env):
    """A dm-control suite task as a `gymnasium.Env`.

    Args:
        domain, task: suite names, e.g. "cartpole", "swingup" ("cup" is "ball_in_cup").
        obs_type: "pixels" -> `uint8` (size[0], size[1], 3); "state" -> `float32` (D,).
        action_repeat: env steps per `step`; None takes PLANET_ACTION_REPEAT for the domain.
        size: (height, width) of rendered frames.
        camera: camera id; None takes the domain's default.
        fast_render: shadows, reflections and multisampling off (False gives dm-control's own
            `physics.render`, kept for the benchmark).
        render_mode: "rgb_array" makes `render()` return the current frame (H, W, 3).
        time_limit: env steps per episode (1000, the suite's standard; also bounds tasks such as
            lqr whose own limit is infinite).
        seed: seeds the random initial states of the episodes (as `reset(seed=...)` also does).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        domain: str,
        task: str,
        obs_type: str = "pixels",
        action_repeat: int | None = None,
        size: tuple[int, int] = (64, 64),
        camera: int | None = None,
        fast_render: bool = True,
        render_mode: str | None = None,
        time_limit: int = 1000,
        seed: int | None = None,
    ):
        if obs_type not in ("pixels", "state"):
            raise ValueError(f"obs_type must be 'pixels' or 'state', got {obs_type!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        domain = DOMAIN_ALIASES.get(domain, domain)
        if action_repeat is None:
            action_repeat = PLANET_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)
        if int(action_repeat) < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        suite = import_suite()
        if (domain, task) not in suite.ALL_TASKS:
            raise ValueError(f"unknown dm-control task {domain}-{task}; known: {known_tasks()}")
        self.domain, self.task = domain, task
        self.obs_type, self.action_repeat = obs_type, int(action_repeat)
        self.size = (int(size[0]), int(size[1]))
        self.camera = DEFAULT_CAMERA.get(domain, 0) if camera is None else int(camera)
        self.fast_render, self.render_mode = fast_render, render_mode
        self.time_limit, self._env_steps = int(time_limit), 0

        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        physics = self._env.physics
        if fast_render:
            # Multisampling is fixed when the GL context is made, so set it before any render.
            physics.model.vis.quality.offsamples = 0
        self._camera = None  # created on first render: state-only envs never touch OpenGL

        spec = self._env.action_spec()
        self._action_low = spec.minimum.astype(np.float64)
        self._action_high = spec.maximum.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        if obs_type == "pixels":
            self.observation_space = gym.spaces.Box(0, 255, (*self.size, 3), np.uint8)
        else:
            dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    # -- rendering ---------------------------------------------------------------------------
    def _render_frame(self) -> np.ndarray:
        """The current frame, `uint8` (H, W, 3)."""
        height, width = self.size
        if self._camera is None:
            self._camera = self._make_camera()
        if not self.fast_render:
            return self._env.physics.render(height, width, camera_id=self.camera)
        # Camera.render returns a flipped view of a buffer the next render overwrites.
        return self._camera.render().copy()

    def _make_camera(self):
        """One persistent camera; the GL context is made here, so backend failures surface here."""
        import mujoco
        from dm_control.mujoco.engine import Camera

        try:
            camera = Camera(self._env.physics, *self.size, self.camera)
        except Exception as exc:
            raise RenderBackendError(
                f"Rendering {self.domain}-{self.task} failed with MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL')!r}: {type(exc).__name__}: {exc}. {GL_HELP}"
            ) from exc
        camera.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        camera.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return camera

    def _observation(self, time_step) -> np.ndarray:
        if self.obs_type == "pixels":
            return self._render_frame()
        parts = [np.asarray(v, dtype=np.float32).ravel() for v in time_step.observation.values()]
        return np.concatenate(parts)

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        # The task draws the episode's initial state from its own RandomState
        # (dm_control.suite.base.Task), made here from gymnasium's `np_random`: that generator's
        # state alone then says which episodes come next, for every env alike, and a run saves
        # and restores it to resume exactly (`envs.rollout.env_rng_state`).
        self._env.task._random = np.random.RandomState(self.np_random.integers(2**32))
        self._env_steps = 0
        time_step = self._env.reset()
        return self._observation(time_step), {"discount": 1.0}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        action = np.clip(action, -1.0, 1.0)
        action = self._action_low + (action + 1.0) * 0.5 * (self._action_high - self._action_low)
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(action)
            self._env_steps += 1
            reward += time_step.reward or 0.0
            if time_step.last() or self._env_steps >= self.time_limit:
                break
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = not terminated and (time_step.last() or self._env_steps >= self.time_limit)
        info = {"discount": float(time_step.discount)}
        return self._observation(time_step), float(reward), terminated, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self._render_frame()
        return None

    @property
    def physics(self):
        """The dm-control `Physics` (qpos, qvel, ...), for renderers and state resets."""
        return self._env.physics

    def close(self):
        self._camera = None
        # Free the GL context now rather than at interpreter exit, when EGL may be gone.
        self._env.close()


def known_tasks() -> str:
    """The suite's tasks as `dmc:` ids, for error messages."""
    suite = import_suite()
    return ", ".join(f"dmc:{d}-{t}" for d, t in suite.ALL_TASKS)
