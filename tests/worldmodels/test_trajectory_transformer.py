"""worldmodels.trajectory_transformer: the bins' round trip within half a bin (quantile edges
against numpy's quantiles), teacher forcing (which logits score which token, the loss against a
loop, the per-dimension heads, V tokens read by nothing), the protocol's states and CEM through
them, the key/value cache of planning against full passes, and a model trained on a toy whose
best action is known, found by CEM and beam search."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wmrl.planners.beam import BeamConfig, BeamModel, beam_plan
from wmrl.planners.cem import CEMConfig, Planner, cem_plan
from wmrl.worldmodels import WorldModel
from wmrl.worldmodels.trajectory_transformer import (
    Discretizer,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
    filter_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")
S, A, N = 3, 2, 16
D = S + A + 2


def small(**kw) -> TrajectoryTransformerConfig:
    values = {"bins": N, "seq_len": 3, "context": 2, "layers": 2, "heads": 2, "width": 32}
    return TrajectoryTransformerConfig(**{**values, **kw})


def model(seed=0, **kw) -> TrajectoryTransformer:
    torch.manual_seed(seed)
    data = np.random.default_rng(seed).normal(size=(400, D)).astype(np.float32)
    return TrajectoryTransformer(S, A, small(**kw), Discretizer.fit(data, N)).eval()


# ------------------------------------------------------------------------------- bins
@pytest.mark.parametrize("kind", ["quantile", "uniform"])
def test_round_trip_is_within_half_a_bin(kind):
    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(size=1000), rng.exponential(size=1000),
                     rng.integers(0, 4, 1000).astype(float)], 1).astype(np.float32)  # fmt: skip
    disc = Discretizer.fit(data, 20, kind)
    tokens = disc.discretize(torch.from_numpy(data))
    assert tokens.dtype == torch.long and tokens.min() >= 0 and tokens.max() <= 19
    edges = disc.edges.numpy()
    cols = np.arange(3)
    half = (edges[tokens + 1, cols] - edges[tokens, cols]) / 2  # of each value's own bin
    error = np.abs(disc.reconstruct(tokens).numpy() - data)
    assert (error <= half + 1e-6).all()
    assert torch.equal(disc.discretize(disc.reconstruct(tokens)), tokens)  # midpoints map back
    if kind == "quantile":  # edges at the sorted data's k (M - 1) / N-th element
        expected = np.quantile(data, np.linspace(0, 1, 21), axis=0, method="lower")
        np.testing.assert_array_equal(edges, expected)
        counts = np.bincount(tokens[:, 0], minlength=20)
        assert counts.min() >= 45 and counts.max() <= 55  # about M / N values in every bin
    else:
        np.testing.assert_allclose(np.diff(edges, axis=0), np.ptp(data, 0) / 20 + 0 * edges[1:],
                                   rtol=1e-5)  # fmt: skip
    outside = torch.tensor([[-1e6, -1e6, -1e6], [1e6, 1e6, 1e6]])
    assert disc.discretize(outside).tolist() == [[0, 0, 0], [19, 19, 19]]  # clipped
    some = disc.discretize(torch.from_numpy(data[:5, 1:]), slice(1, 3))  # a subset of dims
    assert torch.equal(some, tokens[:5, 1:])


def test_expectation_and_filters():
    disc = Discretizer(torch.tensor([[0.0], [1.0], [3.0]]))  # N = 2: midpoints 0.5, 2
    probs = torch.tensor([[0.5, 0.25, 0.25]])  # the stop token's mass counts as 0
    assert disc.expectation(probs, 0).item() == pytest.approx(0.5 * 0.5 + 0.25 * 2)
    logits = torch.log(torch.tensor([[0.05, 0.1, 0.15, 0.3, 0.4]]))
    # cdf 0.3: drop the least likely tokens summing below 0.3 (0.05 + 0.1 = 0.15, + 0.15 = 0.3)
    kept = torch.isfinite(filter_logits(logits, cdf=0.3))
    assert kept.tolist() == [[False, False, True, True, True]]
    kept = torch.isfinite(filter_logits(logits, cdf=0.6))  # the authors' cdf_act
    assert kept.tolist() == [[False, False, False, True, True]]
    assert torch.isfinite(filter_logits(logits, top_k=1)).sum() == 1


# --------------------------------------------------------------------- teacher forcing
def window(batch=2, transitions=3, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, N, (batch, transitions * D), generator=gen)


def test_logits_at_position_i_score_token_i_plus_1():
    # Window of K = 3 transitions, D = 7 tokens each (S = 3, A = 2, r, V):
    #
    #   position i    0     1     2     3     4     5    6    7       ...  19
    #   reads x_i     s^0   s^1   s^2   a^0   a^1   r    V    s'^0    ...  r''
    #   scores x_i+1  s^1   s^2   a^0   a^1   r     V    s'^0 s'^1    ...  V''
    #
    # so logits[i] may depend on x_0 .. x_i only, and the loss pairs logits[i] with x_(i+1).
    m = model()
    x = window()
    logits = m(x[:, :-1], padded=False)
    assert logits.shape == (2, 3 * D - 1, N + 1)
    for j in range(3 * D - 1):
        changed = x.clone()
        changed[:, j] = (changed[:, j] + 1) % N
        out = m(changed[:, :-1], padded=False)
        torch.testing.assert_close(out[:, :j], logits[:, :j], rtol=0, atol=0)
        if j % D == D - 1:  # a V token is read by nothing: no logits change
            torch.testing.assert_close(out, logits, rtol=0, atol=0)
        else:
            assert (out[:, j:] - logits[:, j:]).abs().amax() > 1e-5

    mask = torch.ones(2, 3 * D)
    mask[1, 2 * D :] = 0  # a window past a time limit: its last transition masked
    loss, terms = m.token_loss({"tokens": x, "mask": mask})
    weights = {**dict.fromkeys(range(S), 1.0), **dict.fromkeys(range(S, S + A), 5.0),
               S + A: 1.0, S + A + 1: 1.0}  # fmt: skip
    total = 0.0
    for b in range(2):
        for i in range(3 * D - 1):  # logits i scores token i + 1 of dimension (i + 1) mod D
            ce = F.cross_entropy(logits[b, i], x[b, i + 1])
            total += weights[(i + 1) % D] * mask[b, i + 1] * ce
    assert loss.item() == pytest.approx(total.item() / (2 * (3 * D - 1)), rel=1e-5)
    action = [(b, i) for b in range(2) for i in range(3 * D - 1)
              if S <= (i + 1) % D < S + A and mask[b, i + 1]]  # fmt: skip
    action_ce = np.mean([F.cross_entropy(logits[b, i], x[b, i + 1]).item() for b, i in action])
    assert terms["action_ce"].item() == pytest.approx(action_ce, rel=1e-5)
    assert m.loss({"tokens": x, "mask": mask})[0].item() == pytest.approx(loss.item())


def test_each_position_reads_out_through_its_own_dimensions_head_and_stop_is_one_token():
    m = model()
    x = window()[:, :-1]
    with torch.no_grad():
        m.readout[S + 1].zero_()  # the head of dimension a^1 (it scores r)
    logits = m(x, padded=False)
    dims = torch.arange(x.shape[1]) % D
    assert (logits[:, dims == S + 1] == 0).all() and (logits[:, dims != S + 1] != 0).all()
    assert m.embed.num_embeddings == D * N + 1  # N per dimension, and one stop token for all
    stop = x.clone()
    stop[:, D:] = N  # a window whose episode terminated after its first transition
    with torch.no_grad():
        m.embed.weight[D * N] = 0.0
        zeroed = m(stop, padded=False)
        m.embed.weight[D * N] = torch.randn(32)  # not a constant, which LayerNorm removes
    changed = m(stop, padded=False)
    torch.testing.assert_close(zeroed[:, :D], changed[:, :D])  # before the stop tokens
    read = (zeroed - changed).abs().amax(-1)[:, D:]  # every stop token reads that one row
    silent = dims[D:] == S + 1  # (but for the head zeroed above, which gives zeros)
    assert (read[:, ~silent] > 1e-4).all()


def test_left_padding_changes_nothing_for_the_real_tokens():
    m = model()
    x = window(1, 2)[:, : D + S]  # one transition and the next state: a context
    padded = torch.cat([torch.full((1, D), -1), x], 1)
    torch.testing.assert_close(m(padded)[:, D:], m(x), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------- protocol
def test_protocol_states_contexts_and_cem_through_them():
    m = model(context=3, seq_len=4)
    assert isinstance(m, WorldModel) and isinstance(m, BeamModel)
    W = 2 * D + S
    obs, act = torch.randn(2, 4, S), torch.rand(2, 4, A) * 2 - 1
    reward = torch.randn(2, 4)
    first = torch.tensor([[True, False, False, False], [True, False, True, False]])
    post = m.observe(obs, act, first, reward=reward)
    assert post["tokens"].shape == (2, 4, W) and post["reward"].shape == (2, 4)
    disc = m.discretizer
    # row 0 at t = 3: transitions 1 and 2 with their real rewards, a V placeholder, then s_3
    expected = []
    for t in (1, 2):
        expected += [disc.discretize(obs[0, t], slice(0, S)),
                     disc.discretize(act[0, t + 1], slice(S, S + A)),
                     disc.discretize(reward[0, t + 1 : t + 2], slice(S + A, S + A + 1)),
                     torch.zeros(1, dtype=torch.long)]  # fmt: skip
    expected.append(disc.discretize(obs[0, 3], slice(0, S)))
    assert post["tokens"][0, 3].tolist() == torch.cat(expected).tolist()
    # row 1 started again at t = 2: one transition, after one transition's padding
    assert (post["tokens"][1, 3, :D] == -1).all() and (post["tokens"][1, 3, D:] >= 0).all()
    assert (post["tokens"][:, 0, : 2 * D] == -1).all()
    torch.testing.assert_close(m.features(post), disc.reconstruct(post["tokens"][..., -S:],
                                                                   slice(0, S)))  # fmt: skip
    without = m.observe(obs, act, first)  # the protocol passes no rewards: the model's own
    assert without["tokens"].shape == (2, 4, W)

    state = {k: v[:, -1] for k, v in post.items()}
    step = m.img_step(state, torch.zeros(2, A))
    assert step["tokens"].shape == (2, W)
    assert (step["tokens"][:, -S:] >= 0).all() and (step["tokens"][:, -S:] < N).all()
    # the context moved on by one transition: the old second transition is now the first
    assert torch.equal(step["tokens"][0, :D], state["tokens"][0, D : 2 * D])
    assert ((step["cont"] > 0) & (step["cont"] <= 1)).all()
    states = m.imagine(state, torch.zeros(2, 5, A))
    assert {k: tuple(v.shape) for k, v in states.items()} == {
        "tokens": (2, 5, W), "reward": (2, 5), "value": (2, 5), "cont": (2, 5)}  # fmt: skip
    assert m.reward(states).shape == m.continuation(states).shape == (2, 5)
    assert m.decode(states).shape == (2, 5, S)

    cfg = CEMConfig(horizon=3, iterations=2, candidates=12, top_k=3)
    torch.manual_seed(0)
    assert cem_plan(m, state, A, cfg).shape == (2, A)
    planner = Planner(m, A, cfg)
    for _ in range(3):  # the planner's observe -> plan loop, its belief kept by the model
        action = planner.act(np.zeros(S, np.float32))
        assert action.shape == (A,) and action.abs().max() <= 1
    assert planner.state["tokens"].shape == (1, W)


class NoCache(TrajectoryTransformer):
    """The same model reading every context afresh: its "cache" is the count of tokens read."""

    def _extend(self, tokens, cache):
        return self(tokens)[:, cache or 0 :], tokens.shape[1]


@pytest.mark.parametrize("chunks", [[2 * D + S], [D, 1, 1, D + S - 2], [1] * (2 * D + S)])
def test_reading_through_the_cache_equals_the_full_forward(chunks):
    m = model(seq_len=4, context=3)
    torch.nn.init.normal_(m.position)  # zeros at the start: a wrong position would not show
    rng = np.random.default_rng(1)
    tokens = torch.as_tensor(rng.integers(0, N, (2, 2 * D + S)))
    tokens[0, :D] = -1  # row 0: a young episode, one transition of left padding
    tokens[1, D + S] = N  # row 1: a stop token
    expected = m(tokens)
    cache, outs, read = None, [], 0
    for n in chunks:
        logits, cache = m._extend(tokens[:, : read + n], cache)
        outs.append(logits)
        read += n
    torch.testing.assert_close(torch.cat(outs, 1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("young", [True, False])
def test_beam_search_through_the_cache_plans_what_full_passes_plan(young):
    """The same sampled actions, the same next states and scores, in a context with left
    padding (young) and a full one."""
    cfg = {"seq_len": 4, "context": 3}
    cached, fresh = model(**cfg), NoCache(S, A, small(**cfg), model(**cfg).discretizer).eval()
    torch.nn.init.normal_(cached.position)
    fresh.load_state_dict(cached.state_dict())
    T = 1 if young else 4
    gen = torch.Generator().manual_seed(2)
    obs, action = torch.randn(2, T, S, generator=gen), torch.randn(2, T, A, generator=gen)
    first = torch.zeros(2, T, dtype=torch.bool)
    first[:, 0] = True
    post = cached.observe(obs, action, first)
    state = {k: v[:, -1] for k, v in post.items()}
    assert (state["tokens"] < 0).any() == young
    beam = BeamConfig(horizon=3, beam_width=4, expansions=2)
    torch.manual_seed(3)
    plan, score = beam_plan(cached, state, beam)
    torch.manual_seed(3)
    plan_fresh, score_fresh = beam_plan(fresh, state, beam)
    torch.testing.assert_close(plan, plan_fresh, rtol=0, atol=0)
    torch.testing.assert_close(score, score_fresh, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ a model that learns
def toy_windows(batch: int, gen: torch.Generator, disc: Discretizer) -> dict:
    """Windows of 2 transitions of a toy whose state is noise and whose reward is
    1 - 2 |a - 0.4| for a uniform action a (V: 0.9 times the next reward)."""
    obs = torch.rand(batch, 2, 1, generator=gen)
    action = torch.rand(batch, 3, 1, generator=gen) * 2 - 1
    reward = 1 - 2 * (action - 0.4).abs()
    rows = torch.cat([obs, action[:, :2], reward[:, :2], 0.9 * reward[:, 1:]], -1)  # (B, 2, 4)
    return {"tokens": disc.discretize(rows).flatten(1), "mask": torch.ones(batch, 8)}


def test_a_trained_model_leads_cem_and_beam_search_to_the_best_action():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    lows, highs = (0.0, -1.0, -1.8, -1.62), (1.0, 1.0, 1.0, 0.9)  # s, a, r, V
    edges = torch.stack([torch.linspace(lo, hi, 21) for lo, hi in zip(lows, highs, strict=True)], 1)
    cfg = TrajectoryTransformerConfig(bins=20, seq_len=2, context=1, layers=1, heads=1,
                                      width=32, discount=0.9, action_cdf=None)  # fmt: skip
    m = TrajectoryTransformer(1, 1, cfg, Discretizer(edges))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = m.token_loss(toy_windows(64, gen, m.discretizer))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    first = torch.ones(1, 1, dtype=torch.bool)
    post = m.observe(torch.full((1, 1, 1), 0.5), torch.zeros(1, 1, 1), first)
    state = {k: v[:, -1] for k, v in post.items()}
    action = cem_plan(m, state, 1, CEMConfig(horizon=1, iterations=4, candidates=64, top_k=8))
    assert action.item() == pytest.approx(0.4, abs=0.15)  # bins are 0.1 wide
    plan, score = beam_plan(m, state, BeamConfig(horizon=1, beam_width=16, expansions=4))
    assert plan[0, 0, 0].item() == pytest.approx(0.4, abs=0.15)
    again = m.img_step(state, plan[:, 0])  # the score is r_0 + g V_0 of the plan's action
    assert score.item() == pytest.approx((again["reward"] + 0.9 * again["value"]).item(), abs=1e-5)
    # r ~ 0.9 (its best bin) and V ~ 0.9 E[r] of a uniform next action, 0.9 (1 - 2 * 0.58)
    assert again["reward"].item() > 0.8 and again["value"].item() == pytest.approx(-0.14, abs=0.1)
