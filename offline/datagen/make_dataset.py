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

The SAC run is `online_sac.OnlineSAC`. The run directory holds config.json, metrics.jsonl and
TensorBoard events (step = env steps: train/return and train/length per episode, SAC's losses
averaged over `log_every` steps, eval/return and time/wall_s per snapshot) and checkpoint.pt (SAC,
the replay's episodes, the snapshots, and which datasets are written), from which `resume`
continues the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path

from wmrl import envs

# Snapshots and reference scores: returns of episode i reset with seed + i (the same starts for
# every snapshot); a module name, so that tests can count the calls.
from wmrl.envs.rollout import episode_returns as evaluate
from wmrl.envs.rollout import random_policy
from wmrl.infra import Run, progress
from wmrl.offline.common import TanhGaussianActor
from wmrl.offline.datagen.online_sac import EpisodeRecorder, OnlineSAC, SACConfig, actor_policy

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
    root = get_dataset_path()
    taken = [i for i in ids if (root / i).exists()]
    if taken:
        raise FileExistsError(
            f"datasets {taken} already exist in {root}; pass --overwrite true to replace them "
            "(once the new ones are complete), or choose another --name or --version"
        )


# -------------------------------------------------------------------------- datasets


def rollout(env: gym.Env, policy, steps: int, seed: int, desc: str) -> list[dict]:
    """Episodes of `policy` holding exactly `steps` transitions (the last one cut)."""
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


def reference_scores(env: gym.Env, expert: TanhGaussianActor, cfg: MakeDatasetConfig) -> dict:
    """ref_min_score and ref_max_score: the mean returns of `ref_episodes` episodes of uniform
    random actions and of the final actor `expert` (sampled unless `eval_deterministic`), from
    the same reset seeds."""
    seed = cfg.seed + SEED_OFFSETS["ref"]
    lo = evaluate(env, random_policy(env.action_space, seed), cfg.ref_episodes, seed).mean()
    policy = actor_policy(expert, cfg.eval_deterministic, env.action_space)
    hi = evaluate(env, policy, cfg.ref_episodes, seed).mean()
    return {"ref_min_score": float(lo), "ref_max_score": float(hi)}


def medium_snapshot(snapshots: list[dict], refs: dict, fraction: float, steps: int) -> dict:
    """The snapshot whose return is closest to ref_min + fraction * (ref_max - ref_min), the
    earliest of equals. Raises RuntimeError if the final policy (after `steps` env steps) does
    not beat random: it cannot be the expert then."""
    lo, hi = refs["ref_min_score"], refs["ref_max_score"]
    if not hi > lo:
        raise RuntimeError(
            f"the final SAC policy (return {hi:.1f}) is no better than random ({lo:.1f}) "
            f"after {steps} steps, so it cannot be the expert; resume with a larger --sac_steps"
        )
    target = lo + fraction * (hi - lo)
    return min(snapshots, key=lambda s: (abs(s["return"] - target), s["step"]))


class KindEpisodes:
    """Each kind's episodes, made once (medium-expert reuses medium's and expert's): read back
    where the dataset was written before an interruption (so that medium-expert repeats it
    exactly), SAC's own episodes up to the medium step for medium-replay, else `dataset_size`
    steps rolled out in `env` from the kind's own seed (random actions, or the medium or final
    actor, sampled).

        episodes = KindEpisodes(cfg, env, ids, written, online, medium, expert)
        episodes("medium")   # -> [episode dict in Minari's layout, ...]
    """

    def __init__(self, cfg, env, ids: dict, written: dict, online: OnlineSAC, medium: dict,
                 expert: TanhGaussianActor):  # fmt: skip
        self.cfg, self.env, self.ids, self.written = cfg, env, ids, written
        self.online, self.medium, self.expert = online, medium, expert
        self.made: dict[str, list[dict]] = {}

    def __call__(self, kind: str) -> list[dict]:
        if kind not in self.made:
            self.made[kind] = self._make(kind)
        return self.made[kind]

    def _make(self, kind: str) -> list[dict]:
        if kind in self.written:
            return envs.load_dataset(self.ids[kind]).episodes
        if kind == "medium-replay":
            return self.online.recorder.prefix(self.medium["step"])
        if kind == "medium-expert":
            return self("medium") + self("expert")
        seed = self.cfg.seed + SEED_OFFSETS[kind]
        torch.manual_seed(seed)
        if kind == "random":
            policy = random_policy(self.env.action_space, seed)
        else:
            # The medium actor is built after the seed: its initialisation (the weights are
            # then loaded) draws from the generator that its rollout samples from.
            actor = self.online.actor_at(self.medium) if kind == "medium" else self.expert
            policy = actor_policy(actor, False, self.env.action_space)
        return rollout(self.env, policy, self.cfg.dataset_size, seed, kind)


def summarize(episodes: list[dict], dataset_id: str, lo: float, hi: float) -> dict:
    """A written dataset's summary: id, transitions, episodes, mean_return, normalized_score."""
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
    env, sac_steps, ref_min_score, ref_max_score, medium_step, medium_return, per kind
    {id, transitions, episodes, mean_return, normalized_score}, wall_s and run_dir."""
    env_id = toolkit_env_id(cfg.env)
    ids = dataset_ids(cfg)
    kinds = [k for k in KINDS if k in cfg.kinds]
    with Run(cfg, resume, desc="sac") as run:
        env, eval_env = run.closing(envs.make(env_id)), run.closing(envs.make(env_id))
        online = OnlineSAC(env, cfg, run.device, f"env {env_id!r}")
        meta = {"job": "make_dataset", "env": env_id, "hidden": cfg.sac.hidden,
                "layers": cfg.sac.layers}  # fmt: skip
        state = run.restore(meta, write_config=False)
        written: dict[str, dict] = {}  # kind -> its summary, once on disk
        refs = None  # {"ref_min_score", "ref_max_score"} once measured
        if state is not None:
            online.load_state_dict(state)
            written, refs = state["written"], state["refs"]
            if online.step < cfg.sac_steps:
                if written:
                    raise ValueError(
                        f"{run.dir} already wrote {sorted(written)} from a SAC run of "
                        f"{online.step} steps; a larger --sac_steps ({cfg.sac_steps}) would not "
                        "match them. Start a new run in a new --logdir"
                    )
                refs = None  # the expert changes with more training
        check_free([ids[k] for k in kinds if k not in written] if not cfg.overwrite else [])
        run.save_config()

        run.begin(online.step, total=cfg.sac_steps)
        eval_seed = cfg.seed + SEED_OFFSETS["eval"]
        keep = {"written": written, "refs": refs}  # none yet while SAC trains
        online.train(run, eval_env, eval_seed, keep, evaluate=evaluate)
        run.bar.close()  # the datasets' rollouts show bars of their own

        expert = online.actor_at(online.snapshots[-1])
        if refs is None:
            refs = reference_scores(eval_env, expert, cfg)
            run.log(online.step, {f"dataset/{k}": v for k, v in refs.items()})
            run.checkpoint({**online.state_dict(), "written": written, "refs": refs})
        lo, hi = refs["ref_min_score"], refs["ref_max_score"]
        medium = medium_snapshot(online.snapshots, refs, cfg.medium_fraction, online.step)
        episodes = KindEpisodes(cfg, env, ids, written, online, medium, expert)
        for kind in kinds:
            if kind in written:
                continue
            eps = episodes(kind)
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
            run.checkpoint({**online.state_dict(), "written": written, "refs": refs})
            run.stop_point()
    return {
        "env": env_id,
        "sac_steps": online.step,
        **refs,
        "medium_step": medium["step"],
        "medium_return": medium["return"],
        "datasets": {k: written[k] for k in kinds},
        "wall_s": round(run.wall(), 1),
        "run_dir": str(run.dir),
    }


def _algorithm(kind: str, cfg: MakeDatasetConfig, medium: dict) -> str:
    """The dataset's `algorithm_name`: which policy made it."""
    if kind == "random":
        return "uniform random actions"
    return {
        "medium": f"SAC snapshot at env step {medium['step']}, sampled",
        "expert": f"SAC after {cfg.sac_steps} env steps, sampled",
        "medium-replay": f"SAC replay up to env step {medium['step']}",
        "medium-expert": "SAC medium snapshot and final policy, sampled",
    }[kind]


def _description(kind, env_id, cfg, medium, refs) -> str:
    """The dataset's `description`: what it holds, and its reference scores."""
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
