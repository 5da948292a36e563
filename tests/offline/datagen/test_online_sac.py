"""Online SAC (offline/datagen/online_sac.py) against its equations, and the D4RL-style datasets
that offline/datagen/make_dataset.py writes from one SAC run."""

import importlib.util
import json
import math
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

import wmrl.offline.datagen.make_dataset as md
from wmrl import envs
from wmrl.infra import apply_overrides, load_checkpoint, read_metrics
from wmrl.offline.common import TransitionBuffer, symmetric_bound
from wmrl.offline.datagen.make_dataset import KINDS, PRESETS, MakeDatasetConfig, make_dataset
from wmrl.offline.datagen.online_sac import SAC, SACConfig

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Minari's and gymnasium's notes
]
SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty Minari datasets root for this test."""
    path = tmp_path / "datasets"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def batch_of(obs_dim=3, action_dim=2, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n, obs_dim, generator=g),
        "actions": torch.rand(n, action_dim, generator=g) * 2 - 1,
        "rewards": torch.randn(n, generator=g),
        "next_observations": torch.randn(n, obs_dim, generator=g),
        "dones": torch.tensor([0.0, 1.0] * (n // 2)),
    }


# ------------------------------------------------------------------------------- SAC


def test_critic_target_is_min_target_q_minus_alpha_log_prob():
    torch.manual_seed(0)
    sac = SAC(3, 2, SACConfig(hidden=16, init_log_alpha=math.log(0.3)), max_action=2.0)
    with torch.no_grad():  # targets apart from the critics, so using the wrong one shows
        for p in sac.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = batch_of()
    torch.manual_seed(1)
    next_a, next_log_prob = sac.actor(batch["next_observations"])
    torch.manual_seed(1)  # the same a' ~ pi(.|s') inside
    y = sac.critic_target_value(batch)

    x = torch.cat([batch["next_observations"], next_a], -1)
    with torch.no_grad():
        q1, q2 = (sac.critic_target.member(i)(x).squeeze(-1) for i in range(2))
    soft_v = torch.minimum(q1, q2) - 0.3 * next_log_prob
    expected = batch["rewards"] + 0.99 * (1 - batch["dones"]) * soft_v
    torch.testing.assert_close(y, expected)
    assert (next_a.abs() <= 2.0).all() and next_a.abs().max() > 1.0  # scaled by max_action
    # a termination keeps the reward alone
    done = batch["dones"] == 1
    torch.testing.assert_close(y[done], batch["rewards"][done])


def test_alpha_loss_gradient_is_entropy_minus_target():
    sac = SAC(3, 2, SACConfig(hidden=16))  # H_target = -2
    assert sac.target_entropy == -2.0
    for log_prob, grows in ((torch.full((8,), 5.0), True), (torch.full((8,), -5.0), False)):
        sac.log_alpha.grad = None
        sac.alpha_loss(log_prob).backward()
        entropy = -log_prob.mean()
        torch.testing.assert_close(sac.log_alpha.grad, entropy - sac.target_entropy)
        # gradient descent raises alpha exactly when the entropy is below the target
        assert (sac.log_alpha.grad < 0) == grows

    # and through whole updates: a target entropy far above the policy's drives alpha up
    low = SAC(3, 2, SACConfig(hidden=16, target_entropy=10.0, alpha_lr=1e-2))
    high = SAC(3, 2, SACConfig(hidden=16, target_entropy=-50.0, alpha_lr=1e-2))
    for _ in range(20):
        m_low, m_high = low.update(batch_of()), high.update(batch_of())
    assert m_low["alpha"] > 1.1 and m_high["alpha"] < 0.9


def test_update_trains_only_what_each_loss_owns():
    torch.manual_seed(0)
    sac = SAC(3, 2, SACConfig(hidden=16))
    before = {k: v.clone() for k, v in sac.state_dict().items()}
    metrics = sac.update(batch_of())
    after = sac.state_dict()
    assert set(metrics) == {"critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "q"}
    assert all(math.isfinite(v) for v in metrics.values())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("actor.") for k in changed) and "log_alpha" in changed
    assert any(k.startswith("critic.") for k in changed)
    # targets move by Polyak averaging: tau of the way to the updated critics
    for k in before:
        if k.startswith("critic_target."):
            src = "critic." + k.removeprefix("critic_target.")
            torch.testing.assert_close(after[k], torch.lerp(before[k], after[src], 5e-3))
    assert int(sac.updates) == 1
    # the actor's loss leaves no gradient on the critics
    sac.critic.zero_grad(set_to_none=True)
    sac.actor_loss(batch_of()["observations"])[0].backward()
    assert all(p.grad is None for p in sac.critic.parameters())


def test_sac_learns_a_bandit_optimum():
    """One-step bandit r = -(a - 0.5)^2 (every step terminal): the deterministic action goes to
    the optimum 0.5 within a few hundred updates."""
    torch.manual_seed(0)
    n = 4096
    obs = np.ones((n, 1), np.float32)
    actions = np.random.default_rng(0).uniform(-1, 1, (n, 1)).astype(np.float32)
    buf = TransitionBuffer(n, 1, 1)
    buf.add(obs, actions, -((actions[:, 0] - 0.5) ** 2), obs, np.ones(n))
    lr = 3e-3
    cfg = SACConfig(hidden=32, actor_lr=lr, critic_lr=lr, alpha_lr=lr, init_log_alpha=-3.0)
    sac = SAC(1, 1, cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        metrics = sac.update(buf.sample(128, g))
    action = sac.act(torch.ones(1, 1)).item()
    assert abs(action - 0.5) < 0.08, action
    assert metrics["q"] > -0.5  # the critic has found the top of the parabola, not the mean
    samples = sac.sample(torch.ones(256, 1))
    assert samples.std() > 0 and abs(samples.mean().item() - 0.5) < 0.15


def test_bounds_must_be_symmetric_and_uniform():
    assert symmetric_bound(gym.spaces.Box(-2.0, 2.0, (1,))) == 2.0
    for space in (
        gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 2.0])),
        gym.spaces.Box(np.array([-1.0, -2.0]), np.array([1.0, 2.0])),
        gym.spaces.Box(-np.inf, np.inf, (2,)),
    ):
        with pytest.raises(ValueError, match=r"\[-m, m\].*RescaleAction"):
            symmetric_bound(space, "test env")
    with pytest.raises(ValueError, match="flat Box"):
        symmetric_bound(gym.spaces.Discrete(3))


# ------------------------------------------------------------------------ make_dataset


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hopper_healthy(obs):
    """Hopper-v5's is_healthy read from observations (z, angle, qpos[2:], clipped qvel), (N,)."""
    obs = np.atleast_2d(obs)
    return (obs[:, 0] > 0.7) & (np.abs(obs[:, 1]) < 0.2) & (np.abs(obs[:, 1:6]) < 100).all(1)


def check_hopper_episode(ep):
    """Terminations exactly where Hopper fell, truncations only at an episode's last step."""
    term, trunc = ep["terminations"], ep["truncations"]
    assert not term[:-1].any() and not trunc[:-1].any()
    assert term[-1] or trunc[-1]  # every episode ends with its reason
    healthy = hopper_healthy(ep["observations"][1:])
    assert healthy[:-1].all()
    if term[-1]:  # unhealthy, or a velocity beyond 100 (clipped to 10 in the observation)
        assert not healthy[-1] or (np.abs(ep["observations"][-1, 6:]) == 10).any()
    else:
        assert healthy[-1]
    assert len(ep["actions"]) <= 1000


def test_make_dataset_writes_five_loadable_d4rl_datasets(root, tmp_path, capsys):
    logdir = tmp_path / "run"
    argv = ["--preset", "smoke", "--logdir", str(logdir), "--device", "cpu", "--sac-steps", "1200",
            "--start-steps", "300", "--eval-every", "300", "--dataset-size", "400",
            "--ref-episodes", "3", "--sac.hidden", "24", "--name", "test/hopper"]  # fmt: skip
    summary = script("make_dataset").main(argv)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary))
    lo, hi = summary["ref_min_score"], summary["ref_max_score"]
    assert hi > lo
    assert list(summary["datasets"]) == list(KINDS)
    sizes = {"medium-replay": summary["medium_step"], "medium-expert": 800}
    loaded = {}
    for kind, info in summary["datasets"].items():
        assert info["id"] == f"test/hopper-{kind}-v0"
        mds = minari.load_dataset(info["id"])
        assert mds.total_steps == sizes.get(kind, 400) == info["transitions"]
        assert minari.get_normalized_score(mds, np.array([hi])) == pytest.approx(1.0)
        ds = loaded[kind] = envs.load_dataset(info["id"])
        assert (ds.ref_min_score, ds.ref_max_score) == (lo, hi)
        assert ds.total_steps == info["transitions"] and len(ds) == info["episodes"]
        assert ds.env_spec.id == "Hopper-v5"
        for ep in ds.episodes:
            check_hopper_episode(ep)

    # medium-expert is medium's episodes then expert's
    both = loaded["medium"].episodes + loaded["expert"].episodes
    assert len(loaded["medium-expert"].episodes) == len(both)
    for a, b in zip(loaded["medium-expert"].episodes, both, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)

    # medium is the snapshot whose evaluated return is closest to a third of the way up
    rows = read_metrics(logdir)
    evals = {r["step"]: r["eval/return"] for r in rows if "eval/return" in r}
    assert sorted(evals) == [300, 600, 900, 1200]
    target = lo + (hi - lo) / 3
    best = min(evals, key=lambda s: (abs(evals[s] - target), s))
    assert summary["medium_step"] == best
    assert summary["medium_return"] == pytest.approx(evals[best])

    # medium-replay is the SAC run itself up to the medium step: its whole episodes are the
    # training episodes logged (train/return at their last step), the last one cut there
    replay = loaded["medium-replay"].episodes
    ends = np.cumsum([len(ep["actions"]) for ep in replay])
    logged = [(r["step"], r["train/return"]) for r in rows if "train/return" in r]
    whole = [(s, ret) for s, ret in logged if s <= best]
    assert [int(e) for e in ends[: len(whole)]] == [s for s, _ in whole]
    returns = [ep["rewards"].sum(dtype=np.float64) for ep in replay[: len(whole)]]
    np.testing.assert_allclose(returns, [ret for _, ret in whole], rtol=1e-5)
    assert ends[-1] == best and len(replay) - len(whole) <= 1

    assert (logdir / "config.json").is_file() and list(logdir.glob("events.out.tfevents*"))
    config = json.loads((logdir / "config.json").read_text())
    assert config["sac"]["hidden"] == 24 and config["sac_steps"] == 1200
    assert any("train/critic_loss" in r and "train/alpha" in r for r in rows)

    # a second run refuses the same ids before it trains, and names the fix
    with pytest.raises(FileExistsError, match="--overwrite"):
        script("make_dataset").main(argv[:3] + [str(tmp_path / "run2")] + argv[4:])
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()


def test_make_dataset_resumes_after_an_interruption(root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = apply_overrides(
        MakeDatasetConfig(),
        {**PRESETS["smoke"], "logdir": str(run), "device": "cpu", "kinds": ("medium-replay",),
         "sac_steps": 1200, "start_steps": 300, "eval_every": 300, "checkpoint_every": 300,
         "ref_episodes": 3, "eval_episodes": 2},
    )  # fmt: skip
    real, calls = md.evaluate, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:  # the evaluation at step 600, before its checkpoint
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(md, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(cfg)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 300
    before = read_metrics(run)
    monkeypatch.setattr(md, "evaluate", real)

    summary = make_dataset(cfg, resume=True)
    assert summary["sac_steps"] == 1200
    state = load_checkpoint(run / "checkpoint.pt")
    assert [s["step"] for s in state["snapshots"]] == [300, 600, 900, 1200]
    assert int(state["sac"]["nets"]["updates"]) == 900  # one per step that SAC acted
    rows = read_metrics(run)
    assert [r for r in rows if r["step"] <= 300] == [r for r in before if r["step"] <= 300]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and 1200 in steps

    # every step of the run is kept; the episode running at the interruption ends there
    rec = md.EpisodeRecorder()
    rec.load_state_dict(state["episodes"])
    assert rec.total_steps == 1200
    ends = np.cumsum([len(ep["actions"]) for ep in rec.episodes])
    assert 300 in ends
    for ep in rec.episodes:
        check_hopper_episode(ep)
    ds = envs.load_dataset(summary["datasets"]["medium-replay"]["id"])
    assert ds.total_steps == summary["medium_step"]
    for a, b in zip(ds.episodes, rec.prefix(summary["medium_step"]), strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)

    # resuming a finished run trains nothing and reports the same datasets
    again = make_dataset(cfg, resume=True)
    assert again["datasets"] == summary["datasets"]


def test_recorder_cuts_episodes_as_truncations_and_round_trips():
    rec = md.EpisodeRecorder()
    rec.reset(np.zeros(2))
    for t in range(3):  # falls at its third step
        rec.step(np.full(1, t), 1.0, np.full(2, t + 1.0), t == 2, False)
    rec.reset(np.full(2, 10.0))
    for t in range(4):  # a time limit
        rec.step(np.full(1, t), 2.0, np.full(2, t + 11.0), False, t == 3)
    rec.reset(np.full(2, 20.0))
    for t in range(2):  # still running
        rec.step(np.full(1, t), 3.0, np.full(2, t + 21.0), False, False)
    assert rec.total_steps == 9 and len(rec.episodes) == 2

    whole = rec.prefix(3)
    assert len(whole) == 1 and whole[0]["terminations"][-1] and not whole[0]["truncations"].any()
    cut = rec.prefix(5)
    assert [len(ep["actions"]) for ep in cut] == [3, 2]
    assert cut[1]["truncations"].tolist() == [False, True] and not cut[1]["terminations"].any()
    np.testing.assert_array_equal(cut[1]["observations"][:, 0], [10.0, 11.0, 12.0])
    assert rec.episodes[1]["truncations"].tolist() == [False] * 3 + [True]  # not modified

    restored = md.EpisodeRecorder()
    restored.load_state_dict(rec.state_dict())
    assert restored.total_steps == 9 and len(restored.episodes) == 3
    for a, b in zip(restored.episodes[:2], rec.episodes, strict=True):
        assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    last = restored.episodes[2]  # the one in progress comes back ended by a truncation
    assert last["truncations"].tolist() == [False, True] and not last["terminations"].any()
    np.testing.assert_array_equal(last["observations"][:, 0], [20.0, 21.0, 22.0])


def test_bad_input_is_named(root, tmp_path):
    with pytest.raises(ValueError, match="kinds must be.*'medium-replay'"):
        MakeDatasetConfig(kinds=("medium", "meduim"))
    with pytest.raises(envs.UnknownEnvError, match="Hoper-v5"):
        make_dataset(MakeDatasetConfig(env="Hoper-v5", logdir=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="malformed dataset id"):
        make_dataset(MakeDatasetConfig(name="bad name!", logdir=str(tmp_path / "b")))
    assert md.dataset_ids(MakeDatasetConfig(env="gym:HalfCheetah-v5"))["medium-expert"] == (
        "wmrl/halfcheetah-medium-expert-v0"
    )
