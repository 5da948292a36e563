"""PlaNet's training loop (Hafner et al. 2019, algorithm 1): seed episodes with random actions,
then alternate `train_steps` RSSM updates on replay chunks with one episode of CEM-MPC (with
exploration noise) whose transitions go into the replay. Resumable: the replay persists episode
by episode (`run_dir/replay`) and the checkpoint records how many episodes it belongs to.

    from wmrl.planners.methods.planet import PlaNetConfig, train_planet
    summary = train_planet(PlaNetConfig(env="dmc:cartpole-swingup", episodes=100))

The step axis of every logged value is env steps: policy steps (replay.total_steps) times the
env's action repeat, as in the paper's plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wmrl.envs.replay import open_replay, replay_checkpoint
from wmrl.envs.rollout import env_action_repeat, random_policy, run_episode
from wmrl.planners.cem import CEMConfig, Planner
from wmrl.planners.methods.runs import LoadedRun, openloop_frames
from wmrl.worldmodels.nets import make_optimizer
from wmrl.worldmodels.rssm import RSSM, RSSMConfig


@dataclass
class PlaNetConfig:
    """PlaNet (paper, sec. 5 and appendix A); model and planner in their own sections."""

    env: str = "dmc:cartpole-swingup"  # dmc:<domain>-<task> or gym:<gymnasium id>
    obs_type: str | None = None  # pixels or state; none: the env's default (pixels for dmc:)
    action_repeat: int | None = None  # none: the env's default (PlaNet's for dmc:)
    logdir: str = "runs/planet"  # the run directory
    seed: int = 0  # seeds python, numpy, torch and the env
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    seed_episodes: int = 5  # S: episodes of uniform random actions before training
    episodes: int = 1000  # the budget: planner episodes after the seed episodes
    train_steps: int = 100  # C: gradient steps per collected episode
    batch_size: int = 50  # B: sequences per batch
    chunk_length: int = 50  # L: time steps per sequence
    eval_every: int = 10  # planner episodes between evaluation episodes (no noise); also at the end
    eval_episodes: int = 1  # episodes per evaluation, their mean return is eval/return
    checkpoint_every: int = 1  # planner episodes between checkpoints; also at the end
    capacity: int = 1_000_000  # replay rows (policy steps) kept in memory
    gif_every: int = 50  # planner episodes between open-loop prediction GIFs (0: only at the end)
    openloop_context: int = 5  # frames the model observes before predicting open loop
    openloop_horizon: int = 45  # frames predicted open loop from the real actions
    model: RSSMConfig = field(default_factory=RSSMConfig)  # the world model
    cem: CEMConfig = field(default_factory=CEMConfig)  # the planner


PRESETS = {
    # The camera-ready paper and google-research/planet's final configs: the standard bound
    # (overshooting off), free nats 3.
    "default": {},
    # Latent overshooting (paper, sec. 4, as in its first version): KL terms for open-loop priors
    # up to D = 50 steps ahead, beta_d = 1 for d > 1 (each weighted beta_d / D as eq. 7 says).
    "overshooting": {"model.overshooting_distance": 50, "model.overshooting_kl_scale": 1.0},
    # About a minute on a 2-core CPU with pixels (cartpole: 125 policy steps per episode).
    "smoke": {
        "seed_episodes": 2,
        "episodes": 3,
        "train_steps": 10,
        "batch_size": 8,
        "chunk_length": 20,
        "eval_every": 3,
        "gif_every": 0,
        "action_repeat": 8,
        "model.deter": 32,
        "model.stoch": 8,
        "model.hidden": 32,
        "model.reward_hidden": 32,
        "cem.top_k": 10,
        "cem.candidates": 100,
        "cem.iterations": 3,
        "cem.horizon": 6,
    },
}


def train_planet(cfg: PlaNetConfig, resume: bool = False) -> dict:
    """Train PlaNet as `cfg` says; with `resume`, continue the run in `cfg.logdir` (its
    checkpoint and replay) up to `cfg.episodes`. Returns a summary dict."""
    from wmrl.infra import (
        Logger,
        load_checkpoint,
        prepare_run_dir,
        progress,
        resolve_device,
        save_checkpoint,
        save_config,
        seed_everything,
        set_rng_state,
    )

    run_dir = prepare_run_dir(cfg.logdir, resume)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model, env = build_model(cfg, device)
    repeat = env_action_repeat(env)
    action_dim = int(np.prod(env.action_space.shape))
    optimizer = make_optimizer(model)
    pixels = model.pixels
    meta = {
        "job": "planet",
        "env": cfg.env,
        "obs_type": "pixels" if pixels else "state",
        "deter": cfg.model.deter,
        "stoch": cfg.model.stoch,
    }
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        state = load_checkpoint(ckpt_path, expect_meta=meta, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        done = int(state["episodes"])
        if "rng" in state:
            set_rng_state(state["rng"])
        else:  # checkpoints written before the CUDA/NumPy/Python states were saved
            torch.set_rng_state(state["torch_rng"].cpu())
        eval_return = state.get("eval_return")
    else:
        state, done, eval_return = None, 0, None
    replay, rng = open_replay(run_dir, cfg.capacity, cfg.seed, state)
    save_config(cfg, run_dir)  # on resume too: a larger budget is the run's config from now on
    # A fresh env seed after a resume: the interrupted env's state cannot be restored.
    env.reset(seed=cfg.seed + 1000 * done)
    env.action_space.seed(cfg.seed + 1000 * done)

    def env_steps() -> int:
        return replay.total_steps * repeat

    def checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "episodes": done,
            "env_steps": env_steps(),
            "eval_return": eval_return,
            **replay_checkpoint(replay, rng),
        }
        save_checkpoint(ckpt_path, state, meta=meta)

    logger = Logger(run_dir, resume_step=env_steps() if resume else None)
    planner = Planner(model, action_dim, cfg.cem, device=device)
    explore = random_policy(env.action_space, rng=rng)

    def planner_policy(explore):
        def act(obs):
            return planner.act(obs, explore=explore).cpu().numpy()

        return act

    def evaluate() -> float:
        returns = []
        for _ in range(cfg.eval_episodes):
            planner.reset()
            returns.append(run_episode(env, planner_policy(False))[0])
        return float(np.mean(returns))

    train_return, last_rows = None, None
    bar = progress(cfg.episodes, initial=done, desc="planet", unit="episode")
    try:
        if replay.total_episodes < cfg.seed_episodes:
            seed_returns = []
            while replay.total_episodes < cfg.seed_episodes:
                seed_returns.append(run_episode(env, explore, replay)[0])
            logger.log(env_steps(), {"seed/return": float(np.mean(seed_returns))})
            checkpoint()
        while done < cfg.episodes:
            model.train()
            sums: dict[str, float] = {}
            for update in range(cfg.train_steps):
                batch = replay.sample(cfg.batch_size, cfg.chunk_length)
                batch = {k: torch.as_tensor(v).to(device) for k, v in batch.items()}
                try:
                    metrics = model.train_step(batch, optimizer)
                except FloatingPointError as exc:
                    raise FloatingPointError(
                        f"PlaNet update {update + 1}/{cfg.train_steps} before planner episode "
                        f"{done + 1} (env step {env_steps()}) in {run_dir}: {exc}; resume from "
                        "the last checkpoint with a lower --model.lr"
                    ) from exc
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
            model.eval()
            planner.reset()
            train_return, length, last_rows = run_episode(
                env, planner_policy(True), replay, record=pixels
            )
            done += 1
            row = {f"train/{k}": v / max(cfg.train_steps, 1) for k, v in sums.items()}
            row.update({"train/return": train_return, "train/length": length})
            row["train/episodes"] = replay.total_episodes
            if done % cfg.eval_every == 0 or done == cfg.episodes:
                eval_return = evaluate()
                row["eval/return"] = eval_return
            logger.log(env_steps(), row)
            gif_due = cfg.gif_every and done % cfg.gif_every == 0
            if pixels and (gif_due or done == cfg.episodes):
                frames = openloop_frames(
                    model,
                    last_rows["obs"],
                    last_rows["action"],
                    cfg.openloop_context,
                    cfg.openloop_horizon,
                )
                logger.video(env_steps(), "openloop", frames)
            if done % cfg.checkpoint_every == 0 or done == cfg.episodes:
                checkpoint()
            bar.update(1)
            bar.set_postfix(ret=f"{train_return:.1f}", step=env_steps())
    finally:
        bar.close()
        logger.close()
        env.close()
    summary = {
        "episodes": done,
        "replay_episodes": replay.total_episodes,
        "env_steps": env_steps(),
        "train_return": train_return,
        "eval_return": eval_return,
        "run_dir": str(Path(run_dir)),
    }
    return summary


def build_model(cfg: PlaNetConfig, device) -> tuple[RSSM, object]:
    """The env of `cfg` and an RSSM sized for its spaces: (model, env)."""
    from wmrl.envs import make
    from wmrl.envs.registry import env_options

    env = make(cfg.env, **env_options(cfg))
    obs_shape, action_dim = env.observation_space.shape, int(np.prod(env.action_space.shape))
    return RSSM(obs_shape, action_dim, cfg.model).to(device), env


def load_run(run_dir: Path, device) -> LoadedRun:
    """A saved PlaNet run for `planners.methods.runs.load_run` (scripts/render_gif.py)."""
    from wmrl.envs.registry import env_options
    from wmrl.infra import load_checkpoint, load_config

    cfg = load_config(PlaNetConfig, run_dir)
    model, env = build_model(cfg, device)
    env.close()
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location=device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model, cfg, cfg.env, env_options(cfg), Path(run_dir) / "replay")
