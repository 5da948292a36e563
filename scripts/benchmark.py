"""Throughput benchmarks: what the toolkit's speed claims rest on.

    python scripts/benchmark.py                      # every section
    python scripts/benchmark.py --only render        # pixel env steps/s, fast vs dm-control default
    python scripts/benchmark.py --only replay        # sampling 16 x 50 frames from a full replay
    python scripts/benchmark.py --only planet --device cuda   # RSSM update and CEM action time
    python scripts/benchmark.py --only dreamer   # DreamerV2 update: pixels, state, state-cpu sizes
    python scripts/benchmark.py --only offline   # gradient steps/s of each offline algorithm
    python scripts/benchmark.py --only ensemble  # MOReL ensemble: training steps/s, batched vs loop
    python scripts/benchmark.py --only pmdp      # MOReL pessimistic MDP: model rollout steps/s
    python scripts/benchmark.py --only npg       # MOReL's NPG update; Fisher products two ways
    python scripts/benchmark.py --only controller  # one CMA-ES generation: process pool vs Ray
    python scripts/benchmark.py --only tt        # Trajectory Transformer beam: KV cache vs none
    python scripts/benchmark.py --only p2e       # Plan2Explore: update cost, disagreement two ways
    python scripts/benchmark.py --json out.json      # also write the figures as JSON

Figures are medians over repeats, printed as a table; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.nn.utils import parameters_to_vector
from torch.profiler import ProfilerActivity, profile

from wmrl import envs
from wmrl.envs.replay import EpisodeReplay
from wmrl.infra import command
from wmrl.infra.config import apply_overrides
from wmrl.offline.common import Normalizer
from wmrl.offline.dt import SequenceBuffer
from wmrl.offline.morel.pmdp import PessimisticMDP
from wmrl.offline.morel.train import MemberModel
from wmrl.offline.trainer import ALGORITHMS, OfflineConfig
from wmrl.planners.beam import BeamConfig, beam_plan
from wmrl.planners.cem import CEMConfig, cem_plan
from wmrl.planners.controller import Evaluator, RolloutSpec, num_params
from wmrl.planners.methods.dreamer import PRESETS as DREAMER_PRESETS
from wmrl.planners.methods.dreamer import (
    DreamerConfig,
    build_plan2explore,
    make_update,
    random_batch,
    setup_update,
)
from wmrl.planners.npg import NPG, fisher_operator
from wmrl.worldmodels.ensemble import DynamicsEnsemble, EnsembleConfig
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig
from wmrl.worldmodels.nets import make_optimizer, mlp
from wmrl.worldmodels.rssm import RSSM
from wmrl.worldmodels.trajectory_transformer import (
    Discretizer,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
)
from wmrl.worldmodels.vae import ConvVAE

RENDER_TASKS = ("dmc:cartpole-swingup", "dmc:walker-walk", "dmc:cheetah-run")


def env_steps_per_second(env_id: str, steps: int, fast_render: bool, seed: int = 0) -> float:
    """Rendered env steps/s at 64 x 64 with action_repeat=1 and random actions (resets included)."""
    env = envs.make(env_id, seed=seed, action_repeat=1, fast_render=fast_render)
    rng = np.random.default_rng(seed)
    shape = env.action_space.shape
    env.reset()
    for _ in range(20):  # warm-up: GL context, shader compilation
        env.step(rng.uniform(-1, 1, shape))
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, shape))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def bench_render(steps: int, default_steps: int) -> list[dict]:
    rows = []
    for env_id in RENDER_TASKS:
        fast = env_steps_per_second(env_id, steps, fast_render=True)
        default = env_steps_per_second(env_id, default_steps, fast_render=False)
        rows.append(
            {"task": env_id, "fast_steps_per_s": fast, "default_steps_per_s": default,
             "speedup": fast / default}
        )  # fmt: skip
    return rows


def bench_replay(capacity: int, batch: int, length: int, repeats: int) -> dict:
    """Median time to sample (batch, length) chunks of 64 x 64 x 3 uint8 frames, replay full."""
    rng = np.random.default_rng(0)
    replay = EpisodeReplay(capacity, seed=0)
    steps = 500  # episodes of 500 transitions, as walker-walk at action repeat 2
    frames = rng.integers(0, 256, (steps + 1, 64, 64, 3), dtype=np.uint8)
    for _ in range(capacity // (steps + 1) + 2):  # one episode more than fits: the ring wraps
        replay.add_episode(
            {"observations": frames,
             "actions": rng.uniform(-1, 1, (steps, 6)).astype(np.float32),
             "rewards": rng.random(steps).astype(np.float32),
             "terminations": np.zeros(steps, bool),
             "truncations": np.eye(1, steps, steps - 1, dtype=bool)[0]}
        )  # fmt: skip
    for _ in range(5):
        replay.sample(batch, length)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        replay.sample(batch, length)
        times.append(time.perf_counter() - start)
    return {
        "capacity": capacity,
        "rows": len(replay),
        "batch": f"{batch} x {length}",
        "median_ms": 1e3 * float(np.median(times)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
    }


def timed(fn, device: str, repeats: int, warmup: bool = True) -> float:
    """Median milliseconds of `repeats` calls of fn after one untimed warm-up call (allocator,
    kernels; skipped without `warmup`), synchronising CUDA around each."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


# Operators that only make views, allocate or read metadata: no kernel runs for them.
NO_KERNEL_OPS = frozenset(
    f"aten::{name}"
    for name in (
        "as_strided alias view _unsafe_view _reshape_alias reshape view_as flatten unflatten "
        "expand expand_as t transpose permute movedim select slice narrow split split_with_sizes "
        "chunk unbind squeeze unsqueeze squeeze_ unsqueeze_ detach detach_ lift_fresh to "
        "_to_copy_noop contiguous resolve_conj resolve_neg empty empty_like empty_strided set_ "
        "result_type is_nonzero item _local_scalar_dense _has_compatible_shallow_copy_type"
    ).split()
)


def dispatched_ops(fn) -> int:
    """How many operators that run a kernel one call of fn dispatches: aten calls that are not
    views or allocations and call no such operator themselves (a composite like `matmul`
    counts through the `mm` it calls). On a GPU, about the call's kernel launches."""

    def runs_kernel(event) -> bool:
        return event.name.startswith("aten::") and event.name not in NO_KERNEL_OPS

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(
        1
        for e in prof.events()
        if runs_kernel(e) and not any(runs_kernel(c) for c in e.cpu_children)
    )


def bench_planet(device: str, repeats: int, batch: tuple[int, int] = (50, 50)) -> dict:
    """PlaNet at the paper's sizes: one RSSM update on a `batch` (B, T) = 50 x 50 of 64 x 64
    pixels (Adam step included), and one CEM action (1000 candidates x horizon 12 x 10
    iterations)."""
    torch.manual_seed(0)
    model = RSSM((64, 64, 3), 1).to(device)
    optimizer = make_optimizer(model)
    B, T = batch
    batch = {
        "obs": torch.randint(0, 256, (B, T, 64, 64, 3), dtype=torch.uint8, device=device),
        "action": torch.rand(B, T, 1, device=device) * 2 - 1,
        "reward": torch.rand(B, T, device=device),
        "is_first": torch.zeros(B, T, dtype=torch.bool, device=device),
    }
    batch["is_first"][:, 0] = True
    update_ms = timed(lambda: model.train_step(batch, optimizer), device, repeats)
    belief = {k: v[:1] for k, v in model.initial(1).items()}
    cem_ms = timed(lambda: cem_plan(model, belief, 1, CEMConfig()), device, repeats)
    return {"device": device, f"update_{B}x{T}_ms": update_ms, "cem_action_ms": cem_ms}


def state_cpu_config() -> DreamerConfig:
    """DreamerV2's config at the `state-cpu` preset's sizes, as `--preset state-cpu` makes it."""
    return apply_overrides(DreamerConfig(), DREAMER_PRESETS["state-cpu"], "preset")


DREAMER_SIZES = ("pixels", "state", "state_cpu")  # bench_dreamer's rows, in order


def bench_dreamer(
    device: str,
    repeats: int,
    compile: bool = False,
    size: tuple[int, int] = (16, 50),
    sizes: tuple[str, ...] = DREAMER_SIZES,
) -> dict:
    """DreamerV2 at dmc_vision's sizes: one update (world model on a `size` = 16 x 50 batch, then
    the actor-critic imagining 15 steps from all 800 posteriors, both optimiser steps), on 64 x 64
    pixels and on a 5-dim state vector (dmc_proprio's MLP encoder and decoder). The update is
    the training loop's, which never waits for the device: `*_ms` is one update with the device
    synchronised around it, `*_updates_per_s` the rate of `repeats` updates in a row, as in
    training, `*_ops` the operators one eager update dispatches (`dispatched_ops`). With
    `compile`, also with the per-step functions torch.compile'd. `state_cpu` is the same update
    at the `state-cpu` preset's sizes (deter 64, 16 x 16 latents, 2 x 64 MLPs), the one issue
    #20's CPU runs train. `sizes` picks which of these rows run (`DREAMER_SIZES` order)."""
    out = {"device": device}
    shapes = {"pixels": (64, 64, 3), "state": (5,), "state_cpu": (5,)}
    bases = {"pixels": DreamerConfig(), "state": DreamerConfig(), "state_cpu": state_cpu_config()}
    for suffix, compiled in (("", False), ("_compiled", True))[: 1 + compile]:
        for name in sizes:
            torch.manual_seed(0)
            obs_shape, cfg = shapes[name], dataclasses.replace(bases[name], compile=compiled)
            model, ac, optimizer = setup_update(obs_shape, 1, device, cfg)
            batch = random_batch(obs_shape, 1, *size)
            update = make_update(model, ac, optimizer, device, sync=False)
            key = f"update_{size[0]}x{size[1]}_{name}{suffix}"
            out[f"{key}_ms"] = timed(lambda u=update, b=batch: u(b), device, repeats)
            in_a_row = timed(lambda u=update, b=batch: [u(b) for _ in range(repeats)], device,
                             1, warmup=False)  # fmt: skip
            out[f"{key}_updates_per_s"] = 1e3 * repeats / in_a_row
            if not compiled:
                out[f"{key}_ops"] = dispatched_ops(lambda u=update, b=batch: u(b))
    return out


def bench_p2e(device: str, repeats: int) -> dict:
    """Plan2Explore at the `state-cpu` preset's sizes (cartpole: 5-dim state, 1-dim action;
    16 x 50 batch, 15 imagined steps, 10 members of 2 x 64): one whole update with `--explore
    none` and with `plan2explore` (world model, task actor-critic, then the ensemble and the
    explorer), and the explorer's reward alone, the disagreement forward and backward to its
    inputs on the 800 x 15 imagined steps, computed two ways: the members as a batched matmul
    on the input expanded to each member with autograd through the plain std formula (the
    plain way), and as `DisagreementEnsemble.disagreement` does it (one wide matmul for the
    first layer, the spread's gradient in closed form)."""
    out = {"device": device}
    cfg = state_cpu_config()
    B, T = cfg.batch_size, cfg.batch_length
    batch = random_batch((5,), 1, B, T)
    for explore in ("none", "plan2explore"):
        torch.manual_seed(0)
        run_cfg = dataclasses.replace(cfg, explore=explore)
        model, ac, optimizer = setup_update((5,), 1, device, run_cfg)
        p2e = build_plan2explore(run_cfg, model, device)
        update = make_update(model, ac, optimizer, device, sync=False, p2e=p2e)
        out[f"update_{explore}_ms"] = timed(lambda u=update: u(batch), device, repeats)
    out["update_ratio"] = out["update_plan2explore_ms"] / out["update_none_ms"]
    ensemble = p2e.ensemble
    for param in ensemble.parameters():
        param.requires_grad_(False)  # frozen, as while the explorer learns
    x = torch.randn(B * (T - 1) * cfg.ac.horizon, ensemble.in_dim, device=device)
    x.requires_grad_(True)

    def plain():
        expanded = x.expand(ensemble.members, -1, -1)
        pred = ensemble.net(expanded)
        spread = (pred - pred.mean(0)).pow(2).mean(0).sqrt().mean(-1)
        torch.autograd.grad(spread.sum(), x)

    def ours():
        torch.autograd.grad(ensemble.disagreement(x).sum(), x)

    out["reward_steps"] = x.shape[0]
    out["disagreement_plain_ms"] = timed(plain, device, repeats)
    out["disagreement_ms"] = timed(ours, device, repeats)
    out["disagreement_speedup"] = out["disagreement_plain_ms"] / out["disagreement_ms"]
    return out


def dt_batch(batch_size: int, seq_len: int, device: str) -> dict:
    """A batch of DT windows (`SequenceBuffer`) of 20 random 1000-step episodes in Hopper's
    dimensions, on the device: what the trainer feeds DT, padding included."""
    g = np.random.default_rng(0)
    episodes = [
        {"observations": g.normal(size=(1001, 11)), "actions": g.uniform(-1, 1, (1000, 3)),
         "rewards": g.normal(size=1000)}
        for _ in range(20)
    ]  # fmt: skip
    buffer = SequenceBuffer(episodes, Normalizer.identity(11), seq_len, 0.001, device)
    return buffer.sample(batch_size, torch.Generator(device).manual_seed(0))


def bench_offline(device: str, updates: int) -> dict:
    """Gradient steps/s of each offline algorithm at its default (CORL) sizes and batch, on
    Hopper's dimensions (11-dim states, 3-dim actions), random batches already on the device.
    DT at its default batch of 64 windows of 20 steps (CORL's dt.py; antmaze's configs) and, on
    an accelerator, also at the 4096 of CORL's other configs (dt_batch4096)."""
    out = {"device": device}
    for name, cls in ALGORITHMS.items():
        torch.manual_seed(0)
        cfg = getattr(OfflineConfig(), name)
        if name == "dt":
            sizes = (cfg.batch_size,) if device == "cpu" else (cfg.batch_size, 4096)
            for B in sizes:
                algo = cls(11, 3, dataclasses.replace(cfg, batch_size=B)).to(device)
                batch = dt_batch(B, cfg.seq_len, device)
                ms = timed(lambda a=algo, b=batch: [a.update(b) for _ in range(updates)], device, 3)
                out[name if B == cfg.batch_size else f"{name}_batch{B}"] = 1e3 * updates / ms
            continue
        if hasattr(cfg, "rnd_steps"):  # SAC-RND: a short RND phase first, then SAC is timed
            cfg = dataclasses.replace(cfg, rnd_steps=20)
        algo = cls(11, 3, cfg).to(device)
        B = cfg.batch_size
        batch = {
            "observations": torch.randn(B, 11, device=device),
            "actions": torch.rand(B, 3, device=device) * 2 - 1,
            "rewards": torch.randn(B, device=device),
            "next_observations": torch.randn(B, 11, device=device),
            "dones": torch.zeros(B, device=device),
            "next_actions": torch.rand(B, 3, device=device) * 2 - 1,
        }
        for _ in range(getattr(cfg, "rnd_steps", 0)):
            algo.update(batch)
        ms = timed(lambda a=algo, b=batch: [a.update(b) for _ in range(updates)], device, 3)
        out[name] = 1e3 * updates / ms
    return out


def bench_ensemble(device: str, steps: int = 20, repeats: int = 3) -> dict:
    """MOReL's ensemble at its default sizes (4 members, 2 x 512 ReLU, 256 rows per member) on
    Hopper's dimensions (11-dim states, 3-dim actions): training steps/s of `fit`'s inner step
    (each member's own rows gathered, loss, backward, Adam step), and one forward+backward of
    the batched module against a Python loop over 4 separate `nets.mlp` members of the same
    sizes (same inputs, same squared-error loss)."""
    S, A, K = 11, 3, 100_000
    torch.manual_seed(0)
    cfg = EnsembleConfig()
    N, B, D = cfg.members, cfg.batch_size, S + 1  # regression outputs: delta, reward
    model = DynamicsEnsemble(S, A, cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = torch.randn(K, S + A, device=device)  # normalised rows, as `fit` holds them
    y = torch.randn(K, D, device=device)
    term = torch.zeros(K, device=device)

    def train_steps():
        for _ in range(steps):
            idx = torch.randint(K, (N, B), device=device)  # (N, B): each member its own rows
            model.update(optimizer, x[idx], y[idx], term[idx])

    out = {"device": device, "members": N, "hidden": cfg.hidden, "batch": B}
    out["train_steps_per_s"] = 1e3 * steps / timed(train_steps, device, repeats)
    xb = torch.randn(N, B, S + A, device=device)
    yb = torch.randn(N, B, D + 1, device=device)  # + the termination logit
    members = [mlp(S + A, D + 1, cfg.hidden, cfg.layers).to(device) for _ in range(N)]

    def batched():
        for _ in range(steps):
            mean, _, logit = model(xb)
            ((torch.cat([mean, logit[..., None]], -1) - yb) ** 2).mean((1, 2)).sum().backward()

    def loop():
        for _ in range(steps):
            sum(((net(xb[m]) - yb[m]) ** 2).mean() for m, net in enumerate(members)).backward()

    out["batched_fwd_bwd_ms"] = timed(batched, device, repeats) / steps
    out["loop_fwd_bwd_ms"] = timed(loop, device, repeats) / steps
    out["batched_speedup"] = out["loop_fwd_bwd_ms"] / out["batched_fwd_bwd_ms"]
    return out


def bench_pmdp(device: str, steps: int = 50, num_envs: int = 200) -> dict:
    """Model steps/s of MOReL's pessimistic MDP: `num_envs` paths (MOReL's 200 per iteration)
    stepped by the default ensemble (4 x 2 x 512) on Hopper's dimensions, with random actions;
    the threshold is infinite, so every path keeps stepping (no HALT resets)."""
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(11, 3, EnsembleConfig()).to(device).eval()
    pmdp = PessimisticMDP(
        MemberModel(ensemble), np.random.default_rng(0).normal(size=(100, 11)), float("inf"),
        gym.spaces.Box(-1.0, 1.0, (3,), np.float32), horizon=10**6, num_envs=num_envs,
        device=device, seed=0,
    )  # fmt: skip
    pmdp.reset(seed=0)
    actions = torch.rand(num_envs, 3, device=device) * 2 - 1
    ms = timed(lambda: [pmdp.step(actions) for _ in range(steps)], device, 3)
    rate = 1e3 * steps * num_envs / ms
    return {"device": device, "num_envs": num_envs, "model_steps_per_s": rate}


def bench_npg(device: str, paths: int = 200, horizon: int = 700, repeats: int = 3) -> dict:
    """One NPG update (MOReL's 200 paths x 700 steps = 140k samples, Hopper's dims, the (64, 64)
    policy) and one Fisher-vector product on those samples: `planners.npg.fisher_operator`'s
    closed form against mjrl's double backpropagation through the mean KL (written out here as
    the reference)."""
    torch.manual_seed(0)
    npg = NPG(11, 3).to(device)
    policy = npg.policy
    obs = torch.randn(paths, horizon + 1, 11, device=device)
    batch = {
        "observations": obs,
        "actions": torch.randn(paths, horizon, 3, device=device),
        "rewards": torch.randn(paths, horizon, device=device),
        "terminated": torch.zeros(paths, horizon, dtype=torch.bool, device=device),
        "mask": torch.ones(paths, horizon, dtype=torch.bool, device=device),
    }
    flat = obs[:, :-1].reshape(-1, 11)
    params = list(policy.parameters())
    v = torch.randn(sum(p.numel() for p in params), device=device)
    with torch.no_grad():
        old_mean, old_log_std = policy(flat), policy.log_std.clone()

    def double_backprop():
        kl = policy.kl(old_mean, old_log_std, flat)
        grads = torch.autograd.grad(kl, params, create_graph=True)
        return torch.autograd.grad(parameters_to_vector(grads).dot(v), params)

    fvp = fisher_operator(policy, flat)
    closed_ms = timed(lambda: fvp(v), device, repeats)
    double_ms = timed(double_backprop, device, repeats)
    update_ms = timed(lambda: npg.update(batch), device, repeats)
    return {
        "device": device,
        "samples": paths * horizon,
        "update_ms": update_ms,
        "fvp_closed_form_ms": closed_ms,
        "fvp_double_backprop_ms": double_ms,
    }


def bench_controller(workers: int, population: int, rollouts: int, max_steps: int | None,
                     patience: int | None) -> dict:  # fmt: skip
    """World Models' CMA-ES on CarRacing-v3: the wall time of one generation (`population`
    candidates x `rollouts` real episodes, the paper's VAE and MDN-RNN sizes, untrained) on a
    pool of `workers` processes and on `workers` Ray actors (a local Ray), same candidates and
    seeds; the workers' start is timed apart from the generation. The returns must agree."""
    torch.manual_seed(0)
    vae, cfg = ConvVAE(z_dim=32), MDNRNNConfig(hidden=256)
    spec = RolloutSpec(
        env_id="gym:CarRacing-v3", env_options={},
        vae={"kwargs": {"z_dim": 32}, "state": vae.state_dict()},
        mdnrnn={"z_dim": 32, "action_dim": 3, "cfg": dataclasses.asdict(cfg),
                "state": MDNRNN(32, 3, cfg).state_dict()},
        action_map="carracing", max_steps=max_steps, patience=patience,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    candidates = rng.normal(scale=0.1, size=(population, num_params(32 + 256, 3)))
    seeds = np.arange(rollouts)
    out = {"population": population, "rollouts": rollouts, "workers": workers,
           "max_steps": max_steps, "patience": patience}  # fmt: skip
    returns = {}
    for backend in ("process", "ray"):
        t0 = time.perf_counter()
        with Evaluator(spec, workers, backend=backend) as evaluator:
            evaluator.returns(candidates[:1], [10**6])  # every worker built (one task: one)
            t1 = time.perf_counter()
            returns[backend] = evaluator.returns(candidates, seeds)
            t2 = time.perf_counter()
        out[f"{backend}_start_s"], out[f"{backend}_generation_s"] = t1 - t0, t2 - t1
    out["same_returns"] = bool(np.array_equal(returns["process"], returns["ray"]))
    out["mean_return"] = float(returns["process"].mean())
    return out


class FullPassTT(TrajectoryTransformer):
    """The Trajectory Transformer without its key/value cache: every sampled token rereads the
    whole context (the "cache" it passes on is the count of tokens read)."""

    def _extend(self, tokens, cache):
        return self(tokens)[:, cache or 0 :], tokens.shape[1]


def bench_tt(device: str, searches: list[tuple[int, int, int]], repeats: int = 3) -> dict:
    """Seconds of beam search per real step for Hopper's sizes (S 11, A 3) and the authors'
    network (random weights), through the key/value cache and with full passes, alternating
    in one process with the same draws: median wall seconds over `repeats` plans
    for each (beam width, horizon, context), 2 expansions."""
    S, A = 11, 3
    data = np.random.default_rng(0).normal(size=(5000, S + A + 2)).astype(np.float32)
    out: dict = {"device": device}
    for width, horizon, context in searches:
        cfg = TrajectoryTransformerConfig(context=context)
        torch.manual_seed(0)
        cached = TrajectoryTransformer(S, A, cfg, Discretizer.fit(data, cfg.bins)).to(device).eval()
        full = FullPassTT(S, A, cfg, Discretizer.fit(data, cfg.bins)).to(device).eval()
        full.load_state_dict(cached.state_dict())
        first = torch.zeros(1, context, dtype=torch.bool)
        first[:, 0] = True
        post = cached.observe(torch.randn(1, context, S), torch.rand(1, context, A) * 2 - 1, first)
        start = {k: v[:, -1] for k, v in post.items()}
        beam = BeamConfig(horizon=horizon, beam_width=width, expansions=2)
        times: dict[str, list[float]] = {"cached": [], "full": []}
        for rep in range(repeats):
            for name, model in (("cached", cached), ("full", full)):
                torch.manual_seed(rep)
                plan = lambda m=model, s=start, b=beam: beam_plan(m, s, b)  # noqa: E731
                times[name].append(timed(plan, device, 1, warmup=False) / 1e3)
        key = f"w{width}_h{horizon}_c{context}"
        out[key] = {name: float(np.median(t)) for name, t in times.items()}
        out[key]["speedup"] = out[key]["full"] / out[key]["cached"]
    return out


def search_shapes(text: str) -> list[tuple[int, int, int]]:
    """'8x5x3,16x5x5' -> [(8, 5, 3), (16, 5, 5)]: beam width x horizon x context."""
    try:
        shapes = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
        if any(len(t) != 3 or min(t) < 1 for t in shapes):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected WIDTHxHORIZONxCONTEXT[,...] of positive integers, e.g. 8x5x3"
        ) from None
    return shapes


def batch_shape(text: str) -> tuple[int, int]:
    """ "16x50" -> (16, 50): a batch of B sequences of T steps."""
    try:
        B, T = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BxT, e.g. 16x50") from None
    if B < 1 or T < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: B and T must be at least 1")
    return B, T


def dreamer_sizes(text: str) -> tuple[str, ...]:
    """argparse type for --dreamer-sizes: names from `DREAMER_SIZES`, kept in that order."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - set(DREAMER_SIZES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose one or more of {','.join(DREAMER_SIZES)}, comma-separated"
        )
    return tuple(n for n in DREAMER_SIZES if n in names)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="render,replay,planet,dreamer,offline,ensemble,pmdp,npg,tt,p2e",
        help="comma-separated: render, replay, planet, dreamer, offline, ensemble, pmdp, npg, "
        "tt, p2e, controller (CarRacing and the ray extra; not in the default set)",
    )
    parser.add_argument(
        "--render-steps", type=int, default=2000, help="steps per task, fast renderer"
    )
    parser.add_argument(
        "--default-steps",
        type=int,
        default=300,
        help="steps per task, dm-control's default renderer",
    )
    parser.add_argument(
        "--replay-capacity", type=int, default=100_000, help="replay rows (env steps)"
    )
    parser.add_argument("--replay-repeats", type=int, default=200, help="timed samples")
    parser.add_argument(
        "--device", default="cpu", help="torch device for the planet, dreamer and offline sections"
    )
    parser.add_argument(
        "--planet-repeats", type=int, default=3, help="timed PlaNet updates/actions"
    )
    parser.add_argument("--dreamer-repeats", type=int, default=3, help="timed DreamerV2 updates")
    parser.add_argument("--p2e-repeats", type=int, default=3,
                        help="p2e: timed updates and disagreement passes")  # fmt: skip
    parser.add_argument("--planet-batch", type=batch_shape, default=(50, 50),
                        help="PlaNet's update batch, BxT (the paper's 50x50)")  # fmt: skip
    parser.add_argument("--dreamer-batch", type=batch_shape, default=(16, 50),
                        help="DreamerV2's update batch, BxT (dmc_vision's 16x50)")  # fmt: skip
    parser.add_argument("--dreamer-sizes", type=dreamer_sizes, default=DREAMER_SIZES,
                        help="dreamer: comma-separated rows to time, of "
                        f"{','.join(DREAMER_SIZES)} (default: all)")  # fmt: skip
    parser.add_argument(
        "--compile",
        action="store_true",
        help="dreamer: also time the update with its per-step functions torch.compile'd",
    )
    parser.add_argument(
        "--offline-updates", type=int, default=50, help="updates per timed offline call"
    )
    parser.add_argument("--controller-workers", type=int, default=2,
                        help="controller: rollout processes, and Ray actors")  # fmt: skip
    parser.add_argument("--controller-population", type=int, default=16)
    parser.add_argument("--controller-rollouts", type=int, default=2)
    parser.add_argument("--controller-max-steps", type=int, default=None,
                        help="controller: episode cap (default: the env's 1000)")  # fmt: skip
    parser.add_argument(
        "--controller-patience",
        type=int,
        default=100,
        help="controller: end after this many unrewarded steps (0: never)",
    )
    parser.add_argument("--tt-searches", type=search_shapes, default=[(8, 5, 3), (16, 5, 5)],
                        help="tt: beam WIDTHxHORIZONxCONTEXT, comma-separated (the authors': "
                        "128x15x5; the cpu preset's: 8x5x3)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    known = ("render", "replay", "planet", "dreamer", "offline", "ensemble", "pmdp", "npg",
             "tt", "p2e", "controller")  # fmt: skip
    unknown = sections - set(known)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(known)}")

    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}"
    }
    if "render" in sections:
        rows = bench_render(args.render_steps, args.default_steps)
        results["render"] = rows
        print("\nPixel env steps/s (64 x 64, action_repeat=1, random actions, resets included)")
        print(f"{'task':24s} {'fast':>10s} {'dm-control default':>20s} {'speed-up':>9s}")
        for r in rows:
            print(f"{r['task']:24s} {r['fast_steps_per_s']:10.0f} {r['default_steps_per_s']:20.0f} "
                  f"{r['speedup']:8.1f}x")  # fmt: skip
    if "replay" in sections:
        r = bench_replay(args.replay_capacity, 16, 50, args.replay_repeats)
        results["replay"] = r
        print(
            f"\nReplay sample {r['batch']} of 64x64x3 uint8 from a full replay "
            f"({r['rows']} rows): median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms"
        )
    if "planet" in sections:
        r = bench_planet(args.device, args.planet_repeats, args.planet_batch)
        results["planet"] = r
        B, T = args.planet_batch
        print(
            f"\nPlaNet on {r['device']}: RSSM update ({B} x {T}, 64x64 pixels) "
            f"{r[f'update_{B}x{T}_ms']:.0f} ms; CEM action (1000 x 12 x 10) "
            f"{r['cem_action_ms']:.1f} ms"
        )
    if "dreamer" in sections:
        r = bench_dreamer(
            args.device, args.dreamer_repeats, args.compile, args.dreamer_batch, args.dreamer_sizes
        )
        results["dreamer"] = r
        B, T = args.dreamer_batch
        print(f"\nDreamerV2 on {r['device']}: update ({B} x {T}, world model + actor-critic)")
        for suffix in ("", "_compiled")[: 1 + args.compile]:
            for name in args.dreamer_sizes:
                key = f"update_{B}x{T}_{name}{suffix}"
                ops = f"  {r[key + '_ops']:6d} kernel ops" if key + "_ops" in r else ""
                print(f"{name + suffix:19s} {r[key + '_ms']:8.0f} ms  "
                      f"{r[key + '_updates_per_s']:7.2f} updates/s{ops}")  # fmt: skip
    if "offline" in sections:
        r = bench_offline(args.device, args.offline_updates)
        results["offline"] = r
        print(f"\nOffline gradient steps/s on {r['device']} (CORL sizes and batches, Hopper dims)")
        for name, v in r.items():
            if name != "device":
                print(f"{name:12s} {v:8.1f}")
    if "ensemble" in sections:
        r = bench_ensemble(args.device)
        results["ensemble"] = r
        print(
            f"\nMOReL ensemble on {r['device']} ({r['members']} x {r['hidden']} units, batch "
            f"{r['batch']} per member): {r['train_steps_per_s']:.1f} training steps/s; "
            f"forward+backward batched {r['batched_fwd_bwd_ms']:.1f} ms, loop over members "
            f"{r['loop_fwd_bwd_ms']:.1f} ms ({r['batched_speedup']:.2f}x)"
        )
    if "pmdp" in sections:
        r = bench_pmdp(args.device)
        results["pmdp"] = r
        print(
            f"\nMOReL P-MDP on {r['device']}: {r['model_steps_per_s']:.0f} model steps/s "
            f"({r['num_envs']} paths at once, 4 x 512 ensemble)"
        )
    if "npg" in sections:
        r = bench_npg(args.device)
        results["npg"] = r
        print(
            f"\nMOReL NPG on {r['device']} ({r['samples']} samples): update "
            f"{r['update_ms']:.0f} ms; Fisher-vector product closed form "
            f"{r['fvp_closed_form_ms']:.0f} ms, double backprop "
            f"{r['fvp_double_backprop_ms']:.0f} ms"
        )
    if "tt" in sections:
        r = bench_tt(args.device, args.tt_searches)
        results["tt"] = r
        print(f"\nTrajectory Transformer beam search on {r['device']}: seconds per real step "
              "(Hopper sizes, the authors' network, 2 expansions)")  # fmt: skip
        header = ("width x horizon x context", "full passes", "cached", "speed-up")
        print(f"{header[0]:26s} {header[1]:>12s} {header[2]:>8s} {header[3]:>9s}")
        for w, h, c in args.tt_searches:
            v = r[f"w{w}_h{h}_c{c}"]
            print(f"{f'{w} x {h} x {c}':26s} {v['full']:12.2f} {v['cached']:8.2f} "
                  f"{v['speedup']:8.2f}x")  # fmt: skip
    if "p2e" in sections:
        r = bench_p2e(args.device, args.p2e_repeats)
        results["p2e"] = r
        print(f"\nPlan2Explore on {r['device']} (state-cpu sizes, 16 x 50 batch): update "
              f"{r['update_none_ms']:.0f} ms with --explore none, "
              f"{r['update_plan2explore_ms']:.0f} ms with plan2explore "
              f"({r['update_ratio']:.2f}x); disagreement on {r['reward_steps']} imagined steps, "
              f"forward and backward: plain {r['disagreement_plain_ms']:.0f} ms, ours "
              f"{r['disagreement_ms']:.0f} ms ({r['disagreement_speedup']:.2f}x)")  # fmt: skip
    if "controller" in sections:
        r = bench_controller(args.controller_workers, args.controller_population,
                             args.controller_rollouts, args.controller_max_steps,
                             args.controller_patience or None)  # fmt: skip
        results["controller"] = r
        print(f"\nCMA-ES generation on CarRacing-v3 ({r['population']} x {r['rollouts']} "
              f"episodes, patience {r['patience']}, {r['workers']} workers; mean return "
              f"{r['mean_return']:.1f}, same returns on both: {r['same_returns']})")  # fmt: skip
        for backend in ("process", "ray"):
            print(f"{backend:8s} start {r[backend + '_start_s']:6.1f} s   generation "
                  f"{r[backend + '_generation_s']:6.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    command(main)
