"""DreamerV2's training loop (Hafner et al. 2021; danijar/dreamerv2 `train.py` with the
`dmc_vision` config): prefill the replay with uniform random actions, pretrain, then act with
the actor and make one update (world model, then actor-critic on its posteriors) every
`train_every` policy steps. Resumable like PlaNet's loop: the replay persists episode by episode
(`run_dir/replay`), and checkpoints are written between episodes, with every generator the run
draws from (weights' updates, replay batches, actions, the envs' episode starts), so a run
killed at any point and resumed logs what the run that was never stopped logs.

    from wmrl.planners.methods.dreamer import DreamerConfig, train_dreamer
    summary = train_dreamer(DreamerConfig(env="dmc:walker-walk", steps=1_000_000))

Exploration (`explore`, danijar's `expl_behavior` and `expl_until`): after the prefill the task
actor acts (none, DreamerV2), or uniform random actions do, or Plan2Explore's explorer does
(`planners/methods/plan2explore.py`), for `explore_steps` env steps (0: the whole budget), and the
task actor from then on. The task actor-critic learns the extrinsic reward from the replay in
every case, and evaluation always runs it: its returns while the run explores are zero-shot.

Counts follow danijar's config, in policy steps (env steps / action repeat): prefill,
train_every, eval_every. The budget `steps` and the step axis of every logged value are env
steps, as in the paper's plots.

Data-parallel on N ranks (`torchrun --nproc-per-node N scripts/train_dreamer.py ...`; see
`infra.distributed`): every rank runs this loop with its own envs, replay
(`<run dir>/ranks/<r>/replay`, rank 0's in `<run dir>/replay`) and seed (seed + rank), and
the world model, actor and critic train in DistributedDataParallel: each update averages the
gradients of the N ranks' batches, an effective batch of N x batch_size. The budget `steps` and
the logged step axis are env steps summed over the ranks (N x each rank's own); the counts in
policy steps (prefill, train_every, eval_every) are each rank's, so N ranks make as many updates
per env step as one process does, each on N times the data. Rank 0 evaluates and writes the
logs (its own training returns and losses), GIFs and the one checkpoint, which holds every
rank's replay position and generators: a resume needs the same N. The ranks meet at every
policy step (`Run.agree`), which keeps them in step (episodes must have one length on every
rank, as dm-control's) and lets a signal, which torchrun forwards to every rank, stop them all
at the same step, soon after it (torchrun kills its ranks 30 s after it forwarded a signal).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from wmrl.envs.collect import Collector
from wmrl.envs.registry import env_options, make, make_vector
from wmrl.envs.replay import open_replay, replay_checkpoint
from wmrl.envs.rollout import (
    env_action_repeat,
    env_rng_state,
    random_policy,
    run_episode,
    set_env_rng_state,
)
from wmrl.infra import distributed
from wmrl.infra.checkpoint import load_checkpoint
from wmrl.infra.config import at_least, load_config
from wmrl.infra.metrics import MeanMetrics, nonfinite_fix
from wmrl.infra.run import Every, Run
from wmrl.planners.actor_critic import ActorCritic, ActorCriticConfig, ActorLoss, CriticLoss
from wmrl.planners.methods.plan2explore import Plan2Explore, Plan2ExploreConfig
from wmrl.planners.methods.runs import LoadedRun, openloop_frames
from wmrl.worldmodels.categorical_rssm import CategoricalRSSM, CategoricalRSSMConfig
from wmrl.worldmodels.nets import make_optimizer
from wmrl.worldmodels.protocol import map_state
from wmrl.worldmodels.rssm import RSSM, ModelLoss, RecurrentStateSpaceModel, RSSMConfig

# PlaNet's Gaussian RSSM as danijar/dreamer (DreamerV1) trains it: model_lr 6e-4, grad_clip 100,
# free nats 3, the reward's NLL unscaled; sizes and the rest PlaNet's.
DREAMERV1_RSSM = {"lr": 6e-4, "grad_clip": 100.0, "reward_scale": 1.0}


@dataclass
class DreamerConfig:
    """DreamerV2 for continuous control (danijar/dreamerv2 configs.yaml, dmc_vision)."""

    env: str = "dmc:walker-walk"  # dmc:<domain>-<task> or gym:<gymnasium id>
    obs_type: str | None = None  # pixels or state; none: the env's default (pixels for dmc:)
    action_repeat: int | None = 2  # danijar's for every dmc task; none: the env's default
    logdir: str = "runs/dreamer"  # the run directory
    seed: int = 0  # seeds python, numpy, torch and the env
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    steps: int = 1_000_000  # the budget in env steps (policy steps x action repeat)
    num_envs: int = 1  # envs collecting at once, one batched policy step for all (>1: a process
    # each); train_every still counts policy steps summed over the envs
    env_workers: bool | None = None  # step the envs in worker processes while the updates run
    # (which never wait for the device: the two overlap); none: with several envs or a GPU
    prefill: int = 1000  # policy steps of uniform random actions first (dmc_proprio: 5000)
    pretrain: int = 100  # updates right after the prefill
    train_every: int = 5  # policy steps between updates
    train_steps: int = 1  # updates each time
    batch_size: int = 16  # sequences per batch
    batch_length: int = 50  # time steps per sequence
    chunk_is_first: bool = False  # mark every sampled chunk's first row is_first, as danijar's
    # replay does (its chunks never cross episodes); false: a chunk starting mid-episode starts
    # from the zero state without the mark, and one crossing episodes is reset where it does
    eval_every: int = 10_000  # policy steps between evaluations; also at the end
    eval_episodes: int = 1  # episodes per evaluation (actor's mode), their mean is eval/return
    checkpoint_every: int = 1  # training episodes between checkpoints; also at the end
    capacity: int = 2_000_000  # replay rows (policy steps) kept in memory
    gif_every: int = 20  # training episodes between open-loop GIFs (0: only at the end)
    openloop_context: int = 5  # frames the model observes before predicting open loop
    openloop_horizon: int = 45  # frames predicted open loop from the real actions
    compile: bool = False  # torch.compile the per-step functions (filtering, imagination): for
    # GPUs, where a step's many small kernels cost more than their math; compiling takes a while
    world_model: Literal["categorical", "gaussian"] = "categorical"  # categorical: DreamerV2's
    # RSSM (--model.*); gaussian: PlaNet's (--rssm.*), which makes the run DreamerV1's learner
    model: CategoricalRSSMConfig = field(default_factory=CategoricalRSSMConfig)
    rssm: RSSMConfig = field(default_factory=lambda: RSSMConfig(**DREAMERV1_RSSM))
    ac: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    explore: Literal["none", "random", "plan2explore"] = "none"  # what acts after the prefill
    # while the run explores: the task actor (none: DreamerV2), uniform random actions, or
    # Plan2Explore's explorer (--p2e.*); evaluation always runs the task actor
    explore_steps: int = 0  # env steps of exploration, then the task actor acts (few-shot);
    # 0: explore for the whole budget (danijar's expl_until)
    p2e: Plan2ExploreConfig = field(default_factory=Plan2ExploreConfig)

    def __post_init__(self):
        at_least(self, 1, "steps", "num_envs", "train_every", "train_steps", "batch_size",
                 "batch_length", "eval_every", "checkpoint_every", "capacity")  # fmt: skip
        at_least(self, 0, "prefill", "pretrain", "eval_episodes", "gif_every", "explore_steps")


PRESETS = {
    "default": {},  # dmc_vision
    # danijar's dmc_proprio: state observations, the same model with MLP encoder and decoder,
    # and a longer prefill.
    "state": {"obs_type": "state", "prefill": 5000},
    # State observations sized for a CPU core (issue #20's search; docs/results.md): action
    # repeat 8, as PlaNet has for cartpole, so that the 15 imagined steps span 120 env steps;
    # an update every policy step (about as many updates per env step as dmc_vision's); the
    # small networks; 100k env steps. 453.8 on cartpole-swingup at 50k env steps (seed 0).
    "state-cpu": {
        "obs_type": "state",
        "action_repeat": 8,
        "steps": 100_000,
        "prefill": 625,
        "pretrain": 100,
        "train_every": 1,
        "eval_every": 625,
        "eval_episodes": 10,
        "model.deter": 64,
        "model.hidden": 64,
        "model.stoch": 16,
        "model.classes": 16,
        "model.mlp_units": 64,
        "model.mlp_layers": 2,
        "ac.units": 64,
        "ac.layers": 2,
        "p2e.units": 64,
        "p2e.layers": 2,
    },
    # Every part once at tiny sizes, with pixels (cartpole at repeat 8: 125 policy steps per
    # episode): a prefill episode, a training episode, an evaluation and the open-loop GIF.
    "smoke": {
        "steps": 2000,
        "prefill": 100,
        "pretrain": 5,
        "train_every": 25,
        "batch_size": 4,
        "batch_length": 16,
        "eval_every": 1000,
        "gif_every": 0,
        "action_repeat": 8,
        "openloop_horizon": 20,
        "model.deter": 32,
        "model.hidden": 32,
        "model.stoch": 8,
        "model.classes": 8,
        "model.cnn_depth": 8,
        "model.mlp_layers": 2,
        "model.mlp_units": 32,
        "ac.horizon": 5,
        "ac.layers": 2,
        "ac.units": 32,
        "p2e.layers": 2,
        "p2e.units": 32,
    },
}


class DreamerPolicy:
    """Filters observations into the model's belief (with the action that led to them) and
    acts with the actor: a sample while training, the mode when evaluating (danijar's).

    `act(obs (N, ...), is_first (N,))` steps N envs' beliefs at once (an env whose obs is the
    first of an episode starts a fresh belief); calling the policy with one observation steps
    a single env, whose belief `reset()` clears.
    """

    def __init__(self, model: RecurrentStateSpaceModel, ac: ActorCritic, device, num_envs: int = 1):
        self.model, self.ac, self.device = model, ac, torch.device(device)
        self.num_envs = num_envs
        self.reset()

    def reset(self) -> None:
        self.state = None
        self.action = torch.zeros(self.num_envs, self.model.action_dim, device=self.device)
        self._first = np.ones(self.num_envs, bool)

    @torch.no_grad()
    def act(self, obs, is_first, sample: bool = True) -> np.ndarray:
        """obs (N, *obs_shape), is_first (N,) bool -> actions (N, A) as numpy."""
        obs = torch.as_tensor(np.asarray(obs), device=self.device)[:, None]
        first = torch.as_tensor(np.asarray(is_first), dtype=torch.bool, device=self.device)
        post = self.model.observe(obs, self.action[:, None], first[:, None], self.state)
        self.state = map_state(lambda x: x[:, -1], post)
        self.action = self.ac.act(self.model.features(self.state), sample=sample)
        return self.action.cpu().numpy()

    def __call__(self, obs, sample: bool = True) -> np.ndarray:
        """One env's obs (*obs_shape) -> action (A,)."""
        action = self.act(np.asarray(obs)[None], self._first, sample)
        self._first = np.zeros_like(self._first)
        return action[0]


def build(cfg: DreamerConfig, device):
    """The env of `cfg`, a world model and an actor-critic sized for its spaces:
    (model, actor_critic, env)."""
    env = make(cfg.env, **env_options(cfg))
    space = env.action_space
    if not hasattr(space, "shape") or space.shape is None or len(space.shape) != 1:
        raise ValueError(
            f"{cfg.env}: DreamerV2 here takes Box actions (A,), got {space}; discrete actions "
            "need a one-hot wrapper"
        )
    action_dim = int(space.shape[0])
    model, ac = _networks(env.observation_space.shape, action_dim, cfg, device)
    return model, ac, env


def _networks(obs_shape, action_dim: int, cfg: DreamerConfig, device):
    if cfg.world_model == "categorical":
        model = CategoricalRSSM(tuple(obs_shape), action_dim, cfg.model).to(device)
    elif cfg.world_model == "gaussian":
        model = RSSM(tuple(obs_shape), action_dim, cfg.rssm).to(device)
    else:
        raise ValueError(f"world_model must be categorical or gaussian, got {cfg.world_model!r}")
    ac = ActorCritic(model.feat_dim, action_dim, cfg.ac).to(device)
    if cfg.compile:
        model.compile_steps()
        ac.compile_steps()
    return model, ac


def build_plan2explore(cfg: DreamerConfig, model, device, parallel: bool = False):
    """Plan2Explore's ensemble and explorer for `model` with --explore plan2explore, else None.
    Built after the model and the task actor-critic, which therefore get the weights they get
    without it."""
    if cfg.explore != "plan2explore":
        return None
    if parallel:
        raise ValueError(
            "--explore plan2explore trains in one process (its ensemble and explorer are not "
            "data-parallel); run it without torchrun, or use --explore random"
        )
    p2e = Plan2Explore(model, model.action_dim, cfg.p2e, cfg.ac).to(device)
    if cfg.compile:
        p2e.explorer.compile_steps()
    return p2e


def exploring(cfg: DreamerConfig, env_steps: int) -> bool:
    """Whether the exploring behaviour acts at `env_steps` (danijar's expl_until): with --explore
    random or plan2explore, before `explore_steps` env steps (always, when that is 0)."""
    return cfg.explore != "none" and (cfg.explore_steps == 0 or env_steps < cfg.explore_steps)


def exploring_actor(cfg: DreamerConfig, model, p2e, random_actions, device):
    """What acts while the run explores, (obs (N, ...), is_first (N,)) -> actions (N, A):
    `random_actions` (uniform, from the replay's generator, which the checkpoint saves) or the
    explorer's samples; None with --explore none."""
    if cfg.explore == "random":
        return lambda obs, is_first: random_actions(obs)
    if cfg.explore == "plan2explore":
        return DreamerPolicy(model, p2e.explorer, device, cfg.num_envs).act
    return None


def batch_to_device(batch: dict, device) -> dict:
    """A replay batch (numpy) as tensors on `device`. To CUDA the arrays go through pinned
    memory with non-blocking copies: a pageable copy would wait for the GPU's queued work."""
    device = torch.device(device)
    if device.type != "cuda":
        return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
    return {
        k: torch.as_tensor(v).pin_memory().to(device, non_blocking=True) for k, v in batch.items()
    }


def make_update(
    model: RecurrentStateSpaceModel,
    ac: ActorCritic,
    optimizer,
    device,
    sync: bool = True,
    wrap=None,
    p2e: Plan2Explore | None = None,
):
    """One DreamerV2 update on a replay batch (numpy): world model, then actor-critic from
    every posterior state, then (with `p2e`) Plan2Explore's ensemble and explorer from the
    same posteriors. Returns the merged metrics (`model/...`, `ac/...`, and the explorer's
    `ensemble_loss`, `disagreement`, `intrinsic_reward`, `expl/...`): floats with `sync` (a
    non-finite loss raises before it reaches the weights), else device tensors, and the update
    never waits for the device; check those with `check_finite` when you sync.

    `wrap` (module, device -> module), for data parallelism: `infra.distributed.wrap`, which
    puts the three losses (`ModelLoss`, `ActorLoss`, `CriticLoss`) in DistributedDataParallel,
    so that each backward averages its gradients over the ranks, the optimiser steps, clipping
    and slow critic staying as they are. None: one process, the losses called directly."""
    model_loss = ac_losses = None
    if wrap is not None:
        model_loss = wrap(ModelLoss(model), device)
        ac_losses = (wrap(ActorLoss(ac), device), wrap(CriticLoss(ac), device))

    def update(batch: dict) -> dict:
        batch = batch_to_device(batch, device)
        wm_metrics, post = model.update(batch, optimizer, sync, objective=model_loss)
        predicts_ends = getattr(model, "discount_head", None) is not None
        terminal = batch["is_terminal"] if predicts_ends else None
        ac_metrics = ac.update(model, post, is_terminal=terminal, sync=sync, objectives=ac_losses)
        metrics = {
            **{f"model/{k}": v for k, v in wm_metrics.items()},
            **{f"ac/{k}": v for k, v in ac_metrics.items()},
        }
        if p2e is not None:
            metrics.update(p2e.update(model, post, batch, terminal, sync))
        return metrics

    return update


class Learner:
    """The world model, the actor-critic and the model's optimiser (and, with --explore
    plan2explore, `Plan2Explore`'s ensemble and explorer), trained on replay batches.

    Updates run without host syncs: their metrics add up on the device (`metrics`) and reach
    the host once per logged episode, where a non-finite update is caught before the checkpoint
    that would save it. With `parallel` (several ranks under torchrun) the losses train in
    DistributedDataParallel (`make_update`'s `wrap`); building the Learner then gives every rank
    rank 0's weights."""

    def __init__(
        self,
        model: RecurrentStateSpaceModel,
        ac: ActorCritic,
        cfg: DreamerConfig,
        device,
        parallel: bool = False,
        p2e: Plan2Explore | None = None,
    ):
        self.model, self.ac, self.cfg, self.p2e = model, ac, cfg, p2e
        self.optimizer = make_optimizer(model)
        wrap = distributed.wrap if parallel else None
        self.update = make_update(model, ac, self.optimizer, device, sync=False, wrap=wrap, p2e=p2e)
        self.metrics = MeanMetrics()

    def train(self, replay, updates: int, stop=None) -> int:
        """Up to `updates` updates on batches (batch_size x batch_length) sampled from `replay`,
        fewer if `stop()` turns true (a signal asked the run to stop); returns how many ran."""
        self.model.train()
        done = 0
        while done < updates and not (stop and stop()):
            batch = replay.sample(self.cfg.batch_size, self.cfg.batch_length)
            if self.cfg.chunk_is_first:
                batch["is_first"][:, 0] = True
            self.metrics.add(self.update(batch))
            done += 1
        self.model.eval()
        return done

    def state_dict(self) -> dict:
        out = {
            "model": self.model.state_dict(),
            "actor_critic": self.ac.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ac_optimizers": self.ac.optimizers_state_dict(),
        }
        if self.p2e is not None:  # ensemble, explorer, reward norms; their optimisers
            out["plan2explore"] = self.p2e.state_dict()
            out["p2e_optimizers"] = self.p2e.optimizers_state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ac.load_state_dict(state["actor_critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ac.load_optimizers_state_dict(state["ac_optimizers"])
        if self.p2e is not None:
            self.p2e.load_state_dict(state["plan2explore"])
            self.p2e.load_optimizers_state_dict(state["p2e_optimizers"])


@dataclass
class Progress:
    """What a Dreamer run has done, saved in its checkpoint beside the weights and the replay."""

    episodes: int = 0  # training episodes finished (the prefill's not counted)
    pretrained: bool = False  # the pretraining updates after the prefill are done
    last_eval: int = 0  # policy steps in the replay at the last evaluation
    eval_return: float | None = None
    pretrain_updates: int = 0  # of the pretraining, done (a signal may stop it part way)

    @classmethod
    def from_state(cls, state: dict | None) -> Progress:
        if state is None:
            return cls()
        return cls(int(state["episodes"]), bool(state["pretrained"]), int(state["last_eval"]),
                   state.get("eval_return"), int(state.get("pretrain_updates", 0)))  # fmt: skip


def evaluate(env, policy: DreamerPolicy, episodes: int) -> float:
    """The mean return of `episodes` episodes of the actor's mode in `env`."""
    returns = []
    for _ in range(episodes):
        policy.reset()
        returns.append(run_episode(env, lambda obs: policy(obs, sample=False))[0])
    return float(np.mean(returns))


def openloop_gif(
    run: Run, model: RecurrentStateSpaceModel, replay, cfg: DreamerConfig, step: int
) -> None:
    """The open-loop video of the newest replay episode (pixel models only) into the run (by
    rank 0, when there are several)."""
    if not model.pixels or not run.main:
        return
    ep = replay.last_episode()
    actions = np.concatenate([np.zeros_like(ep["actions"][:1]), ep["actions"]])
    frames = openloop_frames(
        model, ep["observations"], actions, cfg.openloop_context, cfg.openloop_horizon
    )
    run.video(step, "openloop", frames)


class Throughput:
    """Env steps and updates per second of wall clock since the last `rates` call, and the share
    of that time the host spent in update calls (the rest: stepping the envs and acting, which
    also waits for the device's queued updates at each action)."""

    def __init__(self, repeat: int):
        self.repeat, self.start = repeat, time.perf_counter()
        self.steps, self.updates, self.update_s = 0, 0, 0.0

    def add(self, policy_steps: int, updates: int, update_seconds: float = 0.0) -> None:
        self.steps += policy_steps
        self.updates += updates
        self.update_s += update_seconds

    def rates(self) -> dict[str, float]:
        now = time.perf_counter()
        seconds = max(now - self.start, 1e-9)
        out = {  # env steps/s counts the updates' time too
            "train/fps": self.steps * self.repeat / seconds,
            "train/updates_per_s": self.updates / seconds,
            "train/update_share": self.update_s / seconds,
        }
        self.start, self.steps, self.updates, self.update_s = now, 0, 0, 0.0
        return out


def episode_row(finished: list, metrics: dict, learner: Learner, replay, meter: Throughput):
    """The logged row for the training episodes that just finished: the updates' mean metrics,
    returns and lengths, and the throughput since the last row."""
    row = {f"train/{k}": v for k, v in metrics.items()}
    row["train/return"] = float(np.mean([e.ret for e in finished]))
    row["train/length"] = float(np.mean([e.length for e in finished]))
    row.update({"train/updates": int(learner.ac.updates), "train/episodes": replay.total_episodes})
    device = next(learner.model.parameters()).device
    if device.type == "cuda":  # the peak so far, of every tensor the run holds there
        row["train/gpu_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return {**row, **meter.rates()}


def save(run: Run, learner: Learner, done: Progress, replay, rng, per_step: int, envs) -> None:
    """The run's checkpoint: weights and optimisers, progress, env steps (`per_step` per policy
    step in the replay), and this rank's own part: where its replay stands, and the generators
    of `envs` ({"collect": vector env, "eval": env}) that draw its next episodes."""
    own = {**replay_checkpoint(replay, rng)}
    own["env_rng"] = {name: env_rng_state(env) for name, env in envs.items()}
    shared = {**learner.state_dict(), **asdict(done), "env_steps": replay.total_steps * per_step}
    run.checkpoint(shared, own=own)


def open_envs(
    cfg: DreamerConfig, env, state: dict | None, device: torch.device, seed: int | None = None
):
    """The collecting vector env and the seed for its first reset, with the evaluation `env`
    made ready too. A new run seeds both with `seed` (default `cfg.seed`; a rank's own, from
    `Run.seed`, when data-parallel). A resumed run puts back the
    generators its checkpoint saved, so that it meets the episodes the run would have met had
    it never stopped (exact when every env's episode had ended at the checkpoint: one env, or
    dm-control's fixed-length episodes); a checkpoint without them, or for another number of
    envs, gets fresh seeds. Returns (vector env, seed or None)."""
    seed = cfg.seed if seed is None else seed
    seed += 1000 * (0 if state is None else int(state["replay_episodes"]))
    workers = cfg.env_workers
    if workers is None:
        workers = cfg.num_envs > 1 or device.type == "cuda"
    vec = make_vector(cfg.env, cfg.num_envs, seed=seed, asynchronous=workers, **env_options(cfg))
    saved = (state or {}).get("env_rng")
    if saved is not None and len(saved["collect"]) == cfg.num_envs:
        set_env_rng_state(env, saved["eval"])
        set_env_rng_state(vec, saved["collect"])
        return vec, None
    env.reset(seed=seed)
    return vec, seed


def pretrain(run: Run, learner: Learner, done: Progress, replay, cfg: DreamerConfig, per_step: int):
    """The pretraining updates still to do (`done.pretrain_updates` counts them), stopping
    between updates on a signal. On a CPU with pixels the first two also say what the whole
    budget (`per_step` env steps per policy step of the replay) will cost at their speed."""
    stop = lambda: run.stopping  # noqa: E731
    start, timed = time.perf_counter(), min(2, cfg.pretrain - done.pretrain_updates)
    done.pretrain_updates += learner.train(replay, timed, stop)
    if learner.model.pixels and timed:
        left = (cfg.steps // per_step - replay.total_steps) // cfg.train_every * cfg.train_steps
        seconds = (time.perf_counter() - start) / timed
        run.speed_notice("pixel DreamerV2", seconds, left, CPU_ADVICE)
    done.pretrain_updates += learner.train(replay, cfg.pretrain - done.pretrain_updates, stop)
    learner.metrics.mean("the pretraining updates", fix_nonfinite(run, cfg))
    done.pretrained = done.pretrain_updates >= cfg.pretrain


def train_dreamer(cfg: DreamerConfig, resume: bool = False) -> dict:
    """Train DreamerV2 as `cfg` says; with `resume`, continue the run in `cfg.logdir` (its
    checkpoint and replay) up to `cfg.steps` env steps (summed over the ranks when torchrun
    starts several; see the module's docstring). Returns a summary dict (this rank's)."""
    if cfg.num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {cfg.num_envs}")
    with Run(cfg, resume, desc="dreamer", parallel=True) as run:
        model, ac, env = build(cfg, run.device)
        run.closing(env)
        p2e = build_plan2explore(cfg, model, run.device, run.world.parallel)
        learner = Learner(model, ac, cfg, run.device, run.world.parallel, p2e)
        # Env steps, summed over the ranks, per policy step in this rank's replay.
        per_step = env_action_repeat(env) * run.world.size
        state = run.restore(meta(cfg, model), budget=(cfg.steps, "--steps", "env_steps"))
        if state is not None:
            learner.load_state_dict(state)
        done = Progress.from_state(state)
        replay, rng = open_replay(run.dir, cfg.capacity, run.seed, state)

        # `num_envs` envs collect together (one batched policy call); evaluation runs in `env`.
        vec, seed = open_envs(cfg, env, state, run.device, run.seed)
        run.closing(vec)
        collector = Collector(vec, replay, seed=seed)
        envs = {"collect": vec, "eval": env}
        explore = random_policy(vec.action_space, rng=rng)  # the prefill's uniform actions
        policy = DreamerPolicy(model, ac, run.device, cfg.num_envs)
        explore_act = exploring_actor(cfg, model, p2e, explore, run.device)
        eval_policy = DreamerPolicy(model, ac, run.device)
        run.begin(replay.total_steps * per_step, total=cfg.steps)

        if replay.total_steps < cfg.prefill:
            run.phase("prefill")
            returns = []
            while replay.total_steps < cfg.prefill:  # in whole episodes
                returns += [e.ret for e in collector.run(explore, episodes=1)]
                run.agree(replay.total_steps)
                if run.stopping:  # the prefill continues from the saved episodes
                    save(run, learner, done, replay, rng, per_step, envs)
                    run.stop_point()
            run.log(replay.total_steps * per_step, {"prefill/return": float(np.mean(returns))})
            run.advance(replay.total_steps * per_step)
        if not done.pretrained:
            run.phase("pretrain")
            pretrain(run, learner, done, replay, cfg, per_step)
            run.agree(replay.total_steps)
            save(run, learner, done, replay, rng, per_step, envs)
            run.stop_point()

        # Policy step k (counted over all envs from the replay's committed steps on) is followed
        # by train_steps updates when k % train_every == 0 (danijar's Every).
        run.phase("train")
        first, base = replay.total_steps, collector.steps
        train_every = Every(cfg.train_every, start=first)
        meter = Throughput(per_step)
        train_return, since_checkpoint, logged = None, 0, replay.total_steps * per_step
        while replay.total_steps * per_step < cfg.steps:
            # The explorer acts in whole episodes: the replay's count moves as episodes end.
            explore_now = exploring(cfg, replay.total_steps * per_step)
            act = explore_act if explore_now else policy.act
            # The updates due after this step run while the envs step (in worker processes
            # when they are async: the updates, which never wait for the device, overlap them).
            taken = collector.stepping
            due = train_every(first + collector.steps + taken - base) * cfg.train_steps
            update_s = 0.0

            def updates(due=due):
                nonlocal update_s
                start = time.perf_counter()
                learner.train(replay, due)
                update_s = time.perf_counter() - start

            finished = collector.step(lambda obs, act=act: act(obs, collector.is_first), updates)
            meter.add(taken, due, update_s)
            # Several ranks meet at every step: a signal stops them all at one step, and they
            # cannot run out of step unnoticed (a rank's episode ending before the others').
            run.agree(replay.total_steps)
            if not finished:
                if run.stopping:  # mid-episode: the weights are saved, the unfinished episode
                    # not (the resumed run starts a new one, so it is not the unstopped run's)
                    save(run, learner, done, replay, rng, per_step, envs)
                    run.stop_point()
                continue
            step = replay.total_steps * per_step
            done.episodes += len(finished)
            since_checkpoint += len(finished)
            what = f"a Dreamer update between env steps {logged} and {step} in {run.dir}"
            metrics = learner.metrics.mean(what, fix_nonfinite(run, cfg))
            row = episode_row(finished, metrics, learner, replay, meter)
            train_return, logged = row["train/return"], step
            end = step >= cfg.steps
            zero_shot = explore_now and not exploring(cfg, step)  # the task actor acts next
            if replay.total_steps - done.last_eval >= cfg.eval_every or end or zero_shot:
                if run.main:  # (the rows and checkpoints are rank 0's)
                    done.eval_return = evaluate(env, eval_policy, cfg.eval_episodes)
                done.last_eval, row["eval/return"] = replay.total_steps, done.eval_return
            if cfg.explore != "none":
                row["train/exploring"] = float(explore_now)
            run.log(step, row)
            if (cfg.gif_every and done.episodes % cfg.gif_every < len(finished)) or end:
                openloop_gif(run, model, replay, cfg, step)
            if since_checkpoint >= cfg.checkpoint_every or end or run.stopping:
                save(run, learner, done, replay, rng, per_step, envs)
                since_checkpoint = 0
            run.advance(step, ret=f"{train_return:.1f}", updates=int(ac.updates))
            run.stop_point()

        if done.episodes == 0 and done.last_eval < replay.total_steps:
            # The prefill's whole episodes used the budget (several envs, a small --steps):
            # the run still ends with its evaluation, GIF and checkpoint.
            warnings.warn(PREFILL_USED_THE_BUDGET.format(replay.total_steps, cfg), stacklevel=2)
            if run.main:
                done.eval_return = evaluate(env, eval_policy, cfg.eval_episodes)
            done.last_eval = replay.total_steps
            run.log(replay.total_steps * per_step, {"eval/return": done.eval_return})
            openloop_gif(run, model, replay, cfg, replay.total_steps * per_step)
            save(run, learner, done, replay, rng, per_step, envs)
    return {
        "episodes": done.episodes,
        "replay_episodes": replay.total_episodes,
        "env_steps": replay.total_steps * per_step,
        "updates": int(ac.updates),
        "train_return": train_return,
        "eval_return": done.eval_return,
        "run_dir": str(run.dir),
    }


PREFILL_USED_THE_BUDGET = (
    "the prefill ({0} policy steps in whole episodes of {1.num_envs} env(s)) used the whole "
    "budget of {1.steps} env steps, so no training episode ran; raise --steps"
)
CPU_ADVICE = ("--preset state learns from state observations on a CPU; pixels want a GPU "
              "(--device cuda)")  # fmt: skip


def fix_nonfinite(run: Run, cfg: DreamerConfig) -> str:
    """What a non-finite update's error advises: the data first, then the settings."""
    return nonfinite_fix(
        f"the env's data ({cfg.env}: observations or rewards not finite or far out of scale)",
        "the settings (learning rates --model.lr, --ac.actor-lr, --ac.critic-lr, too high)",
        run.resume_advice("lower learning rates"),
    )


def meta(cfg: DreamerConfig, model: RecurrentStateSpaceModel) -> dict:
    """What a resumed run's checkpoint must match. The kind of world model is None for the
    categorical one and the exploration None for none, as checkpoints from before those
    options hold neither."""
    out = {
        "job": "dreamer",
        "env": cfg.env,
        "obs_type": "pixels" if model.pixels else "state",
        "deter": model.cfg.deter,
        "stoch": model.cfg.stoch,
    }
    if cfg.world_model == "categorical":
        out.update(classes=cfg.model.classes, world_model=None)
    else:
        out["world_model"] = cfg.world_model
    out["explore"] = None if cfg.explore == "none" else cfg.explore
    return out


def load_run(run_dir: Path, device) -> LoadedRun:
    """A saved Dreamer run for `planners.methods.runs.load_run` (scripts/render_gif.py)."""
    cfg = load_config(DreamerConfig, run_dir)
    model, _, env = build(replace(cfg, compile=False), device)  # a few steps: not worth it
    env.close()
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location=device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model, cfg, cfg.env, env_options(cfg), Path(run_dir) / "replay")


def setup_update(obs_shape, action_dim: int, device, config: DreamerConfig | None = None):
    """A fresh world model, actor-critic and model optimiser (dmc_vision sizes unless `config`
    says otherwise): (model, actor_critic, optimizer), for `make_update`."""
    cfg = config or DreamerConfig()
    model, ac = _networks(obs_shape, action_dim, cfg, device)
    return model, ac, make_optimizer(model)


def random_batch(obs_shape, action_dim: int, batch: int, length: int, seed: int = 0) -> dict:
    """A replay-shaped batch of random data (uint8 pixels or float vectors), one episode start
    per sequence, for benchmarks and tests."""
    rng = np.random.default_rng(seed)
    if len(obs_shape) == 3:
        obs = rng.integers(0, 256, (batch, length, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(batch, length, *obs_shape)).astype(np.float32)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {
        "obs": obs,
        "action": rng.uniform(-1, 1, (batch, length, action_dim)).astype(np.float32),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((batch, length), bool),
    }
