"""Plan2Explore on DreamerV2's loop (planners.methods.plan2explore, `--explore`): the intrinsic
reward's index alignment with imagined states and actions (by hand, and through the
actor-critic's imagination), the replay pairs the ensemble learns from, an update that trains
the ensemble and the explorer and nothing else, no host sync, the smoke preset end to end with
--resume, a crashed run that resumes to the uninterrupted one, and the default path unchanged."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from dreamer_helpers import MODEL
from dreamer_helpers import tiny as dreamer_tiny

from wmrl.infra import CheckpointError, load_checkpoint, read_meta, read_metrics
from wmrl.planners.actor_critic import ActorCriticConfig
from wmrl.planners.methods import dreamer
from wmrl.planners.methods.dreamer import (
    DreamerConfig,
    make_update,
    random_batch,
    setup_update,
    train_dreamer,
)
from wmrl.planners.methods.plan2explore import Plan2Explore, Plan2ExploreConfig
from wmrl.worldmodels.categorical_rssm import CategoricalRSSM

ROOT = Path(__file__).resolve().parents[3]
CLOCK = ("train/fps", "train/updates_per_s", "train/update_share")
P2E = Plan2ExploreConfig(members=3, layers=1, units=8)


def tiny(logdir, **overrides) -> DreamerConfig:
    """The DreamerV2 tests' tiny run with Plan2Explore's tiny ensemble (`P2E`)."""
    return dreamer_tiny(logdir, **{"p2e": P2E, **overrides})


def rows_without_clock(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in CLOCK} for r in read_metrics(run)]


def test_defaults_are_danijars():
    cfg = Plan2ExploreConfig()
    assert (cfg.members, cfg.layers, cfg.units, cfg.target, cfg.log) == (10, 4, 400, "stoch", False)
    assert (cfg.intr_scale, cfg.extr_scale, cfg.norm_momentum, cfg.action_cond) == (1, 0, 1, True)
    assert (cfg.lr, cfg.adam_eps, cfg.grad_clip, cfg.weight_decay) == (3e-4, 1e-5, 100, 1e-6)
    assert DreamerConfig().explore == "none" and DreamerConfig().explore_steps == 0


@pytest.mark.parametrize("action", ["taken", "arrived"])
def test_the_intrinsic_reward_at_step_k_comes_from_the_right_state_and_action(action):
    """Two linear members, one predicting 0 and one c = f + 100 a in every target dim, where f
    is the input state's first feature and a the action's first component: the disagreement of
    an input is |c| / 2 and names the (state, action) it came from. Imagined z_k has f = k + 1,
    and action[k] = k / 10 led to it (0 for z_0). See the diagram in plan2explore.py."""
    model = CategoricalRSSM((5,), 2, MODEL)
    p2e = Plan2Explore(model, 2, Plan2ExploreConfig(members=2, layers=0, action=action))
    head = p2e.ensemble.net.head  # layers=0: the members are linear
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, 0, :] = 1.0  # the first feature of z
        head.weight[1, model.feat_dim, :] = 100.0  # the first action component
    H = 4
    feat = torch.zeros(1, H + 1, model.feat_dim)
    feat[0, :, 0] = torch.arange(H + 1) + 1.0
    act = torch.zeros(1, H + 1, 2)
    act[0, 1:, 0] = torch.arange(1, H + 1) / 10
    with torch.no_grad():
        reward, metrics = p2e.reward(model, {"feat": feat, "action": act, "state": {}})

    def code(k_state, k_action):  # the disagreement of (z_(k_state), action[k_action])
        return float(feat[0, k_state, 0] + 100 * act[0, k_action, 0]) / 2

    if action == "taken":  # reward[k]: the step z_(k-1) --a_k--> z_k; none arrives in z_0
        expect = [0.0] + [code(k - 1, k) for k in range(1, H + 1)]
        assert expect == [0.0, 11 / 2, 22 / 2, 33 / 2, 44 / 2]  # f = k, 100 a = 10 k
        counted = expect[1:]
    else:  # danijar's: reward[k] from z_k and the action that led to it
        expect = counted = [code(k, k) for k in range(H + 1)]
    assert reward.shape == (1, H + 1)
    assert reward[0].tolist() == pytest.approx(expect)
    assert float(metrics["disagreement"]) == pytest.approx(sum(counted) / len(counted))


def test_the_explorer_imagines_with_the_intrinsic_reward_aligned():
    """Through `ActorCritic.imagine` on a real RSSM: reward[k] is the disagreement of
    (features of z_(k-1), the action sampled there, which led to z_k); reward[0] is 0."""
    torch.manual_seed(0)
    model = CategoricalRSSM((5,), 2, MODEL)
    p2e = Plan2Explore(model, 2, P2E, ActorCriticConfig(horizon=4, layers=1, units=8))
    batch = random_batch((5,), 2, 2, 3)
    post = model.observe(batch["obs"], batch["action"], batch["is_first"])
    start = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.items()}
    with torch.no_grad():
        seq = p2e.explorer.imagine(model, start, reward_fn=lambda s: p2e.reward(model, s)[0])
        assert seq["reward"].shape == (6, 5) and not seq["reward"][:, 0].any()
        for k in range(1, 5):
            x = torch.cat([seq["feat"][:, k - 1], seq["action"][:, k]], -1)
            torch.testing.assert_close(seq["reward"][:, k], p2e.ensemble.disagreement(x))


@pytest.mark.parametrize("action", ["taken", "arrived"])
def test_the_ensemble_learns_row_t_to_row_t_plus_1_within_episodes(action):
    torch.manual_seed(0)
    model = CategoricalRSSM((5,), 2, MODEL)
    p2e = Plan2Explore(model, 2, dataclasses.replace(P2E, action=action))
    batch = random_batch((5,), 2, 2, 6)
    batch["is_first"][1, 3] = True  # an episode starts at row 3 of the second chunk
    with torch.no_grad():
        post = model.observe(batch["obs"], batch["action"], batch["is_first"])
        x, y, mask = p2e.transitions(model, post, batch)
        feat = model.features(post)
    assert x.shape == (2, 5, model.feat_dim + 2) and y.shape == (2, 5, 12)
    action_in = torch.as_tensor(batch["action"]) * ~torch.as_tensor(batch["is_first"])[..., None]
    for b in range(2):
        for t in range(5):
            a = action_in[b, t + 1] if action == "taken" else action_in[b, t]
            torch.testing.assert_close(x[b, t], torch.cat([feat[b, t], a]))
            torch.testing.assert_close(y[b, t], post["stoch"][b, t + 1].flatten())
    assert mask.tolist() == [[True] * 5, [True, True, False, True, True]]


def test_an_update_trains_the_ensemble_and_the_explorer_and_nothing_else():
    torch.manual_seed(0)
    model = CategoricalRSSM((5,), 2, MODEL)
    p2e = Plan2Explore(model, 2, dataclasses.replace(P2E, lr=3e-3), ActorCriticConfig(
        horizon=3, layers=1, units=8))  # fmt: skip
    batch = random_batch((5,), 2, 4, 8)
    with torch.no_grad():
        post = model.observe(batch["obs"], batch["action"], batch["is_first"])
    frozen_parts = [p.detach().clone() for p in model.parameters()]
    before = {k: v.clone() for k, v in p2e.state_dict().items()}
    losses = [p2e.update(model, post, batch)["ensemble_loss"] for _ in range(30)]
    metrics = p2e.update(model, post, batch)
    assert {"ensemble_loss", "disagreement", "intrinsic_reward", "expl/actor_loss"} <= set(metrics)
    assert losses[-1] < losses[0]  # the members fit the fixed batch's next latents
    assert all(torch.equal(a, b) for a, b in zip(frozen_parts, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    after = p2e.state_dict()
    for part in ("ensemble.net.head.weight", "explorer.actor.net.0.weight",
                 "explorer.critic.0.weight"):  # fmt: skip
        assert not torch.equal(before[part], after[part]), part
    assert int(after["explorer.updates"]) == 31


def test_the_update_with_the_explorer_never_waits_for_the_device():
    """On the meta device anything that would sync raises (see test_dreamer's twin)."""
    cfg = tiny("unused")
    model, ac, optimizer = setup_update((5,), 2, "meta", cfg)
    p2e = Plan2Explore(model, 2, P2E, cfg.ac).to("meta")
    update = make_update(model, ac, optimizer, "meta", sync=False, p2e=p2e)
    metrics = update(random_batch((5,), 2, 3, 6))
    assert {"ensemble_loss", "disagreement", "intrinsic_reward", "expl/critic_loss"} <= set(metrics)
    assert all(v.device.type == "meta" and v.shape == () for v in metrics.values())
    with pytest.raises(NotImplementedError, match="meta"):
        make_update(model, ac, optimizer, "meta", sync=True, p2e=p2e)(random_batch((5,), 2, 3, 6))


def script_main(argv):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_dreamer as script
    finally:
        sys.path.pop(0)
    return script.main(argv)


def test_the_smoke_preset_explores_end_to_end_and_resumes(tmp_path, capsys):
    """`--explore plan2explore --preset smoke` (pixels): the explorer acts, the task actor is
    evaluated, the metrics and the checkpoint hold the ensemble and the explorer with their
    optimisers, and --resume continues them."""
    run = tmp_path / "run"
    base = ["--env", "dmc:cartpole-swingup", "--preset", "smoke", "--logdir", str(run)]
    summary = script_main([*base, "--explore", "plan2explore"])
    assert summary["env_steps"] == 2000 and summary["updates"] == 5 + 5
    last = read_metrics(run)[-1]
    for key in ("train/intrinsic_reward", "train/disagreement", "train/ensemble_loss",
                "train/expl/actor_loss", "eval/return"):  # fmt: skip
        assert key in last, key
    assert last["train/exploring"] == 1.0 and last["train/disagreement"] > 0
    state = load_checkpoint(run / "checkpoint.pt")
    assert set(state["p2e_optimizers"]) == {"ensemble", "actor", "critic"}
    assert state["plan2explore"]["ensemble.net.head.weight"].shape == (10, 32, 8 * 8)
    assert int(state["plan2explore"]["explorer.updates"]) == 10
    assert read_meta(run / "checkpoint.pt")["explore"] == "plan2explore"

    summary = script_main(["--logdir", str(run), "--resume", "--steps", "3000"])
    assert summary["env_steps"] == 3000 and summary["updates"] == 15
    after = load_checkpoint(run / "checkpoint.pt")
    assert int(after["plan2explore"]["explorer.updates"]) == 15
    weight = "ensemble.net.head.weight"
    assert not torch.equal(state["plan2explore"][weight], after["plan2explore"][weight])
    with pytest.raises(SystemExit):
        script_main(["--help"])
    out = capsys.readouterr().out
    assert "--explore" in out and "--explore-steps" in out and "--p2e.members" in out


class Crash(Exception):
    pass


@pytest.mark.parametrize("explore", ["plan2explore", "random"])
def test_a_run_that_dies_after_a_checkpoint_resumes_to_the_uninterrupted_run(
    tmp_path, monkeypatch, explore
):
    """Explore for 3000 env steps, then the task actor acts up to 4000. A run that dies right
    after its checkpoint at 2000 and is resumed logs what the run that never stopped logs, bit
    for bit, and ends with the same weights: the checkpoint holds the ensemble, the explorer,
    their optimisers and the generators the exploring draws from. The switch at 3000 evaluates
    the task actor before it has acted (zero-shot), though eval_every is far off."""

    def cfg(run):
        return tiny(run, steps=4000, explore=explore, explore_steps=3000)

    whole = train_dreamer(cfg(tmp_path / "whole"))
    real, saves = dreamer.save, []

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:  # the pretraining's, then the first training episode's (2000)
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(dreamer, "save", save_then_die)
        with pytest.raises(Crash):
            train_dreamer(cfg(tmp_path / "killed"))
    resumed = train_dreamer(cfg(tmp_path / "killed"), resume=True)
    assert resumed == {**whole, "run_dir": str(tmp_path / "killed")}

    rows = rows_without_clock(tmp_path / "whole")
    assert rows == rows_without_clock(tmp_path / "killed")
    assert [(r["step"], r["train/exploring"]) for r in rows[1:]] == [(2000, 1), (3000, 1),
                                                                     (4000, 0)]  # fmt: skip
    assert [r["step"] for r in rows if "eval/return" in r] == [3000, 4000]
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("whole", "killed"))
    parts = ["model", "actor_critic"] + (["plan2explore"] if explore == "plan2explore" else [])
    for part in parts:
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items()), part
    assert ("plan2explore" in a) == (explore == "plan2explore")
    assert ("train/intrinsic_reward" in rows[-1]) == (explore == "plan2explore")


def test_without_explore_the_run_is_dreamerv2s(tmp_path):
    """--explore none (the default) builds no explorer: the p2e settings change no number, the
    rows and the checkpoint hold nothing new, a checkpoint from before the option (no explore
    in its meta) resumes, and an exploring run cannot resume a run that did not explore."""
    runs = {}
    for name, p2e in {"tiny": P2E, "default": Plan2ExploreConfig()}.items():
        train_dreamer(tiny(tmp_path / name, p2e=p2e))
        state = load_checkpoint(tmp_path / name / "checkpoint.pt")
        runs[name] = rows_without_clock(tmp_path / name), state
    (rows, state), (rows_default, state_default) = runs["tiny"], runs["default"]
    assert rows == rows_default
    for part in ("model", "actor_critic"):
        assert all(torch.equal(v, state_default[part][k]) for k, v in state[part].items())
    assert not {"plan2explore", "p2e_optimizers"} & set(state)
    assert not any("exploring" in k or "intrinsic" in k or "expl/" in k for r in rows for k in r)
    path = tmp_path / "tiny" / "checkpoint.pt"
    assert read_meta(path)["explore"] is None

    payload = torch.load(path, weights_only=True)
    del payload["meta"]["explore"]  # as a checkpoint written before the option
    torch.save(payload, path)
    assert train_dreamer(tiny(tmp_path / "tiny", steps=3000), resume=True)["env_steps"] == 3000
    with pytest.raises(CheckpointError, match="explore"):
        train_dreamer(tiny(tmp_path / "tiny", steps=4000, explore="plan2explore"), resume=True)
