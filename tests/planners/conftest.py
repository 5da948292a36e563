"""Shared fixtures for planner tests."""

import dataclasses

import pytest

from wmrl.planners.cem import CEMConfig
from wmrl.planners.methods.planet import PlaNetConfig
from wmrl.worldmodels.rssm import RSSMConfig


def tiny(logdir, **overrides) -> PlaNetConfig:
    """State observations, tiny model and planner: a few seconds per run on 2 CPU cores."""
    cfg = PlaNetConfig(
        env="dmc:cartpole-swingup",
        obs_type="state",
        action_repeat=8,
        logdir=str(logdir),
        device="cpu",
        seed_episodes=1,
        episodes=2,
        train_steps=2,
        batch_size=4,
        chunk_length=10,
        eval_every=10,
        model=RSSMConfig(deter=16, stoch=4, hidden=16, reward_hidden=16),
        cem=CEMConfig(horizon=3, iterations=2, candidates=20, top_k=5),
    )
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture(scope="session", name="tiny")
def tiny_fixture():
    """`tiny(logdir, **overrides)`: a PlaNetConfig that trains in seconds."""
    return tiny
