"""The offline training loop and the comparison table, on datasets written by Minari's own API."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmrl.envs.datasets import load_dataset
from wmrl.offline.compare import CompareConfig, compare_offline
from wmrl.offline.trainer import ALGORITHMS, OfflineConfig, build, train_offline

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Minari's notes on unset metadata
]
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
REF_MIN, REF_MAX = -1500.0, -150.0  # the Pendulum dataset of conftest.py


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_args(algo, dataset_id, logdir, steps=30, eval_every=15):
    return ["--algo", algo, "--dataset", dataset_id, "--preset", "smoke", "--steps", str(steps),
            "--eval_every", str(eval_every), "--eval_episodes", "1", "--log_every", "10",
            "--logdir", str(logdir)]  # fmt: skip


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_smoke_runs_and_reports_normalized_scores(algo, dataset_id, tmp_path):
    summary = script("train_offline").main(smoke_args(algo, dataset_id, tmp_path / algo))
    assert summary["steps"] == 30
    evals = [r for r in rows(tmp_path / algo) if "eval/return" in r]
    assert [r["step"] for r in evals] == [15, 30]
    for r in evals:
        expected = 100 * (r["eval/return"] - REF_MIN) / (REF_MAX - REF_MIN)
        assert r["eval/normalized_score"] == pytest.approx(expected)
    trained = [r for r in rows(tmp_path / algo) if "train/updates_per_s" in r]
    assert [r["step"] for r in trained] == [10, 20, 30]
    assert all(np.isfinite(v) for r in trained for v in r.values())
    assert (tmp_path / algo / "checkpoint.pt").exists()
    assert json.loads((tmp_path / algo / "config.json").read_text())["algo"] == algo


def test_resumed_run_equals_an_uninterrupted_one(dataset_id, tmp_path):
    main = script("train_offline").main
    # Evaluations at 10, 20, 30, 40 in both; the split run stops (and checkpoints) at 20.
    main(smoke_args("td3bc", dataset_id, tmp_path / "whole", steps=40, eval_every=10))
    main(smoke_args("td3bc", dataset_id, tmp_path / "split", steps=20, eval_every=10))
    main(["--logdir", str(tmp_path / "split"), "--resume", "--steps", "40"])
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in whole]
    drop = ("train/updates_per_s", "time/wall_s")
    for a, b in zip(whole, split, strict=True):
        assert {k: v for k, v in a.items() if k not in drop} == pytest.approx(
            {k: v for k, v in b.items() if k not in drop}
        )


def test_states_and_rewards_are_normalized_as_the_config_says(dataset_id):
    from wmrl import envs

    ds = envs.load_dataset(dataset_id)
    t = ds.transitions()
    cfg = OfflineConfig(algo="iql", dataset=dataset_id)  # normalize_states and _reward on
    algo, normalizer, buffer, scale = build(cfg, ds, torch.device("cpu"))
    returns = ds.returns()
    assert scale == pytest.approx(1000 / (returns.max() - returns.min()))
    np.testing.assert_allclose(buffer.data["rewards"].numpy(), t["rewards"] * scale, rtol=1e-5)
    z = buffer.data["observations"].numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(
        z.std(0), t["observations"].std(0) / (t["observations"].std(0) + 1e-3), rtol=1e-4
    )
    assert algo.max_action == 2.0 and cfg.iql.max_steps == cfg.steps
    cfg = OfflineConfig(algo="sacn", dataset=dataset_id)  # CORL's SAC-N: raw states
    _, normalizer, buffer, scale = build(cfg, ds, torch.device("cpu"))
    assert scale == 1.0
    np.testing.assert_array_equal(buffer.data["observations"].numpy(), t["observations"])


def test_bad_input_is_named(dataset_id, tmp_path):
    with pytest.raises(ValueError, match="--dataset is required"):
        train_offline(OfflineConfig(logdir=str(tmp_path / "a")))
    with pytest.raises(SystemExit):  # argparse names the choices
        script("train_offline").main(["--algo", "dqn", "--dataset", dataset_id])
    with pytest.raises(FileNotFoundError, match="test/pendulum-random-v1"):
        train_offline(OfflineConfig(dataset="test/pendulum-random-v1", logdir=str(tmp_path / "b")))


def test_a_non_finite_loss_names_the_data_first_then_the_settings(dataset_id, tmp_path):
    """Rewards of 1e30 (finite, so the load accepts them) overflow TD3+BC's critic: the error
    names the dataset and its rescaling flags first, then the learning rates, and since no
    checkpoint was written yet, says to start again (not to resume)."""
    data = load_dataset(dataset_id)
    for ep in data.episodes:
        ep["rewards"] = np.full_like(ep["rewards"], 1e30)
    cfg = OfflineConfig(algo="td3bc", dataset=dataset_id, logdir=str(tmp_path / "run"),
                        steps=20, log_every=10, eval_every=100, checkpoint_every=100)  # fmt: skip
    import wmrl.offline.trainer as trainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "load_dataset", lambda *_, **__: data)
        with pytest.raises(FloatingPointError) as err:
            train_offline(cfg)
    message = str(err.value)
    causes = message[message.index("likely causes, in order: ") :]
    assert causes.index(f"dataset {data.dataset_id!r}") < causes.index("--td3bc.*-lr")
    assert "--td3bc.normalize-reward" in causes and "No checkpoint was written yet" in causes


def test_comparison_table_aggregates_seeds_and_skips_finished_runs(dataset_id, tmp_path):
    cfg = CompareConfig(algos="bc,td3bc", datasets=dataset_id, seeds="0,1", steps=20,
                        eval_every=10, eval_episodes=1, preset="smoke",
                        logdir=str(tmp_path))  # fmt: skip
    table = compare_offline(cfg)
    assert [(r["algo"], r["seeds"], r["steps"]) for r in table] == [("bc", 2, 20), ("td3bc", 2, 20)]
    for r in table:
        finals, bests = [], []
        for seed in (0, 1):
            d = tmp_path / r["algo"] / "test__pendulum-random-v0" / f"seed{seed}"
            scores = [x["eval/normalized_score"] for x in rows(d) if "eval/normalized_score" in x]
            finals.append(scores[-1])
            bests.append(max(scores))
        assert r["last_mean"] == pytest.approx(np.mean(finals))
        assert r["last_std"] == pytest.approx(np.std(finals))
        assert r["best_mean"] == pytest.approx(np.mean(bests))
    for suffix in (".md", ".csv", ".png"):
        assert (tmp_path / f"comparison{suffix}").stat().st_size > 0
    assert (
        "| td3bc | test/pendulum-random-v0 | 2 | 20 |" in (tmp_path / "comparison.md").read_text()
    )
    metrics = tmp_path / "bc" / "test__pendulum-random-v0" / "seed0" / "metrics.jsonl"
    before = metrics.read_text()
    compare_offline(cfg)  # finished: nothing reruns
    assert metrics.read_text() == before


def test_comparison_restarts_a_run_stopped_before_its_first_checkpoint(dataset_id, tmp_path):
    cfg = CompareConfig(algos="bc", datasets=dataset_id, seeds="0", steps=20, eval_every=10,
                        eval_episodes=1, preset="smoke", logdir=str(tmp_path))  # fmt: skip
    d = tmp_path / "bc" / "test__pendulum-random-v0" / "seed0"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")  # what a run killed in its first updates leaves
    (table,) = compare_offline(cfg)
    assert table["steps"] == 20 and (d / "checkpoint.pt").exists()
