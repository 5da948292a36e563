"""The model-free offline suite (BC, TD3+BC, CQL, IQL, AWAC, ReBRAC, SAC-N, EDAC) on Minari
datasets, online SAC, and D4RL-style dataset generation. MOReL joins here (issue #6).

    from offline import ALGORITHMS, OfflineConfig, train_offline
    train_offline(OfflineConfig(algo="iql", dataset="wmrl/hopper-medium-v0", logdir="runs/iql"))
"""

from offline.common import OfflineAlgorithm
from offline.compare import CompareConfig, compare_offline
from offline.make_dataset import MakeDatasetConfig  # make_dataset() lives in that module
from offline.sac import SAC, SACConfig
from offline.train import ALGORITHMS, OfflineConfig, train_offline

__all__ = [
    "ALGORITHMS",
    "SAC",
    "CompareConfig",
    "MakeDatasetConfig",
    "OfflineAlgorithm",
    "OfflineConfig",
    "SACConfig",
    "compare_offline",
    "train_offline",
]
