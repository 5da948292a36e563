"""MOReL (Kidambi et al. 2020): offline RL by policy optimisation in a pessimistic MDP built from a
learned dynamics ensemble.

    cfg = MOReLConfig(dataset="wmrl/hopper-medium-v0", logdir="runs/morel")
    summary = train_morel(cfg)            # or scripts/train_morel.py --dataset ...

The loop follows aravindr93/mjrl (branch v2) `projects/morel/run_morel.py` with
`configs/d4rl_hopper_medium.txt`, whose values are the defaults here:

  1. fit the N members f_i of the dynamics ensemble on the dataset's transitions
     (`worldmodels.ensemble`; here the members also learn the reward and the termination,
     which the official code takes from hand-written env functions that Minari lacks);
  2. USAD on the dataset's K pairs, disc(s, a) = max_(i, j) ||f_i(s, a) - f_j(s, a)||_2, and

         threshold = max_k disc_k / pessimism                          (usad_rule "max")
         threshold = (mean_k disc_k + beta std_k disc_k) / pessimism   (usad_rule "mean_std")

  3. the P-MDP (`offline.morel.pmdp`, paper eq. 4): the members' dynamics from the dataset's
     episode-start states; a pair with disc(s, a) > threshold enters HALT, which ends the path;
  4. bc_init: the policy's mean fitted to the dataset's actions (MSE, 5 epochs, batch 256);
  5. `iterations` NPG updates (`planners.npg`), each on npg.update_paths * ensemble.members paths
     of at most `horizon` steps in the P-MDP (official: 50 starts, each rolled out by all 4
     members = 200 paths; here each of the 200 paths draws its own start and the members take
     turns, so each member still drives 50); every `eval_every` iterations the policy's mean
     action is scored in the real env.
     Or, with planner "cem", no policy: CEM-MPC plans every action of `eval_episodes` real
     episodes in the P-MDP (`plan_in_pmdp`), the planning alternative.

Conventions, and which one is the default:

  * pessimism is the DIVISOR of the threshold (this toolkit's convention, and what the mjrl v2
    run_morel.py that has bc_init computes: `(1 / pessimism_coef) * max(delta)`): a larger value
    halts sooner. The default 3.0 is d4rl_hopper_medium.txt's `pessimism_coef`. The older
    run_morel.py stored at mjrl commit 5b0ce8b multiplies (`pessimism_coef * max(delta)`): pass
    --pessimism 1/coef to reproduce it (0.3333 for its 3.0). pessimism 0 gives an infinite
    threshold, i.e. no HALT (the official "naive MBRL", pessimism_coef None).
  * halt_penalty is kappa >= 0 (the official `truncate_reward` is -kappa). Default kappa = 0 and
    halt_reward "model": the halting step keeps the model's reward r_hat(s, a) - kappa, as the
    official code truncates a path after that step. The paper's P-MDP gives -kappa with kappa > 0:
    --halt_reward penalty --halt_penalty KAPPA.
  * the policy reads raw states, as mjrl's MLP (identity in_shift / in_scale); the ensemble
    normalises its own inputs and targets internally.
  * the ensemble fit is the official one, 25 epochs on all rows without a holdout; set
    --ensemble.holdout_fraction 0.1 --ensemble.max_epochs 100 for holdout early stopping.

Run directory: config.json, checkpoint.pt (the fitted ensemble, the threshold, the policy and
baseline, the baseline's optimiser, the iteration and the RNG states: --resume continues the same
run without refitting the ensemble), TensorBoard events, and two metrics files:

  model/metrics.jsonl  step = ensemble epoch: model/train_loss, model/holdout_loss (with a holdout)
  metrics.jsonl        step = NPG iteration.
      step 0: usad/threshold (null: no HALT), usad/max_disagreement, usad/mean_disagreement,
              model/epochs, model/train_loss, model/best_holdout, time/model_fit_s; then
              bc/loss_before, bc/loss_after
      each iteration: train/<NPG terms> (train/model_return: the model paths' mean undiscounted
              return), pmdp/halt_fraction (HALT steps / model steps), pmdp/halted_paths (paths
              that end in HALT), train/iter_s, time/wall_s; evaluations add eval/return,
              eval/return_std and, with reference scores, eval/normalized_score (D4RL scale).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch

from wmrl.envs.datasets import load_dataset
from wmrl.envs.rollout import episode_returns, eval_env
from wmrl.infra import CheckpointError, Every, Logger, Run, check_finite, progress
from wmrl.infra.metrics import nonfinite_fix
from wmrl.offline.common import best_score, floats, score_row, symmetric_bound
from wmrl.offline.morel.pmdp import PessimisticMDP, PessimisticModel
from wmrl.planners.cem import CEMConfig, Planner
from wmrl.planners.npg import NPG, NPGConfig, behaviour_clone, sample_paths
from wmrl.worldmodels.ensemble import (
    DynamicsEnsemble,
    EnsembleConfig,
    dataset_disagreement,
    train_ensemble,
    usad_threshold,
)

__all__ = ["PRESETS", "MOReLConfig", "MemberModel", "evaluate_policy", "train_morel"]


# ------------------------------------------------------------------------------- adapter
class MemberModel:
    """The view of a `DynamicsEnsemble` that `PessimisticMDP` steps, each row with its own member:

        predict(obs (B, S), action (B, A), member (B,) long) -> next_obs (B, S), reward (B,),
            terminated_prob (B,), row b taken from member[b]'s prediction
        disagreement(obs (B, S), action (B, A)) -> (B,) USAD disc(s, a)
        members: N

    All N members run in one batched pass ((N, B, .)), then row b is gathered from member[b].
    The P-MDP asks for disc(s, a) of the very tensors it just passed to `predict`; that pass
    already holds every member's mean next state, so their spread is reused instead of running
    the ensemble twice per model step (only while the tensors are the same objects, unmodified).

    Args:
        ensemble: a fitted `DynamicsEnsemble`.
        sample: draw from probabilistic members' Gaussians (PETS trajectory sampling); default:
            whether the members are probabilistic. disc(s, a) always uses the means.
    """

    def __init__(self, ensemble: DynamicsEnsemble, sample: bool | None = None):
        self.ensemble = ensemble
        self.sample = ensemble.cfg.probabilistic if sample is None else bool(sample)
        self._cache: tuple | None = None

    @property
    def members(self) -> int:
        return self.ensemble.cfg.members

    @property
    def device(self) -> torch.device:
        return self.ensemble.device

    @torch.no_grad()
    def predict(self, obs: torch.Tensor, action: torch.Tensor, member: torch.Tensor):
        pred = self.ensemble.predict(obs, action, sample=self.sample)
        rows = torch.arange(obs.shape[0], device=obs.device)
        # _version counts in-place writes: a tensor changed since predict is not reused
        self._cache = None if self.sample else (obs, action, obs._version, action._version, pred)
        return {k: v[member, rows] for k, v in pred.items()}

    @torch.no_grad()
    def disagreement(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        cache, self._cache = self._cache, None
        if (
            cache is not None
            and cache[0] is obs
            and cache[1] is action
            and cache[2] == obs._version
            and cache[3] == action._version
        ):
            return DynamicsEnsemble.pairwise_max_distance(cache[4]["next_obs"])
        return self.ensemble.disagreement(obs, action)


# -------------------------------------------------------------------------------- config
def _official_fit() -> EnsembleConfig:
    """d4rl_hopper_medium.txt's fit: fit_epochs 25 on every row, no holdout."""
    return EnsembleConfig(max_epochs=25, holdout_fraction=0.0)


def _morel_cem() -> CEMConfig:
    """CEM-MPC in the P-MDP. MOReL publishes no planner settings; these are PETS-like (a
    longer horizon than PlaNet's 12 for dense MuJoCo rewards) and smaller than PlaNet's
    1000 x 10 so that one action costs 500 * 5 * 25 = 62.5k model steps."""
    return CEMConfig(horizon=25, iterations=5, candidates=500, top_k=50)


@dataclass
class MOReLConfig:
    """MOReL's run; defaults from mjrl `projects/morel/configs/d4rl_hopper_medium.txt`."""

    algo: Literal["morel"] = "morel"  # names the run in offline.compare's table
    dataset: str = ""  # a Minari dataset id or path (required), e.g. mujoco/hopper/medium-v0
    download: bool = True  # fetch a dataset id that is not local from Minari's remote
    env: str = ""  # evaluation env (envs.make id); empty: the dataset's recover_environment()
    logdir: str = "runs/morel"
    seed: int = 0
    device: str = "auto"
    iterations: int = 500  # NPG updates (num_iter)
    pessimism: float = 3.0  # threshold = max dataset disc / pessimism (pessimism_coef); 0: no HALT
    usad_rule: Literal["max", "mean_std"] = "max"  # max (official) or mean + beta * std of disc
    usad_beta: float = 1.0  # beta of the mean_std rule
    halt_penalty: float = 0.0  # kappa: HALT's reward is -kappa (truncate_reward = -kappa = 0)
    halt_reward: Literal["model", "penalty"] = "model"  # model: r_hat - kappa (official); penalty
    horizon: int = 700  # H, model path length (horizon)
    termination: Literal["threshold", "sample"] = "threshold"  # learned P(term) > 0.5, or sampled
    member_sampling: Literal["episode", "step"] = "episode"  # one member per path (official)
    planner: Literal["npg", "cem"] = "npg"  # npg: a policy (paper); cem: CEM-MPC in the P-MDP
    bc_init: bool = True  # behaviour-clone the dataset before NPG (npg.bc_* settings)
    eval_every: int = 1  # iterations between real-env evaluations (official: every iteration)
    eval_episodes: int = 4  # eval_rollouts, with the policy's mean action
    checkpoint_every: int = 25  # save_freq
    ensemble: EnsembleConfig = field(default_factory=_official_fit)
    npg: NPGConfig = field(default_factory=NPGConfig)
    cem: CEMConfig = field(default_factory=_morel_cem)  # planner "cem"; bounds from the dataset

    def __post_init__(self):
        for name in ("iterations", "horizon", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_episodes < 0 or self.npg.update_paths < 1:
            raise ValueError(
                f"need eval_episodes >= 0 and npg.update_paths >= 1, got {self.eval_episodes}, "
                f"{self.npg.update_paths}"
            )
        if not self.pessimism >= 0 or self.halt_penalty < 0:
            raise ValueError(
                f"need pessimism >= 0 (0: no HALT) and halt_penalty (kappa) >= 0, got "
                f"{self.pessimism}, {self.halt_penalty}"
            )


def _smoke() -> dict:
    return {
        "iterations": 4,
        "eval_every": 2,
        "eval_episodes": 1,
        "checkpoint_every": 2,
        "horizon": 50,
        "ensemble.hidden": 32,
        "ensemble.max_epochs": 50,
        "ensemble.holdout_fraction": 0.1,
        "npg.hidden": (32, 32),
        "npg.baseline_hidden": (32, 32),
        "npg.update_paths": 4,  # x 4 members = 16 paths per update
        "npg.cg_iters": 10,
        "cem.horizon": 5,  # --planner cem
        "cem.iterations": 2,
        "cem.candidates": 32,
        "cem.top_k": 4,
    }


# "smoke": a small ensemble and a few short NPG iterations: a run end to end, quickly.
PRESETS = {"default": {}, "smoke": _smoke()}


# ----------------------------------------------------------------------------------- run
def check_dataset(dataset) -> None:
    """Refuse what MOReL cannot use, naming the fix: non-flat or non-Box spaces, and action
    bounds that are not [-m, m] (the suite's common requirement, `symmetric_bound`)."""
    obs_space = dataset.observation_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"dataset {dataset.dataset_id!r}: MOReL's ensemble and policy need flat vector "
            f"observations (a Box (S,)), got {obs_space}"
        )
    symmetric_bound(dataset.action_space, f"dataset {dataset.dataset_id!r}")


def start_states(dataset) -> np.ndarray:
    """(num_episodes, S) float32: the first observation of every episode (the official
    `init_states_buffer`), where P-MDP paths start."""
    return np.stack([ep["observations"][0] for ep in dataset.episodes]).astype(np.float32)


def mean_action(policy, low: np.ndarray, high: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """The policy's mean action mu(s) (A,) numpy for one raw state (S,) numpy, clipped to
    [low, high] as the P-MDP clips."""
    x = torch.as_tensor(obs, dtype=torch.float32, device=next(policy.parameters()).device)
    return np.clip(policy.mode(x[None])[0].cpu().numpy(), low, high)


@torch.no_grad()
def evaluate_policy(env: gym.Env, policy, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns (episodes,) of the policy's mean action mu(s), clipped to the action
    space as the P-MDP clips, on raw states; one reset seed per episode (seed, seed + 1, ...)."""
    act = partial(mean_action, policy, env.action_space.low, env.action_space.high)
    return episode_returns(env, act, episodes, seed)


def threshold_from(disc: torch.Tensor, cfg: MOReLConfig) -> float | None:
    """USAD threshold = statistic(disc) / pessimism, or None (no HALT) for pessimism 0.
    `usad_threshold` multiplies (the stored official script), so it gets 1 / pessimism."""
    if cfg.pessimism == 0:
        return None
    return usad_threshold(disc, 1.0 / cfg.pessimism, cfg.usad_rule, cfg.usad_beta)


def _iteration_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def train_morel(cfg: MOReLConfig, resume: bool = False) -> dict:
    """Fit the ensemble on `cfg.dataset`, then run `cfg.iterations` NPG updates in the P-MDP (or,
    with planner "cem", plan `cfg.eval_episodes` real episodes in it); with `resume`, continue the
    run in `cfg.logdir` from its checkpoint (the ensemble is loaded, not refitted). Returns a
    summary dict."""
    if not cfg.dataset:
        raise ValueError(
            "--dataset is required: a Minari dataset id or path (e.g. wmrl/hopper-medium-v0)"
        )
    with Run(cfg, resume, desc="morel") as run:
        dataset = load_dataset(cfg.dataset, download=cfg.download)
        check_dataset(dataset)
        env = run.closing(eval_env(dataset, cfg.env))
        t = dataset.transitions()
        S, A = t["observations"].shape[1], t["actions"].shape[1]
        cem = cfg.planner == "cem"
        npg = NPG(S, A, cfg.npg).to(run.device)
        # On resume, built before `restore` puts the RNG states back, so that its initial
        # weights (overwritten by the checkpoint's) do not draw from the restored streams.
        ensemble = DynamicsEnsemble(S, A, cfg.ensemble).to(run.device) if resume else None
        meta = {"job": "morel", "dataset": dataset.dataset_id, "obs_dim": S, "action_dim": A}
        budget = (cfg.eval_episodes, "--eval-episodes") if cem else (cfg.iterations, "--iterations")
        state = run.restore(meta, budget=(*budget, "iteration"))
        if state is None:
            ensemble, usad, fit_row = fit_model(cfg, t, run.device, run.dir)
            rows = [fit_row]
            if cfg.bc_init and not cem:
                rows.append(bc_init(npg, t, cfg.npg, run.device))
            iteration, best, planned = 0, None, []
        else:
            load_weights(state, ensemble, npg, run.checkpoint_path)
            rows, usad, iteration = [], state["usad"], int(state["iteration"])
            best, planned = state["best_normalized_score"], list(state.get("planned_returns", []))
        total, unit = (cfg.eval_episodes, "episode") if cem else (cfg.iterations, "iter")
        run.begin(iteration, total=total, unit=unit)
        for row in rows:
            run.log(0, row)
        if state is None:  # an interrupted run resumes here, without refitting the ensemble
            run.checkpoint(morel_state(ensemble, usad, npg, iteration, best))
        ensemble.eval()
        if cem:
            fixed = morel_state(ensemble, usad, npg, iteration, best)
            summary = plan_in_pmdp(cfg, run, ensemble, usad, dataset, env, planned, fixed)
            return summary | {"wall_s": round(run.wall(), 1), "run_dir": str(run.dir)}

        pmdp = build_pmdp(cfg, ensemble, usad["threshold"], dataset, run.device)
        every_eval = Every(cfg.eval_every, start=iteration)
        every_checkpoint = Every(cfg.checkpoint_every, start=iteration)
        last: dict = {}
        while iteration < cfg.iterations:
            t0 = time.perf_counter()
            # Seeded by (seed, iteration) (sample_paths' own reset continues this stream),
            # so a resumed run draws the starts the uninterrupted one drew.
            pmdp.reset(seed=_iteration_seed(cfg.seed, iteration))
            paths = sample_paths(pmdp, npg.policy)
            metrics = npg.update(paths)
            iteration += 1
            end = iteration == cfg.iterations
            row = iteration_row(metrics, paths, f"MOReL in {run.dir}: iteration {iteration}")
            row["train/iter_s"] = time.perf_counter() - t0
            # Each counter is called on every iteration (before `or end`), so none skips a period.
            if (every_eval(iteration) or end) and cfg.eval_episodes > 0:
                returns = evaluate_policy(env, npg.policy, cfg.eval_episodes, cfg.seed + 10_000)
                row.update(score_row(returns, dataset))
                best = best_score(best, row)
                halt = row["pmdp/halt_fraction"]
                run.advance(iteration, ret=f"{returns.mean():.1f}", halt=f"{halt:.2f}")
            row["time/wall_s"] = run.wall()
            run.log(iteration, row)
            last.update(row)
            run.advance(iteration)
            if every_checkpoint(iteration) or end or run.stopping:
                run.checkpoint(morel_state(ensemble, usad, npg, iteration, best))
            run.stop_point()
    return {
        "algo": "morel",
        "dataset": dataset.dataset_id,
        "iterations": iteration,
        "threshold": usad.get("threshold"),
        "model_return": last.get("train/model_return"),
        "halt_fraction": last.get("pmdp/halt_fraction"),
        "eval_return": last.get("eval/return"),
        "normalized_score": last.get("eval/normalized_score"),
        "best_normalized_score": best,
        "wall_s": round(run.wall(), 1),
        "run_dir": str(run.dir),
    }


def morel_state(ensemble: DynamicsEnsemble, usad: dict, npg: NPG, iteration: int, best) -> dict:
    """What a MOReL checkpoint holds besides the RNG states and the wall clock (which `Run` adds):
    the fitted ensemble, the USAD statistics, the policy and baseline with the baseline's
    optimiser, the iteration (planner "cem": episodes planned) and the best normalised score."""
    return {
        "ensemble": ensemble.state_dict(),
        "usad": usad,
        "npg": npg.state_dict(),
        "baseline_optimizer": npg.baseline.optimizer.state_dict(),
        "iteration": iteration,
        "best_normalized_score": best,
    }


def load_weights(state: dict, ensemble: DynamicsEnsemble, npg: NPG, path: Path) -> None:
    """Load a checkpoint's ensemble, policy, baseline and baseline optimiser into `ensemble` and
    `npg`; raises CheckpointError, naming the fix, where their sizes differ from this config's."""
    try:
        ensemble.load_state_dict(state["ensemble"])
        npg.load_state_dict(state["npg"])
        npg.baseline.optimizer.load_state_dict(state["baseline_optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this config's ensemble or policy "
            f"({str(exc).splitlines()[0]}); resume without changing --ensemble.* or "
            "--npg.* sizes"
        ) from exc


def bc_init(npg: NPG, t: dict, cfg: NPGConfig, device) -> dict[str, float]:
    """Step 4 of the module docstring: fit the policy's mean to the dataset's actions (flat
    transitions `t`). Returns the row bc/loss_before, bc/loss_after."""
    obs = torch.as_tensor(t["observations"], dtype=torch.float32, device=device)
    act = torch.as_tensor(t["actions"], dtype=torch.float32, device=device)
    bc = behaviour_clone(npg.policy, obs, act, cfg.bc_epochs, cfg.bc_batch, cfg.bc_lr)
    return {f"bc/{k.removeprefix('bc_')}": v for k, v in bc.items()}


def build_pmdp(cfg: MOReLConfig, ensemble, threshold, dataset, device) -> PessimisticMDP:
    """Step 3 of the module docstring: the P-MDP of the fitted `ensemble` with USAD `threshold`
    (None: no HALT), npg.update_paths * ensemble.members paths from the dataset's episode starts."""
    return PessimisticMDP(
        MemberModel(ensemble),
        start_states(dataset),
        threshold,
        dataset.action_space,
        halt_penalty=cfg.halt_penalty,
        horizon=cfg.horizon,
        num_envs=cfg.npg.update_paths * cfg.ensemble.members,
        termination=cfg.termination,
        member_sampling=cfg.member_sampling,
        halt_reward=cfg.halt_reward,
        device=device,
    )


def iteration_row(metrics: dict[str, float], paths: dict, what: str) -> dict[str, float]:
    """One NPG iteration's row: train/<NPG terms> (its `return` as train/model_return),
    pmdp/halt_fraction (HALT steps / model steps) and pmdp/halted_paths (paths that end in HALT)
    of `paths` (`sample_paths`: mask and halted (P, H)). Raises FloatingPointError naming `what`
    if an NPG term is not finite."""
    mask, halted = paths["mask"], paths["halted"]
    pm = floats(
        {
            "halt_fraction": halted.sum() / mask.sum().clamp(min=1),
            "halted_paths": halted.any(1).float().mean(),
        }
    )
    fix = nonfinite_fix("the data (the dataset's values far out of scale, or a dynamics "
                        "ensemble that diverged on them)", "the settings (the NPG step size "
                        "--npg.step-size, too large)", "The last checkpoint is from before it: "
                        "resume from it with a smaller --npg.step-size")  # fmt: skip
    check_finite(metrics, f"{what}: an NPG term", fix)
    row = {f"train/{'model_return' if k == 'return' else k}": v for k, v in metrics.items()}
    row.update({f"pmdp/{k}": v for k, v in pm.items()})
    return row


def planned_action(planner: Planner, bar, obs: np.ndarray) -> np.ndarray:
    """CEM-MPC's action (A,) numpy for one real state (S,) numpy; moves the episode's bar on."""
    bar.update(1)
    return planner.act(torch.as_tensor(obs, dtype=torch.float32)).cpu().numpy()


def plan_in_pmdp(cfg, run: Run, ensemble, usad, dataset, env, returns, state: dict) -> dict:
    """MOReL's planning alternative: CEM-MPC (`planners.cem`) plans every real action in the
    P-MDP (`offline.morel.pmdp.PessimisticModel`: a candidate that enters HALT gets the HALT reward
    and nothing after it) from the env's current state; `cfg.eval_episodes` real episodes,
    continuing after the `returns` of a resumed run. metrics.jsonl gets one row per episode
    (step = episodes so far): eval/episode_return, pmdp/halt_fraction (HALT entries / live model
    steps over all candidates of that episode), time/episode_s; the last row adds eval/return,
    eval/return_std and eval/normalized_score over all episodes. After each episode the run
    checkpoints `state` (`morel_state`) with iteration = episodes so far and planned_returns."""
    bound = symmetric_bound(dataset.action_space, f"dataset {dataset.dataset_id!r}")
    cem = dataclasses.replace(cfg.cem, action_low=-bound, action_high=bound)
    model = PessimisticModel(ensemble, usad["threshold"], cfg.halt_penalty, cfg.halt_reward)
    planner = Planner(model, dataset.action_space.shape[0], cem, device=ensemble.device)
    returns = list(returns)
    limit = getattr(env.spec, "max_episode_steps", None)
    row: dict = {}
    while len(returns) < cfg.eval_episodes:
        t0, episode = time.perf_counter(), len(returns)
        planner.reset()
        model.reset_counts()
        desc = f"cem episode {episode + 1}/{cfg.eval_episodes}"
        with progress(limit, desc=desc, unit="step") as bar:
            # the starts of evaluate_policy: episode k resets with seed + 10_000 + k
            act = partial(planned_action, planner, bar)
            total = float(episode_returns(env, act, 1, cfg.seed + 10_000 + episode)[0])
        returns.append(total)
        row = {
            "eval/episode_return": total,
            "pmdp/halt_fraction": model.halt_fraction(),
            "time/episode_s": time.perf_counter() - t0,
        }
        if len(returns) == cfg.eval_episodes:
            row.update(score_row(returns, dataset))
        run.log(len(returns), row)
        run.checkpoint(state | {"iteration": len(returns), "planned_returns": returns})
        run.advance(len(returns))
        run.stop_point()
    return {
        "algo": "morel",
        "planner": "cem",
        "dataset": dataset.dataset_id,
        "episodes": len(returns),
        "threshold": usad.get("threshold"),
        "halt_fraction": row.get("pmdp/halt_fraction"),
        "eval_return": float(np.mean(returns)) if returns else None,
        "normalized_score": row.get("eval/normalized_score"),
    }


def log_epoch(log: Logger, bar, epoch: int, metrics: dict[str, float]) -> None:
    """One ensemble epoch: model/<name> at step `epoch` of model/metrics.jsonl; the bar moves on."""
    log.log(epoch, {f"model/{k}": v for k, v in metrics.items()})
    bar.update(1)


def fit_model(cfg: MOReLConfig, t: dict, device, run_dir) -> tuple[DynamicsEnsemble, dict, dict]:
    """Fit the ensemble on flat transitions `t` (steps 1-2 of the module docstring), logging its
    epochs to run_dir/model/metrics.jsonl.

    Returns:
        (ensemble in eval mode, usad, row): usad = {"threshold": float or None (no HALT), "max",
        "mean", "std": statistics of the dataset's disc(s, a)}; row = the usad/ and model/
        statistics for step 0 of metrics.jsonl.
    """
    t0 = time.perf_counter()
    model_dir = Path(run_dir) / "model"
    model_dir.mkdir(exist_ok=True)
    bar = progress(cfg.ensemble.max_epochs, desc="ensemble", unit="epoch")
    with bar, Logger(model_dir) as model_log:
        log = partial(log_epoch, model_log, bar)
        ensemble, history = train_ensemble(
            t, cfg.ensemble, seed=cfg.seed, device=device, callback=log
        )
    disc = dataset_disagreement(ensemble, t["observations"], t["actions"])
    threshold = threshold_from(disc, cfg)
    stats = floats({"max": disc.max(), "mean": disc.mean(), "std": disc.std(correction=0)})
    row = {
        "usad/threshold": math.inf if threshold is None else threshold,
        "usad/max_disagreement": stats["max"],
        "usad/mean_disagreement": stats["mean"],
        "model/epochs": history["epochs"],
        "model/train_loss": history["train_loss"][-1] if history["train_loss"] else math.nan,
        "time/model_fit_s": time.perf_counter() - t0,
    }
    if history["best_holdout"] is not None:
        row["model/best_holdout"] = float(np.mean(history["best_holdout"]))
    return ensemble, {"threshold": threshold, **stats}, row
