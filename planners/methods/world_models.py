"""World Models (Ha and Schmidhuber 2018) as a pipeline of resumable stages, as the reference code
runs it (hardmaru/WorldModelsExperiments: extract.py, vae_train.py, series.py, rnn_train.py,
train.py):

    collect     random-action rollouts        -> rollouts/{index:08d}-{T}.npz (EpisodeReplay files)
    vae         ConvVAE on every stored frame -> vae.pt,      gifs/vae_recon_*.gif
    encode      (mu, logvar) of every frame   -> series.npz
    mdnrnn      MDN-RNN on z sampled from it  -> mdnrnn.pt,   gifs/mdnrnn_dream_openloop_*.gif
    controller  CMA-ES on the linear C        -> controller.pt, gifs/controller_*.gif

    from wmrl.planners.methods.world_models import WorldModelsConfig, train_worldmodels
    summary = train_worldmodels(WorldModelsConfig(env="gym:CarRacing-v3"))

`checkpoint.pt` (meta job "worldmodels") lists the finished stages; `--resume` skips them and
continues an unfinished one from its own checkpoint (collect from the episodes already on disk,
vae and mdnrnn from their last saved update, controller from its last generation). A finished
controller stage runs again when `--controller.generations` is raised: CMA-ES searches on (the
reference trains until stopped). `--stages` runs a subset, e.g. `--stages collect vae encode
mdnrnn`, then `--resume --stages controller --controller.mode dream`. Every stage
logs with its own step axis and tag prefix: collect/ (env steps), vae/ and mdnrnn/ (updates),
controller/ and eval/return (generations).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wmrl.envs.registry import env_options
from wmrl.planners.controller import (
    ControllerConfig,
    ControllerSearch,
    Evaluator,
    Rollouts,
    RolloutSpec,
    num_params,
    resolve_action_map,
)
from wmrl.planners.methods.runs import LoadedRun, openloop_frames
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig, WorldModels, train_mdnrnn_step
from wmrl.worldmodels.vae import ConvVAE, VAEConfig, train_vae_step

STAGES = ("collect", "vae", "encode", "mdnrnn", "controller")
ROLLOUT_DIR, SERIES_FILE = "rollouts", "series.npz"
JOB = "worldmodels"
EPISODE_FILE = re.compile(r"^(\d{8,})-(\d+)\.npz$")  # EpisodeReplay's file names


@dataclass
class WorldModelsConfig:
    """World Models on pixels; each model's section holds the reference's values."""

    env: str = "gym:CarRacing-v3"  # gym:<id> with image observations, or dmc:<domain>-<task>
    obs_type: str | None = None  # none: the env's default (CarRacing frames, dmc pixels)
    action_repeat: int | None = None  # none: the env's default (PlaNet's for dmc:)
    max_episode_steps: int | None = None  # cap on episode length; none: the env's time limit
    logdir: str = "runs/worldmodels"  # the run directory
    seed: int = 0  # seeds python, numpy, torch, the envs and CMA-ES
    device: str = "auto"  # auto, cpu, cuda or cuda:N (VAE and MDN-RNN training)
    stages: tuple[str, ...] = STAGES  # which stages to run (in pipeline order)
    rollouts: int = 10_000  # random episodes collected (the reference's 10,000)
    collect_policy: str = "uniform"  # uniform random actions, or brownian (ctallec's random walk)
    num_envs: int = 2  # envs collecting at once, one process each
    vae_max_frames: int | None = None  # frames kept in memory for VAE training; none: all
    encode_batch: int = 1000  # frames per encoder call when encoding the rollouts
    checkpoint_every: int = 500  # VAE / MDN-RNN updates between checkpoints
    log_every: int = 50  # updates between logged training scalars
    gif_frames: int = 100  # frames per GIF
    mp_context: str = "spawn"  # multiprocessing start method of the rollout workers
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    def __post_init__(self):
        if self.collect_policy not in ("uniform", "brownian"):
            raise ValueError(f"collect_policy must be uniform or brownian, got "
                             f"{self.collect_policy!r}")  # fmt: skip
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")


PRESETS = {
    "default": {},
    # C trained in the dream at tau 1.15 with the done head, as the paper's Doom experiment; the
    # reward head scores the dream (Doom's reward was the steps survived, used without one).
    "dream": {
        "mdnrnn.done_head": True,
        "mdnrnn.reward_head": True,
        "mdnrnn.temperature": 1.15,
        "controller.mode": "dream",
    },
    # A few minutes on a 2-core CPU (CarRacing at ~200 env steps/s).
    "smoke": {
        "rollouts": 4,
        "max_episode_steps": 150,
        "vae.epochs": 2,
        "vae.batch_size": 32,
        "encode_batch": 200,
        "checkpoint_every": 20,
        "log_every": 10,
        "gif_frames": 30,
        "mdnrnn.hidden": 64,
        "mdnrnn.steps": 40,
        "mdnrnn.batch_size": 8,
        "mdnrnn.seq_len": 50,
        "mdnrnn.reward_head": True,
        "mdnrnn.done_head": True,
        "controller.population": 6,
        "controller.rollouts": 2,
        "controller.generations": 3,
        "controller.workers": 2,
        "controller.max_steps": 80,
        "controller.eval_every": 3,
        "controller.eval_episodes": 2,
    },
}


def _meta(cfg: WorldModelsConfig, stage: str | None = None) -> dict:
    meta = {"job": JOB, "env": cfg.env, "z_dim": cfg.vae.z_dim, "hidden": cfg.mdnrnn.hidden}
    return meta if stage is None else {**meta, "stage": stage}


# -- the pipeline -----------------------------------------------------------------------------


def train_worldmodels(cfg: WorldModelsConfig, resume: bool = False) -> dict:
    """Run the stages `cfg.stages` asks for that are not finished yet; with `resume`, continue
    the run in `cfg.logdir`. Returns a summary dict (stages run, losses, returns)."""
    from wmrl.infra import (
        Logger,
        load_checkpoint,
        prepare_run_dir,
        resolve_device,
        save_checkpoint,
        save_config,
        seed_everything,
    )

    run_dir = prepare_run_dir(cfg.logdir, resume)
    device = resolve_device(cfg.device)
    ckpt = run_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        progress_state = load_checkpoint(ckpt, expect_meta=_meta(cfg))
    else:
        progress_state = {"done": [], "summary": {}}
    done = list(progress_state["done"])
    summary = dict(progress_state["summary"])
    if "controller" in done and (run_dir / "controller.pt").exists():
        searched = _load(run_dir / "controller.pt", cfg, "controller")["generation"]
        if searched < cfg.controller.generations:  # a larger budget: search on
            done.remove("controller")
    todo = [s for s in STAGES if s in cfg.stages and s not in done]
    for stage in todo:  # a stage needs every earlier one (its inputs)
        missing = [s for s in STAGES[: STAGES.index(stage)] if s not in done and s not in todo]
        if missing:
            raise ValueError(
                f"stage {stage!r} needs the stages {missing} first; add them to --stages or "
                "--resume a run that finished them"
            )
    save_config(cfg, run_dir)  # on resume too: a larger budget is the run's config from now on
    logger = Logger(run_dir)  # stages log on separate step axes: rows are appended, not purged
    runners = {
        "collect": stage_collect,
        "vae": stage_vae,
        "encode": stage_encode,
        "mdnrnn": stage_mdnrnn,
        "controller": stage_controller,
    }
    try:
        for stage in todo:
            seed_everything(cfg.seed + 1000 * STAGES.index(stage))
            result = runners[stage](cfg, run_dir, device, logger)
            summary.update({f"{stage}/{k}": v for k, v in result.items()})
            done.append(stage)
            save_checkpoint(ckpt, {"done": done, "summary": summary}, meta=_meta(cfg))
            logger.flush()
    finally:
        logger.close()
    return {"stages_run": todo, "stages_done": done, **summary, "run_dir": str(run_dir)}


def _save(path: Path, state: dict, cfg: WorldModelsConfig, stage: str) -> None:
    from wmrl.infra import save_checkpoint

    save_checkpoint(path, state, meta=_meta(cfg, stage))


def _load(path: Path, cfg: WorldModelsConfig, stage: str, device="cpu") -> dict:
    from wmrl.infra import load_checkpoint

    return load_checkpoint(path, expect_meta=_meta(cfg, stage), map_location=device)


# -- collect ----------------------------------------------------------------------------------

ROLLOUT_RING_ROWS = 5000  # rows held in memory while collecting (every episode goes to disk)


def brownian_policy(action_space, seed: int | None = None, dt: float = 1 / 50):
    """Random actions that drift: a_t = clip(a_(t-1) + sqrt(dt) N(0, I)), from a uniform start
    (ctallec/world-models' `sample_continuous_policy`; CarRacing then drives for a while
    instead of jittering in place). Batched: observations (N, ...) -> actions (N, A)."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high
    action = rng.uniform(low, high)

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal action
        action = np.clip(action + np.sqrt(dt) * rng.standard_normal(action.shape), low, high)
        return action.astype(action_space.dtype)

    return act


def stage_collect(cfg, run_dir: Path, device, logger) -> dict:
    """Random-action episodes (`collect_policy`) into run_dir/rollouts; resumes from the
    episode files already there."""
    from wmrl.envs.collect import Collector
    from wmrl.envs.registry import make_vector
    from wmrl.envs.replay import EpisodeReplay
    from wmrl.envs.rollout import random_policy
    from wmrl.infra import progress

    directory = run_dir / ROLLOUT_DIR
    if directory.is_dir():
        replay = EpisodeReplay.load(directory, ROLLOUT_RING_ROWS)
    else:
        replay = EpisodeReplay(ROLLOUT_RING_ROWS, directory=directory)
    have = replay.total_episodes
    returns = []
    if have < cfg.rollouts:
        seed = cfg.seed + 1000 * have  # fresh seeds after a resume
        n = min(cfg.num_envs, cfg.rollouts - have)
        vec = make_vector(cfg.env, n, seed=seed, **env_options(cfg))
        bar = progress(cfg.rollouts, initial=have, desc="collect", unit="episode")
        try:
            collector = Collector(vec, replay, seed=seed)
            make_policy = random_policy if cfg.collect_policy == "uniform" else brownian_policy
            policy = make_policy(vec.action_space, seed=seed)
            step = replay.total_steps
            while replay.total_episodes < cfg.rollouts:
                for stats in collector.run(policy, episodes=cfg.rollouts - replay.total_episodes):
                    step += stats.length
                    returns.append(stats.ret)
                    logger.log(step, {"collect/return": stats.ret, "collect/length": stats.length})
                bar.update(replay.total_episodes - bar.n)
        finally:
            bar.close()
            vec.close()
    return {
        "episodes": replay.total_episodes,
        "steps": replay.total_steps,
        "mean_return": float(np.mean(returns)) if returns else None,
    }


def episode_files(run_dir: Path) -> list[Path]:
    """The stored rollouts, in index order."""
    directory = run_dir / ROLLOUT_DIR
    found = {}
    if directory.is_dir():
        for path in directory.iterdir():
            match = EPISODE_FILE.match(path.name)
            if match:
                found[int(match[1])] = path
    if not found:
        raise FileNotFoundError(f"no rollouts in {directory}; run the collect stage first")
    return [found[i] for i in sorted(found)]


def read_rollout(path: Path) -> dict[str, np.ndarray]:
    """One stored episode (Minari layout)."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# -- vae --------------------------------------------------------------------------------------


def load_frames(run_dir: Path, max_frames: int | None, rng: np.random.Generator) -> np.ndarray:
    """Every stored frame (or a random `max_frames` of them): uint8 (N, 64, 64, C)."""
    frames = np.concatenate([read_rollout(p)["observations"] for p in episode_files(run_dir)])
    if max_frames is not None and len(frames) > max_frames:
        frames = frames[np.sort(rng.choice(len(frames), max_frames, replace=False))]
    return frames


def build_vae(cfg: WorldModelsConfig, channels: int = 3) -> ConvVAE:
    return ConvVAE(cfg.vae.z_dim, channels, cfg.vae.kl_tolerance)


def stage_vae(cfg, run_dir: Path, device, logger) -> dict:
    """Train the ConvVAE for `vae.epochs` passes over shuffled frames (the reference's loop)."""
    from wmrl.infra import progress

    frames = load_frames(run_dir, cfg.vae_max_frames, np.random.default_rng(cfg.seed))
    vae = build_vae(cfg, frames.shape[-1]).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.vae.lr)
    path = run_dir / "vae.pt"
    per_epoch = max(len(frames) // cfg.vae.batch_size, 1)
    total, step = per_epoch * cfg.vae.epochs, 0
    if path.exists():  # an interrupted vae stage
        state = _load(path, cfg, "vae", device)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])

    def save():
        state = {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "torch_rng": torch.get_rng_state(), "channels": frames.shape[-1]}  # fmt: skip
        _save(path, state, cfg, "vae")

    sums, metrics = {}, {}
    bar = progress(total, initial=step, desc="vae", unit="update")
    vae.train()
    try:
        while step < total:
            # One permutation per epoch, seeded by the epoch, so a resume repeats it.
            order = np.random.default_rng([cfg.seed, step // per_epoch]).permutation(len(frames))
            for i in range(step % per_epoch, per_epoch):
                idx = np.sort(order[i * cfg.vae.batch_size : (i + 1) * cfg.vae.batch_size])
                batch = torch.as_tensor(frames[idx]).to(device)
                metrics = train_vae_step(vae, batch, optimizer)
                step += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                if step % cfg.log_every == 0 or step == total:
                    n = step % cfg.log_every or cfg.log_every
                    logger.log(step, {f"vae/{k}": v / n for k, v in sums.items()})
                    sums = {}
                if step % cfg.checkpoint_every == 0:
                    save()
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.1f}")
    finally:
        bar.close()
    save()
    vae.eval()
    episode = read_rollout(episode_files(run_dir)[-1])["observations"][: cfg.gif_frames]
    with torch.no_grad():
        mu, _ = vae.encode(torch.as_tensor(episode).to(device))
        recon = vae.decode_frames(mu).cpu().numpy()
    logger.video(step, "vae/recon", np.concatenate([episode, recon], axis=2))  # real | VAE
    return {"updates": step, **{k: metrics.get(k) for k in ("loss", "r_loss", "kl")}}


def load_vae(cfg: WorldModelsConfig, run_dir: Path, device) -> ConvVAE:
    path = run_dir / "vae.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the vae stage first")
    state = _load(path, cfg, "vae", device)
    vae = build_vae(cfg, int(state["channels"])).to(device)
    vae.load_state_dict(state["model"])
    return vae.eval()


# -- encode -----------------------------------------------------------------------------------


def stage_encode(cfg, run_dir: Path, device, logger) -> dict:
    """(mu, logvar) of every stored frame, with the episodes in the replay's row layout, into
    series.npz (the reference's series.py): mu, logvar (N, Z); action (N, A) with action[t] =
    a_(t-1); reward (N,) = r_(t-1); is_first, is_terminal (N,); starts, lengths (E,) rows."""
    vae = load_vae(cfg, run_dir, device)
    out = {k: [] for k in ("mu", "logvar", "action", "reward", "is_first", "is_terminal")}
    lengths = []
    with torch.no_grad():
        for path in episode_files(run_dir):
            ep = read_rollout(path)
            obs = ep["observations"]
            for key in ("mu", "logvar"):
                out[key].append([])
            for i in range(0, len(obs), cfg.encode_batch):
                mu, logvar = vae.encode(torch.as_tensor(obs[i : i + cfg.encode_batch]).to(device))
                out["mu"][-1].append(mu.cpu().numpy())
                out["logvar"][-1].append(logvar.cpu().numpy())
            out["mu"][-1] = np.concatenate(out["mu"][-1])
            out["logvar"][-1] = np.concatenate(out["logvar"][-1])
            actions = np.asarray(ep["actions"], np.float32)
            out["action"].append(np.concatenate([np.zeros_like(actions[:1]), actions]))
            out["reward"].append(np.concatenate([[0.0], ep["rewards"]]).astype(np.float32))
            out["is_first"].append(np.arange(len(obs)) == 0)
            out["is_terminal"].append(np.concatenate([[False], ep["terminations"]]))
            lengths.append(len(obs))
    series = {k: np.concatenate(v) for k, v in out.items()}
    series["lengths"] = np.asarray(lengths)
    series["starts"] = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    _write_npz(run_dir / SERIES_FILE, series)
    return {"episodes": len(lengths), "frames": int(sum(lengths))}


def _write_npz(path: Path, arrays: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_series(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / SERIES_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the encode stage first")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# -- mdnrnn -----------------------------------------------------------------------------------


def sample_sequences(series: dict, batch_size: int, seq_len: int, rng) -> dict[str, np.ndarray]:
    """`batch_size` chunks of seq_len + 1 rows, each from one episode at a random offset (from
    row 0 when the episode is no longer), zero-padded, with `mask` False on padding; row 0 of
    every chunk is marked is_first (the LSTM starts at zeros, as the reference's sequences do).
    z is sampled later from (mu, logvar), fresh for every batch."""
    L = seq_len + 1
    episodes = rng.integers(len(series["starts"]), size=batch_size)
    keys = ("mu", "logvar", "action", "reward", "is_terminal")
    batch = {k: np.zeros((batch_size, L, *series[k].shape[1:]), series[k].dtype) for k in keys}
    batch["mask"] = np.zeros((batch_size, L), bool)
    for b, e in enumerate(episodes):
        start, rows = series["starts"][e], series["lengths"][e]
        offset = rng.integers(0, rows - L + 1) if rows > L else 0
        n = min(L, rows)
        for k in keys:
            batch[k][b, :n] = series[k][start + offset : start + offset + n]
        batch["mask"][b, :n] = True
    batch["is_first"] = np.zeros((batch_size, L), bool)
    batch["is_first"][:, 0] = True
    return batch


def build_mdnrnn(cfg: WorldModelsConfig, action_dim: int) -> MDNRNN:
    return MDNRNN(cfg.vae.z_dim, action_dim, cfg.mdnrnn)


def stage_mdnrnn(cfg, run_dir: Path, device, logger) -> dict:
    """Train the MDN-RNN on z sampled from the stored (mu, logvar), `mdnrnn.steps` updates."""
    from wmrl.infra import progress

    series = load_series(run_dir)
    rng = np.random.default_rng(cfg.seed)
    model = build_mdnrnn(cfg, series["action"].shape[1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.mdnrnn.lr)
    path, step = run_dir / "mdnrnn.pt", 0
    if path.exists():  # an interrupted mdnrnn stage
        state = _load(path, cfg, "mdnrnn", device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    def save():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "action_dim": model.action_dim}  # fmt: skip
        _save(path, state, cfg, "mdnrnn")

    sums, metrics = {}, {}
    bar = progress(cfg.mdnrnn.steps, initial=step, desc="mdnrnn", unit="update")
    model.train()
    try:
        while step < cfg.mdnrnn.steps:
            raw = sample_sequences(series, cfg.mdnrnn.batch_size, cfg.mdnrnn.seq_len, rng)
            t = {k: torch.as_tensor(v).to(device) for k, v in raw.items()}
            batch = {
                "z": ConvVAE.sample(t["mu"], t["logvar"]),
                "action": t["action"],
                "is_first": t["is_first"],
                "reward": t["reward"],
                "is_terminal": t["is_terminal"],
                "mask": t["mask"],
            }
            metrics = train_mdnrnn_step(model, batch, optimizer)
            step += 1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % cfg.log_every == 0 or step == cfg.mdnrnn.steps:
                n = step % cfg.log_every or cfg.log_every
                logger.log(step, {f"mdnrnn/{k}": v / n for k, v in sums.items()})
                sums = {}
            if step % cfg.checkpoint_every == 0:
                save()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
    finally:
        bar.close()
    save()
    model.eval()
    frames = dream_openloop(cfg, run_dir, device)
    logger.video(step, "mdnrnn/dream_openloop", frames)
    return {"updates": step, **{k: metrics.get(k) for k in ("loss", "z_nll")}}


def dream_openloop(cfg, run_dir: Path, device, context: int = 1) -> np.ndarray:
    """The MDN-RNN dreaming an episode from its first frame with the recorded actions, decoded
    by the VAE: rows truth / dream / |error|, uint8 (T, 3 * 64, 64, C)."""
    from wmrl.planners.methods.runs import episode_rows

    model = load_model(cfg, run_dir, device)
    obs, action = episode_rows(read_rollout(episode_files(run_dir)[-1]))
    T = min(cfg.gif_frames, len(obs))
    return openloop_frames(model, obs[:T], action[:T], context, T - context)


def load_model(cfg: WorldModelsConfig, run_dir: Path, device) -> WorldModels:
    """The trained VAE + MDN-RNN as one `WorldModel`, in eval mode."""
    vae = load_vae(cfg, run_dir, device)
    path = run_dir / "mdnrnn.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the mdnrnn stage first")
    state = _load(path, cfg, "mdnrnn", device)
    mdnrnn = build_mdnrnn(cfg, int(state["action_dim"])).to(device)
    mdnrnn.load_state_dict(state["model"])
    return WorldModels(vae, mdnrnn).eval()


# -- controller -------------------------------------------------------------------------------


def rollout_spec(cfg: WorldModelsConfig, run_dir: Path, mode: str) -> RolloutSpec:
    """What the rollout workers build: CPU copies of the trained models and the env."""
    model = load_model(cfg, run_dir, "cpu")
    initial_mu = initial_logvar = None
    if mode == "dream":
        series = load_series(run_dir)
        initial_mu = series["mu"][series["starts"]]
        initial_logvar = series["logvar"][series["starts"]]
    return RolloutSpec(
        env_id=cfg.env,
        env_options=env_options(cfg),
        vae={
            "kwargs": {
                "z_dim": model.vae.z_dim,
                "channels": model.vae.channels,
                "kl_tolerance": model.vae.kl_tolerance,
            },
            "state": model.vae.state_dict(),
        },  # fmt: skip
        mdnrnn={
            "z_dim": model.mdnrnn.z_dim,
            "action_dim": model.mdnrnn.action_dim,
            "cfg": dataclasses.asdict(model.mdnrnn.cfg),
            "state": model.mdnrnn.state_dict(),
        },
        action_map=resolve_action_map(cfg.controller.action_map, cfg.env),
        mode=mode,
        temperature=cfg.controller.temperature,
        max_steps=cfg.controller.max_steps,
        patience=cfg.controller.patience if mode == "real" else None,
        initial_mu=initial_mu,
        initial_logvar=initial_logvar,
    )


def stage_controller(cfg, run_dir: Path, device, logger) -> dict:
    """CMA-ES on the linear controller, fitness from rollouts in worker processes; the mean of
    the search distribution is evaluated in the real env every `eval_every` generations."""
    from wmrl.infra import progress

    c = cfg.controller
    if c.mode == "dream" and not (cfg.mdnrnn.done_head or cfg.mdnrnn.reward_head):
        raise ValueError(
            "--controller.mode dream needs an MDN-RNN trained with --mdnrnn.done_head true "
            "and/or --mdnrnn.reward_head true (the dream's episode ends and rewards)"
        )
    spec = rollout_spec(cfg, run_dir, c.mode)
    # Evaluations: whole real episodes, whatever the training rollouts' patience.
    real_spec = dataclasses.replace(spec, mode="real", patience=None)
    m = spec.mdnrnn
    dim = num_params(m["z_dim"] + m["cfg"]["hidden"], m["action_dim"])
    path = run_dir / "controller.pt"
    eval_return = None
    if path.exists():  # an interrupted controller stage
        state = _load(path, cfg, "controller")
        search = ControllerSearch.from_bytes(state["search"])
        eval_return = state["eval_return"]
    else:
        search = ControllerSearch(dim, c, seed=cfg.seed)

    def save():
        state = {"search": search.state_bytes(), "generation": search.generation,
                 "mean": torch.as_tensor(search.mean), "eval_return": eval_return,
                 "best": torch.as_tensor(search.best_params)}  # fmt: skip
        _save(path, state, cfg, "controller")

    def evaluate() -> float:
        seeds = 10**6 + cfg.seed * 10**5 + np.arange(c.eval_episodes)  # apart from training's
        if c.mode == "real" and c.patience is None:  # the training rollouts' workers will do
            returns = evaluator.returns(search.mean[None], seeds)
        else:
            with Evaluator(real_spec, c.workers, cfg.mp_context) as real:
                returns = real.returns(search.mean[None], seeds)
        return float(returns.mean())

    bar = progress(c.generations, initial=search.generation, desc="controller", unit="gen")
    with Evaluator(spec, c.workers, cfg.mp_context) as evaluator:
        try:
            while search.generation < c.generations:
                candidates = search.ask()
                seeds = cfg.seed * 10**5 + search.generation * c.rollouts + np.arange(c.rollouts)
                stats = search.tell(evaluator.returns(candidates, seeds).mean(1))
                row = {f"controller/{k}": v for k, v in stats.items()}
                g = search.generation
                if g % c.eval_every == 0 or g == c.generations:
                    eval_return = evaluate()
                    row["eval/return"] = eval_return
                logger.log(g, row)
                if g % c.checkpoint_every == 0 or g == c.generations:
                    save()
                bar.update(1)
                bar.set_postfix(ret=f"{stats['return_mean']:.1f}")
        finally:
            bar.close()
    save()
    # GIFs of the final mean controller: a real episode, and a dream when trained in one.
    rollouts = Rollouts(dataclasses.replace(real_spec, max_steps=cfg.gif_frames))
    ret, frames = rollouts.real(search.mean, seed=cfg.seed, record=True)
    rollouts.env.close()
    logger.video(search.generation, "controller/real", frames)
    if c.mode == "dream":
        dream = Rollouts(dataclasses.replace(spec, max_steps=cfg.gif_frames))
        logger.video(search.generation, "controller/dream", dream.dream(search.mean, [0], True)[1])
    return {"generations": search.generation, "eval_return": eval_return,
            "fitness_best_ever": search.best_fitness}  # fmt: skip


def load_controller(run_dir: Path):
    """The final controller's parameters (the CMA-ES mean) of a run: numpy (P,)."""
    from wmrl.infra import load_checkpoint

    return load_checkpoint(Path(run_dir) / "controller.pt")["mean"].numpy()


# -- rendering --------------------------------------------------------------------------------


def load_run(run_dir: Path, device) -> LoadedRun:
    """A saved World Models run for `planners.methods.runs.load_run` (scripts/render_gif.py): the
    VAE + MDN-RNN adapter, its env and the random rollouts it was trained on."""
    from wmrl.infra import load_config

    cfg = load_config(WorldModelsConfig, run_dir)
    model = load_model(cfg, Path(run_dir), device)
    return LoadedRun(model, cfg, cfg.env, env_options(cfg), Path(run_dir) / ROLLOUT_DIR)
