"""Natural policy gradient (Kakade 2001; Rajeswaran et al. 2017) as MOReL optimises its policy in
the pessimistic MDP (Kidambi et al. 2020, sec. 4 and appendix).

Official code: aravindr93/mjrl, branch v2: `mjrl/algos/npg_cg.py` (NPG), `batch_reinforce.py`
(the surrogate, advantage whitening), `utils/cg_solve.py`, `utils/process_samples.py` (GAE),
`policies/gaussian_mlp.py` (MLP), `baselines/mlp_baseline.py`, `algos/behavior_cloning.py`, and
`projects/morel/run_morel.py` with `configs/d4rl_hopper_medium.txt` (the values of `NPGConfig`).

One update from a batch of paths (`NPG.update`):

    A_t = GAE(gamma, lambda) with the baseline V; A <- (A - mean A) / (std A + 1e-6)
    L(theta) = mean_t log pi_theta(a_t | s_t) A_t                (the v2 `pg_surrogate`)
    g = grad L;  F = Hessian of mean_s KL(pi_old(.|s) || pi_theta(.|s)) at theta_old (the Fisher,
    in closed form: `fisher_operator`)
    x = (F + damping I)^-1 g  by conjugate gradients, started at x_0 = g (as mjrl)
    alpha = sqrt(delta / (g^T x));  theta <- theta + alpha x      delta = normalized step size

so the quadratic model of the KL of a step is alpha^2 x^T F x / 2 ~= delta / 2. After the step
log_std is projected into [min_log_std, max_log_std] and the baseline is refitted on the paths'
discounted returns (mjrl's order: advantages come from the baseline of the previous iteration).

Paths are padded batches (B paths, at most T steps; `sample_paths` collects them from a vector
env with next-step autoreset, such as `offline.morel.pmdp.PessimisticMDP`):

    observations  s_0  s_1  ...  s_(L-1)  s_L   pad     (B, T + 1, S): s_L is the last state
    actions       a_0  a_1  ...  a_(L-1)  pad           (B, T, A)
    rewards       r_0  r_1  ...  r_(L-1)  pad           (B, T): r_t = r(s_t, a_t)
    terminated    0    0    ...  e        0             (B, T): e = 1 if s_L is terminal
    mask          1    1    ...  1        0             (B, T): the path's steps

A terminated path has V(s_L) = 0; a truncated one (horizon) bootstraps from V(s_L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from wmrl.infra.metrics import metric_floats as floats
from wmrl.worldmodels.nets import mlp


@dataclass
class NPGConfig:
    """MOReL's NPG (mjrl `projects/morel/configs/d4rl_hopper_medium.txt` and run_morel.py)."""

    hidden: tuple[int, ...] = (64, 64)  # policy_size, tanh hidden layers
    init_log_std: float = -0.25  # init_log_std
    min_log_std: float = -1.0  # min_log_std (-2.0 in the hopper_v3 example config)
    max_log_std: float = 1.0  # the mjrl MLP's default
    gamma: float = 0.999
    gae_lambda: float = 0.97
    step_size: float = 0.02  # normalized_step_size delta (twice the KL of a step)
    cg_iters: int = 20  # FIM_invert_args iters (25 in the hopper_v3 example)
    damping: float = 1e-3  # FIM_invert_args damping: F + damping I
    hvp_sample_frac: float = 1.0  # fraction of samples in the Fisher-vector products
    update_paths: int = 50  # start states per iteration; each is rolled out in every model
    #                         member (4 in the official ensemble), so 200 paths per update
    baseline_hidden: tuple[int, ...] = (128, 128)  # mjrl MLPBaseline, ReLU
    baseline_lr: float = 1e-3
    baseline_reg: float = 1e-3  # reg_coef: Adam's weight_decay
    baseline_batch: int = 256
    baseline_epochs: int = 1
    bc_epochs: int = 5  # bc_init: BC(paths, policy, epochs=5, batch_size=256, loss_type="MSE")
    bc_batch: int = 256
    bc_lr: float = 1e-3  # mjrl BC's default Adam learning rate

    def __post_init__(self):
        if not 0.0 < self.hvp_sample_frac <= 1.0:
            raise ValueError(f"hvp_sample_frac must lie in (0, 1], got {self.hvp_sample_frac}")
        if self.min_log_std > self.max_log_std:
            raise ValueError(f"min_log_std {self.min_log_std} > max_log_std {self.max_log_std}")


# ----------------------------------------------------------------------------- policy


class GaussianMLPPolicy(nn.Module):
    """mjrl's `MLP` policy: pi(a | s) = N(mu(s), diag(exp(log_std))^2), log_std a free parameter.

    mu(s) = out_scale * f((s - in_shift) / (in_scale + 1e-6)) + out_shift, f a tanh MLP whose
    last layer starts at 1e-2 times PyTorch's init (near-zero initial means). The shifts and
    scales are buffers (identity by default; `set_transformations`). log_std is kept in
    [min_log_std, max_log_std] by projection after each update (`clamp_log_std_`), as mjrl's
    `set_param_values` does, not by clamping inside the density.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: tuple[int, ...] = (64, 64),
        init_log_std: float = -0.25,
        min_log_std: float = -1.0,
        max_log_std: float = 1.0,
    ):
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.min_log_std, self.max_log_std = min_log_std, max_log_std
        self.net = mlp(obs_dim, action_dim, tuple(hidden), act=nn.Tanh)
        with torch.no_grad():
            self.net[-1].weight.mul_(1e-2)
            self.net[-1].bias.mul_(1e-2)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.clamp_log_std_()
        self.register_buffer("in_shift", torch.zeros(obs_dim))
        self.register_buffer("in_scale", torch.ones(obs_dim))
        self.register_buffer("out_shift", torch.zeros(action_dim))
        self.register_buffer("out_scale", torch.ones(action_dim))

    @torch.no_grad()
    def set_transformations(self, in_shift=None, in_scale=None, out_shift=None, out_scale=None):
        """Set any of the input/output shifts and scales ((S,) or (A,) arrays or tensors)."""
        for name, value in dict(
            in_shift=in_shift, in_scale=in_scale, out_shift=out_shift, out_scale=out_scale
        ).items():
            if value is not None:
                buf = getattr(self, name)
                buf.copy_(torch.as_tensor(value, dtype=buf.dtype).reshape(buf.shape))

    @torch.no_grad()
    def clamp_log_std_(self) -> None:
        self.log_std.clamp_(self.min_log_std, self.max_log_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (..., S) -> mean action (..., A)."""
        x = (obs - self.in_shift) / (self.in_scale + 1e-6)
        return self.net(x) * self.out_scale + self.out_shift

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(a | s): obs (..., S), action (..., A) -> (...,)."""
        z = (action - self(obs)) * torch.exp(-self.log_std)
        return (
            -0.5 * (z**2).sum(-1)
            - self.log_std.sum()
            - 0.5 * self.action_dim * math.log(2 * math.pi)
        )

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """a = mu(s) + exp(log_std) * eps, eps ~ N(0, I): (..., S) -> (..., A), unclipped (the
        env clips, as MuJoCo clips controls; log-densities use the sampled action)."""
        mean = self(obs)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.log_std.exp() * eps

    @torch.no_grad()
    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic (evaluation) action mu(s)."""
        return self(obs)

    def kl(self, old_mean: torch.Tensor, old_log_std: torch.Tensor, obs: torch.Tensor):
        """Mean over states of KL(N(old_mean, old_std) || pi_theta(. | s)), summed over actions:

        KL = log(std / old_std) + (old_std^2 + (old_mean - mean)^2) / (2 std^2) - 1/2.
        old_mean (B, A), old_log_std (A,), obs (B, S) -> scalar, differentiable in theta.
        """
        mean, log_std = self(obs), self.log_std
        var = torch.exp(2 * log_std)
        kl = (
            log_std
            - old_log_std
            + (torch.exp(2 * old_log_std) + (old_mean - mean) ** 2) / (2 * var)
        )
        return (kl - 0.5).sum(-1).mean()


def behaviour_clone(
    policy: GaussianMLPPolicy,
    observations: torch.Tensor,
    actions: torch.Tensor,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """MOReL's `bc_init`: fit the policy mean to the dataset's actions by MSE (mjrl `BC` with
    loss_type "MSE"), `epochs` passes of N // batch_size Adam steps on minibatches drawn with
    replacement. log_std keeps its initial value (the MSE does not touch it).

    Args:
        observations: (N, S), actions: (N, A), on the policy's device.
    Returns:
        bc_loss_before, bc_loss_after: the MSE over all N pairs.
    """
    n = observations.shape[0]
    opt = torch.optim.Adam(policy.parameters(), lr=lr)

    def mse(idx=slice(None)):
        return ((policy(observations[idx]) - actions[idx]) ** 2).mean()

    with torch.no_grad():
        before = mse()
    for _ in range(epochs * max(1, n // batch_size)):
        idx = torch.randint(
            n, (batch_size,), generator=generator, device=generator_device(generator, observations)
        )
        loss = mse(idx.to(observations.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = mse()
    return floats({"bc_loss_before": before, "bc_loss_after": after})


def generator_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where random indices drawn with `generator` must be made (its own device, if given)."""
    return generator.device if generator is not None else like.device


# --------------------------------------------------------------------------- baseline


class MLPBaseline(nn.Module):
    """mjrl's `MLPBaseline`: V(s_t) from the features [clip(s, -10, 10) / 10, (t / 1000)^k for
    k = 1..4] (the time features let a finite horizon show in the values), hidden (128, 128)
    ReLU, fitted by MSE to discounted returns with Adam (weight decay = reg_coef)."""

    def __init__(
        self,
        obs_dim: int,
        hidden: tuple[int, ...] = (128, 128),
        lr: float = 1e-3,
        reg_coef: float = 1e-3,
        batch_size: int = 256,
        epochs: int = 1,
    ):
        super().__init__()
        self.net = mlp(obs_dim + 4, 1, tuple(hidden), act=nn.ReLU)
        self.batch_size, self.epochs = batch_size, epochs
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=reg_coef)

    @staticmethod
    def features(obs: torch.Tensor) -> torch.Tensor:
        """obs (B, T, S), step t along dim 1 -> (B, T, S + 4)."""
        t = torch.arange(obs.shape[1], device=obs.device, dtype=obs.dtype) / 1000.0
        powers = torch.stack([t, t**2, t**3, t**4], -1).expand(*obs.shape[:2], 4)
        return torch.cat([obs.clamp(-10, 10) / 10.0, powers], -1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, T, S) -> V (B, T)."""
        return self.net(self.features(obs)).squeeze(-1)

    def fit(
        self,
        obs: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Regress V(s_t) on returns (B, T) where mask (B, T) is set; obs (B, >= T, S). Each epoch
        is one shuffled pass of full minibatches. Returns mjrl's relative errors
        sum (G - V)^2 / sum G^2 before and after (scalar tensors)."""
        T = returns.shape[1]
        keep = mask.bool()
        x = self.features(obs[:, :T])[keep]
        y = returns[keep]

        def error():
            with torch.no_grad():
                return ((y - self.net(x).squeeze(-1)) ** 2).sum() / ((y**2).sum() + 1e-8)

        before, n = error(), y.shape[0]
        steps = max(1, n // self.batch_size)
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=generator, device=generator_device(generator, y))
            perm = perm.to(y.device)
            for k in range(steps):
                idx = perm[k * self.batch_size : (k + 1) * self.batch_size]
                loss = ((self.net(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return {"baseline_error_before": before, "baseline_error_after": error()}


# ------------------------------------------------------------------ returns and GAE


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns G_t = r_t + gamma m_(t+1) G_(t+1), zero after the path (mjrl's
    `compute_returns`, the baseline's targets; no bootstrap, as mjrl). (B, T) each -> (B, T)."""
    mask = mask.to(rewards.dtype)
    out, g = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        g = mask[:, t] * (rewards[:, t] + gamma * g)
        out[:, t] = g
    return out


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 0.999,
    lam: float = 0.97,
) -> torch.Tensor:
    """Generalised advantage estimates over padded paths (Schulman et al. 2016):

        delta_t = r_t + gamma (1 - e_t) V_(t+1) - V_t
        A_t     = delta_t + gamma lam (1 - e_t) m_(t+1) A_(t+1),   m_T = 0

    so a terminated step (e_t = 1) stops bootstrapping, and a truncated path (its last step
    t = L - 1 with e_t = 0 and m_L = 0) bootstraps once from V(s_L).

    Args:
        rewards (B, T), terminated e (B, T), mask m (B, T): as in the module's diagram.
        values: (B, T + 1), V(s_t) at every observation, V(s_L) included.
    Returns:
        (B, T) advantages, zero where mask is 0.
    """
    mask, notdone = mask.to(rewards.dtype), 1.0 - terminated.to(rewards.dtype)
    delta = rewards + gamma * notdone * values[:, 1:] - values[:, :-1]
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
    out, adv = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        adv = mask[:, t] * (delta[:, t] + gamma * lam * notdone[:, t] * next_mask[:, t] * adv)
        out[:, t] = adv
    return out


# ------------------------------------------------------------------ natural gradient


def cg_solve(fvp, b: torch.Tensor, x0=None, iters: int = 20, residual_tol: float = 1e-10):
    """Conjugate gradients for A x = b with A symmetric positive definite, given only
    fvp(v) = A v (mjrl `cg_solve`: stops when r^T r < residual_tol). b (D,) -> x (D,)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - fvp(x) if x0 is not None else b.clone()
    p, rr = r.clone(), r.dot(r)
    if rr < residual_tol:  # already solved (b = 0 included): no division by zero
        return x
    for _ in range(iters):
        Ap = fvp(p)
        a = rr / p.dot(Ap)
        x, r = x + a * p, r - a * Ap
        rr_new = r.dot(r)
        p, rr = r + (rr_new / rr) * p, rr_new
        if rr < residual_tol:  # one host sync per iteration, as mjrl
            break
    return x


def fisher_operator(policy: GaussianMLPPolicy, obs: torch.Tensor, damping: float = 0.0):
    """v -> (F + damping I) v, F the Fisher information of the Gaussian policy over the states
    `obs` (B, S) at its current parameters, i.e. the Hessian of
    mean_s KL(pi_old(.|s) || pi_theta(.|s)) at theta = theta_old. v (D,) over
    `policy.parameters()` in order -> (D,).

    For pi = N(mu_theta(s), diag(sigma)^2) the Hessian has the closed (Gauss-Newton) form

        F = [ mean_s J(s)^T diag(1 / sigma^2) J(s)    0   ]      J(s) = d mu_theta(s) / d theta_net
            [ 0                                       2 I ]      (the log_std block)

    (the mixed terms carry a factor mu_old - mu_theta = 0). The forward pass is recorded once;
    each product then pushes v forward through the tanh MLP by hand (J v: per layer
    dz = a dW^T + db + dz_prev W^T, then dz * (1 - tanh^2)) and pulls J v / sigma^2 back with one
    reverse pass (J^T u). That is about a third of the work of the double backpropagation
    through the KL that mjrl runs; the result is the same Hessian (tests/planners/test_npg.py
    checks it against torch.autograd's).
    """
    named = list(policy.named_parameters())
    names = [n for n, _ in named]
    sizes = [p.numel() for _, p in named]
    net_params = [p for n, p in named if n != "log_std"]
    layers = []  # (linear, its input) and (tanh, its output), in order
    with torch.enable_grad():
        h = (obs - policy.in_shift) / (policy.in_scale + 1e-6)
        for module in policy.net:
            if isinstance(module, nn.Linear):
                layers.append((module, h.detach()))
            h = module(h)
            if isinstance(module, nn.Tanh):
                layers.append((module, h.detach()))
            elif not isinstance(module, nn.Linear):
                raise TypeError(f"fisher_operator handles Linear and Tanh layers, not {module}")
        mean = h * policy.out_scale + policy.out_shift
    # d mean / d net = out_scale * J_net: one out_scale here, the other in the reverse pass
    weight = policy.out_scale * torch.exp(-2 * policy.log_std.detach()) / obs.shape[0]
    index = {id(p): i for i, (_, p) in enumerate(named)}

    def fvp(v: torch.Tensor) -> torch.Tensor:
        parts = torch.split(v, sizes)
        dz = None
        for module, a in layers:
            if isinstance(module, nn.Linear):
                dw = parts[index[id(module.weight)]].view_as(module.weight)
                out = torch.addmm(parts[index[id(module.bias)]], a, dw.T)
                dz = out if dz is None else out.addmm_(dz, module.weight.detach().T)
            else:
                dz = dz * (1 - a * a)
        pulled = iter(torch.autograd.grad(mean, net_params, dz * weight, retain_graph=True))
        out = [2 * part if n == "log_std" else next(pulled).flatten()
               for n, part in zip(names, parts, strict=True)]  # fmt: skip
        return torch.cat(out) + damping * v

    return fvp


def fisher_vector_product(
    policy: GaussianMLPPolicy, obs: torch.Tensor, v: torch.Tensor, damping: float = 0.0
) -> torch.Tensor:
    """(F + damping I) v for one v; `fisher_operator` builds the operator once for many."""
    return fisher_operator(policy, obs, damping)(v)


class NPG(nn.Module):
    """MOReL's policy optimiser: a `GaussianMLPPolicy`, an `MLPBaseline`, and `update(paths)`.

    npg = NPG(obs_dim, action_dim, NPGConfig())
    behaviour_clone(npg.policy, dataset_obs, dataset_actions)        # bc_init
    paths = sample_paths(pmdp, npg.policy)
    metrics = npg.update(paths)
    action = npg.act(obs)
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: NPGConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NPGConfig()
        self.policy = GaussianMLPPolicy(
            obs_dim, action_dim, cfg.hidden, cfg.init_log_std, cfg.min_log_std, cfg.max_log_std
        )
        self.baseline = MLPBaseline(
            obs_dim,
            cfg.baseline_hidden,
            cfg.baseline_lr,
            cfg.baseline_reg,
            cfg.baseline_batch,
            cfg.baseline_epochs,
        )
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def device(self) -> torch.device:
        return self.updates.device

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """obs (B, S) -> actions (B, A): the mean, or a sample."""
        return self.policy.mode(obs) if deterministic else self.policy.sample(obs)

    @torch.no_grad()
    def advantages(self, paths: dict[str, torch.Tensor]) -> torch.Tensor:
        """GAE (B, T) with the current baseline, whitened over the paths' steps."""
        cfg, mask = self.cfg, paths["mask"].bool()
        values = self.baseline(paths["observations"])
        adv = gae(paths["rewards"], values, paths["terminated"], mask, cfg.gamma, cfg.gae_lambda)
        valid = adv[mask]
        return (adv - valid.mean()) / (valid.std(correction=0) + 1e-6)

    def update(self, paths: dict[str, torch.Tensor]) -> dict[str, float]:
        """One NPG step on a batch of padded paths (the module's diagram), then one baseline
        fit. Returns surrogate_before/after, kl (measured), alpha, delta (= alpha^2 g^T x, the
        normalised step), grad_norm (|g|), npg_grad_norm (|x|), baseline errors, and the
        paths' mean undiscounted return and length."""
        cfg, policy = self.cfg, self.policy
        mask = paths["mask"].bool()
        adv = self.advantages(paths)[mask]
        obs, act = paths["observations"][:, :-1][mask], paths["actions"][mask]
        params = list(policy.parameters())

        surr = (policy.log_prob(obs, act) * adv).mean()
        g = parameters_to_vector(torch.autograd.grad(surr, params))
        with torch.no_grad():
            old_mean, old_log_std = policy(obs), policy.log_std.detach().clone()

        fisher_obs = obs
        if cfg.hvp_sample_frac < 1.0:  # mjrl's hvp_sample_frac: a subsample, with replacement
            n = obs.shape[0]
            idx = torch.randint(n, (max(1, int(cfg.hvp_sample_frac * n)),), device=obs.device)
            fisher_obs = obs[idx]
        fvp = fisher_operator(policy, fisher_obs, cfg.damping)

        x = cg_solve(fvp, g, x0=g, iters=cfg.cg_iters)
        gx = g.dot(x)
        alpha = torch.sqrt((cfg.step_size / (gx + 1e-10)).abs())
        with torch.no_grad():
            # Copied into the parameters' own storage: vector_to_parameters would leave them as
            # views into one vector, whose alignment changes BLAS's summation order (a resumed
            # run, which loads fresh tensors, would then drift in the last digits).
            new = parameters_to_vector(params) + alpha * x
            offset = 0
            for p in params:
                p.copy_(new[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            policy.clamp_log_std_()
            surr_after = (policy.log_prob(obs, act) * adv).mean()
            kl = policy.kl(old_mean, old_log_std, obs)

        returns = discounted_returns(paths["rewards"], mask, cfg.gamma)
        fit = self.baseline.fit(paths["observations"], returns, mask)
        self.updates += 1
        metrics = {
            "surrogate_before": surr.detach(),
            "surrogate_after": surr_after,
            "kl": kl,
            "alpha": alpha,
            "delta": alpha**2 * gx,
            "grad_norm": g.norm(),
            "npg_grad_norm": x.norm(),
            "log_std": policy.log_std.detach().mean(),
            "return": (paths["rewards"] * mask).sum(1).mean(),
            "path_length": mask.sum(1).float().mean(),
            **fit,
        }
        return floats(metrics)


# ----------------------------------------------------------------------------- paths


@torch.no_grad()
def sample_paths(env, policy, deterministic: bool = False, max_steps: int | None = None):
    """One episode in each of a vector env's N sub-envs, as padded paths (module diagram).

    `env` is a torch vector env with next-step autoreset (`offline.morel.pmdp.PessimisticMDP`):
    reset()
    -> (obs (N, S), info); step(actions (N, A)) -> obs, reward, terminated, truncated (N,) each,
    info. Steps continue until every sub-env has ended once (or `max_steps`, default
    `env.horizon`); what an env does after its episode is masked out. If the env reports
    info["halted"], the paths carry it as "halted" (B, T).
    """
    obs, _ = env.reset()
    max_steps = max_steps or env.horizon
    N, dev = obs.shape[0], obs.device
    alive = torch.ones(N, dtype=torch.bool, device=dev)
    keys = ("actions", "rewards", "terminated", "mask", "halted")
    seq: dict[str, list] = {"observations": [obs], **{k: [] for k in keys}}
    for t in range(max_steps):
        action = policy.mode(obs) if deterministic else policy.sample(obs)
        obs, reward, term, trunc, info = env.step(action)
        seq["observations"].append(obs)
        seq["actions"].append(action)
        seq["rewards"].append(reward.float() * alive)
        seq["terminated"].append(term & alive)
        seq["mask"].append(alive)
        seq["halted"].append(info.get("halted", torch.zeros_like(alive)) & alive)
        alive = alive & ~(term | trunc)
        if t % 16 == 15 and not alive.any():  # a host sync only every 16 steps
            break
    return {k: torch.stack(v, 1) for k, v in seq.items()}
