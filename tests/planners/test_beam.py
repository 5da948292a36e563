"""planners.beam: beam search finds the known best sequence of a toy model (checked against
enumerating every sequence), its score is the discounted sum of the rewards plus the discounted
final value, the final value steers the plan, and several starts keep their own beams."""

import itertools

import pytest
import torch

from wmrl.planners.beam import BeamConfig, BeamModel, beam_plan

MOVES = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])


class Line:
    """A point on a line moved by one of MOVES, drawn uniformly: r_t = -(x_(t+1) - target)^2 and
    V_t = value_weight * x_(t+1) (0 by default). State: {"x": (B,), "target": (B,)}, with
    "move" (B,) pending after `propose` and "next" (B,) after `evaluate`."""

    def __init__(self, discount=0.9, value_weight=0.0):
        self.discount, self.value_weight = discount, value_weight

    def propose(self, state):
        move = MOVES[torch.randint(len(MOVES), state["x"].shape)]
        return {**state, "move": move}, move[:, None]

    def evaluate(self, state):
        nxt = state["x"] + state["move"]
        return {**state, "next": nxt}, -((nxt - state["target"]) ** 2), self.value_weight * nxt

    def advance(self, state):
        return {"x": state["next"], "target": state["target"]}


def start(*targets):
    t = torch.tensor(targets)
    return {"x": torch.zeros_like(t), "target": t}


def best_by_enumeration(target: float, horizon: int, model: Line):
    """(best moves, best score) over all 5^H sequences, by the score's definition."""
    best = None
    for moves in itertools.product(MOVES.tolist(), repeat=horizon):
        x, score = 0.0, 0.0
        for i, m in enumerate(moves):
            x += m
            score += model.discount**i * -((x - target) ** 2)
        score += model.discount**horizon * model.value_weight * x
        if best is None or score > best[1]:
            best = (moves, score)
    return best


def test_line_fits_the_interface():
    assert isinstance(Line(), BeamModel)


def test_beam_search_finds_the_known_best_sequence():
    torch.manual_seed(0)
    model = Line()
    plan, score = beam_plan(model, start(1.5), BeamConfig(horizon=3, beam_width=32, expansions=4))
    moves, best = best_by_enumeration(1.5, 3, model)
    assert moves == (1.0, 0.5, 0.0)  # x: 1, 1.5, 1.5: the one sequence with rewards -0.25, 0, 0
    assert plan.shape == (1, 3, 1) and plan[0, :, 0].tolist() == list(moves)
    assert score.item() == pytest.approx(best) == pytest.approx(-0.25)


def test_the_score_adds_the_discounted_final_value_which_steers_the_plan():
    torch.manual_seed(0)
    cfg = BeamConfig(horizon=1, beam_width=32, expansions=4)
    model = Line(discount=0.5, value_weight=-10.0)  # the value pulls x down, the reward to 1.5
    plan, score = beam_plan(model, start(1.5), cfg)
    # r_0 + g V_0 = -(x - 1.5)^2 - 5 x: best at x = -1 (-1.25); without V, x = 1 (-0.25)
    assert plan[0, 0, 0].item() == -1.0
    assert score.item() == pytest.approx(-6.25 + 0.5 * -10.0 * -1.0)
    plan, _ = beam_plan(Line(discount=0.5), start(1.5), cfg)
    assert plan[0, 0, 0].item() == 1.0

    model = Line(discount=0.9, value_weight=0.5)  # H = 3: sum_i g^i r_i + g^3 V_2
    plan, score = beam_plan(model, start(1.5), BeamConfig(horizon=3, beam_width=32, expansions=4))
    moves, best = best_by_enumeration(1.5, 3, model)
    assert plan[0, :, 0].tolist() == list(moves)
    x = torch.tensor(moves).cumsum(0)
    expected = sum(0.9**i * -((x[i] - 1.5) ** 2) for i in range(3)) + 0.9**3 * 0.5 * x[2]
    assert score.item() == pytest.approx(float(expected)) == pytest.approx(best)


def test_several_starts_plan_at_once_each_with_its_own_beams():
    torch.manual_seed(0)
    model, targets = Line(), (1.5, -2.0, 0.5)
    plan, score = beam_plan(model, start(*targets), BeamConfig(horizon=3, beam_width=32,
                                                                expansions=4))  # fmt: skip
    assert plan.shape == (3, 3, 1) and score.shape == (3,)
    for n, target in enumerate(targets):
        moves, best = best_by_enumeration(target, 3, model)
        assert score[n].item() == pytest.approx(best)
        assert plan[n, :, 0].tolist() == list(moves)


def test_a_beam_of_one_keeps_the_best_of_each_steps_samples():
    torch.manual_seed(0)
    plan, score = beam_plan(Line(), start(1.5), BeamConfig(horizon=2, beam_width=1,
                                                            expansions=64))  # fmt: skip
    assert plan[0, :, 0].tolist() == [1.0, 0.5]  # greedy: x 1 (r -0.25), then 1.5 (r 0)
    assert score.item() == pytest.approx(-0.25)
