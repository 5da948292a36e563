"""Train the Trajectory Transformer (Janner, Li, Levine 2021) on a Minari dataset: a GPT over
discretised trajectories (every state and action dimension, the reward and the reward-to-go a
token), then plan every action of the real-env evaluation with beam search.

    python scripts/train_trajectory_transformer.py --dataset wmrl/hopper-medium-replay-v0 \\
        --logdir runs/tt-hopper
    python scripts/train_trajectory_transformer.py --dataset wmrl-smoke/hopper-medium-replay-v0 \\
        --preset smoke --logdir runs/tt-smoke
    python scripts/train_trajectory_transformer.py --dataset wmrl/hopper-medium-replay-v0 \\
        --preset cpu --logdir runs/tt-hopper-cpu
    python scripts/train_trajectory_transformer.py --logdir runs/tt-hopper --resume --steps 312500

Defaults are the authors' config/offline.py (jannerm/trajectory-transformer): 100 quantile bins
per dimension, windows of 10 transitions, 4 blocks x 128 with 4 heads, action tokens weighted 5,
AdamW 6e-4 with warmup and cosine decay, 195 312 updates of batch 256 (312 500 on medium-replay);
beam width 128, horizon 15, 2 expansions, a context of 5 transitions. The run directory gets
config.json, checkpoint.pt, TensorBoard events and metrics.jsonl (step = updates: train/loss and
the cross-entropy of each kind of token; eval/return, eval/normalized_score,
eval/plan_ms_per_step, eval/beam_width), which scripts/compare_offline.py tabulates as "tt".
"""

from wmrl.infra import command, run_main
from wmrl.offline.trajectory.training import PRESETS, TrajectoryConfig, train_trajectory_transformer


def main(argv=None):
    return run_main(train_trajectory_transformer, TrajectoryConfig, PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
