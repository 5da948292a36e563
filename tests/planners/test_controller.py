"""planners.controller: the linear controller's layout and action maps, CMA-ES reaching known
optima (a quadratic, a linear-policy problem), checkpointing the search, dream rollouts with the
done and reward heads, and parallel workers agreeing with in-process rollouts."""

import dataclasses
import sys

import numpy as np
import pytest
import torch

from wmrl.planners.controller import (
    ControllerConfig,
    ControllerSearch,
    Evaluator,
    LinearController,
    Rollouts,
    RolloutSpec,
    num_params,
    resolve_action_map,
)
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig
from wmrl.worldmodels.vae import ConvVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_controller_layout_and_action_maps():
    F_, A = 3, 3
    assert num_params(288, 3) == 867  # the paper's CarRacing controller
    rng = np.random.default_rng(0)
    params = rng.normal(size=num_params(F_, A))
    W, b = params[: A * F_].reshape(A, F_), params[A * F_ :]
    x = rng.normal(size=(5, F_))
    expected = np.tanh(x @ W.T + b)
    out = LinearController(params, F_, A)(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    car = LinearController(params, F_, A, "carracing")(torch.as_tensor(x, dtype=torch.float32))
    # steer and gas as tanh; brake clipped to [0, 1] by the reference, in [-1, 1] units here
    np.testing.assert_allclose(car[:, :2].numpy(), expected[:, :2], rtol=1e-5, atol=1e-6)
    brake = 2 * np.clip(expected[:, 2], 0, 1) - 1
    np.testing.assert_allclose(car[:, 2].numpy(), brake, rtol=1e-5, atol=1e-6)
    assert resolve_action_map("auto", "gym:CarRacing-v3") == "carracing"
    assert resolve_action_map("auto", "dmc:cartpole-swingup") == "tanh"
    with pytest.raises(ValueError, match="expected 12"):
        LinearController(params[:-1], F_, A)


def test_cma_es_reaches_the_optimum_of_a_quadratic():
    target = np.linspace(-0.8, 0.8, 8)
    cfg = ControllerConfig(population=16, sigma0=0.5, weight_decay=0.0)
    search = ControllerSearch(8, cfg, seed=0)
    start = -np.sum(target**2)  # the fitness at x0 = 0
    for _ in range(120):
        x = search.ask()
        stats = search.tell(-np.sum((x - target) ** 2, axis=1))
    assert np.abs(search.mean - target).max() < 0.01
    assert stats["return_max"] > 1e-3 * start  # -|x - x*|^2 from -2.1 to > -0.002


def test_cma_es_finds_a_linear_policy():
    """Match a known linear controller's actions on fixed features: the optimum is its
    parameters, where the fitness -mean |a - a*|^2 is 0."""
    rng = np.random.default_rng(1)
    F_, A = 4, 2
    true = rng.normal(scale=0.5, size=num_params(F_, A))
    x = torch.as_tensor(rng.normal(size=(64, F_)), dtype=torch.float32)
    target = LinearController(true, F_, A)(x)

    def fitness(candidates):
        return np.array(
            [-((LinearController(c, F_, A)(x) - target) ** 2).mean().item() for c in candidates]
        )

    search = ControllerSearch(num_params(F_, A), ControllerConfig(population=16, sigma0=0.3,
                                                                  weight_decay=0.0))  # fmt: skip
    first = fitness(search.ask()).mean()
    search.tell(fitness(search._solutions))
    for _ in range(150):
        search.tell(fitness(search.ask()))
    assert fitness(search.mean[None])[0] > 1e-4 * first  # the error fell by over 10,000x
    np.testing.assert_allclose(search.mean, true, atol=0.02)


def test_weight_decay_penalises_the_fitness():
    search = ControllerSearch(4, ControllerConfig(population=4, weight_decay=0.5), seed=0)
    x = search.ask()
    search.tell(np.zeros(4))
    assert search.best_fitness == pytest.approx(-0.5 * np.mean(x**2, axis=1).min())


def test_search_survives_a_checkpoint():
    cfg = ControllerConfig(population=6, sigma0=0.2)
    search = ControllerSearch(5, cfg, seed=3)
    for _ in range(3):
        search.tell(-np.sum(search.ask() ** 2, axis=1))
    restored = ControllerSearch.from_bytes(search.state_bytes())
    assert restored.generation == 3
    np.testing.assert_array_equal(restored.ask(), search.ask())


def test_a_search_saved_before_the_wmrl_namespace_still_loads(monkeypatch):
    """Runs saved when the packages were top-level pickled planners.controller.ControllerSearch."""
    cfg = ControllerConfig(population=6, sigma0=0.2)
    search = ControllerSearch(5, cfg, seed=3)
    search.tell(-np.sum(search.ask() ** 2, axis=1))
    with monkeypatch.context() as m:  # pickle it as the old layout named it
        m.setitem(sys.modules, "planners.controller", sys.modules[ControllerSearch.__module__])
        m.setattr(ControllerSearch, "__module__", "planners.controller")
        old = search.state_bytes()
    assert b"planners.controller" in old.numpy().tobytes()
    assert "planners.controller" not in sys.modules
    restored = ControllerSearch.from_bytes(old)
    assert type(restored) is ControllerSearch and restored.generation == 1
    np.testing.assert_array_equal(restored.ask(), search.ask())


def spec(mode="real", done_bias=None, reward_bias=None, **kw) -> RolloutSpec:
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8)
    cfg = MDNRNNConfig(hidden=16, mixtures=2, done_head=done_bias is not None,
                       reward_head=reward_bias is not None)  # fmt: skip
    mdnrnn = MDNRNN(8, 3, cfg)
    with torch.no_grad():
        for head, bias in ((mdnrnn.done_head, done_bias), (mdnrnn.reward_head, reward_bias)):
            if head is not None:
                head.weight.zero_()
                head.bias.fill_(bias)
    return RolloutSpec(
        env_id="gym:CarRacing-v3",
        env_options={},
        vae={"kwargs": {"z_dim": 8}, "state": vae.state_dict()},
        mdnrnn={
            "z_dim": 8,
            "action_dim": 3,
            "cfg": dataclasses.asdict(cfg),
            "state": mdnrnn.state_dict(),
        },  # fmt: skip
        action_map="carracing",
        mode=mode,
        initial_mu=np.zeros((3, 8), np.float32),
        initial_logvar=np.zeros((3, 8), np.float32),
        **kw,
    )


def test_dream_rollouts_end_with_the_done_head():
    params = np.zeros(num_params(8 + 16, 3))
    ending = Rollouts(spec("dream", done_bias=50.0, max_steps=20))
    assert ending.run(params, [0, 1, 2]) == [1.0, 1.0, 1.0]  # survival reward: one step each
    going = Rollouts(spec("dream", done_bias=-50.0, max_steps=20))
    assert going.run(params, [0, 1]) == [20.0, 20.0]  # never done: the step cap
    rewarded = Rollouts(spec("dream", done_bias=-50.0, reward_bias=0.25, max_steps=12))
    assert rewarded.run(params, [5]) == [pytest.approx(3.0)]  # 12 steps x the head's 0.25
    _, frames = going.dream(params, [0], record=True)
    assert frames.shape == (21, 64, 64, 3) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="done head"):
        Rollouts(spec("dream", max_steps=20)).run(params, [0])  # no head: nothing to score


def test_parallel_workers_match_in_process_rollouts():
    s = spec("real", max_steps=6)
    rng = np.random.default_rng(0)
    candidates = rng.normal(scale=0.5, size=(3, num_params(8 + 16, 3)))
    with Evaluator(s, workers=0) as local:
        expected = local.returns(candidates, [11, 12])
    with Evaluator(s, workers=2) as pool:
        got = pool.returns(candidates, [11, 12])
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, expected)
    assert len(np.unique(np.round(expected, 6))) > 1  # seeds and candidates do differ


@pytest.mark.parametrize("mode", ["real", "dream"])
def test_ray_actors_give_the_process_pools_fitness(local_ray, mode):
    """The same candidates and seeds give the same returns on 2 Ray actors (a local Ray with
    num_cpus=2) as on a pool of 2 processes, for real episodes and dreams alike."""
    s = spec(mode, done_bias=-1.0, reward_bias=0.5, max_steps=6)
    rng = np.random.default_rng(1)
    weight = s.mdnrnn["state"]["reward_head.weight"]  # rewards that depend on the dream
    s.mdnrnn["state"]["reward_head.weight"] = torch.as_tensor(rng.normal(size=weight.shape))
    candidates = rng.normal(scale=0.5, size=(3, num_params(8 + 16, 3)))
    with Evaluator(s, workers=2) as pool:
        expected = pool.returns(candidates, [21, 22])
    with Evaluator(s, workers=2, backend="ray") as ray_actors:
        assert len(ray_actors.ray.actors) == 2
        got = ray_actors.returns(candidates, [21, 22])
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(np.round(expected, 6))) > 1


def test_the_ray_backend_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(
        ImportError, match=r'--controller.backend ray needs Ray.*pip install -e "\.\[ray\]"'
    ):
        Evaluator(spec("real", max_steps=2), workers=1, backend="ray")
    with pytest.raises(ValueError, match="backend must be process or ray"):
        ControllerConfig(backend="dask")


class ScriptedEnv:
    """Blank 64 x 64 frames and a fixed reward sequence, never ending by itself."""

    rewards = [1.0, -0.1, -0.1, 2.0, -0.1, -0.1, -0.1, 5.0, -0.1, -0.1]

    def reset(self, seed=None):
        self.t = 0
        return np.zeros((64, 64, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.zeros((64, 64, 3), np.uint8), self.rewards[self.t - 1], False, False, {}


def test_patience_ends_real_rollouts_after_unrewarded_steps():
    """Patience 3 stops at the third non-positive reward in a row (step 7): 1 - 0.2 + 2 - 0.3;
    patience 4 reaches the 5 at step 8 and stops at step 10's end of the script (max_steps);
    without patience only max_steps stops it."""
    params = np.zeros(num_params(8 + 16, 3))
    returns = {
        patience: Rollouts(spec("real", max_steps=10, patience=patience), ScriptedEnv()).real(
            params, seed=0
        )[0]
        for patience in (3, 4, None)
    }
    assert returns[3] == pytest.approx(2.5)
    assert returns[4] == pytest.approx(7.3) == returns[None]
    with pytest.raises(ValueError, match="patience"):
        ControllerConfig(patience=0)
