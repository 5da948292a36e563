"""PlaNet's training loop (Hafner et al. 2019, algorithm 1): seed episodes with random actions,
then alternate `train_steps` RSSM updates on replay chunks with one episode of CEM-MPC (with
exploration noise) whose transitions go into the replay. Resumable: the replay persists episode
by episode (`run_dir/replay`) and the checkpoint records how many episodes it belongs to.

    from wmrl.planners.methods.planet import PlaNetConfig, train_planet
    summary = train_planet(PlaNetConfig(env="dmc:cartpole-swingup", episodes=100))

The step axis of every logged value is env steps: policy steps (replay.total_steps) times the
env's action repeat, as in the paper's plots.

Data-parallel on N ranks (`torchrun --nproc-per-node N scripts/train_planet.py ...`; see
`infra.distributed`): every rank runs this loop with its own env, replay
(`<run dir>/ranks/<r>/replay`, rank 0's in `<run dir>/replay`) and seed (seed + rank); the
RSSM trains in DistributedDataParallel, each of the C updates averaging the gradients of the N
ranks' batches (an effective batch of N x batch_size), and then every rank plans and collects
one episode. The budget `episodes`, the episode counts (eval_every, gif_every,
checkpoint_every) and the logged step axis are summed over the ranks (N per round; the last
round may pass the budget by up to N - 1); seed_episodes and train_steps are each rank's.
Rank 0 evaluates and writes the logs (its own training returns and losses), GIFs and the one
checkpoint, which holds every rank's replay position and generators: a resume needs the same N.
The ranks meet after every episode (`Run.agree`): a signal stops them all there, and their
episodes must have one length (dm-control's fixed time limit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from wmrl.envs.registry import env_options, make
from wmrl.envs.replay import open_replay, replay_checkpoint
from wmrl.envs.rollout import (
    env_action_repeat,
    env_rng_state,
    random_policy,
    run_episode,
    set_env_rng_state,
)
from wmrl.infra import (
    CHECKPOINT_FILE,
    Every,
    MeanMetrics,
    Run,
    distributed,
    load_checkpoint,
    load_config,
)
from wmrl.infra.config import at_least
from wmrl.infra.metrics import nonfinite_fix
from wmrl.planners.cem import CEMConfig, Planner
from wmrl.planners.methods.runs import LoadedRun, openloop_frames
from wmrl.worldmodels.categorical_rssm import CategoricalRSSM, CategoricalRSSMConfig
from wmrl.worldmodels.nets import make_optimizer
from wmrl.worldmodels.rssm import RSSM, ModelLoss, RecurrentStateSpaceModel, RSSMConfig


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
    world_model: Literal["gaussian", "categorical"] = "gaussian"  # gaussian: PlaNet's RSSM
    # (--model.*); categorical: DreamerV2's (--categorical.*), CEM planning on its latents
    model: RSSMConfig = field(default_factory=RSSMConfig)  # the world model
    categorical: CategoricalRSSMConfig = field(default_factory=CategoricalRSSMConfig)
    cem: CEMConfig = field(default_factory=CEMConfig)  # the planner

    def __post_init__(self):
        at_least(self, 1, "episodes", "batch_size", "chunk_length", "eval_every",
                 "checkpoint_every", "capacity")  # fmt: skip
        at_least(self, 0, "seed_episodes", "train_steps", "eval_episodes", "gif_every")


PRESETS = {
    # The camera-ready paper and google-research/planet's final configs: the standard bound
    # (overshooting off), free nats 3.
    "default": {},
    # Latent overshooting (paper, sec. 4, as in its first version): KL terms for open-loop priors
    # up to D = 50 steps ahead, beta_d = 1 for d > 1 (each weighted beta_d / D as eq. 7 says).
    "overshooting": {"model.overshooting_distance": 50, "model.overshooting_kl_scale": 1.0},
    # The smallest run that exercises every part, with pixels (cartpole: 125 policy steps per
    # episode at action repeat 8).
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
    checkpoint and replay) up to `cfg.episodes` (summed over the ranks when torchrun starts
    several; see the module's docstring). Returns a summary dict: planner episodes, replay
    episodes, env steps, the last train and eval returns, the run directory (this rank's)."""
    with Run(cfg, resume, desc="planet", parallel=True) as run:
        model, env = build_model(cfg, run.device)
        run.closing(env)
        ranks, action_dim = run.world.size, int(np.prod(env.action_space.shape))
        per_step = env_action_repeat(env) * ranks  # env steps (all ranks') per policy step
        learner = Learner(model, cfg, run.device, run)
        state = run.restore(meta(cfg, model), budget=(cfg.episodes, "--episodes", "episodes"))
        done, eval_return = 0, None
        if state is not None:
            learner.load_state_dict(state)
            done, eval_return = int(state["episodes"]), state.get("eval_return")
            if "rng" not in state:  # checkpoints written before every RNG's state was saved
                torch.set_rng_state(state["torch_rng"].cpu())
        replay, rng = open_replay(run.dir, cfg.capacity, run.seed, state)
        if state is not None and "env_rng" in state:  # the episodes the run would have met
            set_env_rng_state(env, state["env_rng"])
        else:  # a new run (or an older checkpoint without the env's generator)
            env.reset(seed=run.seed + 1000 * done)
        planner = Planner(model, action_dim, cfg.cem, device=run.device)
        run.begin(replay.total_steps * per_step, total=cfg.episodes, initial=done, unit="episode")

        if replay.total_episodes < cfg.seed_episodes:
            run.phase("seed episodes")
            explore, returns = random_policy(env.action_space, rng=rng), []
            while replay.total_episodes < cfg.seed_episodes:
                returns.append(run_episode(env, explore, replay)[0])
            run.log(replay.total_steps * per_step, {"seed/return": float(np.mean(returns))})
            run.agree(replay.total_steps)
            save(run, learner, replay, rng, env, done, eval_return)

        every_eval = Every(cfg.eval_every, start=done)
        every_gif = Every(cfg.gif_every, start=done)
        every_checkpoint = Every(cfg.checkpoint_every, start=done)
        train_return, measured = None, not model.pixels
        run.phase("train")
        while done < cfg.episodes:
            start = time.perf_counter()
            learner.train(replay, f"planner episode {done + 1} (env step "
                          f"{replay.total_steps * per_step}) in {run.dir}")  # fmt: skip
            if not measured:  # the first measured speed: say what the budget costs here
                seconds, measured = (time.perf_counter() - start) / max(cfg.train_steps, 1), True
                left = (cfg.episodes - done + ranks - 1) // ranks * cfg.train_steps  # rounds
                run.speed_notice("pixel PlaNet", seconds, left, CPU_ADVICE)
            model.eval()
            planner.reset()
            act = partial(planner_action, planner, explore=True)
            train_return, length, rows = run_episode(env, act, replay, record=model.pixels)
            done += ranks
            run.agree(replay.total_steps)  # several ranks: a signal stops all of them here
            step, end = replay.total_steps * per_step, done >= cfg.episodes
            row = learner.means()
            row.update({"train/return": train_return, "train/length": length})
            row["train/episodes"] = replay.total_episodes
            # Each counter is called on every episode (before `or end`), so none skips a period.
            if (every_eval(done) or end) and run.main:  # (the rows are rank 0's)
                eval_return = evaluate(env, planner, cfg.eval_episodes)
                row["eval/return"] = eval_return
            run.log(step, row)
            if (every_gif(done) or end) and model.pixels and run.main:
                frames = openloop_frames(model, rows["obs"], rows["action"],
                                         cfg.openloop_context, cfg.openloop_horizon)  # fmt: skip
                run.video(step, "openloop", frames)
            if every_checkpoint(done) or end or run.stopping:
                save(run, learner, replay, rng, env, done, eval_return)
            run.advance(done, ret=f"{train_return:.1f}", step=step)
            run.stop_point()
    return {
        "episodes": done,
        "replay_episodes": replay.total_episodes,
        "env_steps": replay.total_steps * per_step,
        "train_return": train_return,
        "eval_return": eval_return,
        "run_dir": str(run.dir),
    }


CPU_ADVICE = ("--obs-type state learns from state observations on a CPU; pixels want a GPU "
              "(--device cuda)")  # fmt: skip


def meta(cfg: PlaNetConfig, model: RecurrentStateSpaceModel) -> dict:
    """What a checkpoint must agree on with the run that resumes it."""
    return {
        "job": "planet",
        "env": cfg.env,
        "obs_type": "pixels" if model.pixels else "state",
        "deter": model.cfg.deter,
        "stoch": model.cfg.stoch,
        # None for PlaNet's own model, as checkpoints from before the option hold no kind
        "world_model": None if cfg.world_model == "gaussian" else cfg.world_model,
    }


class Learner:
    """The RSSM and its optimizer: `train` makes C = `cfg.train_steps` updates on replay chunks
    (B = `cfg.batch_size` sequences of L = `cfg.chunk_length` steps) and adds their metrics to
    `metrics`; `means` gives their means, which the loop logs once per episode."""

    def __init__(self, model, cfg: PlaNetConfig, device, run: Run | None = None):
        self.model, self.cfg, self.device, self.run = model, cfg, device, run
        self.optimizer = make_optimizer(model)
        self.metrics = MeanMetrics()
        # Several ranks: the loss in DDP (rank 0's weights on every rank from here on).
        parallel = run is not None and run.world.parallel
        self.objective = distributed.wrap(ModelLoss(model), device) if parallel else None

    def fix(self) -> str:
        """What a non-finite update's error advises: the data first, then the settings."""
        then = self.run.resume_advice("a lower --model.lr") if self.run else ""
        return nonfinite_fix(
            f"the env's data ({self.cfg.env}: observations or rewards not finite or far out of "
            "scale)", "the settings (the learning rate --model.lr, too high)", then,
        )  # fmt: skip

    def train(self, replay, before: str) -> None:
        """C updates; a non-finite one raises FloatingPointError naming the update, `before`
        (which planner episode it preceded, and where) and the fix, before it touches the
        weights."""
        self.model.train()
        for update in range(self.cfg.train_steps):
            batch = replay.sample(self.cfg.batch_size, self.cfg.chunk_length)
            batch = {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}
            try:
                self.metrics.add(
                    self.model.update(batch, self.optimizer, objective=self.objective)[0]
                )
            except FloatingPointError as exc:
                raise FloatingPointError(
                    f"PlaNet update {update + 1}/{self.cfg.train_steps} before {before}: {exc}; "
                    f"{self.fix()}"
                ) from exc

    def means(self) -> dict:
        """{"train/<metric>": mean} over the updates since the last call."""
        means = self.metrics.mean("a PlaNet update", self.fix())
        return {f"train/{k}": v for k, v in means.items()}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def save(run: Run, learner: Learner, replay, rng, env, episodes: int, eval_return) -> None:
    """The run's checkpoint: weights and optimizer, planner episodes done, env steps (summed
    over the ranks), the last eval return, and this rank's own part: what `open_replay` needs
    to reopen its replay where it stood, and its env's generator that draws its next episodes
    (checkpoints come between episodes, so a resumed run meets the episodes the run would have
    met had it never stopped)."""
    run.checkpoint({
        **learner.state_dict(),
        "episodes": episodes,
        "env_steps": replay.total_steps * env_action_repeat(env) * run.world.size,
        "eval_return": eval_return,
    }, own={**replay_checkpoint(replay, rng), "env_rng": env_rng_state(env)})  # fmt: skip


def planner_action(planner: Planner, obs: np.ndarray, explore: bool) -> np.ndarray:
    """The planner's action (A,) for one observation, as NumPy for the env."""
    return planner.act(obs, explore=explore).cpu().numpy()


def evaluate(env, planner: Planner, episodes: int) -> float:
    """The mean return of `episodes` planner episodes without exploration noise."""
    returns = []
    for _ in range(episodes):
        planner.reset()
        returns.append(run_episode(env, partial(planner_action, planner, explore=False))[0])
    return float(np.mean(returns))


def build_model(cfg: PlaNetConfig, device) -> tuple[RecurrentStateSpaceModel, object]:
    """The env of `cfg` and the world model of `cfg.world_model` sized for its spaces:
    (model, env)."""
    env = make(cfg.env, **env_options(cfg))
    obs_shape, action_dim = env.observation_space.shape, int(np.prod(env.action_space.shape))
    if cfg.world_model == "gaussian":
        return RSSM(obs_shape, action_dim, cfg.model).to(device), env
    if cfg.world_model == "categorical":
        return CategoricalRSSM(obs_shape, action_dim, cfg.categorical).to(device), env
    env.close()
    raise ValueError(f"world_model must be gaussian or categorical, got {cfg.world_model!r}")


def load_run(run_dir: Path, device) -> LoadedRun:
    """A saved PlaNet run for `planners.methods.runs.load_run` (scripts/render_gif.py)."""
    cfg = load_config(PlaNetConfig, run_dir)
    model, env = build_model(cfg, device)
    env.close()
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE, map_location=device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model, cfg, cfg.env, env_options(cfg), Path(run_dir) / "replay")
