"""D4RL-style datasets (Fu et al. 2020, sec. 5) from one online SAC run, written as Minari datasets.

    summary = make_dataset(MakeDatasetConfig(env="Hopper-v5"))   # or scripts/make_dataset.py
    envs.load_dataset("wmrl/hopper-medium-v0")                     # or minari.load_dataset(...)

One SAC run of `sac_steps` env steps (the first `start_steps` with uniform random actions, then
one update per step) keeps every transition as episodes and a snapshot of the actor at every
evaluation, scored by `eval_episodes` episodes. Then:

    random         `dataset_size` steps of uniform random actions
    expert         `dataset_size` steps of the final policy
    medium         `dataset_size` steps of the snapshot whose score is closest to
                   ref_min + medium_fraction * (ref_max - ref_min), i.e. a normalised score of
                   100 * medium_fraction (a third of the expert return where random is ~0)
    medium-replay  every transition of the SAC run up to the medium snapshot's step
    medium-expert  medium's episodes, then expert's (2 * dataset_size steps)

Policies are sampled (a ~ pi(.|s)), as D4RL collected its data. ref_min_score and ref_max_score,
stored in every dataset, are the mean returns of `ref_episodes` episodes of the random and of the
final policy. A termination (gymnasium's `terminated`) and a truncation (the time limit, or the
cut at `dataset_size` or at the medium step) are kept apart. Ids: <name>-<kind>-v<version>.

The run directory holds config.json, metrics.jsonl and TensorBoard events (step = env steps:
train/return and train/length per episode, SAC's losses averaged over `log_every` steps,
eval/return per snapshot) and checkpoint.pt (SAC, the replay's episodes, the snapshots, and which
datasets are written), from which `resume` continues the run.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

# Snapshots and reference scores: returns of episode i reset with seed + i (the same starts for
# every snapshot); a module name, so that tests can count the calls.
from wmrl.envs.rollout import episode_returns as evaluate
from wmrl.envs.rollout import random_policy
from wmrl.offline.common import TanhGaussianActor, TransitionBuffer, symmetric_bound
from wmrl.offline.datagen.online_sac import SAC, SACConfig

KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert")
# Each generated dataset draws from its own seeds, so a resume regenerates the same data.
SEED_OFFSETS = {"random": 1, "medium": 2, "expert": 3, "eval": 10_000, "ref": 20_000}


@dataclass
class MakeDatasetConfig:
    env: str = "Hopper-v5"  # a gymnasium id (Hopper-v5) or a toolkit id (gym:Hopper-v5)
    name: str = ""  # dataset id prefix; empty: <namespace>/<env name>, e.g. wmrl/hopper
    namespace: str = "wmrl"  # the Minari namespace of a derived name
    version: int = 0  # ids end in -v<version>
    kinds: tuple[str, ...] = KINDS  # any of random medium medium-replay medium-expert expert
    sac_steps: int = 1_000_000  # env steps of the SAC run; its final policy is the expert
    start_steps: int = 10_000  # uniform random actions before SAC acts (and updates)
    dataset_size: int = 1_000_000  # transitions per rollout dataset (D4RL's 1M)
    medium_fraction: float = 1 / 3  # medium: the snapshot closest to this normalised level
    eval_every: int = 10_000  # env steps between snapshots (evaluated); also at the end
    eval_episodes: int = 5  # episodes that score a snapshot
    eval_deterministic: bool = False  # score snapshots with the mean action (data are sampled)
    ref_episodes: int = 10  # episodes of random and final policy for ref_min/max_score
    replay_size: int = 1_000_000  # SAC's replay capacity (transitions)
    log_every: int = 1000  # env steps between rows of averaged SAC losses
    checkpoint_every: int = 50_000  # env steps between checkpoints; also at the end
    logdir: str = "runs/make_dataset"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    overwrite: bool = False  # replace datasets of the same ids
    sac: SACConfig = field(default_factory=SACConfig)

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}, got {self.kinds}")
        for name in ("sac_steps", "dataset_size", "eval_every", "eval_episodes", "ref_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.medium_fraction <= 1.0:
            raise ValueError(f"medium_fraction must be in [0, 1], got {self.medium_fraction}")


PRESETS = {
    "default": {},
    # Hopper-v5 in well under a minute on one CPU thread; ids wmrl-smoke/hopper-*-v0.
    "smoke": {
        "env": "Hopper-v5",
        "namespace": "wmrl-smoke",
        "sac_steps": 2000,
        "start_steps": 500,
        "dataset_size": 1000,
        "eval_every": 500,
        "eval_episodes": 3,
        "ref_episodes": 5,
        "log_every": 250,
        "checkpoint_every": 500,
        "sac.hidden": 32,
        "sac.batch_size": 64,
        # tiny nets on a tiny budget: larger steps, so that the expert clearly beats random
        "sac.actor_lr": 1e-3,
        "sac.critic_lr": 1e-3,
        "sac.alpha_lr": 1e-3,
    },
}


# ------------------------------------------------------------------------------- ids


def toolkit_env_id(env: str) -> str:
    """ "Hopper-v5" -> "gym:Hopper-v5"; toolkit ids ("gym:...", "dmc:...") unchanged."""
    return env if env.startswith(("gym:", "dmc:")) else f"gym:{env}"


def dataset_ids(cfg: MakeDatasetConfig) -> dict[str, str]:
    """kind -> dataset id, for every kind, e.g. "wmrl/hopper-medium-replay-v0"."""
    prefix = cfg.name
    if not prefix:
        env_name = toolkit_env_id(cfg.env).partition(":")[2]
        env_name = re.sub(r"-v\d+$", "", env_name).lower()
        prefix = f"{cfg.namespace}/{env_name}"
    from minari.dataset.minari_dataset import parse_dataset_id

    ids = {kind: f"{prefix}-{kind}-v{cfg.version}" for kind in KINDS}
    for dataset_id in ids.values():
        try:
            parse_dataset_id(dataset_id)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"--name {prefix!r} gives the malformed dataset id {dataset_id!r}; a name looks "
                "like namespace/name, e.g. wmrl/hopper"
            ) from exc
    return ids


def check_free(ids: list[str]) -> None:
    """Refuse ids that already exist, before hours of training rather than after."""
    from minari.storage.datasets_root_dir import get_dataset_path

    root = get_dataset_path()
    taken = [i for i in ids if (root / i).exists()]
    if taken:
        raise FileExistsError(
            f"datasets {taken} already exist in {root}; pass --overwrite true to replace them "
            "(once the new ones are complete), or choose another --name or --version"
        )


# -------------------------------------------------------------------------- episodes


class EpisodeRecorder:
    """Transitions as episodes in Minari's layout (`envs.replay.validate_episode`): observations
    (T+1, S), actions (T, A), rewards, terminations, truncations (T,); the last episode may be
    in progress (`reset` starts one, `step` adds a transition and closes it at its end)."""

    def __init__(self):
        self.episodes: list[dict[str, np.ndarray]] = []
        self._open: dict[str, list] | None = None
        self.total_steps = 0

    def reset(self, obs) -> None:
        self.cut()
        self._open = {"observations": [np.asarray(obs)], "actions": [], "rewards": []}
        self._open.update(terminations=[], truncations=[])

    def step(self, action, reward, next_obs, terminated: bool, truncated: bool) -> None:
        ep = self._open
        ep["observations"].append(np.asarray(next_obs))
        ep["actions"].append(np.asarray(action))
        ep["rewards"].append(float(reward))
        ep["terminations"].append(bool(terminated))
        ep["truncations"].append(bool(truncated))
        self.total_steps += 1
        if terminated or truncated:
            self._close()

    def cut(self) -> None:
        """End the episode in progress as truncated (a size limit, an interrupted run)."""
        if self._open is not None and self._open["actions"]:
            if not (self._open["terminations"][-1] or self._open["truncations"][-1]):
                self._open["truncations"][-1] = True
            self._close()
        self._open = None

    def _close(self) -> None:
        self.episodes.append(self._arrays())
        self._open = None

    def _arrays(self) -> dict[str, np.ndarray]:
        ep = self._open
        return {
            "observations": np.stack(ep["observations"]),
            "actions": np.stack(ep["actions"]).astype(np.float32),
            "rewards": np.asarray(ep["rewards"], np.float32),
            "terminations": np.asarray(ep["terminations"], bool),
            "truncations": np.asarray(ep["truncations"], bool),
        }

    def prefix(self, steps: int) -> list[dict[str, np.ndarray]]:
        """The episodes holding the first `steps` transitions; the one cut there is truncated."""
        out, left = [], steps
        for ep in self.episodes:
            if left == 0:
                break
            out.append(cut_episode(ep, left))
            left -= len(out[-1]["actions"])
        if left:
            raise ValueError(f"asked for {steps} transitions of {self.total_steps} closed ones")
        return out

    def state_dict(self) -> dict:
        """All episodes (the one in progress last, as `open`) concatenated, as tensors."""
        eps = list(self.episodes)
        is_open = self._open is not None and bool(self._open["actions"])
        if is_open:
            eps.append(self._arrays())
        if not eps:
            return {"lengths": torch.zeros(0, dtype=torch.long), "open": False}
        cat = {k: torch.from_numpy(np.concatenate([ep[k] for ep in eps])) for k in eps[0]}
        return {**cat, "lengths": torch.tensor([len(ep["actions"]) for ep in eps]), "open": is_open}

    def load_state_dict(self, state: dict) -> None:
        """Restore the episodes; one in progress comes back closed as truncated (the env that
        was running it is gone)."""
        self.episodes, self._open, self.total_steps = [], None, 0
        o = a = 0
        for t in state["lengths"].tolist():
            ep = {k: state[k][a : a + t].numpy() for k in ("actions", "rewards")}
            ep.update({k: state[k][a : a + t].numpy() for k in ("terminations", "truncations")})
            ep["observations"] = state["observations"][o : o + t + 1].numpy()
            o, a = o + t + 1, a + t
            self.episodes.append(ep)
            self.total_steps += t
        if state["open"]:
            last = self.episodes[-1]
            last["truncations"][-1] = not last["terminations"][-1]


def cut_episode(ep: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """The first `steps` transitions of an episode; a cut before its end is a truncation."""
    if steps >= len(ep["actions"]):
        return ep
    out = {k: v[:steps] for k, v in ep.items() if k != "observations"}
    out["observations"] = ep["observations"][: steps + 1]
    out["truncations"] = out["truncations"].copy()
    out["truncations"][-1] = not out["terminations"][-1]
    return out


# -------------------------------------------------------------------------- policies


def actor_policy(actor: TanhGaussianActor, deterministic: bool, space: gym.spaces.Box):
    """obs (S,) -> action (A,) in the space's dtype, sampled or the tanh of the mean."""
    device = next(actor.parameters()).device

    @torch.no_grad()
    def policy(obs):
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
        return actor(x, deterministic)[0][0].cpu().numpy().astype(space.dtype)

    return policy


def rollout(env: gym.Env, policy, steps: int, seed: int, desc: str) -> list[dict]:
    """Episodes of `policy` holding exactly `steps` transitions (the last one cut)."""
    from wmrl.infra import progress

    rec = EpisodeRecorder()
    obs, _ = env.reset(seed=seed)
    rec.reset(obs)
    with progress(steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(steps):
            action = policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            rec.step(action, reward, obs, terminated, truncated)
            if terminated or truncated:
                obs, _ = env.reset()
                rec.reset(obs)
            bar.update(1)
    rec.cut()
    return rec.episodes


def replay_buffer(rec: EpisodeRecorder, capacity: int, obs_dim, action_dim, device):
    """SAC's replay rebuilt from the recorded episodes: the last `capacity` transitions, in
    order, so that the oldest is overwritten next, as in the buffer that was lost."""
    from wmrl.envs import to_transitions

    buf = TransitionBuffer(capacity, obs_dim, action_dim, device)
    if rec.episodes:
        t = {k: v[-capacity:] for k, v in to_transitions(rec.episodes).items()}
        buf.add(
            t["observations"], t["actions"], t["rewards"], t["next_observations"],
            t["terminals"].astype(np.float32),
        )  # fmt: skip
    return buf


def summarize(episodes: list[dict], dataset_id: str, lo: float, hi: float) -> dict:
    returns = np.array([ep["rewards"].sum(dtype=np.float64) for ep in episodes])
    return {
        "id": dataset_id,
        "transitions": int(sum(len(ep["actions"]) for ep in episodes)),
        "episodes": len(episodes),
        "mean_return": float(returns.mean()),
        "normalized_score": float(100.0 * (returns.mean() - lo) / (hi - lo)),
    }


# ------------------------------------------------------------------------------- run


def make_dataset(cfg: MakeDatasetConfig, resume: bool = False) -> dict:
    """Train SAC in `cfg.env` and write `cfg.kinds` as Minari datasets; with `resume`, continue
    the run in `cfg.logdir` (training, or the datasets still missing). Returns a summary:
    env, sac_steps, ref_min_score, ref_max_score, medium_step, medium_return, and per kind
    {id, transitions, episodes, mean_return, normalized_score}."""
    from wmrl import envs
    from wmrl.infra import (
        Logger,
        load_checkpoint,
        prepare_run_dir,
        progress,
        resolve_device,
        rng_state,
        save_checkpoint,
        save_config,
        seed_everything,
        set_rng_state,
    )

    env_id = toolkit_env_id(cfg.env)
    ids = dataset_ids(cfg)
    kinds = [k for k in KINDS if k in cfg.kinds]
    env, eval_env = envs.make(env_id), envs.make(env_id)
    obs_space = env.observation_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"env {env_id!r} has observations {obs_space}; SAC here needs flat vectors (S,) "
            "(for dm-control: obs_type state)"
        )
    max_action = symmetric_bound(env.action_space, f"env {env_id!r}")
    obs_dim, action_dim = obs_space.shape[0], env.action_space.shape[0]

    run_dir = prepare_run_dir(cfg.logdir, resume)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    sac = SAC(obs_dim, action_dim, cfg.sac, max_action).to(device)
    rec = EpisodeRecorder()
    snapshots: list[dict] = []  # {"step", "return", "actor" (state dict on the CPU)}
    written: dict[str, dict] = {}  # kind -> its summary, once on disk
    step, refs = 0, None
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    meta = {"job": "make_dataset", "env": env_id, "hidden": cfg.sac.hidden}
    meta["layers"] = cfg.sac.layers
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        state = load_checkpoint(ckpt_path, expect_meta=meta, map_location=device)
        sac.load_state(state["sac"])
        rec.load_state_dict(state["episodes"])
        snapshots, written = state["snapshots"], state["written"]
        step, refs = int(state["step"]), state["refs"]
        gen.set_state(state["sampler"].cpu())
        set_rng_state(state["rng"])
        if step < cfg.sac_steps:
            if written:
                raise ValueError(
                    f"{run_dir} already wrote {sorted(written)} from a SAC run of {step} steps; "
                    f"a larger --sac_steps ({cfg.sac_steps}) would not match them. Start a new "
                    "run in a new --logdir"
                )
            refs = None  # the expert changes with more training
    check_free([ids[k] for k in kinds if k not in written] if not cfg.overwrite else [])
    capacity = min(cfg.replay_size, cfg.sac_steps)
    buffer = replay_buffer(rec, capacity, obs_dim, action_dim, device)
    save_config(cfg, run_dir)

    def checkpoint() -> None:
        state = {
            "sac": sac.save_state(),
            "episodes": rec.state_dict(),
            "snapshots": snapshots,
            "written": written,
            "step": step,
            "refs": refs,
            "sampler": gen.get_state(),
            "rng": rng_state(),
        }
        save_checkpoint(ckpt_path, state, meta=meta)

    logger = Logger(run_dir, resume_step=step if resume else None)
    # A fresh env seed after a resume: the interrupted env's state cannot be restored.
    obs, _ = env.reset(seed=cfg.seed + step)
    env.action_space.seed(cfg.seed + step)
    rec.reset(obs)
    ep_return, ep_length = 0.0, 0
    sums: dict[str, float] = {}
    count, t0, steps0 = 0, time.perf_counter(), step
    bar = progress(cfg.sac_steps, initial=step, desc="sac", unit="step")
    try:
        while step < cfg.sac_steps:
            row = {}
            acting = step >= cfg.start_steps
            if acting:
                x = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                action = sac.sample(x)[0].cpu().numpy().astype(env.action_space.dtype)
            else:
                action = env.action_space.sample()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, float(terminated))
            if acting:  # one update per step that SAC acts
                metrics = sac.update(buffer.sample(cfg.sac.batch_size, gen))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            rec.step(action, reward, next_obs, terminated, truncated)
            step += 1
            ep_return, ep_length = ep_return + float(reward), ep_length + 1
            obs = next_obs
            if terminated or truncated:
                row.update({"train/return": ep_return, "train/length": ep_length})
                bar.set_postfix(ret=f"{ep_return:.1f}")
                obs, _ = env.reset()
                rec.reset(obs)
                ep_return, ep_length = 0.0, 0
            if step % cfg.log_every == 0 or step == cfg.sac_steps:
                bad = {k: v for k, v in sums.items() if not math.isfinite(v)}
                if bad:
                    raise FloatingPointError(
                        f"SAC in {run_dir}: non-finite {bad} by env step {step}; resume from the "
                        "last checkpoint with lower --sac.*_lr"
                    )
                row.update({f"train/{k}": v / count for k, v in sums.items()})
                row["train/steps_per_s"] = (step - steps0) / (time.perf_counter() - t0)
                sums, count, t0, steps0 = {}, 0, time.perf_counter(), step
            if step % cfg.eval_every == 0 or step == cfg.sac_steps:
                policy = actor_policy(sac.actor, cfg.eval_deterministic, env.action_space)
                returns = evaluate(
                    eval_env, policy, cfg.eval_episodes, cfg.seed + SEED_OFFSETS["eval"]
                )
                actor = {k: v.detach().cpu().clone() for k, v in sac.actor.state_dict().items()}
                snapshots.append({"step": step, "return": float(returns.mean()), "actor": actor})
                row.update({"eval/return": returns.mean(), "eval/return_std": returns.std()})
                t0, steps0 = time.perf_counter(), step  # evaluation is not training speed
            if row:
                logger.log(step, row)
            if step % cfg.checkpoint_every == 0 or step == cfg.sac_steps:
                checkpoint()
            bar.update(1)
        bar.close()
        rec.cut()

        def actor_from(snapshot: dict) -> TanhGaussianActor:
            c = cfg.sac
            actor = TanhGaussianActor(obs_dim, action_dim, c.hidden, c.layers, max_action)
            actor.load_state_dict(snapshot["actor"])
            return actor.to(device).eval()

        expert_actor = actor_from(snapshots[-1])
        if refs is None:
            ref_seed = cfg.seed + SEED_OFFSETS["ref"]
            rand = random_policy(eval_env.action_space, ref_seed)
            lo = evaluate(eval_env, rand, cfg.ref_episodes, ref_seed).mean()
            expert = actor_policy(expert_actor, cfg.eval_deterministic, env.action_space)
            hi = evaluate(eval_env, expert, cfg.ref_episodes, ref_seed).mean()
            refs = {"ref_min_score": float(lo), "ref_max_score": float(hi)}
            logger.log(step, {f"dataset/{k}": v for k, v in refs.items()})
            checkpoint()
        lo, hi = refs["ref_min_score"], refs["ref_max_score"]
        if not hi > lo:
            raise RuntimeError(
                f"the final SAC policy (return {hi:.1f}) is no better than random ({lo:.1f}) "
                f"after {step} steps, so it cannot be the expert; resume with a larger --sac_steps"
            )
        target = lo + cfg.medium_fraction * (hi - lo)
        medium = min(snapshots, key=lambda s: (abs(s["return"] - target), s["step"]))

        cache: dict[str, list[dict]] = {}

        def episodes_of(kind: str) -> list[dict]:
            if kind in cache:
                return cache[kind]
            if kind in written:  # before an interruption; medium-expert repeats it exactly
                cache[kind] = envs.load_dataset(ids[kind]).episodes
            elif kind == "medium-replay":
                cache[kind] = rec.prefix(medium["step"])
            elif kind == "medium-expert":
                cache[kind] = episodes_of("medium") + episodes_of("expert")
            else:
                seed = cfg.seed + SEED_OFFSETS[kind]
                torch.manual_seed(seed)
                if kind == "random":
                    policy = random_policy(env.action_space, seed)
                else:
                    actor = actor_from(medium) if kind == "medium" else expert_actor
                    policy = actor_policy(actor, False, env.action_space)
                cache[kind] = rollout(env, policy, cfg.dataset_size, seed, kind)
            return cache[kind]

        for kind in kinds:
            if kind in written:
                continue
            eps = episodes_of(kind)
            envs.write_dataset(
                ids[kind],
                eps,
                eval_env,
                ref_min_score=lo,
                ref_max_score=hi,
                algorithm_name=_algorithm(kind, cfg, medium),
                description=_description(kind, env_id, cfg, medium, refs),
                overwrite=cfg.overwrite,
            )
            written[kind] = summarize(eps, ids[kind], lo, hi)
            checkpoint()
    finally:
        bar.close()
        logger.close()
        env.close()
        eval_env.close()
    return {
        "env": env_id,
        "sac_steps": step,
        **refs,
        "medium_step": medium["step"],
        "medium_return": medium["return"],
        "datasets": {k: written[k] for k in kinds},
        "run_dir": str(Path(run_dir)),
    }


def _algorithm(kind: str, cfg: MakeDatasetConfig, medium: dict) -> str:
    if kind == "random":
        return "uniform random actions"
    return {
        "medium": f"SAC snapshot at env step {medium['step']}, sampled",
        "expert": f"SAC after {cfg.sac_steps} env steps, sampled",
        "medium-replay": f"SAC replay up to env step {medium['step']}",
        "medium-expert": "SAC medium snapshot and final policy, sampled",
    }[kind]


def _description(kind, env_id, cfg, medium, refs) -> str:
    what = {
        "random": f"{cfg.dataset_size} steps of uniform random actions",
        "medium": (
            f"{cfg.dataset_size} steps of the SAC snapshot at env step {medium['step']} "
            f"(evaluated return {medium['return']:.1f}), closest to {cfg.medium_fraction:.3g} "
            "of the way from the random to the expert return"
        ),
        "medium-replay": f"all {medium['step']} transitions of the SAC run up to the medium "
        "snapshot (start_steps random actions first)",
        "medium-expert": "the medium dataset's episodes followed by the expert dataset's",
        "expert": f"{cfg.dataset_size} steps of the SAC policy after {cfg.sac_steps} env steps",
    }[kind]
    return (
        f"D4RL-style {kind} dataset of {env_id} (wmrl offline.datagen.make_dataset): {what}. "
        "Reference "
        f"scores: random {refs['ref_min_score']:.1f}, expert {refs['ref_max_score']:.1f}."
    )
