"""Train any algorithm of the offline suite on a Minari dataset, evaluating in the real env.

    cfg = OfflineConfig(algo="iql", dataset="wmrl/hopper-medium-v0", steps=1_000_000)
    summary = train_offline(cfg)          # or scripts/train_offline.py --algo iql --dataset ...

The dataset's states are z-scored with its own statistics where the algorithm's config says
`normalize_states` (evaluation uses the same statistics); IQL's locomotion reward scaling,
r * 1000 / (max episode return - min episode return), where it says `normalize_reward`. Only
terminations stop bootstrapping (`envs.to_transitions`).

CORL's per-dataset values (`offline.corl_presets`) are applied when a run starts, picked from
the dataset id (`corl_preset` "auto"; "none" keeps our defaults); settings given explicitly win
over them, and config.json names the preset applied, so a resumed run keeps it.

metrics.jsonl (step = gradient steps): train/<loss terms> averaged over `log_every` updates,
train/updates_per_s, eval/return (mean over `eval_episodes` deterministic episodes),
eval/return_std and, for datasets with reference scores, eval/normalized_score (D4RL scale).
An algorithm that evaluates several policies (DT, one per target return) reports its first one
there and each other as eval/<policy>/return, eval/<policy>/return_std and
eval/<policy>/normalized_score.

DT learns from windows of whole episodes rather than transitions: an algorithm with a
`make_buffer(episodes, normalizer)` method builds its own buffer, and one with
`policies(normalizer)` is evaluated through those stateful policies (`episode_returns` calls
their `reset` and `observe`) instead of `act`.
"""

from __future__ import annotations

import json
import sys
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch

from wmrl.envs.datasets import load_dataset
from wmrl.envs.rollout import episode_returns, eval_env
from wmrl.infra import Every, MeanMetrics, Run
from wmrl.infra.config import CONFIG_FILE, apply_overrides, at_least, build_parser, get_path
from wmrl.infra.metrics import nonfinite_fix
from wmrl.offline.awac import AWAC, AWACConfig
from wmrl.offline.bc import BC, BCConfig
from wmrl.offline.common import (
    Normalizer,
    OfflineAlgorithm,
    TransitionBuffer,
    best_score,
    score_row,
    symmetric_bound,
)
from wmrl.offline.corl_presets import family, preset_for
from wmrl.offline.cql import CQL, CQLConfig
from wmrl.offline.dt import DT, DTConfig, SequenceBuffer
from wmrl.offline.edac import EDAC, EDACConfig
from wmrl.offline.iql import IQL, IQLConfig
from wmrl.offline.rebrac import ReBRAC, ReBRACConfig
from wmrl.offline.sacn import SACN, SACNConfig
from wmrl.offline.sacrnd import SACRND, SACRNDConfig
from wmrl.offline.td3bc import TD3BC, TD3BCConfig

ALGORITHMS: dict[str, type[OfflineAlgorithm]] = {
    "bc": BC,
    "td3bc": TD3BC,
    "cql": CQL,
    "iql": IQL,
    "awac": AWAC,
    "rebrac": ReBRAC,
    "sacn": SACN,
    "edac": EDAC,
    "sacrnd": SACRND,
    "dt": DT,
}
AlgoName = Literal["bc", "td3bc", "cql", "iql", "awac", "rebrac", "sacn", "edac", "sacrnd", "dt"]


@dataclass
class OfflineConfig:
    algo: AlgoName = "td3bc"
    dataset: str = ""  # a Minari dataset id or path (required), e.g. mujoco/hopper/medium-v0
    download: bool = True  # fetch a dataset id that is not local from Minari's remote
    env: str = ""  # evaluation env (envs.make id); empty: the dataset's recover_environment()
    logdir: str = "runs/offline"
    seed: int = 0
    device: str = "auto"
    steps: int = 1_000_000  # gradient steps (CORL: 1M; SAC-N and EDAC use 3M; SAC-RND 3M after
    # its 1000 RND updates: 3001000; DT 100k: 100000)
    eval_every: int = 5000
    eval_episodes: int = 10
    log_every: int = 1000
    checkpoint_every: int = 50_000
    corl_preset: str = "auto"  # auto: CORL's values for this algorithm on --dataset (D4RL names,
    # Minari and make_dataset ids); none: our defaults. config.json holds the one applied.
    # One config per algorithm, each with its paper's values: --iql.beta 10, --cql.cql_alpha 5.
    bc: BCConfig = field(default_factory=BCConfig)
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)
    cql: CQLConfig = field(default_factory=CQLConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    awac: AWACConfig = field(default_factory=AWACConfig)
    rebrac: ReBRACConfig = field(default_factory=ReBRACConfig)
    sacn: SACNConfig = field(default_factory=SACNConfig)
    edac: EDACConfig = field(default_factory=EDACConfig)
    sacrnd: SACRNDConfig = field(default_factory=SACRNDConfig)
    dt: DTConfig = field(default_factory=DTConfig)

    def __post_init__(self):
        at_least(self, 1, "steps", "eval_every", "log_every", "checkpoint_every")
        at_least(self, 0, "eval_episodes")
        for algo in typing.get_args(AlgoName):  # each algorithm's batch
            at_least(getattr(self, algo), 1, "batch_size")
        if self.corl_preset not in ("auto", "none") and not self.corl_preset.startswith("corl/"):
            raise ValueError(  # corl/<algo>/<dataset>: the one a run applied, in config.json
                f"corl_preset must be auto or none, got {self.corl_preset!r}"
            )


def _smoke() -> dict:
    out = {"steps": 200, "eval_every": 100, "eval_episodes": 2, "log_every": 50}
    out["checkpoint_every"] = 100
    for name in ALGORITHMS:
        out.update({f"{name}.hidden": 32, f"{name}.batch_size": 64})
    out.update({"sacrnd.rnd_hidden": 32, "sacrnd.rnd_steps": 20})  # SAC-RND's RND phase too
    return out


# "smoke": a few hundred small updates, for checking that a run goes end to end.
PRESETS = {"default": {}, "smoke": _smoke()}


def command_line_fields(argv: Sequence[str] | None = None) -> set[str]:
    """The config fields a command line sets, by its flags or its --preset: those win over the
    CORL preset. (A bad command line ends here, with parse_config's one-line error.)"""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        return set()
    given = vars(build_parser(OfflineConfig, PRESETS, None).parse_args(args))
    preset = given.pop("preset", None)
    given.pop("resume", None)
    return set(given) | set(PRESETS.get(preset, {}))


def apply_corl_preset(cfg: OfflineConfig, keep: Iterable[str] = ()) -> tuple[OfflineConfig, str]:
    """Resolve `cfg.corl_preset` "auto" into CORL's values of `cfg.algo` for `cfg.dataset`
    (`corl_presets.preset_for`), except for the fields in `keep` (the flags given) and those
    already set away from their defaults, which keep their values.

    Returns the config, its corl_preset now the name of the preset applied or "none", and one
    line that says what was applied. A name or "none" is left as it is."""
    if cfg.corl_preset == "none":
        return cfg, "no CORL preset (corl_preset none); using the defaults"
    if cfg.corl_preset != "auto":
        return cfg, f"preset {cfg.corl_preset}, as the run's config says"
    found = preset_for(cfg.algo, cfg.dataset)
    if found is None:
        with_algo = f" with {cfg.algo}" if family(cfg.dataset) else ""  # CORL skips it there
        line = f"no CORL preset for {cfg.dataset}{with_algo}; using the defaults"
        return replace(cfg, corl_preset="none"), line
    name, values = found
    defaults, keep = OfflineConfig(), set(keep)
    kept = [p for p in values if p in keep or get_path(cfg, p) != get_path(defaults, p)]
    applied = {p: v for p, v in values.items() if p not in kept}
    cfg = apply_overrides(cfg, {**applied, "corl_preset": name}, source=f"preset {name!r}")
    line = f"preset {name}: "
    line += ", ".join(f"{p}={v}" for p, v in applied.items()) or "CORL's values are our defaults"
    if kept:
        line += "; kept as given: " + ", ".join(f"{p}={get_path(cfg, p)}" for p in kept)
    return cfg, line + " (--corl-preset none: our defaults)"


def _started_without_presets(logdir: str) -> bool:
    """Whether the run in `logdir` began before presets existed (config.json without
    corl_preset): resumed, it keeps the settings it began with."""
    try:
        return "corl_preset" not in json.loads((Path(logdir) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def reward_scale(dataset) -> float:
    """IQL's locomotion scaling: 1000 / (max - min) of the dataset's episode returns."""
    returns = dataset.returns()
    spread = float(returns.max() - returns.min()) if len(returns) else 0.0
    if spread <= 0:
        raise ValueError(
            f"dataset {dataset.dataset_id!r}: normalize_reward needs episodes with different "
            f"returns (all {len(returns)} episodes return {returns[:1]}); set "
            "--<algo>.normalize_reward false"
        )
    return 1000.0 / spread


def normalized_action(algo: OfflineAlgorithm, normalizer: Normalizer, obs: np.ndarray):
    """algo.act for one raw state (S,) numpy, z-scored as in training -> action (A,) numpy."""
    x = normalizer(torch.as_tensor(obs, dtype=torch.float32, device=algo.device)[None])
    return algo.act(x)[0].cpu().numpy()


@torch.no_grad()
def evaluate(env, algo, normalizer, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """{policy name: returns (episodes,)}, every policy on the same reset seeds (seed, seed + 1,
    ...; `episode_returns`), with the algorithm in eval mode meanwhile. One policy, named "",
    for algo.act on normalised states; an algorithm with `policies(normalizer)` (DT: one per
    target return, each keeping its episode's history) gets one entry per policy, in its
    order."""
    algo.eval()
    try:
        if hasattr(algo, "policies"):
            return {
                name: episode_returns(
                    env, policy, episodes, seed, reset=policy.reset, observe=policy.observe
                )
                for name, policy in algo.policies(normalizer).items()
            }
        act = partial(normalized_action, algo, normalizer)
        return {"": episode_returns(env, act, episodes, seed)}
    finally:
        algo.train()


def eval_row(returns: dict[str, np.ndarray], dataset) -> dict[str, float]:
    """`score_row` of the first policy's returns (eval/return, ...), and of each other policy's
    under its name (eval/<name>/return, ...)."""
    first, *others = returns
    row = score_row(returns[first], dataset)
    for name in others:
        for key, value in score_row(returns[name], dataset).items():
            row[key.replace("eval/", f"eval/{name}/", 1)] = value
    return row


def build(
    cfg: OfflineConfig, dataset, device
) -> tuple[OfflineAlgorithm, Normalizer, TransitionBuffer | SequenceBuffer, float]:
    """The algorithm, the state normaliser and the (normalised) transitions on `device`, and the
    reward scale applied to them; for an algorithm with `make_buffer` (DT), the buffer it builds
    from the dataset's episodes instead."""
    if cfg.algo not in ALGORITHMS:
        raise ValueError(f"--algo must be one of {sorted(ALGORITHMS)}, got {cfg.algo!r}")
    algo_cfg = getattr(cfg, cfg.algo)
    if hasattr(algo_cfg, "max_steps"):  # IQL's cosine actor schedule spans the whole run
        algo_cfg.max_steps = cfg.steps
    obs_space = dataset.observation_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"dataset {dataset.dataset_id!r}: the offline suite needs flat vector observations, "
            f"got {obs_space}"
        )
    max_action = symmetric_bound(dataset.action_space, f"dataset {dataset.dataset_id!r}")
    t = dataset.transitions()
    obs_dim, action_dim = t["observations"].shape[1], t["actions"].shape[1]
    if algo_cfg.normalize_states:  # std + 1e-3, CORL's; its DT's + 1e-6 (dt.state_std_eps)
        normalizer = Normalizer.fit(t["observations"], getattr(algo_cfg, "state_std_eps", 1e-3))
    else:
        normalizer = Normalizer.identity(obs_dim)
    scale = reward_scale(dataset) if algo_cfg.normalize_reward else 1.0
    algo = ALGORITHMS[cfg.algo](obs_dim, action_dim, algo_cfg, max_action).to(device)
    if hasattr(algo, "make_buffer"):
        return algo, normalizer.to(device), algo.make_buffer(dataset.episodes, normalizer), scale
    t = dict(t, rewards=t["rewards"] * np.float32(scale))
    for k in ("observations", "next_observations"):
        t[k] = ((t[k] - normalizer.mean.numpy()) / normalizer.std.numpy()).astype(np.float32)
    buffer = TransitionBuffer.from_transitions(t, device)
    return algo, normalizer.to(device), buffer, scale


def train_row(metrics: MeanMetrics, seconds: float, what: str, fix: str) -> dict:
    """train/<name>: each metric's mean over the updates that reported it since the last row
    (TD3+BC's and ReBRAC's delayed actor terms over their own updates), and
    train/updates_per_s. Raises FloatingPointError naming `what` and `fix` if a mean is not
    finite."""
    updates = metrics.count
    means = metrics.mean(what, fix)
    row = {f"train/{k}": v for k, v in means.items()}
    row["train/updates_per_s"] = updates / seconds
    return row


def train_offline(cfg: OfflineConfig, resume: bool = False, keep: Iterable[str] = ()) -> dict:
    """Train `cfg.algo` on `cfg.dataset` for `cfg.steps` gradient steps; with `resume`, continue
    the run in `cfg.logdir` from its checkpoint. CORL's preset for the dataset is applied first
    (`apply_corl_preset`; `keep`: fields set explicitly, which it leaves alone). Returns a
    summary dict."""
    if not cfg.dataset:
        raise ValueError("--dataset is required: a Minari dataset id or path")
    if resume and cfg.corl_preset == "auto" and _started_without_presets(cfg.logdir):
        cfg = replace(cfg, corl_preset="none")
    cfg, line = apply_corl_preset(cfg, keep)
    print(line, file=sys.stderr)
    with Run(cfg, resume, desc=cfg.algo) as run:
        dataset = load_dataset(cfg.dataset, download=cfg.download)
        env = run.closing(eval_env(dataset, cfg.env))
        algo, normalizer, buffer, scale = build(cfg, dataset, run.device)
        sampler = torch.Generator(device=run.device)
        sampler.manual_seed(cfg.seed)
        meta = {"job": "offline", "algo": cfg.algo, "dataset": dataset.dataset_id}
        state = run.restore(meta, budget=(cfg.steps, "--steps", "step"))
        step, best = 0, None
        if state is not None:
            algo.load_state(state["algo"])
            sampler.set_state(state["sampler"].cpu())  # a generator state is a CPU tensor
            step, best = int(state["step"]), state["best_normalized_score"]
        run.begin(step, total=cfg.steps, unit="update")

        every_log = Every(cfg.log_every, start=step)
        every_eval = Every(cfg.eval_every, start=step)
        every_checkpoint = Every(cfg.checkpoint_every, start=step)
        batch_size = getattr(cfg, cfg.algo).batch_size
        metrics, last, t0 = MeanMetrics(), {}, time.perf_counter()
        while step < cfg.steps:
            metrics.add(algo.update(buffer.sample(batch_size, sampler)))
            step += 1
            end = step == cfg.steps
            run.advance(step)
            row = {}
            # Each counter is called on every update (before `or end`), so none skips a period.
            if every_log(step) or end:
                what = f"{cfg.algo} in {run.dir} by update {step}"
                fix = nonfinite_fix(
                    f"the data (dataset {dataset.dataset_id!r}: values far out of scale; "
                    f"--{cfg.algo}.normalize-states, --{cfg.algo}.normalize-reward rescale them)",
                    f"the settings (its learning rates --{cfg.algo}.*-lr, too high)",
                    run.resume_advice("lower learning rates"),
                )
                row = train_row(metrics, time.perf_counter() - t0, what, fix)
                t0 = time.perf_counter()
            if every_eval(step) or end:
                returns = evaluate(env, algo, normalizer, cfg.eval_episodes, cfg.seed + 10_000)
                row.update(eval_row(returns, dataset))
                best = best_score(best, row)
                row["time/wall_s"] = run.wall()
                run.advance(step, ret=f"{row['eval/return']:.1f}")
                t0 = time.perf_counter()  # evaluation time is not update time
            if row:
                run.log(step, row)
                last.update(row)
            if every_checkpoint(step) or end or run.stopping:
                run.checkpoint({
                    "algo": algo.save_state(),
                    "normalizer": normalizer.state_dict(),
                    "reward_scale": scale,
                    "step": step,
                    "sampler": sampler.get_state(),
                    "best_normalized_score": best,
                })  # fmt: skip
            run.stop_point()
    return {
        "algo": cfg.algo,
        "dataset": dataset.dataset_id,
        "steps": step,
        "eval_return": last.get("eval/return"),
        "normalized_score": last.get("eval/normalized_score"),
        "best_normalized_score": best,
        "wall_s": round(run.wall(), 1),
        "run_dir": str(run.dir),
    }
