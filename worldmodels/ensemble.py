"""MOReL's dynamics ensemble (Kidambi et al. 2020, sec. 5) as one batched module, behind the
shared `WorldModel` protocol, with the USAD disagreement and threshold.

Official code: aravindr93/mjrl (branch v2), `mjrl/algos/mbrl/nn_dynamics.py` (WorldModel,
DynamicsNet, fit_model) and `projects/morel/run_morel.py`. Each of the `members` MLPs (4 models,
hidden (512, 512), ReLU, Adam lr 1e-3, minibatch 256 in configs/d4rl_hopper_medium.txt) maps
normalised (s, a) to the normalised state delta, and here also to the reward and a termination
logit (the official code takes both from hand-written env functions; Minari datasets have none):

    x      = [(s - mu_s) / sigma_s, (a - mu_a) / sigma_a]                    (N, B, S + A)
    f_i(x) = [d_i, r_i, l_i]             d_i (N, B, S), r_i, l_i (N, B), member i in 0..N-1
    s'_i   = s + mu_d + sigma_d * d_i     r'_i = mu_r + sigma_r * r_i     P(term)_i = sigmoid(l_i)

mu and sigma are the mean and the mean absolute deviation (the official `shift` and `scale`) of
the TRAINING rows; the holdout rows never touch them. Deterministic members minimise
MSE(d_i, target) + MSE(r_i, target) + BCE(l_i, terminal); probabilistic ones (PETS, Chua et al.
2018) replace each MSE by the Gaussian NLL 0.5 [(mu - y)^2 exp(-v) + v] with the log-variance v
held between learned soft bounds (mbrl-lib `GaussianMLP`):

    v = max_v - softplus(max_v - v_raw);   v = min_v + softplus(v - min_v)
    loss += 0.01 (sum max_v - sum min_v)

USAD (paper eq. 5, run_morel.py): disc(s, a) = max_(i, j) ||s'_i - s'_j||_2 over member pairs, in
raw state units; the threshold is `pessimism_coef * max over the dataset of disc` (the official
`truncate_lim`; a state-action pair beyond it is unknown and HALTs).

Members are one module with a leading member dimension (`nets.EnsembleMLP`), each trained on
its own shuffle of the data (independent minibatch indices), so no Python loop runs over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmrl.worldmodels.nets import EnsembleMLP
from wmrl.worldmodels.protocol import open_loop

State = dict[str, torch.Tensor]
_EPS = 1e-8  # the official code's guard on scales


@dataclass
class EnsembleConfig:
    """MOReL's dynamics ensemble (mjrl `projects/morel/configs/d4rl_hopper_medium.txt`), plus the
    holdout early stopping of mbrl-lib's `ModelTrainer`."""

    members: int = 4  # num_models
    hidden: int = 512  # hidden_size (512, 512)
    layers: int = 2
    probabilistic: bool = False  # False: MOReL's deterministic MSE members; True: PETS Gaussians
    lr: float = 1e-3  # fit_lr
    weight_decay: float = 0.0  # fit_wd (Adam's L2)
    batch_size: int = 256  # fit_mb_size
    max_epochs: int = 100  # the official fit_epochs is 25 with no holdout (hopper-medium)
    holdout_fraction: float = 0.1  # 0 = the official full-data fit, no early stopping
    patience: int = 5  # epochs with no member improving before stopping (0 = never stop)
    improvement: float = 0.01  # relative holdout improvement that counts (mbrl-lib's threshold)
    bootstrap: bool = False  # each member trains on its own resample with replacement
    predict_reward: bool = True
    predict_termination: bool = True
    logvar_penalty: float = 0.01  # weight of sum(max_logvar) - sum(min_logvar) (PETS)

    def __post_init__(self):
        if self.members < 1 or self.layers < 1 or self.hidden < 1 or self.batch_size < 1:
            raise ValueError(
                f"members, layers, hidden and batch_size must be >= 1, got {self.members}, "
                f"{self.layers}, {self.hidden}, {self.batch_size}"
            )
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")


# ---------------------------------------------------------------------------------- USAD
def usad_threshold(disagreements, pessimism: float, rule: str = "max", beta: float = 1.0) -> float:
    """The USAD threshold from the dataset's disagreements.

    rule "max" (official, run_morel.py): threshold = pessimism * max_k disc_k, where `pessimism`
    is the official `pessimism_coef` (3.0 for d4rl hopper-medium, 0.5 for the hopper_v3 example):
    a smaller coefficient halts sooner, i.e. is more pessimistic. That is aravindr93/mjrl at
    commit 5b0ce8b; other versions of the same script divide, (1 / pessimism_coef) * max, so a
    coefficient from such a config is passed here as its inverse.
    rule "mean_std": threshold = pessimism * (mean_k disc_k + beta * std_k disc_k), the std with
    ddof 0; with pessimism 1 it is plain mean + beta * std.

    Args:
        disagreements: (K,) numpy array or tensor, e.g. `dataset_disagreement`'s output.
    """
    d = torch.as_tensor(disagreements, dtype=torch.float64).flatten()
    if d.numel() == 0:
        raise ValueError("usad_threshold got no disagreements; pass the dataset's (K,) values")
    if rule == "max":
        stat = d.max()
    elif rule == "mean_std":
        stat = d.mean() + beta * d.std(correction=0)
    else:
        raise ValueError(f"unknown USAD rule {rule!r}; use 'max' (official) or 'mean_std'")
    return float(pessimism * stat)


@torch.no_grad()
def dataset_disagreement(model: DynamicsEnsemble, observations, actions, batch: int = 8192):
    """disc(s, a) for every dataset row, `batch` rows at a time: (K,) tensor on model's device.

    Args:
        observations: (K, S), actions: (K, A), numpy arrays or tensors.
    """
    obs = torch.as_tensor(observations, dtype=torch.float32)
    act = torch.as_tensor(actions, dtype=torch.float32)
    out = [
        model.disagreement(obs[k : k + batch].to(model.device), act[k : k + batch].to(model.device))
        for k in range(0, len(obs), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0, device=model.device)


# ------------------------------------------------------------------------------- helpers
def _shift_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, mean absolute deviation) over rows, as the official set_transformations; a
    constant column gets scale 1 so that it stays finite wherever it moves later."""
    shift = x.mean(0)
    scale = (x - shift).abs().mean(0)
    return shift, torch.where(scale < _EPS, torch.ones_like(scale), scale)


def split_holdout(n: int, fraction: float, generator: torch.Generator, device=None):
    """A random split of range(n): (train_idx, holdout_idx), round(fraction * n) held out (at
    least one row when fraction > 0 and n > 1)."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    n_hold = int(round(fraction * n))
    if fraction > 0 and n > 1:
        n_hold = min(max(n_hold, 1), n - 1)
    return perm[n_hold:], perm[:n_hold]


def _array(x):
    return x if isinstance(x, torch.Tensor) else np.asarray(x)


def _transition_tensors(transitions: Mapping, device) -> dict[str, torch.Tensor]:
    """Flat transitions (numpy or tensors) -> float32 tensors on `device`, shapes checked.

    Keys: observations (K, S), actions (K, A), next_observations (K, S), rewards (K,), and
    terminals (K,) (D4RL's and `envs.datasets.to_transitions`' name) or terminations."""
    if "terminals" not in transitions and "terminations" in transitions:
        transitions = {**transitions, "terminals": transitions["terminations"]}
    keys = ("observations", "actions", "next_observations", "rewards", "terminals")
    missing = [k for k in keys if k not in transitions]
    if missing:
        raise ValueError(
            f"transitions miss {missing}; pass flat arrays {keys} (envs.datasets.to_transitions)"
        )
    out = {k: torch.as_tensor(_array(transitions[k]), device=device).float() for k in keys}
    K = len(out["observations"])
    ok = (
        out["observations"].ndim == 2
        and out["next_observations"].shape == out["observations"].shape
        and out["actions"].ndim == 2
        and all(len(v) == K for v in out.values())
        and out["rewards"].shape == (K,)
        and out["terminals"].shape == (K,)
    )
    if not ok:
        shapes = {k: tuple(v.shape) for k, v in out.items()}
        raise ValueError(
            f"transition shapes {shapes} are not observations/next_observations (K, S), "
            "actions (K, A), rewards (K,), terminals (K,); flatten observations first"
        )
    return out


# --------------------------------------------------------------------------------- model
class DynamicsEnsemble(EnsembleMLP):
    """N MLP members as one batched module; see the module docstring for the equations.

    Protocol state (fully observed; leading dims (B,) or (B, T)):
        obs (..., S)        the state itself, raw units
        member (...,) long  the member that drives this trajectory (MOReL rolls each
                            trajectory out with one member; drawn uniformly at initial/observe)
        reward (...,)       predicted reward for arriving here (0 for observed states)
        terminated (...,)   predicted P(termination) on arriving here (0 for observed states)
        disagreement (...,) USAD disc of the step that arrived here (0 for observed states)
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: EnsembleConfig | None = None):
        cfg = cfg or EnsembleConfig()
        S, A, N = int(obs_dim), int(action_dim), cfg.members
        D = S + int(cfg.predict_reward)  # regression targets: delta, reward
        heads = D * (2 if cfg.probabilistic else 1) + int(cfg.predict_termination)
        # The batched member MLP is the base class (not a submodule), so the parameters keep
        # the names `hidden_layers.*` and `head.*` that saved ensembles hold.
        super().__init__(S + A, heads, N, cfg.hidden, cfg.layers, nn.ReLU)
        self.cfg, self.obs_dim, self.action_dim, self.out_dim = cfg, S, A, D
        if cfg.probabilistic:  # per member (mbrl-lib shares them) so members stay independent
            self.max_logvar = nn.Parameter(torch.full((N, 1, D), 0.5))
            self.min_logvar = nn.Parameter(torch.full((N, 1, D), -10.0))
        self.register_buffer("in_shift", torch.zeros(S + A))
        self.register_buffer("in_scale", torch.ones(S + A))
        self.register_buffer("out_shift", torch.zeros(D))
        self.register_buffer("out_scale", torch.ones(D))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # ------------------------------------------------------------------------- normalising
    @torch.no_grad()
    def fit_normalizers(self, observations, actions, next_observations, rewards=None) -> None:
        """Set shift/scale from TRAINING rows: inputs (s, a), outputs (s' - s, r).

        Args: observations (K, S), actions (K, A), next_observations (K, S), rewards (K,).
        """
        obs = torch.as_tensor(observations, device=self.device).float()
        act = torch.as_tensor(actions, device=self.device).float()
        nxt = torch.as_tensor(next_observations, device=self.device).float()
        shift, scale = _shift_scale(torch.cat([obs, act], -1))
        self.in_shift.copy_(shift), self.in_scale.copy_(scale)
        out = nxt - obs
        if self.cfg.predict_reward:
            rew = torch.as_tensor(rewards, device=self.device).float()
            out = torch.cat([out, rew[:, None]], -1)
        shift, scale = _shift_scale(out)
        self.out_shift.copy_(shift), self.out_scale.copy_(scale)

    def normalize_inputs(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(..., S), (..., A) -> (..., S + A) normalised network input."""
        return (torch.cat([obs, action], -1) - self.in_shift) / (self.in_scale + _EPS)

    def normalize_targets(self, obs, next_obs, reward=None) -> torch.Tensor:
        """(..., S), (..., S), (...,) -> (..., D) normalised [delta, reward] targets."""
        out = next_obs - obs
        if self.cfg.predict_reward:
            out = torch.cat([out, reward[..., None]], -1)
        return (out - self.out_shift) / (self.out_scale + _EPS)

    # ----------------------------------------------------------------------------- network
    def forward(self, x: torch.Tensor):
        """Normalised input (N, B, S + A) -> (mean (N, B, D), logvar (N, B, D) or None,
        termination logit (N, B) or None), all in normalised units; member i reads x[i]."""
        out = super().forward(x)
        D = self.out_dim
        mean, logvar, logit = out[..., :D], None, None
        if self.cfg.probabilistic:
            logvar = out[..., D : 2 * D]
            logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
            logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        if self.cfg.predict_termination:
            logit = out[..., -1]
        return mean, logvar, logit

    def _members_input(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(B, S) / (B, A) shared by all members, or (N, B, .) one slice each -> (N, B, S + A)."""
        x = self.normalize_inputs(obs, action)
        if x.ndim == 2:
            return x.expand(self.cfg.members, *x.shape)
        if x.ndim != 3 or x.shape[0] != self.cfg.members:
            raise ValueError(
                f"obs {tuple(obs.shape)} / action {tuple(action.shape)} must be (B, .) or "
                f"(N={self.cfg.members}, B, .)"
            )
        return x

    def predict(
        self, obs: torch.Tensor, action: torch.Tensor, sample: bool = False, generator=None
    ) -> dict[str, torch.Tensor]:
        """Every member's prediction in real units.

        Args:
            obs: (B, S) for all members or (N, B, S), one slice per member; action likewise.
            sample: draw from probabilistic members' Gaussians instead of taking their means.
        Returns:
            next_obs (N, B, S), reward (N, B) (zeros without the head), terminated_prob (N, B)
            (zeros without the head).
        """
        x = self._members_input(obs, action)
        mean, logvar, logit = self(x)
        if sample and logvar is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + (0.5 * logvar).exp() * noise
        out = mean * (self.out_scale + _EPS) + self.out_shift
        S = self.obs_dim
        zeros = torch.zeros(x.shape[:2], device=x.device)
        return {
            "next_obs": obs + out[..., :S],
            "reward": out[..., S] if self.cfg.predict_reward else zeros,
            "terminated_prob": torch.sigmoid(logit) if logit is not None else zeros,
        }

    @staticmethod
    def pairwise_max_distance(next_obs: torch.Tensor) -> torch.Tensor:
        """(N, B, S) member predictions -> (B,) max_(i, j) ||next_obs[i] - next_obs[j]||_2."""
        p = next_obs.transpose(0, 1)  # (B, N, S)
        return (p[:, :, None] - p[:, None]).norm(dim=-1).amax(dim=(1, 2))

    @torch.no_grad()
    def disagreement(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """USAD disc(s, a): (B, S), (B, A) -> (B,), from the members' mean next states."""
        return self.pairwise_max_distance(self.predict(obs, action)["next_obs"])

    # -------------------------------------------------------------------------------- loss
    def member_losses(self, x, target, terminal) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of each member on its own rows.

        Args:
            x: (N, B, S + A) normalised inputs; target: (N, B, D) normalised [delta, reward];
            terminal: (N, B) float 0/1.
        Returns:
            (N,) losses (their sum is what `fit` minimises: each member's gradient is that of
            training it alone) and (N,) terms: dynamics, reward, termination, and for
            probabilistic members mse (of the means, normalised units).
        """
        mean, logvar, logit = self(x)
        err = (mean - target) ** 2
        nll = err if logvar is None else 0.5 * (err * torch.exp(-logvar) + logvar)
        S = self.obs_dim
        terms = {"dynamics": nll[..., :S].mean((1, 2))}
        if self.cfg.predict_reward:
            terms["reward"] = nll[..., S].mean(1)
        if logit is not None:
            terms["termination"] = F.binary_cross_entropy_with_logits(
                logit, terminal, reduction="none"
            ).mean(1)
        loss = sum(terms.values())
        if logvar is not None:
            bounds = self.max_logvar.sum((1, 2)) - self.min_logvar.sum((1, 2))
            loss = loss + self.cfg.logvar_penalty * bounds
            terms["mse"] = err.mean((1, 2))
        return loss, terms

    def update(self, optimizer, x, target, terminal) -> torch.Tensor:
        """One Adam step on the sum of `member_losses` (arguments as there, (N, B, .) with each
        member's own rows); returns the (N,) losses, detached, without a host sync."""
        losses, _ = self.member_losses(x, target, terminal)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        return losses.detach()

    @torch.no_grad()
    def member_scores(self, x, target, terminal, batch: int = 8192) -> torch.Tensor:
        """Holdout score of each member, (N,): MSE of the dynamics means + MSE of the reward
        means + termination BCE (mbrl-lib scores probabilistic members by MSE too).

        Args: x (K, S + A), target (K, D), terminal (K,), shared by all members."""
        N, S = self.cfg.members, self.obs_dim
        total = torch.zeros(N, device=x.device)
        for k in range(0, len(x), batch):
            xb = x[k : k + batch].expand(N, -1, -1)
            mean, _, logit = self(xb)
            err = (mean - target[k : k + batch]) ** 2
            score = err[..., :S].mean(-1)
            if self.cfg.predict_reward:
                score = score + err[..., S]
            if logit is not None:
                tb = terminal[k : k + batch].expand(N, -1)
                score = score + F.binary_cross_entropy_with_logits(logit, tb, reduction="none")
            total += score.sum(1)
        return total / max(len(x), 1)

    def loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float], State]:
        """The summed member losses on one batch that every member sees (`fit` is the full
        training loop; call `fit_normalizers` first when training through this method).

        Accepts either layout:
          * flat transitions: observations (B, S), actions (B, A), next_observations (B, S),
            rewards (B,), terminals (B,); states returned: the arrival states (B,).
          * a replay batch (`envs.replay`): obs (B, T, S), action (B, T, A) with action[t] =
            a_(t-1), reward (B, T) with reward[t] = r_(t-1), is_first (B, T), is_terminal
            (B, T). Row t-1 -> row t is a transition wherever not is_first[t]:

                obs[t-1] --action[t]--> obs[t],  reward[t],  is_terminal[t]

            states returned: `observe`'s (B, T).
        Returns:
            (loss, metrics (means over members) as floats, states).
        """
        if "obs" in batch:

            def rows(key, dtype=torch.float32):  # (B, T, ...) -> tensor on the device
                return torch.as_tensor(batch[key], device=self.device, dtype=dtype)

            obs, action, is_first = rows("obs"), rows("action"), rows("is_first", torch.bool)
            terminal = (
                rows("is_terminal") if "is_terminal" in batch else torch.zeros_like(obs[..., 0])
            )
            valid = ~is_first[:, 1:]  # row t - 1 -> row t is a transition
            flat = {
                "observations": obs[:, :-1][valid],
                "actions": action[:, 1:][valid],
                "next_observations": obs[:, 1:][valid],
                "rewards": rows("reward")[:, 1:][valid],
                "terminals": terminal[:, 1:][valid],
            }
            states = self.observe(obs, action, is_first)
        else:
            flat = batch
            states = None
        t = _transition_tensors(flat, self.device)
        if len(t["observations"]) == 0:
            raise ValueError("the batch holds no transition (every row is_first); sample T >= 2")
        N = self.cfg.members
        x = self.normalize_inputs(t["observations"], t["actions"]).expand(N, -1, -1)
        y = self.normalize_targets(t["observations"], t["next_observations"], t["rewards"])
        losses, terms = self.member_losses(x, y.expand(N, -1, -1), t["terminals"].expand(N, -1))
        loss = losses.sum()
        metrics = {"loss": float(loss.detach())}
        metrics.update({k: float(v.detach().mean()) for k, v in terms.items()})
        if states is None:
            B = len(t["next_observations"])
            states = self._state(t["next_observations"], self._draw_members((B,)))
        return loss, metrics, states

    # --------------------------------------------------------------------------------- fit
    def fit(
        self,
        transitions: Mapping,
        seed: int = 0,
        callback: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict:
        """Train all members together on flat transitions, with holdout early stopping.

        A random `holdout_fraction` of the rows is held out; the normalisers are fitted on the
        rest. Every epoch each member walks its own random permutation of the training rows (of
        its own bootstrap resample with `bootstrap`) in minibatches of `batch_size`, and the sum
        of the member losses takes one Adam step. After each epoch every member is scored on the
        holdout (`member_scores`); a member whose score beats its best so far saves its weights,
        and training stops once `patience` epochs pass in which no member beat its best by more
        than `improvement` (relative). Each member ends with the weights of its lowest holdout
        score. Without a holdout it runs `max_epochs` epochs (the official fit_epochs, no
        early stopping) and keeps the last weights.

        Args:
            transitions: see `_transition_tensors` (`envs.datasets.to_transitions`' output).
            seed: seeds the split, the shuffles and the bootstrap (not the initial weights).
            callback: called after every epoch with (epoch, metrics), e.g. to log.
        Returns:
            history: per epoch lists `train_loss`, `holdout_loss` (means over members) and
            `holdout_member` (N floats); `best_holdout` and `best_epoch` (N each; the holdout
            scores of the returned weights), `epochs` run, `steps`, `stopped_early`, and
            `train_idx` / `holdout_idx` (numpy) of the split.
        Raises:
            FloatingPointError when a loss becomes NaN or infinite.
        """
        cfg, device, N = self.cfg, self.device, self.cfg.members
        data = _transition_tensors(transitions, device)
        if data["observations"].shape[1] != self.obs_dim or data["actions"].shape[1] != (
            self.action_dim
        ):
            raise ValueError(
                f"transitions have S={data['observations'].shape[1]}, "
                f"A={data['actions'].shape[1]}; this ensemble was built for S={self.obs_dim}, "
                f"A={self.action_dim}"
            )
        gen = torch.Generator(device=device).manual_seed(seed)
        train_idx, hold_idx = split_holdout(
            len(data["observations"]), cfg.holdout_fraction, gen, device
        )
        train = {k: v[train_idx] for k, v in data.items()}
        self.fit_normalizers(
            train["observations"], train["actions"], train["next_observations"], train["rewards"]
        )

        def prepared(d):
            x = self.normalize_inputs(d["observations"], d["actions"])
            y = self.normalize_targets(d["observations"], d["next_observations"], d["rewards"])
            return x, y, d["terminals"]

        x, y, term = prepared(train)
        hold = prepared({k: v[hold_idx] for k, v in data.items()}) if len(hold_idx) else None
        K = len(x)
        rows = torch.arange(K, device=device).expand(N, K)
        if cfg.bootstrap:
            rows = torch.randint(K, (N, K), generator=gen, device=device)
        optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        history: dict = {"train_loss": [], "holdout_loss": [], "holdout_member": []}
        best = torch.full((N,), math.inf, device=device)
        best_epoch = torch.full((N,), -1, dtype=torch.long, device=device)
        best_params = {k: p.detach().clone() for k, p in self.named_parameters()}
        since, steps, epoch, stopped = 0, 0, 0, False
        for epoch in range(1, cfg.max_epochs + 1):
            self.train()
            order = rows.gather(1, torch.rand(N, K, generator=gen, device=device).argsort(1))
            total = torch.zeros(N, device=device)
            for k in range(0, K, cfg.batch_size):
                idx = order[:, k : k + cfg.batch_size]  # (N, b): each member its own rows
                total += self.update(optimizer, x[idx], y[idx], term[idx]) * idx.shape[1]
                steps += 1
            self.eval()
            metrics = {"train_loss": (total / K).mean()}
            if hold is not None:
                scores = self.member_scores(*hold)
                # Any gain keeps the weights; only a relative gain above `improvement` counts
                # as progress for patience (mbrl-lib's threshold), so slow drift still stops.
                improved = scores < best
                progress = torch.isinf(best) | ((best - scores) / best.abs() > cfg.improvement)
                best = torch.where(improved, scores, best)
                best_epoch = torch.where(improved, epoch, best_epoch)
                for name, p in self.named_parameters():  # every parameter leads with members
                    best_params[name][improved] = p.detach()[improved]
                metrics["holdout_loss"] = scores.mean()
                since = 0 if bool(progress.any()) else since + 1
                history["holdout_member"].append(scores.tolist())
            out = {k: float(v) for k, v in metrics.items()}  # one host sync per epoch
            if not all(math.isfinite(v) for v in out.values()):
                raise FloatingPointError(
                    f"ensemble loss is not finite at epoch {epoch} ({out}); lower --lr or check "
                    "the transitions for NaN or huge values"
                )
            for k, v in out.items():
                history[k].append(v)
            if callback is not None:
                callback(epoch, out)
            if hold is not None and cfg.patience > 0 and since >= cfg.patience:
                stopped = True
                break
        if hold is not None and history["holdout_member"]:
            with torch.no_grad():
                for name, p in self.named_parameters():
                    p.copy_(best_params[name])
        history.update(
            best_holdout=best.tolist() if hold is not None else None,
            best_epoch=best_epoch.tolist() if hold is not None else None,
            epochs=epoch if cfg.max_epochs else 0,
            steps=steps,
            stopped_early=stopped,
            train_idx=train_idx.cpu().numpy(),
            holdout_idx=hold_idx.cpu().numpy(),
        )
        return history

    # ---------------------------------------------------------------------------- protocol
    def _draw_members(self, shape) -> torch.Tensor:
        return torch.randint(self.cfg.members, tuple(shape), device=self.device)

    def _state(self, obs: torch.Tensor, member: torch.Tensor) -> State:
        zeros = torch.zeros(obs.shape[:-1], device=obs.device)
        return {
            "obs": obs,
            "member": member,
            "reward": zeros,
            "terminated": zeros.clone(),
            "disagreement": zeros.clone(),
        }

    def initial(self, batch_size: int) -> State:
        """Zero observations (B, S), uniformly drawn members. MOReL starts its rollouts from
        dataset states instead: pass them through `observe` (T = 1)."""
        obs = torch.zeros(batch_size, self.obs_dim, device=self.device)
        return self._state(obs, self._draw_members((batch_size,)))

    def observe(self, obs, action, is_first, state: State | None = None) -> State:
        """The model is fully observed: states (B, T) whose obs are the observations
        themselves; each sequence gets a member drawn uniformly (fresh at every call, so
        `Planner` redraws it at every env step), repeated over T. `action`, `is_first` and
        `state` carry nothing the state needs."""
        obs = torch.as_tensor(obs, device=self.device).float()
        if obs.ndim != 3 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs {tuple(obs.shape)} is not (B, T, S={self.obs_dim})")
        B, T = obs.shape[:2]
        return self._state(obs, self._draw_members((B, 1)).repeat(1, T))

    def img_step(self, state: State, action: torch.Tensor, sample: bool | None = None) -> State:
        """One step with the member of each trajectory: state (...,), action (..., A) -> next
        state (...,) holding that member's next obs, reward, P(termination), and the USAD disc
        of (obs, action) over all members (they are all evaluated in the one batched pass).
        Probabilistic members sample (PETS' trajectory sampling) unless sample=False."""
        obs, member = state["obs"], state["member"]
        lead = obs.shape[:-1]
        obs, member = obs.reshape(-1, self.obs_dim), member.reshape(-1)
        action = action.reshape(-1, self.action_dim)
        sample = self.cfg.probabilistic if sample is None else sample
        pred = self.predict(obs, action, sample=sample)
        rows = torch.arange(len(obs), device=obs.device)
        out = {
            "obs": pred["next_obs"][member, rows],
            "member": member,
            "reward": pred["reward"][member, rows],
            "terminated": pred["terminated_prob"][member, rows],
            "disagreement": self.pairwise_max_distance(pred["next_obs"]),
        }
        return {k: v.reshape(*lead, *v.shape[1:]) for k, v in out.items()}

    def imagine(self, state: State, actions: torch.Tensor) -> State:
        """state (B,), actions (B, H, A) -> states (B, H); states[:, h] follows actions[:, h]."""
        return open_loop(self, state, actions)

    def features(self, state: State) -> torch.Tensor:
        """The raw observation (..., S): a policy trained in the model then acts on env
        observations unchanged (MOReL's NPG policy reads raw states too)."""
        return state["obs"]

    def reward(self, state: State) -> torch.Tensor:
        """The driving member's predicted reward for arriving in `state`: (...,)."""
        return state["reward"]

    def continuation(self, state: State) -> torch.Tensor:
        """1 - P(termination on arriving in `state`): (...,); ones without the head."""
        return 1.0 - state["terminated"]

    def decode(self, state: State) -> torch.Tensor:
        """The (predicted) observation itself, (..., S)."""
        return state["obs"]


def train_ensemble(
    transitions: Mapping,
    cfg: EnsembleConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[DynamicsEnsemble, dict]:
    """Build an ensemble for the transitions' dims (initial weights from `seed`) and `fit` it.

    Returns (model in eval mode, history)."""
    obs_dim = _array(transitions["observations"]).shape[-1]
    action_dim = _array(transitions["actions"]).shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DynamicsEnsemble(obs_dim, action_dim, cfg).to(device)
    history = model.fit(transitions, seed=seed, callback=callback)
    return model.eval(), history
