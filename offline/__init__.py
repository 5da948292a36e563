"""Offline RL on Minari datasets: the model-free suite (BC, TD3+BC, CQL, IQL, AWAC, ReBRAC, SAC-N,
EDAC, SAC-RND, Decision Transformer; one file each, trained by `trainer`), MOReL
(`offline.morel`), the Trajectory Transformer (`offline.trajectory`), the comparison of runs
(`compare`), and dataset generation with its online SAC (`offline.datagen`).

    from wmrl.offline import ALGORITHMS, OfflineConfig, train_offline
    train_offline(OfflineConfig(algo="iql", dataset="wmrl/hopper-medium-v0", logdir="runs/iql"))
"""

from wmrl.offline.common import OfflineAlgorithm
from wmrl.offline.compare import CompareConfig, compare_offline
from wmrl.offline.trainer import ALGORITHMS, OfflineConfig, train_offline

__all__ = [
    "ALGORITHMS",
    "CompareConfig",
    "OfflineAlgorithm",
    "OfflineConfig",
    "compare_offline",
    "train_offline",
]
