"""The C model of World Models (Ha and Schmidhuber 2018, sec. 2.3 and 3.3): a linear controller
a_t = tanh(W [z_t, h_t] + b), its parameters searched with CMA-ES (the `cma` package), each
candidate's fitness the mean return of `rollouts` episodes, evaluated in parallel worker processes
in the real env or "in the dream" (inside the MDN-RNN, as the paper's Doom experiment).

Actions. Envs from `envs.make` take actions in [-1, 1] (bounded Box spaces are rescaled), so the
tanh output is the action, mapped linearly onto the env's bounds. The reference CarRacing
controller (`carracing/model.py`) instead maps tanh to steer in [-1, 1], gas = (tanh + 1) / 2 and
brake = clip(tanh, 0, 1): with `action_map="carracing"` (the default for CarRacing ids) the brake
is clipped the same way (in the normalised space: 2 clip(tanh, 0, 1) - 1); gas already matches.

Fitness. CMA-ES minimises, so it is told -fitness; fitness = mean return - weight_decay *
mean(params^2), the L2 penalty of the reference's `es.py` CMAES wrapper. All candidates of one
generation see the same env seeds (common random numbers), as the reference's workers do.

Workers. `Evaluator(spec, workers=N)` starts N processes (spawn), each building its own env and
CPU copies of the VAE and MDN-RNN from `spec` once; workers=0 evaluates in this process. With
`backend="ray"` the workers are Ray actors instead, on a local Ray or on a cluster (`ray_address`),
so that a generation's 64 x 16 rollouts spread over many machines; each task seeds its own env and
torch, so the fitness values are the same whichever backend, and however many workers, run them.
"""

from __future__ import annotations

import io
import multiprocessing
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch

from wmrl.envs.registry import make
from wmrl.infra.cluster import connect_ray
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig, WorldModels
from wmrl.worldmodels.vae import ConvVAE


@dataclass
class ControllerConfig:
    """CMA-ES on the linear controller; defaults are the paper's CarRacing values."""

    population: int = 64  # CMA-ES population (the paper's 64 workers, one candidate each)
    rollouts: int = 16  # episodes per candidate; its fitness is their mean return
    sigma0: float = 0.1  # initial CMA-ES step size (the reference's sigma_init)
    generations: int = 2000  # the budget (the reference trains until stopped)
    weight_decay: float = 0.01  # L2 penalty on the parameters in the fitness (reference es.py)
    workers: int = 4  # rollout processes; 0 runs rollouts in the main process (ray: one
    # actor per CPU of the cluster)
    backend: str = "process"  # process: a local process pool; ray: Ray actors (the ray extra)
    mode: str = "real"  # real: rollouts in the env; dream: inside the MDN-RNN
    temperature: float | None = None  # tau of dream rollouts; none: the MDN-RNN's temperature
    action_map: str = "auto"  # tanh, carracing (reference brake clipping), auto (by env id)
    max_steps: int | None = None  # episode cap; none: the env's time limit (dream: 1000)
    patience: int | None = None  # real training rollouts end after this many steps in a row
    # without a positive reward (CarRacing: off the track or stopped), scored by their return so
    # far; none: never (the reference). Evaluations always run whole episodes.
    eval_every: int = 25  # generations between evaluations of the mean (the reference's 25)
    eval_episodes: int = 100  # real-env episodes per evaluation (the paper averages 100)
    checkpoint_every: int = 1  # generations between checkpoints

    def __post_init__(self):
        if self.mode not in ("real", "dream"):
            raise ValueError(f"controller mode must be 'real' or 'dream', got {self.mode!r}")
        if self.backend not in ("process", "ray"):
            raise ValueError(f"controller backend must be process or ray, got {self.backend!r}")
        if self.action_map not in ("auto", "tanh", "carracing"):
            raise ValueError(f"action_map must be auto, tanh or carracing, got {self.action_map!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 step (or none), got {self.patience}")
        if self.population < 2 or self.rollouts < 1:
            raise ValueError(f"need population >= 2 and rollouts >= 1, got {self.population}, "
                             f"{self.rollouts}")  # fmt: skip


def resolve_action_map(action_map: str, env_id: str) -> str:
    """Resolve "auto": "carracing" for CarRacing ids, else "tanh"."""
    if action_map == "auto":
        return "carracing" if "CarRacing" in env_id else "tanh"
    return action_map


class LinearController:
    """a = tanh(W x + b) from a flat parameter vector [W (A, F) row-major, b (A,)].

    Args:
        params: (A * F + A,) numpy or torch.
        feature_dim: F (z_dim + hidden for World Models' [z, h]); action_dim: A.
        action_map: "tanh" or "carracing" (see the module docstring).
    """

    def __init__(self, params, feature_dim: int, action_dim: int, action_map: str = "tanh"):
        params = torch.as_tensor(np.asarray(params), dtype=torch.float32)
        if params.numel() != num_params(feature_dim, action_dim):
            raise ValueError(
                f"{params.numel()} controller parameters for features {feature_dim} and actions "
                f"{action_dim}; expected {num_params(feature_dim, action_dim)}"
            )
        self.W = params[: action_dim * feature_dim].reshape(action_dim, feature_dim)
        self.b = params[action_dim * feature_dim :]
        self.action_map = action_map

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """features (..., F) -> actions (..., A) in [-1, 1]."""
        a = torch.tanh(features.float() @ self.W.to(features.device).T + self.b.to(features.device))
        if self.action_map == "carracing":
            a = torch.cat([a[..., :2], 2 * a[..., 2:3].clamp(0, 1) - 1, a[..., 3:]], -1)
        return a


def num_params(feature_dim: int, action_dim: int) -> int:
    """Parameters of the linear controller: (F + 1) * A (867 for CarRacing's 288 -> 3)."""
    return (feature_dim + 1) * action_dim


class ControllerSearch:
    """CMA-ES (cma.CMAEvolutionStrategy) maximising a fitness; picklable for checkpoints.

    Args:
        dim: parameters; x0: the start (zeros by default); seed: cma's seed.
    """

    def __init__(self, dim: int, cfg: ControllerConfig, seed: int = 0, x0=None):
        import cma  # with scipy and matplotlib: loaded when a search starts, not with planners

        x0 = np.zeros(dim) if x0 is None else np.asarray(x0, float)
        opts = {"popsize": cfg.population, "seed": int(seed) + 1, "verbose": -9}
        self.es = cma.CMAEvolutionStrategy(x0, cfg.sigma0, opts)
        self.weight_decay = cfg.weight_decay
        self.generation = 0
        self.best_fitness, self.best_params = -np.inf, x0.copy()

    def ask(self) -> np.ndarray:
        """The candidates of this generation: (population, dim)."""
        self._solutions = np.asarray(self.es.ask())
        return self._solutions

    def tell(self, returns: np.ndarray) -> dict[str, float]:
        """Report the candidates' mean returns (population,); returns generation statistics."""
        returns = np.asarray(returns, float)
        penalty = self.weight_decay * np.mean(self._solutions**2, axis=1)
        fitness = returns - penalty
        self.es.tell(list(self._solutions), list(-fitness))
        self.generation += 1
        i = int(np.argmax(fitness))
        if fitness[i] > self.best_fitness:
            self.best_fitness, self.best_params = float(fitness[i]), self._solutions[i].copy()
        return {
            "return_mean": float(returns.mean()),
            "return_max": float(returns.max()),
            "return_min": float(returns.min()),
            "fitness_best_ever": self.best_fitness,
            "sigma": float(self.es.sigma),
        }

    @property
    def mean(self) -> np.ndarray:
        """The distribution's mean (cma's xfavorite): the controller to evaluate and deploy."""
        return np.asarray(self.es.result.xfavorite)

    def state_bytes(self) -> torch.Tensor:
        """The whole search pickled into a uint8 tensor (checkpoints load weights_only)."""
        return torch.frombuffer(bytearray(pickle.dumps(self)), dtype=torch.uint8)

    @staticmethod
    def from_bytes(data: torch.Tensor) -> ControllerSearch:
        """The search `state_bytes` saved. This unpickles: only for the run's own checkpoints.
        Searches saved before the packages installed as `wmrl` name `planners.controller`."""
        return _Unpickler(io.BytesIO(data.numpy().tobytes())).load()


class _Unpickler(pickle.Unpickler):
    """Reads pickles whose classes name the toolkit's packages without the `wmrl.` prefix."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ("envs", "worldmodels", "planners", "offline", "infra"):
            module = "wmrl." + module
        return super().find_class(module, name)


# -- rollouts ---------------------------------------------------------------------------------


@dataclass
class RolloutSpec:
    """Everything a worker needs to build its env and models (picklable)."""

    env_id: str
    env_options: dict
    vae: dict  # {"kwargs": ConvVAE's arguments, "state": state_dict on CPU}
    mdnrnn: dict  # {"z_dim", "action_dim", "cfg": MDNRNNConfig fields, "state": state_dict}
    action_map: str = "tanh"  # resolved: tanh or carracing
    mode: str = "real"
    temperature: float | None = None
    max_steps: int | None = None
    patience: int | None = None  # real episodes end after this many steps without reward > 0
    initial_mu: np.ndarray | None = None  # (N, Z) first-frame encodings, dream starts
    initial_logvar: np.ndarray | None = None
    observe_sample: bool = True
    extra: dict = field(default_factory=dict)


def build_model(spec: RolloutSpec, device="cpu"):
    """The WorldModels adapter described by `spec`, in eval mode."""
    vae = ConvVAE(**spec.vae["kwargs"])
    vae.load_state_dict(spec.vae["state"])
    m = spec.mdnrnn
    mdnrnn = MDNRNN(m["z_dim"], m["action_dim"], MDNRNNConfig(**m["cfg"]))
    mdnrnn.load_state_dict(m["state"])
    model = WorldModels(vae, mdnrnn, observe_sample=spec.observe_sample).to(device).eval()
    if spec.temperature is not None:
        model.temperature = spec.temperature
    return model


class Rollouts:
    """Episodes of a linear controller with a World Models model, real or dreamed."""

    def __init__(self, spec: RolloutSpec, env=None):
        self.spec = spec
        self.model = build_model(spec)
        self.env = env
        if spec.mode == "real" and env is None:
            self.env = make(spec.env_id, **spec.env_options)

    def controller(self, params) -> LinearController:
        return LinearController(
            params, self.model.feature_dim, self.model.action_dim, self.spec.action_map
        )

    def run(self, params, seeds) -> list[float]:
        """Returns of one episode per seed."""
        if self.spec.mode == "dream":
            return self.dream(params, seeds)[0]
        return [self.real(params, seed)[0] for seed in seeds]

    @torch.no_grad()
    def real(self, params, seed: int, record: bool = False):
        """One env episode: (return, frames (T+1, H, W, C) uint8 if `record` else None)."""
        env, model, ctrl = self.env, self.model, self.controller(params)
        torch.manual_seed(seed)
        obs, _ = env.reset(seed=int(seed))
        frames = [obs] if record else None
        state, is_first = None, True
        action = torch.zeros(1, model.action_dim)
        ret, t, unrewarded = 0.0, 0, 0
        while self.spec.max_steps is None or t < self.spec.max_steps:
            obs_t = torch.from_numpy(np.array(obs, dtype=np.uint8))[None, None]
            first = torch.tensor([[is_first]])
            post = model.observe(obs_t, action[:, None], first, state)
            state = {k: v[:, -1] for k, v in post.items()}
            action = ctrl(model.features(state))
            obs, reward, terminated, truncated, _ = env.step(action[0].numpy())
            ret, t, is_first = ret + float(reward), t + 1, False
            unrewarded = 0 if reward > 0 else unrewarded + 1
            if record:
                frames.append(obs)
            if terminated or truncated or unrewarded == self.spec.patience:
                break
        return ret, (np.stack(frames) if record else None)

    @torch.no_grad()
    def dream(self, params, seeds, record: bool = False):
        """Episodes inside the MDN-RNN, one per seed, batched: (returns, frames).

        Each starts from z sampled from a stored first-frame encoding and h = 0, then
        a_t = C([z_t, h_t]), the next state sampled at the temperature. The reward is the reward
        head's where the model has one, else 1 per step survived (the Doom task). An episode ends
        where the done head says P(done) > 1/2 (the reference thresholds the restart logit at 0)
        or after max_steps (1000 by default). frames (T+1, 64, 64, C) decodes the first dream.
        """
        spec, model, ctrl = self.spec, self.model, self.controller(params)
        if spec.initial_mu is None:
            raise ValueError("dream rollouts need initial_mu/initial_logvar (encoded first frames)")
        heads = model.mdnrnn.reward_head, model.mdnrnn.done_head
        if heads == (None, None):
            raise ValueError(
                "dream rollouts need an MDN-RNN with a done head (reward: steps survived) or a "
                "reward head; without either every controller scores the same. Train it with "
                "--mdnrnn.done_head true and/or --mdnrnn.reward_head true"
            )
        rng = np.random.default_rng(int(seeds[0]))
        torch.manual_seed(int(seeds[0]))
        idx = rng.integers(len(spec.initial_mu), size=len(seeds))
        mu = torch.as_tensor(spec.initial_mu[idx], dtype=torch.float32)
        logvar = torch.as_tensor(spec.initial_logvar[idx], dtype=torch.float32)
        state = model.initial(len(seeds))
        state["z"] = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        frames = [model.decode_frames(state)[0]] if record else None
        alive = torch.ones(len(seeds), dtype=torch.bool)
        returns = torch.zeros(len(seeds))
        has_reward = model.mdnrnn.reward_head is not None
        for _ in range(spec.max_steps or 1000):
            state = model.img_step(state, ctrl(model.features(state)))
            reward = model.reward(state) if has_reward else torch.ones(len(seeds))
            returns += reward * alive
            if record and alive[0]:
                frames.append(model.decode_frames(state)[0])
            alive &= model.continuation(state) >= 0.5
            if not alive.any():
                break
        return returns.tolist(), (torch.stack(frames).numpy() if record else None)


_WORKER: Rollouts | None = None


def _init_worker(spec: RolloutSpec) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = Rollouts(spec)


def _run_task(task) -> list[float]:
    params, seeds = task
    return _WORKER.run(params, seeds)


class RolloutActor:
    """A Ray actor's state: one `Rollouts` (env and models built once), one thread."""

    def __init__(self, spec: RolloutSpec):
        torch.set_num_threads(1)
        self.rollouts = Rollouts(spec)

    def run(self, params, seeds) -> list[float]:
        return self.rollouts.run(params, seeds)


class RayPool:
    """`workers` rollout actors on Ray (0: one per CPU of the cluster), each holding a
    `Rollouts` of `spec`; `map` returns the tasks' results in the tasks' order."""

    def __init__(self, spec: RolloutSpec, workers: int, address: str | None = None):
        self.ray = connect_ray(address, what="--controller.backend ray")
        from ray.util import ActorPool

        n = workers or max(int(self.ray.cluster_resources().get("CPU", 1)), 1)
        actor = self.ray.remote(num_cpus=1)(RolloutActor)
        spec_ref = self.ray.put(spec)  # the models' weights travel to the cluster once
        self.actors = [actor.remote(spec_ref) for _ in range(n)]
        self.pool = ActorPool(self.actors)

    def map(self, tasks) -> list[list[float]]:
        return list(self.pool.map(lambda actor, task: actor.run.remote(*task), tasks))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


class Evaluator:
    """Fitness of CMA-ES candidates from rollouts in `workers` processes (0: in this one), or in
    `workers` Ray actors with `backend="ray"` (on the cluster at `ray_address`; none: a local
    Ray started on demand).

    Use as a context manager (or call `close`) so that the workers end.
    """

    def __init__(self, spec: RolloutSpec, workers: int, mp_context: str = "spawn",
                 backend: str = "process", ray_address: str | None = None):  # fmt: skip
        self.spec, self.workers = spec, int(workers)
        self.pool = self.local = self.ray = None
        if backend == "ray":
            self.ray = RayPool(spec, self.workers, ray_address)
        elif self.workers > 0:
            ctx = multiprocessing.get_context(mp_context)
            self.pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(spec,))
        else:
            self.local = Rollouts(spec)

    def _map(self, tasks) -> list[list[float]]:
        if self.ray is not None:
            return self.ray.map(tasks)
        if self.pool is None:
            return [self.local.run(params, seeds) for params, seeds in tasks]
        return self.pool.map(_run_task, tasks, chunksize=1)

    def returns(self, candidates: np.ndarray, seeds) -> np.ndarray:
        """Returns (P, len(seeds)) of each candidate (P, D) on each seed. Real rollouts are one
        task per (candidate, seed), for load balance; dreams one batched task per candidate."""
        seeds = [int(s) for s in seeds]
        if self.spec.mode == "dream":
            tasks = [(c, seeds) for c in candidates]
            return np.asarray(self._map(tasks), float)
        tasks = [(c, [s]) for c in candidates for s in seeds]
        return np.asarray(self._map(tasks), float).reshape(len(candidates), len(seeds))

    def close(self) -> None:
        if self.ray is not None:
            self.ray.close()
            self.ray = None
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None and exc[0] is not None:
            self.pool.terminate()
        self.close()
