"""envs.replay.EpisodeReplay: row alignment, flags, eviction, staging, persistence and errors.

Episodes here encode themselves: observation t of episode `eid` holds (eid, t), action
a_t = (t, eid) and reward r_t = 10 t, so every sampled row can be checked against the transition
into it.
"""

import os

import numpy as np
import pytest

from wmrl.envs.replay import EpisodeReplay, ReplayFileError, ReplayRepairWarning


def episode(eid, T, terminated=False, pixels=False):
    """Minari-layout episode; obs (T+1, 2) int32 = (eid, t), or (T+1, 4, 4, 3) uint8 pixels with
    channel 0 = eid and channel 1 = t."""
    t = np.arange(T + 1)
    if pixels:
        obs = np.zeros((T + 1, 4, 4, 3), np.uint8)
        obs[..., 0], obs[..., 1] = eid, t[:, None, None]
    else:
        obs = np.stack([np.full(T + 1, eid), t], 1).astype(np.int32)
    ends = np.arange(T) == T - 1
    return {
        "observations": obs,
        "actions": np.stack([t[:-1], np.full(T, eid)], 1).astype(np.float32),
        "rewards": 10.0 * t[:-1].astype(np.float32),
        "terminations": ends & terminated,
        "truncations": ends & (not terminated),
    }


def ids(obs):
    """(..., 2) int obs or (..., 4, 4, 3) pixels -> (eid, t) arrays."""
    if obs.dtype == np.uint8:
        return obs[..., 0, 0, 0].astype(int), obs[..., 0, 0, 1].astype(int)
    return obs[..., 0], obs[..., 1]


def fill(replay, lengths, pixels=False):
    """Add episodes eid = 0, 1, ... of the given lengths; every third one terminates."""
    for eid, T in enumerate(lengths):
        replay.add_episode(episode(eid, T, terminated=eid % 3 == 0, pixels=pixels))


def row_order(lengths):
    """Every row ever written, in insertion order, as (eid, t) pairs."""
    return [(e, t) for e, T in enumerate(lengths) for t in range(T + 1)]


@pytest.mark.parametrize("capacity", [10_000, 53])  # no wrap; wrapped several times
def test_rows_align_with_the_transition_into_them(capacity):
    lengths = [3, 7, 1, 12, 5, 9, 4, 8, 6, 2, 11]
    replay = EpisodeReplay(capacity, seed=0)
    fill(replay, lengths)
    order = row_order(lengths)
    position = {row: i for i, row in enumerate(order)}
    newest = len(order) - len(replay)
    batch = replay.sample(64, 10)
    assert batch["obs"].shape == (64, 10, 2) and batch["action"].shape == (64, 10, 2)
    eid, t = ids(batch["obs"])
    T = np.array(lengths)[eid]
    pos = np.vectorize(lambda e, s: position[(e, s)])(eid, t)
    assert (np.diff(pos, axis=1) == 1).all(), "chunks are not contiguous rows in insertion order"
    assert pos.min() >= newest, "a chunk reached into overwritten rows"
    first = t == 0
    np.testing.assert_array_equal(batch["is_first"], first)
    np.testing.assert_array_equal(batch["action"][..., 0], np.where(first, 0, t - 1))
    np.testing.assert_array_equal(batch["action"][..., 1], np.where(first, 0, eid))
    np.testing.assert_array_equal(batch["reward"], np.where(first, 0, 10 * (t - 1)))
    np.testing.assert_array_equal(batch["is_last"], t == T)
    np.testing.assert_array_equal(batch["is_terminal"], (t == T) & (eid % 3 == 0))
    assert batch["reward"].dtype == np.float32 and batch["is_first"].dtype == bool


def test_sample_starts_cover_every_valid_start():
    lengths = [4, 2, 6]
    replay = EpisodeReplay(100, seed=1)
    fill(replay, lengths)
    order = row_order(lengths)
    L = 5
    eid, t = ids(replay.sample(2000, L)["obs"][:, 0])
    starts = {order.index(row) for row in zip(eid.tolist(), t.tolist(), strict=True)}
    assert starts == set(range(len(order) - L + 1))  # crossing episodes is allowed


def test_terminal_only_on_terminated_last_row_and_last_on_both():
    replay = EpisodeReplay(100)
    replay.add_episode(episode(0, 3, terminated=True))
    replay.add_episode(episode(1, 2, terminated=False))
    both = episode(2, 2, terminated=True)
    both["truncations"] = both["terminations"].copy()  # gymnasium allows both at once
    replay.add_episode(both)
    rows = replay.sample(1, len(replay))  # the whole buffer, in order
    assert len(replay) == 4 + 3 + 3
    np.testing.assert_array_equal(np.flatnonzero(rows["is_terminal"][0]), [3, 9])
    np.testing.assert_array_equal(np.flatnonzero(rows["is_last"][0]), [3, 6, 9])
    np.testing.assert_array_equal(np.flatnonzero(rows["is_first"][0]), [0, 4, 7])
    got = list(replay.episodes())
    for e, ref in zip(got, [episode(0, 3, True), episode(1, 2, False), both], strict=True):
        for k in ref:
            np.testing.assert_array_equal(e[k], ref[k], err_msg=k)


def test_eviction_keeps_newest_rows_and_whole_episodes_in_uint8():
    lengths = [4, 6, 3, 5, 7, 2, 4, 6]
    capacity = 21  # episode 4 (8 rows) is cut: 6 of its rows remain
    replay = EpisodeReplay(capacity, seed=0)
    fill(replay, lengths, pixels=True)
    order = row_order(lengths)
    newest = order[-capacity:]
    assert len(replay) == capacity
    assert replay.total_steps == sum(lengths) and replay.total_episodes == len(lengths)
    eid, t = ids(replay.sample(1, capacity)["obs"][0])
    assert list(zip(eid.tolist(), t.tolist(), strict=True)) == newest
    eid, t = ids(replay.sample(200, 4)["obs"])
    assert set(zip(eid.ravel().tolist(), t.ravel().tolist(), strict=True)) <= set(newest)
    whole = [e for e, T in enumerate(lengths) if (e, 0) in newest]
    assert replay.num_episodes == len(whole) and whole == [5, 6, 7]
    got = list(replay.episodes())
    assert [int(e["observations"][0, 0, 0, 0]) for e in got] == whole
    np.testing.assert_array_equal(
        got[0]["observations"], episode(5, 2, pixels=True)["observations"]
    )
    got[0]["observations"][:] = 99  # copies: the replay must not change
    assert ids(replay.sample(1, capacity)["obs"][0])[0].max() == 7
    obs_bytes = capacity * 4 * 4 * 3  # one uint8 copy of each frame, no next-observation copy
    assert replay.nbytes == obs_bytes + capacity * (2 * 4 + 4 + 4)  # action, reward, 4 flags
    assert replay.sample(2, 3)["obs"].dtype == np.uint8


def test_workers_staging_interleaved_get_their_own_episodes():
    replay = EpisodeReplay(100)
    refs = {0: episode(0, 5, terminated=True), 1: episode(1, 3)}
    buf = np.empty(2, np.int32)  # vector envs may reuse their observation buffer
    for w, ref in refs.items():
        buf[:] = ref["observations"][0]
        replay.add_reset(buf, worker=w)
    for step in range(5):
        for w, ref in refs.items():
            if step < len(ref["actions"]):
                tr = [ref[k][step] for k in ("actions", "rewards")]
                buf[:] = ref["observations"][step + 1]
                replay.add_step(*tr, buf, ref["terminations"][step], ref["truncations"][step],
                                worker=w)  # fmt: skip
        if step == 1:
            assert len(replay) == 0  # staged episodes are not in the ring yet
    got = list(replay.episodes())  # worker 1 finished first
    assert len(got) == 2 and len(replay) == 4 + 6
    for e, ref in zip(got, [refs[1], refs[0]], strict=True):
        for k in ref:
            np.testing.assert_array_equal(e[k], ref[k], err_msg=k)
    with pytest.raises(ValueError, match="before add_reset"):
        replay.add_step(np.zeros(2), 0.0, np.zeros(2, np.int32), False, False, worker=1)


def assert_same_replay(a, b):
    assert (len(a), a.num_episodes, a.total_steps, a.total_episodes) == (
        len(b), b.num_episodes, b.total_steps, b.total_episodes)  # fmt: skip
    for ea, eb in zip(a.episodes(), b.episodes(), strict=True):
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
    for _ in range(3):
        sa, sb = a.sample(8, 6), b.sample(8, 6)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_directory_persists_each_episode_and_load_resumes(tmp_path):
    lengths = [4, 6, 3, 5, 7, 2, 4]
    live = EpisodeReplay(20, directory=tmp_path, seed=3)
    fill(live, lengths)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{i:08d}-{T}.npz" for i, T in enumerate(lengths)]  # evicted ones too
    (tmp_path / ".00000007-3.npz.x.tmp").write_bytes(b"interrupted write")  # must be ignored
    # episode 2 is the newest one whose rows are all overwritten: counted, never read
    (tmp_path / "00000002-3.npz").write_bytes(b"junk")
    loaded = EpisodeReplay.load(tmp_path, 20, seed=3)
    reference = EpisodeReplay(20, seed=3)
    fill(reference, lengths)
    assert_same_replay(loaded, reference)
    loaded.add_episode(episode(7, 3))
    assert (tmp_path / "00000007-3.npz").stat().st_size > 100  # numbering continues


def test_save_load_round_trip_without_directory(tmp_path):
    lengths = [4, 6, 3, 5]
    replay = EpisodeReplay(100, seed=7)
    fill(replay, lengths, pixels=True)
    replay.save(tmp_path)
    loaded = EpisodeReplay.load(tmp_path, 100, seed=7)
    reference = EpisodeReplay(100, seed=7)
    fill(reference, lengths, pixels=True)
    assert_same_replay(loaded, reference)
    assert loaded.sample(1, 3)["obs"].dtype == np.uint8


def test_load_max_episodes_matches_a_checkpoint(tmp_path):
    live = EpisodeReplay(100, directory=tmp_path, seed=0)
    fill(live, [4, 6, 3, 5, 7])
    loaded = EpisodeReplay.load(tmp_path, 100, seed=1, max_episodes=3)
    reference = EpisodeReplay(100, seed=1)
    fill(reference, [4, 6, 3])
    assert_same_replay(loaded, reference)
    loaded.add_episode(episode(3, 2))
    again = EpisodeReplay.load(tmp_path, 100)  # the superseded files 3 and 4 are set aside
    assert [len(e["actions"]) for e in again.episodes()] == [4, 6, 3, 2]
    assert len(list((tmp_path / "superseded").rglob("*.npz"))) == 2
    with pytest.raises(ReplayFileError, match="counts 9 episodes but .* holds 4 of them"):
        EpisodeReplay.load(tmp_path, 100, max_episodes=9)


def test_truncated_npz_names_the_file(tmp_path):
    fill(EpisodeReplay(100, directory=tmp_path), [4, 6])
    path = tmp_path / "00000001-6.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReplayFileError, match="00000001-6.npz.*repair=True"):
        EpisodeReplay.load(tmp_path, 100)


def test_repair_sets_a_corrupt_file_aside_and_keeps_the_counts_of_the_checkpoint(tmp_path):
    """The way out of a corrupt file: it moves to corrupt/, its steps still count (the run's
    budget and the checkpoint agree), the other episodes load, and new ones number on."""
    fill(EpisodeReplay(100, directory=tmp_path), [4, 6, 3, 5])
    path = tmp_path / "00000001-6.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(ReplayRepairWarning, match="00000001-6.npz.*without its 6 steps"):
        replay = EpisodeReplay.load(tmp_path, 100, max_episodes=3, next_index=3, repair=True)
    assert (replay.total_episodes, replay.total_steps) == (3, 4 + 6 + 3)
    assert [len(e["actions"]) for e in replay.episodes()] == [4, 3]
    assert (tmp_path / "corrupt" / "00000001-6.npz").exists()
    assert len(list((tmp_path / "superseded").rglob("*.npz"))) == 1  # after the checkpoint
    replay.add_episode(episode(5, 2))
    assert (tmp_path / "00000003-2.npz").exists()
    again = EpisodeReplay.load(tmp_path, 100, max_episodes=3, next_index=4, repair=True)
    assert [len(e["actions"]) for e in again.episodes()] == [4, 3, 2]


def test_repair_goes_on_with_fewer_files_than_the_checkpoint_counts(tmp_path):
    fill(EpisodeReplay(100, directory=tmp_path), [4, 6, 3])
    (tmp_path / "00000002-3.npz").unlink()
    with pytest.warns(ReplayRepairWarning, match="counts 3 episodes but .* holds 2"):
        replay = EpisodeReplay.load(tmp_path, 100, max_episodes=3, next_index=3, repair=True)
    assert (replay.total_episodes, replay.next_index) == (2, 2)


def test_new_replay_refuses_a_directory_with_episodes(tmp_path):
    fill(EpisodeReplay(100, directory=tmp_path), [3])
    with pytest.raises(ValueError, match="already holds replay episodes"):
        EpisodeReplay(100, directory=tmp_path)
    assert os.listdir(tmp_path) == ["00000000-3.npz"]


def broken(key, value):
    ep = episode(0, 4)
    ep[key] = value
    return ep


@pytest.mark.parametrize(
    "ep, match",
    [
        ({k: v for k, v in episode(0, 4).items() if k != "rewards"}, r"missing \['rewards'\]"),
        (broken("observations", np.zeros((4, 2))), r"actions must be \(T, A\) = \(3, A\)"),
        (broken("rewards", np.zeros(5)), r"rewards must be \(T,\) = \(4,\).*\(5,\)"),
        (broken("truncations", np.zeros((4, 1), bool)), r"truncations must be \(T,\)"),
        (broken("actions", np.zeros(4)), r"actions must be \(T, A\)"),
        (broken("observations", {"pixels": np.zeros((5, 2))}), "dict observations"),
        (broken("terminations", np.array([0, 1, 0, 1], bool)), "ends at step 1"),
        (episode(0, 30), "does not fit capacity=20"),
    ],
)
def test_bad_episodes_are_named(ep, match):
    replay = EpisodeReplay(20)
    with pytest.raises(ValueError, match=match):
        replay.add_episode(ep)
    assert len(replay) == 0 and replay.total_episodes == 0


def test_later_episodes_must_match_the_first():
    replay = EpisodeReplay(100)
    replay.add_episode(episode(0, 4))
    wrong_dtype = broken("observations", episode(0, 4)["observations"].astype(np.float32))
    wrong_shape = broken("observations", np.zeros((5, 3), np.int32))
    wrong_action = broken("actions", np.zeros((4, 3), np.float32))
    for ep in (wrong_dtype, wrong_shape, wrong_action):
        with pytest.raises(ValueError, match="does not match the replay's"):
            replay.add_episode(ep)
    with pytest.raises(ValueError, match="dict observations"):
        replay.add_reset({"pixels": np.zeros(2)})
    with pytest.raises(ValueError, match="holds 5 rows, fewer than length=6"):
        replay.sample(2, 6)
    assert len(replay) == 5 and replay.total_episodes == 1
