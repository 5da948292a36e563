"""D4RL-style dataset generation: an online SAC run (`online_sac.OnlineSAC`) whose replay, policies
and checkpoints become Minari datasets of each kind (`make_dataset`)."""

from wmrl.offline.datagen.make_dataset import MakeDatasetConfig  # make_dataset() is in there
from wmrl.offline.datagen.online_sac import SAC, OnlineSAC, SACConfig

__all__ = ["SAC", "MakeDatasetConfig", "OnlineSAC", "SACConfig"]
