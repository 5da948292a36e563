"""Fixtures shared by the whole suite."""

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: the small convs and LSTMs of the World Models tests run
    many times slower with two threads on a 2-core machine that is also collecting rollouts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray with 2 CPUs (CI's cores), started once for every test that needs one and shut
    down at the end; skips where the ray extra is not installed (`pip install -e ".[ray]"`)."""
    pytest.importorskip("ray")
    from wmrl.infra.cluster import connect_ray

    ray = connect_ray(num_cpus=2)
    yield ray
    ray.shutdown()


# Reference scores written into the datasets (random and "expert" returns of the test's scale).
REFS = {"Pendulum-v1": (-1500.0, -150.0), "Hopper-v5": (0.0, 1000.0)}


@pytest.fixture
def minari_dataset(tmp_path, monkeypatch):
    """make(env_id, episodes, max_steps) -> the id of a dataset of seeded uniform-random
    episodes (time limit `max_steps`), with the reference scores of REFS, in this test's own
    Minari root."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))

    def make(env_id: str = "Pendulum-v1", episodes: int = 6, max_steps: int = 50) -> str:
        env = gym.make(env_id, max_episode_steps=max_steps)
        env.action_space.seed(0)
        buffers = []
        for i in range(episodes):
            obs, _ = env.reset(seed=i)
            rows = {"observations": [obs], "actions": [], "rewards": [], "terminations": [],
                    "truncations": []}  # fmt: skip
            done = False
            while not done:
                a = env.action_space.sample()
                obs, r, term, trunc, _ = env.step(a)
                for k, v in zip(list(rows)[1:], (a, r, term, trunc), strict=True):
                    rows[k].append(v)
                rows["observations"].append(obs)
                done = term or trunc
            buffers.append(EpisodeBuffer(**{k: np.array(v) for k, v in rows.items()}))
        ref_min, ref_max = REFS[env_id]
        dataset_id = f"test/{env_id.split('-')[0].lower()}-random-v0"
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, ref_min_score=ref_min, ref_max_score=ref_max
        )
        return dataset_id

    return make


@pytest.fixture
def dataset_id(minari_dataset):
    """Six random Pendulum-v1 episodes of 50 steps (actions in [-2, 2])."""
    return minari_dataset()
