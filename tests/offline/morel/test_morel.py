"""offline.morel.train: the per-row-member view of the ensemble, the smoke run through the script on
a dataset written by Minari's own API (threshold, halt fraction, normalised scores, the table of
offline.compare), exact resume without refitting, and errors on bad input."""

import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from wmrl.envs.datasets import OfflineDataset
from wmrl.infra import load_checkpoint
from wmrl.offline.compare import read_run
from wmrl.offline.morel.train import MemberModel, MOReLConfig, check_dataset, train_morel
from wmrl.worldmodels.ensemble import DynamicsEnsemble, EnsembleConfig

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Minari's notes on unset metadata
]
SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "train_morel.py"
REF_MIN, REF_MAX = -1500.0, -150.0  # the Pendulum dataset of conftest.py
TIME_KEYS = ("train/iter_s", "time/wall_s", "time/model_fit_s")


def main(argv):
    spec = importlib.util.spec_from_file_location("train_morel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def smoke_args(dataset_id, logdir, iterations=4):
    return ["--dataset", dataset_id, "--preset", "smoke", "--iterations", str(iterations),
            "--logdir", str(logdir)]  # fmt: skip


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_member_model_gathers_each_rows_member_from_one_batched_pass():
    torch.manual_seed(0)
    ens = DynamicsEnsemble(3, 2, EnsembleConfig(members=4, hidden=16)).eval()
    ens.fit_normalizers(torch.randn(50, 3), torch.randn(50, 2), torch.randn(50, 3), torch.randn(50))
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    member = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    model = MemberModel(ens)
    out = model.predict(obs, act, member)
    every = ens.predict(obs, act)  # (N, B, .) all members
    for key in ("next_obs", "reward", "terminated_prob"):
        by_hand = torch.stack([every[key][member[b], b] for b in range(7)])
        assert torch.equal(out[key], by_hand), key
    assert model.members == 4
    # disc of the same (s, a) reuses the pass; a changed obs is recomputed, not reused
    assert torch.allclose(model.disagreement(obs, act), ens.disagreement(obs, act))
    model.predict(obs, act, member)
    obs.add_(1.0)
    assert torch.allclose(model.disagreement(obs, act), ens.disagreement(obs, act))

    prob = DynamicsEnsemble(3, 2, EnsembleConfig(members=3, hidden=16, probabilistic=True))
    member = torch.tensor([2, 0, 1, 2, 1, 0, 0])
    torch.manual_seed(1)
    out = MemberModel(prob).predict(obs, act, member)  # samples (PETS) by default
    torch.manual_seed(1)
    every = prob.predict(obs, act, sample=True)
    assert torch.equal(out["next_obs"], every["next_obs"][member, torch.arange(7)])


def test_smoke_run_logs_threshold_halts_and_normalized_scores(dataset_id, tmp_path):
    run = tmp_path / "run"
    summary = main(smoke_args(dataset_id, run))
    assert summary["iterations"] == 4
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "model/metrics.jsonl"):
        assert (run / name).exists(), name
    conf = json.loads((run / "config.json").read_text())
    assert conf["algo"] == "morel" and conf["ensemble"]["hidden"] == 32

    metrics = rows(run / "metrics.jsonl")
    steps = [r for r in metrics if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(0.0 <= r["pmdp/halt_fraction"] <= 1.0 for r in steps)
    evals = [r for r in steps if "eval/return" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        expected = 100 * (r["eval/return"] - REF_MIN) / (REF_MAX - REF_MIN)
        assert r["eval/normalized_score"] == pytest.approx(expected)
        assert "pmdp/halt_fraction" in r and "time/wall_s" in r
    assert summary["normalized_score"] == evals[-1]["eval/normalized_score"]
    epochs = rows(run / "model" / "metrics.jsonl")
    assert [r["step"] for r in epochs] == list(range(1, len(epochs) + 1))
    assert all("model/holdout_loss" in r for r in epochs)

    # threshold = max_k disc(s_k, a_k) / pessimism, from the saved ensemble, pairs by hand
    (usad,) = [r for r in metrics if "usad/threshold" in r]
    state = load_checkpoint(run / "checkpoint.pt")
    ens = DynamicsEnsemble(3, 1, EnsembleConfig(**conf["ensemble"]))
    ens.load_state_dict(state["ensemble"])
    t = minari.load_dataset(dataset_id)
    obs = np.concatenate([ep.observations[:-1] for ep in t])
    act = np.concatenate([ep.actions for ep in t])
    with torch.no_grad():
        pred = ens.predict(torch.as_tensor(obs), torch.as_tensor(act))["next_obs"]
    n = len(pred)
    disc = torch.stack([(pred[i] - pred[j]).norm(dim=-1) for i in range(n) for j in range(i)])
    expected = float(disc.max()) / MOReLConfig().pessimism
    assert usad["usad/threshold"] == pytest.approx(expected, rel=1e-5)
    assert summary["threshold"] == pytest.approx(expected, rel=1e-5)

    table_row = read_run(run)  # offline.compare tabulates it as "morel"
    assert table_row["algo"] == "morel" and table_row["metric"] == "eval/normalized_score"
    assert list(table_row["steps"]) == [2, 4]


def test_resumed_run_equals_an_uninterrupted_one_without_refitting(dataset_id, tmp_path):
    main(smoke_args(dataset_id, tmp_path / "whole", iterations=4))
    main(smoke_args(dataset_id, tmp_path / "split", iterations=2))  # checkpoints at 2
    model_log = (tmp_path / "split" / "model" / "metrics.jsonl").read_text()
    summary = main(["--logdir", str(tmp_path / "split"), "--resume", "--iterations", "4"])
    assert summary["iterations"] == 4
    assert (tmp_path / "split" / "model" / "metrics.jsonl").read_text() == model_log  # no refit
    whole, split = (
        rows(tmp_path / "whole" / "metrics.jsonl"),
        rows(tmp_path / "split" / "metrics.jsonl"),
    )
    assert [r["step"] for r in split] == [r["step"] for r in whole] == [0, 0, 1, 2, 3, 4]
    for a, b in zip(whole, split, strict=True):
        assert {k: v for k, v in a.items() if k not in TIME_KEYS} == {
            k: v for k, v in b.items() if k not in TIME_KEYS
        }


def test_cem_planner_plans_real_episodes_in_the_pmdp_and_resumes(dataset_id, tmp_path):
    run = tmp_path / "cem"
    args = smoke_args(dataset_id, run) + ["--planner", "cem", "--eval-episodes", "1"]
    first = main(args)
    assert first["planner"] == "cem" and first["episodes"] == 1
    model_log = (run / "model" / "metrics.jsonl").read_text()
    summary = main(["--logdir", str(run), "--resume", "--eval-episodes", "2"])
    assert (run / "model" / "metrics.jsonl").read_text() == model_log  # no refit
    metrics = rows(run / "metrics.jsonl")
    assert not any(k.startswith("bc/") for r in metrics for k in r)  # no policy to clone into
    episodes = [r for r in metrics if r["step"] > 0]
    assert [r["step"] for r in episodes] == [1, 2]
    assert episodes[0]["eval/episode_return"] == pytest.approx(first["eval_return"])
    returns = [r["eval/episode_return"] for r in episodes]
    assert -200 * 16.3 <= min(returns) and max(returns) <= 0  # 200 Pendulum steps, r in [-16.3, 0]
    assert all(0.0 <= r["pmdp/halt_fraction"] <= 1.0 for r in episodes)
    last = episodes[-1]
    assert last["eval/return"] == pytest.approx(np.mean(returns))
    expected = 100 * (np.mean(returns) - REF_MIN) / (REF_MAX - REF_MIN)
    assert last["eval/normalized_score"] == pytest.approx(expected)
    assert summary["normalized_score"] == pytest.approx(expected) and summary["episodes"] == 2


def test_bad_input_is_named(dataset_id, tmp_path):
    with pytest.raises(ValueError, match="--dataset is required"):
        main(["--logdir", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="--dataset is required"):
        train_morel(MOReLConfig(logdir=str(tmp_path / "b")))
    with pytest.raises(SystemExit):  # the config refuses a negative pessimism, named by argparse
        main(["--dataset", dataset_id, "--pessimism", "-1", "--logdir", str(tmp_path / "c")])
    ep = {"observations": np.zeros((3, 2), np.float32), "actions": np.zeros((2, 1), np.float32),
          "rewards": np.zeros(2, np.float32), "terminations": np.zeros(2, bool),
          "truncations": np.zeros(2, bool)}  # fmt: skip
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    lopsided = OfflineDataset("x/lopsided-v0", [ep], obs_space, gym.spaces.Box(0, 1, (1,)))
    with pytest.raises(ValueError, match="bounds must be"):
        check_dataset(lopsided)
    images = OfflineDataset(
        "x/images-v0", [ep], gym.spaces.Box(0, 255, (4, 4, 3), np.uint8), lopsided.action_space
    )
    with pytest.raises(ValueError, match="flat vector observations"):
        check_dataset(images)
