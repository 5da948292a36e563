"""CORL's per-dataset settings of the offline suite, as values of our configs' fields.

Source: CORL (github.com/corl-team/CORL) at commit eeeeef2671235fcce3a3eb255576a207d78840e6,
configs/offline/<algo>/<env>/<dataset>.yaml, one file per algorithm (awac, bc, cql, dt, edac,
iql, rebrac, sac_n, td3_bc) and D4RL dataset. Only facts are taken from them: the values that vary
across an algorithm's datasets, stored here under our field names where they differ from our
defaults. Every other value in these files equals our default, has no counterpart in our
configs (docs/offline.md lists those), or is the same on every dataset (SAC-N's and EDAC's 3M
steps, DT's 100k: --steps). SAC-RND is not in that commit: its values come from CORL's SAC-RND
pull request (github.com/tinkoff-ai/CORL commit 3a599ea4609bc9079a51febeb057ccd53f22dcfe,
configs/sac_rnd/<env>/<dataset>.yaml), one file for each of the 18 locomotion and 6 antmaze
datasets.

    preset_for("iql", "mujoco/hopper/medium-v0")
    -> ("corl/iql/hopper-medium", {"iql.iql_deterministic": True, "iql.tau": 0.001})

A family is a D4RL dataset name without its version ("hopper-medium-replay"); an algorithm's
table has one entry per dataset CORL tunes it on, empty where CORL's values are our defaults.

Our `normalize_reward` is the locomotion scaling r * 1000 / (max - min episode return); it is
CORL's `normalize_reward` on halfcheetah, hopper and walker2d only. CORL's reward change on
antmaze (r - 1; ReBRAC and SAC-RND r * 100; CQL r * reward_scale + reward_bias) is not in our
configs, so an antmaze preset leaves rewards as they are.
"""

from __future__ import annotations

import re
from typing import Any


def _families(envs: tuple[str, ...], kinds: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{env}-{kind}" for env in envs for kind in kinds)


LOCOMOTION_ENVS = ("halfcheetah", "hopper", "walker2d")
ADROIT_ENVS = ("pen", "door", "hammer", "relocate")
LOCOMOTION = _families(
    LOCOMOTION_ENVS, ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
)
MEDIUM = ("medium", "medium-replay", "medium-expert")  # SAC-N's and EDAC's locomotion datasets
ANTMAZE = _families(
    ("antmaze",),
    ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"),
)
MAZE2D = _families(("maze2d",), ("umaze", "medium", "large"))
MAZE2D_DENSE = _families(("maze2d",), ("umaze-dense", "medium-dense", "large-dense"))
ADROIT_KINDS = ("human", "cloned", "expert")
ADROIT = _families(ADROIT_ENVS, ADROIT_KINDS)
FAMILIES = LOCOMOTION + ANTMAZE + MAZE2D + MAZE2D_DENSE + ADROIT  # CORL's 42 datasets


def _each(families: tuple[str, ...], **values) -> dict[str, dict[str, Any]]:
    return {name: dict(values) for name in families}


# ReBRAC's two BC coefficients, (actor_bc_coef, critic_bc_coef), per dataset.
_REBRAC_BC = {
    "halfcheetah-random": (0.001, 0.1),
    "halfcheetah-medium": (0.001, 0.01),
    "halfcheetah-medium-replay": (0.01, 0.001),
    "halfcheetah-medium-expert": (0.01, 0.1),
    "halfcheetah-expert": (0.01, 0.01),
    "halfcheetah-full-replay": (0.001, 0.1),
    "hopper-random": (0.001, 0.01),
    "hopper-medium": (0.01, 0.01),
    "hopper-medium-replay": (0.05, 0.5),
    "hopper-medium-expert": (0.1, 0.01),
    "hopper-expert": (0.1, 0.1),
    "hopper-full-replay": (0.01, 0.01),
    "walker2d-random": (0.01, 0.0),
    "walker2d-medium": (0.05, 0.1),
    "walker2d-medium-replay": (0.05, 0.01),
    "walker2d-medium-expert": (0.01, 0.01),
    "walker2d-expert": (0.01, 0.5),
    "walker2d-full-replay": (0.01, 0.01),
    "antmaze-umaze": (0.003, 0.002),
    "antmaze-umaze-diverse": (0.003, 0.001),
    "antmaze-medium-play": (0.001, 0.0005),
    "antmaze-medium-diverse": (0.001, 0.0),
    "antmaze-large-play": (0.002, 0.001),
    "antmaze-large-diverse": (0.002, 0.002),
    "maze2d-umaze": (0.003, 0.001),
    "maze2d-medium": (0.003, 0.001),
    "maze2d-large": (0.003, 0.001),
    "pen-human": (0.1, 0.5),
    "pen-cloned": (0.05, 0.5),
    "pen-expert": (0.01, 0.01),
    "door-human": (0.1, 0.1),
    "door-cloned": (0.01, 0.1),
    "door-expert": (0.05, 0.01),
    "hammer-human": (0.01, 0.5),
    "hammer-cloned": (0.1, 0.5),
    "hammer-expert": (0.01, 0.01),
    "relocate-human": (0.1, 0.01),
    "relocate-cloned": (0.1, 0.01),
    "relocate-expert": (0.05, 0.01),
}
# ReBRAC off locomotion: smaller batches and learning rates; antmaze also a longer horizon.
_REBRAC_REST = {"actor_lr": 3e-4, "critic_lr": 3e-4, "batch_size": 256}
_REBRAC_ANTMAZE = {"actor_lr": 3e-4, "critic_lr": 5e-5, "batch_size": 256, "discount": 0.999}


def _rebrac(name: str) -> dict[str, Any]:
    actor, critic = _REBRAC_BC[name]
    rest = {} if name in LOCOMOTION else _REBRAC_ANTMAZE if name in ANTMAZE else _REBRAC_REST
    return {"actor_bc_coef": actor, "critic_bc_coef": critic, **rest}


# SAC-RND's bonus weights, (actor_beta, critic_beta), per dataset; 1.0 is our default.
_SACRND_BETA = {
    "halfcheetah-random": (0.1, 0.1),
    "halfcheetah-medium": (0.3, 0.3),
    "halfcheetah-medium-replay": (0.1, 0.1),
    "halfcheetah-medium-expert": (0.1, 0.1),
    "halfcheetah-expert": (6.0, 6.0),
    "halfcheetah-full-replay": (3.0, 3.0),
    "hopper-random": (5.0, 5.0),
    "hopper-medium": (25.0, 25.0),
    "hopper-medium-replay": (8.0, 8.0),
    "hopper-medium-expert": (15.0, 15.0),
    "hopper-expert": (20.0, 20.0),
    "hopper-full-replay": (3.0, 3.0),
    "walker2d-random": (1.0, 1.0),
    "walker2d-medium": (8.0, 8.0),
    "walker2d-medium-replay": (8.0, 8.0),
    "walker2d-medium-expert": (25.0, 25.0),
    "walker2d-expert": (4.0, 4.0),
    "walker2d-full-replay": (3.0, 3.0),
    "antmaze-umaze": (1.0, 0.1),
    "antmaze-umaze-diverse": (1.0, 0.1),
    "antmaze-medium-play": (0.5, 0.001),
    "antmaze-medium-diverse": (1.0, 0.01),
    "antmaze-large-play": (1.0, 0.01),
    "antmaze-large-diverse": (0.5, 0.01),
}
# SAC-RND on antmaze: smaller batches and learning rates, a longer horizon.
_SACRND_ANTMAZE = {
    "actor_lr": 3e-4, "critic_lr": 3e-4, "alpha_lr": 3e-4, "batch_size": 256, "discount": 0.999,
}  # fmt: skip


def _sacrnd(name: str) -> dict[str, Any]:
    betas = zip(("actor_beta", "critic_beta"), _SACRND_BETA[name], strict=True)
    rest = _SACRND_ANTMAZE if name in ANTMAZE else {}
    return {**{k: v for k, v in betas if v != 1.0}, **rest}


# DT's target returns (highest first, as CORL's configs list them) per environment; antmaze's
# below. A dataset without a preset conditions on its best episode return (`offline.dt`).
_DT_TARGETS = {
    "halfcheetah": (12000.0, 6000.0),
    "hopper": (3600.0, 1800.0),
    "walker2d": (5000.0, 2500.0),
    "maze2d": (280.0, 140.0),
    "pen": (3100.0, 1550.0),
    "door": (2900.0, 1450.0),
    "hammer": (12800.0, 6400.0),
    "relocate": (4300.0, 2150.0),
}
_DT_ANTMAZE_DIVERSE = (1.0, 0.5, 0.25, 0.125, 0.06, 0.03)  # the *-diverse datasets; others 1, 0.5


def _dt(name: str) -> dict[str, Any]:
    """CORL's DT on antmaze keeps its dataclass batch (64) and lr (1e-4) and unscaled rewards;
    everywhere else batch 4096 and lr 8e-4, rewards unscaled off locomotion."""
    env = name.split("-")[0]
    if env == "antmaze":
        targets = _DT_ANTMAZE_DIVERSE if name.endswith("diverse") else (1.0, 0.5)
        return {"target_returns": targets, "reward_scale": 1.0}
    out: dict[str, Any] = {"target_returns": _DT_TARGETS[env], "batch_size": 4096, "lr": 8e-4}
    return out if name in LOCOMOTION else {**out, "reward_scale": 1.0}


# CQL on antmaze: the Lagrange form, max-backup targets and clipped differences, raw states.
_CQL_ANTMAZE = {
    "cql_alpha": 5.0,
    "cql_lagrange": True,
    "cql_target_action_gap": 0.8,
    "cql_max_target_backup": True,
    "cql_clip_diff_min": -200.0,
    "policy_lr": 1e-4,
    "normalize_states": False,
}

# algorithm -> family -> {our field: CORL's value}, only where it differs from our default.
CORL: dict[str, dict[str, dict[str, Any]]] = {
    "bc": _each(FAMILIES),
    "td3bc": _each(FAMILIES),
    "cql": {
        **_each(LOCOMOTION),
        "hopper-medium": {"normalize_reward": True},
        **_each(ANTMAZE, **_CQL_ANTMAZE),
        **_each(MAZE2D + MAZE2D_DENSE, cql_lagrange=True, cql_target_action_gap=5.0),
        **_each(ADROIT, cql_alpha=1.0, policy_lr=1e-4),
    },
    "iql": {
        **_each(LOCOMOTION + MAZE2D + MAZE2D_DENSE, normalize_reward=False),
        "hopper-medium": {"iql_deterministic": True, "tau": 1e-3},
        "hopper-medium-replay": {"iql_deterministic": True, "tau": 1e-3},
        "hopper-medium-expert": {"beta": 6.0, "iql_tau": 0.5, "normalize_reward": False},
        **_each(ANTMAZE, beta=10.0, iql_tau=0.9, normalize_reward=False),
        **_each(ADROIT, iql_tau=0.8, actor_dropout=0.1, normalize_reward=False),
    },
    "awac": {
        **_each(LOCOMOTION),
        **_each(ANTMAZE + MAZE2D + MAZE2D_DENSE + ADROIT, awac_lambda=0.1),
    },
    "rebrac": {name: _rebrac(name) for name in _REBRAC_BC},
    "sacn": {
        **_each(_families(("halfcheetah",), MEDIUM)),
        "hopper-medium": {"num_critics": 500},
        **_each(("hopper-medium-replay", "hopper-medium-expert"), num_critics=200),
        **_each(_families(("walker2d",), MEDIUM), num_critics=20),
        **_each(ANTMAZE + MAZE2D, num_critics=25),
        **_each(ADROIT, num_critics=100),
    },
    "edac": {
        **_each(_families(LOCOMOTION_ENVS, MEDIUM) + ANTMAZE),
        "halfcheetah-medium-expert": {"eta": 5.0},
        "walker2d-medium-expert": {"eta": 5.0},
        **_each(_families(("hopper",), MEDIUM), num_critics=50),
        **_each(MAZE2D, eta=0.1),
        **_each(_families(("door", "hammer", "relocate"), ADROIT_KINDS), num_critics=50, eta=200.0),
        **_each(("pen-cloned", "pen-expert"), num_critics=20, eta=10.0),
        "pen-human": {"num_critics": 20, "eta": 1000.0},
    },
    "sacrnd": {name: _sacrnd(name) for name in _SACRND_BETA},
    "dt": {
        name: _dt(name) for name in _families(LOCOMOTION_ENVS, MEDIUM) + ANTMAZE + MAZE2D + ADROIT
    },
}

# Names some datasets give an environment that D4RL calls otherwise.
_ENV_ALIASES = {"pointmaze": "maze2d"}
_ENVS = {name.split("-")[0] for name in FAMILIES}


def family(dataset_id: str) -> str | None:
    """The D4RL dataset a dataset id (or a path ending in one) stands for, or None:
    Minari's mujoco/hopper/medium-replay-v0, D4RL/antmaze/umaze-diverse-v1,
    D4RL/pointmaze/large-dense-v2 (maze2d), D4RL/door/human-v2; D4RL's hopper-medium-replay-v2;
    make_dataset's wmrl/hopper-medium-replay-v0 -> "hopper-medium-replay". Minari's `simple`
    datasets and environments CORL does not tune on have none."""
    name = re.sub(r"-v\d+$", "", dataset_id.strip().lower().rstrip("/"))
    parts = [p for p in name.split("/") if p]
    if not parts:
        return None
    if len(parts) >= 2 and _ENV_ALIASES.get(parts[-2], parts[-2]) in _ENVS:  # .../<env>/<kind>
        env, kind = parts[-2], parts[-1]
    else:  # .../<env>-<kind>
        env, _, kind = parts[-1].partition("-")
    found = f"{_ENV_ALIASES.get(env, env)}-{kind.replace('_', '-')}"
    return found if found in FAMILIES else None


def preset_for(algo: str, dataset_id: str) -> tuple[str, dict[str, Any]] | None:
    """(name, {"<algo>.<field>": value}) of CORL's settings of `algo` for `dataset_id`, e.g.
    ("corl/iql/hopper-medium", {"iql.tau": 0.001, ...}); None where CORL has no config for
    that algorithm on that dataset, or the id names no D4RL dataset."""
    found = family(dataset_id)
    table = CORL.get(algo, {})
    if found is None or found not in table:
        return None
    return f"corl/{algo}/{found}", {f"{algo}.{k}": v for k, v in table[found].items()}
