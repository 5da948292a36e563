"""Environments, episode replay and Minari datasets: the lowest layer of the toolkit.

make("dmc:cartpole-swingup")                 pixels (64, 64, 3) uint8, action repeat 8
make("dmc:walker-walk", obs_type="state")    flat proprioceptive vector
make("gym:Hopper-v5"), make("gym:CarRacing-v3")
gymnasium.make("dmc/cartpole-swingup-v0")    the same envs, registered on `import wmrl.envs`
"""

from wmrl.envs.datasets import (
    DatasetMismatchError,
    DatasetNotFoundError,
    DatasetValueError,
    OfflineDataset,
    export_replay,
    load_dataset,
    to_transitions,
    write_dataset,
)
from wmrl.envs.dmc import DMCEnv, RenderBackendError
from wmrl.envs.registry import UnknownEnvError, make, make_gym, make_vector, register_all

register_all()

__all__ = [
    "DMCEnv",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "DatasetValueError",
    "OfflineDataset",
    "RenderBackendError",
    "UnknownEnvError",
    "export_replay",
    "load_dataset",
    "make",
    "make_gym",
    "make_vector",
    "register_all",
    "to_transitions",
    "write_dataset",
]
