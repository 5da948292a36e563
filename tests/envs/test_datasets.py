"""envs.datasets: Minari datasets written by the toolkit read back with Minari and vice versa,
transitions, normalised scores, atomic writes and errors.

Every test points MINARI_DATASETS_PATH at its own tmp_path, so nothing touches ~/.minari.
"""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from wmrl import envs
from wmrl.envs.datasets import (
    DatasetMismatchError,
    DatasetNotFoundError,
    DatasetValueError,
    OfflineDataset,
    UnsupportedDatasetError,
    export_replay,
    load_dataset,
    normalized_score,
    to_transitions,
    write_dataset,
)
from wmrl.envs.dmc import DMCEnv
from wmrl.envs.replay import KEYS, EpisodeReplay

# envs.make("gym:Pendulum-v1") wraps RescaleAction, which warns about float64 bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")

PENDULUM_MIN, PENDULUM_MAX = -1200.0, -150.0  # about random and expert returns


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty Minari datasets root for this test."""
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def rollout(env, max_steps, seed):
    """One episode with seeded random actions; if `max_steps` comes first, its last step is
    marked truncated (a time limit of our own)."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    ep = {k: [] for k in KEYS}
    ep["observations"].append(obs)
    for _ in range(max_steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        for k, v in zip(KEYS, (obs, action, reward, terminated, truncated), strict=True):
            ep[k].append(v)
        if terminated or truncated:
            break
    ep["truncations"][-1] = ep["truncations"][-1] or not ep["terminations"][-1]
    return {k: np.array(v) for k, v in ep.items()}


def handmade(eid, T, terminated, obs_dim=3, action_dim=1):
    """Minari-layout episode whose observation t is (eid, t, 0, ...) and reward r_t = eid + t."""
    t = np.arange(T + 1, dtype=np.float32)
    obs = np.zeros((T + 1, obs_dim), np.float32)
    obs[:, 0], obs[:, 1] = eid, t
    end = np.arange(T) == T - 1
    return {
        "observations": obs,
        "actions": np.full((T, action_dim), 0.1 * eid, np.float32),
        "rewards": (eid + t[:-1]).astype(np.float32),
        "terminations": end & terminated,
        "truncations": end & (not terminated),
    }


def assert_same_episodes(loaded, written):
    """Episodes (dicts or Minari EpisodeData) hold exactly the written arrays, obs dtype too."""
    assert len(loaded) == len(written)
    for got, want in zip(loaded, written, strict=True):
        got = {k: np.asarray(got[k] if isinstance(got, dict) else getattr(got, k)) for k in KEYS}
        for k in KEYS:
            want_k = np.asarray(want[k]).astype(got[k].dtype)
            assert got[k].shape == np.shape(want[k]), k
            np.testing.assert_array_equal(got[k], want_k, err_msg=k)
        assert got["observations"].dtype == np.asarray(want["observations"]).dtype


@pytest.fixture(scope="module")
def pendulum_episodes():
    """A 200-step episode truncated by Pendulum's TimeLimit, a 7-step prefix we truncate, and a
    handmade 9-step episode that terminates (Pendulum itself never does)."""
    env = envs.make("gym:Pendulum-v1")
    eps = [rollout(env, 500, seed=0), rollout(env, 7, seed=1)]
    term = rollout(env, 9, seed=2)
    term["truncations"][-1], term["terminations"][-1] = False, True
    return [*eps, term]


def test_toolkit_dataset_loads_with_minari(root, pendulum_episodes):
    eps = pendulum_episodes
    assert [len(ep["actions"]) for ep in eps] == [200, 7, 9]
    assert eps[0]["truncations"][-1] and not eps[0]["terminations"].any()
    env = envs.make("gym:Pendulum-v1")
    written = write_dataset("wmrl/pendulum-random-v0", eps, env, PENDULUM_MIN, PENDULUM_MAX,
                            algorithm_name="random", description="test")  # fmt: skip
    assert (len(written), written.total_steps) == (3, 216)

    ds = minari.load_dataset("wmrl/pendulum-random-v0")
    assert (ds.total_episodes, ds.total_steps) == (3, 216)
    assert_same_episodes(list(ds.iterate_episodes()), eps)
    loaded = list(ds.iterate_episodes())
    assert [ep.terminations.tolist() for ep in loaded] == [[False] * 200, [False] * 7,
                                                           [False] * 8 + [True]]  # fmt: skip
    assert [ep.truncations[-1] for ep in loaded] == [True, True, False]
    assert loaded[0].observations.dtype == np.float32  # Pendulum's space dtype

    returns = np.array([ep["rewards"].astype(np.float64).sum() for ep in eps])
    expect = (returns - PENDULUM_MIN) / (PENDULUM_MAX - PENDULUM_MIN)
    np.testing.assert_allclose(minari.get_normalized_score(ds, returns), expect, rtol=1e-12)
    meta = ds.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (PENDULUM_MIN, PENDULUM_MAX)
    assert meta["algorithm_name"] == "random"

    recovered = ds.recover_environment()
    assert recovered.observation_space == env.observation_space
    assert recovered.action_space == env.action_space  # rescaled to [-1, 1] by envs.make
    assert list(minari.list_local_datasets()) == ["wmrl/pendulum-random-v0"]
    from minari.namespace import list_local_namespaces

    assert list_local_namespaces() == ["wmrl"]

    ours = load_dataset("wmrl/pendulum-random-v0")
    assert_same_episodes(ours.episodes, eps)
    np.testing.assert_allclose(ours.returns(), returns, rtol=1e-6)
    np.testing.assert_allclose(ours.normalized_score(ours.returns()), 100 * expect, rtol=1e-6)
    ours.check_env(ours.recover_environment())


def test_terminations_from_hopper_kept_apart_from_truncations(root):
    env = envs.make("gym:Hopper-v5")
    eps = [rollout(env, 300, seed=s) for s in range(2)] + [rollout(env, 4, seed=5)]
    assert [ep["terminations"][-1] for ep in eps] == [True, True, False]  # random hoppers fall
    write_dataset("wmrl/hopper-random-v0", eps, "gym:Hopper-v5", -20.0, 3000.0)
    ds = minari.load_dataset("wmrl/hopper-random-v0")
    assert_same_episodes(list(ds.iterate_episodes()), eps)
    ours = load_dataset("wmrl/hopper-random-v0")
    assert ours.episodes[0]["observations"].dtype == np.float64  # Hopper's space dtype
    tr = ours.transitions()
    ends = np.cumsum([len(ep["actions"]) for ep in eps]) - 1
    np.testing.assert_array_equal(np.flatnonzero(tr["terminals"]), ends[:2])
    np.testing.assert_array_equal(np.flatnonzero(tr["timeouts"]), ends[2:])


def minari_buffers():
    """Episodes as EpisodeBuffers, built without envs.datasets: T = 6 terminated, 4 truncated,
    5 truncated; rewards float64 as Minari's DataCollector stores them."""
    rng = np.random.default_rng(0)
    out = []
    for T, terminated in ((6, True), (4, False), (5, False)):
        end = np.arange(T) == T - 1
        out.append(EpisodeBuffer(
            observations=rng.uniform(-1, 1, (T + 1, 3)).astype(np.float32),
            actions=rng.uniform(-2, 2, (T, 1)).astype(np.float32),
            rewards=rng.normal(size=T),
            terminations=end & terminated,
            truncations=end & (not terminated),
        ))  # fmt: skip
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # Minari's warnings about unset metadata
def test_minari_dataset_loads_by_id_and_path(root):
    buffers = minari_buffers()
    minari.create_dataset_from_buffers("test/pendulum-minari-v0", buffers, env="Pendulum-v1",
                                       ref_min_score=-1000.0, ref_max_score=-100.0)  # fmt: skip
    by_id = load_dataset("test/pendulum-minari-v0")
    by_dir = load_dataset(root / "test" / "pendulum-minari-v0")
    by_data = load_dataset(str(root / "test" / "pendulum-minari-v0" / "data"))
    for ds in (by_id, by_dir, by_data):
        assert ds.dataset_id == "test/pendulum-minari-v0"
        assert (len(ds), ds.total_steps) == (3, 15)
        assert (ds.ref_min_score, ds.ref_max_score) == (-1000.0, -100.0)
        assert ds.action_space == gym.spaces.Box(-2.0, 2.0, (1,), np.float32)  # raw Pendulum
        for ep, buf in zip(ds.episodes, buffers, strict=True):
            np.testing.assert_array_equal(ep["observations"], buf.observations)
            np.testing.assert_array_equal(ep["actions"], buf.actions)
            np.testing.assert_allclose(ep["rewards"], buf.rewards, rtol=1e-6)
            np.testing.assert_array_equal(ep["terminations"], buf.terminations)
            np.testing.assert_array_equal(ep["truncations"], buf.truncations)
        tr = ds.transitions()
        assert {k: v.shape for k, v in tr.items()} == {
            "observations": (15, 3), "actions": (15, 1), "rewards": (15,),
            "next_observations": (15, 3), "terminals": (15,), "timeouts": (15,),
        }  # fmt: skip
        np.testing.assert_array_equal(np.flatnonzero(tr["terminals"]), [5])
        np.testing.assert_array_equal(np.flatnonzero(tr["timeouts"]), [9, 14])
        np.testing.assert_array_equal(tr["next_observations"][9], buffers[1].observations[4])
    assert by_id.recover_environment().spec.id == "Pendulum-v1"

    # Without an env Minari stores no env spec, and drops reference scores it is given.
    minari.create_dataset_from_buffers("test/no-env-v0", minari_buffers(),
                                       observation_space=by_id.observation_space,
                                       action_space=by_id.action_space,
                                       ref_min_score=0.0, ref_max_score=1.0)  # fmt: skip
    bare = load_dataset("test/no-env-v0")
    assert bare.env_spec is None and bare.ref_min_score is None
    with pytest.raises(ValueError, match="no env spec.*check_env"):
        bare.recover_environment()
    with pytest.raises(ValueError, match="no reference scores.*write_dataset"):
        bare.normalized_score(0.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dict_observations_are_unsupported(root):
    space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,), np.float32)})
    buf = EpisodeBuffer(observations={"pos": np.zeros((3, 2), np.float32)},
                        actions=np.zeros((2, 1), np.float32), rewards=np.zeros(2),
                        terminations=np.array([False, True]),
                        truncations=np.array([False, False]))  # fmt: skip
    minari.create_dataset_from_buffers(
        "test/dict-v0",
        [buf],
        observation_space=space,
        action_space=gym.spaces.Box(-1, 1, (1,), np.float32),
    )
    with pytest.raises(UnsupportedDatasetError, match="observation space Dict.*Flatten"):
        load_dataset("test/dict-v0")


def test_pixel_dataset_round_trips_uint8_and_rebuilds_dmc(root):
    env = envs.make("dmc:cartpole-swingup", action_repeat=8)
    eps = [rollout(env, 5, seed=s) for s in range(2)]
    assert eps[0]["observations"].shape == (6, 64, 64, 3) and eps[0]["truncations"][-1]
    assert eps[0]["observations"].std() > 0
    write_dataset("wmrl/cartpole-pixels-v0", eps, env, 0.0, 800.0)
    env.close()

    ds = minari.load_dataset("wmrl/cartpole-pixels-v0")
    assert ds.storage.metadata["jpeg_encoding"] is False  # JPEG (Minari's default) is lossy
    assert_same_episodes(list(ds.iterate_episodes()), eps)  # exact uint8
    ours = load_dataset("wmrl/cartpole-pixels-v0")
    assert ours.episodes[1]["observations"].dtype == np.uint8
    assert_same_episodes(ours.episodes, eps)
    assert ours.transitions()["next_observations"].dtype == np.uint8

    rebuilt = ds.recover_environment()
    assert isinstance(rebuilt.unwrapped, DMCEnv) and rebuilt.unwrapped.action_repeat == 8
    assert rebuilt.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    ours.check_env(rebuilt)
    rebuilt.close()


def test_to_transitions_matches_hand_computation():
    a = handmade(eid=1, T=3, terminated=True)
    b = handmade(eid=2, T=2, terminated=False)
    tr = to_transitions([a, b])
    # transition i: (eid, t) of its observation and of the next one, within each episode
    np.testing.assert_array_equal(tr["observations"][:, :2], [[1, 0], [1, 1], [1, 2], [2, 0],
                                                               [2, 1]])  # fmt: skip
    np.testing.assert_array_equal(tr["next_observations"][:, :2], [[1, 1], [1, 2], [1, 3],
                                                                    [2, 1], [2, 2]])  # fmt: skip
    np.testing.assert_array_equal(tr["rewards"], [1, 2, 3, 2, 3])
    np.testing.assert_array_equal(tr["actions"][:, 0], np.float32([0.1, 0.1, 0.1, 0.2, 0.2]))
    np.testing.assert_array_equal(tr["terminals"], [False, False, True, False, False])
    np.testing.assert_array_equal(tr["timeouts"], [False, False, False, False, True])
    assert tr["terminals"].dtype == tr["timeouts"].dtype == bool
    with pytest.raises(ValueError, match="no episodes"):
        to_transitions([])
    with pytest.raises(ValueError, match="observation shape"):
        to_transitions([a, handmade(eid=3, T=2, terminated=False, obs_dim=4)])


def test_non_finite_values_are_refused_at_load_with_where_they_are(root):
    eps = [handmade(0, 20, False), handmade(1, 30, True)]
    eps[0]["observations"][5, 1] = np.nan  # observation of transition 5, next of transition 4
    eps[1]["rewards"][[3, 4]] = np.inf  # transitions 23 and 24
    write_dataset("wmrl/pendulum-nan-v0", eps, envs.make("gym:Pendulum-v1"), PENDULUM_MIN,
                  PENDULUM_MAX, algorithm_name="random", description="test")  # fmt: skip
    ds = load_dataset("wmrl/pendulum-nan-v0")
    expected = (r"4 of 50 transitions hold NaN or infinite values \(observations 1, "
                r"next_observations 1, rewards 2; the first is transition 4 \(episode 0, "
                r"step 4\)\)")  # fmt: skip
    with pytest.raises(DatasetValueError, match=expected):
        ds.transitions()


def test_actions_outside_the_space_and_empty_datasets_are_named(root):
    eps = [handmade(0, 20, False), handmade(1, 30, True)]
    write_dataset("wmrl/pendulum-wide-v0", eps, envs.make("gym:Pendulum-v1"), PENDULUM_MIN,
                  PENDULUM_MAX, algorithm_name="random", description="test")  # fmt: skip
    ds = load_dataset("wmrl/pendulum-wide-v0")
    ds.transitions()  # inside the space: accepted
    ds.episodes[1]["actions"][7] = 1.5  # envs.make rescales Pendulum's torque to [-1, 1]
    ds.episodes[1]["actions"][9] = -1.0  # on the bound: fine
    expected = (r"'wmrl/pendulum-wide-v0': 1 of 50 actions lie outside the action space "
                r"\[-1, 1\] \(the first is transition 27 \(episode 1, step 7\): \[1.5\]\); "
                r"clip them")  # fmt: skip
    with pytest.raises(DatasetValueError, match=expected):
        ds.transitions()
    with pytest.raises(DatasetValueError, match="carries no reference scores"):
        ds.ref_min_score = None
        ds.normalized_score(1.0)


def test_normalized_score_d4rl_scale_vs_minari_fraction(root):
    eps = [handmade(eid=0, T=4, terminated=False)]  # return 0 + 1 + 2 + 3 = 6
    env = envs.make("gym:Pendulum-v1")
    ds = write_dataset("wmrl/score-v0", eps, env, ref_min_score=6.0, ref_max_score=26.0)
    returns = np.array([6.0, 16.0, 26.0, 36.0, -4.0])
    np.testing.assert_allclose(ds.normalized_score(returns), [0, 50, 100, 150, -50])
    assert ds.normalized_score(ds.returns()[0]) == 0.0
    assert isinstance(ds.normalized_score(16.0), float)
    fraction = minari.get_normalized_score(minari.load_dataset("wmrl/score-v0"), returns)
    np.testing.assert_allclose(fraction, [0, 0.5, 1, 1.5, -0.5])
    assert normalized_score(-150.0, PENDULUM_MIN, PENDULUM_MAX) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="reference scores"):
        normalized_score(1.0, None, 10.0)
    with pytest.raises(ValueError, match="must exceed"):
        write_dataset("wmrl/score-v1", eps, env, ref_min_score=5.0, ref_max_score=5.0)


def test_unknown_dataset_names_id_root_close_ids_and_fix(root, tmp_path, pendulum_episodes):
    env = envs.make("gym:Pendulum-v1")
    write_dataset("wmrl/pendulum-random-v0", pendulum_episodes[1:], env, -1.0, 1.0)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("wmrl/pendulum-randm-v0")
    msg = str(info.value)
    for part in ("'wmrl/pendulum-randm-v0'", str(root), "wmrl/pendulum-random-v0",
                 "download=True", "--download true", "MINARI_DATASETS_PATH"):  # fmt: skip
        assert part in msg
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="not a Minari dataset"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="malformed dataset id.*-v<version>"):
        write_dataset("wmrl/no-version", pendulum_episodes, env, -1.0, 1.0)


def test_a_dataset_with_the_remote_layout_loads_with_its_scores_and_env(root, pendulum_episodes):
    """Minari's remote ids have nested namespaces (mujoco/hopper/medium-v0): a local dataset of
    that form loads by id, with its reference scores, and recovers its env."""
    env = envs.make("gym:Pendulum-v1")
    write_dataset("mujoco/pendulum/random-v0", pendulum_episodes, env, -1500.0, -150.0)
    assert (root / "mujoco" / "pendulum" / "random-v0" / "data").is_dir()
    ds = load_dataset("mujoco/pendulum/random-v0")
    assert (ds.dataset_id, ds.ref_min_score, ds.ref_max_score) == (
        "mujoco/pendulum/random-v0", -1500.0, -150.0
    )  # fmt: skip
    assert ds.normalized_score(-825.0) == pytest.approx(50.0)
    ds.check_env(ds.recover_environment())


def test_a_missing_id_is_downloaded_or_the_error_says_what_to_do(
    root, pendulum_episodes, monkeypatch
):
    import socket

    import minari

    from wmrl.envs import datasets

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mujoco/hopper/medium-v0", download=True)
    msg = str(info.value)
    for part in ("cannot be reached", "huggingface.co", "minari download mujoco/hopper/medium-v0",
                 str(root), "MINARI_DATASETS_PATH"):  # fmt: skip
        assert part in msg
    with pytest.raises(DatasetNotFoundError, match="--download true"):
        load_dataset("mujoco/hopper/medium-v0")  # no download asked for

    # Reachable: Minari's own download fetches it (here: writes it, as the remote would).
    class Connection:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    pendulum, local = envs.make("gym:Pendulum-v1"), minari.load_dataset

    def fetch(name, download=False):
        assert download
        write_dataset(name, pendulum_episodes, pendulum, -1500.0, -150.0)
        return local(name)

    monkeypatch.setattr(datasets._minari(), "load_dataset", fetch)
    ds = load_dataset("mujoco/pendulum/expert-v0", download=True)
    assert ds.dataset_id == "mujoco/pendulum/expert-v0" and ds.ref_max_score == -150.0

    def refused(name, download=False):
        raise ValueError(f"Couldn't find any version for dataset {name} in the remote")

    monkeypatch.setattr(datasets._minari(), "load_dataset", refused)
    with pytest.raises(DatasetNotFoundError, match="could not download 'mujoco/nope-v0'.*list"):
        load_dataset("mujoco/nope-v0", download=True)


def test_space_mismatch_names_both_spaces(root, pendulum_episodes):
    pendulum = envs.make("gym:Pendulum-v1")
    ds = write_dataset("wmrl/pendulum-random-v0", pendulum_episodes[1:], pendulum, -1.0, 1.0)
    ds.check_env(envs.make("gym:Pendulum-v1"))
    hopper = envs.make("gym:Hopper-v5")
    with pytest.raises(DatasetMismatchError) as info:
        ds.check_env(hopper)
    msg = str(info.value)
    assert str(ds.observation_space) in msg and str(hopper.observation_space) in msg
    assert "shapes differ ((3,) vs (11,))" in msg and "recover_environment" in msg
    # the raw gymnasium env acts in [-2, 2], the toolkit's in [-1, 1]
    with pytest.raises(DatasetMismatchError, match="action_space.*bounds differ"):
        ds.check_env(gym.make("Pendulum-v1"))
    with pytest.raises(DatasetMismatchError, match="episode 0 has observations"):
        write_dataset("wmrl/hopper-wrong-v0", pendulum_episodes, hopper, -1.0, 1.0)
    obs = pendulum_episodes[1]["observations"].astype(np.float64) + 1e-9
    lossy = dict(pendulum_episodes[1], observations=obs)
    with pytest.raises(DatasetMismatchError, match="float64.*without loss"):
        write_dataset("wmrl/lossy-v0", [lossy], pendulum, -1.0, 1.0)
    assert list(minari.list_local_datasets()) == ["wmrl/pendulum-random-v0"]
    # float64 observations that float32 holds exactly are stored (and load) as the space's float32
    exact = dict(pendulum_episodes[1], observations=obs.astype(np.float32).astype(np.float64))
    assert exact["observations"].dtype == np.float64
    write_dataset("wmrl/exact-v0", [exact], pendulum, -1.0, 1.0)
    loaded = minari.load_dataset("wmrl/exact-v0")[0].observations
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, pendulum_episodes[1]["observations"])


def leftovers(root):
    """Hidden temporary directories a write left in the datasets root."""
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_writes_are_atomic_and_never_clobber(root, monkeypatch, pendulum_episodes):
    env = envs.make("gym:Pendulum-v1")
    old = pendulum_episodes[1:]
    write_dataset("wmrl/pendulum-random-v0", old, env, -1.0, 1.0)
    with pytest.raises(FileExistsError, match="'wmrl/pendulum-random-v0'.*overwrite=True"):
        write_dataset("wmrl/pendulum-random-v0", pendulum_episodes, env, -1.0, 1.0)

    bad = dict(old[0], actions=np.zeros((len(old[0]["actions"]), 2), np.float32))
    for dataset_id in ("wmrl/pendulum-random-v0", "wmrl/pendulum-new-v0"):
        with pytest.raises(DatasetMismatchError, match=r"actions \(7, 2\)"):
            write_dataset(dataset_id, [old[1], bad], env, -1.0, 1.0, overwrite=True)

    # a failure in the middle of Minari's write, after one episode is on disk
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    real = HDF5Storage.update_episodes

    def crash(self, buffers):
        real(self, buffers[:1])
        raise OSError("disk full")

    monkeypatch.setattr(HDF5Storage, "update_episodes", crash)
    for dataset_id in ("wmrl/pendulum-random-v0", "wmrl/pendulum-new-v0"):
        with pytest.raises(OSError, match="disk full"):
            write_dataset(dataset_id, pendulum_episodes, env, -1.0, 1.0, overwrite=True)
    monkeypatch.setattr(HDF5Storage, "update_episodes", real)

    assert not (root / "wmrl" / "pendulum-new-v0").exists() and leftovers(root) == []
    assert list(minari.list_local_datasets()) == ["wmrl/pendulum-random-v0"]
    assert_same_episodes(load_dataset("wmrl/pendulum-random-v0").episodes, old)

    write_dataset("wmrl/pendulum-random-v0", pendulum_episodes, env, -2.0, 2.0, overwrite=True)
    new = minari.load_dataset("wmrl/pendulum-random-v0")
    assert (new.total_episodes, new.storage.metadata["ref_min_score"]) == (3, -2.0)
    assert_same_episodes(list(new.iterate_episodes()), pendulum_episodes)
    assert leftovers(root) == []


def test_export_replay_equals_its_episodes(root, pendulum_episodes):
    replay = EpisodeReplay(capacity=1000)
    with pytest.raises(ValueError, match="no complete episode"):
        export_replay(replay, "wmrl/replay-v0", "gym:Pendulum-v1", -1.0, 1.0)
    for ep in pendulum_episodes:
        replay.add_episode(ep)
    replay.add_reset(pendulum_episodes[0]["observations"][0])  # staged, not complete: not exported
    ds = export_replay(replay, "wmrl/replay-v0", "gym:Pendulum-v1", -1.0, 1.0,
                       algorithm_name="random")  # fmt: skip
    assert isinstance(ds, OfflineDataset)
    assert_same_episodes(ds.episodes, pendulum_episodes)
    assert_same_episodes(list(minari.load_dataset("wmrl/replay-v0").iterate_episodes()),
                         pendulum_episodes)  # fmt: skip


def test_import_envs_stays_light():
    code = "import sys, envs; print('dm_control' in sys.modules, 'minari' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=repo)  # fmt: skip
    assert out.stdout.split() == ["False", "False"]
