"""Trajectory Transformer (Janner, Li, Levine 2021): train the GPT over a dataset's discretised
trajectories by teacher forcing, then plan every real action with beam search.

    cfg = TrajectoryConfig(dataset="wmrl/hopper-medium-replay-v0", logdir="runs/tt")
    summary = train_trajectory_transformer(cfg)   # or scripts/train_trajectory_transformer.py

The parts: the model and its bins (`worldmodels.trajectory_transformer`), the token windows
(`offline.trajectory.windows`), beam search (`planners.beam`). Defaults are the authors'
config/offline.py (jannerm/trajectory-transformer), base 'train' and 'plan':

  * N = 100 quantile bins per dimension, windows of 10 transitions, 4 blocks of width 128 with
    4 heads, dropouts 0.1, loss weights 5 on actions and 1 elsewhere, discount 0.99, reward
    -100 on a terminating step (termination_penalty);
  * AdamW, lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on the Linear and head weights only,
    gradients clipped to norm 1, batch 256; the learning rate warms up linearly over one epoch
    (the dataset's windows / batch updates) and then follows minGPT's cosine,
    max(0.1, (1 + cos(pi p)) / 2) with p = (u - warmup) / (19 warmup), not clamped at p = 1 as
    the authors' (so past 20 epochs it rises again);
  * 195 312 updates: the authors' 50 epochs of a 1M-transition dataset (n_epochs_ref 50, which
    they scale so that every dataset gets this many updates; 80 on medium-replay: --steps
    312500);
  * beam search with width 128, horizon 15, 2 expansions, a context of 5 transitions, actions
    sampled from the most likely tokens holding 40 % of the mass (cdf_act 0.6), the most likely
    state tokens (k_obs 1), expected rewards and values; replanned every step.

Run directory: config.json, checkpoint.pt (the model with its bins, the optimiser, the window
sampler, the update, and an evaluation under way: --resume continues it, an evaluation from the
start of the episode it was in), TensorBoard events and metrics.jsonl (step = updates):

  train/loss, train/{state,action,reward,value}_ce, train/grad_norm, train/lr,
  train/updates_per_s: every `log_every` updates, at each checkpoint and before each evaluation
  eval/return, eval/return_std, eval/normalized_score (D4RL scale, with reference scores),
  eval/plan_ms_per_step (beam search's time per real step), eval/beam_width, time/wall_s:
  every `eval_every` updates (0: only after the last), `eval_episodes` real episodes
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from wmrl.envs.datasets import load_dataset
from wmrl.envs.rollout import episode_returns, eval_env
from wmrl.infra import CheckpointError, Every, MeanMetrics, Run, progress
from wmrl.infra.config import at_least
from wmrl.infra.metrics import nonfinite_fix
from wmrl.offline.common import best_score, score_row
from wmrl.offline.trajectory.windows import TokenWindows, joined_transitions
from wmrl.planners.beam import BeamConfig, beam_plan
from wmrl.worldmodels.protocol import map_state
from wmrl.worldmodels.trajectory_transformer import (
    Discretizer,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
)

__all__ = ["PRESETS", "PlanningPolicy", "TrajectoryConfig", "train_trajectory_transformer"]


@dataclass
class TrajectoryConfig:
    """The Trajectory Transformer's run; defaults from the authors' config/offline.py."""

    algo: Literal["tt"] = "tt"  # names the run in offline.compare's table
    dataset: str = ""  # a Minari dataset id or path (required), e.g. wmrl/hopper-medium-v0
    download: bool = True  # fetch a dataset id that is not local from Minari's remote
    env: str = ""  # evaluation env (envs.make id); empty: the dataset's recover_environment()
    logdir: str = "runs/tt"
    seed: int = 0
    device: str = "auto"
    steps: int = 195_312  # updates: 1e6 * n_epochs_ref 50 / batch 256 (medium-replay: 312500)
    batch_size: int = 256
    lr: float = 6e-4  # learning_rate
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1  # on Linear and head weights only
    clip_grad: float = 1.0  # grad_norm_clip
    lr_decay: bool = True  # warmup over one epoch, then minGPT's cosine (module docstring)
    termination_penalty: float | None = -100.0  # reward of a terminating step; None: as recorded
    eval_every: int = 0  # updates between evaluations; 0: only after the last update
    eval_episodes: int = 10  # real episodes planned with beam search per evaluation
    log_every: int = 1000
    checkpoint_every: int = 5000
    model: TrajectoryTransformerConfig = field(default_factory=TrajectoryTransformerConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)

    def __post_init__(self):
        at_least(self, 1, "steps", "batch_size", "log_every", "checkpoint_every")
        at_least(self, 0, "eval_every", "eval_episodes")


def _smoke() -> dict:
    return {
        "steps": 60, "batch_size": 16, "log_every": 20, "checkpoint_every": 30,
        "eval_episodes": 1, "model.bins": 20, "model.seq_len": 3, "model.context": 2,
        "model.layers": 1, "model.heads": 1, "model.width": 32,
        "beam.horizon": 2, "beam.beam_width": 4, "beam.expansions": 2,
    }  # fmt: skip


def _cpu() -> dict:
    """The authors' network (4 blocks x 128, windows of 10 transitions) with a budget and a
    search that a 2-core CPU finishes in hours: fewer and smaller batches, a beam of 8 over 5
    steps reading 3 transitions."""
    return {
        "steps": 4000, "batch_size": 32, "log_every": 200, "checkpoint_every": 500,
        "eval_episodes": 3, "model.context": 3, "beam.horizon": 5, "beam.beam_width": 8,
        "beam.expansions": 2,
    }  # fmt: skip


# "smoke": a tiny model and search, end to end in about a minute; "cpu": see _cpu.
PRESETS = {"default": {}, "smoke": _smoke(), "cpu": _cpu()}


# ------------------------------------------------------------------------------- parts
def check_dataset(dataset) -> None:
    """Refuse observations that are not flat vectors (a Box (S,)), naming the dataset."""
    space = dataset.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(
            f"dataset {dataset.dataset_id!r}: the Trajectory Transformer tokenises flat vector "
            f"observations (a Box (S,)), got {space}"
        )


def make_optimizer(model: TrajectoryTransformer, cfg: TrajectoryConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weights of Linear layers and of the per-dimension heads;
    none on biases, LayerNorms, token and position embeddings (the authors' minGPT groups)."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decayed.add(id(model.readout))
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(update: int, windows: int, cfg: TrajectoryConfig) -> float:
    """The learning rate of update `update` (0-based) over cfg.lr: linear warmup over one epoch
    (`windows` / batch updates), then max(0.1, (1 + cos(pi p)) / 2) with p reaching 1 after 20
    epochs (module docstring); 1 without lr_decay."""
    if not cfg.lr_decay:
        return 1.0
    warmup = max(windows / cfg.batch_size, 1.0)
    if update + 1 < warmup:
        return (update + 1) / warmup
    p = (update + 1 - warmup) / (19 * warmup)
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * p)))


class _Stopped(Exception):
    """A signal arrived during an evaluation episode."""


class PlanningPolicy:
    """Beam search in the real env, one episode at a time (the authors' scripts/plan.py):
    obs (S,) numpy -> action (A,) numpy, the plan's first action clipped into the action space.
    The context holds the episode's last transitions with their real rewards (`observe(reward)`
    after each step, as the authors' update_context). plan_s and steps: the planning time and
    the actions planned since `reset`. `should_stop()` true ends the episode (raises _Stopped)."""

    def __init__(self, model: TrajectoryTransformer, cfg: BeamConfig, action_space,
                 should_stop=lambda: False):  # fmt: skip
        self.model, self.cfg, self.should_stop = model, cfg, should_stop
        self.low, self.high = action_space.low, action_space.high
        self.reset()

    def reset(self) -> None:
        device = self.model.device
        self.state, self.first = None, True
        self.action = torch.zeros(1, 1, self.model.action_dim, device=device)
        self.reward = torch.zeros(1, 1, device=device)
        self.plan_s, self.steps = 0.0, 0

    def observe(self, reward: float) -> None:
        self.reward.fill_(float(reward))

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.should_stop():
            raise _Stopped
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.model.device)
        first = torch.full((1, 1), self.first, device=self.model.device)
        post = self.model.observe(x[None, None], self.action, first, self.state, self.reward)
        self.state = map_state(lambda v: v[:, -1], post)
        t0 = time.perf_counter()
        plan, _ = beam_plan(self.model, self.state, self.cfg)
        action = plan[0, 0].cpu().numpy()  # waits for the device: the time is the plan's
        self.plan_s += time.perf_counter() - t0
        self.steps += 1
        self.action, self.first = plan[:1, :1], False
        return np.clip(action, self.low, self.high)


def _act(policy: PlanningPolicy, bar, obs: np.ndarray) -> np.ndarray:
    bar.update(1)
    return policy(obs)


def evaluate(run: Run, model, cfg: TrajectoryConfig, env, dataset, evaluation: dict, save):
    """Plan `cfg.eval_episodes` real episodes with beam search, continuing `evaluation`
    ({"returns": [...], "plan_s": float, "plan_steps": int}, updated in place). Calls
    `save(evaluation)` (a checkpoint) before each episode, so that a run stopped in an episode
    resumes it from its start with the same random draws. Episode k resets with seed
    cfg.seed + 10_000 + k. Returns the eval row, or None when a signal stopped it."""
    policy = PlanningPolicy(model, cfg.beam, env.action_space, lambda: run.stopping)
    limit = getattr(env.spec, "max_episode_steps", None)
    model.eval()
    try:
        while len(evaluation["returns"]) < cfg.eval_episodes:
            k = len(evaluation["returns"])
            save(evaluation)
            with progress(limit, desc=f"tt plan {k + 1}/{cfg.eval_episodes}", unit="step") as bar:
                try:
                    returns = episode_returns(env, partial(_act, policy, bar), 1,
                                              cfg.seed + 10_000 + k, reset=policy.reset,
                                              observe=policy.observe)  # fmt: skip
                except _Stopped:
                    return None
            evaluation["returns"].append(float(returns[0]))
            evaluation["plan_s"] += policy.plan_s
            evaluation["plan_steps"] += policy.steps
    finally:
        model.train()
    row = score_row(evaluation["returns"], dataset)
    row["eval/plan_ms_per_step"] = 1000 * evaluation["plan_s"] / max(evaluation["plan_steps"], 1)
    row["eval/beam_width"] = float(cfg.beam.beam_width)
    return row


def tt_state(model, optimizer, sampler, step: int, best, evaluation) -> dict:
    """What a checkpoint holds besides the RNG states and the wall clock (which `Run` adds)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.get_state(),
        "step": step,
        "best_normalized_score": best,
        "evaluation": evaluation,
    }


# ----------------------------------------------------------------------------------- run
def train_trajectory_transformer(cfg: TrajectoryConfig, resume: bool = False) -> dict:
    """Train on `cfg.dataset` for `cfg.steps` updates, evaluating by beam search in the real
    env; with `resume`, continue the run in `cfg.logdir`. Returns a summary dict."""
    if not cfg.dataset:
        raise ValueError("--dataset is required: a Minari dataset id or path")
    with Run(cfg, resume, desc="tt") as run:
        dataset = load_dataset(cfg.dataset, download=cfg.download)
        check_dataset(dataset)
        dataset.transitions()  # refuses NaN or out-of-space values, naming the first
        env = run.closing(eval_env(dataset, cfg.env))
        episodes, mc = dataset.episodes, cfg.model
        S, A = dataset.observation_space.shape[0], dataset.action_space.shape[0]
        joined = [joined_transitions(ep, mc.discount, cfg.termination_penalty) for ep in episodes]
        discretizer = Discretizer.fit(np.concatenate(joined), mc.bins, mc.discretizer)
        model = TrajectoryTransformer(S, A, mc, discretizer).to(run.device)
        terminated = [bool(ep["terminations"][-1]) for ep in episodes]
        windows = TokenWindows(joined, terminated, model.discretizer, mc.seq_len, run.device)
        optimizer = make_optimizer(model, cfg)
        sampler = torch.Generator(device=run.device)
        sampler.manual_seed(cfg.seed)
        meta = {"job": "trajectory_transformer", "dataset": dataset.dataset_id, "obs_dim": S,
                "action_dim": A}  # fmt: skip
        state = run.restore(meta, budget=(cfg.steps, "--steps", "step"))
        step, best, evaluation = 0, None, None
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint {run.checkpoint_path} does not fit this config's model "
                    f"({str(exc).splitlines()[0]}); resume without changing --model.* sizes"
                ) from exc
            sampler.set_state(state["sampler"].cpu())
            step, best, evaluation = int(state["step"]), state["best_normalized_score"], state[
                "evaluation"]  # fmt: skip
        run.begin(step, total=cfg.steps, unit="update")
        D, beam = model.transition_dim, cfg.beam
        run.notice(f"{len(windows)} windows of {mc.seq_len} transitions x {D} tokens ({S} state, "
                   f"{A} action, reward, value) in {mc.bins} {mc.discretizer} bins; beam search "
                   f"of width {beam.beam_width}, horizon {beam.horizon}, {beam.expansions} "
                   f"expansions, context {mc.context}")  # fmt: skip
        last: dict = {}

        def save(evaluation):
            run.checkpoint(tt_state(model, optimizer, sampler, step, best, evaluation))

        def evaluate_here(evaluation) -> None:
            nonlocal best
            row = evaluate(run, model, cfg, env, dataset, evaluation, save)
            if row is None:  # stopped in an episode: the checkpoint from before it stays
                run.stop_point()
            best = best_score(best, row)
            row["time/wall_s"] = run.wall()
            run.log(step, row)
            last.update(row)
            run.notice(f"update {step}: return {row['eval/return']:.1f} over "
                       f"{cfg.eval_episodes} episodes, {row['eval/plan_ms_per_step']:.0f} ms of "
                       f"beam search (width {beam.beam_width}) per step")  # fmt: skip
            run.advance(step, ret=f"{row['eval/return']:.1f}")
            save(None)  # the evaluation is done: a resume must not run it again

        if evaluation is not None and cfg.eval_episodes > 0:  # resumed in one: finish it first
            evaluate_here(evaluation)
        every_log = Every(cfg.log_every, start=step)
        every_eval = Every(cfg.eval_every, start=step)
        every_checkpoint = Every(cfg.checkpoint_every, start=step)
        metrics, t0 = MeanMetrics(), time.perf_counter()
        while step < cfg.steps:
            lr = cfg.lr * lr_factor(step, len(windows), cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, terms = model.token_loss(windows.sample(cfg.batch_size, sampler))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            terms["grad_norm"] = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            metrics.add(terms)
            step += 1
            end = step == cfg.steps
            run.advance(step)
            # Each counter is called on every update (before `or end`), so none skips a period.
            logs, evals = every_log(step) or end, every_eval(step) or end
            saves = every_checkpoint(step) or end or run.stopping
            evals = evals and cfg.eval_episodes > 0
            if logs or saves or evals:  # non-finite terms are caught before any checkpoint
                fix = nonfinite_fix(f"the data (dataset {dataset.dataset_id!r}: values far out "
                                    "of scale)", "the settings (--lr, too high)",
                                    run.resume_advice("a lower --lr"))  # fmt: skip
                updates, seconds = metrics.count, time.perf_counter() - t0
                row = {f"train/{k}": v for k, v in
                       metrics.mean(f"tt in {run.dir} by update {step}", fix).items()}  # fmt: skip
                row["train/lr"] = lr
                row["train/updates_per_s"] = updates / max(seconds, 1e-9)
                run.log(step, row)
                last.update(row)
            if evals:  # saves when done
                evaluate_here({"returns": [], "plan_s": 0.0, "plan_steps": 0})
            elif saves:
                save(None)
            if logs or saves or evals:
                t0 = time.perf_counter()
            run.stop_point()
    return {
        "algo": "tt",
        "dataset": dataset.dataset_id,
        "steps": step,
        "beam_width": cfg.beam.beam_width,
        "plan_ms_per_step": last.get("eval/plan_ms_per_step"),
        "eval_return": last.get("eval/return"),
        "normalized_score": last.get("eval/normalized_score"),
        "best_normalized_score": best,
        "wall_s": round(run.wall(), 1),
        "run_dir": str(run.dir),
    }
