"""DreamerV2's training loop end to end on tiny settings: run directory, open-loop GIF, resume
with the same replay, load_run, the script's --help and the update the benchmark times."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from dreamer_helpers import tiny

from wmrl.envs.replay import EpisodeReplay, ReplayRepairWarning
from wmrl.infra import (
    CheckpointError,
    RunStopped,
    apply_overrides,
    load_checkpoint,
    read_meta,
    read_metrics,
)
from wmrl.planners.methods.dreamer import (
    PRESETS,
    DreamerConfig,
    DreamerPolicy,
    Learner,
    load_run,
    make_update,
    random_batch,
    setup_update,
    train_dreamer,
)
from wmrl.planners.methods.runs import run_job
from wmrl.worldmodels.categorical_rssm import CategoricalRSSM

ROOT = Path(__file__).resolve().parents[3]


def test_smoke_run_leaves_a_run_directory(tmp_path):
    run = tmp_path / "run"
    summary = train_dreamer(tiny(run))
    # 2 pretrain updates + policy steps 150, 200 and 250 of the training episode (126..250).
    assert summary["episodes"] == 1 and summary["replay_episodes"] == 2
    assert summary["env_steps"] == 2000 and summary["updates"] == 2 + 3
    assert json.loads((run / "config.json").read_text())["model"]["classes"] == 4
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["episodes"] == 1 and state["replay_episodes"] == 2 and state["pretrained"]
    assert int(state["actor_critic"]["updates"]) == 5
    rows = read_metrics(run)
    assert rows[0] == {"step": 1000, "prefill/return": rows[0]["prefill/return"]}
    last = rows[-1]
    assert last["step"] == 2000 and "eval/return" in last  # at the end, though eval_every > steps
    assert np.isfinite(last["train/model/loss"]) and np.isfinite(last["train/ac/critic_loss"])
    # Both rates share the episode's wall time: 3 updates per 1000 env steps.
    assert last["train/updates_per_s"] / last["train/fps"] * 1000 == pytest.approx(3)
    assert len(sorted((run / "replay").glob("*.npz"))) == 2
    assert not (run / "gifs").exists()  # state observations: no open-loop video


def test_pixel_run_writes_openloop_gif_and_loads_back(tmp_path):
    run = tmp_path / "run"
    cfg = tiny(run, obs_type="pixels", openloop_context=5, openloop_horizon=10)
    train_dreamer(cfg)
    gifs = sorted((run / "gifs").glob("openloop_*.gif"))
    assert [g.name for g in gifs] == ["openloop_00002000.gif"]
    frames = imageio.mimread(gifs[0])
    assert len(frames) == 5 + 10 and frames[0].shape[:2] == (3 * 64, 64)  # truth/model/error
    assert run_job(run) == "dreamer"  # scripts/render_gif.py finds the loader by this name
    loaded = load_run(run, torch.device("cpu"))
    assert isinstance(loaded.model, CategoricalRSSM) and loaded.model.pixels
    saved = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in saved.items())
    assert loaded.env_id == "dmc:cartpole-swingup" and loaded.env_options["action_repeat"] == 8
    assert len(list(Path(loaded.replay_dir).glob("*.npz"))) == 2


def test_resume_continues_with_the_same_replay(tmp_path):
    run = tmp_path / "run"
    train_dreamer(tiny(run))
    first_files = sorted(p.name for p in (run / "replay").glob("*.npz"))
    before = load_checkpoint(run / "checkpoint.pt")
    steps_before = [r["step"] for r in read_metrics(run)]

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_dreamer as script
    finally:
        sys.path.pop(0)
    summary = script.main(["--logdir", str(run), "--resume", "--steps", "3000"])

    assert summary["episodes"] == 2 and summary["replay_episodes"] == 3
    assert summary["updates"] == 5 + 2  # steps 300 and 350; no second prefill or pretrain
    files = sorted(p.name for p in (run / "replay").glob("*.npz"))
    assert files[:2] == first_files and len(files) == 3
    assert EpisodeReplay.load(run / "replay", capacity=10_000).total_steps == 3 * 125
    steps = [r["step"] for r in read_metrics(run)]
    assert steps[: len(steps_before)] == steps_before and steps[-1] == 3000
    after = load_checkpoint(run / "checkpoint.pt")
    assert int(after["actor_critic"]["updates"]) == 7
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert json.loads((run / "config.json").read_text())["steps"] == 3000

    with pytest.raises(CheckpointError, match="env"):
        train_dreamer(tiny(run, env="dmc:pendulum-swingup", steps=4000), resume=True)


def test_a_corrupt_replay_file_is_set_aside_and_the_resume_goes_on(tmp_path):
    """The issue's way in: truncate one replay file of a saved run, then resume. The file moves
    to replay/corrupt/ with a warning naming it; the run goes on without its episode and its
    counts stay those of the checkpoint."""
    run = tmp_path / "run"
    train_dreamer(tiny(run))
    path = run / "replay" / "00000001-125.npz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(ReplayRepairWarning, match="00000001-125.npz.*without its 125 steps"):
        summary = train_dreamer(tiny(run, steps=3000), resume=True)
    assert summary["env_steps"] == 3000 and summary["replay_episodes"] == 3
    assert (run / "replay" / "corrupt" / "00000001-125.npz").exists()
    assert sorted(p.name for p in (run / "replay").glob("*.npz")) == [
        "00000000-125.npz", "00000002-125.npz"
    ]  # fmt: skip


def test_envs_in_worker_processes_overlap_the_updates_and_change_no_number(tmp_path):
    """`env_workers`: the env steps in a worker process while the updates run. The run logs
    the same numbers, weights included, as with the env stepped in the main process."""
    clock = ("train/fps", "train/updates_per_s", "train/update_share")
    runs = {}
    for workers in (False, True):
        run = tmp_path / f"workers-{workers}"
        train_dreamer(tiny(run, env_workers=workers, steps=3000))
        rows = [{k: v for k, v in r.items() if k not in clock} for r in read_metrics(run)]
        runs[workers] = rows, load_checkpoint(run / "checkpoint.pt")["model"]
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(v, runs[True][1][k]) for k, v in runs[False][1].items())


def test_vectorised_collection_keeps_the_update_ratio(tmp_path):
    """Two envs (a process each) step together: the prefill's vector episode gives 2 episodes
    (250 policy steps), then policy steps 251..500 over both envs train at 300, ..., 500."""
    run = tmp_path / "run"
    summary = train_dreamer(tiny(run, num_envs=2, steps=3000))
    assert summary["replay_episodes"] == 4 and summary["episodes"] == 2
    assert summary["env_steps"] == 4000 and summary["updates"] == 2 + 5
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [2000, 4000]
    assert rows[1]["train/length"] == 125 and rows[1]["train/updates"] == 7
    # the two envs' episodes are different (seeds seed + 1000 k + i), each whole
    replay = EpisodeReplay.load(run / "replay", capacity=10_000)
    episodes = list(replay.episodes())
    assert [len(e["actions"]) for e in episodes] == [125] * 4
    assert not np.allclose(episodes[2]["observations"], episodes[3]["observations"])


def test_a_budget_the_prefill_uses_up_still_ends_with_evaluation_gif_and_checkpoint(tmp_path):
    """Two envs finish their prefill episodes together (250 policy steps, 2000 env steps), which
    is the whole budget: no training episode runs, and the run says so, but it still leaves
    its evaluation, open-loop GIF and checkpoint. Resuming the finished run adds nothing."""
    run = tmp_path / "run"
    cfg = tiny(run, num_envs=2, obs_type="pixels", openloop_context=5, openloop_horizon=10)
    with pytest.warns(UserWarning, match="used the whole budget of 2000 env steps"):
        summary = train_dreamer(cfg)
    assert summary["episodes"] == 0 and summary["env_steps"] == 2000 and summary["updates"] == 2
    rows = read_metrics(run)
    assert [sorted(r) for r in rows] == [["prefill/return", "step"], ["eval/return", "step"]]
    assert rows[1]["step"] == 2000 and summary["eval_return"] == rows[1]["eval/return"]
    assert [g.name for g in (run / "gifs").glob("openloop_*.gif")] == ["openloop_00002000.gif"]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["env_steps"] == 2000 and state["last_eval"] == 250
    train_dreamer(cfg, resume=True)
    assert len(read_metrics(run)) == 2


def test_defaults_presets_and_help():
    cfg = DreamerConfig()
    assert (cfg.batch_size, cfg.batch_length, cfg.train_every, cfg.prefill, cfg.pretrain) == (
        16,
        50,
        5,
        1000,
        100,
    )
    m, ac = cfg.model, cfg.ac
    assert (m.deter, m.hidden, m.stoch, m.classes, m.cnn_depth) == (200, 200, 32, 32, 48)
    assert (m.kl_balance, m.free_nats, m.lr, m.adam_eps, m.grad_clip) == (0.8, 1.0, 3e-4, 1e-5, 100)
    assert (ac.horizon, ac.discount, ac.discount_lambda, ac.actor_ent) == (15, 0.99, 0.95, 1e-4)
    assert (ac.actor_lr, ac.critic_lr, ac.slow_target_update) == (8e-5, 8e-5, 100)
    assert set(PRESETS) >= {"default", "smoke", "state", "state-cpu"}
    # state-cpu is the command of docs/results.md's action-repeat-8 row
    cpu = apply_overrides(DreamerConfig(), PRESETS["state-cpu"])
    assert (cpu.obs_type, cpu.action_repeat, cpu.prefill, cpu.train_every) == ("state", 8, 625, 1)
    assert cpu.prefill * cpu.action_repeat == 5000 and cpu.eval_every * cpu.action_repeat == 5000
    assert (cpu.model.deter, cpu.model.stoch, cpu.model.classes, cpu.ac.units) == (64, 16, 16, 64)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_dreamer.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "--model.kl-balance" in result.stdout
    assert "--ac.actor-grad" in result.stdout and "smoke" in result.stdout


def test_one_update_trains_model_actor_and_critic_on_a_fixed_batch():
    """The update the benchmark times (`make_update` on `random_batch`): repeated on a batch of
    constant observations and rewards, the world-model loss falls and actor, critic and model
    all change."""
    cfg = tiny("unused")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lr=3e-3))
    model, ac, optimizer = setup_update((5,), 1, "cpu", cfg)
    batch = random_batch((5,), 1, 4, 8)
    batch["obs"][:], batch["reward"][:] = 2.0, 1.0  # learnable: the NLLs can fall to their floor
    update = make_update(model, ac, optimizer, "cpu")
    before = [p.detach().clone() for p in (*model.parameters(), *ac.actor.parameters(),
                                          *ac.critic.parameters())]  # fmt: skip
    losses = [update(batch)["model/loss"] for _ in range(30)]
    after = [*model.parameters(), *ac.actor.parameters(), *ac.critic.parameters()]
    assert losses[-1] < 0.8 * losses[0]
    n_model, n_actor = len(list(model.parameters())), len(list(ac.actor.parameters()))
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert any(changed[:n_model]) and any(changed[n_model : n_model + n_actor])
    assert any(changed[n_model + n_actor :])


@pytest.mark.parametrize("obs_shape", [(5,), (64, 64, 3)], ids=["state", "pixels"])
def test_the_training_update_never_waits_for_the_device(obs_shape):
    """On the meta device tensors have shapes but no data, so anything that would make the host
    wait for a GPU (`.item()`, `float(t)`, `bool(t)`, `.tolist()`, copies to the host) raises.
    The update the training loop runs (sync=False) goes through there whole; the syncing one
    fails, which shows the check can catch a sync."""
    cfg = tiny("unused")
    model, ac, optimizer = setup_update(obs_shape, 2, "meta", cfg)
    batch = random_batch(obs_shape, 2, 3, 6)
    metrics = make_update(model, ac, optimizer, "meta", sync=False)(batch)
    assert {"model/loss", "model/grad_norm", "ac/actor_loss", "ac/critic_loss"} <= set(metrics)
    assert all(v.device.type == "meta" and v.shape == () for v in metrics.values())
    with pytest.raises(NotImplementedError, match="meta"):
        make_update(model, ac, optimizer, "meta", sync=True)(batch)


V3 = {"unimix": 0.01, "symlog_obs": True, "reward_bins": 255, "free_avg": False, "init": "keras"}
V3_AC = {"return_norm": True, "critic_bins": 255, "init": "keras", "actor_ent": 3e-4}


def test_the_update_with_every_v3_option_never_waits_for_the_device():
    cfg = tiny("unused")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **V3),
                              ac=dataclasses.replace(cfg.ac, **V3_AC))  # fmt: skip
    model, ac, optimizer = setup_update((5,), 2, "meta", cfg)
    metrics = make_update(model, ac, optimizer, "meta", sync=False)(random_batch((5,), 2, 3, 6))
    assert "ac/return_scale" in metrics
    assert all(v.device.type == "meta" and v.shape == () for v in metrics.values())


def test_chunk_is_first_marks_every_sampled_chunk_start():
    """With chunk_is_first the batch's first row is an episode start (danijar's replay); without
    it, a chunk that starts mid-episode keeps is_first false there."""

    class Replay:
        def sample(self, batch, length):
            is_first = np.zeros((batch, length), bool)
            is_first[0, 4] = True  # an episode boundary inside the first chunk
            return {"is_first": is_first}

    seen = []
    for flag in (False, True):
        learner = Learner.__new__(Learner)
        learner.cfg = tiny("unused", chunk_is_first=flag, batch_size=3, batch_length=8)
        learner.model = torch.nn.Linear(1, 1)
        learner.metrics = type("M", (), {"add": lambda self, m: None})()
        learner.update = lambda batch: seen.append(batch["is_first"].copy()) or {}
        learner.train(Replay(), 1)
    assert not seen[0][:, 0].any() and seen[0][0, 4]
    assert seen[1][:, 0].all() and seen[1][0, 4] and seen[1][:, 1:].sum() == 1


def test_the_update_without_sync_computes_what_the_syncing_one_does():
    """Two updates from the same seed and weights: the same metrics, the same weights after."""
    cfg = tiny("unused")
    batch = random_batch((5,), 1, 4, 8)
    runs = []
    for sync in (True, False):
        torch.manual_seed(0)
        model, ac, optimizer = setup_update((5,), 1, "cpu", cfg)
        update = make_update(model, ac, optimizer, "cpu", sync=sync)
        metrics = [update(batch) for _ in range(2)][-1]
        runs.append(({k: float(v) for k, v in metrics.items()}, [*model.state_dict().values(),
                     *ac.state_dict().values()]))  # fmt: skip
    (m_sync, w_sync), (m_free, w_free) = runs
    assert m_sync == pytest.approx(m_free, rel=1e-6, abs=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(w_sync, w_free, strict=True))


def test_a_non_finite_update_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    """The loop checks its device-side metrics once per episode, before the checkpoint: a NaN
    in the first training update (the third overall) ends the run with the env steps it lies
    between, and the checkpoint stays the one written after the pretraining."""
    import wmrl.planners.methods.dreamer as dreamer

    real = dreamer.make_update

    def poisoned(*args, **kwargs):
        update, calls = real(*args, **kwargs), []

        def wrapped(batch):
            metrics = update(batch)
            calls.append(1)
            if len(calls) == 3:
                metrics["ac/critic_loss"] = metrics["ac/critic_loss"] * float("nan")
            return metrics

        return wrapped

    monkeypatch.setattr(dreamer, "make_update", poisoned)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"between env steps 1000 and 2000.*critic_loss"
                       r".*likely causes, in order: the env's data \(dmc:cartpole-swingup.*then "
                       r"the settings \(learning rates --model.lr.*The checkpoint in .* is from "
                       r"before it: resume"):  # fmt: skip
        train_dreamer(tiny(run))
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["env_steps"] == 1000 and state["pretrained"]
    assert int(state["actor_critic"]["updates"]) == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_compiled_steps_compute_what_the_eager_ones_do(monkeypatch):
    """`compile: true` swaps the filtering and imagination steps for torch.compile'd ones
    (inductor, on this CPU too). With inductor drawing its random numbers as eager torch does,
    two updates give the same metrics and weights as the eager model's; the checkpointed
    weights keep their names."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "fallback_random", True)
    torch._dynamo.reset()
    batch = random_batch((5,), 1, 4, 8)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        cfg = dataclasses.replace(tiny("unused"), compile=compiled)
        model, ac, optimizer = setup_update((5,), 1, "cpu", cfg)
        assert hasattr(model.img_step, "_torchdynamo_orig_callable") == compiled
        update = make_update(model, ac, optimizer, "cpu")
        metrics = [update(batch) for _ in range(2)][-1]
        runs.append((metrics, {**model.state_dict(), **ac.state_dict()}))
    (m_eager, w_eager), (m_comp, w_comp) = runs
    assert m_comp == pytest.approx(m_eager, rel=1e-4, abs=1e-6)
    assert w_comp.keys() == w_eager.keys()
    for k in w_eager:
        torch.testing.assert_close(w_comp[k], w_eager[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("obs_shape", [(5,), (64, 64, 3)], ids=["state", "pixels"])
def test_the_bf16_update_keeps_float32_weights_and_matches_full_precision(obs_shape, monkeypatch):
    """The bf16 autocast that CUDA runs, tried here with CPU autocast (the same dtype rules for
    linear and conv layers): the matrix products run in bf16, nothing mixes dtypes where it
    must not, weights and optimiser state stay float32, and three updates give the metrics of
    full precision to within 2% (they differ by about 1e-4 relative)."""
    import wmrl.planners.actor_critic as actor_critic
    import wmrl.worldmodels.categorical_rssm as dreamer_model

    batch = random_batch(obs_shape, 2, 4, 8)
    runs, seen = [], set()
    for bf16 in (False, True):
        if bf16:
            cpu_bf16 = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
            monkeypatch.setattr(dreamer_model, "autocast", cpu_bf16)
            monkeypatch.setattr(actor_critic, "autocast", cpu_bf16)
        torch.manual_seed(0)
        model, ac, optimizer = setup_update(obs_shape, 2, "cpu", tiny("unused"))
        if bf16:
            for layer in [*model.modules(), *ac.modules()]:
                if isinstance(layer, torch.nn.Linear):
                    layer.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
        update = make_update(model, ac, optimizer, "cpu")
        metrics = [update(batch) for _ in range(3)][-1]
        runs.append((metrics, [*model.parameters(), *ac.parameters()], optimizer))
    (m_full, _, _), (m_bf16, w_bf16, optimizer) = runs
    assert seen == {torch.bfloat16}
    assert all(w.dtype == torch.float32 for w in w_bf16)
    assert all(s.dtype == torch.float32 for st in optimizer.state.values() for s in st.values()
               if s.is_floating_point() and s.dim() > 0)  # fmt: skip
    assert m_bf16 == pytest.approx(m_full, rel=2e-2, abs=2e-3)


def test_ctrl_c_mid_episode_saves_a_checkpoint_that_resumes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    act, calls = DreamerPolicy.act, []

    def act_then_interrupt(self, obs, is_first, sample=True):
        calls.append(1)
        if len(calls) == 20:  # the 20th policy step of the first training episode
            os.kill(os.getpid(), signal.SIGINT)
        return act(self, obs, is_first, sample)

    monkeypatch.setattr(DreamerPolicy, "act", act_then_interrupt)
    with pytest.raises(RunStopped, match="stopped on SIGINT: saved a checkpoint"):
        train_dreamer(tiny(run))
    state = load_checkpoint(run / "checkpoint.pt")
    # stopped at policy step 145 (the prefill's 125 + 20), before the first update of the
    # episode (at 150): the pretraining's 2 updates are saved, the unfinished episode is not
    assert state["pretrained"] and state["episodes"] == 0 and state["env_steps"] == 1000
    assert int(state["actor_critic"]["updates"]) == 2
    monkeypatch.setattr(DreamerPolicy, "act", act)
    summary = train_dreamer(tiny(run), resume=True)
    assert summary["episodes"] == 1 and summary["env_steps"] == 2000


def test_a_crash_before_the_first_checkpoint_does_not_lock_the_run(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def crash(self, replay, updates, stop=None):
        raise RuntimeError("the machine fell over")

    with monkeypatch.context() as m:  # dies in the pretraining, after the prefill
        m.setattr(Learner, "train", crash)
        with pytest.raises(RuntimeError, match="fell over"):
            train_dreamer(tiny(run))
    assert (run / "config.json").exists() and not (run / "checkpoint.pt").exists()
    summary = train_dreamer(tiny(run), resume=True)
    assert summary["episodes"] == 1 and summary["env_steps"] == 2000
    assert len(list((run / "unfinished-1" / "replay").glob("*.npz"))) == 1  # the old prefill


def test_ctrl_c_in_the_pretraining_stops_between_updates_and_resumes_the_rest(
    tmp_path, monkeypatch
):
    sample, calls = EpisodeReplay.sample, []

    def sample_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the 5th of 20 pretraining updates
            os.kill(os.getpid(), signal.SIGINT)
        return sample(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(EpisodeReplay, "sample", sample_then_interrupt)
        with pytest.raises(RunStopped, match="saved a checkpoint"):
            train_dreamer(tiny(tmp_path / "run", pretrain=20))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert not state["pretrained"] and state["pretrain_updates"] == 5
    resumed = train_dreamer(tiny(tmp_path / "run", pretrain=20), resume=True)
    whole = train_dreamer(tiny(tmp_path / "whole", pretrain=20))
    assert resumed["updates"] == whole["updates"] == 20 + 3


def test_the_actor_critic_learns_on_planets_gaussian_rssm_dreamerv1(tmp_path):
    """--world-model gaussian: the loop trains PlaNet's RSSM (DreamerV1's learner) and the
    actor-critic on its posteriors; it resumes, and a categorical run cannot resume it."""
    from wmrl.worldmodels.rssm import RSSMConfig

    run = tmp_path / "run"
    rssm = RSSMConfig(deter=8, stoch=3, hidden=8, reward_hidden=8, lr=6e-4, grad_clip=100.0)
    cfg = tiny(run, world_model="gaussian", rssm=rssm)
    summary = train_dreamer(cfg)
    assert summary["updates"] == 5 and np.isfinite(summary["eval_return"])
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["model"]["gru.weight_hh"].shape == (3 * 8, 8)  # nn.GRUCell: PlaNet's RSSM
    assert read_meta(run / "checkpoint.pt")["world_model"] == "gaussian"
    last = read_metrics(run)[-1]
    assert np.isfinite(last["train/model/post_std"]) and np.isfinite(last["train/ac/actor_loss"])
    assert train_dreamer(dataclasses.replace(cfg, steps=3000), resume=True)["env_steps"] == 3000
    with pytest.raises(CheckpointError, match="world_model"):
        train_dreamer(tiny(run, steps=4000), resume=True)
