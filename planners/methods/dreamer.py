"""DreamerV2's training loop (Hafner et al. 2021; danijar/dreamerv2 `train.py` with the
`dmc_vision` config): prefill the replay with uniform random actions, pretrain, then act with
the actor and make one update (world model, then actor-critic on its posteriors) every
`train_every` policy steps. Resumable like PlaNet's loop: the replay persists episode by episode
(`run_dir/replay`), and checkpoints are written between episodes.

    from wmrl.planners.methods.dreamer import DreamerConfig, train_dreamer
    summary = train_dreamer(DreamerConfig(env="dmc:walker-walk", steps=1_000_000))

Counts follow danijar's config, in policy steps (env steps / action repeat): prefill,
train_every, eval_every. The budget `steps` and the step axis of every logged value are env
steps, as in the paper's plots.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from wmrl.envs.replay import open_replay, replay_checkpoint
from wmrl.envs.rollout import env_action_repeat, random_policy, run_episode
from wmrl.infra.metrics import check_finite
from wmrl.planners.actor_critic import ActorCritic, ActorCriticConfig
from wmrl.planners.methods.runs import LoadedRun, openloop_frames
from wmrl.worldmodels.categorical_rssm import CategoricalRSSM, CategoricalRSSMConfig
from wmrl.worldmodels.nets import make_optimizer
from wmrl.worldmodels.protocol import map_state


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
    prefill: int = 1000  # policy steps of uniform random actions first (dmc_proprio: 5000)
    pretrain: int = 100  # updates right after the prefill
    train_every: int = 5  # policy steps between updates
    train_steps: int = 1  # updates each time
    batch_size: int = 16  # sequences per batch
    batch_length: int = 50  # time steps per sequence
    eval_every: int = 10_000  # policy steps between evaluations; also at the end
    eval_episodes: int = 1  # episodes per evaluation (actor's mode), their mean is eval/return
    checkpoint_every: int = 1  # training episodes between checkpoints; also at the end
    capacity: int = 2_000_000  # replay rows (policy steps) kept in memory
    gif_every: int = 20  # training episodes between open-loop GIFs (0: only at the end)
    openloop_context: int = 5  # frames the model observes before predicting open loop
    openloop_horizon: int = 45  # frames predicted open loop from the real actions
    compile: bool = False  # torch.compile the per-step functions (filtering, imagination): for
    # GPUs, where a step's many small kernels cost more than their math; a minute of compiling
    model: CategoricalRSSMConfig = field(default_factory=CategoricalRSSMConfig)
    ac: ActorCriticConfig = field(default_factory=ActorCriticConfig)


PRESETS = {
    "default": {},  # dmc_vision
    # danijar's dmc_proprio: state observations, the same model with MLP encoder and decoder,
    # and a longer prefill.
    "state": {"obs_type": "state", "prefill": 5000},
    # About a minute on a 2-core CPU with pixels (cartpole at repeat 8: 125 policy steps per
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
    },
}


class DreamerPolicy:
    """Filters observations into the model's belief (with the action that led to them) and
    acts with the actor: a sample while training, the mode when evaluating (danijar's).

    `act(obs (N, ...), is_first (N,))` steps N envs' beliefs at once (an env whose obs is the
    first of an episode starts a fresh belief); calling the policy with one observation steps
    a single env, whose belief `reset()` clears.
    """

    def __init__(self, model: CategoricalRSSM, ac: ActorCritic, device, num_envs: int = 1):
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
    from wmrl.envs import make
    from wmrl.envs.registry import env_options

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
    model = CategoricalRSSM(tuple(obs_shape), action_dim, cfg.model).to(device)
    ac = ActorCritic(model.feat_dim, action_dim, cfg.ac).to(device)
    if cfg.compile:
        model.compile_steps()
        ac.compile_steps()
    return model, ac


def batch_to_device(batch: dict, device) -> dict:
    """A replay batch (numpy) as tensors on `device`. To CUDA the arrays go through pinned
    memory with non-blocking copies: a pageable copy would wait for the GPU's queued work."""
    device = torch.device(device)
    if device.type != "cuda":
        return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
    return {
        k: torch.as_tensor(v).pin_memory().to(device, non_blocking=True) for k, v in batch.items()
    }


def make_update(model: CategoricalRSSM, ac: ActorCritic, optimizer, device, sync: bool = True):
    """One DreamerV2 update on a replay batch (numpy): world model, then actor-critic from
    every posterior state. Returns the merged metrics (`model/...`, `ac/...`): floats with
    `sync` (a non-finite loss raises before it reaches the weights), else device tensors, and
    the update never waits for the device; check those with `check_finite` when you sync."""

    def update(batch: dict) -> dict:
        batch = batch_to_device(batch, device)
        wm_metrics, post = model.train_step(batch, optimizer, sync)
        terminal = batch["is_terminal"] if model.discount_head is not None else None
        ac_metrics = ac.update(model, post, is_terminal=terminal, sync=sync)
        return {
            **{f"model/{k}": v for k, v in wm_metrics.items()},
            **{f"ac/{k}": v for k, v in ac_metrics.items()},
        }

    return update


def train_dreamer(cfg: DreamerConfig, resume: bool = False) -> dict:
    """Train DreamerV2 as `cfg` says; with `resume`, continue the run in `cfg.logdir` (its
    checkpoint and replay) up to `cfg.steps` env steps. Returns a summary dict."""
    from wmrl.envs.collect import Collector
    from wmrl.envs.registry import env_options, make_vector
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

    if cfg.num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {cfg.num_envs}")
    run_dir = prepare_run_dir(cfg.logdir, resume)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model, ac, env = build(cfg, device)
    repeat = env_action_repeat(env)
    optimizer = make_optimizer(
        model.parameters(), cfg.model.lr, cfg.model.adam_eps, cfg.model.weight_decay
    )
    meta = {
        "job": "dreamer",
        "env": cfg.env,
        "obs_type": "pixels" if model.pixels else "state",
        "deter": cfg.model.deter,
        "stoch": cfg.model.stoch,
        "classes": cfg.model.classes,
    }
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        state = load_checkpoint(ckpt_path, expect_meta=meta, map_location=device)
        model.load_state_dict(state["model"])
        ac.load_state_dict(state["actor_critic"])
        optimizer.load_state_dict(state["optimizer"])
        ac.load_optimizers_state_dict(state["ac_optimizers"])
        set_rng_state(state["rng"])
        episodes, pretrained = int(state["episodes"]), bool(state["pretrained"])
        last_eval, eval_return = int(state["last_eval"]), state.get("eval_return")
    else:
        state, episodes, pretrained, last_eval, eval_return = None, 0, False, 0, None
    replay, rng = open_replay(run_dir, cfg.capacity, cfg.seed, state)
    save_config(cfg, run_dir)  # on resume too: a larger budget is the run's config from now on
    # A fresh env seed after a resume: the interrupted env's state cannot be restored.
    env.reset(seed=cfg.seed + 1000 * replay.total_episodes)

    def env_steps() -> int:
        return replay.total_steps * repeat

    def checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "actor_critic": ac.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ac_optimizers": ac.optimizers_state_dict(),
            "episodes": episodes,
            "pretrained": pretrained,
            "last_eval": last_eval,
            "env_steps": env_steps(),
            "eval_return": eval_return,
            **replay_checkpoint(replay, rng),
        }
        save_checkpoint(ckpt_path, state, meta=meta)

    logger = Logger(run_dir, resume_step=env_steps() if resume else None)
    policy = DreamerPolicy(model, ac, device, cfg.num_envs)
    eval_policy = DreamerPolicy(model, ac, device)
    # The updates run without host syncs; their metrics add up on the device and come to the
    # host once per logged episode (`mean_metrics`), which is also where a non-finite update is
    # caught: always before the checkpoint that would save it.
    update = make_update(model, ac, optimizer, device, sync=False)
    sums: dict = {}  # "keys": the metric names, "sum": their running sums (K,) on the device
    counts = {"updates": 0, "since": env_steps()}

    def train(n: int) -> None:
        model.train()
        for _ in range(n):
            metrics = update(replay.sample(cfg.batch_size, cfg.batch_length))
            values = torch.stack([v.float() for v in metrics.values()])  # one add per update
            sums["sum"] = sums["sum"] + values if sums else values
            sums["keys"] = list(metrics)
            counts["updates"] += 1
        model.eval()

    def mean_metrics() -> dict[str, float]:
        """The mean of each metric since the last call (one host sync); raises
        FloatingPointError if any update in between was not finite."""
        n, since = max(counts["updates"], 1), counts["since"]
        totals = sums["sum"].tolist() if sums else []
        means = {k: v / n for k, v in zip(sums.get("keys", []), totals, strict=True)}
        sums.clear()
        counts["updates"], counts["since"] = 0, env_steps()
        check_finite(
            means,
            f"a Dreamer update between env steps {since} and {env_steps()} in {run_dir}",
            "the checkpoint from before it is intact: resume from it with lower learning "
            "rates (--model.lr, --ac.actor-lr, --ac.critic-lr)",
        )
        return means

    def openloop_gif() -> None:
        """The open-loop video of the newest replay episode (pixel models)."""
        if not model.pixels:
            return
        ep = replay.last_episode()
        actions = np.concatenate([np.zeros_like(ep["actions"][:1]), ep["actions"]])
        frames = openloop_frames(
            model, ep["observations"], actions, cfg.openloop_context, cfg.openloop_horizon
        )
        logger.video(env_steps(), "openloop", frames)

    def evaluate() -> float:
        returns = []
        for _ in range(cfg.eval_episodes):
            eval_policy.reset()
            returns.append(run_episode(env, lambda obs: eval_policy(obs, sample=False))[0])
        return float(np.mean(returns))

    # Collection: `num_envs` envs step together (one batched policy call); the eval episodes
    # run in `env`. A fresh env seed after a resume: the interrupted envs cannot be restored,
    # and their unfinished episodes are not in the replay.
    seed = cfg.seed + 1000 * replay.total_episodes
    vec = make_vector(
        cfg.env, cfg.num_envs, seed=seed, asynchronous=cfg.num_envs > 1, **env_options(cfg)
    )
    collector = Collector(vec, replay, seed=seed)
    explore = random_policy(vec.action_space, rng=rng)

    def act(obs):
        return policy.act(obs, collector.is_first, sample=True)

    bar = progress(cfg.steps, initial=env_steps(), desc="dreamer", unit="step")
    train_return, finished_since = None, 0
    try:
        if replay.total_steps < cfg.prefill:
            prefill_returns = []
            while replay.total_steps < cfg.prefill:
                prefill_returns += [e.ret for e in collector.run(explore, episodes=1)]
            logger.log(env_steps(), {"prefill/return": float(np.mean(prefill_returns))})
            bar.update(env_steps() - bar.n)
        if not pretrained:
            train(cfg.pretrain)
            mean_metrics()
            pretrained = True
            checkpoint()
        # Policy step k (counted over all envs, from the replay's committed steps on) is
        # followed by train_steps updates when k % train_every == 0 (danijar's Every).
        first, base = replay.total_steps, collector.steps
        start, taken_since = time.perf_counter(), 0
        while env_steps() < cfg.steps:
            before = collector.steps
            finished = collector.run(act, steps=1)  # one vector step
            taken = collector.steps - base
            due = (first + taken) // cfg.train_every - (first + before - base) // cfg.train_every
            train(due * cfg.train_steps)
            taken_since += collector.steps - before
            if not finished:
                continue
            episodes += len(finished)
            finished_since += len(finished)
            train_return = float(np.mean([e.ret for e in finished]))
            updates_since = counts["updates"]
            row = {f"train/{k}": v for k, v in mean_metrics().items()}
            row.update({"train/return": train_return})
            row["train/length"] = float(np.mean([e.length for e in finished]))
            row.update({"train/updates": int(ac.updates), "train/episodes": replay.total_episodes})
            seconds = time.perf_counter() - start
            row["train/fps"] = taken_since * repeat / seconds  # env steps/s, updates included
            row["train/updates_per_s"] = updates_since / seconds
            start, taken_since = time.perf_counter(), 0
            done = env_steps() >= cfg.steps
            if replay.total_steps - last_eval >= cfg.eval_every or done:
                eval_return, last_eval = evaluate(), replay.total_steps
                row["eval/return"] = eval_return
            logger.log(env_steps(), row)
            gif_due = cfg.gif_every and episodes % cfg.gif_every < len(finished)
            if gif_due or done:
                openloop_gif()
            if finished_since >= cfg.checkpoint_every or done:
                checkpoint()
                finished_since = 0
            bar.update(env_steps() - bar.n)
            bar.set_postfix(ret=f"{train_return:.1f}", updates=int(ac.updates))
        if episodes == 0 and last_eval < replay.total_steps:
            # The prefill's whole episodes used the budget (several envs, a small --steps):
            # the run still ends with its evaluation, GIF and checkpoint.
            warnings.warn(
                f"the prefill ({replay.total_steps} policy steps in whole episodes of "
                f"{cfg.num_envs} env(s)) used the whole budget of {cfg.steps} env steps, so "
                "no training episode ran; raise --steps",
                stacklevel=2,
            )
            eval_return, last_eval = evaluate(), replay.total_steps
            logger.log(env_steps(), {"eval/return": eval_return})
            openloop_gif()
            checkpoint()
    finally:
        bar.close()
        logger.close()
        vec.close()
        env.close()
    return {
        "episodes": episodes,
        "replay_episodes": replay.total_episodes,
        "env_steps": env_steps(),
        "updates": int(ac.updates),
        "train_return": train_return,
        "eval_return": eval_return,
        "run_dir": str(Path(run_dir)),
    }


def load_run(run_dir: Path, device) -> LoadedRun:
    """A saved Dreamer run for `planners.methods.runs.load_run` (scripts/render_gif.py)."""
    from wmrl.envs.registry import env_options
    from wmrl.infra import load_checkpoint, load_config

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
    optimizer = make_optimizer(
        model.parameters(), cfg.model.lr, cfg.model.adam_eps, cfg.model.weight_decay
    )
    return model, ac, optimizer


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
