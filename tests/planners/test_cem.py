"""planners.cem: CEM-MPC against an analytic model whose optimum is known, batched planning,
exploration noise, the Planner's bookkeeping, and a smoke run with the RSSM."""

import numpy as np
import pytest
import torch

from wmrl.planners import CEMConfig, Planner, cem_plan
from wmrl.worldmodels import RSSM, RSSMConfig, WorldModel


class PointModel:
    """A point that moves by its (clipped) action, rewarded by -|position - target|^2.

    State: {"pos": (..., A), "target": (..., A)}; an observation is concat(pos, target). From
    pos = 0 with a target inside the bounds, the best plan moves there in one step and stays:
    the first action is the target itself. Records every action sequence it imagines.
    """

    def __init__(self):
        self.imagined, self.observed = [], []

    def initial(self, batch_size):
        return {"pos": torch.zeros(batch_size, 2), "target": torch.zeros(batch_size, 2)}

    def observe(self, obs, action, is_first, state=None):
        self.observed.append((action.clone(), is_first.clone()))
        return {"pos": obs[..., :2], "target": obs[..., 2:]}

    def img_step(self, state, action):
        return {"pos": state["pos"] + action, "target": state["target"]}

    def imagine(self, state, actions):
        self.imagined.append(actions)
        pos = state["pos"][:, None] + actions.cumsum(1)
        return {"pos": pos, "target": state["target"][:, None].expand_as(pos)}

    def features(self, state):
        return torch.cat([state["pos"], state["target"]], -1)

    def reward(self, state):
        return -((state["pos"] - state["target"]) ** 2).sum(-1)

    def continuation(self, state):
        return torch.ones(state["pos"].shape[:-1])

    def decode(self, state):
        return self.features(state)

    def loss(self, batch):
        raise NotImplementedError


# Diagonal CEM creeps along the ill-conditioned direction of this objective (a smaller first
# step made up for by the next costs only one term) when the horizon is long: with H = 12 the
# first action is off by ~0.2 after 10 iterations. H = 3 keeps the optimum sharp (error < 0.015
# over 20 seeds); the other settings are PlaNet's.
SHARP = CEMConfig(horizon=3)


def belief(targets):
    targets = torch.tensor(targets, dtype=torch.float32)
    return {"pos": torch.zeros_like(targets), "target": targets}


def test_point_model_fits_the_protocol():
    assert isinstance(PointModel(), WorldModel)


def test_cem_finds_the_known_optimum():
    torch.manual_seed(0)
    action = cem_plan(PointModel(), belief([[0.5, -0.3]]), 2, SHARP)
    assert action.shape == (1, 2)
    torch.testing.assert_close(action, torch.tensor([[0.5, -0.3]]), atol=0.03, rtol=0)


def test_samples_stay_in_bounds_and_an_unreachable_target_gives_the_bound():
    torch.manual_seed(0)
    model = PointModel()
    action = cem_plan(model, belief([[3.0, -3.0]]), 2, SHARP)
    samples = torch.cat(model.imagined)
    assert samples.shape == (10 * 1000, 3, 2)
    assert samples.min() >= -1 and samples.max() <= 1
    torch.testing.assert_close(action, torch.tensor([[1.0, -1.0]]), atol=0.03, rtol=0)


def test_batched_planning_matches_planning_each_belief_alone():
    targets = [[0.5, -0.3], [-0.7, 0.2], [0.1, 0.9]]
    torch.manual_seed(0)
    together = cem_plan(PointModel(), belief(targets), 2, SHARP)
    alone = torch.cat([cem_plan(PointModel(), belief([t]), 2, SHARP) for t in targets])
    assert together.shape == (3, 2)
    torch.testing.assert_close(together, alone, atol=0.03, rtol=0)
    torch.testing.assert_close(together, torch.tensor(targets), atol=0.03, rtol=0)


def test_exploration_noise_only_when_asked():
    cfg = CEMConfig(candidates=100, top_k=10, iterations=2, horizon=3)
    model, A = PointModel(), 2
    planner = Planner(model, A, cfg)
    obs = np.array([0.0, 0.0, 0.2, -0.1], np.float32)
    actions = {}
    for explore in (False, True):
        torch.manual_seed(0)
        planner.reset()
        actions[explore] = planner.act(obs, explore=explore)
    torch.manual_seed(0)
    plan = cem_plan(model, belief([[0.2, -0.1]]), A, cfg)[0]
    assert actions[False].shape == (A,)
    torch.testing.assert_close(actions[False], plan)  # the plan itself, no noise
    assert not torch.allclose(actions[True], plan)
    # The noise is N(0, 0.3^2), clipped into the bounds: measure it on many env copies.
    planner = Planner(model, A, cfg, num_envs=2000)
    torch.manual_seed(1)
    noisy = planner.act(np.tile(obs, (2000, 1)), explore=True)
    torch.manual_seed(1)
    clean = Planner(model, A, cfg, num_envs=2000).act(np.tile(obs, (2000, 1)))
    assert noisy.min() >= -1 and noisy.max() <= 1
    assert (noisy - clean).std().item() == pytest.approx(0.3, abs=0.02)


def test_planner_feeds_the_previous_action_and_is_first():
    model, cfg = PointModel(), CEMConfig(candidates=50, top_k=5, iterations=2, horizon=3)
    planner = Planner(model, 2, cfg, num_envs=3)
    obs = np.zeros((3, 4), np.float32)
    first = planner.act(obs)
    second = planner.act(obs)
    planner.reset(done=[False, True, False])  # env 1's episode ended
    planner.act(obs)
    planner.reset()
    planner.act(obs)
    (a0, f0), (a1, f1), (a2, f2), (a3, f3) = model.observed
    assert a0.shape == (3, 1, 2) and f0.shape == (3, 1)
    assert f0.all() and not a0.any()  # an episode starts with a zero action
    assert not f1.any() and torch.equal(a1[:, 0], first)  # then the action that led to obs
    assert f2[:, 0].tolist() == [False, True, False] and not a2[1].any()
    assert torch.equal(a2[[0, 2], 0], second[[0, 2]])
    assert f3.all() and not a3.any()


@pytest.mark.parametrize("obs_shape", [(64, 64, 3), (5,)], ids=["pixels", "state"])
def test_cem_plans_with_the_rssm(obs_shape):
    torch.manual_seed(0)
    model = RSSM(obs_shape, 3, RSSMConfig(deter=16, stoch=4, hidden=16, reward_hidden=16))
    planner = Planner(model, 3, CEMConfig(candidates=64, top_k=8, iterations=3, horizon=4))
    dtype = np.uint8 if len(obs_shape) == 3 else np.float32
    obs = np.zeros(obs_shape, dtype)
    for explore in (False, True):
        action = planner.act(obs, explore=explore)
        assert action.shape == (3,)
        assert action.min() >= -1 and action.max() <= 1
