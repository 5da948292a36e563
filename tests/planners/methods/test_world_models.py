"""planners.methods.world_models end to end on CarRacing with tiny settings: stage outputs, GIFs,
a resume that skips finished stages (their checkpoints untouched), stage prerequisites, the
rendering loader, and the script's --help."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from wmrl.infra import load_checkpoint, read_meta, read_metrics
from wmrl.planners.cem import CEMConfig, cem_plan
from wmrl.planners.controller import ControllerConfig, ControllerSearch
from wmrl.planners.methods.runs import episode_rows, openloop_frames, run_job
from wmrl.planners.methods.world_models import (
    PRESETS,
    STAGES,
    WorldModelsConfig,
    load_run,
    load_series,
    sample_sequences,
    train_worldmodels,
)
from wmrl.worldmodels import WorldModel
from wmrl.worldmodels.mdnrnn import MDNRNNConfig
from wmrl.worldmodels.vae import VAEConfig

ROOT = Path(__file__).resolve().parents[3]
EPISODE = 12  # env steps per collected episode


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(logdir, **overrides) -> WorldModelsConfig:
    cfg = dict(
        env="gym:CarRacing-v3",
        max_episode_steps=EPISODE,
        logdir=str(logdir),
        device="cpu",
        rollouts=2,
        num_envs=1,
        encode_batch=5,
        checkpoint_every=2,
        log_every=2,
        gif_frames=6,
        vae=VAEConfig(z_dim=8, batch_size=8, epochs=1),
        mdnrnn=MDNRNNConfig(
            hidden=16,
            mixtures=2,
            steps=3,
            batch_size=2,
            seq_len=6,
            reward_head=True,
            done_head=True,
        ),  # fmt: skip
        controller=ControllerConfig(
            population=4,
            rollouts=1,
            generations=2,
            workers=0,
            max_steps=4,
            eval_every=2,
            eval_episodes=1,
        ),  # fmt: skip
    )
    cfg.update(overrides)
    return WorldModelsConfig(**cfg)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Stages up to the MDN-RNN, then the controller in a resumed run through the script."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logdir = tmp_path_factory.mktemp("wm") / "run"
    first = train_worldmodels(tiny(logdir, stages=STAGES[:4]))
    stamps = {name: (logdir / name).stat().st_mtime_ns for name in ("vae.pt", "mdnrnn.pt")}
    vae_bytes = (logdir / "vae.pt").read_bytes()
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_worldmodels as script
    finally:
        sys.path.pop(0)
    second = script.main(["--logdir", str(logdir), "--resume", "--stages", *STAGES,
                          "--controller.generations", "2"])  # fmt: skip
    torch.set_num_threads(threads)
    return logdir, first, second, stamps, vae_bytes


def test_stage_outputs(run):
    logdir, first, _, _, _ = run
    assert first["stages_run"] == ["collect", "vae", "encode", "mdnrnn"]
    assert first["collect/episodes"] == 2 and first["collect/steps"] == 2 * EPISODE
    files = sorted(p.name for p in (logdir / "rollouts").glob("*.npz"))
    assert files == [f"0000000{i}-{EPISODE}.npz" for i in range(2)]
    # the VAE saw 2 * 13 frames in batches of 8: 3 updates in its one epoch
    assert first["vae/updates"] == 3 and first["mdnrnn/updates"] == 3
    series = load_series(logdir)
    assert series["mu"].shape == series["logvar"].shape == (2 * (EPISODE + 1), 8)
    assert list(series["starts"]) == [0, EPISODE + 1] and series["is_first"].sum() == 2
    assert np.all(series["action"][series["starts"]] == 0)  # row layout: no action before o_0
    saved = json.loads((logdir / "config.json").read_text())
    assert saved["vae"]["z_dim"] == 8 and saved["controller"]["population"] == 4
    meta = read_meta(logdir / "checkpoint.pt")
    assert meta["job"] == "worldmodels" and meta["env"] == "gym:CarRacing-v3"


def test_resume_skips_finished_stages(run):
    logdir, _, second, stamps, vae_bytes = run
    assert second["stages_run"] == ["controller"]
    assert second["stages_done"] == list(STAGES)
    for name, stamp in stamps.items():  # finished stages' checkpoints were not rewritten
        assert (logdir / name).stat().st_mtime_ns == stamp
    assert (logdir / "vae.pt").read_bytes() == vae_bytes
    assert load_checkpoint(logdir / "checkpoint.pt")["done"] == list(STAGES)
    state = load_checkpoint(logdir / "controller.pt")
    assert state["generation"] == 2 and state["mean"].shape == ((8 + 16 + 1) * 3,)
    again = train_worldmodels(tiny(logdir), resume=True)
    assert again["stages_run"] == []


def test_a_larger_budget_searches_on(run, tmp_path):
    logdir = tmp_path / "copy"
    shutil.copytree(run[0], logdir)  # the shared run stays as it was
    before = load_checkpoint(logdir / "controller.pt")["search"]
    cfg = tiny(logdir)
    cfg.controller.generations = 3
    summary = train_worldmodels(cfg, resume=True)
    assert summary["stages_run"] == ["controller"] and summary["controller/generations"] == 3
    # one more generation from the saved search, not three from scratch
    assert ControllerSearch.from_bytes(before).generation == 2
    assert [r["step"] for r in read_metrics(logdir) if "controller/sigma" in r] == [1, 2, 3]


def test_evaluations_ignore_the_training_rollouts_patience(run, tmp_path):
    """With patience 1 the training rollouts stop at the first step without reward, but the
    evaluation at generation 3 plays the whole (4-step) episode: its return is the one an
    independent whole rollout of the saved mean gets, not the patient one."""
    from wmrl.planners.controller import Rollouts
    from wmrl.planners.methods.world_models import rollout_spec

    logdir = tmp_path / "copy"
    shutil.copytree(run[0], logdir)
    cfg = tiny(logdir)
    cfg.controller.generations, cfg.controller.patience = 3, 1
    train_worldmodels(cfg, resume=True)
    mean = load_checkpoint(logdir / "controller.pt")["mean"].numpy()
    spec = rollout_spec(cfg, logdir, "real")
    assert spec.patience == 1
    seed = 10**6  # the first evaluation seed (seed 0)
    whole = Rollouts(dataclasses.replace(spec, patience=None)).real(mean, seed)[0]
    patient = Rollouts(spec).real(mean, seed)[0]
    assert patient != pytest.approx(whole)  # the check can tell the two apart
    assert read_metrics(logdir)[-1]["eval/return"] == pytest.approx(whole)


def test_metrics_and_gifs(run):
    logdir = run[0]
    rows = read_metrics(logdir)
    keys = {k for r in rows for k in r}
    assert {"collect/return", "vae/loss", "vae/kl", "mdnrnn/z_nll", "mdnrnn/done_loss"} <= keys
    evals = [r for r in rows if "eval/return" in r]
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert all(np.isfinite(r["vae/loss"]) for r in rows if "vae/loss" in r)
    gifs = {p.name.rsplit("_", 1)[0]: p for p in (logdir / "gifs").glob("*.gif")}
    assert set(gifs) == {"vae_recon", "mdnrnn_dream_openloop", "controller_real"}
    assert imageio.mimread(gifs["vae_recon"])[0].shape[:2] == (64, 128)  # real | recon
    dream = imageio.mimread(gifs["mdnrnn_dream_openloop"])
    assert len(dream) == 6 and dream[0].shape[:2] == (3 * 64, 64)  # truth / dream / error
    assert len(list(logdir.glob("events.out.tfevents.*"))) >= 1


def test_dream_rollouts_start_from_encoded_first_frames(run):
    from wmrl.planners.controller import Rollouts
    from wmrl.planners.methods.world_models import rollout_spec

    logdir = run[0]
    spec = rollout_spec(tiny(logdir), logdir, "dream")
    series = load_series(logdir)
    np.testing.assert_array_equal(spec.initial_mu, series["mu"][[0, EPISODE + 1]])
    assert spec.action_map == "carracing" and spec.max_steps == 4
    returns = Rollouts(spec).run(np.zeros((8 + 16 + 1) * 3), [0, 1, 2])
    assert len(returns) == 3 and np.all(np.isfinite(returns))


def test_an_interrupted_stage_continues_from_its_checkpoint(tmp_path, monkeypatch):
    import wmrl.planners.methods.world_models as pipeline

    logdir = tmp_path / "run"
    # 2 * 13 frames in batches of 4: 6 updates, a checkpoint every 2
    cfg = tiny(logdir, stages=("collect", "vae"), vae=VAEConfig(z_dim=8, batch_size=4, epochs=1))
    real_step, calls = pipeline.train_vae_step, []

    def interrupted_after_3(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*args)

    monkeypatch.setattr(pipeline, "train_vae_step", interrupted_after_3)
    with pytest.raises(KeyboardInterrupt):
        train_worldmodels(cfg)
    assert load_checkpoint(logdir / "checkpoint.pt")["done"] == ["collect"]
    assert load_checkpoint(logdir / "vae.pt")["step"] == 2
    calls.clear()
    monkeypatch.setattr(pipeline, "train_vae_step", lambda *a: calls.append(1) or real_step(*a))
    summary = train_worldmodels(cfg, resume=True)
    assert summary["stages_run"] == ["vae"] and summary["vae/updates"] == 6
    assert len(calls) == 4  # updates 3..6: the two before the checkpoint were not redone
    assert len(list((logdir / "rollouts").glob("*.npz"))) == 2  # collect was not rerun


@pytest.mark.parametrize("stage, after", [("vae", "vae_recon"), ("mdnrnn", "dream_openloop")])
def test_a_stop_after_a_stages_last_update_keeps_its_result(tmp_path, monkeypatch, stage, after):
    """Killed between a stage's last checkpoint (its last update done) and the pipeline's record
    that it is done, the resumed stage runs no update; its result (the last update's losses)
    still equals the uninterrupted run's, from the stage's checkpoint."""
    import wmrl.planners.methods.world_models as pipeline

    stages = STAGES[: STAGES.index(stage) + 1]
    whole = train_worldmodels(tiny(tmp_path / "whole", stages=stages))
    real = getattr(pipeline, after)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, after, stopped)
    cfg = tiny(tmp_path / "killed", stages=stages)
    with pytest.raises(KeyboardInterrupt):
        train_worldmodels(cfg)
    assert stage not in load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["done"]
    monkeypatch.setattr(pipeline, after, real)
    resumed = train_worldmodels(cfg, resume=True)
    assert resumed["stages_run"] == [stage]
    assert whole[f"{stage}/loss"] is not None
    for key, value in whole.items():
        if key.startswith(f"{stage}/"):
            assert resumed[key] == value, key


def test_load_run_gives_a_protocol_model(run):
    logdir = run[0]
    assert run_job(logdir) == "worldmodels"  # scripts/render_gif.py finds the loader by this name
    loaded = load_run(logdir, torch.device("cpu"))
    assert isinstance(loaded.model, WorldModel)
    assert loaded.env_id == "gym:CarRacing-v3" and loaded.env_options["max_episode_steps"] == 12
    obs, action = episode_rows(dict(np.load(sorted(loaded.replay_dir.glob("*.npz"))[0])))
    frames = openloop_frames(loaded.model, obs, action, context=2, horizon=4)
    assert frames.shape == (6, 3 * 64, 64, 3) and frames.dtype == np.uint8
    state = {k: v[:, -1] for k, v in loaded.model.observe(obs[None, :3], action[None, :3],
             np.array([[True, False, False]])).items()}  # fmt: skip
    cfg = CEMConfig(horizon=2, iterations=1, candidates=8, top_k=2)
    assert cem_plan(loaded.model, state, 3, cfg).shape == (1, 3)


def test_sample_sequences_pads_short_episodes():
    series = {
        "mu": np.arange(7, dtype=np.float32)[:, None].repeat(2, 1),
        "logvar": np.zeros((7, 2), np.float32),
        "action": np.zeros((7, 1), np.float32),
        "reward": np.arange(7, dtype=np.float32),
        "is_terminal": np.zeros(7, bool),
        "starts": np.array([0, 3]),
        "lengths": np.array([3, 4]),
    }
    batch = sample_sequences(series, 16, 4, np.random.default_rng(0))
    assert batch["mu"].shape == (16, 5, 2) and batch["is_first"][:, 0].all()
    for b in range(16):
        n = batch["mask"][b].sum()
        assert n in (3, 4)
        first = batch["reward"][b, 0]
        # rows are consecutive rows of one episode, then zero padding
        np.testing.assert_array_equal(batch["reward"][b, :n], first + np.arange(n))
        assert first == (0 if n == 3 else 3) and not batch["reward"][b, n:].any()


def test_brownian_policy_drifts_within_bounds():
    import gymnasium as gym

    from wmrl.planners.methods.world_models import brownian_policy

    space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)  # 2 envs, 3 action dims
    act = brownian_policy(space, seed=0)
    actions = np.stack([act(None) for _ in range(500)])
    assert actions.shape == (500, 2, 3) and np.abs(actions).max() <= 1
    steps = np.abs(np.diff(actions, axis=0))
    assert steps.max() < 0.7 and 0.05 < steps.mean() < 0.15  # sqrt(1/50) N(0, 1): ~0.11


def test_a_stage_needs_the_earlier_ones(tmp_path):
    with pytest.raises(ValueError, match="collect"):
        train_worldmodels(tiny(tmp_path / "run", stages=("vae",)))
    assert not (tmp_path / "run" / "config.json").exists()  # nothing to --resume: start again
    with pytest.raises(ValueError, match="unknown stages"):
        tiny(tmp_path / "run2", stages=("dreaming",))


def test_presets_and_help():
    cfg = WorldModelsConfig()
    assert (cfg.rollouts, cfg.vae.z_dim, cfg.vae.kl_tolerance) == (10_000, 32, 0.5)
    assert (cfg.mdnrnn.hidden, cfg.mdnrnn.mixtures) == (256, 5)
    c = cfg.controller
    assert (c.population, c.rollouts, c.sigma0) == (64, 16, 0.1)
    assert set(PRESETS) >= {"default", "smoke"} and PRESETS["smoke"]["controller.population"] < 64
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_worldmodels.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert "--controller.population" in result.stdout and "--stages" in result.stdout


def test_the_ray_backend_without_ray_stops_before_the_first_stage(tmp_path, monkeypatch):
    """--controller.backend ray with no Ray installed ends at the start, naming the extra, not
    after the collection and model stages have run."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cfg = tiny(tmp_path / "run", controller=ControllerConfig(backend="ray", workers=1))
    with pytest.raises(ImportError, match=r"--controller.backend ray needs Ray.*\.\[ray\]"):
        train_worldmodels(cfg)
    assert not (tmp_path / "run" / "rollouts").exists()  # nothing was collected
