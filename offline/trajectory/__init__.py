"""The Trajectory Transformer (Janner, Li, Levine 2021) as an offline method: the training loop
with beam-search evaluation (`training`) and the token windows it learns from (`windows`). Its
model and bins are `worldmodels.trajectory_transformer`; its planner is `planners.beam`."""

from wmrl.offline.trajectory.training import PRESETS, TrajectoryConfig, train_trajectory_transformer

__all__ = ["PRESETS", "TrajectoryConfig", "train_trajectory_transformer"]
