"""worldmodels.ensemble: the batched members against the members run one by one, USAD's
disagreement against a double loop over member pairs, the threshold rules on explicit numbers,
normalisers fitted on training rows only, a fit of a known linear system, holdout early stopping
that keeps each member's best weights, the replay-layout loss, the termination head, and CEM
planning with a learned ensemble to a known optimum."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmrl.planners.cem import CEMConfig, Planner, cem_plan
from wmrl.worldmodels import WorldModel
from wmrl.worldmodels.ensemble import (
    DynamicsEnsemble,
    EnsembleConfig,
    dataset_disagreement,
    train_ensemble,
    usad_threshold,
)

pytestmark = pytest.mark.usefixtures("one_thread")

S, A = 3, 2


def tiny(**kw) -> EnsembleConfig:
    return EnsembleConfig(**{"members": 3, "hidden": 16, "layers": 2, **kw})


def random_normalizers(model: DynamicsEnsemble, rows: int = 64) -> None:
    """Non-trivial shifts and scales, so that tests see the normalisation too."""
    g = torch.Generator().manual_seed(1)
    obs = 3 * torch.randn(rows, model.obs_dim, generator=g) + 1
    act = torch.rand(rows, model.action_dim, generator=g) * 2 - 1
    nxt = obs + 0.5 * torch.randn(rows, model.obs_dim, generator=g) - 0.2
    model.fit_normalizers(obs, act, nxt, 10 * torch.randn(rows, generator=g) + 5)


def member_net(model: DynamicsEnsemble, m: int) -> nn.Sequential:
    """Member m as plain nn.Linear layers holding copies of its slice of the weights."""
    modules = []
    for layer in [*model.hidden_layers, model.head]:
        w, b = layer.weight[m].detach(), layer.bias[m, 0].detach()  # (in, out), (out,)
        linear = nn.Linear(*w.shape)
        linear.weight.data.copy_(w.T)
        linear.bias.data.copy_(b)
        modules += [linear, nn.ReLU()]
    return nn.Sequential(*modules[:-1])


def member_prediction(model, m, obs, act):
    """Member m's next state (B, S), reward (B,), P(term) (B,) from its own net, by hand."""
    x = (torch.cat([obs, act], -1) - model.in_shift) / (model.in_scale + 1e-8)
    out = member_net(model, m)(x)
    D = model.out_dim
    real = out[:, :D] * (model.out_scale + 1e-8) + model.out_shift
    return obs + real[:, :S], real[:, S], torch.sigmoid(out[:, -1])


@pytest.mark.parametrize("probabilistic", [False, True], ids=["deterministic", "gaussian"])
def test_batched_members_equal_members_run_one_by_one(probabilistic):
    torch.manual_seed(0)
    model = DynamicsEnsemble(S, A, tiny(probabilistic=probabilistic))
    with torch.no_grad():  # distinct per-member bounds, so that the wrong member's would show
        if probabilistic:
            model.max_logvar.copy_(torch.rand_like(model.max_logvar))
            model.min_logvar.copy_(-5 - torch.rand_like(model.min_logvar))
    random_normalizers(model)
    x = torch.randn(3, 5, S + A)  # member m reads x[m]
    mean, logvar, logit = model(x)
    D = S + 1
    for m in range(3):
        out = member_net(model, m)(x[m])
        torch.testing.assert_close(mean[m], out[:, :D])
        torch.testing.assert_close(logit[m], out[:, -1])
        if probabilistic:
            hi, lo = model.max_logvar[m, 0], model.min_logvar[m, 0]
            v = hi - F.softplus(hi - out[:, D : 2 * D])
            torch.testing.assert_close(logvar[m], lo + F.softplus(v - lo))
    obs, act = 2 * torch.randn(7, S), torch.rand(7, A) * 2 - 1
    pred = model.predict(obs, act)
    assert pred["next_obs"].shape == (3, 7, S) and pred["reward"].shape == (3, 7)
    for m in range(3):
        nxt, rew, term = member_prediction(model, m, obs, act)
        torch.testing.assert_close(pred["next_obs"][m], nxt)
        torch.testing.assert_close(pred["reward"][m], rew)
        torch.testing.assert_close(pred["terminated_prob"][m], term)


def test_disagreement_is_the_max_pairwise_l2_over_members():
    torch.manual_seed(0)
    model = DynamicsEnsemble(S, A, tiny(members=4))
    random_normalizers(model)
    obs, act = 2 * torch.randn(9, S), torch.rand(9, A) * 2 - 1
    preds = [member_prediction(model, m, obs, act)[0].detach() for m in range(4)]
    expected = torch.zeros(9)
    for i, j in itertools.combinations(range(4), 2):  # run_morel.py's loop over idx_2 > idx_1
        expected = torch.maximum(expected, (preds[i] - preds[j]).norm(dim=-1))
    torch.testing.assert_close(model.disagreement(obs, act), expected)
    # Chunked over the dataset, as USAD's threshold is computed, and from numpy input.
    chunked = dataset_disagreement(model, obs.numpy(), act.numpy(), batch=4)
    torch.testing.assert_close(chunked, expected)


def test_usad_threshold_rules_on_explicit_numbers():
    d = np.array([1.0, 2.0, 3.0, 6.0])
    assert usad_threshold(d, 0.5) == pytest.approx(3.0)  # official: pessimism_coef * max
    assert usad_threshold(torch.tensor(d), 3.0) == pytest.approx(18.0)
    # mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5)
    assert usad_threshold(d, 1.0, "mean_std", beta=2.0) == pytest.approx(3 + 2 * np.sqrt(3.5))
    assert usad_threshold(d, 2.0, "mean_std", beta=0.0) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="unknown USAD rule"):
        usad_threshold(d, 1.0, "median")


def mad(x: torch.Tensor):
    shift = x.mean(0)
    return shift, (x - shift).abs().mean(0)


def test_normalizers_are_fitted_on_training_rows_only():
    K = 400
    rng = np.random.default_rng(0)
    # Skewed columns: any holdout of 25% moves the mean and the spread visibly.
    obs = (rng.exponential(size=(K, S)) ** 3).astype(np.float32)
    act = rng.uniform(-1, 1, (K, A)).astype(np.float32)
    nxt = obs + rng.exponential(size=(K, S)).astype(np.float32) ** 2
    rew = rng.exponential(size=K).astype(np.float32) ** 3
    data = dict(observations=obs, actions=act, next_observations=nxt, rewards=rew)
    model = DynamicsEnsemble(S, A, tiny(max_epochs=0, holdout_fraction=0.25))
    history = model.fit({**data, "terminals": np.zeros(K, bool)}, seed=3)
    train, hold = history["train_idx"], history["holdout_idx"]
    assert len(hold) == 100 and sorted(np.concatenate([train, hold])) == list(range(K))
    t = {k: torch.tensor(v) for k, v in data.items()}
    shift, scale = mad(torch.cat([t["observations"], t["actions"]], -1)[train])
    torch.testing.assert_close(model.in_shift, shift)
    torch.testing.assert_close(model.in_scale, scale)
    out = torch.cat([t["next_observations"] - t["observations"], t["rewards"][:, None]], -1)
    shift, scale = mad(out[train])
    torch.testing.assert_close(model.out_shift, shift)
    torch.testing.assert_close(model.out_scale, scale)
    all_shift, all_scale = mad(out)  # what a leak of the holdout would have given
    assert (model.out_shift - all_shift).abs().max() > 1e-2
    assert (model.out_scale - all_scale).abs().max() > 1e-2


def test_fit_recovers_a_linear_system():
    """s' = s + A_m s + B_m a, r = c . s: predictions within a few % of each quantity's scale."""
    rng = np.random.default_rng(0)
    A_m = np.array([[0.0, 0.1, 0.0], [-0.1, 0.0, 0.05], [0.0, 0.0, -0.1]])
    B_m = 0.3 * rng.normal(size=(A, S))
    c = np.array([1.0, -0.5, 0.25])

    def sample(k):
        s = rng.normal(size=(k, S)).astype(np.float32)
        a = rng.uniform(-1, 1, (k, A)).astype(np.float32)
        return s, a, (s @ A_m.T + a @ B_m).astype(np.float32), (s @ c).astype(np.float32)

    s, a, delta, r = sample(3000)
    data = dict(observations=s, actions=a, next_observations=s + delta, rewards=r)
    cfg = EnsembleConfig(members=2, hidden=64, max_epochs=30, lr=3e-3, predict_termination=False)
    model, history = train_ensemble({**data, "terminals": np.zeros(3000, bool)}, cfg, seed=0)
    assert history["epochs"] == len(history["train_loss"]) == len(history["holdout_loss"])
    assert history["train_loss"][-1] < 0.1 * history["train_loss"][0]
    s, a, delta, r = sample(2000)
    with torch.no_grad():
        pred = model.predict(torch.tensor(s), torch.tensor(a))
    delta_err = (pred["next_obs"].numpy() - s - delta) ** 2
    reward_err = (pred["reward"].numpy() - r) ** 2
    assert np.sqrt(delta_err.mean((1, 2))).max() < 0.05 * delta.std()
    assert np.sqrt(reward_err.mean(1)).max() < 0.05 * r.std()
    assert torch.equal(pred["terminated_prob"], torch.zeros(2, 2000))  # no head, no ends


def test_early_stopping_keeps_each_members_best_holdout_weights():
    """150 noisy rows of a linear system: the holdout loss falls, then rises as members overfit."""
    rng = np.random.default_rng(0)
    K = 150
    s = rng.normal(size=(K, S)).astype(np.float32)
    a = rng.uniform(-1, 1, (K, A)).astype(np.float32)
    noise = 0.5 * rng.normal(size=(K, S + 1)).astype(np.float32)
    data = dict(
        observations=s,
        actions=a,
        next_observations=s + 0.5 * s[:, ::-1] + a[:, :1] + noise[:, :S],
        rewards=s[:, 0] + noise[:, S],
        terminals=rng.random(K) < 0.3,
    )
    cfg = tiny(hidden=64, lr=1e-2, batch_size=32, holdout_fraction=0.3, patience=5, max_epochs=200)
    model, history = train_ensemble(data, cfg, seed=0)
    E, p, thr = history["epochs"], cfg.patience, cfg.improvement
    assert history["stopped_early"] and E < 200
    scores = np.array(history["holdout_member"])  # (E, N)
    assert scores.shape == (E, 3)
    # Each member keeps its lowest holdout score, reached before the last epoch.
    np.testing.assert_allclose(history["best_holdout"], scores.min(0))
    np.testing.assert_array_equal(history["best_epoch"], scores.argmin(0) + 1)
    assert (scores[-1] > scores.min(0)).all()  # so the last weights were not kept

    # Patience: the epoch before the last p made progress (a member beat its best by more than
    # 1%), and none of the last p did.
    def progress(e):  # epoch e + 1 (0-based index e)
        return (scores[e] < (1 - thr) * scores[:e].min(0)).any()

    assert progress(E - p - 1) and not any(progress(e) for e in range(E - p, E))
    hold = {k: torch.as_tensor(v[history["holdout_idx"]]).float() for k, v in data.items()}
    x = model.normalize_inputs(hold["observations"], hold["actions"])
    y = model.normalize_targets(hold["observations"], hold["next_observations"], hold["rewards"])
    restored = model.member_scores(x, y, hold["terminals"])
    np.testing.assert_allclose(restored.numpy(), history["best_holdout"], rtol=1e-5)


def test_replay_batch_loss_equals_the_loss_on_its_transitions():
    torch.manual_seed(0)
    model = DynamicsEnsemble(S, A, tiny())
    random_normalizers(model)
    B, T = 2, 5
    obs, action, reward = torch.randn(B, T, S), torch.randn(B, T, A), torch.randn(B, T)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = is_first[1, 3] = True  # a new episode starts in row 3 of sequence 1
    is_terminal = torch.zeros(B, T, dtype=torch.bool)
    is_terminal[1, 2] = True
    rows = [(b, t) for b in range(B) for t in range(1, T) if not is_first[b, t]]
    flat = {
        "observations": torch.stack([obs[b, t - 1] for b, t in rows]),
        "actions": torch.stack([action[b, t] for b, t in rows]),  # action[t] = a_(t-1)
        "next_observations": torch.stack([obs[b, t] for b, t in rows]),
        "rewards": torch.stack([reward[b, t] for b, t in rows]),  # reward[t] = r_(t-1)
        "terminals": torch.stack([is_terminal[b, t] for b, t in rows]),
    }
    replay = dict(obs=obs, action=action, reward=reward, is_first=is_first, is_terminal=is_terminal)
    loss, metrics, states = model.loss(replay)
    expected, _, _ = model.loss(flat)
    assert len(rows) == 7
    torch.testing.assert_close(loss, expected)
    assert set(metrics) == {"loss", "dynamics", "reward", "termination"}
    assert states["obs"].shape == (B, T, S) and states["member"].shape == (B, T)
    loss.backward()
    assert model.head.weight.grad is not None


def test_fit_rejects_nan_and_mismatched_data():
    K = 40
    data = dict(
        observations=np.zeros((K, S), np.float32),
        actions=np.zeros((K, A), np.float32),
        next_observations=np.zeros((K, S), np.float32),
        rewards=np.full(K, np.nan, np.float32),
        terminals=np.zeros(K, bool),
    )
    with pytest.raises(FloatingPointError, match="not finite"):
        DynamicsEnsemble(S, A, tiny(max_epochs=1)).fit(data)
    with pytest.raises(ValueError, match="built for S=4"):
        DynamicsEnsemble(4, A, tiny(max_epochs=1)).fit(data)
    with pytest.raises(ValueError, match="miss"):
        DynamicsEnsemble(S, A, tiny()).fit({"observations": data["observations"]})


# ------------------------------------------------------------- a learned 1-D toy problem
@pytest.fixture(scope="module")
def toy():
    """s' = s + a, r = -|s'|, terminated where |s'| > 1.5: from s the best action is -s (clipped
    to [-1, 1]), and the termination head must learn the threshold."""
    threads = torch.get_num_threads()  # module fixtures run before `one_thread`
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        rng = np.random.default_rng(0)
        K = 2000
        s = rng.uniform(-2, 2, (K, 1)).astype(np.float32)
        a = rng.uniform(-1, 1, (K, 1)).astype(np.float32)
        nxt = s + a
        data = dict(
            observations=s,
            actions=a,
            next_observations=nxt,
            rewards=-np.abs(nxt[:, 0]),
            terminals=np.abs(nxt[:, 0]) > 1.5,
        )
        cfg = EnsembleConfig(members=4, hidden=64, max_epochs=30, lr=3e-3)
        model, _ = train_ensemble(data, cfg, seed=0)
    torch.set_num_threads(threads)
    return model


def test_termination_head_learns_the_threshold(toy):
    s = torch.tensor([[0.0], [0.5], [1.0], [-1.0], [2.0], [-2.0], [1.5]])
    a = torch.tensor([[0.0], [0.5], [0.2], [-0.2], [0.5], [-0.3], [0.5]])  # |s'| vs 1.5
    with torch.no_grad():
        p = toy.predict(s, a)["terminated_prob"]  # (N, 7)
    assert p[:, :4].max() < 0.1  # |s'| <= 1.2: goes on
    assert p[:, 4:].min() > 0.9  # |s'| >= 2.0: terminated


def test_protocol_states_follow_their_member(toy):
    assert isinstance(toy, WorldModel)
    obs = torch.full((4, 1), 0.7)
    state = {**toy.initial(4), "obs": obs, "member": torch.arange(4)}
    action = torch.full((4, 1), -0.2)
    nxt = toy.img_step(state, action)
    with torch.no_grad():
        pred = toy.predict(obs, action)
    rows = torch.arange(4)
    torch.testing.assert_close(nxt["obs"], pred["next_obs"][rows, rows])
    torch.testing.assert_close(toy.reward(nxt), pred["reward"][rows, rows])
    torch.testing.assert_close(toy.continuation(nxt), 1 - pred["terminated_prob"][rows, rows])
    torch.testing.assert_close(nxt["disagreement"], toy.disagreement(obs, action))
    states = toy.imagine(state, torch.zeros(4, 6, 1))
    assert states["obs"].shape == (4, 6, 1) and toy.features(states).shape == (4, 6, 1)
    assert torch.equal(states["member"], torch.arange(4)[:, None].expand(4, 6))


def test_cem_plans_to_the_known_optimum_with_the_ensemble(toy):
    obs = torch.tensor([[[0.5]], [[-0.3]], [[1.4]]])  # (B, T=1, S)
    torch.manual_seed(0)
    post = toy.observe(obs, torch.zeros(3, 1, 1), torch.ones(3, 1, dtype=torch.bool))
    belief = {k: v[:, -1] for k, v in post.items()}
    cfg = CEMConfig(horizon=1, iterations=6, candidates=300, top_k=30)
    action = cem_plan(toy, belief, 1, cfg)
    assert action.shape == (3, 1)
    # a* = -s; from 1.4 the bound -1. The learned |.| is rounded at its kink: 0.1 tolerance.
    torch.testing.assert_close(action[:, 0], torch.tensor([-0.5, 0.3, -1.0]), atol=0.1, rtol=0)
    planner = Planner(toy, 1, CEMConfig(horizon=3, iterations=3, candidates=64, top_k=8))
    assert planner.act(np.array([0.2], np.float32)).shape == (1,)
