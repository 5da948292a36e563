"""envs.collect.Collector: what a stateful policy reads between vector steps (is_first, steps)
under gymnasium's next-step autoreset, and the episodes it commits to a replay."""

import gymnasium as gym
import numpy as np

from wmrl.envs.collect import Collector
from wmrl.envs.replay import EpisodeReplay


class Countdown(gym.Env):
    """obs = steps taken in the episode; terminates after `length` steps."""

    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, length: int):
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), 1.0, self.t == self.length, False, {}


def test_is_first_and_steps_follow_next_step_autoreset():
    vec = gym.vector.SyncVectorEnv([lambda: Countdown(2), lambda: Countdown(3)])
    replay = EpisodeReplay(100)
    collector = Collector(vec, replay, seed=0)
    seen_first, seen_obs = [], []

    def policy(obs):
        seen_first.append(collector.is_first.copy())
        seen_obs.append(obs[:, 0].copy())
        return np.zeros((2, 1), np.float32)

    finished = collector.run(policy, steps=9)
    # env 0 (length 2): t 1, 2 | reset | 1, 2 | reset ...; env 1 (length 3): 1, 2, 3 | reset | 1, 2
    assert [o.tolist() for o in seen_obs] == [
        [0, 0], [1, 1], [2, 2], [0, 3], [1, 0], [2, 1],
    ]  # fmt: skip
    # is_first exactly where the policy sees an episode's first observation (obs 0)
    assert [f.tolist() for f in seen_first] == [[o == 0 for o in obs] for obs in seen_obs]
    assert collector.steps == 9  # 4 + 5 transitions in 6 vector steps; reset steps not counted
    assert [(e.length, e.ret) for e in finished] == [(2, 2.0), (3, 3.0), (2, 2.0)]
    assert replay.total_episodes == 3 and replay.total_steps == 7
    last = replay.last_episode()
    assert last["observations"][:, 0].tolist() == [0, 1, 2] and len(last["actions"]) == 2
    assert EpisodeReplay(10).last_episode() is None
