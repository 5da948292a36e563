"""CORL's per-dataset presets: which dataset an id names, the values (read off CORL's
configs/offline/<algo>/<env>/<dataset>.yaml), precedence of explicit settings, and a run's
config.json."""

import json
from pathlib import Path

import pytest
from offline_helpers import train_offline_main

from wmrl.infra.config import apply_overrides, get_path
from wmrl.offline.compare import CompareConfig, compare_offline
from wmrl.offline.corl_presets import CORL, FAMILIES, family, preset_for
from wmrl.offline.datagen.make_dataset import KINDS, MakeDatasetConfig, dataset_ids
from wmrl.offline.trainer import (
    ALGORITHMS,
    OfflineConfig,
    apply_corl_preset,
    command_line_fields,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Minari's notes on unset metadata
]


@pytest.mark.parametrize(
    "dataset_id, expected",
    [
        # Minari's D4RL successors
        ("mujoco/hopper/medium-replay-v0", "hopper-medium-replay"),
        ("mujoco/halfcheetah/expert-v0", "halfcheetah-expert"),
        ("mujoco/walker2d/medium-v0", "walker2d-medium"),
        ("mujoco/walker2d/simple-v0", None),  # no D4RL counterpart
        ("D4RL/antmaze/umaze-diverse-v1", "antmaze-umaze-diverse"),
        ("D4RL/antmaze/large-play-v1", "antmaze-large-play"),
        ("D4RL/pointmaze/medium-dense-v2", "maze2d-medium-dense"),
        ("D4RL/door/human-v2", "door-human"),
        ("D4RL/relocate/cloned-v2", "relocate-cloned"),
        # D4RL's own names
        ("hopper-medium-replay-v2", "hopper-medium-replay"),
        ("halfcheetah-full-replay-v2", "halfcheetah-full-replay"),
        ("walker2d-medium-expert-v2", "walker2d-medium-expert"),
        ("antmaze-medium-diverse-v2", "antmaze-medium-diverse"),
        ("maze2d-umaze-dense-v1", "maze2d-umaze-dense"),
        ("pen-expert-v1", "pen-expert"),
        # make_dataset's ids, and a path ending in an id
        ("wmrl/hopper-medium-replay-v0", "hopper-medium-replay"),
        ("wmrl-smoke/halfcheetah-random-v0", "halfcheetah-random"),
        ("/data/minari/mujoco/hopper/medium-v0/", "hopper-medium"),
        # datasets CORL does not tune on
        ("test/pendulum-random-v0", None),
        ("wmrl/cartpole-swingup-random-v0", None),
        ("mujoco/ant/medium-v0", None),
        ("D4RL/kitchen/mixed-v2", None),
        ("hopper-v2", None),
        ("", None),
    ],
)
def test_each_id_form_names_its_d4rl_dataset(dataset_id, expected):
    assert family(dataset_id) == expected


@pytest.mark.parametrize("env", ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
def test_make_dataset_ids_name_their_d4rl_dataset(env):
    ids = dataset_ids(MakeDatasetConfig(env=env))
    name = env.split("-")[0].lower()
    assert {kind: family(ids[kind]) for kind in KINDS} == {k: f"{name}-{k}" for k in KINDS}


def test_values_are_corl_configs():
    # Numbers read off CORL's configs/offline/<algo>/<env>/<dataset>.yaml at eeeeef2.
    assert preset_for("iql", "mujoco/hopper/medium-v0") == (
        "corl/iql/hopper-medium",
        {"iql.iql_deterministic": True, "iql.tau": 0.001},
    )
    assert preset_for("iql", "halfcheetah-medium-v2")[1] == {"iql.normalize_reward": False}
    assert preset_for("iql", "hopper-medium-expert-v2")[1] == {
        "iql.beta": 6.0,
        "iql.iql_tau": 0.5,
        "iql.normalize_reward": False,
    }
    door = preset_for("iql", "D4RL/door/human-v2")[1]
    assert (door["iql.iql_tau"], door["iql.actor_dropout"]) == (0.8, 0.1)
    assert preset_for("cql", "hopper-medium-v2")[1] == {"cql.normalize_reward": True}
    assert preset_for("cql", "hopper-medium-replay-v2")[1] == {}
    assert preset_for("cql", "pen-human-v1")[1] == {"cql.cql_alpha": 1.0, "cql.policy_lr": 1e-4}
    antmaze = preset_for("cql", "antmaze-umaze-v2")[1]
    assert antmaze["cql.cql_lagrange"] and antmaze["cql.cql_max_target_backup"]
    assert (antmaze["cql.cql_target_action_gap"], antmaze["cql.cql_alpha"]) == (0.8, 5.0)
    assert preset_for("cql", "maze2d-large-v1")[1]["cql.cql_target_action_gap"] == 5.0
    rebrac = {
        "halfcheetah-medium-v2": (0.001, 0.01),
        "hopper-medium-replay-v2": (0.05, 0.5),
        "walker2d-medium-v2": (0.05, 0.1),
        "walker2d-random-v2": (0.01, 0.0),
    }
    for dataset_id, coefs in rebrac.items():
        values = preset_for("rebrac", dataset_id)[1]
        assert (values["rebrac.actor_bc_coef"], values["rebrac.critic_bc_coef"]) == coefs
    antmaze = preset_for("rebrac", "antmaze-medium-diverse-v2")[1]
    assert (antmaze["rebrac.discount"], antmaze["rebrac.critic_lr"]) == (0.999, 5e-5)
    assert preset_for("sacn", "hopper-medium-v2")[1] == {"sacn.num_critics": 500}
    assert preset_for("sacn", "walker2d-medium-replay-v2")[1] == {"sacn.num_critics": 20}
    assert preset_for("sacn", "halfcheetah-medium-v2")[1] == {}  # 10 critics, our default
    assert preset_for("edac", "pen-human-v1")[1] == {"edac.num_critics": 20, "edac.eta": 1000.0}
    assert preset_for("edac", "halfcheetah-medium-expert-v2")[1] == {"edac.eta": 5.0}
    assert preset_for("awac", "door-cloned-v1")[1] == {"awac.awac_lambda": 0.1}
    assert preset_for("awac", "hopper-medium-v2")[1] == {}
    # SAC-RND, from CORL's pull request (commit 3a599ea, configs/sac_rnd/<env>/<dataset>.yaml)
    assert preset_for("sacrnd", "mujoco/hopper/medium-v0") == (
        "corl/sacrnd/hopper-medium",
        {"sacrnd.actor_beta": 25.0, "sacrnd.critic_beta": 25.0},
    )
    sacrnd = {
        "halfcheetah-medium-v2": 0.3,
        "halfcheetah-expert-v2": 6.0,
        "hopper-medium-replay-v2": 8.0,
        "walker2d-medium-expert-v2": 25.0,
        "walker2d-full-replay-v2": 3.0,
    }
    for dataset_id, beta in sacrnd.items():
        values = preset_for("sacrnd", dataset_id)[1]
        assert values == {"sacrnd.actor_beta": beta, "sacrnd.critic_beta": beta}
    assert preset_for("sacrnd", "walker2d-random-v2")[1] == {}  # beta 1, our default
    assert preset_for("sacrnd", "antmaze-medium-play-v1")[1] == {
        "sacrnd.actor_beta": 0.5,
        "sacrnd.critic_beta": 0.001,
        "sacrnd.actor_lr": 3e-4,
        "sacrnd.critic_lr": 3e-4,
        "sacrnd.alpha_lr": 3e-4,
        "sacrnd.batch_size": 256,
        "sacrnd.discount": 0.999,
    }
    umaze = preset_for("sacrnd", "D4RL/antmaze/umaze-v1")[1]
    assert "sacrnd.actor_beta" not in umaze and umaze["sacrnd.critic_beta"] == 0.1
    assert preset_for("sacrnd", "maze2d-umaze-v1") is None
    assert preset_for("sacrnd", "pen-human-v1") is None
    # DT (configs/offline/dt/<env>/<dataset>.yaml at eeeeef2): target returns per env, batch
    # 4096 and lr 8e-4 but on antmaze, rewards unscaled (reward_scale 1) but on locomotion
    assert preset_for("dt", "mujoco/hopper/medium-v0") == (
        "corl/dt/hopper-medium",
        {"dt.target_returns": (3600.0, 1800.0), "dt.batch_size": 4096, "dt.lr": 8e-4},
    )
    targets = {
        "halfcheetah-medium-replay-v2": (12000.0, 6000.0),
        "walker2d-medium-expert-v2": (5000.0, 2500.0),
        "maze2d-umaze-v1": (280.0, 140.0),
        "pen-cloned-v1": (3100.0, 1550.0),
        "door-human-v1": (2900.0, 1450.0),
        "hammer-expert-v1": (12800.0, 6400.0),
        "relocate-human-v1": (4300.0, 2150.0),
        "antmaze-medium-play-v2": (1.0, 0.5),
        "antmaze-large-diverse-v2": (1.0, 0.5, 0.25, 0.125, 0.06, 0.03),
    }
    for dataset_id, returns in targets.items():
        assert preset_for("dt", dataset_id)[1]["dt.target_returns"] == returns
    assert preset_for("dt", "D4RL/door/expert-v2")[1] == {
        "dt.target_returns": (2900.0, 1450.0),
        "dt.batch_size": 4096,
        "dt.lr": 8e-4,
        "dt.reward_scale": 1.0,
    }
    assert preset_for("dt", "antmaze-umaze-v2")[1] == {
        "dt.target_returns": (1.0, 0.5),
        "dt.reward_scale": 1.0,
    }
    assert preset_for("dt", "hopper-random-v2") is None  # CORL's DT: medium* locomotion only
    assert preset_for("dt", "maze2d-umaze-dense-v1") is None
    # CORL has SAC-N and EDAC configs only for medium* locomotion datasets
    assert preset_for("sacn", "hopper-expert-v2") is None
    assert preset_for("edac", "walker2d-random-v2") is None
    assert preset_for("morel", "hopper-medium-v2") is None


def test_every_stored_value_is_a_field_of_ours_set_away_from_its_default():
    assert set(CORL) == set(ALGORITHMS)
    defaults = OfflineConfig()
    for algo, table in CORL.items():
        assert set(table) <= set(FAMILIES)
        for name in table:
            _, values = preset_for(algo, name)
            cfg = apply_overrides(defaults, values, source=name)  # fields exist, types fit
            for path, value in values.items():
                assert get_path(cfg, path) == value != get_path(defaults, path), (name, path)
    assert len(FAMILIES) == 42
    assert {algo: len(t) for algo, t in CORL.items() if len(t) != 42} == {
        "rebrac": 39,  # no dense maze2d
        "sacn": 30,
        "edac": 30,
        "sacrnd": 24,  # locomotion and antmaze
        "dt": 30,  # medium* locomotion, antmaze, maze2d (no dense), Adroit
    }


def test_explicit_settings_win_and_none_opts_out():
    cfg = OfflineConfig(algo="iql", dataset="mujoco/hopper/medium-v0")
    applied, line = apply_corl_preset(cfg)
    assert (applied.iql.iql_deterministic, applied.iql.tau) == (True, 0.001)
    assert applied.corl_preset == "corl/iql/hopper-medium"
    assert line.startswith("preset corl/iql/hopper-medium: iql.iql_deterministic=True")
    # a flag given on the command line, even at the default value, keeps it
    kept, line = apply_corl_preset(cfg, keep={"iql.tau"})
    assert (kept.iql.iql_deterministic, kept.iql.tau) == (True, 0.005)
    assert "kept as given: iql.tau=0.005" in line
    # a field set away from its default keeps it too
    changed = apply_overrides(cfg, {"iql.tau": 0.01})
    assert apply_corl_preset(changed)[0].iql.tau == 0.01
    # resolved once: a second pass changes nothing
    again, line = apply_corl_preset(apply_overrides(applied, {"iql.tau": 0.005}))
    assert again.iql.tau == 0.005 and "as the run's config says" in line
    off, line = apply_corl_preset(apply_overrides(cfg, {"corl_preset": "none"}))
    assert (off.iql.iql_deterministic, off.iql.tau, off.corl_preset) == (False, 0.005, "none")
    unknown = OfflineConfig(algo="iql", dataset="test/pendulum-random-v0")
    none, line = apply_corl_preset(unknown)
    assert none.corl_preset == "none" and none.iql == unknown.iql
    assert line == "no CORL preset for test/pendulum-random-v0; using the defaults"
    with pytest.raises(ValueError, match="corl_preset must be auto or none"):
        OfflineConfig(corl_preset="hopper-medium")


def test_command_line_fields_are_the_flags_and_the_preset_given():
    fields = command_line_fields(["--algo", "iql", "--iql.tau", "0.005", "--preset", "smoke"])
    assert {"algo", "iql.tau", "iql.hidden", "sacn.batch_size"} <= fields
    assert "iql.beta" not in fields
    assert command_line_fields(["--iql.normalize-reward", "--resume"]) == {"iql.normalize_reward"}


def _config(run_dir):
    return json.loads((Path(run_dir) / "config.json").read_text())


def _args(dataset_id, logdir, *more, steps=2):
    return ["--algo", "iql", "--dataset", dataset_id, "--preset", "smoke", "--steps", str(steps),
            "--eval_every", "2", "--eval_episodes", "1", "--log_every", "1",
            "--logdir", str(logdir), *more]  # fmt: skip


def test_runs_save_the_preset_and_resume_with_it(minari_dataset, tmp_path, capsys):
    # CORL's IQL on hopper-random: normalize_reward false (ours: true).
    hopper = minari_dataset("Hopper-v5", episodes=4, max_steps=20)  # test/hopper-random-v0
    train_offline_main(_args(hopper, tmp_path / "auto"))
    assert "preset corl/iql/hopper-random: iql.normalize_reward=False" in capsys.readouterr().err
    saved = _config(tmp_path / "auto")
    assert saved["corl_preset"] == "corl/iql/hopper-random"
    assert saved["iql"]["normalize_reward"] is False

    # the flag, at its default value, wins, and a resume keeps it
    train_offline_main(_args(hopper, tmp_path / "flag", "--iql.normalize_reward", "true"))
    train_offline_main(["--logdir", str(tmp_path / "flag"), "--resume", "--steps", "4"])
    saved = _config(tmp_path / "flag")
    assert saved["iql"]["normalize_reward"] is True
    assert saved["corl_preset"] == "corl/iql/hopper-random"
    assert "as the run's config says" in capsys.readouterr().err

    train_offline_main(_args(hopper, tmp_path / "none", "--corl-preset", "none"))
    saved = _config(tmp_path / "none")
    assert (saved["corl_preset"], saved["iql"]["normalize_reward"]) == ("none", True)

    # a run from before presets (no corl_preset in its config) resumes with its settings
    old = _config(tmp_path / "none")
    del old["corl_preset"]
    (tmp_path / "none" / "config.json").write_text(json.dumps(old))
    train_offline_main(["--logdir", str(tmp_path / "none"), "--resume", "--steps", "4"])
    saved = _config(tmp_path / "none")
    assert (saved["corl_preset"], saved["iql"]["normalize_reward"]) == ("none", True)

    compare_offline(
        CompareConfig(algos="iql", datasets=hopper, seeds="0", steps=2, eval_every=2,
                      eval_episodes=1, preset="smoke", logdir=str(tmp_path / "compare"))
    )  # fmt: skip
    saved = _config(tmp_path / "compare" / "iql" / "test__hopper-random-v0" / "seed0")
    assert saved["corl_preset"] == "corl/iql/hopper-random"
    assert saved["iql"]["normalize_reward"] is False
