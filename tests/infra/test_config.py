"""infra.config: flags for every field, presets, precedence, resume, and errors."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from wmrl.infra import ConfigError, load_config, parse_config, save_config
from wmrl.infra.config import from_dict, to_dict


@dataclass
class Model:
    deter: int = 200  # deterministic GRU state
    free_nats: float = 3.0
    act: Literal["elu", "relu"] = "elu"


@dataclass
class Config:
    logdir: str = "runs/x"
    seed: int = 0
    steps: int = 1000
    lr: float = 1e-3
    device: str = "auto"
    dataset_id: str | None = None
    size: tuple[int, int] = (64, 64)
    layers: tuple[int, ...] = (400, 400)
    compile: bool = False
    model: Model = field(default_factory=Model)


PRESETS = {"smoke": {"steps": 10, "model.deter": 16}}


def test_defaults_are_the_dataclass():
    cfg, resume = parse_config(Config, PRESETS, argv=[])
    assert cfg == Config() and resume is False


def test_every_kind_of_field_parses():
    argv = ["--steps", "1e5", "--lr", "3e-4", "--dataset-id", "d4rl/hopper-v0", "--size", "32",
            "48", "--layers", "64", "64", "64", "--compile", "--model.free-nats", "1.5",
            "--model.act", "relu", "--model.deter", "30"]  # fmt: skip
    cfg, _ = parse_config(Config, PRESETS, argv=argv)
    assert cfg.steps == 100_000 and isinstance(cfg.steps, int)
    assert cfg.lr == 3e-4 and cfg.dataset_id == "d4rl/hopper-v0"
    assert cfg.size == (32, 48) and cfg.layers == (64, 64, 64) and cfg.compile is True
    assert cfg.model == Model(deter=30, free_nats=1.5, act="relu")
    cfg, _ = parse_config(Config, argv=["--dataset_id", "none", "--compile", "false"])
    assert cfg.dataset_id is None and cfg.compile is False


def test_preset_then_flags():
    cfg, _ = parse_config(Config, PRESETS, argv=["--preset", "smoke"])
    assert (cfg.steps, cfg.model.deter) == (10, 16)
    cfg, _ = parse_config(Config, PRESETS, argv=["--model.deter", "8", "--preset", "smoke"])
    assert (cfg.steps, cfg.model.deter) == (10, 8)  # flags win, whatever their order


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "1.5"], "expected an integer"),
        (["--model.act", "tanh"], "expected one of"),
        (["--compile", "maybe"], "expected true or false"),
        (["--size", "1", "2", "3"], "expected 2 values"),
        (["--preset", "huge"], "invalid choice"),
        (["--stepz", "3"], "unrecognized arguments"),
        (["--seed", "none"], "expected an integer|none is not allowed"),
    ],
)
def test_bad_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(Config, PRESETS, argv=argv)
    assert re.search(message, capsys.readouterr().err)


def test_bad_preset_field_is_named():
    with pytest.raises(SystemExit):
        parse_config(Config, {"bad": {"model.detr": 3}}, argv=["--preset", "bad"])


@dataclass
class Search:
    candidates: int = 1000
    top_k: int = 100

    def __post_init__(self):
        if not 1 <= self.top_k <= self.candidates:
            k, n = self.top_k, self.candidates
            raise ValueError(f"top_k ({k}) must lie in [1, candidates ({n})]")


@dataclass
class Planned:
    logdir: str = "runs/p"
    search: Search = field(default_factory=Search)


@pytest.mark.parametrize("order", [("candidates", "top-k"), ("top-k", "candidates")])
def test_dataclass_checks_see_all_overrides_together(order):
    # Set one at a time, candidates=50 would first meet top_k=100 and be rejected.
    values = {"candidates": "50", "top-k": "5"}
    argv = [a for name in order for a in (f"--search.{name}", values[name])]
    cfg, _ = parse_config(Planned, argv=argv)
    assert cfg.search == Search(candidates=50, top_k=5)
    assert from_dict(Planned, {"search": {"candidates": 50, "top_k": 5}}) == cfg


def test_dataclass_checks_still_reject_bad_combinations(capsys):
    with pytest.raises(SystemExit):
        parse_config(Planned, argv=["--search.candidates", "50", "--search.top-k", "60"])
    assert "top_k (60) must lie in [1, candidates (50)]" in capsys.readouterr().err


def test_config_round_trips_through_json(tmp_path):
    cfg = dataclasses.replace(Config(), size=(8, 8), dataset_id="x", model=Model(deter=5))
    save_config(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["deter"] == 5
    assert load_config(Config, tmp_path) == cfg
    assert from_dict(Config, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config field 'model.width'"):
        from_dict(Config, {"model": {"width": 3}})


def test_resume_keeps_the_saved_config_and_applies_new_flags(tmp_path):
    logdir = str(tmp_path / "run")
    cfg, _ = parse_config(Config, PRESETS, argv=["--logdir", logdir, "--preset", "smoke",
                                                 "--lr", "0.5"])  # fmt: skip
    (tmp_path / "run").mkdir()
    save_config(cfg, logdir)
    resumed, resume = parse_config(Config, PRESETS, argv=["--logdir", logdir, "--resume",
                                                          "--steps", "50"])  # fmt: skip
    assert resume is True
    assert resumed == dataclasses.replace(cfg, steps=50)  # lr 0.5 and deter 16 kept


def test_resume_without_a_run_names_the_logdir(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(Config, argv=["--logdir", str(tmp_path / "nothing"), "--resume"])
    assert "nothing to resume" in capsys.readouterr().err


def test_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Config, PRESETS, argv=["--help"], description="A test script.")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--model.free_nats", "--model.free-nats", "--dataset-id", "--preset", "--resume"):
        assert flag in out
    assert "[3.0]" in out and "[[64, 64]]" in out and "deterministic GRU state [200]" in out
    # list flags name their items' type
    assert "--layers INT [INT ...]" in out and "--size INT [INT ...]" in out


@dataclass
class Grid:
    preset: str = "default"  # a field of its own, as compare_offline's preset for every run
    seeds: str = "0,1,2"


def test_a_field_named_preset_is_a_plain_flag_when_the_config_has_no_presets():
    cfg, _ = parse_config(Grid, argv=["--preset", "smoke", "--seeds", "0"])
    assert cfg == Grid(preset="smoke", seeds="0")


@dataclass
class Long:
    steps: int = 10  # a budget whose comment is longer than
    # one line, and goes on here
    seed: int = 0  # done.
    # a note about the next field, not this one
    lr: float = 1e-3


def test_help_shows_a_comment_that_goes_on_below_its_field_and_no_more(capsys):
    with pytest.raises(SystemExit):
        parse_config(Long, argv=["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "a budget whose comment is longer than one line, and goes on here [10]" in out
    assert "done. [0]" in out and "a note about" not in out


def test_a_misspelt_flag_gets_one_line_with_did_you_mean(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(Long, argv=["--stepz", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "unrecognized arguments: --stepz 3; for --stepz did you mean --steps" in err
