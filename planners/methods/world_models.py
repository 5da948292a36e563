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
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wmrl.envs.collect import Collector
from wmrl.envs.registry import env_options, make_vector
from wmrl.envs.replay import EpisodeReplay, iter_episodes, read_episode
from wmrl.envs.rollout import env_rng_state, random_policy, set_env_rng_state
from wmrl.infra import (
    Every,
    Logger,
    MeanMetrics,
    Run,
    atomic_write_bytes,
    load_checkpoint,
    load_config,
    seed_everything,
    set_rng_state,
)
from wmrl.infra.cluster import require_ray
from wmrl.infra.config import at_least
from wmrl.infra.metrics import nonfinite_fix
from wmrl.planners.controller import (
    ControllerConfig,
    ControllerSearch,
    Evaluator,
    Rollouts,
    RolloutSpec,
    num_params,
    resolve_action_map,
)
from wmrl.planners.methods.runs import LoadedRun, episode_rows, openloop_frames
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig, WorldModels, train_mdnrnn_step
from wmrl.worldmodels.vae import ConvVAE, VAEConfig, train_vae_step

STAGES = ("collect", "vae", "encode", "mdnrnn", "controller")
ROLLOUT_DIR, SERIES_FILE = "rollouts", "series.npz"
JOB = "worldmodels"


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
    ray_address: str | None = None  # with --controller.backend ray: the cluster to join (auto:
    # the one `ray start` runs on this node; ray://host:10001: Ray Client); none: a local Ray
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    def __post_init__(self):
        at_least(self, 1, "rollouts", "num_envs", "encode_batch", "checkpoint_every", "log_every")
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
    # Every stage once, with budgets small enough for a 2-core CPU.
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
    """What a checkpoint must agree on with the run that reads it: checkpoint.pt's meta, and with
    `stage` that of the stage's own checkpoint (vae.pt, mdnrnn.pt, controller.pt)."""
    meta = {"job": JOB, "env": cfg.env, "z_dim": cfg.vae.z_dim, "hidden": cfg.mdnrnn.hidden}
    return meta if stage is None else {**meta, "stage": stage}


# -- the pipeline -----------------------------------------------------------------------------


def train_worldmodels(cfg: WorldModelsConfig, resume: bool = False) -> dict:
    """Run the stages `cfg.stages` asks for that are not finished yet; with `resume`, continue
    the run in `cfg.logdir`. Returns a summary dict: the stages run now and all finished ones,
    each stage's results as "<stage>/<name>" (updates, losses, returns), the run directory."""
    with Run(cfg, resume, desc=JOB) as run:
        progress_state = restore_progress(run, cfg)
        done, summary = list(progress_state["done"]), dict(progress_state["summary"])
        controller = run.dir / "controller.pt"
        if "controller" in done and controller.exists():
            searched = _load(controller, cfg, "controller")["generation"]
            if searched < cfg.controller.generations:  # a larger budget: search on
                done.remove("controller")
        todo = [s for s in STAGES if s in cfg.stages and s not in done]
        check_inputs(todo, done)
        if "controller" in todo and cfg.controller.backend == "ray":
            require_ray("--controller.backend ray")  # now, not after hours of the other stages
        run.save_config()  # on resume too: a larger budget is the run's config from now on
        # Stages log on separate step axes (env steps, updates, generations): each stage drops
        # the rows of its own it logged after its checkpoint (`Run.begin` would drop every
        # stage's rows after one step).
        run.logger = Logger(run.dir, tensorboard=run.tensorboard)
        for stage in todo:
            seed_everything(cfg.seed + 1000 * STAGES.index(stage))
            run.meta = _meta(cfg, stage)  # the stage's own checkpoint, <stage>.pt
            result = RUNNERS[stage](cfg, run)
            summary.update({f"{stage}/{k}": v for k, v in result.items()})
            done.append(stage)
            run.meta = _meta(cfg)
            run.checkpoint({"done": done, "summary": summary})
            run.logger.flush()
    return {"stages_run": todo, "stages_done": done, **summary, "run_dir": str(run.dir)}


def restore_progress(run: Run, cfg: WorldModelsConfig) -> dict:
    """The pipeline's progress, {"done": finished stages, "summary": their results}: from
    checkpoint.pt on resume (its meta checked), else nothing done. A run stopped in its first
    stage has no checkpoint.pt yet and starts again (that stage from its own files)."""
    if run.resume and not run.checkpoint_path.exists():
        run.meta = _meta(cfg)
        return {"done": [], "summary": {}}
    state = run.restore(_meta(cfg), write_config=False)
    return {"done": [], "summary": {}} if state is None else state


def check_inputs(todo: list[str], done: list[str]) -> None:
    """Raise ValueError if a stage in `todo` needs an earlier stage (its inputs) that is
    neither `done` nor in `todo`."""
    for stage in todo:
        missing = [s for s in STAGES[: STAGES.index(stage)] if s not in done and s not in todo]
        if missing:
            raise ValueError(
                f"stage {stage!r} needs the stages {missing} first; add them to --stages or "
                "--resume a run that finished them"
            )


@contextmanager
def stage_progress(run: Run, stage: str, total: int, initial: int, unit: str):
    """The run's progress bar for one stage, at `initial` of `total` `unit`s (`run.advance`
    moves it), closed when the stage's loop ends."""
    run.phase(stage, total, initial, unit)
    try:
        yield
    finally:
        run.bar.close()
        run.bar = None


def _load(path: Path, cfg: WorldModelsConfig, stage: str, device="cpu") -> dict:
    """The state of a stage's checkpoint, its meta checked against this run's."""
    return load_checkpoint(path, expect_meta=_meta(cfg, stage), map_location=device)


def resume_training(path: Path, cfg, stage: str, device, model, optimizer) -> dict:
    """Put the model, optimizer and generators of an interrupted vae or mdnrnn stage back from
    its checkpoint `path`; returns the checkpoint's state (its "step" and the stage's extras)."""
    state = _load(path, cfg, stage, device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "rng" in state:  # every generator, CUDA's too (written by Run.checkpoint)
        set_rng_state(state["rng"])
    else:
        torch.set_rng_state(state["torch_rng"].cpu())
    return state


# -- collect ----------------------------------------------------------------------------------

ROLLOUT_RING_ROWS = 5000  # rows held in memory while collecting (every episode goes to disk)


class BrownianPolicy:
    """Random actions that drift: a_t = clip(a_(t-1) + sqrt(dt) N(0, I)), from a uniform start
    (ctallec/world-models' `sample_continuous_policy`; CarRacing then drives for a while
    instead of jittering in place). Batched: observations (N, ...) -> actions (N, A). Its state
    is `action` (the last actions) and `rng`, which a checkpoint saves."""

    def __init__(self, action_space, rng: np.random.Generator, dt: float = 1 / 50):
        self.space, self.rng, self.dt = action_space, rng, dt
        self.action = rng.uniform(action_space.low, action_space.high)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        step = np.sqrt(self.dt) * self.rng.standard_normal(self.action.shape)
        self.action = np.clip(self.action + step, self.space.low, self.space.high)
        return self.action.astype(self.space.dtype)


def brownian_policy(action_space, seed: int | None = None, dt: float = 1 / 50) -> BrownianPolicy:
    """A `BrownianPolicy` drawing from a new generator seeded with `seed`."""
    return BrownianPolicy(action_space, np.random.default_rng(seed), dt)


def stage_collect(cfg: WorldModelsConfig, run: Run) -> dict:
    """`cfg.rollouts` random-action episodes (`collect_policy`) in rollouts/, one replay file
    each, written as it ends. Whenever every env's episode has ended, collect.pt saves how many
    there are and every generator, so an interrupted collect stage goes on from there as if it
    had never stopped (files of episodes after it are set aside). Returns the episodes and env
    steps stored and the mean return of the episodes (of those collected now, for a run from
    before collect.pt)."""
    directory, path = run.dir / ROLLOUT_DIR, run.dir / "collect.pt"
    state = _load(path, cfg, "collect") if path.exists() else None
    if state is not None:
        replay = EpisodeReplay.load(directory, ROLLOUT_RING_ROWS, max_episodes=state["episodes"],
                                    next_index=state["next_index"], repair=True)  # fmt: skip
    elif directory.is_dir() and any(directory.glob("*.npz")):  # a run from before collect.pt
        replay = EpisodeReplay.load(directory, ROLLOUT_RING_ROWS)
    else:
        replay = EpisodeReplay(ROLLOUT_RING_ROWS, directory=directory)
    run.logger.drop("collect/", after=replay.total_steps)  # logged again from here
    returns = list(state.get("returns", [])) if state is not None else []
    if replay.total_episodes < cfg.rollouts:
        returns += collect(cfg, run, replay, state, returns)
    return {
        "episodes": replay.total_episodes,
        "steps": replay.total_steps,
        "mean_return": float(np.mean(returns)) if returns else None,
    }


def collect(cfg: WorldModelsConfig, run: Run, replay: EpisodeReplay, state=None,
            before: list[float] = ()) -> list[float]:  # fmt: skip
    """Episodes into `replay` until it holds `cfg.rollouts`, each logged (collect/return,
    collect/length) at the env step it ended, from collect.pt's `state` if given (`before`:
    the returns it holds); returns the returns of the episodes collected now."""
    seed = cfg.seed + 1000 * replay.total_episodes  # (fresh seeds for a run without collect.pt)
    vec = make_vector(cfg.env, min(cfg.num_envs, cfg.rollouts), seed=seed, **env_options(cfg))
    rng = np.random.default_rng(seed)
    returns, step, path = [], replay.total_steps, run.dir / "collect.pt"
    try:
        if cfg.collect_policy == "uniform":
            policy = random_policy(vec.action_space, rng=rng)
        else:
            policy = BrownianPolicy(vec.action_space, rng)
        if state is not None and len(state["env_rng"]) == vec.num_envs:
            set_env_rng_state(vec, state["env_rng"])
            rng.bit_generator.state = state["action_rng"]
            if state.get("action") is not None:
                policy.action = np.asarray(state["action"])

        def save() -> None:  # before a reset: the envs' next episodes are drawn after it
            run.checkpoint({"episodes": replay.total_episodes, "next_index": replay.next_index,
                            "returns": [*before, *returns],
                            "env_rng": env_rng_state(vec),
                            "action_rng": rng.bit_generator.state,
                            "action": getattr(policy, "action", np.array(None)).tolist()},
                           path)  # fmt: skip

        save()
        # No seed: make_vector seeded the envs, or their saved generators were put back.
        collector = Collector(vec, replay)
        with stage_progress(run, "collect", cfg.rollouts, replay.total_episodes, "episode"):
            while replay.total_episodes < cfg.rollouts:
                for stats in collector.run(policy, episodes=1):
                    step += stats.length
                    returns.append(stats.ret)
                    run.log(step, {"collect/return": stats.ret, "collect/length": stats.length})
                if collector.between_episodes:
                    save()
                run.advance(replay.total_episodes)
                run.stop_point()  # the finished episodes are on disk already
    finally:
        vec.close()
    return returns


def rollouts(run_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    """The stored episodes (Minari layout), in index order, read one at a time."""
    directory = run_dir / ROLLOUT_DIR
    if not directory.is_dir() or not any(directory.glob("*.npz")):
        raise FileNotFoundError(f"no rollouts in {directory}; run the collect stage first")
    return iter_episodes(directory)


# -- vae --------------------------------------------------------------------------------------


def load_frames(run_dir: Path, max_frames: int | None, rng: np.random.Generator) -> np.ndarray:
    """Every stored frame (or a random `max_frames` of them): uint8 (N, 64, 64, C)."""
    frames = np.concatenate([ep["observations"] for ep in rollouts(run_dir)])
    if max_frames is not None and len(frames) > max_frames:
        frames = frames[np.sort(rng.choice(len(frames), max_frames, replace=False))]
    return frames


def build_vae(cfg: WorldModelsConfig, channels: int = 3) -> ConvVAE:
    return ConvVAE(cfg.vae.z_dim, channels, cfg.vae.kl_tolerance)


def vae_batches(num_frames: int, batch_size: int, seed: int, step: int, total: int) -> Iterator:
    """The frame indices (sorted, up to `batch_size`) of updates step + 1 ... total, in epochs of
    `num_frames // batch_size` updates over one permutation each, seeded by (seed, epoch), so that a
    resumed stage draws the batches the uninterrupted one would have."""
    per_epoch = max(num_frames // batch_size, 1)
    while step < total:
        order = np.random.default_rng([seed, step // per_epoch]).permutation(num_frames)
        for i in range(step % per_epoch, per_epoch):
            yield np.sort(order[i * batch_size : (i + 1) * batch_size])
            step += 1


def vae_state(vae: ConvVAE, optimizer, step: int, last: dict) -> dict:
    """vae.pt's state (`Run.checkpoint` adds every generator's); `last` is the last update's
    losses, the stage's result for a run stopped after its last update."""
    return {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "torch_rng": torch.get_rng_state(), "channels": vae.channels,
            "last": last}  # fmt: skip


def stage_vae(cfg: WorldModelsConfig, run: Run) -> dict:
    """Train the ConvVAE for `vae.epochs` passes over shuffled frames (the reference's loop),
    from vae.pt where an earlier vae stage stopped; then the GIF vae_recon (real | VAE).
    Returns the updates and the last update's losses."""
    frames = load_frames(run.dir, cfg.vae_max_frames, np.random.default_rng(cfg.seed))
    vae = build_vae(cfg, frames.shape[-1]).to(run.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.vae.lr)
    path, step = run.dir / "vae.pt", 0
    total = max(len(frames) // cfg.vae.batch_size, 1) * cfg.vae.epochs
    metrics, last = MeanMetrics(), {}
    if path.exists():  # an interrupted vae stage
        state = resume_training(path, cfg, "vae", run.device, vae, optimizer)
        step, last = int(state["step"]), dict(state.get("last", {}))
    run.logger.drop("vae/", after=step)  # rows an interrupted vae stage logged after it
    every_log = Every(cfg.log_every, start=step)
    every_checkpoint = Every(cfg.checkpoint_every, start=step)
    vae.train()
    with stage_progress(run, "vae", total, step, "update"):
        for idx in vae_batches(len(frames), cfg.vae.batch_size, cfg.seed, step, total):
            last = train_vae_step(vae, torch.as_tensor(frames[idx]).to(run.device), optimizer)
            metrics.add(last)
            step += 1
            if every_log(step) or step == total:
                means = metrics.mean(f"a VAE update before update {step}", fix_vae(run))
                run.log(step, {f"vae/{k}": v for k, v in means.items()})
            if every_checkpoint(step) or run.stopping:
                run.checkpoint(vae_state(vae, optimizer, step, last), path)
            run.advance(step, loss=f"{last['loss']:.1f}")
            run.stop_point()
    run.checkpoint(vae_state(vae, optimizer, step, last), path)
    vae.eval()
    run.video(step, "vae/recon", vae_recon(vae, run.dir, cfg.gif_frames, run.device))
    return {"updates": step, **{k: last.get(k) for k in ("loss", "r_loss", "kl")}}


def fix_vae(run: Run) -> str:
    """What a non-finite VAE update's error advises: the data first, then the settings."""
    return nonfinite_fix(f"the frames in {run.dir / ROLLOUT_DIR} (not 0-255 images)",
                         "the settings (the learning rate --vae.lr, too high)",
                         "vae.pt is from before it: resume with a lower --vae.lr")  # fmt: skip


@torch.no_grad()
def vae_recon(vae: ConvVAE, run_dir: Path, frames: int, device) -> np.ndarray:
    """The first `frames` frames of the newest rollout beside their VAE reconstructions (from
    the mean of z): uint8 (T, 64, 2 * 64, C)."""
    episode = read_episode(run_dir / ROLLOUT_DIR)["observations"][:frames]
    mu, _ = vae.encode(torch.as_tensor(episode).to(device))
    return np.concatenate([episode, vae.decode_frames(mu).cpu().numpy()], axis=2)


def load_vae(cfg: WorldModelsConfig, run_dir: Path, device) -> ConvVAE:
    """The trained ConvVAE of vae.pt, in eval mode."""
    path = run_dir / "vae.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the vae stage first")
    state = _load(path, cfg, "vae", device)
    vae = build_vae(cfg, int(state["channels"])).to(device)
    vae.load_state_dict(state["model"])
    return vae.eval()


# -- encode -----------------------------------------------------------------------------------


def stage_encode(cfg: WorldModelsConfig, run: Run) -> dict:
    """(mu, logvar) of every stored frame, with the episodes in the replay's row layout, into
    series.npz (the reference's series.py): mu, logvar (N, Z); action (N, A) with action[t] =
    a_(t-1); reward (N,) = r_(t-1); is_first, is_terminal (N,); starts, lengths (E,) rows.
    Returns the episodes and frames encoded."""
    vae = load_vae(cfg, run.dir, run.device)
    rows = [encode_episode(vae, ep, cfg.encode_batch, run.device) for ep in rollouts(run.dir)]
    series = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    lengths = np.asarray([len(r["mu"]) for r in rows])
    series["lengths"] = lengths
    series["starts"] = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    buffer = io.BytesIO()
    np.savez(buffer, **series)
    atomic_write_bytes(run.dir / SERIES_FILE, buffer.getbuffer())
    return {"episodes": len(lengths), "frames": int(lengths.sum())}


@torch.no_grad()
def encode_episode(vae: ConvVAE, episode: dict, batch: int, device) -> dict[str, np.ndarray]:
    """One episode (Minari layout, T+1 frames) as its T+1 rows of the series: mu, logvar
    (T+1, Z), encoded `batch` frames at a time; action, reward, is_first, is_terminal."""
    obs = episode["observations"]
    mu, logvar = [], []
    for i in range(0, len(obs), batch):
        m, lv = vae.encode(torch.as_tensor(obs[i : i + batch]).to(device))
        mu.append(m.cpu().numpy())
        logvar.append(lv.cpu().numpy())
    return {
        "mu": np.concatenate(mu),
        "logvar": np.concatenate(logvar),
        "action": episode_rows(episode)[1],
        "reward": np.concatenate([[0.0], episode["rewards"]]).astype(np.float32),
        "is_first": np.arange(len(obs)) == 0,
        "is_terminal": np.concatenate([[False], episode["terminations"]]),
    }


def load_series(run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of series.npz (see `stage_encode`)."""
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


def mdnrnn_batch(series: dict, cfg: WorldModelsConfig, rng, device) -> dict[str, torch.Tensor]:
    """One training batch on `device` (`sample_sequences` with the config's sizes), z sampled
    from each row's (mu, logvar)."""
    raw = sample_sequences(series, cfg.mdnrnn.batch_size, cfg.mdnrnn.seq_len, rng)
    batch = {k: torch.as_tensor(v).to(device) for k, v in raw.items()}
    return {"z": ConvVAE.sample(batch.pop("mu"), batch.pop("logvar")), **batch}


def build_mdnrnn(cfg: WorldModelsConfig, action_dim: int) -> MDNRNN:
    return MDNRNN(cfg.vae.z_dim, action_dim, cfg.mdnrnn)


def mdnrnn_state(model: MDNRNN, optimizer, step: int, rng: np.random.Generator,
                 last: dict) -> dict:  # fmt: skip
    """mdnrnn.pt's state (`Run.checkpoint` adds every generator's); `last` is the last
    update's losses, the stage's result for a run stopped after its last update."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "action_dim": model.action_dim, "last": last}  # fmt: skip


def stage_mdnrnn(cfg: WorldModelsConfig, run: Run) -> dict:
    """Train the MDN-RNN on z sampled from the stored (mu, logvar), `mdnrnn.steps` updates, from
    mdnrnn.pt where an earlier mdnrnn stage stopped; then the GIF mdnrnn/dream_openloop.
    Returns the updates and the last update's losses."""
    series = load_series(run.dir)
    rng = np.random.default_rng(cfg.seed)
    model = build_mdnrnn(cfg, series["action"].shape[1]).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.mdnrnn.lr)
    path, step, total = run.dir / "mdnrnn.pt", 0, cfg.mdnrnn.steps
    metrics, last = MeanMetrics(), {}
    if path.exists():  # an interrupted mdnrnn stage
        state = resume_training(path, cfg, "mdnrnn", run.device, model, optimizer)
        step, rng.bit_generator.state = int(state["step"]), state["numpy_rng"]
        last = dict(state.get("last", {}))
    run.logger.drop("mdnrnn/", after=step)  # rows an interrupted mdnrnn stage logged after it
    every_log = Every(cfg.log_every, start=step)
    every_checkpoint = Every(cfg.checkpoint_every, start=step)
    model.train()
    with stage_progress(run, "mdnrnn", total, step, "update"):
        while step < total:
            last = train_mdnrnn_step(model, mdnrnn_batch(series, cfg, rng, run.device), optimizer)
            metrics.add(last)
            step += 1
            if every_log(step) or step == total:
                means = metrics.mean(f"an MDN-RNN update before update {step}", fix_mdnrnn(run))
                run.log(step, {f"mdnrnn/{k}": v for k, v in means.items()})
            if every_checkpoint(step) or run.stopping:
                run.checkpoint(mdnrnn_state(model, optimizer, step, rng, last), path)
            run.advance(step, loss=f"{last['loss']:.3f}")
            run.stop_point()
    run.checkpoint(mdnrnn_state(model, optimizer, step, rng, last), path)
    model.eval()
    run.video(step, "mdnrnn/dream_openloop", dream_openloop(cfg, run.dir, run.device))
    return {"updates": step, **{k: last.get(k) for k in ("loss", "z_nll")}}


def fix_mdnrnn(run: Run) -> str:
    """What a non-finite MDN-RNN update's error advises: the data first, then the settings."""
    return nonfinite_fix(f"the encoded series {run.dir / SERIES_FILE} (from a diverged VAE)",
                         "the settings (the learning rate --mdnrnn.lr, too high)",
                         "mdnrnn.pt is from before it: resume (--resume) with a lower "
                         "--mdnrnn.lr")  # fmt: skip


def dream_openloop(cfg, run_dir: Path, device, context: int = 1) -> np.ndarray:
    """The MDN-RNN dreaming an episode from its first frame with the recorded actions, decoded
    by the VAE: rows truth / dream / |error|, uint8 (T, 3 * 64, 64, C)."""
    model = load_model(cfg, run_dir, device)
    obs, action = episode_rows(read_episode(run_dir / ROLLOUT_DIR))
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


def stage_controller(cfg: WorldModelsConfig, run: Run) -> dict:
    """CMA-ES on the linear controller, fitness from rollouts in worker processes, from
    controller.pt where an earlier controller stage stopped; the mean of the search distribution
    is evaluated in the real env every `eval_every` generations and at the end, then recorded
    as GIFs. Returns the generations, the last evaluation's return and the best fitness."""
    c = cfg.controller
    if c.mode == "dream" and not (cfg.mdnrnn.done_head or cfg.mdnrnn.reward_head):
        raise ValueError(
            "--controller.mode dream needs an MDN-RNN trained with --mdnrnn.done_head true "
            "and/or --mdnrnn.reward_head true (the dream's episode ends and rewards)"
        )
    spec = rollout_spec(cfg, run.dir, c.mode)
    # Evaluations: whole real episodes, whatever the training rollouts' patience.
    real_spec = dataclasses.replace(spec, mode="real", patience=None)
    path = run.dir / "controller.pt"
    search, eval_return = open_search(cfg, spec, path)
    run.logger.drop("controller/", after=search.generation)
    every_eval = Every(c.eval_every, start=search.generation)
    every_checkpoint = Every(c.checkpoint_every, start=search.generation)
    with (
        rollout_evaluator(cfg, spec) as evaluator,
        stage_progress(run, "controller", c.generations, search.generation, "gen"),
    ):
        while search.generation < c.generations:
            candidates = search.ask()
            seeds = cfg.seed * 10**5 + search.generation * c.rollouts + np.arange(c.rollouts)
            stats = search.tell(evaluator.returns(candidates, seeds).mean(1))
            row = {f"controller/{k}": v for k, v in stats.items()}
            g = search.generation
            if every_eval(g) or g == c.generations:
                eval_return = evaluate(cfg, search.mean, evaluator, real_spec)
                row["eval/return"] = eval_return
            run.log(g, row)
            if every_checkpoint(g) or g == c.generations or run.stopping:
                run.checkpoint(controller_state(search, eval_return), path)
            run.advance(g, ret=f"{stats['return_mean']:.1f}")
            run.stop_point()
    run.checkpoint(controller_state(search, eval_return), path)
    controller_gifs(cfg, run, spec, search)
    return {"generations": search.generation, "eval_return": eval_return,
            "fitness_best_ever": search.best_fitness}  # fmt: skip


def rollout_evaluator(cfg: WorldModelsConfig, spec: RolloutSpec) -> Evaluator:
    """The controller's rollout workers for `spec`: the backend, workers and cluster of `cfg`."""
    c = cfg.controller
    return Evaluator(spec, c.workers, cfg.mp_context, c.backend, cfg.ray_address)


def open_search(cfg: WorldModelsConfig, spec: RolloutSpec, path: Path):
    """(search, last evaluation's return): as saved in `path` by an earlier controller stage,
    else a new CMA-ES search over the linear controller's parameters and None."""
    if path.exists():
        state = _load(path, cfg, "controller")
        return ControllerSearch.from_bytes(state["search"]), state["eval_return"]
    m = spec.mdnrnn
    dim = num_params(m["z_dim"] + m["cfg"]["hidden"], m["action_dim"])
    return ControllerSearch(dim, cfg.controller, seed=cfg.seed), None


def controller_state(search: ControllerSearch, eval_return: float | None) -> dict:
    """controller.pt's state: the search, its mean (the controller) and best candidate."""
    return {"search": search.state_bytes(), "generation": search.generation,
            "mean": torch.as_tensor(search.mean), "eval_return": eval_return,
            "best": torch.as_tensor(search.best_params)}  # fmt: skip


def evaluate(cfg: WorldModelsConfig, params, evaluator: Evaluator, real_spec) -> float:
    """The mean return of the controller `params` (P,) over `eval_episodes` whole real episodes,
    on seeds apart from training's; in `evaluator`'s workers when they play whole real episodes
    (mode real, no patience), else in a pool of `real_spec` workers started for it."""
    c = cfg.controller
    seeds = 10**6 + cfg.seed * 10**5 + np.arange(c.eval_episodes)
    if c.mode == "real" and c.patience is None:
        return float(evaluator.returns(params[None], seeds).mean())
    with rollout_evaluator(cfg, real_spec) as real:
        return float(real.returns(params[None], seeds).mean())


def controller_gifs(cfg: WorldModelsConfig, run: Run, spec: RolloutSpec, search) -> None:
    """GIFs of the search's mean controller: a real episode, and a dream when trained in one."""
    real = dataclasses.replace(spec, mode="real", patience=None, max_steps=cfg.gif_frames)
    rollouts = Rollouts(real)
    _, frames = rollouts.real(search.mean, seed=cfg.seed, record=True)
    rollouts.env.close()
    run.video(search.generation, "controller/real", frames)
    if spec.mode == "dream":
        dream = Rollouts(dataclasses.replace(spec, max_steps=cfg.gif_frames))
        run.video(search.generation, "controller/dream", dream.dream(search.mean, [0], True)[1])


def load_controller(run_dir: Path):
    """The final controller's parameters (the CMA-ES mean) of a run: numpy (P,)."""
    return load_checkpoint(Path(run_dir) / "controller.pt")["mean"].numpy()


# What each stage runs: stage(cfg, run) -> its results for the summary.
RUNNERS = {
    "collect": stage_collect,
    "vae": stage_vae,
    "encode": stage_encode,
    "mdnrnn": stage_mdnrnn,
    "controller": stage_controller,
}


# -- rendering --------------------------------------------------------------------------------


def load_run(run_dir: Path, device) -> LoadedRun:
    """A saved World Models run for `planners.methods.runs.load_run` (scripts/render_gif.py): the
    VAE + MDN-RNN adapter, its env and the random rollouts it was trained on."""
    cfg = load_config(WorldModelsConfig, run_dir)
    model = load_model(cfg, Path(run_dir), device)
    return LoadedRun(model, cfg, cfg.env, env_options(cfg), Path(run_dir) / ROLLOUT_DIR)
