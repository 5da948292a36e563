"""offline.trajectory: joined transitions (values and the termination penalty against a loop),
windows (stop tokens after a termination, masks after a time limit), the learning-rate schedule,
and scripts/train_trajectory_transformer.py end to end on a Minari dataset: smoke run with
normalised scores and planning time that offline.compare tables, a resumed run equal to an
uninterrupted one, a run stopped inside an evaluation episode that resumes that episode."""

import importlib.util
import json
import os
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmrl.envs.datasets import OfflineDataset
from wmrl.infra import load_checkpoint
from wmrl.offline.compare import read_run
from wmrl.offline.trajectory import training
from wmrl.offline.trajectory.training import TrajectoryConfig, check_dataset, lr_factor
from wmrl.offline.trajectory.windows import TokenWindows, joined_transitions
from wmrl.worldmodels.trajectory_transformer import Discretizer

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Minari's notes on unset metadata
]
SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "train_trajectory_transformer.py"
TIME_KEYS = ("train/updates_per_s", "eval/plan_ms_per_step", "time/wall_s")


def main(argv):
    spec = importlib.util.spec_from_file_location("train_trajectory_transformer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def without_times(metrics):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in metrics]


def episode(T, terminated, start=0.0, S=2, A=1):
    """Observation t = (start + t, -t), action t = start + t / 10, reward t = t + 1."""
    t = np.arange(T + 1, dtype=np.float32)
    return {
        "observations": np.stack([start + t, -t], 1)[:, :S],
        "actions": ((start + t[:T]) / 10)[:, None].repeat(A, 1),
        "rewards": t[:T] + 1,
        "terminations": np.arange(T) == T - 1 if terminated else np.zeros(T, bool),
        "truncations": np.zeros(T, bool) if terminated else np.arange(T) == T - 1,
    }


# --------------------------------------------------------------------------------- data
def test_joined_rows_hold_values_from_the_penalised_rewards():
    ep = episode(5, terminated=True)
    rows_ = joined_transitions(ep, discount=0.9, penalty=-100.0)
    assert rows_.shape == (5, 2 + 1 + 2) and rows_.dtype == np.float32
    rewards = [1.0, 2.0, 3.0, 4.0, -100.0]  # the terminating step's reward is the penalty
    for t in range(5):
        value = sum(0.9 ** (k - 1) * rewards[t + k] for k in range(1, 5 - t))
        np.testing.assert_allclose(rows_[t], [t, -t, t / 10, rewards[t], value], rtol=1e-6)
    truncated = joined_transitions(episode(5, terminated=False), 0.9, -100.0)
    assert truncated[-1, 3] == 5.0  # a time limit keeps its reward
    assert joined_transitions(ep, 0.9, None)[-1, 3] == 5.0


def test_windows_stop_after_a_termination_and_are_masked_after_a_time_limit():
    eps = [episode(4, terminated=True), episode(3, terminated=False, start=100.0)]
    joined = [joined_transitions(ep, 0.99, -100.0) for ep in eps]
    disc = Discretizer.fit(np.concatenate(joined), 8)
    windows = TokenWindows(joined, [True, False], disc, seq_len=3)
    assert len(windows) == 7
    D, stop = 5, 8
    tokens = disc.discretize(torch.from_numpy(np.concatenate(joined)))  # (7, D)
    batch = windows.at(torch.arange(7))
    assert batch["tokens"].shape == batch["mask"].shape == (7, 3 * D)
    for start, (end, ended) in enumerate([(4, True)] * 4 + [(7, False)] * 3):
        got = batch["tokens"][start].view(3, D)
        mask = batch["mask"][start].view(3, D)
        for k in range(3):
            if start + k < end:  # inside the episode: its transition's tokens
                assert got[k].tolist() == tokens[start + k].tolist()
                assert (mask[k] == 1).all()
            else:  # past it: stop tokens, learned after a termination, masked after a time limit
                assert (got[k] == stop).all()
                assert (mask[k] == float(ended)).all()
    sample = windows.sample(64, torch.Generator().manual_seed(0))
    assert sample["tokens"].shape == (64, 15) and sample["tokens"].max() <= stop


def test_learning_rate_warms_up_over_an_epoch_then_follows_mingpts_cosine():
    cfg = TrajectoryConfig(batch_size=10)
    windows = 1000  # one epoch = 100 updates
    assert lr_factor(0, windows, cfg) == pytest.approx(0.01)
    assert lr_factor(49, windows, cfg) == pytest.approx(0.5)
    assert lr_factor(99, windows, cfg) == pytest.approx(1.0)
    half = 99 + 19 * 100 // 2  # halfway from 1 epoch to 20: cos(pi / 2)
    assert lr_factor(half, windows, cfg) == pytest.approx(0.5)
    assert lr_factor(99 + 1900, windows, cfg) == pytest.approx(0.1)  # floored at 10 %
    assert lr_factor(99 + 3800, windows, cfg) == pytest.approx(1.0)  # not clamped: rises again
    assert lr_factor(5, windows, TrajectoryConfig(lr_decay=False)) == 1.0


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="--dataset is required"):
        main(["--logdir", str(tmp_path / "a")])
    ep = episode(3, terminated=False)
    images = OfflineDataset("x/images-v0", [ep], gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
                            gym.spaces.Box(-1, 1, (1,)))  # fmt: skip
    with pytest.raises(ValueError, match="flat vector observations"):
        check_dataset(images)
    with pytest.raises(SystemExit):  # a context as long as the windows, named by argparse
        main(["--dataset", "x", "--model.context", "10", "--logdir", str(tmp_path / "b")])


# ---------------------------------------------------------------------------------- runs
@pytest.fixture
def hopper(minari_dataset):
    """Eight random Hopper-v5 episodes of at most 40 steps (most end by falling)."""
    return minari_dataset("Hopper-v5", episodes=8, max_steps=40)


def smoke(dataset, logdir, *extra):
    return ["--dataset", dataset, "--preset", "smoke", "--logdir", str(logdir), *extra]


def test_smoke_run_logs_normalised_scores_and_planning_time_that_compare_tables(hopper, tmp_path):
    run = tmp_path / "run"
    summary = main(smoke(hopper, run, "--eval-episodes", "2"))
    assert summary["steps"] == 60 and summary["beam_width"] == 4
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl"):
        assert (run / name).exists(), name
    conf = json.loads((run / "config.json").read_text())
    assert conf["algo"] == "tt" and conf["model"]["width"] == 32 and conf["beam"]["horizon"] == 2
    metrics = rows(run)
    train = [r for r in metrics if "train/loss" in r]
    assert [r["step"] for r in train] == [20, 30, 40, 60]  # log_every 20, checkpoint_every 30
    assert all(np.isfinite(r["train/loss"]) and r["train/action_ce"] > 0 for r in train)
    (evals,) = [r for r in metrics if "eval/return" in r]
    assert evals["step"] == 60 and evals["eval/beam_width"] == 4
    assert evals["eval/plan_ms_per_step"] > 0
    expected = 100 * (evals["eval/return"] - 0.0) / (1000.0 - 0.0)  # conftest's Hopper refs
    assert evals["eval/normalized_score"] == pytest.approx(expected)
    assert summary["normalized_score"] == evals["eval/normalized_score"]
    table_row = read_run(run)  # offline.compare tables it as "tt", beside MOReL and the suite
    assert table_row["algo"] == "tt" and table_row["metric"] == "eval/normalized_score"
    assert list(table_row["steps"]) == [60]


def test_resumed_run_equals_an_uninterrupted_one(hopper, tmp_path):
    every = ["--eval-every", "30"]
    main(smoke(hopper, tmp_path / "whole", *every))
    main(smoke(hopper, tmp_path / "split", *every, "--steps", "30"))
    summary = main(["--logdir", str(tmp_path / "split"), "--resume", "--steps", "60"])
    assert summary["steps"] == 60
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert [r["step"] for r in whole] == [20, 30, 30, 40, 60, 60]  # train and eval rows
    assert without_times(split) == without_times(whole)


def test_a_run_stopped_inside_an_evaluation_episode_resumes_that_episode(hopper, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    args = ["--eval-episodes", "2"]
    main(smoke(hopper, tmp_path / "whole", *args))
    plan = training.PlanningPolicy.__call__
    calls = {"n": 0}

    def interrupted(self, obs):  # Ctrl-C at the third step of the second episode
        calls["n"] += 1
        if self.steps == 2 and calls["n"] > 3 and calls["n"] < 1000:
            calls["n"] = 1000
            os.kill(os.getpid(), signal.SIGINT)
        return plan(self, obs)

    monkeypatch.setattr(training.PlanningPolicy, "__call__", interrupted)
    with pytest.raises(SystemExit) as stopped:
        main(smoke(hopper, tmp_path / "split", *args))
    assert stopped.value.code == 128 + signal.SIGINT
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert state["step"] == 60 and len(state["evaluation"]["returns"]) == 1
    monkeypatch.setattr(training.PlanningPolicy, "__call__", plan)
    main(["--logdir", str(tmp_path / "split"), "--resume"])
    assert without_times(rows(tmp_path / "split")) == without_times(rows(tmp_path / "whole"))
