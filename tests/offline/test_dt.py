"""Decision Transformer: returns-to-go against a loop, the windows' alignment and right padding,
the causal mask through the whole model, the masked loss and the learning-rate warmup against
hand computations, the policy's return-to-go and history in an env, and training runs on a
Minari dataset: smoke, every target return reported, resume bit-identical to a run that never
stopped."""

import copy
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from offline_helpers import train_offline_main
from torch import nn

from wmrl.envs.datasets import load_dataset
from wmrl.envs.rollout import episode_returns
from wmrl.infra.checkpoint import load_checkpoint
from wmrl.offline.common import Normalizer
from wmrl.offline.dt import (
    DT,
    DecisionTransformer,
    DTConfig,
    DTPolicy,
    SequenceBuffer,
    returns_to_go,
)
from wmrl.offline.trainer import OfflineConfig, build

pytestmark = pytest.mark.usefixtures("one_thread")
S, A, K = 3, 2, 4


def small(**kw) -> DTConfig:
    return DTConfig(**{"hidden": 16, "layers": 2, "heads": 2, "seq_len": K, **kw})


# ---------------------------------------------------------------------------------- data


def test_returns_to_go_match_a_loop_with_the_reward_scale():
    rewards = np.random.default_rng(0).normal(3.0, 2.0, 37).astype(np.float32)
    expected, total = np.zeros(37), 0.0
    for t in reversed(range(37)):
        total += float(rewards[t])
        expected[t] = 0.001 * total
    rtg = returns_to_go(rewards, 0.001)
    assert rtg.dtype == np.float32 and rtg.shape == (37,)
    np.testing.assert_allclose(rtg, expected, rtol=1e-6)
    assert returns_to_go(np.array([1.0, 2.0, 4.0])).tolist() == [7.0, 6.0, 4.0]


def episodes_with_ids(lengths=(5, 2, 7)) -> list[dict]:
    """Episodes whose every value names its place: observation t of episode e is (e, t, 1),
    action t is (e, 10 + t), reward t is e + t / 10."""
    out = []
    for e, n in enumerate(lengths):
        t = np.arange(n + 1, dtype=np.float32)
        out.append({
            "observations": np.stack([np.full(n + 1, e), t, np.ones(n + 1)], 1).astype(np.float32),
            "actions": np.stack([np.full(n, e), 10 + t[:n]], 1).astype(np.float32),
            "rewards": (e + t[:n] / 10).astype(np.float32),
            "terminations": np.zeros(n, bool),
            "truncations": np.eye(n, dtype=bool)[-1],
        })  # fmt: skip
    return out


def test_windows_align_each_state_with_its_action_return_and_timestep_and_pad_right():
    episodes = episodes_with_ids()
    normalizer = Normalizer(np.array([0.0, 1.0, 0.5]), np.array([1.0, 2.0, 0.25]))
    buffer = SequenceBuffer(episodes, normalizer, seq_len=K, reward_scale=0.01)
    n = 1400  # 100 windows from each of the 14 steps, on average
    batch = buffer.sample(n, torch.Generator().manual_seed(0))
    assert batch["observations"].shape == (n, K, S) and batch["actions"].shape == (n, K, A)
    assert batch["timesteps"].dtype == torch.long and batch["mask"].shape == (n, K)
    starts = {}
    for b in range(n):
        e, t0 = (batch["actions"][b, 0] - torch.tensor([0.0, 10.0])).long().tolist()
        starts[e, t0] = starts.get((e, t0), 0) + 1
        ep, length = episodes[e], len(episodes[e]["actions"])
        rtg = returns_to_go(ep["rewards"], 0.01)
        for k in range(K):
            t = t0 + k
            assert batch["timesteps"][b, k] == t  # numbered on past the episode's end
            if t < length:  # the step itself: s_t (z-scored), a_t, R_t
                assert batch["mask"][b, k] == 1
                s = (ep["observations"][t] - [0.0, 1.0, 0.5]) / [1.0, 2.0, 0.25]
                np.testing.assert_allclose(batch["observations"][b, k], s, rtol=1e-6)
                np.testing.assert_array_equal(batch["actions"][b, k], ep["actions"][t])
                assert batch["returns_to_go"][b, k] == pytest.approx(rtg[t], rel=1e-6)
            else:  # right padding: zeros after the episode's last step
                assert batch["mask"][b, k] == 0
                assert not batch["observations"][b, k].any() and not batch["actions"][b, k].any()
                assert batch["returns_to_go"][b, k] == 0
    # every step of every episode starts a window, each equally often (CORL: an episode with
    # probability proportional to its length, then a uniform start in it): 100 each
    assert set(starts) == {(e, t) for e, length in enumerate((5, 2, 7)) for t in range(length)}
    assert all(abs(count - 100) < 50 for count in starts.values())  # 5 sigma


def test_sampling_is_reproducible_from_the_generator():
    buffer = SequenceBuffer(episodes_with_ids(), Normalizer.identity(S), K, 1.0)
    a = buffer.sample(16, torch.Generator().manual_seed(3))
    b = buffer.sample(16, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------- model


def random_inputs(b=3, t=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, t, S, generator=g),
        torch.rand(b, t, A, generator=g) * 2 - 1,
        torch.rand(b, t, generator=g),
        torch.randint(0, 50, (b, t), generator=g),
    )


@pytest.mark.parametrize("token", ["return", "state", "action"])
def test_a_later_token_never_changes_an_earlier_prediction(token):
    """The prediction of a_t (from s_t) sees R and s up to t and a up to t - 1: changing R_j or
    s_j changes the predictions from j on, changing a_j those after j, and nothing before."""
    torch.manual_seed(0)
    model = DecisionTransformer(S, A, small(), max_action=2.0).eval()
    states, actions, rtg, timesteps = random_inputs()
    base = model(states, actions, rtg, timesteps)
    assert base.shape == (3, K, A) and base.abs().max() <= 2.0
    for j in range(K):
        s, a, r = states.clone(), actions.clone(), rtg.clone()
        {"return": r, "state": s, "action": a}[token][:, j] += 5.0
        out = model(s, a, r, timesteps)
        first_changed = j + 1 if token == "action" else j
        torch.testing.assert_close(out[:, :first_changed], base[:, :first_changed], rtol=0, atol=0)
        if first_changed < K:
            assert (out[:, first_changed:] - base[:, first_changed:]).abs().amax() > 1e-6


def test_padding_leaves_the_real_steps_predictions_as_without_it():
    """A window of n real steps padded to K predicts, on its real steps, what the n steps alone
    predict: no real token attends to padding."""
    torch.manual_seed(0)
    model = DecisionTransformer(S, A, small()).eval()
    states, actions, rtg, timesteps = random_inputs(b=1)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    padded = model(states, actions, rtg, timesteps, mask)
    alone = model(states[:, :2], actions[:, :2], rtg[:, :2], timesteps[:, :2])
    torch.testing.assert_close(padded[:, :2], alone, rtol=1e-5, atol=1e-6)


def test_networks_are_corl_s():
    model = DT(11, 3, DTConfig()).model
    assert model.timestep.num_embeddings == 1000 + 20 and model.timestep.embedding_dim == 128
    assert len(model.gpt.blocks) == 3 and model.gpt.blocks[0].attention.heads == 1
    assert model.gpt.blocks[0].mlp[0].out_features == 4 * 128
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(p == 0.1 for p in dropouts)
    assert model.gpt.blocks[0].attention.attention_dropout == 0.1
    # N(0, 0.02) everywhere but the attention's q, k, v (Xavier uniform, as CORL's MHA's)
    assert model.embed_state.weight.std().item() == pytest.approx(0.02, rel=0.1)
    qkv = model.gpt.blocks[0].attention.qkv.weight
    bound = math.sqrt(6 / (128 + 3 * 128))
    assert qkv.abs().max() <= bound and qkv.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
    assert not model.embed_state.bias.any()


# ---------------------------------------------------------------------------------- loss


class StubModel(nn.Module):
    """Predicts fixed actions (B, K, A), whatever it reads."""

    def __init__(self, predicted):
        super().__init__()
        self.predicted = predicted
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, states, actions, returns_to_go, timesteps, mask=None):
        return self.predicted + self.w


def test_loss_is_the_squared_error_on_real_steps_over_every_entry():
    algo = DT(S, A, small())
    g = torch.Generator().manual_seed(0)
    predicted = torch.randn(2, K, A, generator=g)
    batch = {
        "observations": torch.randn(2, K, S, generator=g),
        "actions": torch.randn(2, K, A, generator=g),
        "returns_to_go": torch.randn(2, K, generator=g),
        "timesteps": torch.zeros(2, K, dtype=torch.long),
        "mask": torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
    }
    algo.model = StubModel(predicted)
    total = 0.0
    for b in range(2):
        for k in range(K):
            if batch["mask"][b, k]:
                for i in range(A):
                    total += (predicted[b, k, i].item() - batch["actions"][b, k, i].item()) ** 2
    assert algo.loss(batch).item() == pytest.approx(total / (2 * K * A), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_learning_rate_warms_up_linearly_and_gradients_are_clipped(monkeypatch):
    torch.manual_seed(0)
    algo = DT(S, A, small(lr=1e-3, warmup_steps=4, clip_grad=0.01))
    buffer = SequenceBuffer(episodes_with_ids(), Normalizer.identity(S), K, 1.0)
    optimizer = algo.optimizers["model"]
    seen, step = [], optimizer.step

    def spy(*args, **kw):
        grads = [p.grad for p in algo.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        seen.append((optimizer.param_groups[0]["lr"], norm.item()))
        return step(*args, **kw)

    monkeypatch.setattr(optimizer, "step", spy)
    g = torch.Generator().manual_seed(0)
    metrics = [algo.update(buffer.sample(8, g)) for _ in range(6)]
    lrs = [lr for lr, _ in seen]
    assert lrs == pytest.approx([1e-3 * min((u + 1) / 4, 1) for u in range(6)])
    assert all(norm <= 0.01 * (1 + 1e-4) for _, norm in seen)
    assert all(m["grad_norm"] > 0.01 for m in metrics)  # the norm before clipping
    assert int(algo.updates) == 6


def test_state_round_trips_with_the_schedule():
    torch.manual_seed(0)
    cfg = small(warmup_steps=10)
    algo = DT(S, A, cfg)
    buffer = SequenceBuffer(episodes_with_ids(), Normalizer.identity(S), K, 1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        algo.update(buffer.sample(8, g))
    copy_ = DT(S, A, cfg)
    copy_.load_state(copy.deepcopy(algo.save_state()))  # as through a file: nothing shared
    batch = buffer.sample(8, g)
    torch.manual_seed(1)
    m1 = algo.update(batch)
    torch.manual_seed(1)
    m2 = copy_.update(batch)
    assert m1 == m2
    assert copy_.optimizers["model"].param_groups[0]["lr"] == pytest.approx(cfg.lr * 5 / 10)
    for p, q in zip(algo.parameters(), copy_.parameters(), strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------ the env


class Recorder(nn.Module):
    """Stands in for the model in a policy: records what it reads and predicts, at the last
    step, an action that names the step (its timestep / 10 in every dimension)."""

    def __init__(self):
        super().__init__()
        self.embed_state, self.action_head = nn.Linear(S, 1), nn.Linear(1, A)
        self.calls = []

    def forward(self, states, actions, returns_to_go, timesteps, mask=None):
        self.calls.append([x.clone() for x in (states, actions, returns_to_go, timesteps)])
        return (timesteps.float() / 10)[..., None].expand(*timesteps.shape, A)


def test_policy_decrements_the_return_to_go_and_keeps_the_last_k_steps():
    model, normalizer = Recorder(), Normalizer(np.full(S, 1.0), np.full(S, 2.0))
    cfg = small(reward_scale=0.01, episode_len=6)
    policy = DTPolicy(model, normalizer, target=300.0, cfg=cfg)
    observations = [np.full(S, float(t)) for t in range(9)]
    rewards = [10.0 + t for t in range(9)]
    actions = []
    for t in range(9):
        actions.append(policy(observations[t]))
        policy.observe(rewards[t])
    for t, (states, acts, rtg, timesteps) in enumerate(model.calls):
        steps = list(range(max(0, t - K + 1), t + 1))  # the last K steps, this one included
        assert states.shape == (1, len(steps), S)
        expected_states = [(observations[i] - 1.0) / 2.0 for i in steps]
        np.testing.assert_allclose(states[0].numpy(), expected_states)
        expected_rtg = [0.01 * (300.0 - sum(rewards[:i])) for i in steps]
        np.testing.assert_allclose(rtg[0].numpy(), expected_rtg, rtol=1e-6)
        # earlier steps carry the actions taken; this step's own token is zeros
        expected_actions = [actions[i] for i in steps[:-1]] + [np.zeros(A)]
        np.testing.assert_allclose(acts[0].numpy(), expected_actions)
        assert timesteps[0].tolist() == [min(i, cfg.episode_len - 1) for i in steps]
    assert actions[2].tolist() == pytest.approx([0.2, 0.2])
    policy.reset()
    policy(observations[0])
    assert model.calls[-1][2].tolist() == [[pytest.approx(3.0)]]
    assert model.calls[-1][3].tolist() == [[0]]


class Steps(gym.Env):
    """Observation t = (t, t, t); reward t + 1; ends after 3 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (S,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (A,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(S, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(S, self.t, np.float32), float(self.t), self.t == 3, False, {}


def test_episode_returns_resets_the_policy_and_feeds_it_each_reward():
    model = Recorder()
    policy = DTPolicy(model, Normalizer.identity(S), target=10.0, cfg=small(reward_scale=1.0))
    returns = episode_returns(
        Steps(), policy, 2, seed=0, reset=policy.reset, observe=policy.observe
    )
    assert returns.tolist() == [6.0, 6.0]
    rtgs = [call[2][0, -1].item() for call in model.calls]
    assert rtgs == [10.0, 9.0, 7.0] * 2  # R_0 = 10, then minus rewards 1, 2; again per episode
    assert [call[3][0, -1].item() for call in model.calls] == [0, 1, 2] * 2


# --------------------------------------------------------------------------- training runs


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Minari's notes on unset metadata
def test_build_takes_the_best_episode_return_without_targets_and_refuses_long_episodes(
    dataset_id,
):
    ds = load_dataset(dataset_id)
    cfg = OfflineConfig(algo="dt", dataset=dataset_id)
    algo, normalizer, buffer, scale = build(cfg, ds, torch.device("cpu"))
    assert isinstance(buffer, SequenceBuffer) and scale == 1.0
    assert algo.target_returns == (pytest.approx(ds.returns().max()),)
    assert list(algo.policies(normalizer)) == [f"target_{ds.returns().max():g}"]
    obs = ds.transitions()["observations"]
    np.testing.assert_allclose(normalizer.std.numpy(), obs.std(0) + 1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="--dt.episode-len 50"):
        build(OfflineConfig(algo="dt", dataset=dataset_id, dt=small(episode_len=49)), ds, "cpu")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_smoke_run_reports_every_target_return(dataset_id, tmp_path):
    run = tmp_path / "smoke"
    argv = ["--algo", "dt", "--preset", "smoke", "--dataset", dataset_id, "--logdir", str(run),
            "--steps", "100", "--eval-every", "50", "--eval-episodes", "1",
            "--dt.target-returns", "-200", "-800"]  # fmt: skip
    summary = train_offline_main(argv)
    assert summary["steps"] == 100
    trained = [r for r in rows(run) if "train/updates_per_s" in r]
    assert [r["step"] for r in trained] == [50, 100]
    assert {"train/loss", "train/grad_norm"} <= set(trained[0])
    evals = [r for r in rows(run) if "eval/return" in r]
    assert [r["step"] for r in evals] == [50, 100]
    for r in evals:
        for prefix in ("eval/", "eval/target_-800/"):
            score = 100 * (r[prefix + "return"] + 1500) / (-150 + 1500)  # conftest's references
            assert r[prefix + "normalized_score"] == pytest.approx(score)
        assert "eval/target_-200/return" not in r  # the first target's is eval/return
    assert all(np.isfinite(v) for r in rows(run) for v in r.values())
    saved = json.loads((run / "config.json").read_text())
    assert saved["dt"]["target_returns"] == [-200.0, -800.0] and saved["dt"]["hidden"] == 32


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(dataset_id, tmp_path):
    def args(logdir, steps):
        return ["--algo", "dt", "--dataset", dataset_id, "--preset", "smoke", "--steps",
                str(steps), "--eval_every", "10", "--eval_episodes", "1", "--log_every", "10",
                "--dt.warmup-steps", "15", "--logdir", str(logdir)]  # fmt: skip

    train_offline_main(args(tmp_path / "whole", 30))
    train_offline_main(args(tmp_path / "split", 10))  # stops inside the warmup
    train_offline_main(["--logdir", str(tmp_path / "split"), "--resume", "--steps", "30"])
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in whole] == [10, 20, 30]
    drop = ("train/updates_per_s", "time/wall_s")
    for a, b in zip(whole, split, strict=True):
        assert {k: v for k, v in a.items() if k not in drop} == {
            k: v for k, v in b.items() if k not in drop
        }
    nets = [load_checkpoint(tmp_path / d / "checkpoint.pt")["algo"] for d in ("whole", "split")]
    for k, v in nets[0]["nets"].items():
        assert torch.equal(v, nets[1]["nets"][k]), k
    assert nets[0]["scheduler"] == nets[1]["scheduler"]
