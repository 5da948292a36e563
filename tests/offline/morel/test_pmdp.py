"""offline.morel.pmdp: HALT on unknown actions, the model's rewards and terminations elsewhere,
starts from the dataset's start states, horizon truncation, next-step autoreset, member sampling,
the halted fraction, gymnasium's env checker, and NPG on paths collected from the P-MDP."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from wmrl.offline.morel.pmdp import PessimisticMDP, PessimisticMDPEnv, PessimisticModel
from wmrl.planners.npg import NPG, NPGConfig, sample_paths

pytestmark = pytest.mark.usefixtures("one_thread")

STARTS = np.array([[0.0, 0.0], [1.0, -1.0]], np.float32)
ACTIONS = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


class FakeEnsemble:
    """S = 2, A = 1, three members. s' = s + (a, 0); reward 10 + member; terminal when s'_0 > 5.
    The members disagree only on large actions: disc(s, a) = 10 relu(|a| - 0.5), so with
    threshold 1 an action with |a| > 0.6 is unknown."""

    members = 3

    def predict(self, obs, action, member):
        next_obs = obs + torch.cat([action, torch.zeros_like(action)], -1)
        return {
            "next_obs": next_obs,
            "reward": 10.0 + member.float(),
            "terminated_prob": (next_obs[:, 0] > 5).float(),
        }

    def disagreement(self, obs, action):
        return 10 * torch.relu(action.abs() - 0.5).sum(-1)


def make(num_envs=4, **kwargs):
    kwargs = {"threshold": 1.0, "halt_penalty": 2.0, "horizon": 50, "seed": 0, **kwargs}
    return PessimisticMDP(FakeEnsemble(), STARTS, action_space=ACTIONS, num_envs=num_envs, **kwargs)


def act(*values):
    return torch.tensor(values, dtype=torch.float32)[:, None]


def is_start(obs):
    return (obs[:, None] == torch.as_tensor(STARTS)).all(-1).any(-1)


def test_unknown_action_halts_with_the_penalty_and_autoresets_next_step():
    env = make()
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    s0, _ = env.reset(seed=1)
    obs, reward, term, trunc, info = env.step(act(0.9, 0.1, -0.9, 0.0))
    halted = torch.tensor([True, False, True, False])
    assert torch.equal(info["halted"], halted) and torch.equal(term, halted)
    assert not trunc.any()
    member = info["member"].float()
    torch.testing.assert_close(reward, torch.where(halted, -2.0, 10.0 + member))
    torch.testing.assert_close(obs[halted], s0[halted])  # HALT keeps the last trusted state
    torch.testing.assert_close(obs[~halted], s0[~halted] + torch.tensor([[0.1, 0.0], [0.0, 0.0]]))
    # the next step restarts the halted envs from start states, with reward 0 and no flags
    obs2, reward2, term2, trunc2, info2 = env.step(act(0.0, 0.0, 0.0, 0.0))
    assert is_start(obs2[halted]).all()
    assert (reward2[halted] == 0).all() and not (term2 | trunc2 | info2["halted"]).any()
    torch.testing.assert_close(obs2[~halted], obs[~halted])
    # the official reward at HALT: the model's reward plus truncate_reward = -kappa
    env = make(halt_reward="model")
    env.reset(seed=1)
    _, reward, _, _, info = env.step(act(0.9, 0.9, 0.9, 0.9))
    torch.testing.assert_close(reward, 10.0 + info["member"].float() - 2.0)


def test_known_actions_follow_the_model_and_its_terminations():
    env = make(num_envs=2, horizon=100)
    env.reset(seed=0)
    env._obs = torch.tensor([[4.95, 0.0], [0.0, 0.0]])  # one step from the model's terminal set
    obs, reward, term, trunc, info = env.step(act(0.1, 0.1))
    torch.testing.assert_close(obs, torch.tensor([[5.05, 0.0], [0.1, 0.0]]))
    assert term.tolist() == [True, False] and not info["halted"].any() and not trunc.any()
    torch.testing.assert_close(reward, 10.0 + info["member"].float())
    # actions beyond the bounds are clipped before the model sees them (|a| = 1 is unknown)
    _, _, _, _, info = env.step(act(0.0, 7.0))
    assert info["halted"].tolist() == [False, True]


def test_starts_come_only_from_the_start_states():
    env = make(num_envs=64, horizon=2)
    obs, _ = env.reset(seed=3)
    seen = [obs]
    for _ in range(6):  # horizon 2: envs restart every third step
        obs, *_ = env.step(torch.zeros(64, 1))
        seen.append(obs)
    assert is_start(seen[0]).all() and is_start(seen[3]).all() and is_start(seen[6]).all()
    for s in STARTS:  # both start states are drawn
        assert (seen[0] == torch.as_tensor(s)).all(-1).any()


def test_horizon_truncates():
    env = make(num_envs=3, horizon=3)
    env.reset(seed=0)
    flags = []
    for _ in range(4):
        _, _, term, trunc, _ = env.step(torch.full((3, 1), 0.1))
        flags.append((term.any().item(), trunc.all().item(), trunc.any().item()))
    assert flags == [(False, False, False), (False, False, False), (False, True, True)] + [
        (False, False, False)  # the autoreset step
    ]


def test_member_sampling():
    env = make(num_envs=6, horizon=2)  # "episode": members in turn, fixed for an episode
    env.reset(seed=0)
    members = [env.step(torch.zeros(6, 1))[4]["member"].tolist() for _ in range(2)]
    assert members == [[0, 1, 2, 0, 1, 2]] * 2
    env.step(torch.zeros(6, 1))  # autoreset: episodes 6..11 take members 0, 1, 2, ... again
    assert env.step(torch.zeros(6, 1))[4]["member"].tolist() == [0, 1, 2, 0, 1, 2]
    env = make(num_envs=64, member_sampling="step")
    env.reset(seed=0)
    a = env.step(torch.zeros(64, 1))[4]["member"]
    b = env.step(torch.zeros(64, 1))[4]["member"]
    assert set(a.tolist()) == {0, 1, 2} and not torch.equal(a, b)


def test_halted_fraction():
    env = make()
    env.reset(seed=0)
    info = env.step(act(0.9, 0.0, 0.0, 0.0))[4]
    assert info["halt_fraction"].item() == pytest.approx(1 / 4)
    # env 0 restarts (not a transition); env 1 halts: 2 HALTs in 4 + 3 transitions
    info = env.step(act(0.0, 0.9, 0.0, 0.0))[4]
    assert info["halt_fraction"].item() == pytest.approx(2 / 7)
    env.reset()
    assert env.step(act(0.0, 0.0, 0.0, 0.0))[4]["halt_fraction"].item() == 0.0


def test_no_threshold_never_halts():
    env = make(threshold=None)
    env.reset(seed=0)
    assert not env.step(torch.ones(4, 1))[4]["halted"].any()
    with pytest.raises(ValueError, match="start_states"):
        make(num_envs=1).__class__(FakeEnsemble(), np.zeros(3), 1.0, ACTIONS)
    with pytest.raises(ValueError, match="member_sampling"):
        make(member_sampling="always")


def test_single_env_passes_the_gymnasium_checker():
    env = PessimisticMDPEnv(FakeEnsemble(), STARTS, 1.0, ACTIONS, halt_penalty=2.0, horizon=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # unbounded observation boxes (as MuJoCo's) draw a "probably too high" note; nothing else
    notes = [str(w.message) for w in caught if "gymnasium" in w.filename]
    assert not [n for n in notes if "infinity" not in n], notes
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs in env.observation_space
    _, reward, term, trunc, info = env.step(np.array([0.9], np.float32))
    assert (reward, term, trunc, info["halted"], info["halt_fraction"]) == (
        -2.0,
        True,
        False,
        True,
        1.0,
    )


def test_sample_paths_from_the_pmdp_feed_an_npg_update():
    torch.manual_seed(0)
    env = make(num_envs=16, horizon=6, halt_penalty=50.0)
    npg = NPG(2, 1, NPGConfig())
    paths = sample_paths(env, npg.policy)
    T = paths["rewards"].shape[1]
    assert paths["observations"].shape == (16, T + 1, 2) and paths["actions"].shape == (16, T, 1)
    lengths = paths["mask"].sum(1)
    assert T == 6 and (lengths >= 1).all()
    ends = paths["terminated"].any(1)
    # a path ends at its first HALT, which is its last step, terminated
    assert torch.equal(paths["halted"].any(1), ends)
    last = paths["terminated"].float().argmax(1)
    assert torch.equal(last[ends] + 1, lengths[ends]) and (lengths[~ends] == 6).all()
    m = npg.update(paths)
    assert all(math.isfinite(v) for v in m.values())
    assert m["path_length"] == pytest.approx(lengths.float().mean().item())


class LineModel:
    """The inner model of `PessimisticModel` (the ensemble's protocol states): S = 1, A = 1,
    s' = s + a, reward a, never terminal, disc(s, a) = |a|."""

    device = torch.device("cpu")

    def parameters(self):
        return iter([])

    def observe(self, obs, action, is_first, state=None):
        zeros = torch.zeros(obs.shape[:-1])
        return dict(obs=obs.float(), reward=zeros, terminated=zeros.clone(),
                    disagreement=zeros.clone(), member=zeros.long())  # fmt: skip

    def img_step(self, state, action):
        zeros = torch.zeros(action.shape[:-1])
        return dict(obs=state["obs"] + action, reward=action[..., 0], terminated=zeros,
                    disagreement=action[..., 0].abs(), member=state["member"])  # fmt: skip


@pytest.mark.parametrize("mode, kappa, halt_r", [("model", 2.0, 0.9 - 2.0), ("penalty", 2.0, -2.0)])
def test_pessimistic_model_halts_like_the_pmdp(mode, kappa, halt_r):
    model = PessimisticModel(LineModel(), threshold=0.5, halt_penalty=kappa, halt_reward=mode)
    start = model.observe(torch.ones(1, 1, 1), None, None)
    start = {k: v[:, -1] for k, v in start.items()}
    states = model.imagine(start, torch.tensor([[[0.1], [0.2], [0.9], [0.1]]]))
    # the third action is unknown (disc 0.9 > 0.5): it enters HALT with the HALT reward, its
    # obs stays s_2 = 1.3, and nothing after it counts
    torch.testing.assert_close(states["reward"][0], torch.tensor([0.1, 0.2, halt_r, 0.0]))
    torch.testing.assert_close(model.continuation(states)[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(states["obs"][0, :, 0], torch.tensor([1.1, 1.3, 1.3, 1.3]))
    assert states["halted"][0].tolist() == [False, False, True, True]
    assert model.halt_fraction() == pytest.approx(1 / 3)  # 1 entry in 3 live steps
    never = PessimisticModel(LineModel(), threshold=None)
    states = never.imagine(start, torch.full((1, 4, 1), 0.9))
    assert not states["halted"].any() and never.halt_fraction() == 0.0


def test_cem_in_the_pmdp_stays_below_the_threshold():
    """Reward a per step, unknown above a = 0.5 with HALT reward -10: the best plan keeps every
    action at the threshold, 0.5; without HALT CEM goes to the bound, 1."""
    from wmrl.planners.cem import CEMConfig, Planner

    cfg = CEMConfig(horizon=3, iterations=8, candidates=400, top_k=40)
    torch.manual_seed(0)
    for threshold, best in ((0.5, 0.5), (None, 1.0)):
        model = PessimisticModel(LineModel(), threshold, halt_penalty=10.0, halt_reward="penalty")
        action = Planner(model, 1, cfg).act(torch.zeros(1))
        assert action.item() == pytest.approx(best, abs=0.05)
