"""Episode replay for sequence models: a ring of rows, one row per stored observation.

PlaNet, Dreamer and World Models sample (B, T) chunks of contiguous rows from it. An episode comes
in Minari's layout: `observations` (T+1, *obs_shape), `actions` (T, A), `rewards` (T,),
`terminations` (T,), `truncations` (T,). Its T+1 observations become T+1 rows, aligned as in
DreamerV2 (an RSSM computes h_t from h_(t-1), z_(t-1) and action[t] = a_(t-1), and predicts
reward[t] from the state at t):

    env:      o0 --a0,r0--> o1 --a1,r1--> o2 ... o(T-1) --a(T-1),r(T-1)--> oT
    row t:    obs[t]=o_t, action[t]=a_(t-1), reward[t]=r_(t-1), is_first[t]=(t==0)
              action[0]=0, reward[0]=0; is_terminal[T]=terminations[T-1]; is_last[T]=True

`is_terminal` means the observation is terminal (no bootstrapping from it); `is_last` marks the
last observation of an episode, terminated or truncated (a time limit). Each observation is stored
once, in its own dtype (pixels stay uint8). Capacity counts rows; when the ring wraps the oldest
rows are overwritten, and only the newest `capacity` rows are ever sampled.

With `directory=`, every committed episode is written at once to `{episode_index:08d}-{T}.npz`
(atomically), so a run's replay persists incrementally and `EpisodeReplay.load` rebuilds it.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
import zipfile
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
_FILE = re.compile(r"^(\d{8,})-(\d+)\.npz$")


class ReplayFileError(ValueError):
    """A replay file is corrupt, unreadable or inconsistent with its name."""


class ReplayRepairWarning(UserWarning):
    """A replay was loaded without a file it could not read (moved aside) or was missing."""


def validate_episode(episode: Mapping) -> dict[str, np.ndarray]:
    """Check an episode in Minari's layout and return it as arrays.

    Args:
        episode: `observations` (T+1, *obs_shape) any dtype, `actions` (T, A), `rewards` (T,),
            `terminations` (T,), `truncations` (T,), with T >= 1; only the last step may be
            terminated or truncated.
    Returns:
        the same fields; actions and rewards as float32, the flags as bool.
    """
    if not isinstance(episode, Mapping):
        raise ValueError(f"an episode must be a dict with keys {KEYS}, got {type(episode)}")
    missing = [k for k in KEYS if k not in episode]
    if missing:
        raise ValueError(f"episode is missing {missing}; it needs all of {KEYS} (Minari layout)")
    if isinstance(episode["observations"], Mapping):
        raise ValueError("dict observations are not supported; flatten them into one array first")
    obs = np.asarray(episode["observations"])
    if obs.dtype == object or obs.ndim < 1:
        raise ValueError(f"observations must be a numeric array (T+1, *obs_shape), got {obs.dtype}")
    out = {"observations": obs, "actions": np.asarray(episode["actions"], np.float32)}
    for k, dtype in (("rewards", np.float32), ("terminations", bool), ("truncations", bool)):
        out[k] = np.asarray(episode[k], dtype)
    T = len(obs) - 1
    if T < 1:
        raise ValueError(f"observations {obs.shape} hold no transition; an episode needs T+1 >= 2")
    if out["actions"].shape[:1] != (T,) or out["actions"].ndim != 2:
        raise ValueError(
            f"actions must be (T, A) = ({T}, A) for observations {obs.shape}, got "
            f"{out['actions'].shape}; store discrete actions one-hot"
        )
    for k in ("rewards", "terminations", "truncations"):
        if out[k].shape != (T,):
            raise ValueError(
                f"{k} must be (T,) = ({T},) for observations {obs.shape}, got {out[k].shape}"
            )
    ends = out["terminations"][:-1] | out["truncations"][:-1]
    if ends.any():
        raise ValueError(
            f"episode ends at step {int(np.argmax(ends))} (terminations/truncations) but has "
            f"{T} steps; split it into one episode per reset"
        )
    return out


class EpisodeReplay:
    """Ring buffer of episode rows; samples (B, L) chunks of contiguous rows.

    Args:
        capacity: rows (= stored observations = env steps) kept; the oldest are overwritten.
        directory: if given, each committed episode is also written there as an npz file.
        seed: seeds the numpy Generator that `sample` draws start rows from.
    """

    def __init__(self, capacity: int, directory: str | Path | None = None, seed: int | None = None):
        if int(capacity) < 2:
            raise ValueError(f"capacity must be at least 2 rows, got {capacity}")
        self.capacity = int(capacity)
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            if _episode_files(self.directory):  # numbering from 0 would overwrite them
                raise ValueError(
                    f"{self.directory} already holds replay episodes; resume with "
                    "EpisodeReplay.load(directory, capacity) or use an empty one"
                )
        self._rng = np.random.default_rng(seed)
        self._data: dict[str, np.ndarray] | None = None  # allocated from the first episode
        self._next = 0  # rows ever written; row r lives at r % capacity
        self._episodes: deque[tuple[int, int, int]] = deque()  # (index, first row, T)
        self._next_index = 0
        self._total_steps = 0
        self._total_episodes = 0
        self._staged: dict[int, dict[str, list]] = {}

    # ----------------------------------------------------------------------------- adding
    def add_episode(self, episode: dict) -> None:
        """Commit a whole episode (Minari layout, see `validate_episode`); it is written to
        `directory` first (if any), then into the ring."""
        ep = validate_episode(episode)
        self._check_spec(ep)
        if self.directory is not None:
            _write_npz(self.directory / _name(self._next_index, len(ep["actions"])), ep)
        self._insert(ep, self._next_index)
        self._next_index += 1

    def add_reset(self, obs, worker: int = 0) -> None:
        """Start staging an episode for `worker` with its first observation (*obs_shape);
        an unfinished episode staged for that worker is discarded."""
        if isinstance(obs, Mapping):
            raise ValueError("dict observations are not supported; flatten them into one array")
        self._staged[worker] = {k: [] for k in KEYS}
        self._staged[worker]["observations"].append(np.array(obs, copy=True))

    def add_step(
        self, action, reward, next_obs, terminated: bool, truncated: bool, worker: int = 0
    ) -> None:
        """Append a transition (action (A,), reward, next_obs (*obs_shape)) to `worker`'s staged
        episode; when `terminated` or `truncated`, commit it with `add_episode`."""
        if worker not in self._staged:
            raise ValueError(
                f"add_step for worker {worker} before add_reset; call "
                f"add_reset(first_obs, worker={worker}) when its episode starts"
            )
        staged = self._staged[worker]
        next_obs = np.array(next_obs, copy=True)
        if next_obs.shape != staged["observations"][0].shape:
            raise ValueError(
                f"worker {worker}: next_obs {next_obs.shape} does not match the "
                f"episode's first observation {staged['observations'][0].shape}"
            )
        action = np.asarray(action, np.float32)
        if action.ndim != 1:
            raise ValueError(
                f"action must be a vector (A,), got shape {action.shape}; "
                "store discrete actions one-hot"
            )
        staged["observations"].append(next_obs)
        staged["actions"].append(action)
        staged["rewards"].append(float(reward))
        staged["terminations"].append(bool(terminated))
        staged["truncations"].append(bool(truncated))
        if terminated or truncated:
            del self._staged[worker]
            self.add_episode({k: np.stack(v) for k, v in staged.items()})

    def _check_spec(self, ep: dict[str, np.ndarray]) -> None:
        if len(ep["observations"]) > self.capacity:
            raise ValueError(
                f"an episode of {len(ep['observations'])} rows (T+1) does not fit "
                f"capacity={self.capacity}; raise the capacity"
            )
        if self._data is None:
            return
        want = (self._data["obs"].shape[1:], self._data["obs"].dtype, self._data["action"].shape[1])
        got = (ep["observations"].shape[1:], ep["observations"].dtype, ep["actions"].shape[1])
        if want != got:
            raise ValueError(
                f"episode (obs shape, obs dtype, action dim) = {got} does not match the replay's "
                f"{want}; use one replay per observation/action space"
            )

    def _insert(self, ep: dict[str, np.ndarray], index: int) -> None:
        T = len(ep["actions"])
        obs = ep["observations"]
        if self._data is None:
            C, A = self.capacity, ep["actions"].shape[1]
            self._data = {
                "obs": np.zeros((C, *obs.shape[1:]), obs.dtype),
                "action": np.zeros((C, A), np.float32),
                "reward": np.zeros(C, np.float32),
                **{
                    k: np.zeros(C, bool)
                    for k in ("is_first", "is_terminal", "is_last", "truncated")
                },
            }
        zero = np.zeros(1, np.float32)
        rows = {
            "obs": obs,
            "action": np.concatenate([np.zeros_like(ep["actions"][:1]), ep["actions"]]),
            "reward": np.concatenate([zero, ep["rewards"]]),
            "is_first": np.arange(T + 1) == 0,
            "is_terminal": np.concatenate([[False], ep["terminations"]]),
            "is_last": np.arange(T + 1) == T,
            "truncated": np.concatenate([[False], ep["truncations"]]),
        }
        start = self._next % self.capacity
        head = min(T + 1, self.capacity - start)  # rows before the ring wraps
        for k, v in rows.items():
            self._data[k][start : start + head] = v[:head]
            self._data[k][: T + 1 - head] = v[head:]
        self._episodes.append((index, self._next, T))
        self._next += T + 1
        self._total_steps += T
        self._total_episodes += 1
        while self._episodes[0][1] < self._next - self.capacity:  # its first row was overwritten
            self._episodes.popleft()

    # ---------------------------------------------------------------------------- reading
    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """Draw `batch_size` chunks of `length` contiguous rows, start rows uniform over all valid
        starts (chunks may cross episodes; `is_first` marks where one begins).

        Returns:
            obs (B, L, *obs_shape) stored dtype, action (B, L, A) float32, reward (B, L) float32,
            is_first, is_terminal, is_last (B, L) bool.
        """
        if batch_size < 1 or length < 1:
            raise ValueError(f"batch_size and length must be >= 1, got {batch_size}, {length}")
        if len(self) < length:
            raise ValueError(
                f"replay holds {len(self)} rows, fewer than length={length}; "
                "collect more steps or sample shorter chunks"
            )
        oldest = self._next - len(self)
        starts = oldest + self._rng.integers(0, len(self) - length + 1, batch_size)
        idx = (starts[:, None] + np.arange(length)) % self.capacity
        keys = ("obs", "action", "reward", "is_first", "is_terminal", "is_last")
        return {k: self._data[k][idx] for k in keys}

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield every committed episode whose rows are all still stored, oldest first, in
        Minari's layout (copies): observations (T+1, *obs_shape), actions (T, A), rewards,
        terminations, truncations (T,)."""
        for _, first, T in list(self._episodes):
            yield self._episode(first, T)

    def last_episode(self) -> dict[str, np.ndarray] | None:
        """The most recently committed episode (as `episodes` yields it), or None if none is
        stored."""
        if not self._episodes:
            return None
        _, first, T = self._episodes[-1]
        return self._episode(first, T)

    def _episode(self, first: int, T: int) -> dict[str, np.ndarray]:
        rows = (first + np.arange(T + 1)) % self.capacity
        d, nxt = self._data, rows[1:]
        return {
            "observations": d["obs"][rows],
            "actions": d["action"][nxt],
            "rewards": d["reward"][nxt],
            "terminations": d["is_terminal"][nxt],
            "truncations": d["truncated"][nxt],
        }

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring's arrays (0 before the first episode)."""
        return 0 if self._data is None else sum(v.nbytes for v in self._data.values())

    @property
    def num_episodes(self) -> int:
        """Complete episodes still in the ring."""
        return len(self._episodes)

    @property
    def total_steps(self) -> int:
        """Transitions ever committed (sum of T), evicted ones included."""
        return self._total_steps

    @property
    def total_episodes(self) -> int:
        """Episodes ever committed, evicted ones included."""
        return self._total_episodes

    # ------------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write every complete episode still stored to `directory` as `{index:08d}-{T}.npz`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for index, first, T in list(self._episodes):
            _write_npz(directory / _name(index, T), self._episode(first, T))

    @classmethod
    def load(
        cls,
        directory: str | Path,
        capacity: int,
        seed: int | None = None,
        max_episodes: int | None = None,
        next_index: int | None = None,
        repair: bool = False,
    ) -> EpisodeReplay:
        """Rebuild a replay from the npz files in `directory`, in index order.

        To match a checkpoint, only the files numbered below `next_index`, else the first
        `max_episodes` files, are used; later files belong to a future the resumed run will
        redo, so they are moved (not deleted) to `directory/superseded/<n>/`. Files whose rows
        would be overwritten anyway are counted (total_steps, total_episodes) but not read. New
        episodes keep being written to `directory`, numbered on from the last file loaded.

        A file that cannot be read (truncated, corrupt, not what its name says) raises
        ReplayFileError, unless `repair`: then it is moved to `directory/corrupt/` with a
        warning and counted as if its rows had been overwritten, so the replay's counts still
        match the checkpoint and only that episode's data is lost. Fewer files than
        `max_episodes` (some were removed) load with a warning under `repair` too.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"replay directory {directory} does not exist")
        files = sorted(_episode_files(directory).items())
        later = []
        if next_index is not None:
            later = [f for f in files if f[0] >= next_index]
            files = [f for f in files if f[0] < next_index]
        elif max_episodes is not None:
            files, later = files[:max_episodes], files[max_episodes:]
        if max_episodes is not None and max_episodes > len(files):
            message = (f"the checkpoint counts {max_episodes} episodes but {directory} holds "
                       f"{len(files)} of them")  # fmt: skip
            if not repair:
                raise ReplayFileError(f"{message}; load with repair=True to go on with those")
            warnings.warn(f"{message}: going on with those (the run collects the missing "
                          "steps again)", ReplayRepairWarning, stacklevel=2)  # fmt: skip
        replay = cls(capacity, directory=None, seed=seed)
        keep, rows = len(files), 0  # files[keep:] hold the rows the ring ends up with
        while keep > 0 and rows < replay.capacity:
            keep -= 1
            rows += files[keep][1][0] + 1
        for _, (T, _) in files[:keep]:  # evicted anyway: only their counts matter
            replay._next += T + 1
            replay._total_steps += T
            replay._total_episodes += 1
        for index, (T, path) in files[keep:]:
            try:
                ep = _read_npz(path, T)
                try:
                    replay._check_spec(ep)
                except ValueError as e:
                    raise ReplayFileError(f"{path}: {e}") from e
            except ReplayFileError as e:
                if not repair:
                    raise ReplayFileError(f"{e}; load with repair=True to set it aside") from e
                aside = directory / "corrupt"
                aside.mkdir(exist_ok=True)
                os.replace(path, aside / path.name)
                warnings.warn(f"{e}: moved it to {aside} and going on without its {T} steps",
                              ReplayRepairWarning, stacklevel=2)  # fmt: skip
                replay._total_steps += T  # counted, as an evicted episode is
                replay._total_episodes += 1
                continue
            replay._insert(ep, index)
        if later:  # only once the kept files loaded fine
            n = 0
            while (directory / "superseded" / str(n)).exists():
                n += 1
            (aside := directory / "superseded" / str(n)).mkdir(parents=True)
            for _, (_, path) in later:
                os.replace(path, aside / path.name)
        replay.directory = directory
        replay._next_index = files[-1][0] + 1 if files else 0
        return replay

    @property
    def next_index(self) -> int:
        """The number the next committed episode's file gets (a checkpoint saves it, so that a
        resume keeps exactly the files written before it)."""
        return self._next_index


def read_episode(directory: str | Path, index: int = -1) -> dict[str, np.ndarray]:
    """One saved episode (Minari layout) from a replay `directory`: `index` counts episode
    files in order, negative from the newest (-1, the default, is the last one written)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"replay directory {directory} does not exist")
    files = sorted(_episode_files(directory).items())
    if not files:
        raise ReplayFileError(f"{directory} holds no episode files ({{index:08d}}-{{T}}.npz)")
    if not -len(files) <= index < len(files):
        raise IndexError(f"episode {index} of {len(files)} in {directory}")
    _, (T, path) = files[index]
    return _read_npz(path, T)


def iter_episodes(directory: str | Path) -> Iterator[dict[str, np.ndarray]]:
    """Every saved episode (Minari layout) of a replay `directory`, in index order, read one at a
    time (memory for one episode, where `EpisodeReplay.load` holds them all)."""
    directory = Path(directory)
    files = sorted(_episode_files(directory).items()) if directory.is_dir() else []
    return (_read_npz(path, T) for _, (T, path) in files)


def _name(index: int, T: int) -> str:
    return f"{index:08d}-{T}.npz"


def _episode_files(directory: Path) -> dict[int, tuple[int, Path]]:
    """Map episode index -> (T, path) for the npz files named `{index:08d}-{T}.npz`."""
    found: dict[int, tuple[int, Path]] = {}
    for path in directory.iterdir():
        m = _FILE.match(path.name)
        if not m:  # temporary files and anything else
            continue
        index, T = int(m[1]), int(m[2])
        if index in found:
            raise ReplayFileError(
                f"two files for episode {index}: {found[index][1].name} and "
                f"{path.name} in {directory}; remove the stale one"
            )
        found[index] = (T, path)
    return found


def _write_npz(path: Path, episode: dict[str, np.ndarray]) -> None:
    """Write `episode` uncompressed to `path` via a temporary file in the same directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: episode[k] for k in KEYS})
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a saved replay is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_npz(path: Path, T: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            ep = validate_episode({k: f[k] for k in KEYS})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ReplayFileError(
            f"cannot read replay episode {path} (corrupt or truncated): {e}"
        ) from e
    if len(ep["actions"]) != T:
        raise ReplayFileError(f"{path} holds {len(ep['actions'])} steps, its name says {T}")
    return ep


def open_replay(run_dir: Path, capacity: int, seed: int, state: dict | None = None):
    """The replay and NumPy generator of an online run (PlaNet, Dreamer): fresh ones seeded with
    `seed`, or, given the checkpoint `state` of a resumed run, the episodes on disk up to the
    checkpoint (later ones are dropped), its sampler and the generator as they were saved, so
    that the resumed run draws the batches the saved one would have. A file that cannot be read
    is set aside with a warning and the run goes on without its episode (`EpisodeReplay.load`'s
    `repair`). Returns (replay, rng)."""
    directory = Path(run_dir) / "replay"
    if state is None:
        return EpisodeReplay(capacity, directory=directory, seed=seed), np.random.default_rng(seed)
    episodes = int(state["replay_episodes"])
    replay = EpisodeReplay.load(directory, capacity, seed=seed + 1000 * (episodes + 1),
                                max_episodes=episodes, next_index=state.get("replay_next_index"),
                                repair=True)  # fmt: skip
    if "sampler_rng" in state:  # (older checkpoints: the sampler seeded afresh, above)
        replay._rng.bit_generator.state = state["sampler_rng"]
    rng = np.random.default_rng()
    rng.bit_generator.state = state["numpy_rng"]
    return replay, rng


def replay_checkpoint(replay, rng: np.random.Generator) -> dict:
    """What `open_replay` needs back from a checkpoint: how many episodes the replay had
    committed, its sampler's generator and the run's NumPy generator (the other RNGs are
    `infra.run.Run.checkpoint`'s)."""
    return {
        "replay_episodes": replay.total_episodes,
        "replay_next_index": replay.next_index,
        "sampler_rng": replay._rng.bit_generator.state,
        "numpy_rng": rng.bit_generator.state,
    }
