"""Minari datasets in and out: load any local id, path or (with network) remote id; write the
toolkit's episodes as Minari datasets that `minari.load_dataset` reads.

Episodes use Minari's layout (see `envs.replay`): `observations` (T+1, *obs_shape), `actions`
(T, A), `rewards` (T,), `terminations` (T,), `truncations` (T,). Offline algorithms take flat
transitions from `to_transitions`; there a termination stops bootstrapping and a truncation (a
time limit) does not.

    ds = load_dataset("wmrl/cartpole-random-v0")      # or a path, or download=True
    ds.check_env(env)                                  # DatasetMismatchError if spaces differ
    batch = ds.transitions()                           # observations, actions, rewards, ...
    ds.normalized_score(returns)                       # D4RL scale: 0 random, 100 expert

Minari itself (and h5py) is imported only when a dataset is read or written, so that importing
`wmrl.envs` stays light.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from wmrl.envs.registry import make
from wmrl.envs.replay import validate_episode

if TYPE_CHECKING:
    from gymnasium.envs.registration import EnvSpec

    from wmrl.envs.replay import EpisodeReplay

ID_HELP = "dataset ids look like (namespace/)name-v<version>, e.g. wmrl/cartpole-random-v0"
# Minari warns about every optional metadata field left empty; for the toolkit they are optional.
_QUIET = r"`(code_permalink|author|author_email|algorithm_name|description|eval_env)` is set to"


class DatasetNotFoundError(FileNotFoundError):
    """No dataset under that id or path; the message lists close local ids and how to fix it."""


class DatasetValueError(ValueError):
    """A dataset whose values cannot be learned from or used as asked: NaN or infinite
    observations, actions or rewards, actions outside the action space, an episode without a
    transition, no episodes, no reference scores for a normalised score. The message names the
    dataset, the field and the first bad place, and what to do."""


class DatasetMismatchError(ValueError):
    """A dataset's (or an episode's) spaces differ from an environment's."""


class UnsupportedDatasetError(ValueError):
    """A dataset whose spaces the toolkit cannot hold: dict/tuple observations, non-Box actions."""


# ------------------------------------------------------------------------------- scores


def normalized_score(returns, ref_min_score: float | None, ref_max_score: float | None):
    """Undiscounted returns on the D4RL scale: 100 * (R - ref_min) / (ref_max - ref_min).

    0 is the reference random policy, 100 the reference expert. `minari.get_normalized_score`
    gives the same number as a 0-1 fraction.

    Args:
        returns: a float or an array of episode returns.
    Returns:
        a float for a float, else a float64 array of the returns' shape.
    """
    if ref_min_score is None or ref_max_score is None:
        raise ValueError(
            f"normalized scores need both reference scores, got ref_min_score={ref_min_score}, "
            f"ref_max_score={ref_max_score}; use a dataset that carries them (write_dataset "
            "stores them) or report raw returns"
        )
    if ref_max_score == ref_min_score:
        raise ValueError(f"ref_max_score equals ref_min_score ({ref_min_score}); cannot normalize")
    scale = 100.0 / (ref_max_score - ref_min_score)
    out = (np.asarray(returns, np.float64) - ref_min_score) * scale
    return float(out) if out.ndim == 0 else out


# -------------------------------------------------------------------------- transitions


def to_transitions(episodes: Iterable[Mapping]) -> dict[str, np.ndarray]:
    """Flatten episodes into transitions for offline RL; N = sum of T, none lost at a time limit.

    Args:
        episodes: Minari layout, see `envs.replay.validate_episode`; all of one observation shape.
    Returns:
        observations (N, *obs_shape) and next_observations (N, *obs_shape) in the episodes'
        dtype (pixels stay uint8; note that they hold every frame twice), actions (N, A) float32,
        rewards (N,) float32, terminals (N,) bool = terminations (no bootstrapping from the next
        observation), timeouts (N,) bool = truncations (kept apart; they do bootstrap).
    """
    eps = [validate_episode(ep) for ep in episodes]
    if not eps:
        raise ValueError("to_transitions got no episodes; a dataset needs at least one")
    shapes = {(ep["observations"].shape[1:], ep["actions"].shape[1]) for ep in eps}
    if len(shapes) > 1:
        raise ValueError(
            f"episodes differ in (observation shape, action dim): {sorted(shapes)}; "
            "transitions need one observation and action space"
        )
    cat = np.concatenate
    return {
        "observations": cat([ep["observations"][:-1] for ep in eps]),
        "actions": cat([ep["actions"] for ep in eps]),
        "rewards": cat([ep["rewards"] for ep in eps]),
        "next_observations": cat([ep["observations"][1:] for ep in eps]),
        "terminals": cat([ep["terminations"] for ep in eps]),
        "timeouts": cat([ep["truncations"] for ep in eps]),
    }


# ------------------------------------------------------------------------------ spaces


def _check_supported(observation_space: gym.Space, action_space: gym.Space, what: str) -> None:
    if not isinstance(observation_space, gym.spaces.Box):
        raise UnsupportedDatasetError(
            f"{what} has observation space {observation_space}; only Box observations "
            "(arrays) are supported. Flatten dict/tuple observations into one array (e.g. "
            "gymnasium.wrappers.FlattenObservation) before recording"
        )
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise UnsupportedDatasetError(
            f"{what} has action space {action_space}; only vector Box actions (A,) are "
            "supported. Record discrete actions one-hot in a Box(0, 1, (n,))"
        )


def _space_difference(a: gym.Space, b: gym.Space) -> str | None:
    """How two spaces differ (type, shape, dtype, bounds), or None when they are equal."""
    if type(a) is not type(b):
        return f"types differ ({type(a).__name__} vs {type(b).__name__})"
    if not isinstance(a, gym.spaces.Box):
        return None if a == b else "they differ"
    if a.shape != b.shape:
        return f"shapes differ ({a.shape} vs {b.shape})"
    if a.dtype != b.dtype:
        return f"dtypes differ ({a.dtype} vs {b.dtype})"
    # allclose as gymnasium's Box.__eq__: bounds pass through JSON (and float64 <-> float32).
    if not (np.allclose(a.low, b.low) and np.allclose(a.high, b.high)):
        return "bounds differ"
    return None


def _check_spaces(what: str, obs_space, action_space, env: gym.Env, fix: str) -> None:
    for name, ours, theirs in (
        ("observation_space", obs_space, env.observation_space),
        ("action_space", action_space, env.action_space),
    ):
        diff = _space_difference(ours, theirs)
        if diff is not None:
            raise DatasetMismatchError(
                f"{what} has {name} {ours} but the env {_env_name(env)} has {theirs}: {diff}. {fix}"
            )


def _env_name(env: gym.Env) -> str:
    return repr(env.spec.id) if env.spec is not None else type(env.unwrapped).__name__


# ------------------------------------------------------------------------------ dataset


class OfflineDataset:
    """A Minari dataset held in memory as episodes in Minari's layout.

    Attributes:
        dataset_id: the Minari id stored in the dataset's metadata.
        episodes: list of dicts, observations (T+1, *obs_shape) in the stored dtype, actions
            (T, A) float32, rewards (T,) float32, terminations and truncations (T,) bool.
        observation_space, action_space: the dataset's gymnasium spaces.
        ref_min_score, ref_max_score: reference returns (random, expert) or None when absent.
        env_spec: the gymnasium EnvSpec that rebuilds the env, or None.
        minari_dataset: the underlying `minari.MinariDataset` (None if built in memory).
    """

    def __init__(
        self,
        dataset_id: str,
        episodes: list[dict[str, np.ndarray]],
        observation_space: gym.Space,
        action_space: gym.Space,
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
        env_spec: EnvSpec | None = None,
        minari_dataset: Any = None,
    ):
        self.dataset_id = dataset_id
        self.episodes = episodes
        self.observation_space, self.action_space = observation_space, action_space
        self.ref_min_score, self.ref_max_score = ref_min_score, ref_max_score
        self.env_spec = env_spec
        self.minari_dataset = minari_dataset

    def __len__(self) -> int:
        return len(self.episodes)

    def __repr__(self) -> str:
        return (
            f"OfflineDataset({self.dataset_id!r}, episodes={len(self)}, steps={self.total_steps}, "
            f"observation_space={self.observation_space}, action_space={self.action_space})"
        )

    @property
    def total_steps(self) -> int:
        """Transitions in the dataset: the sum of T over episodes."""
        return sum(len(ep["actions"]) for ep in self.episodes)

    def returns(self) -> np.ndarray:
        """Undiscounted return of every episode, (num_episodes,) float64."""
        return np.array([ep["rewards"].sum(dtype=np.float64) for ep in self.episodes])

    def normalized_score(self, returns):
        """`returns` on the D4RL scale (0 random, 100 expert) with this dataset's references."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetValueError(
                f"dataset {self.dataset_id!r} carries no reference scores (ref_min_score="
                f"{self.ref_min_score}, ref_max_score={self.ref_max_score}); rewrite it with "
                "envs.write_dataset(..., ref_min_score, ref_max_score) or report raw returns"
            )
        return normalized_score(returns, self.ref_min_score, self.ref_max_score)

    def transitions(self) -> dict[str, np.ndarray]:
        """Flat transitions of all episodes, see `to_transitions`. Raises `DatasetValueError`,
        naming the field and the first bad transition (its episode and step), if an
        observation, action or reward is NaN or infinite, or an action lies outside the action
        space: data no learning rate can fix."""
        t = to_transitions(self.episodes)
        bad = {
            k: ~np.isfinite(t[k]).reshape(len(t[k]), -1).all(1)
            for k in ("observations", "next_observations", "actions", "rewards")
            if np.issubdtype(t[k].dtype, np.floating)
        }
        rows = np.logical_or.reduce(list(bad.values()))
        if rows.any():
            counts = ", ".join(f"{k} {int(v.sum())}" for k, v in bad.items() if v.any())
            raise DatasetValueError(
                f"dataset {self.dataset_id!r}: {int(rows.sum())} of {len(rows)} transitions hold "
                f"NaN or infinite values ({counts}; the first is {self._where(rows)}); fix or "
                "drop those episodes and write the dataset again"
            )
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            low, high = space.low.astype(np.float64), space.high.astype(np.float64)
            slack = 1e-6 * np.maximum(1.0, np.abs(np.stack([low, high])).max(0))  # float32
            out = ((t["actions"] < low - slack) | (t["actions"] > high + slack)).any(1)
            if out.any():
                first = int(np.argmax(out))
                raise DatasetValueError(
                    f"dataset {self.dataset_id!r}: {int(out.sum())} of {len(out)} actions lie "
                    f"outside the action space [{low.min():g}, {high.max():g}] (the first is "
                    f"{self._where(out)}: {np.round(t['actions'][first], 4).tolist()}); clip "
                    "them into the space (np.clip(actions, low, high)) and write the dataset "
                    "again, or record it in an env whose action space holds them"
                )
        return t

    def _where(self, rows: np.ndarray) -> str:
        """'transition i (episode e, step s)' for the first true entry of `rows`."""
        first = int(np.argmax(rows))
        ends = np.cumsum([len(ep["actions"]) for ep in self.episodes])
        episode = int(np.searchsorted(ends, first, side="right"))
        step = first - (int(ends[episode - 1]) if episode else 0)
        return f"transition {first} (episode {episode}, step {step})"

    def recover_environment(self, **kwargs) -> gym.Env:
        """The environment the dataset was recorded in, rebuilt from its EnvSpec.

        Args:
            **kwargs: passed to `gymnasium.make` (through Minari's `recover_environment`).
        """
        if self.env_spec is None:
            raise ValueError(
                f"dataset {self.dataset_id!r} stores no env spec, so its environment cannot be "
                "rebuilt; make the env yourself and check it with dataset.check_env(env)"
            )
        if self.minari_dataset is not None:
            return self.minari_dataset.recover_environment(**kwargs)
        return gym.make(self.env_spec, **kwargs)

    def check_env(self, env: gym.Env) -> None:
        """Raise `DatasetMismatchError` unless `env`'s observation and action spaces equal the
        dataset's (type, shape, dtype, bounds)."""
        _check_spaces(
            f"dataset {self.dataset_id!r}",
            self.observation_space,
            self.action_space,
            env,
            "Use the env the dataset was recorded in (dataset.recover_environment()) or a "
            "dataset recorded in this env.",
        )


# ------------------------------------------------------------------------------ loading


def _minari():
    # Minari (with h5py) loads only when a dataset is read or written: importing envs stays quick.
    import minari

    return minari


def _datasets_root() -> Path:
    """Minari's datasets root: $MINARI_DATASETS_PATH or ~/.minari/datasets."""
    from minari.storage.datasets_root_dir import get_dataset_path

    return get_dataset_path()


def _data_dir(path: Path) -> Path | None:
    """The `data/` directory (holding metadata.json) of a dataset directory, or None."""
    if (path / "metadata.json").is_file():
        return path
    if (path / "data" / "metadata.json").is_file():
        return path / "data"
    return None


def _local_ids() -> list[str]:
    with warnings.catch_warnings():  # misconfigured datasets warn; they are just not offered
        warnings.simplefilter("ignore")
        return sorted(_minari().list_local_datasets())


def load_dataset(id_or_path: str | os.PathLike, download: bool = False) -> OfflineDataset:
    """Load a Minari dataset into memory.

    Args:
        id_or_path: a dataset id in Minari's datasets root ($MINARI_DATASETS_PATH, else
            ~/.minari/datasets), e.g. "wmrl/cartpole-random-v0"; or a dataset directory (the
            one holding `data/`, or `data/` itself).
        download: fetch an id that is not local from Minari's remote (Minari's own download,
            with its progress bar, into the datasets root; needs a network), e.g. Minari's D4RL
            successors "mujoco/hopper/medium-v0". Its reference scores and env come with it.
    Returns:
        an `OfflineDataset`; episodes as in `envs.replay.validate_episode`.
    Raises:
        DatasetNotFoundError, naming the fix: no such local dataset (and no download asked
        for), or the download failed (no network, an unknown remote id).
    """
    minari = _minari()
    name = os.fspath(id_or_path)
    root = _datasets_root()
    data_dir = None
    if (root / name / "data").is_dir():
        data_dir = root / name / "data"
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        data_dir = _data_dir(path)
        if data_dir is None:
            raise DatasetNotFoundError(
                f"{path} is a directory but not a Minari dataset: it holds neither "
                "data/metadata.json nor metadata.json; pass the dataset's directory or its id"
            )
    if data_dir is not None:
        mds = minari.MinariDataset(data_dir)
    else:
        close = difflib.get_close_matches(name, _local_ids(), n=5, cutoff=0.6)
        hint = f" Close local ids: {', '.join(close)}." if close else ""
    if data_dir is None and download:
        mds = _download(name, root, hint)
    elif data_dir is None:
        raise DatasetNotFoundError(
            f"no Minari dataset {name!r} in the datasets root {root} (nor a directory of that "
            f"name).{hint} To fix: download it (download=True; scripts: --download true), point "
            "MINARI_DATASETS_PATH at the root that holds it, or pass the dataset's directory."
        )
    return _from_minari(mds)


def _download(name: str, root: Path, hint: str = ""):
    """`name` from Minari's remote into `root` (Minari prints the download's progress), as a
    MinariDataset; a failed download is one DatasetNotFoundError that says what to do. Without
    a network it fails at once (one connection attempt) rather than after the remote client's
    retries."""
    offline = (
        f"Check the id (minari list remote), or, without a network here: on a machine with one "
        f"run `minari download {name}`, copy its folder {name}/ into this machine's datasets "
        f"root {root} (or set MINARI_DATASETS_PATH to where it is), or pass the dataset's "
        f"directory.{hint}"
    )
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    host = {"hf": "huggingface.co", "gcp": "storage.googleapis.com"}.get(remote.split(":")[0])
    if host is not None:
        try:
            socket.create_connection((host, 443), timeout=10).close()
        except OSError as e:
            raise DatasetNotFoundError(
                f"{name!r} is not in the datasets root {root}, and Minari's remote ({host}) "
                f"cannot be reached to download it ({e}). {offline}"
            ) from e
    try:
        return _minari().load_dataset(name, download=True)
    except ImportError as e:
        raise DatasetNotFoundError(
            f"downloading {name!r} needs Minari's remote support ({e}): pip install "
            "'minari[hf]' (the toolkit's install has it)"
        ) from e
    except Exception as e:
        raise DatasetNotFoundError(
            f"could not download {name!r} from Minari's remote ({type(e).__name__}: {e}). {offline}"
        ) from e


def _from_minari(mds) -> OfflineDataset:
    dataset_id = mds.spec.dataset_id
    _check_supported(mds.observation_space, mds.action_space, f"dataset {dataset_id!r}")
    episodes = []
    for i, ep in enumerate(mds.iterate_episodes()):
        fields = {
            "observations": ep.observations,
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminations": ep.terminations,
            "truncations": ep.truncations,
        }
        try:
            episodes.append(validate_episode(fields))
        except ValueError as e:
            raise DatasetValueError(
                f"dataset {dataset_id!r}, episode {i}: {e}; fix or drop that episode and write "
                "the dataset again"
            ) from e
    if not episodes:
        raise DatasetValueError(
            f"dataset {dataset_id!r} holds no episodes; write it again with at least one"
        )
    meta = mds.storage.metadata
    refs = [meta.get(k) for k in ("ref_min_score", "ref_max_score")]
    return OfflineDataset(
        dataset_id,
        episodes,
        mds.observation_space,
        mds.action_space,
        *(None if r is None else float(r) for r in refs),
        env_spec=mds.env_spec,
        minari_dataset=mds,
    )


# ------------------------------------------------------------------------------ writing


def _make_env(env: gym.Env | str) -> tuple[gym.Env, bool]:
    """(env, made_here): toolkit ids ("dmc:...", "gym:...") via envs.make, others gym.make."""
    if not isinstance(env, str):
        return env, False
    if env.startswith(("dmc:", "gym:")):
        return make(env), True
    return gym.make(env), True


def _episode_for(ep: Mapping, i: int, obs_space: gym.spaces.Box, act_space: gym.spaces.Box):
    """Validate episode `i` and cast it to the env's dtypes (losslessly), for writing."""
    try:
        ep = validate_episode(ep)
    except ValueError as e:
        raise ValueError(f"episode {i}: {e}") from e
    obs, actions = ep["observations"], ep["actions"]
    if obs.shape[1:] != obs_space.shape or actions.shape[1:] != act_space.shape:
        raise DatasetMismatchError(
            f"episode {i} has observations {obs.shape} and actions {actions.shape}, but the env "
            f"has observation_space {obs_space} and action_space {act_space}; write episodes "
            "recorded in this env (observations (T+1, *obs_shape), actions (T, A))"
        )
    out = dict(ep)
    for key, space in (("observations", obs_space), ("actions", act_space)):
        cast = ep[key].astype(space.dtype, copy=False)
        exact = np.issubdtype(ep[key].dtype, np.inexact)
        if not np.array_equal(cast, ep[key], equal_nan=exact):
            raise DatasetMismatchError(
                f"episode {i} {key} are {ep[key].dtype} and do not fit the env's {space.dtype} "
                f"{space} without loss; convert them to {space.dtype} first"
            )
        out[key] = cast  # stored in the space's dtype, so loading gives the space's dtype back
    return out


@contextlib.contextmanager
def _minari_root(path: Path):
    """Point Minari at another datasets root (it reads MINARI_DATASETS_PATH on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_dataset(
    dataset_id: str,
    episodes: Iterable[Mapping],
    env: gym.Env | str,
    ref_min_score: float,
    ref_max_score: float,
    *,
    algorithm_name: str | None = None,
    description: str | None = None,
    author: str | None = None,
    author_email: str | None = None,
    code_permalink: str | None = None,
    overwrite: bool = False,
) -> OfflineDataset:
    """Write episodes as a Minari dataset in the datasets root, atomically.

    `minari.load_dataset(dataset_id)` reads it, `minari.get_normalized_score` uses the reference
    scores, and `recover_environment()` rebuilds `env` from its spec. Observations are stored
    raw in the observation space's dtype (never JPEG), so they load back bit for bit.

    Args:
        dataset_id: "(namespace/)name-v<version>", e.g. "wmrl/cartpole-random-v0".
        episodes: Minari layout (see `envs.replay.validate_episode`), recorded in `env`.
        env: the env they come from, whose `spec` rebuilds it (envs from `envs.make` or
            `gymnasium.make` do), or an id: "dmc:..."/"gym:..." (`envs.make`) or a gymnasium id.
        ref_min_score, ref_max_score: returns of a random and of an expert policy, stored as
            given (D4RL's normalisation; nothing is run to estimate them).
        algorithm_name, description, author, author_email, code_permalink: Minari metadata.
        overwrite: replace an existing dataset of that id, once the new one is complete.
    Returns:
        the written dataset as an `OfflineDataset`.
    """
    minari = _minari()
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    try:
        namespace = parse_dataset_id(dataset_id)[0]
    except (ValueError, TypeError) as e:  # TypeError: minari int()s a missing version
        raise ValueError(f"malformed dataset id {dataset_id!r}: {ID_HELP}") from e
    refs = (ref_min_score, ref_max_score)
    if not all(isinstance(r, (int, float, np.number)) and math.isfinite(r) for r in refs):
        raise ValueError(f"reference scores must be finite numbers, got {refs}")
    if not ref_max_score > ref_min_score:
        raise ValueError(
            f"ref_max_score ({ref_max_score}) must exceed ref_min_score ({ref_min_score}): they "
            "are an expert's and a random policy's mean returns"
        )
    root = _datasets_root()
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id!r} already exists at {final}; pass overwrite=True to replace "
            "it or choose another id (e.g. a new version -v<N+1>)"
        )
    if final.exists() and not (final / "data").is_dir():
        raise FileExistsError(f"{final} exists but is not a Minari dataset; not replacing it")

    env, made_here = _make_env(env)
    try:
        spec = env.spec
        if spec is None:
            raise ValueError(
                f"env {type(env.unwrapped).__name__} has no spec, so the dataset could not "
                "rebuild it; make it with envs.make(...) or gymnasium.make(...)"
            )
        try:
            spec.to_json()
        except Exception as e:  # gymnasium raises ValueError; be lenient about the type
            raise ValueError(
                f"env spec {spec.id!r} cannot be stored as JSON ({e}); make the env with "
                "JSON-serialisable kwargs so that the dataset can rebuild it"
            ) from e
        obs_space, act_space = env.observation_space, env.action_space
        _check_supported(obs_space, act_space, f"env {_env_name(env)}")
        eps = [_episode_for(ep, i, obs_space, act_space) for i, ep in enumerate(episodes)]
        if not eps:
            raise ValueError(f"no episodes to write to dataset {dataset_id!r}")

        buffers = [
            EpisodeBuffer(
                observations=ep["observations"],
                actions=ep["actions"],
                rewards=ep["rewards"],
                terminations=ep["terminations"],
                truncations=ep["truncations"],
            )
            for ep in eps
        ]
        create = minari.create_dataset_from_buffers
        # Minari JPEG-encodes uint8 image observations by default (lossy); store them raw.
        # Older Minari (< 0.5.4) has no such option and always stores raw arrays.
        has_jpeg = "jpeg_encoding" in inspect.signature(create).parameters
        raw = {"jpeg_encoding": False} if has_jpeg else {}

        # Build the dataset under a hidden temporary root inside the real one (Minari skips
        # dot-directories when listing), then rename it into place: same filesystem, so the
        # rename is atomic and nothing half-written ever appears under the real id.
        tmp_root = Path(tempfile.mkdtemp(prefix=".wmrl-write-", dir=root))
        try:
            with _minari_root(tmp_root), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_QUIET, category=UserWarning)
                mds = create(
                    dataset_id,
                    buffers,
                    env=env,
                    algorithm_name=algorithm_name,
                    author=author,
                    author_email=author_email,
                    code_permalink=code_permalink,
                    description=description,
                    **raw,
                )
            # Minari keeps ref scores only with an eval env, and then gym.make()s that env (and
            # would run 100 random episodes if ref_min_score were None). We pass none to it and
            # store the given numbers in the metadata, where get_normalized_score reads them.
            mds.storage.update_metadata(
                {"ref_min_score": float(ref_min_score), "ref_max_score": float(ref_max_score)}
            )
            if namespace is not None and namespace not in list_local_namespaces():
                create_namespace(namespace)  # real root: namespace_metadata.json, as Minari's
            final.parent.mkdir(parents=True, exist_ok=True)
            _move_into_place(tmp_root / dataset_id, final, tmp_root / "old", dataset_id)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    finally:
        if made_here:
            env.close()
    return OfflineDataset(
        dataset_id,
        eps,
        obs_space,
        act_space,
        float(ref_min_score),
        float(ref_max_score),
        env_spec=spec,
        minari_dataset=minari.MinariDataset(final / "data"),
    )


def _move_into_place(new: Path, final: Path, old: Path, dataset_id: str) -> None:
    """Rename the finished dataset `new` to `final`; an existing one is moved to `old` first and
    back if the rename fails. (POSIX has no atomic exchange of directories in the standard
    library, so between the two renames no dataset of that id exists, but never a partial one.)
    """
    if final.exists():
        os.rename(final, old)
        try:
            os.rename(new, final)
        except BaseException:
            os.rename(old, final)
            raise
        return
    try:
        os.rename(new, final)
    except OSError as e:  # another writer got there first: never clobber its dataset
        if final.exists():
            raise FileExistsError(
                f"dataset {dataset_id!r} appeared at {final} while writing; pass "
                "overwrite=True to replace it"
            ) from e
        raise


def export_replay(
    replay: EpisodeReplay,
    dataset_id: str,
    env: gym.Env | str,
    ref_min_score: float,
    ref_max_score: float,
    **kwargs,
) -> OfflineDataset:
    """Write every complete episode still held by an `EpisodeReplay` as a Minari dataset.

    Args:
        kwargs: keyword options of `write_dataset` (algorithm_name, description, overwrite...).
    """
    episodes = list(replay.episodes())
    if not episodes:
        raise ValueError(
            f"the replay holds no complete episode ({len(replay)} rows, "
            f"{replay.total_episodes} episodes ever committed); collect at least one whole "
            "episode before exporting"
        )
    return write_dataset(dataset_id, episodes, env, ref_min_score, ref_max_score, **kwargs)
